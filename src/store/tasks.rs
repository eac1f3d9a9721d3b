//! Tasks and their assignment to VMs.

use super::*;

impl Store {
    /// Records a task and gives it a VM in one transaction: an idle VM of its pool built from
    /// `on_demand.image_id` if there is one (handed over at once unless the task needs a DLC
    /// volume attached first), else the on-demand VM `on_demand`, reserved for the task.
    ///
    /// # Guarantees
    /// Two concurrent calls never take the same idle VM.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] while the fleet is paused for a reset; [`StoreError::Db`].
    pub async fn request_task(
        &self,
        task: &TaskRow,
        on_demand: &VmRow,
        audit: Option<&AuditEvent>,
    ) -> Result<Assignment, StoreError> {
        self.request_task_within(task, on_demand, audit, Bounds::default()).await
    }

    /// [`Store::request_task`], recording the on-demand VM only while `bounds` leave room;
    /// otherwise the task is queued (waiting, without a VM) for the scaler to serve.
    ///
    /// # Guarantees
    /// Concurrent requests never take the pool or the fleet past the bounds.
    ///
    /// # Errors
    /// As [`Store::request_task`].
    pub async fn request_task_within(
        &self,
        task: &TaskRow,
        on_demand: &VmRow,
        audit: Option<&AuditEvent>,
        bounds: Bounds,
    ) -> Result<Assignment, StoreError> {
        let pg = matches!(self.db, Db::Postgres(_));
        let now = task.created_at;
        Ok(in_tx!(&self.db, |tx| {
            // In the same transaction as the assignment, so a reset cannot interleave.
            let paused: Option<String> =
                sqlx::query_scalar("SELECT value FROM meta WHERE key = 'paused'").fetch_optional(&mut *tx).await?;
            if paused.as_deref() == Some("1") {
                return Err(StoreError::Conflict("the fleet is paused for a reset; try again shortly".into()));
            }
            insert_task!(&mut *tx, task)?;
            if let Some(e) = audit {
                insert_audit!(&mut *tx, e)?;
            }
            // Only a VM of the image the pool resolves to now: after a promotion, new tasks get
            // the new version while outdated VMs wait to be replaced.
            let claimed: Option<VmRow> = claim_idle!(&mut *tx, &task.id, &task.pool, &on_demand.image_id, now);
            match claimed {
                Some(vm) => {
                    let handed = !task.dlc;
                    if handed {
                        execute_in!(
                            tx,
                            "UPDATE tasks SET state = 'assigned', vm_id = $2, assigned_at = $3 WHERE id = $1",
                            &task.id,
                            &vm.id,
                            now
                        );
                    } else {
                        execute_in!(tx, "UPDATE tasks SET vm_id = $2 WHERE id = $1", &task.id, &vm.id);
                    }
                    Assignment { vm: Some(vm), warm: true, handed_over: handed, started: false }
                }
                None => {
                    // A stopped VM before a fresh launch; it is an instance already, so the
                    // bounds have counted it.
                    let started: Option<VmRow> =
                        claim_stopped!(&mut *tx, &task.id, &task.pool, &on_demand.image_id, now);
                    match started {
                        Some(vm) => {
                            execute_in!(tx, "UPDATE tasks SET vm_id = $2 WHERE id = $1", &task.id, &vm.id);
                            Assignment { vm: Some(vm), warm: false, handed_over: false, started: true }
                        }
                        None if room!(&mut *tx, pg, &on_demand.pool, bounds) => {
                            insert_vm!(&mut *tx, on_demand)?;
                            execute_in!(tx, "UPDATE tasks SET vm_id = $2 WHERE id = $1", &task.id, &on_demand.id);
                            Assignment { vm: Some(on_demand.clone()), warm: false, handed_over: false, started: false }
                        }
                        None => Assignment { vm: None, warm: false, handed_over: false, started: false },
                    }
                }
            }
        }))
    }

    /// Hands a task its VM once the VM is up and any DLC volume is attached: the VM becomes
    /// `assigned`, the task `assigned`.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the task is no longer waiting, or the VM no longer holds
    /// it (a VM that booted first took the task meanwhile).
    pub async fn hand_over(&self, task_id: &str, vm_id: &str, now: i64) -> Result<(), StoreError> {
        in_tx!(&self.db, |tx| {
            // The VM first, and only while it still holds the task: a check that read the VM
            // before another took its task must not hand the task a second VM.
            let v = execute_in!(
                tx,
                "UPDATE vms SET state = 'assigned', assigned_at = COALESCE(assigned_at, $3), state_since = $3 \
                 WHERE id = $1 AND task_id = $2 AND state IN ('booting','ready','assigned')",
                vm_id,
                task_id,
                now
            );
            if v != 1 {
                return Err(StoreError::Conflict(format!("task {task_id} is no longer waiting for vm {vm_id}")));
            }
            let t = execute_in!(
                tx,
                "UPDATE tasks SET state = 'assigned', vm_id = $2, assigned_at = $3 WHERE id = $1 AND state = 'waiting'",
                task_id,
                vm_id,
                now
            );
            if t != 1 {
                // Not waiting any more: the VM is left as it was (the transaction is undone).
                return Err(StoreError::Conflict(format!("task {task_id} is no longer waiting")));
            }
        });
        Ok(())
    }

    /// One task.
    ///
    /// # Errors
    /// [`StoreError::NotFound`].
    pub async fn task(&self, id: &str) -> Result<TaskRow, StoreError> {
        with_pool!(&self.db, |p| sqlx::query_as("SELECT * FROM tasks WHERE id = $1").bind(id).fetch_optional(p).await)?
            .ok_or_else(|| StoreError::NotFound(format!("task {id}")))
    }

    /// Tasks, newest first, optionally only those in `state`.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn tasks(&self, state: Option<&str>, limit: i64) -> Result<Vec<TaskRow>, StoreError> {
        let sql = "SELECT * FROM tasks WHERE ($1 IS NULL OR state = $1) ORDER BY created_at DESC, id LIMIT $2";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).bind(state).bind(limit).fetch_all(p).await)?)
    }

    /// Releases a task: the task becomes `released`, its VM `releasing` (VMs are never reused)
    /// and its volume `detaching`. Releasing twice is harmless.
    ///
    /// # Errors
    /// [`StoreError::NotFound`].
    pub async fn release_task(&self, id: &str, now: i64) -> Result<TaskRow, StoreError> {
        in_tx!(&self.db, |tx| {
            release_task_in_tx!(tx, id, now);
        });
        self.task(id).await
    }

    /// Fails a task with a reason and retires its VM and volume.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn fail_task(&self, id: &str, reason: &str, now: i64) -> Result<(), StoreError> {
        in_tx!(&self.db, |tx| {
            execute_in!(
                tx,
                "UPDATE tasks SET state = 'failed', failure_reason = $2, released_at = $3 \
                 WHERE id = $1 AND state IN ('waiting','assigned')",
                id,
                reason,
                now
            );
            retire_task_resources!(tx, id, now);
        });
        Ok(())
    }
}
