//! VM records and their transitions.

use super::*;

impl Store {
    /// Records a new VM (intent before effect: before the provider hears of it).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn insert_vm(&self, vm: &VmRow) -> Result<(), StoreError> {
        with_pool!(&self.db, |p| insert_vm!(p, vm))?;
        Ok(())
    }

    /// Records a new warm VM if `bounds` leave room; returns whether it did.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn insert_vm_within(&self, vm: &VmRow, bounds: Bounds) -> Result<bool, StoreError> {
        let pg = matches!(self.db, Db::Postgres(_));
        Ok(in_tx!(&self.db, |tx| {
            let ok = room!(&mut *tx, pg, &vm.pool, bounds);
            if ok {
                insert_vm!(&mut *tx, vm)?;
            }
            ok
        }))
    }

    /// Gives a queued task (waiting, without a VM) the on-demand VM `vm`, if it is still
    /// queued and `bounds` leave room; returns whether it did.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn reserve_vm_for_task(&self, task_id: &str, vm: &VmRow, bounds: Bounds) -> Result<bool, StoreError> {
        let pg = matches!(self.db, Db::Postgres(_));
        let lock = self.lock_clause().replace(" SKIP LOCKED", "");
        Ok(in_tx!(&self.db, |tx| {
            let queued: Option<String> = sqlx::query_scalar(&format!(
                "SELECT id FROM tasks WHERE id = $1 AND state = 'waiting' AND vm_id IS NULL{lock}"
            ))
            .bind(task_id)
            .fetch_optional(&mut *tx)
            .await?;
            let ok = queued.is_some() && room!(&mut *tx, pg, &vm.pool, bounds);
            if ok {
                insert_vm!(&mut *tx, vm)?;
                execute_in!(tx, "UPDATE tasks SET vm_id = $2 WHERE id = $1", task_id, &vm.id);
            }
            ok
        }))
    }

    /// (pool, milliseconds from request to hand-over) of tasks handed their VM since `since`.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn queue_times(&self, since: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let sql = "SELECT pool, assigned_at - created_at FROM tasks WHERE assigned_at >= $1";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).bind(since).fetch_all(p).await)?)
    }

    /// The live VM running on a provider instance, if any.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn vm_by_instance(&self, instance_id: &str) -> Result<Option<VmRow>, StoreError> {
        let sql = format!("SELECT * FROM vms WHERE instance_id = $1 AND state IN {VM_LIVE} LIMIT 1");
        Ok(with_pool!(&self.db, |p| sqlx::query_as(&sql).bind(instance_id).fetch_optional(p).await)?)
    }

    /// A warm VM that just came up (`booting`, unreserved) is given to the oldest task of its
    /// pool still waiting for the VM launched for it; that VM, still starting, becomes a warm
    /// one. Returns the task, if there was one.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn give_to_waiting_task(&self, vm_id: &str, pool: &str) -> Result<Option<String>, StoreError> {
        let find = "SELECT t.id, t.created_at, v.id FROM tasks t JOIN vms v ON v.id = t.vm_id AND v.task_id = t.id \
             WHERE t.pool = $1 AND t.state = 'waiting' AND v.state IN ('requested','provisioning','booting') \
             AND v.id <> $2";
        Ok(in_tx!(&self.db, |tx| {
            let rows: Vec<(String, i64, String)> =
                sqlx::query_as(find).bind(pool).bind(vm_id).fetch_all(&mut *tx).await?;
            let waiters: Vec<vmfleet_scaler::BootWaiter> = rows
                .into_iter()
                .map(|(task_id, created_at_ms, vm_id)| vmfleet_scaler::BootWaiter { task_id, created_at_ms, vm_id })
                .collect();
            let mut given = None;
            // The planner's order; each step conditional on the task's own VM still starting
            // and this VM still unreserved.
            for i in vmfleet_scaler::boot_waiter_order(&waiters) {
                let (task, old) = (&waiters[i].task_id, &waiters[i].vm_id);
                let freed = execute_in!(
                    tx,
                    "UPDATE vms SET task_id = NULL, preallocated = TRUE WHERE id = $1 AND task_id = $2 \
                     AND state IN ('requested','provisioning','booting')",
                    old,
                    task
                );
                if freed != 1 {
                    continue;
                }
                let taken = execute_in!(
                    tx,
                    "UPDATE vms SET task_id = $2, preallocated = FALSE, stop_after_boot = FALSE \
                     WHERE id = $1 AND task_id IS NULL AND state = 'booting'",
                    vm_id,
                    task
                );
                if taken == 1 {
                    execute_in!(tx, "UPDATE tasks SET vm_id = $2 WHERE id = $1", task, vm_id);
                    given = Some(task.clone());
                } else {
                    // This VM is no longer free: put the reservation back as it was.
                    execute_in!(tx, "UPDATE vms SET task_id = $2, preallocated = FALSE WHERE id = $1", old, task);
                }
                break;
            }
            given
        }))
    }

    /// Gives the idle VM `vm_id` to `task_id`, queued without a VM (the planner's
    /// `ScaleAction::Assign`), if both still are: handed over at once unless the task needs its
    /// DLC volume attached first. Returns whether it did.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn assign_queued(&self, task_id: &str, vm_id: &str, now: i64) -> Result<bool, StoreError> {
        Ok(in_tx!(&self.db, |tx| {
            let dlc: Option<bool> =
                sqlx::query_scalar("SELECT dlc FROM tasks WHERE id = $1 AND state = 'waiting' AND vm_id IS NULL")
                    .bind(task_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let claimed = match dlc {
                None => 0,
                Some(_) => execute_in!(
                    tx,
                    "UPDATE vms SET state = 'assigned', task_id = $1, assigned_at = $2, state_since = $2 \
                     WHERE id = $3 AND state = 'ready' AND NOT draining AND task_id IS NULL",
                    task_id,
                    now,
                    vm_id
                ),
            };
            if claimed == 1 {
                // A DLC task is handed over once its volume is attached.
                if dlc == Some(true) {
                    execute_in!(tx, "UPDATE tasks SET vm_id = $2 WHERE id = $1", task_id, vm_id);
                } else {
                    execute_in!(
                        tx,
                        "UPDATE tasks SET state = 'assigned', vm_id = $2, assigned_at = $3 WHERE id = $1",
                        task_id,
                        vm_id,
                        now
                    );
                }
            }
            claimed == 1
        }))
    }

    /// (pool, created_at) of tasks requested after `since`, oldest first, at most `limit`.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn arrivals_since(&self, since: i64, limit: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let sql = "SELECT pool, created_at FROM tasks WHERE created_at > $1 ORDER BY created_at LIMIT $2";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).bind(since).bind(limit).fetch_all(p).await)?)
    }

    /// Tasks queued without a VM, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn queued_tasks(&self) -> Result<Vec<TaskRow>, StoreError> {
        let sql = "SELECT * FROM tasks WHERE state = 'waiting' AND vm_id IS NULL ORDER BY created_at, id";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).fetch_all(p).await)?)
    }

    /// One VM.
    ///
    /// # Errors
    /// [`StoreError::NotFound`].
    pub async fn vm(&self, id: &str) -> Result<VmRow, StoreError> {
        with_pool!(&self.db, |p| sqlx::query_as("SELECT * FROM vms WHERE id = $1").bind(id).fetch_optional(p).await)?
            .ok_or_else(|| StoreError::NotFound(format!("vm {id}")))
    }

    /// VMs in any of `states` (all when empty), oldest first.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn vms(&self, states: &[VmState]) -> Result<Vec<VmRow>, StoreError> {
        let sql = if states.is_empty() {
            "SELECT * FROM vms ORDER BY requested_at, id".to_string()
        } else {
            format!("SELECT * FROM vms WHERE state IN ({}) ORDER BY requested_at, id", state_list(states))
        };
        Ok(with_pool!(&self.db, |p| sqlx::query_as(&sql).fetch_all(p).await)?)
    }

    /// Live VMs (not terminated or failed).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn live_vms(&self) -> Result<Vec<VmRow>, StoreError> {
        let sql = format!("SELECT * FROM vms WHERE state IN {VM_LIVE} ORDER BY requested_at, id");
        Ok(with_pool!(&self.db, |p| sqlx::query_as(&sql).fetch_all(p).await)?)
    }

    /// Moves a VM from one of `from` to `to`, stamping the state's time column. Returns whether
    /// it moved (false: someone else moved it first).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn transition(&self, id: &str, from: &[VmState], to: VmState, now: i64) -> Result<bool, StoreError> {
        let sql = format!(
            "UPDATE vms SET state = $2, {col} = $3, state_since = $3 WHERE id = $1 AND state IN ({from})",
            col = to.time_column(),
            from = state_list(from)
        );
        let n = execute!(&self.db, &sql, id, to.as_str(), now)?;
        Ok(n == 1)
    }

    /// Records what the provider said at launch: the instance, its zone, and the instance type
    /// it got (a fallback type when the first had no capacity).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn set_launched(
        &self,
        id: &str,
        instance_id: &str,
        zone: &str,
        instance_type: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let sql = "UPDATE vms SET state = 'provisioning', instance_id = $2, zone = $3, provisioning_at = $4, \
                   instance_type = COALESCE($5, instance_type), state_since = $4 WHERE id = $1 AND state = 'requested'";
        let n = execute!(&self.db, sql, id, instance_id, zone, now, instance_type)?;
        Ok(n == 1)
    }

    /// Records the address once the instance runs.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn set_booting(
        &self,
        id: &str,
        host: &str,
        port: u16,
        host_key: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        // A VM started again from stopped keeps the host key it had.
        let sql = "UPDATE vms SET state = 'booting', host = $2, ssh_port = $3, host_key = COALESCE($4, host_key), \
                   booting_at = $5, state_since = $5 WHERE id = $1 AND state IN ('requested','provisioning','starting')";
        let n = execute!(&self.db, sql, id, host, i64::from(port), host_key, now)?;
        Ok(n == 1)
    }

    /// Starts the stopped VM `vm_id` (`stopped` → `starting`), for the running warm target or
    /// for `task_id`, queued without a VM, if both still are; returns whether it did. The VM
    /// is no longer one to stop once it answers.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn start_stopped(&self, vm_id: &str, task_id: Option<&str>, now: i64) -> Result<bool, StoreError> {
        let lock = self.lock_clause().replace(" SKIP LOCKED", "");
        Ok(in_tx!(&self.db, |tx| {
            let mut queued = true;
            if let Some(task) = task_id {
                let row: Option<String> = sqlx::query_scalar(&format!(
                    "SELECT id FROM tasks WHERE id = $1 AND state = 'waiting' AND vm_id IS NULL{lock}"
                ))
                .bind(task)
                .fetch_optional(&mut *tx)
                .await?;
                queued = row.is_some();
            }
            let started = queued
                && execute_in!(
                    tx,
                    "UPDATE vms SET state = 'starting', starting_at = $2, state_since = $2, stop_after_boot = FALSE, \
                     task_id = $3, preallocated = $4 WHERE id = $1 AND state = 'stopped' AND task_id IS NULL \
                     AND NOT draining",
                    vm_id,
                    now,
                    task_id,
                    task_id.is_none()
                ) == 1;
            if started {
                if let Some(task) = task_id {
                    execute_in!(tx, "UPDATE tasks SET vm_id = $2 WHERE id = $1", task, vm_id);
                }
            }
            started
        }))
    }

    /// Fails a VM (and the task it was reserved for or running).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn fail_vm(&self, id: &str, reason: &str, now: i64) -> Result<(), StoreError> {
        let vm = self.vm(id).await?;
        let sql = format!(
            "UPDATE vms SET state = 'failed', failure_reason = $2, failed_at = $3, state_since = $3 \
             WHERE id = $1 AND state IN {VM_LIVE}"
        );
        execute!(&self.db, &sql, id, reason, now)?;
        if let Some(task) = vm.task_id {
            self.fail_task(&task, reason, now).await?;
        }
        Ok(())
    }

    /// A VM whose instance vanished before its task started: the VM fails, its volume is let
    /// go, and the task (if still waiting) is reserved `replacement` instead. Returns whether
    /// the task was requeued (false when it had started or ended meanwhile: then only the VM
    /// fails, and its task with it if running).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn requeue_task(
        &self,
        task_id: &str,
        lost_vm: &str,
        reason: &str,
        replacement: &VmRow,
        now: i64,
    ) -> Result<bool, StoreError> {
        let fail_vm = format!(
            "UPDATE vms SET state = 'failed', failure_reason = $2, failed_at = $3, state_since = $3, task_id = NULL \
             WHERE id = $1 AND state IN {VM_LIVE}"
        );
        let requeued = in_tx!(&self.db, |tx| {
            let waiting: Option<String> =
                sqlx::query_scalar("SELECT id FROM tasks WHERE id = $1 AND state = 'waiting' AND vm_id = $2")
                    .bind(task_id)
                    .bind(lost_vm)
                    .fetch_optional(&mut *tx)
                    .await?;
            if waiting.is_some() {
                execute_in!(tx, &fail_vm, lost_vm, reason, now);
                execute_in!(
                    tx,
                    "UPDATE volumes SET state = CASE WHEN provider_id IS NULL THEN 'available' ELSE 'detaching' END, \
                     task_id = CASE WHEN provider_id IS NULL THEN NULL ELSE task_id END, \
                     vm_id = CASE WHEN provider_id IS NULL THEN NULL ELSE vm_id END, state_since = $2 \
                     WHERE task_id = $1 AND state IN ('creating','attaching','attached')",
                    task_id,
                    now
                );
                insert_vm!(&mut *tx, replacement)?;
                execute_in!(
                    tx,
                    "UPDATE tasks SET vm_id = $2, volume_id = NULL WHERE id = $1",
                    task_id,
                    &replacement.id
                );
            }
            waiting.is_some()
        });
        if !requeued {
            self.fail_vm(lost_vm, reason, now).await?;
        }
        Ok(requeued)
    }

    /// A volume record whose volume the provider no longer has becomes `deleted`, if it is
    /// still unused. Returns whether it changed.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn forget_volume(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let sql = "UPDATE volumes SET state = 'deleted', state_since = $2 WHERE id = $1 AND state = 'available'";
        let n = execute!(&self.db, sql, id, now)?;
        Ok(n == 1)
    }

    /// Marks a VM for no new work.
    ///
    /// # Errors
    /// [`StoreError::NotFound`].
    pub async fn drain_vm(&self, id: &str) -> Result<VmRow, StoreError> {
        execute!(&self.db, "UPDATE vms SET draining = TRUE WHERE id = $1", id)?;
        self.vm(id).await
    }

    /// Counts of live VMs by pool and state, and tasks by state.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn counts(&self) -> Result<Counts, StoreError> {
        let vms: Vec<(String, String, i64)> = with_pool!(&self.db, |p| sqlx::query_as(
            "SELECT pool, state, COUNT(*) FROM vms WHERE state NOT IN ('terminated','failed') GROUP BY pool, state"
        )
        .fetch_all(p)
        .await)?;
        let tasks: Vec<(String, String, i64)> = with_pool!(&self.db, |p| sqlx::query_as(
            "SELECT pool, state, COUNT(*) FROM tasks WHERE state IN ('waiting','assigned') GROUP BY pool, state"
        )
        .fetch_all(p)
        .await)?;
        let volumes: Vec<(String, i64)> = with_pool!(&self.db, |p| sqlx::query_as(
            "SELECT state, COUNT(*) FROM volumes WHERE state <> 'deleted' GROUP BY state"
        )
        .fetch_all(p)
        .await)?;
        Ok(Counts { vms, tasks, volumes })
    }
}
