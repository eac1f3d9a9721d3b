//! The steps that move files between a job's VM and the object store: caches, workspaces,
//! artifacts, test results.

use super::resolve::scalar_text;
use super::{CircleError, ConfigFile, Step, When};
use crate::yaml::Node;

/// The step names handled here.
pub(super) const NAMES: &[&str] = &[
    "save_cache",
    "restore_cache",
    "persist_to_workspace",
    "attach_workspace",
    "store_artifacts",
    "store_test_results",
];

impl ConfigFile {
    /// One of [`NAMES`], checked: known keys only, the required ones present.
    pub(super) fn storage_step(&self, name: &str, body: Option<&Node>, line: usize) -> Result<Step, CircleError> {
        let (required, optional): (&[&str], &[&str]) = match name {
            "save_cache" => (&["key", "paths"], &["name", "when"]),
            "restore_cache" => (&[], &["key", "keys", "name", "when"]),
            "persist_to_workspace" => (&["root", "paths"], &["name", "when"]),
            "attach_workspace" => (&["at"], &["name", "when"]),
            "store_artifacts" => (&["path"], &["destination", "name", "when"]),
            _ => (&["path"], &["name", "when"]),
        };
        let expected = || required.iter().chain(optional).copied().collect::<Vec<_>>().join(", ");
        let map =
            body.and_then(Node::map).ok_or_else(|| self.err(line, format!("{name} takes a map ({})", expected())))?;
        for (k, _) in map {
            let key = k.str().unwrap_or_default();
            if !required.contains(&key) && !optional.contains(&key) {
                return Err(self.err(k.line, format!("{name}: unknown key {key:?} (expected {})", expected())));
            }
        }
        for r in required {
            if !map.iter().any(|(k, _)| k.str() == Some(r)) {
                return Err(self.err(line, format!("{name} needs `{r}`")));
            }
        }
        let get = |k: &str| map.iter().find(|(key, _)| key.str() == Some(k)).map(|(_, v)| v);
        let text = |k: &str| -> Result<String, CircleError> {
            let v = get(k).map(scalar_text).unwrap_or_default();
            if v.trim().is_empty() {
                return Err(self.err(line, format!("{name}: `{k}` is empty")));
            }
            Ok(v)
        };
        let list = |k: &str| -> Result<Vec<String>, CircleError> {
            let v = get(k).ok_or_else(|| self.err(line, format!("{name} needs `{k}`")))?;
            let items: Vec<String> = match v.seq() {
                Some(items) => items.iter().map(scalar_text).collect(),
                None => vec![scalar_text(v)],
            };
            if items.is_empty() || items.iter().any(|i| i.trim().is_empty()) {
                return Err(self.err(v.line, format!("{name}: `{k}` is a list of non-empty paths")));
            }
            Ok(items)
        };
        // As CircleCI: artifacts and test results are stored whatever happened before, unless
        // the step says otherwise.
        let default =
            if matches!(name, "store_artifacts" | "store_test_results") { When::Always } else { When::OnSuccess };
        let when = match get("when").map(scalar_text).as_deref() {
            None => default,
            Some("on_success") => When::OnSuccess,
            Some("always") => When::Always,
            Some("on_fail") => When::OnFail,
            Some(other) => {
                return Err(self.err(line, format!("{name}: when {other:?} (use on_success, on_fail, always)")))
            }
        };
        Ok(match name {
            "save_cache" => Step::SaveCache { key: text("key")?, paths: list("paths")?, when, line },
            "restore_cache" => {
                let mut keys = Vec::new();
                if get("key").is_some() {
                    keys.push(text("key")?);
                }
                if get("keys").is_some() {
                    keys.extend(list("keys")?);
                }
                if keys.is_empty() {
                    return Err(self.err(line, "restore_cache needs `key` or `keys`"));
                }
                Step::RestoreCache { keys, when, line }
            }
            "persist_to_workspace" => {
                Step::PersistToWorkspace { root: text("root")?, paths: list("paths")?, when, line }
            }
            "attach_workspace" => Step::AttachWorkspace { at: text("at")?, when, line },
            "store_artifacts" => Step::StoreArtifacts {
                path: text("path")?,
                destination: get("destination").map(scalar_text).filter(|d| !d.trim().is_empty()),
                when,
                line,
            },
            _ => Step::StoreTestResults { path: text("path")?, when, line },
        })
    }
}
