//! The collector's snapshot, and carrying out its actions.

use super::*;

impl Fleet {
    /// Garbage collection within the reconcile pass, on the instances it already described,
    /// once every `gc.interval`.
    pub(super) async fn collect(
        &self,
        instances: &[vmfleet_provisioner::Instance],
        now: i64,
    ) -> Result<(), FleetError> {
        if !self.due("gc", self.config.gc.interval, now) {
            return Ok(());
        }
        let volumes =
            self.provider.describe_volumes(&self.install_id).await.map_err(FleetError::provider("describe volumes"))?;
        let actions = self.gc_plan(instances, &volumes, now, self.config.gc.orphan_grace).await?;
        self.apply_gc_all(&actions).await
    }

    /// What the collector would do now: observe (one describe of instances, one of volumes),
    /// plan. `orphan_grace` overrides the configured grace for this pass.
    ///
    /// # Errors
    /// Store or provider errors.
    pub async fn gc_dry_run(&self, orphan_grace: Option<Duration>) -> Result<Vec<vmfleet_gc::GcAction>, FleetError> {
        let cloud = |what: &str, e: ProvisionError| FleetError::provider(format!("describe {what}"))(e);
        let instances = self.provider.describe(&self.install_id).await.map_err(|e| cloud("instances", e))?;
        let volumes = self.provider.describe_volumes(&self.install_id).await.map_err(|e| cloud("volumes", e))?;
        self.gc_plan(&instances, &volumes, self.now(), orphan_grace.unwrap_or(self.config.gc.orphan_grace)).await
    }

    /// Stuck, lost, leaked and orphaned VMs and volumes, and tasks waiting too long: the `gc`
    /// planner over the store and what the provider reported.
    pub(super) async fn gc_plan(
        &self,
        instances: &[vmfleet_provisioner::Instance],
        volumes: &[vmfleet_provisioner::Volume],
        now: i64,
        orphan_grace: Duration,
    ) -> Result<Vec<vmfleet_gc::GcAction>, FleetError> {
        // Live VMs, plus the few finished ones whose instance the provider still reports: not the
        // whole history, which grows without bound.
        let mut vms = self.store.live_vms().await?;
        let live: HashSet<String> = vms.iter().map(|v| v.id.clone()).collect();
        for id in instances.iter().filter_map(|i| i.vm_id.as_ref()).filter(|id| !live.contains(*id)) {
            match self.store.vm(id).await {
                Ok(vm) => vms.push(vm),
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let waiting = self.store.tasks(Some("waiting"), i64::MAX).await?;
        let waiting_ids: HashSet<&str> = waiting.iter().map(|t| t.id.as_str()).collect();
        let snap = vmfleet_gc::Snapshot {
            vms: vms.iter().filter_map(|v| gc_record(v, &waiting_ids)).collect(),
            instances: instances
                .iter()
                .filter(|i| i.state != InstanceState::Terminated)
                .map(|i| vmfleet_gc::CloudInstance {
                    instance_id: i.instance_id.clone(),
                    vm_id: i.vm_id.clone(),
                    launched_at_ms: i.launched_at_ms,
                })
                .collect(),
            volumes: self.store.volumes(None).await?.iter().filter_map(gc_volume).collect(),
            cloud_volumes: volumes
                .iter()
                .map(|v| vmfleet_gc::CloudVolume {
                    provider_id: v.provider_id.clone(),
                    volume_id: v.volume_id.clone(),
                    attached_to: v.attached_to.clone(),
                    created_at_ms: v.created_at_ms,
                })
                .collect(),
            waiting: waiting
                .iter()
                .map(|t| vmfleet_gc::WaitingTask { task_id: t.id.clone(), created_at_ms: t.created_at })
                .collect(),
        };
        let settings = gc_settings(&self.config, orphan_grace);
        Ok(vmfleet_gc::plan(&snap, now, &settings, self.config.gc.budget))
    }

    /// Carries out one collector action (see [`Fleet::apply_gc_all`]).
    ///
    /// # Errors
    /// Store errors.
    pub async fn apply_gc(&self, action: &vmfleet_gc::GcAction) -> Result<(), FleetError> {
        self.apply_gc_all(std::slice::from_ref(action)).await
    }

    /// Carries out a pass's actions and writes each, with its reason and outcome, to the audit
    /// log. The instances they terminate go in one call per thousand (a pass after a crash may
    /// name hundreds, and the mutation budget is a few calls a second), before the store records
    /// anything.
    ///
    /// # Errors
    /// Store errors; provider errors leave the records for the next pass (and are audited as
    /// unsuccessful).
    pub async fn apply_gc_all(&self, actions: &[vmfleet_gc::GcAction]) -> Result<(), FleetError> {
        let ids: Vec<String> = actions.iter().filter_map(|a| a.terminates()).map(String::from).collect();
        let terminated = match ids.is_empty() {
            true => Ok(()),
            false => self.provider.terminate(&ids).await.map_err(|e| e.to_string()),
        };
        for action in actions {
            self.apply_one(action, &terminated).await?;
        }
        Ok(())
    }

    async fn apply_one(
        &self,
        action: &vmfleet_gc::GcAction,
        terminated: &Result<(), String>,
    ) -> Result<(), FleetError> {
        use vmfleet_gc::GcAction;
        let now = self.now();
        let done = match action {
            GcAction::FailVm { vm_id, instance_id, reason } => match (instance_id, terminated) {
                (Some(_), Err(e)) => Err(e.clone()),
                _ => {
                    self.store.fail_vm(vm_id, &reason.to_string(), now).await?;
                    Ok(())
                }
            },
            GcAction::TerminateInstance { vm_id, .. } => match terminated {
                Ok(()) => {
                    if let Some(vm) = vm_id {
                        let retiring = [VmState::Releasing, VmState::Terminating];
                        self.store.transition(vm, &retiring, VmState::Terminated, now).await?;
                    }
                    Ok(())
                }
                Err(e) => Err(e.clone()),
            },
            GcAction::MarkLost { vm_id, requeue, reason } => {
                let reason = format!("lost: {reason}");
                match requeue {
                    Some(task_id) => self.requeue(task_id, vm_id, &reason, now).await?,
                    None => self.store.fail_vm(vm_id, &reason, now).await?,
                }
                Ok(())
            }
            GcAction::DeleteVolume { volume_id: Some(id), provider_id, .. } => {
                // Re-check: only while still unused. A provider error leaves it `deleting`, and
                // the deletion is retried on every pass until it succeeds.
                match self.store.request_volume_delete(id, now).await {
                    Ok(_) => match provider_id {
                        Some(p) => match self.provider.delete_volume(p).await {
                            Ok(()) => {
                                self.store.set_volume_state(id, "deleted", self.now()).await?;
                                Ok(())
                            }
                            Err(e) => Err(e.to_string()),
                        },
                        None => {
                            self.store.set_volume_state(id, "deleted", self.now()).await?;
                            Ok(())
                        }
                    },
                    Err(StoreError::Conflict(m)) | Err(StoreError::NotFound(m)) => {
                        info!(volume = %id, "not collected: {m}");
                        return Ok(());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            GcAction::DeleteVolume { volume_id: None, provider_id, .. } => match provider_id {
                Some(p) => self.provider.delete_volume(p).await.map_err(|e| e.to_string()),
                None => Ok(()),
            },
            GcAction::ForgetVolume { volume_id, .. } => {
                self.store.forget_volume(volume_id, now).await?;
                Ok(())
            }
            GcAction::FailTask { task_id, reason } => {
                self.store.fail_task(task_id, &reason.to_string(), now).await?;
                self.wake();
                Ok(())
            }
        };
        let mut e = self.event(action.audit_action(), "gc", &action.target(), &action.reason().to_string());
        match &done {
            Ok(()) => info!(target = %action.target(), reason = %action.reason(), "gc"),
            Err(err) => {
                warn!(target = %action.target(), error = %err, "gc action failed; will retry on the next pass");
                e.success = false;
                e.payload = format!("{}; failed: {err}", action.reason());
            }
        }
        if let Err(err) = self.store.audit(&e).await {
            warn!(%err, "audit event not written");
        }
        Ok(())
    }

    /// Gives a task whose VM was lost before it started a new on-demand VM.
    pub(super) async fn requeue(&self, task_id: &str, lost_vm: &str, reason: &str, now: i64) -> Result<(), FleetError> {
        let task = self.store.task(task_id).await?;
        let fresh = Executor::parse(&task.executor)
            .ok_or_else(|| FleetError::Internal(format!("task {task_id} has unknown executor {}", task.executor)))
            .and_then(|ex| self.new_vm(ex, &task.image, &task.resource_class, Some(task_id), now));
        match fresh {
            Ok(vm) => {
                if self.store.requeue_task(task_id, lost_vm, reason, &vm, now).await? {
                    info!(task = %task_id, lost = %lost_vm, vm = %vm.id, "requeued on a new VM");
                    self.wake();
                }
            }
            // Its image no longer resolves, say: the task cannot get another VM.
            Err(e) => self.store.fail_vm(lost_vm, &format!("{reason}; no new VM: {e}"), now).await?,
        }
        Ok(())
    }
}

pub(super) fn gc_record(vm: &VmRow, waiting: &HashSet<&str>) -> Option<vmfleet_gc::VmRecord> {
    use vmfleet_gc::Phase;
    let phase = match vm.vm_state()? {
        VmState::Requested | VmState::Provisioning | VmState::Booting | VmState::Starting => Phase::Starting,
        VmState::Stopping => Phase::Stopping,
        VmState::Stopped => Phase::Stopped,
        VmState::Ready => Phase::Ready,
        VmState::Assigned => Phase::Assigned,
        VmState::Releasing | VmState::Terminating => Phase::Retiring,
        VmState::Terminated | VmState::Failed => Phase::Done,
    };
    Some(vmfleet_gc::VmRecord {
        vm_id: vm.id.clone(),
        phase,
        instance_id: vm.instance_id.clone(),
        // The start timeout counts from the last start of a VM of the stopped tier.
        requested_at_ms: vm.start_clock(),
        state_since_ms: vm.state_since,
        task: vm.task_id.as_ref().map(|t| (t.clone(), !waiting.contains(t.as_str()))),
    })
}

pub(super) fn gc_volume(v: &VolumeRow) -> Option<vmfleet_gc::VolumeRecord> {
    use vmfleet_gc::VolumePhase;
    let phase = match v.state.as_str() {
        "available" => VolumePhase::Available,
        "deleting" => VolumePhase::Deleting,
        "deleted" => return None,
        _ => VolumePhase::InUse,
    };
    Some(vmfleet_gc::VolumeRecord {
        volume_id: v.id.clone(),
        provider_id: v.provider_id.clone(),
        project: v.project.clone(),
        phase,
        last_used_at_ms: v.last_used_at,
        state_since_ms: v.state_since,
    })
}

/// The collector's settings from the configuration (the service's and the simulator's).
pub fn gc_settings(config: &Config, orphan_grace: Duration) -> vmfleet_gc::Settings {
    vmfleet_gc::Settings {
        vm_start_timeout_ms: config.timeouts.vm_start.as_millis() as i64,
        long_running_task_timeout_ms: config.timeouts.long_running_task.as_millis() as i64,
        orphan_grace_ms: orphan_grace.as_millis() as i64,
        retire_grace_ms: 60_000,
        volume_inactivity_ms: config.timeouts.dlc_inactivity.as_millis() as i64,
        volumes_per_project: config.gc.volumes_per_project,
        task_wait_limit_ms: config.gc.task_wait_limit.as_millis() as i64,
    }
}
