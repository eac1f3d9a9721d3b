//! The reconcile loop: leadership, one pass of observe, plan, re-check, act, and launches
//! of requested VMs.

use super::*;

impl Fleet {
    /// Runs the reconcile loop until `shutdown` fires.
    pub async fn run(self: Arc<Self>, shutdown: tokio_util_shutdown::Shutdown) {
        let mut leader: Option<sqlx::pool::PoolConnection<sqlx::Postgres>> = None;
        loop {
            let is_leader = match self.store.db() {
                Db::Sqlite(_) => true,
                Db::Postgres(pool) => {
                    if leader.is_none() {
                        leader = try_lead(pool).await;
                    }
                    leader.is_some()
                }
            };
            if is_leader {
                let result = self.reconcile_once().await;
                self.pass_ended(&result);
                if let Err(e) = result {
                    warn!(error = %e, "reconcile pass failed; retrying");
                    // A failed pass may mean a lost connection: lead again from scratch.
                    leader = None;
                }
            }
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = self.wake.notified() => {},
                _ = tokio::time::sleep(self.config.reconcile_interval) => {},
            }
        }
    }

    /// One pass of observe, plan, re-check, act.
    ///
    /// # Errors
    /// Store or provider errors that stop the pass; the next pass starts over.
    pub async fn reconcile_once(self: &Arc<Self>) -> Result<(), FleetError> {
        let now = self.now();
        // Other replicas may have registered or promoted images.
        self.refresh_catalog().await?;
        let instances =
            self.provider.describe(&self.install_id).await.map_err(FleetError::provider("describe instances"))?;
        self.launch_requested(&instances).await?;
        let by_id: HashMap<&str, &vmfleet_provisioner::Instance> =
            instances.iter().map(|i| (i.instance_id.as_str(), i)).collect();

        let vms = self.store.live_vms().await?;
        for vm in &vms {
            let Some(state) = vm.vm_state() else { continue };
            let inst = vm.instance_id.as_deref().and_then(|id| by_id.get(id));
            let stopped = |i: &&&vmfleet_provisioner::Instance| {
                matches!(i.state, InstanceState::Stopping | InstanceState::Stopped)
            };
            if let Some(inst) = inst.filter(stopped) {
                // Nothing here stopped it, so it will not come back: fail now rather than at
                // the VM start timeout, or by handing a task a VM that does not answer.
                let reason = match state {
                    VmState::Provisioning | VmState::Booting => Some("stopped before the VM was ready"),
                    VmState::Ready => Some("stopped while the VM waited warm"),
                    _ => None,
                };
                if let Some(reason) = reason {
                    self.fail_and_terminate(vm, &format!("instance {} {reason}", inst.instance_id)).await?;
                    continue;
                }
            }
            match state {
                // Launched, or started again from stopped: booting once the instance runs.
                VmState::Provisioning | VmState::Starting
                    if inst.is_some_and(|i| i.state == InstanceState::Running) =>
                {
                    if let Some(inst) = inst {
                        if let Some(host) = &inst.host {
                            self.store.set_booting(&vm.id, host, inst.ssh_port, inst.host_key.as_deref(), now).await?;
                            self.spawn_readiness(&vm.id);
                        }
                    }
                }
                VmState::Booting => self.spawn_readiness(&vm.id),
                VmState::Stopping => match inst.map(|i| i.state) {
                    Some(InstanceState::Stopped) => {
                        let done = self.store.transition(&vm.id, &[VmState::Stopping], VmState::Stopped, now).await?;
                        if done {
                            info!(vm = %vm.id, pool = %vm.pool, "stopped (stopped tier)");
                        }
                    }
                    // Killed between recording the stop and asking for it, or the call failed.
                    Some(InstanceState::Running | InstanceState::Pending) if now - vm.state_since > RESEND_MS => {
                        self.stop_instance(vm).await;
                    }
                    _ => {}
                },
                VmState::Starting
                    if inst.is_some_and(|i| i.state == InstanceState::Stopped) && now - vm.state_since > RESEND_MS =>
                {
                    self.start_instance(vm).await?;
                }
                VmState::Assigned => {
                    // A warm VM claimed by a DLC task: attach the volume, then hand over.
                    if let Some(task_id) = &vm.task_id {
                        let task = self.store.task(task_id).await?;
                        if task.state == "waiting" {
                            self.spawn_handover(&vm.id);
                        }
                    }
                }
                _ => {}
            }
        }
        let gone = self.retire_released(&vms).await?;
        self.delete_volumes().await?;
        self.step_scale(now).await;
        self.scale(&vms, now).await?;
        self.publish(&vms, now).await;
        self.drain_lifecycle(now).await;
        // The describe above predates this pass's terminations.
        let still: Vec<vmfleet_provisioner::Instance> =
            instances.into_iter().filter(|i| !gone.contains(&i.instance_id)).collect();
        self.collect(&still, now).await?;
        // Counts the pass (a zero interval is always due).
        self.due("pass", Duration::ZERO, now);
        Ok(())
    }

    /// Launches every requested VM, up to [`LAUNCHES_IN_FLIGHT`] at a time: one at a time, a
    /// burst of 200 waited 200 cloud round trips for its last VM (the provider's token bucket
    /// still bounds the rate of calls). A requested VM that `instances` (this pass's describe)
    /// already shows launched, by a pass whose answer was lost or a process killed after the
    /// call, is adopted instead; the rest launch without looking themselves up again.
    pub(super) async fn launch_requested(&self, instances: &[vmfleet_provisioner::Instance]) -> Result<(), FleetError> {
        use futures_util::stream::StreamExt;
        let requested = self.store.vms(&[VmState::Requested]).await?;
        let by_vm: HashMap<&str, &vmfleet_provisioner::Instance> = instances
            .iter()
            .filter(|i| i.state != InstanceState::Terminated)
            .filter_map(|i| Some((i.vm_id.as_deref()?, i)))
            .collect();
        let mut fresh = Vec::new();
        for vm in &requested {
            match by_vm.get(vm.id.as_str()) {
                Some(inst) => {
                    let itype = inst.instance_type.as_deref();
                    self.store.set_launched(&vm.id, &inst.instance_id, &inst.zone, itype, self.now()).await?;
                    info!(vm = %vm.id, instance = %inst.instance_id, pool = %vm.pool, "adopted the instance launched before");
                }
                None => fresh.push(vm),
            }
        }
        // Boxed: a stream over a closure here trips the compiler's Send check of `run`'s future.
        let launches: Vec<futures_util::future::BoxFuture<'_, Result<(), FleetError>>> =
            fresh.into_iter().map(|vm| Box::pin(self.launch_one(vm)) as _).collect();
        let mut results = futures_util::stream::iter(launches).buffer_unordered(LAUNCHES_IN_FLIGHT);
        let mut first_error = None;
        while let Some(r) = results.next().await {
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn launch_one(&self, vm: &VmRow) -> Result<(), FleetError> {
        let pool = self.pool_config(&vm.pool);
        // A stopped-tier VM is on demand: a one-time spot instance cannot be stopped.
        let capacity = if vm.stop_after_boot {
            vmfleet_provisioner::Capacity::OnDemand
        } else {
            pool.as_ref().map(|p| p.capacity).unwrap_or_default()
        };
        let hibernate = vm.stop_after_boot && pool.as_ref().and_then(|p| p.stopped).is_some_and(|s| s.hibernate);
        let spec = LaunchSpec {
            vm_id: vm.id.clone(),
            install_id: self.install_id.clone(),
            pool: vm.pool.clone(),
            image_id: vm.image_id.clone(),
            instance_type: vm.instance_type.clone(),
            fallback_instance_types: self.instance_types(&vm.pool, &vm.resource_class).split_off(1),
            capacity,
            platform: if vm.platform == "windows" { Platform::Windows } else { Platform::Linux },
            ssh_user: vm.ssh_user.clone(),
            ssh_public_key: vm.ssh_public_key.clone(),
            tags: self.config.provider.tags.clone(),
            skip_lookup: true,
            hibernate,
        };
        match self.provider.launch(&spec).await {
            Ok(inst) => {
                let itype = inst.instance_type.as_deref();
                self.store.set_launched(&vm.id, &inst.instance_id, &inst.zone, itype, self.now()).await?;
                info!(vm = %vm.id, instance = %inst.instance_id, pool = %vm.pool, "launched");
            }
            Err(ProvisionError::Invalid(m)) => {
                self.store.fail_vm(&vm.id, &format!("launch refused: {m}"), self.now()).await?;
            }
            Err(e) => warn!(vm = %vm.id, error = %e, "launch failed; will retry"),
        }
        Ok(())
    }

    /// Whether the periodic job `name` is due (and if so, marks it run at `now`).
    pub(super) fn due(&self, name: &'static str, every: Duration, now: i64) -> bool {
        let mut t = self.timers.lock().unwrap_or_else(|p| p.into_inner());
        let (last, runs) = t.get(name).copied().map_or((None, 0), |(l, n)| (Some(l), n));
        if last.is_some_and(|l| now - l < every.as_millis() as i64) {
            return false;
        }
        t.insert(name, (now, runs + 1));
        true
    }
}

/// A stop or start that the instance does not show after this long is asked for again (the
/// process may have died between recording it and calling the provider).
const RESEND_MS: i64 = 10_000;

/// How many launches one pass has in flight at once.
const LAUNCHES_IN_FLIGHT: usize = 16;

pub(super) async fn try_lead(pool: &sqlx::PgPool) -> Option<sqlx::pool::PoolConnection<sqlx::Postgres>> {
    // A session-level advisory lock held on a dedicated connection: it is released when the
    // connection (or the process) dies, and another replica takes over.
    const KEY: i64 = 0x0076_6d66_6c65_6574;
    let mut conn = pool.acquire().await.ok()?;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(KEY).fetch_one(&mut *conn).await.ok()?;
    got.then_some(conn)
}
