//! Sealed secrets, contexts and the installation's secrets key id.
//!
//! # Design
//! The store never sees a value readable. A write is conditional on the value being sealed
//! under the installation's key of the moment (read under a share lock on PostgreSQL, so a
//! rotation cannot slip in between), and a rotation is one transaction that moves the key id
//! and re-seals every row, each update conditional on the row being as it was read: a value
//! written meanwhile fails the rotation whole instead of being left under the old key.

use super::{AuditEvent, ContextRow, Db, SecretRow, Store, StoreError};

impl Store {
    /// The id of the key the installation's values are sealed under, once one is recorded.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn secrets_key_id(&self) -> Result<Option<String>, StoreError> {
        let sql = "SELECT key_id FROM secrets_key WHERE id = 1";
        Ok(with_pool!(&self.db, |p| sqlx::query_scalar(sql).fetch_optional(p).await)?)
    }

    /// Records `key_id` as the installation's key unless one is recorded; returns the recorded one.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn record_secrets_key_id(&self, key_id: &str, now: i64) -> Result<String, StoreError> {
        let sql = "INSERT INTO secrets_key (id, key_id, set_at) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING";
        execute!(&self.db, sql, key_id, now)?;
        self.secrets_key_id().await?.ok_or_else(|| StoreError::NotFound("the secrets key id".into()))
    }

    fn share_lock(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "",
            Db::Postgres(_) => " FOR SHARE",
        }
    }

    /// Writes (or replaces) a sealed value, keeping its creation time. Returns `Some(key id)`,
    /// writing nothing, when the installation's key is no longer the one it was sealed under.
    ///
    /// # Errors
    /// [`StoreError::Db`]; [`StoreError::Conflict`] when the owner already holds `max` values.
    pub async fn put_secret(
        &self,
        row: &SecretRow,
        max: usize,
        audit: &AuditEvent,
    ) -> Result<Option<String>, StoreError> {
        let check = format!("SELECT key_id FROM secrets_key WHERE id = 1{}", self.share_lock());
        Ok(in_tx!(&self.db, |tx| {
            let current: Option<String> = sqlx::query_scalar(&check).fetch_optional(&mut *tx).await?;
            if current.as_deref() != Some(row.key_id.as_str()) {
                current.or_else(|| Some(String::new()))
            } else {
                let (count, exists): (i64, i64) = sqlx::query_as(
                    "SELECT COUNT(*), COALESCE(SUM(CASE WHEN name = $3 THEN 1 ELSE 0 END), 0) FROM secrets \
                     WHERE kind = $1 AND owner = $2",
                )
                .bind(&row.kind)
                .bind(&row.owner)
                .bind(&row.name)
                .fetch_one(&mut *tx)
                .await?;
                if exists == 0 && count as usize >= max {
                    return Err(StoreError::Conflict(format!("{} already holds {max} values, the limit", row.owner)));
                }
                execute_in!(
                    tx,
                    "INSERT INTO secrets (kind, owner, name, host, alias, sealed, key_id, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
                     ON CONFLICT (kind, owner, name) DO UPDATE SET host = $4, alias = $5, sealed = $6, key_id = $7, \
                     updated_at = $8",
                    &row.kind,
                    &row.owner,
                    &row.name,
                    &row.host,
                    &row.alias,
                    &row.sealed,
                    &row.key_id,
                    row.updated_at
                );
                insert_audit!(&mut *tx, audit)?;
                None
            }
        }))
    }

    /// Deletes a value; `false` when there was none.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn delete_secret(
        &self,
        kind: &str,
        owner: &str,
        name: &str,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        Ok(in_tx!(&self.db, |tx| {
            let n =
                execute_in!(tx, "DELETE FROM secrets WHERE kind = $1 AND owner = $2 AND name = $3", kind, owner, name);
            if n > 0 {
                insert_audit!(&mut *tx, audit)?;
            }
            n > 0
        }))
    }

    /// The values of one owner, by name.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn secrets_of(&self, kind: &str, owner: &str) -> Result<Vec<SecretRow>, StoreError> {
        let sql = "SELECT * FROM secrets WHERE kind = $1 AND owner = $2 ORDER BY name";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).bind(kind).bind(owner).fetch_all(p).await)?)
    }

    /// Every sealed value.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn all_secrets(&self) -> Result<Vec<SecretRow>, StoreError> {
        let sql = "SELECT * FROM secrets ORDER BY kind, owner, name";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).fetch_all(p).await)?)
    }

    /// Jobs' stored deploy keys: (job id, stored text).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn deploy_keys(&self) -> Result<Vec<(String, String)>, StoreError> {
        let sql = "SELECT id, deploy_key FROM jobs WHERE deploy_key IS NOT NULL ORDER BY id";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).fetch_all(p).await)?)
    }

    /// Replaces a job's deploy key if it is still `old`.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn set_deploy_key(&self, job: &str, old: &str, new: &str) -> Result<bool, StoreError> {
        let n = execute!(&self.db, "UPDATE jobs SET deploy_key = $3 WHERE id = $1 AND deploy_key = $2", job, old, new)?;
        Ok(n == 1)
    }

    /// Moves the installation from key `old` to key `new`: every value (`resealed`: the row as
    /// read, and its value sealed under `new`) and deploy key (job, as read, re-sealed) at once.
    ///
    /// # Errors
    /// [`StoreError::Conflict`], changing nothing, when the key or a value changed since they
    /// were read, or a value was added under the old key; [`StoreError::Db`].
    pub async fn reseal_secrets(
        &self,
        old: &str,
        new: &str,
        resealed: &[(SecretRow, String)],
        deploy: &[(String, String, String)],
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        let changed = |what: String| {
            StoreError::Conflict(format!("{what} changed during the rotation; nothing was changed, try again"))
        };
        in_tx!(&self.db, |tx| {
            let n = execute_in!(
                tx,
                "UPDATE secrets_key SET key_id = $2, set_at = $3 WHERE id = 1 AND key_id = $1",
                old,
                new,
                audit.occurred_at
            );
            if n != 1 {
                return Err(changed("the installation's key".into()));
            }
            for (row, sealed) in resealed {
                let n = execute_in!(
                    tx,
                    "UPDATE secrets SET sealed = $4, key_id = $5 WHERE kind = $1 AND owner = $2 AND name = $3 AND sealed = $6",
                    &row.kind,
                    &row.owner,
                    &row.name,
                    sealed,
                    new,
                    &row.sealed
                );
                if n != 1 {
                    return Err(changed(format!("{} {} of {}", row.kind, row.name, row.owner)));
                }
            }
            let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM secrets WHERE key_id <> $1")
                .bind(new)
                .fetch_one(&mut *tx)
                .await?;
            if left > 0 {
                return Err(changed(format!("{left} values")));
            }
            for (job, before, after) in deploy {
                let n = execute_in!(
                    tx,
                    "UPDATE jobs SET deploy_key = $3 WHERE id = $1 AND deploy_key = $2",
                    job,
                    before,
                    after
                );
                if n != 1 {
                    return Err(changed(format!("the deploy key of job {job}")));
                }
            }
            insert_audit!(&mut *tx, audit)?;
        });
        Ok(())
    }

    /// Creates a context.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when one of that name exists; [`StoreError::Db`].
    pub async fn create_context(&self, c: &ContextRow, audit: &AuditEvent) -> Result<(), StoreError> {
        in_tx!(&self.db, |tx| {
            let n = execute_in!(
                tx,
                "INSERT INTO contexts (name, projects, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
                &c.name,
                &c.projects,
                c.created_at
            );
            if n == 0 {
                return Err(StoreError::Conflict(format!("context {} exists", c.name)));
            }
            insert_audit!(&mut *tx, audit)?;
        });
        Ok(())
    }

    /// Deletes a context and its variables.
    ///
    /// # Errors
    /// [`StoreError::NotFound`]; [`StoreError::Db`].
    pub async fn delete_context(&self, name: &str, audit: &AuditEvent) -> Result<(), StoreError> {
        in_tx!(&self.db, |tx| {
            let n = execute_in!(tx, "DELETE FROM contexts WHERE name = $1", name);
            if n == 0 {
                return Err(StoreError::NotFound(format!("context {name}")));
            }
            execute_in!(tx, "DELETE FROM secrets WHERE kind = $1 AND owner = $2", super::CONTEXT_ENV, name);
            insert_audit!(&mut *tx, audit)?;
        });
        Ok(())
    }

    /// Contexts by name.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn contexts(&self) -> Result<Vec<ContextRow>, StoreError> {
        let sql = "SELECT * FROM contexts ORDER BY name";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).fetch_all(p).await)?)
    }

    /// One context.
    ///
    /// # Errors
    /// [`StoreError::NotFound`]; [`StoreError::Db`].
    pub async fn context(&self, name: &str) -> Result<ContextRow, StoreError> {
        let sql = "SELECT * FROM contexts WHERE name = $1";
        with_pool!(&self.db, |p| sqlx::query_as(sql).bind(name).fetch_optional(p).await)?
            .ok_or_else(|| StoreError::NotFound(format!("context {name}")))
    }
}
