//! DLC volume records.

use super::*;

impl Store {
    /// Gives a DLC task a volume of its own project in `zone`: an available one (most recently
    /// used first), else `fresh`, which is recorded.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn claim_volume(&self, task: &TaskRow, zone: &str, fresh: &VolumeRow) -> Result<VolumeRow, StoreError> {
        self.claim_volume_within(task, zone, fresh, None)
            .await?
            .ok_or_else(|| StoreError::Conflict("no volume within the bound".into()))
    }

    /// [`Store::claim_volume`] under a fleet-wide bound on volumes: at the bound, the least
    /// recently used available volume (of any project) is marked for deletion to make room;
    /// `None` when every volume is in use, and the task runs without its cache.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn claim_volume_within(
        &self,
        task: &TaskRow,
        zone: &str,
        fresh: &VolumeRow,
        max_volumes: Option<u32>,
    ) -> Result<Option<VolumeRow>, StoreError> {
        let pg = matches!(self.db, Db::Postgres(_));
        let vm_id = task.vm_id.clone().unwrap_or_default();
        let claim = format!(
            "UPDATE volumes SET state = 'attaching', task_id = $1, vm_id = $2, state_since = $3 \
             WHERE id = (SELECT id FROM volumes WHERE project = $4 AND zone = $5 AND state = 'available' \
             ORDER BY last_used_at DESC, id LIMIT 1{}) AND state = 'available' RETURNING *",
            self.lock_clause()
        );
        let now = fresh.created_at;
        Ok(in_tx!(&self.db, |tx| {
            let existing: Option<VolumeRow> = sqlx::query_as(
                "SELECT * FROM volumes WHERE task_id = $1 AND state IN ('creating','attaching','attached')",
            )
            .bind(&task.id)
            .fetch_optional(&mut *tx)
            .await?;
            let vol = match existing {
                Some(v) => Some(v),
                None => {
                    let claimed: Option<VolumeRow> = sqlx::query_as(&claim)
                        .bind(&task.id)
                        .bind(&vm_id)
                        .bind(now)
                        .bind(&task.project)
                        .bind(zone)
                        .fetch_optional(&mut *tx)
                        .await?;
                    match claimed {
                        Some(v) => Some(v),
                        None => {
                            let mut room = true;
                            if let Some(max) = max_volumes {
                                if pg {
                                    execute_in!(tx, "SELECT pg_advisory_xact_lock(7596232762)");
                                }
                                let n: i64 = sqlx::query_scalar(
                                    "SELECT COUNT(*) FROM volumes WHERE state NOT IN ('deleted','deleting')",
                                )
                                .fetch_one(&mut *tx)
                                .await?;
                                if n >= i64::from(max) {
                                    let evicted = execute_in!(
                                        tx,
                                        &format!(
                                            "UPDATE volumes SET state = 'deleting', state_since = $1 WHERE id = \
                                             (SELECT id FROM volumes WHERE state = 'available' AND task_id IS NULL \
                                             ORDER BY last_used_at, id LIMIT 1{}) AND state = 'available'",
                                            self.lock_clause()
                                        ),
                                        now
                                    );
                                    room = evicted == 1;
                                }
                            }
                            if room {
                                insert_volume!(&mut *tx, fresh)?;
                                Some(fresh.clone())
                            } else {
                                None
                            }
                        }
                    }
                }
            };
            if let Some(vol) = &vol {
                execute_in!(tx, "UPDATE tasks SET volume_id = $2 WHERE id = $1", &task.id, &vol.id);
            }
            vol
        }))
    }

    /// Records that a volume is attached to a VM for a task.
    ///
    /// # Guarantees
    /// A volume is only ever attached to a VM whose task belongs to the volume's project: the
    /// update refuses otherwise.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the projects differ or the volume is not being attached.
    pub async fn set_volume_attached(
        &self,
        volume_id: &str,
        task_id: &str,
        vm_id: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let sql =
            "UPDATE volumes SET state = 'attached', task_id = $2, vm_id = $3, last_used_at = $4, state_since = $4 \
                   WHERE id = $1 AND state IN ('creating','attaching','available') \
                   AND (task_id IS NULL OR task_id = $2) \
                   AND project = (SELECT project FROM tasks WHERE id = $2) \
                   AND EXISTS (SELECT 1 FROM vms WHERE id = $3 AND task_id = $2)";
        let n = execute!(&self.db, sql, volume_id, task_id, vm_id, now)?;
        if n == 1 {
            Ok(())
        } else {
            Err(StoreError::Conflict(format!(
                "volume {volume_id} cannot be attached for task {task_id}: it belongs to another project, or is in use"
            )))
        }
    }

    /// Records a volume's provider id after creation.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn set_volume_provider_id(&self, volume_id: &str, provider_id: &str, now: i64) -> Result<(), StoreError> {
        let sql = "UPDATE volumes SET provider_id = $2, state = CASE WHEN state = 'creating' THEN 'attaching' ELSE state END, \
                   state_since = $3 WHERE id = $1";
        execute!(&self.db, sql, volume_id, provider_id, now)?;
        Ok(())
    }

    /// A detached volume becomes available to its project again.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn set_volume_detached(&self, volume_id: &str, now: i64) -> Result<(), StoreError> {
        let sql = "UPDATE volumes SET state = 'available', task_id = NULL, vm_id = NULL, last_used_at = $2, \
                   state_since = $2 WHERE id = $1 AND state = 'detaching'";
        execute!(&self.db, sql, volume_id, now)?;
        Ok(())
    }

    /// Volumes, optionally in one state.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn volumes(&self, state: Option<&str>) -> Result<Vec<VolumeRow>, StoreError> {
        let sql =
            "SELECT * FROM volumes WHERE ($1 IS NULL AND state <> 'deleted') OR state = $1 ORDER BY created_at, id";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).bind(state).fetch_all(p).await)?)
    }

    /// One volume.
    ///
    /// # Errors
    /// [`StoreError::NotFound`].
    pub async fn volume(&self, id: &str) -> Result<VolumeRow, StoreError> {
        with_pool!(&self.db, |p| sqlx::query_as("SELECT * FROM volumes WHERE id = $1")
            .bind(id)
            .fetch_optional(p)
            .await)?
        .ok_or_else(|| StoreError::NotFound(format!("volume {id}")))
    }

    /// Marks a volume for deletion.
    ///
    /// # Errors
    /// [`StoreError::NotFound`]; [`StoreError::Conflict`] while it is attached or in use.
    pub async fn request_volume_delete(&self, id: &str, now: i64) -> Result<VolumeRow, StoreError> {
        let vol = self.volume(id).await?;
        let sql = "UPDATE volumes SET state = 'deleting', state_since = $2 WHERE id = $1 AND state = 'available' AND task_id IS NULL";
        let n = execute!(&self.db, sql, id, now)?;
        if n == 1 || vol.state == "deleting" || vol.state == "deleted" {
            self.volume(id).await
        } else {
            Err(StoreError::Conflict(format!("volume {id} is {} and cannot be deleted now", vol.state)))
        }
    }

    /// Sets a volume's state unconditionally (worker bookkeeping).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn set_volume_state(&self, id: &str, state: &str, now: i64) -> Result<(), StoreError> {
        let sql = "UPDATE volumes SET state = $2, state_since = $3 WHERE id = $1";
        execute!(&self.db, sql, id, state, now)?;
        Ok(())
    }
}
