//! The task API: requests, releases, and what an operator does to a VM or a volume.

use super::*;

impl Fleet {
    /// Records a task and gives it a VM: a warm one at once if its pool has one, else an
    /// on-demand launch.
    ///
    /// # Errors
    /// [`FleetError::BadRequest`] naming an unknown executor, image, resource class or a bad
    /// project name.
    pub async fn request_task(&self, req: &TaskRequest) -> Result<TaskRow, FleetError> {
        self.request_task_as(req, format!("task-{}", short_id())).await
    }

    /// [`Fleet::request_task`] under an id the caller chose (and recorded first, so a crash
    /// between the two leaves nothing unknown). Asking again with the same id and request
    /// returns the task as recorded, and asks for nothing more.
    ///
    /// # Errors
    /// As [`Fleet::request_task`].
    pub async fn request_task_as(&self, req: &TaskRequest, id: String) -> Result<TaskRow, FleetError> {
        let executor = Executor::parse(&req.executor).ok_or_else(|| {
            FleetError::BadRequest(format!("unknown executor {:?}; use machine or remote-docker", req.executor))
        })?;
        validate_project(&req.project)?;
        let pool = pool_key(executor.as_str(), &req.image, &req.resource_class);
        // The id is the idempotency token: a retry after a lost answer gets the recorded task.
        match self.store.task(&id).await {
            Ok(t) if t.pool == pool && t.project == req.project && t.dlc == req.docker_layer_caching => return Ok(t),
            Ok(t) => {
                return Err(FleetError::Conflict(format!("task {} is recorded for another request ({})", t.id, t.pool)))
            }
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let now = self.now();
        let task = TaskRow {
            id,
            pool,
            executor: executor.as_str().into(),
            image: req.image.clone(),
            resource_class: req.resource_class.clone(),
            project: req.project.clone(),
            dlc: req.docker_layer_caching,
            state: "waiting".into(),
            vm_id: None,
            volume_id: None,
            failure_reason: None,
            created_at: now,
            assigned_at: None,
            released_at: None,
            docker_client_cert: None,
            docker_client_key: None,
        };
        let on_demand = self.new_vm(executor, &req.image, &req.resource_class, Some(&task.id), now)?;
        let audit = self.event("task.request", "api", &task.id, &task.pool);
        let a = self.store.request_task_within(&task, &on_demand, Some(&audit), self.bounds(&task.pool)).await?;
        if let Some(vm) = a.vm.as_ref().filter(|_| a.started) {
            info!(task = %task.id, vm = %vm.id, pool = %task.pool, "starting a stopped VM for the task");
            self.audit("vm.start", "api", &vm.id, &format!("for task {}", task.id)).await;
            // The task is recorded; should this fail, the next pass asks again.
            if let Err(e) = self.start_instance(vm).await {
                warn!(task = %task.id, vm = %vm.id, error = %e, "starting the stopped VM; the next pass retries");
            }
        }
        self.wake();
        let mut task = task;
        task.vm_id = a.vm.as_ref().map(|v| v.id.clone());
        if a.vm.is_none() {
            info!(task = %task.id, pool = %task.pool, "queued: max_instances reached");
        }
        if a.handed_over {
            task.state = "assigned".into();
            task.assigned_at = Some(now);
            self.metrics.assignment_latency.observe((self.now() - now) as f64 / 1000.0);
        }
        Ok(task)
    }

    /// Releases a task; its VM is destroyed and its volume detached.
    ///
    /// # Errors
    /// [`FleetError::NotFound`].
    pub async fn release_task(&self, id: &str) -> Result<TaskRow, FleetError> {
        let t = self.store.release_task(id, self.now()).await?;
        self.audit("task.release", "api", id, "").await;
        self.wake();
        Ok(t)
    }

    /// Stops new work going to a VM.
    ///
    /// # Errors
    /// [`FleetError::NotFound`].
    pub async fn drain_vm(&self, id: &str) -> Result<VmRow, FleetError> {
        let vm = self.store.drain_vm(id).await?;
        self.audit("vm.drain", "api", id, "").await;
        Ok(vm)
    }

    /// Destroys a VM now; a task running on it fails with that reason.
    ///
    /// # Errors
    /// [`FleetError::NotFound`].
    pub async fn destroy_vm(&self, id: &str) -> Result<VmRow, FleetError> {
        let vm = self.store.vm(id).await?;
        let now = self.now();
        match &vm.task_id {
            Some(task) if matches!(vm.vm_state(), Some(s) if is_live(s)) => {
                self.store.fail_task(task, &format!("vm {id} was destroyed by an operator"), now).await?;
            }
            _ => {
                use VmState::*;
                self.store.transition(id, &[Requested, Provisioning, Booting, Ready, Assigned], Releasing, now).await?;
            }
        }
        self.audit("vm.destroy", "api", id, "").await;
        self.wake();
        Ok(self.store.vm(id).await?)
    }

    /// Marks a volume for deletion.
    ///
    /// # Errors
    /// [`FleetError::Conflict`] while it is attached.
    pub async fn delete_volume(&self, id: &str) -> Result<VolumeRow, FleetError> {
        let v = self.store.request_volume_delete(id, self.now()).await?;
        self.audit("volume.delete", "api", id, "").await;
        self.wake();
        Ok(v)
    }
}
