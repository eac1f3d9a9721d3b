//! Rows for what jobs store in the object store: caches, workspace layers, artifacts, test
//! results.

use serde::Serialize;

use super::{Db, Store, StoreError};

/// A saved cache.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct CacheRow {
    pub project: String,
    pub cache_key: String,
    pub object_key: String,
    pub size: i64,
    pub job_id: String,
    pub created_at: i64,
    pub last_used_at: i64,
}

/// One job task's workspace layer.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct WorkspaceLayerRow {
    pub id: String,
    pub workflow_id: String,
    pub job_id: String,
    pub node_index: i64,
    pub object_key: String,
    pub size: i64,
    pub created_at: i64,
}

/// A stored artifact.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ArtifactRow {
    pub job_id: String,
    pub node_index: i64,
    pub path: String,
    pub object_key: String,
    pub size: i64,
    pub created_at: i64,
}

/// One test case's result.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct TestResultRow {
    pub job_id: String,
    pub node_index: i64,
    pub idx: i64,
    pub project: String,
    pub job_name: String,
    pub file: Option<String>,
    pub classname: String,
    pub name: String,
    /// `success`, `failure`, `error`, `skipped`.
    pub result: String,
    pub message: Option<String>,
    pub run_time: f64,
    pub created_at: i64,
}

impl Store {
    /// The cache saved under exactly `key`.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn cache_exact(&self, project: &str, key: &str) -> Result<Option<CacheRow>, StoreError> {
        let sql = "SELECT * FROM caches WHERE project = $1 AND cache_key = $2";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).bind(project).bind(key).fetch_optional(p).await)?)
    }

    /// The newest cache whose key starts with `prefix`.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn cache_by_prefix(&self, project: &str, prefix: &str) -> Result<Option<CacheRow>, StoreError> {
        let sql = "SELECT * FROM caches WHERE project = $1 AND substr(cache_key, 1, length($2)) = $2 \
                   ORDER BY created_at DESC, cache_key LIMIT 1";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).bind(project).bind(prefix).fetch_optional(p).await)?)
    }

    /// Records a cache unless its key is taken (caches are immutable); `false` when it was.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn insert_cache(&self, c: &CacheRow) -> Result<bool, StoreError> {
        let sql = "INSERT INTO caches (project, cache_key, object_key, size, job_id, created_at, last_used_at) \
                   VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (project, cache_key) DO NOTHING";
        let n = execute!(&self.db, sql, &c.project, &c.cache_key, &c.object_key, c.size, &c.job_id, c.created_at)?;
        Ok(n == 1)
    }

    /// Stamps a cache's last restore.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn touch_cache(&self, project: &str, key: &str, now: i64) -> Result<(), StoreError> {
        let sql = "UPDATE caches SET last_used_at = $3 WHERE project = $1 AND cache_key = $2";
        execute!(&self.db, sql, project, key, now)?;
        Ok(())
    }

    /// Records a workspace layer.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn insert_workspace_layer(&self, l: &WorkspaceLayerRow) -> Result<(), StoreError> {
        let sql = "INSERT INTO workspace_layers (id, workflow_id, job_id, node_index, object_key, size, created_at) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7)";
        execute!(&self.db, sql, &l.id, &l.workflow_id, &l.job_id, l.node_index, &l.object_key, l.size, l.created_at)?;
        Ok(())
    }

    /// The workspace layers of `jobs`, oldest first (the order they are applied in).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn workspace_layers(&self, jobs: &[String]) -> Result<Vec<WorkspaceLayerRow>, StoreError> {
        let mut out: Vec<WorkspaceLayerRow> = Vec::new();
        for j in jobs {
            let sql = "SELECT * FROM workspace_layers WHERE job_id = $1";
            let rows: Vec<WorkspaceLayerRow> =
                with_pool!(&self.db, |p| sqlx::query_as(sql).bind(j).fetch_all(p).await)?;
            out.extend(rows);
        }
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    /// Records an artifact (a second one of the same path replaces the first).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn insert_artifact(&self, a: &ArtifactRow) -> Result<(), StoreError> {
        let sql = "INSERT INTO artifacts (job_id, node_index, path, object_key, size, created_at) \
                   VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (job_id, node_index, path) \
                   DO UPDATE SET object_key = $4, size = $5, created_at = $6";
        execute!(&self.db, sql, &a.job_id, a.node_index, &a.path, &a.object_key, a.size, a.created_at)?;
        Ok(())
    }

    /// A job's artifacts by node and path.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn artifacts(&self, job_id: &str) -> Result<Vec<ArtifactRow>, StoreError> {
        let sql = "SELECT * FROM artifacts WHERE job_id = $1 ORDER BY node_index, path";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).bind(job_id).fetch_all(p).await)?)
    }

    /// Records test results of one task, numbered after those it already has.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn insert_test_results(&self, rows: &[TestResultRow]) -> Result<(), StoreError> {
        let Some(first) = rows.first() else { return Ok(()) };
        in_tx!(&self.db, |tx| {
            let base: i64 = sqlx::query_scalar(
                "SELECT COALESCE(MAX(idx), 0) FROM test_results WHERE job_id = $1 AND node_index = $2",
            )
            .bind(&first.job_id)
            .bind(first.node_index)
            .fetch_one(&mut *tx)
            .await?;
            for (i, r) in rows.iter().enumerate() {
                execute_in!(
                    tx,
                    "INSERT INTO test_results (job_id, node_index, idx, project, job_name, file, classname, name, \
                     result, message, run_time, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                    &r.job_id,
                    r.node_index,
                    base + 1 + i as i64,
                    &r.project,
                    &r.job_name,
                    &r.file,
                    &r.classname,
                    &r.name,
                    &r.result,
                    &r.message,
                    r.run_time,
                    r.created_at
                );
            }
        });
        Ok(())
    }

    /// A job's test results.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn test_results(&self, job_id: &str) -> Result<Vec<TestResultRow>, StoreError> {
        let sql = "SELECT * FROM test_results WHERE job_id = $1 ORDER BY node_index, idx";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).bind(job_id).fetch_all(p).await)?)
    }

    /// The test results of the newest other job of this project and name that stored any: the
    /// timing data `circleci tests split --split-by=timings` uses.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn previous_test_results(
        &self,
        project: &str,
        job_name: &str,
        not_job: &str,
    ) -> Result<Vec<TestResultRow>, StoreError> {
        let sql = "SELECT job_id FROM test_results WHERE project = $1 AND job_name = $2 AND job_id <> $3 \
                   ORDER BY created_at DESC LIMIT 1";
        let last: Option<String> = with_pool!(&self.db, |p| sqlx::query_scalar(sql)
            .bind(project)
            .bind(job_name)
            .bind(not_job)
            .fetch_optional(p)
            .await)?;
        match last {
            Some(j) => self.test_results(&j).await,
            None => Ok(Vec::new()),
        }
    }
}

impl Store {
    /// Every recorded object (cache, workspace layer, artifact) as (kind, label, object key,
    /// created), for retention.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn stored_objects(&self) -> Result<Vec<(&'static str, String, String, i64)>, StoreError> {
        let mut out = Vec::new();
        let queries: [(&'static str, &str); 3] = [
            ("cache", "SELECT project || ' ' || cache_key, object_key, created_at FROM caches"),
            ("workspace", "SELECT job_id || ' node ' || CAST(node_index AS TEXT), object_key, created_at FROM workspace_layers"),
            ("artifact", "SELECT job_id || ' node ' || CAST(node_index AS TEXT) || ' ' || path, object_key, created_at FROM artifacts"),
        ];
        for (kind, sql) in queries {
            let rows: Vec<(String, String, i64)> = with_pool!(&self.db, |p| sqlx::query_as(sql).fetch_all(p).await)?;
            out.extend(rows.into_iter().map(|(label, key, at)| (kind, label, key, at)));
        }
        Ok(out)
    }

    /// Jobs that ended before `before` and still have output or test results, with when.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn jobs_with_output_before(&self, before: i64, limit: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let sql = "SELECT j.id, j.finished_at FROM jobs j WHERE j.finished_at IS NOT NULL AND j.finished_at < $1 \
                   AND (EXISTS (SELECT 1 FROM job_output o WHERE o.job_id = j.id) \
                        OR EXISTS (SELECT 1 FROM test_results r WHERE r.job_id = j.id)) \
                   ORDER BY j.finished_at LIMIT $2";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).bind(before).bind(limit).fetch_all(p).await)?)
    }

    /// Removes the row that names `object_key` (a cache, layer or artifact).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn forget_object(&self, object_key: &str) -> Result<(), StoreError> {
        in_tx!(&self.db, |tx| {
            for table in ["caches", "workspace_layers", "artifacts"] {
                execute_in!(tx, &format!("DELETE FROM {table} WHERE object_key = $1"), object_key);
            }
        });
        Ok(())
    }

    /// Removes a job's output and test results (the job's record stays).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn forget_job_output(&self, job_id: &str) -> Result<(), StoreError> {
        in_tx!(&self.db, |tx| {
            execute_in!(tx, "DELETE FROM job_output WHERE job_id = $1", job_id);
            execute_in!(tx, "DELETE FROM test_results WHERE job_id = $1", job_id);
        });
        Ok(())
    }
}
