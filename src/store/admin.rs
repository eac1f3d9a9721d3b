//! Pause and reset, remote Docker TLS material, images, tokens and the audit log.

use super::*;

impl Store {
    // ---- pause and reset ----

    /// Whether assignment and preallocation are paused (during a reset).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn paused(&self) -> Result<bool, StoreError> {
        let sql = "SELECT value FROM meta WHERE key = 'paused'";
        let v: Option<String> = with_pool!(&self.db, |p| sqlx::query_scalar(sql).fetch_optional(p).await)?;
        Ok(v.as_deref() == Some("1"))
    }

    /// Pauses or resumes assignment and preallocation.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn set_paused(&self, paused: bool) -> Result<(), StoreError> {
        let sql = "INSERT INTO meta (key, value) VALUES ('paused', $1) ON CONFLICT (key) DO UPDATE SET value = $1";
        let v = if paused { "1" } else { "0" };
        execute!(&self.db, sql, v)?;
        Ok(())
    }

    /// Deletes every task, volume and VM record (tokens, images and the audit log stay).
    /// Returns how many of each went.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn clear_fleet(&self) -> Result<(u64, u64, u64), StoreError> {
        Ok(in_tx!(&self.db, |tx| {
            let t = execute_in!(tx, "DELETE FROM tasks");
            let v = execute_in!(tx, "DELETE FROM volumes");
            let m = execute_in!(tx, "DELETE FROM vms");
            (t, v, m)
        }))
    }

    // ---- remote Docker TLS ----

    /// The installation's Docker CA: the stored one, or `fresh` if there is none yet (the first
    /// replica to store one wins).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn docker_ca(
        &self,
        fresh: &vmfleet_provisioner::tls::Pem,
    ) -> Result<vmfleet_provisioner::tls::Pem, StoreError> {
        let ins = "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING";
        let get = "SELECT value FROM meta WHERE key = $1";
        let pair: (String, String) = in_tx!(&self.db, |tx| {
            execute_in!(tx, ins, "docker_ca_cert", &fresh.cert);
            execute_in!(tx, ins, "docker_ca_key", &fresh.key);
            let cert: String = sqlx::query_scalar(get).bind("docker_ca_cert").fetch_one(&mut *tx).await?;
            let key: String = sqlx::query_scalar(get).bind("docker_ca_key").fetch_one(&mut *tx).await?;
            (cert, key)
        });
        Ok(vmfleet_provisioner::tls::Pem { cert: pair.0, key: pair.1 })
    }

    /// The stored Docker CA, if one was made.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn docker_ca_stored(&self) -> Result<Option<vmfleet_provisioner::tls::Pem>, StoreError> {
        let sql = "SELECT key, value FROM meta WHERE key IN ('docker_ca_cert', 'docker_ca_key')";
        let rows: Vec<(String, String)> = with_pool!(&self.db, |p| sqlx::query_as(sql).fetch_all(p).await)?;
        let get = |k: &str| rows.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        Ok(get("docker_ca_cert")
            .zip(get("docker_ca_key"))
            .map(|(cert, key)| vmfleet_provisioner::tls::Pem { cert, key }))
    }

    /// Records where a VM's Docker daemon listens with TLS.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn set_docker_host(&self, vm_id: &str, docker_host: Option<&str>) -> Result<(), StoreError> {
        let sql = "UPDATE vms SET docker_host = $2 WHERE id = $1";
        execute!(&self.db, sql, vm_id, docker_host)?;
        Ok(())
    }

    /// Stores a task's Docker client certificate.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn set_docker_client(&self, task_id: &str, cert: &str, key: &str) -> Result<(), StoreError> {
        let sql = "UPDATE tasks SET docker_client_cert = $2, docker_client_key = $3 WHERE id = $1";
        execute!(&self.db, sql, task_id, cert, key)?;
        Ok(())
    }

    // ---- images ----

    /// Registers an image version.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when that version is registered already.
    pub async fn insert_image(&self, i: &ImageRow) -> Result<(), StoreError> {
        let sql = "INSERT INTO images (name, version, kind, arch, amis, registered_at) VALUES ($1, $2, $3, $4, $5, $6)";
        execute!(&self.db, sql, &i.name, &i.version, &i.kind, &i.arch, &i.amis, i.registered_at).map_err(
            |e| match e {
                sqlx::Error::Database(d) if d.is_unique_violation() => {
                    StoreError::Conflict(format!("image {}:{} is registered already", i.name, i.version))
                }
                e => StoreError::Db(e),
            },
        )?;
        Ok(())
    }

    /// Registered image versions, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn images(&self) -> Result<Vec<ImageRow>, StoreError> {
        let sql = "SELECT * FROM images ORDER BY registered_at, name, version";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).fetch_all(p).await)?)
    }

    /// Points an alias at `name:version` (appending to its history).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn set_alias(&self, alias: &str, target: &str, actor: &str, now: i64) -> Result<(), StoreError> {
        let sql = "INSERT INTO image_aliases (id, alias, target, set_at, actor) VALUES ($1, $2, $3, $4, $5)";
        execute!(&self.db, sql, short_id(), alias, target, now, actor)?;
        Ok(())
    }

    /// Alias history, oldest first (all aliases, or one).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn alias_history(&self, alias: Option<&str>) -> Result<Vec<AliasRow>, StoreError> {
        let sql = "SELECT * FROM image_aliases WHERE ($1 IS NULL OR alias = $1) ORDER BY set_at, id";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).bind(alias).fetch_all(p).await)?)
    }

    // ---- tokens and audit ----

    /// Stores an API token's hash.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the name is taken.
    pub async fn insert_token(&self, name: &str, hash: &str, scopes: &str, now: i64) -> Result<(), StoreError> {
        let sql = "INSERT INTO api_tokens (id, name, token_hash, scopes, created_at) VALUES ($1, $2, $3, $4, $5)";
        execute!(&self.db, sql, short_id(), name, hash, scopes, now).map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                StoreError::Conflict(format!("a token named {name} exists"))
            }
            e => StoreError::Db(e),
        })?;
        Ok(())
    }

    /// Looks a token up by its hash: `(name, scopes)`.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<(String, String)>, StoreError> {
        let sql = "SELECT name, scopes FROM api_tokens WHERE token_hash = $1";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).bind(hash).fetch_optional(p).await)?)
    }

    /// Whether a token of that name exists.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn token_exists(&self, name: &str) -> Result<bool, StoreError> {
        let sql = "SELECT COUNT(*) FROM api_tokens WHERE name = $1";
        let n: i64 = with_pool!(&self.db, |p| sqlx::query_scalar(sql).bind(name).fetch_one(p).await)?;
        Ok(n > 0)
    }

    /// Appends an audit event.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn audit(&self, e: &AuditEvent) -> Result<(), StoreError> {
        with_pool!(&self.db, |p| insert_audit!(p, e))?;
        Ok(())
    }

    /// Audit events, newest first.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn audit_events(&self, limit: i64) -> Result<Vec<AuditEvent>, StoreError> {
        let sql = "SELECT * FROM audit_events ORDER BY occurred_at DESC, id LIMIT $1";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).bind(limit).fetch_all(p).await)?)
    }
}
