//! Retention of what jobs stored: a pure planner from the recorded items and the objects the
//! store holds, the time and the retention per kind, to what goes.
//!
//! # Guarantees
//! A recorded item goes only once it is older than its kind's retention. An object no row
//! names goes only once it is older than `orphan_grace`, so an upload whose row is not yet
//! written is never taken. Rows go before their objects, so no row ever names a missing
//! object for a reason of ours; what a crash in between leaves is an orphan for a later pass.

use std::collections::HashSet;

/// What kind of item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A saved cache.
    Cache,
    /// A workspace layer.
    Workspace,
    /// An artifact.
    Artifact,
    /// A job's output and test results (no object).
    JobOutput,
}

impl Kind {
    /// Its name in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Cache => "cache",
            Kind::Workspace => "workspace layer",
            Kind::Artifact => "artifact",
            Kind::JobOutput => "job output",
        }
    }
}

/// A recorded item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Its kind.
    pub kind: Kind,
    /// What names it to the store (a cache's project and key, a layer's id, …).
    pub id: String,
    /// Its object, if it has one.
    pub object_key: Option<String>,
    /// When it was made (ms).
    pub at_ms: i64,
}

/// An object in the object store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Its key.
    pub key: String,
    /// When it was written (ms).
    pub modified_ms: i64,
}

/// Retention per kind, and the grace of unrecorded objects (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Caches.
    pub caches_ms: i64,
    /// Workspace layers.
    pub workspaces_ms: i64,
    /// Artifacts.
    pub artifacts_ms: i64,
    /// Job output and test results.
    pub job_output_ms: i64,
    /// Objects no row names.
    pub orphan_grace_ms: i64,
}

/// Something that goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expire {
    /// A recorded item past its kind's retention (its row, then its object).
    Item {
        /// The item.
        item: Item,
        /// How old it is (ms).
        age_ms: i64,
    },
    /// An object no row names, past the grace.
    Orphan {
        /// Its key.
        key: String,
        /// How old it is (ms).
        age_ms: i64,
    },
}

impl Expire {
    /// What it is, for `gc --dry-run`.
    pub fn summary(&self) -> String {
        match self {
            Expire::Item { item, .. } => format!("delete {} {}", item.kind.as_str(), item.id),
            Expire::Orphan { key, .. } => format!("delete unrecorded object {key}"),
        }
    }

    /// Why.
    pub fn reason(&self) -> String {
        let days = |ms: i64| ms as f64 / 86_400_000.0;
        match self {
            Expire::Item { age_ms, .. } => format!("{:.1} days old, past its retention", days(*age_ms)),
            Expire::Orphan { age_ms, .. } => {
                format!(
                    "no row names it and it is {:.1} hours old (an upload a crash left)",
                    *age_ms as f64 / 3_600_000.0
                )
            }
        }
    }
}

/// What goes now, oldest first, at most `budget` of it.
pub fn plan(items: &[Item], objects: &[Object], now_ms: i64, r: &Retention, budget: usize) -> Vec<Expire> {
    let keep = |k: Kind| match k {
        Kind::Cache => r.caches_ms,
        Kind::Workspace => r.workspaces_ms,
        Kind::Artifact => r.artifacts_ms,
        Kind::JobOutput => r.job_output_ms,
    };
    let mut out: Vec<(i64, Expire)> = Vec::new();
    for i in items {
        let age = now_ms - i.at_ms;
        if age > keep(i.kind) {
            out.push((i.at_ms, Expire::Item { item: i.clone(), age_ms: age }));
        }
    }
    let named: HashSet<&str> = items.iter().filter_map(|i| i.object_key.as_deref()).collect();
    for o in objects {
        let age = now_ms - o.modified_ms;
        if !named.contains(o.key.as_str()) && age > r.orphan_grace_ms {
            out.push((o.modified_ms, Expire::Orphan { key: o.key.clone(), age_ms: age }));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.summary().cmp(&b.1.summary())));
    out.into_iter().take(budget).map(|(_, e)| e).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn item(kind: Kind, id: &str, object: Option<&str>, at: i64) -> Item {
        Item { kind, id: id.into(), object_key: object.map(str::to_string), at_ms: at }
    }

    #[test]
    fn items_go_past_their_kinds_retention_and_unrecorded_objects_past_the_grace() {
        let r = Retention {
            caches_ms: 15 * DAY,
            workspaces_ms: 15 * DAY,
            artifacts_ms: 30 * DAY,
            job_output_ms: 30 * DAY,
            orphan_grace_ms: DAY,
        };
        let now = 100 * DAY;
        let items = [
            item(Kind::Cache, "old-cache", Some("caches/a"), now - 16 * DAY),
            item(Kind::Cache, "new-cache", Some("caches/b"), now - 14 * DAY),
            item(Kind::Artifact, "artifact-20d", Some("artifacts/x"), now - 20 * DAY),
            item(Kind::JobOutput, "job-1", None, now - 31 * DAY),
        ];
        let objects = [
            Object { key: "caches/a".into(), modified_ms: now - 16 * DAY },
            Object { key: "caches/b".into(), modified_ms: now - 14 * DAY },
            Object { key: "artifacts/x".into(), modified_ms: now - 20 * DAY },
            Object { key: "caches/lost".into(), modified_ms: now - 2 * DAY },
            Object { key: "caches/uploading".into(), modified_ms: now - 1000 },
        ];
        let got: Vec<String> = plan(&items, &objects, now, &r, 100).iter().map(Expire::summary).collect();
        assert_eq!(got, ["delete job output job-1", "delete cache old-cache", "delete unrecorded object caches/lost"]);
        assert_eq!(plan(&items, &objects, now, &r, 1).len(), 1, "the budget bounds a pass");
    }
}
