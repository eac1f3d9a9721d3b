//! A VM's way from booting to ready to handed over to retired: readiness checks, Docker TLS,
//! DLC volumes, and terminations.

use super::*;

impl Fleet {
    /// Runs `job` for `vm_id` in the background unless one is already running for that VM,
    /// then wakes the loop so its outcome is acted on at once.
    pub(super) fn spawn_for_vm<F, Fut>(self: &Arc<Self>, vm_id: &str, what: &'static str, job: F)
    where
        F: FnOnce(Arc<Self>, String) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), FleetError>> + Send + 'static,
    {
        if !self.checking.lock().unwrap_or_else(|p| p.into_inner()).insert(vm_id.to_string()) {
            return;
        }
        let fleet = self.clone();
        let vm_id = vm_id.to_string();
        tokio::spawn(async move {
            if let Err(e) = job(fleet.clone(), vm_id.clone()).await {
                warn!(vm = %vm_id, error = %e, "{what} failed");
            }
            fleet.checking.lock().unwrap_or_else(|p| p.into_inner()).remove(&vm_id);
            fleet.wake();
        });
    }

    pub(super) fn spawn_readiness(self: &Arc<Self>, vm_id: &str) {
        self.spawn_for_vm(vm_id, "readiness check", |fleet, id| async move { fleet.become_ready(&id).await });
    }

    pub(super) fn spawn_handover(self: &Arc<Self>, vm_id: &str) {
        self.spawn_for_vm(vm_id, "hand-over", |fleet, id| async move {
            let vm = fleet.store.vm(&id).await?;
            fleet.hand_over(&vm).await
        });
    }

    pub(crate) fn ssh_target(vm: &VmRow) -> Option<ssh::Target> {
        Some(ssh::Target {
            host: vm.host.clone()?,
            port: u16::try_from(vm.ssh_port?).ok()?,
            user: vm.ssh_user.clone(),
            private_key: vm.ssh_private_key.clone(),
            host_key: vm.host_key.clone(),
        })
    }

    /// SSH handshake within the connect timeout (and what is left of the start timeout), then
    /// ready (or handed to its task).
    pub(super) async fn become_ready(&self, vm_id: &str) -> Result<(), FleetError> {
        let vm = self.store.vm(vm_id).await?;
        if vm.vm_state() != Some(VmState::Booting) {
            return Ok(());
        }
        let Some(target) = Self::ssh_target(&vm) else { return Ok(()) };
        let start_left = self.config.timeouts.vm_start.as_millis() as i64 - (self.now() - vm.start_clock());
        let deadline = self.config.timeouts.ssh_connect.min(Duration::from_millis(start_left.max(1) as u64));
        let setup = match ssh::wait_ready(&target, deadline).await {
            Ok(session) => {
                let setup = if vm.executor == Executor::RemoteDocker.as_str() {
                    self.install_docker_tls(&vm, &target.host, &session).await
                } else {
                    Ok(())
                };
                session.close().await;
                setup
            }
            Err(e) => Err(format!("SSH not ready: {e}")),
        };
        if let Err(reason) = setup {
            // The pass may have failed it meanwhile (its instance stopped).
            if self.store.vm(vm_id).await?.vm_state() != Some(VmState::Booting) {
                return Ok(());
            }
            return self.fail_and_terminate(&vm, &reason).await;
        }
        let now = self.now();
        self.metrics.provisioning_duration.observe((now - vm.start_clock()) as f64 / 1000.0);
        // Read again: while this one booted, a VM that booted first may have taken its task.
        let vm = self.store.vm(vm_id).await?;
        if vm.vm_state() != Some(VmState::Booting) {
            return Ok(());
        }
        match &vm.task_id {
            Some(_) => self.hand_over(&vm).await,
            None => {
                // A task of this pool still waiting for its own launch takes this VM now; the
                // VM launched for it joins the warm pool when it is up.
                if let Some(task) = self.store.give_to_waiting_task(vm_id, &vm.pool).await? {
                    info!(vm = %vm_id, task = %task, "ready: taken by a task waiting for a boot");
                    let vm = self.store.vm(vm_id).await?;
                    return self.hand_over(&vm).await;
                }
                if vm.stop_after_boot {
                    // First boot done and nothing took it: into the stopped tier.
                    if self.store.transition(vm_id, &[VmState::Booting], VmState::Stopping, now).await? {
                        info!(vm = %vm_id, pool = %vm.pool, "answered once; stopping for the stopped tier");
                        self.audit("vm.stop", "fleet", vm_id, "first boot done; into the stopped tier").await;
                        self.stop_instance(&vm).await;
                    }
                    return Ok(());
                }
                self.store.transition(vm_id, &[VmState::Booting], VmState::Ready, now).await?;
                info!(vm = %vm_id, pool = %vm.pool, "ready (warm)");
                Ok(())
            }
        }
    }

    /// Fails a VM (and its task) with `reason` and terminates its instance at once: a failed
    /// VM costs as much as a working one. Should the terminate call fail, the collector
    /// terminates the instance of a finished VM on its next pass.
    pub(super) async fn fail_and_terminate(&self, vm: &VmRow, reason: &str) -> Result<(), FleetError> {
        self.store.fail_vm(&vm.id, reason, self.now()).await?;
        warn!(vm = %vm.id, "failed: {reason}");
        self.audit("vm.fail", "fleet", &vm.id, reason).await;
        if let Some(instance) = &vm.instance_id {
            if let Err(e) = self.provider.terminate(std::slice::from_ref(instance)).await {
                warn!(vm = %vm.id, error = %e, "terminating the failed VM's instance; the collector will retry");
            }
        }
        Ok(())
    }

    /// Asks the provider to stop a `stopping` VM's instance; a failed call is repeated by the
    /// next pass, which sees the instance still running.
    pub(super) async fn stop_instance(&self, vm: &VmRow) {
        let Some(instance) = &vm.instance_id else { return };
        let hibernate = self.pool_config(&vm.pool).and_then(|p| p.stopped).is_some_and(|s| s.hibernate);
        if let Err(e) = self.provider.stop(std::slice::from_ref(instance), hibernate).await {
            warn!(vm = %vm.id, error = %e, "stopping the instance; the next pass retries");
        }
    }

    /// Asks the provider to start a `starting` VM's instance. Without capacity to start it,
    /// the VM is failed and terminated, and its task (if any) gets a fresh launch instead; any
    /// other failed call is repeated by the next pass, which sees the instance still stopped.
    pub(super) async fn start_instance(&self, vm: &VmRow) -> Result<(), FleetError> {
        let Some(instance) = &vm.instance_id else { return Ok(()) };
        match self.provider.start(std::slice::from_ref(instance)).await {
            Ok(()) => Ok(()),
            Err(ProvisionError::InsufficientCapacity(m)) => {
                let reason = format!("no capacity to start stopped instance {instance}: {m}");
                self.metrics.start_failures.inc();
                match &vm.task_id {
                    Some(task) => {
                        self.requeue(task, &vm.id, &reason, self.now()).await?;
                        warn!(vm = %vm.id, task = %task, "{reason}; the task gets a fresh launch");
                        self.audit("vm.fail", "fleet", &vm.id, &reason).await;
                        if let Err(e) = self.provider.terminate(std::slice::from_ref(instance)).await {
                            warn!(vm = %vm.id, error = %e, "terminating the instance; the collector will retry");
                        }
                        Ok(())
                    }
                    None => self.fail_and_terminate(vm, &reason).await,
                }
            }
            Err(e) => {
                warn!(vm = %vm.id, error = %e, "starting the instance; the next pass retries");
                Ok(())
            }
        }
    }

    /// The installation's Docker CA, made on first use.
    pub(super) async fn docker_ca(&self) -> Result<vmfleet_provisioner::tls::DockerCa, FleetError> {
        use vmfleet_provisioner::tls::DockerCa;
        let pem = match self.store.docker_ca_stored().await? {
            Some(pem) => pem,
            None => {
                let fresh =
                    DockerCa::generate(&self.install_id).map_err(FleetError::other("generating the Docker CA"))?;
                self.store.docker_ca(&fresh.pem).await?
            }
        };
        Ok(DockerCa::from_pem(&self.install_id, pem))
    }

    /// Issues the VM's Docker server certificate for the address tasks will dial and installs it
    /// over SSH; where the image has a Docker daemon, it then serves on 2376 with TLS required.
    pub(super) async fn install_docker_tls(
        &self,
        vm: &VmRow,
        host: &str,
        session: &ssh::Session,
    ) -> Result<(), String> {
        let ca = self.docker_ca().await.map_err(|e| e.to_string())?;
        // A VM lives at most a day by default; the certificate outlives it comfortably.
        let server = ca.issue_server(&vm.id, host, Duration::from_secs(7 * 86400)).map_err(|e| e.to_string())?;
        let out = session
            .exec(&vmfleet_provisioner::tls::install_script(&ca.pem.cert, &server))
            .await
            .map_err(|e| format!("installing Docker TLS: {e}"))?;
        if out.exit_status != Some(0) {
            return Err(format!(
                "installing Docker TLS failed with status {:?}: {}",
                out.exit_status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let enabled = String::from_utf8_lossy(&out.stdout).contains("docker-tls: enabled");
        let docker_host = enabled.then(|| format!("tcp://{host}:2376"));
        self.store.set_docker_host(&vm.id, docker_host.as_deref()).await.map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Attaches the task's DLC volume if it wants one, then hands the VM over.
    pub(super) async fn hand_over(&self, vm: &VmRow) -> Result<(), FleetError> {
        let Some(task_id) = &vm.task_id else { return Ok(()) };
        let task = self.store.task(task_id).await?;
        if task.state != "waiting" {
            return Ok(());
        }
        if task.dlc {
            self.attach_volume(&task, vm).await?;
        }
        if task.executor == Executor::RemoteDocker.as_str() {
            let ca = self.docker_ca().await?;
            let valid = self.config.timeouts.long_running_task + Duration::from_secs(3600);
            let client =
                ca.issue_client(task_id, valid).map_err(FleetError::other("issuing the Docker client certificate"))?;
            self.store.set_docker_client(task_id, &client.cert, &client.key).await?;
        }
        let now = self.now();
        match self.store.hand_over(task_id, &vm.id, now).await {
            Ok(()) => {}
            // Another VM took the task meanwhile: this one is checked again by the next pass,
            // without the task.
            Err(StoreError::Conflict(m)) => {
                info!(vm = %vm.id, task = %task_id, "not handed over: {m}");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        self.metrics.assignment_latency.observe((now - task.created_at) as f64 / 1000.0);
        info!(vm = %vm.id, task = %task_id, "handed over");
        Ok(())
    }

    pub(super) async fn attach_volume(&self, task: &TaskRow, vm: &VmRow) -> Result<(), FleetError> {
        let now = self.now();
        let zone = vm.zone.clone().unwrap_or_default();
        let fresh = VolumeRow {
            id: format!("vol-{}", short_id()),
            project: task.project.clone(),
            provider_id: None,
            zone: zone.clone(),
            size_gb: i64::from(self.config.volumes.size_gb),
            state: "creating".into(),
            task_id: Some(task.id.clone()),
            vm_id: Some(vm.id.clone()),
            created_at: now,
            last_used_at: now,
            state_since: now,
        };
        let mut task = task.clone();
        task.vm_id = Some(vm.id.clone());
        let max = self.policies().limits.max_volumes;
        let Some(vol) = self.store.claim_volume_within(&task, &zone, &fresh, max).await? else {
            // Every volume is in use at the bound: the task runs with a cold cache.
            warn!(task = %task.id, project = %task.project, "no DLC volume: max_volumes reached and none is free");
            self.audit("volume.skipped", "fleet", &task.id, "max_volumes reached and every volume is in use").await;
            return Ok(());
        };
        let provider_id = match &vol.provider_id {
            Some(p) => p.clone(),
            None => {
                let spec = VolumeSpec {
                    volume_id: vol.id.clone(),
                    install_id: self.install_id.clone(),
                    project: vol.project.clone(),
                    size_gb: vol.size_gb as u32,
                    zone,
                    tags: self.config.provider.tags.clone(),
                };
                let created = self
                    .provider
                    .create_volume(&spec)
                    .await
                    .map_err(FleetError::provider("creating the DLC volume"))?;
                self.store.set_volume_provider_id(&vol.id, &created.provider_id, self.now()).await?;
                created.provider_id
            }
        };
        let instance = vm.instance_id.clone().unwrap_or_default();
        self.provider
            .attach_volume(&provider_id, &instance)
            .await
            .map_err(FleetError::provider("attaching the DLC volume"))?;
        if let Some(script) = self.provider.data_root_script(&provider_id) {
            // A running VM (warm or on-demand): remount Docker's data root before the hand-over.
            let target = Self::ssh_target(vm)
                .ok_or_else(|| FleetError::Internal(format!("vm {} has no SSH address yet", vm.id)))?;
            let session = ssh::wait_ready(&target, self.config.timeouts.ssh_connect)
                .await
                .map_err(FleetError::other("mounting the DLC volume"))?;
            let out = session.exec(&script).await;
            session.close().await;
            let out = out.map_err(FleetError::other("mounting the DLC volume"))?;
            if out.exit_status != Some(0) {
                return Err(FleetError::Internal(format!(
                    "mounting the DLC volume failed with status {:?}: {}",
                    out.exit_status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        self.store.set_volume_attached(&vol.id, &task.id, &vm.id, self.now()).await?;
        Ok(())
    }

    /// Detaches volumes of released VMs, then terminates their instances in one call. Returns
    /// the instances terminated.
    pub(super) async fn retire_released(&self, vms: &[VmRow]) -> Result<HashSet<String>, FleetError> {
        let now = self.now();
        let mut still_attached: HashSet<String> = HashSet::new();
        for vol in self.store.volumes(Some("detaching")).await? {
            let instance =
                vol.vm_id.as_deref().and_then(|id| vms.iter().find(|v| v.id == id)).and_then(|v| v.instance_id.clone());
            let detached = match (&vol.provider_id, instance) {
                (Some(p), Some(i)) => self.provider.detach_volume(p, &i).await,
                _ => Ok(()),
            };
            match detached {
                Ok(()) | Err(ProvisionError::NotFound(_)) => self.store.set_volume_detached(&vol.id, now).await?,
                Err(e) => {
                    warn!(volume = %vol.id, error = %e, "detach failed; will retry");
                    still_attached.extend(vol.vm_id);
                }
            }
        }
        let retiring: Vec<&VmRow> =
            vms.iter().filter(|v| matches!(v.vm_state(), Some(VmState::Releasing | VmState::Terminating))).collect();
        if retiring.is_empty() {
            return Ok(HashSet::new());
        }
        let ready: Vec<&VmRow> = retiring.into_iter().filter(|v| !still_attached.contains(&v.id)).collect();
        let ids: Vec<String> = ready.iter().filter_map(|v| v.instance_id.clone()).collect();
        for vm in &ready {
            self.store.transition(&vm.id, &[VmState::Releasing], VmState::Terminating, now).await?;
        }
        match self.provider.terminate(&ids).await {
            Ok(()) => {
                for vm in ready {
                    self.store.transition(&vm.id, &[VmState::Terminating], VmState::Terminated, self.now()).await?;
                    info!(vm = %vm.id, "terminated");
                }
                Ok(ids.into_iter().collect())
            }
            Err(e) => {
                warn!(error = %e, "terminate failed; will retry");
                Ok(HashSet::new())
            }
        }
    }

    pub(super) async fn delete_volumes(&self) -> Result<(), FleetError> {
        for vol in self.store.volumes(Some("deleting")).await? {
            let result = match &vol.provider_id {
                Some(p) => self.provider.delete_volume(p).await,
                None => Ok(()),
            };
            match result {
                Ok(()) => self.store.set_volume_state(&vol.id, "deleted", self.now()).await?,
                Err(e) => warn!(volume = %vol.id, error = %e, "volume delete failed; will retry"),
            }
        }
        Ok(())
    }
}
