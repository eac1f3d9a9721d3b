//! Retention of what jobs stored: observe the rows and the object store, plan with the `gc`
//! crate's pure retention planner, then act (rows first, then objects).

use vmfleet_gc::retention::{self, Expire, Item, Kind, Object};

use crate::config::Config;
use crate::objects::ObjectStore;
use crate::store::Store;

/// Most items one pass removes.
const BUDGET: usize = 2_000;

/// What retention would remove now.
///
/// # Errors
/// Store or object store errors, as text.
pub async fn plan(store: &Store, objects: &dyn ObjectStore, config: &Config, now: i64) -> Result<Vec<Expire>, String> {
    let r = &config.storage.retention;
    let ms = |d: std::time::Duration| d.as_millis() as i64;
    let settings = retention::Retention {
        caches_ms: ms(r.caches),
        workspaces_ms: ms(r.workspaces),
        artifacts_ms: ms(r.artifacts),
        job_output_ms: ms(r.job_output),
        orphan_grace_ms: ms(config.gc.orphan_grace).max(3_600_000),
    };
    let mut items = Vec::new();
    for (kind, label, key, at) in store.stored_objects().await.map_err(|e| e.to_string())? {
        let kind = match kind {
            "cache" => Kind::Cache,
            "workspace" => Kind::Workspace,
            _ => Kind::Artifact,
        };
        items.push(Item { kind, id: label, object_key: Some(key), at_ms: at });
    }
    let before = now - settings.job_output_ms;
    for (job, at) in store.jobs_with_output_before(before, BUDGET as i64).await.map_err(|e| e.to_string())? {
        items.push(Item { kind: Kind::JobOutput, id: job, object_key: None, at_ms: at });
    }
    let mut found = Vec::new();
    for prefix in ["caches/", "workspaces/", "artifacts/"] {
        for o in objects.list(prefix).await.map_err(|e| e.to_string())? {
            found.push(Object { key: o.key, modified_ms: o.modified_ms });
        }
    }
    Ok(retention::plan(&items, &found, now, &settings, BUDGET))
}

/// Carries `actions` out; returns how many were done and the errors of the others.
pub async fn apply(store: &Store, objects: &dyn ObjectStore, actions: &[Expire]) -> (usize, Vec<String>) {
    let mut done = 0;
    let mut errors = Vec::new();
    for a in actions {
        let result = match a {
            Expire::Item { item, .. } => match (&item.object_key, item.kind) {
                (_, Kind::JobOutput) => store.forget_job_output(&item.id).await.map_err(|e| e.to_string()),
                (Some(key), _) => match store.forget_object(key).await {
                    Ok(()) => objects.delete(key).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
                (None, _) => Ok(()),
            },
            Expire::Orphan { key, .. } => objects.delete(key).await.map_err(|e| e.to_string()),
        };
        match result {
            Ok(()) => done += 1,
            Err(e) => errors.push(format!("{}: {e}", a.summary())),
        }
    }
    (done, errors)
}
