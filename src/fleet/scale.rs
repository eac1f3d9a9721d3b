//! Warm pools and queued tasks: the snapshot the scaler plans over, and carrying out its
//! actions.
//!
//! # Design
//! Every decision is `vmfleet_scaler`'s, over the same observation the simulator builds
//! (`vmfleet_scaler::observe` over one [`vmfleet_scaler::VmView`] per VM); this module only
//! reads the store into that snapshot and carries out the actions, each re-checked by a
//! conditional update.

use vmfleet_scaler::{PoolObservation, PoolPolicy, QueuedTask, ScaleAction, VmPhase, VmView};

use super::*;

/// What the scaler plans over: each pool with its policy, and what the fleet's bound leaves
/// for them.
#[derive(Debug, Clone)]
pub struct ScaleSnapshot {
    /// Every pool a policy names, that has queued tasks, or that holds idle VMs.
    pub pools: Vec<(PoolObservation, PoolPolicy)>,
    /// `limits.max_instances` less the instances of pools outside the plan.
    pub fleet_max: Option<u32>,
}

impl Fleet {
    /// The scaler's snapshot of `vms` and the store's queued tasks at `now`.
    ///
    /// # Errors
    /// Store errors.
    pub async fn scale_snapshot(&self, vms: &[VmRow], now: i64) -> Result<ScaleSnapshot, FleetError> {
        let policies = self.policies();
        let queued = self.store.queued_tasks().await?;
        let mut keys: Vec<String> =
            policies.pools.iter().map(|p| pool_key(p.executor.as_str(), &p.image, &p.resource_class)).collect();
        for t in &queued {
            if !keys.contains(&t.pool) {
                keys.push(t.pool.clone());
            }
        }
        // A pool no policy names may still hold idle VMs (a launch a task no longer needed) or
        // stopped ones (a tier a policy no longer sets).
        for v in vms {
            if matches!(v.vm_state(), Some(VmState::Ready | VmState::Stopped))
                && v.task_id.is_none()
                && !keys.contains(&v.pool)
            {
                keys.push(v.pool.clone());
            }
        }
        if keys.is_empty() {
            return Ok(ScaleSnapshot { pools: Vec::new(), fleet_max: policies.limits.max_instances });
        }
        self.refresh_forecasts(&policies, now).await?;
        let mut pools = Vec::new();
        for key in &keys {
            let cfg = policies.pool(key);
            // A promotion changes what the pool's image resolves to; idle VMs on the old one are
            // outdated. (A pool whose image no longer resolves keeps its VMs.)
            let current = self.current_image(key);
            let obs = observe(key, vms, current.as_deref(), &queued);
            let policy = match cfg {
                Some(p) => PoolPolicy {
                    stopped_floor: self.stopped_targets.lock().unwrap_or_else(|p| p.into_inner()).get(key),
                    ..scaler_policy(p, self.target_floor(key))
                },
                None => PoolPolicy::unnamed(),
            };
            pools.push((obs, policy));
        }
        // Instances of pools outside the plan count against the fleet bound too.
        let others =
            vms.iter().filter(|v| !keys.contains(&v.pool)).filter(|v| v.vm_state().is_some_and(is_live)).count() as u32;
        Ok(ScaleSnapshot { pools, fleet_max: policies.limits.max_instances.map(|m| m.saturating_sub(others)) })
    }

    /// The image id a pool that a policy names resolves to now.
    pub fn current_image(&self, key: &str) -> Option<String> {
        let p = self.policies().pool(key)?.clone();
        self.resolve_image(p.executor, &p.image, &p.resource_class).ok().map(|(id, _)| id)
    }

    /// What the scaler would do now over the store's live VMs, without acting.
    ///
    /// # Errors
    /// Store errors.
    pub async fn plan_scale(&self, now: i64) -> Result<Vec<ScaleAction>, FleetError> {
        let vms = self.store.live_vms().await?;
        let snap = self.scale_snapshot(&vms, now).await?;
        Ok(vmfleet_scaler::plan(&snap.pools, snap.fleet_max, now))
    }

    /// Warm pools and queued tasks: observe, plan with the scaler, re-check, act.
    pub(super) async fn scale(&self, vms: &[VmRow], now: i64) -> Result<(), FleetError> {
        if self.store.paused().await? {
            return Ok(());
        }
        let snap = self.scale_snapshot(vms, now).await?;
        if snap.pools.is_empty() {
            return Ok(());
        }
        let policies = self.policies();
        let queued = self.store.queued_tasks().await?;
        for action in vmfleet_scaler::plan(&snap.pools, snap.fleet_max, now) {
            match action {
                ScaleAction::Assign { pool, vm_id, task_id, reason } => {
                    // Re-check: the task still queued and the VM still idle.
                    if self.store.assign_queued(&task_id, &vm_id, self.now()).await? {
                        info!(%pool, vm = %vm_id, task = %task_id, %reason, "assigned");
                        self.wake();
                    }
                }
                ScaleAction::LaunchForTasks { pool, task_ids, reason } => {
                    let mut done = 0;
                    for t in task_ids.iter().filter_map(|id| queued.iter().find(|t| t.id == *id)) {
                        let Some(ex) = Executor::parse(&t.executor) else { continue };
                        let vm = match self.new_vm(ex, &t.image, &t.resource_class, Some(&t.id), self.now()) {
                            Ok(vm) => vm,
                            Err(e) => {
                                self.store.fail_task(&t.id, &format!("no VM can be made: {e}"), self.now()).await?;
                                continue;
                            }
                        };
                        // Re-check: still queued, and the bounds still leave room.
                        if !self.store.reserve_vm_for_task(&t.id, &vm, self.bounds(&pool)).await? {
                            break;
                        }
                        done += 1;
                    }
                    if done > 0 {
                        info!(%pool, count = done, %reason, "on-demand launch for queued tasks");
                        self.wake();
                    }
                }
                ScaleAction::Launch { pool, count, reason } => {
                    self.launch_warm(&policies, &pool, count, false, &reason.to_string()).await?;
                }
                ScaleAction::Start { pool, vm_id, task_id, reason } => {
                    // Re-check: still stopped and free, and the task still queued.
                    if self.store.start_stopped(&vm_id, task_id.as_deref(), self.now()).await? {
                        info!(%pool, vm = %vm_id, task = ?task_id, %reason, "starting a stopped VM");
                        self.audit("vm.start", "scaler", &vm_id, &reason.to_string()).await;
                        let vm = self.store.vm(&vm_id).await?;
                        self.start_instance(&vm).await?;
                        self.wake();
                    }
                }
                ScaleAction::LaunchStopped { pool, count, reason } => {
                    self.launch_warm(&policies, &pool, count, true, &reason.to_string()).await?;
                }
                ScaleAction::Terminate { vm_id, reason, .. } => {
                    // Re-check: only if it is still idle or stopped (a task may have just claimed
                    // it).
                    let idle = [VmState::Ready, VmState::Stopped];
                    if self.store.transition(&vm_id, &idle, VmState::Releasing, self.now()).await? {
                        info!(vm = %vm_id, %reason, "scale in");
                        self.audit("vm.terminate", "scaler", &vm_id, &reason.to_string()).await;
                    }
                }
            }
        }
        Ok(())
    }

    /// Records up to `count` warm VMs of `pool` within its bounds (for the stopped tier when
    /// `stop_after_boot`); the next pass launches them.
    async fn launch_warm(
        &self,
        policies: &crate::policy::Policies,
        pool: &str,
        count: u32,
        stop_after_boot: bool,
        reason: &str,
    ) -> Result<(), FleetError> {
        let Some(p) = policies.pool(pool) else { return Ok(()) };
        let mut done = 0;
        for _ in 0..count {
            let mut vm = match self.new_vm(p.executor, &p.image, &p.resource_class, None, self.now()) {
                Ok(vm) => vm,
                // One misconfigured pool must not stop the others.
                Err(e) => {
                    warn!(%pool, error = %e, "cannot launch for this pool");
                    break;
                }
            };
            vm.stop_after_boot = stop_after_boot;
            if !self.store.insert_vm_within(&vm, self.bounds(pool)).await? {
                break;
            }
            done += 1;
        }
        if done > 0 {
            let what = if stop_after_boot { "launch for the stopped tier" } else { "warm launch" };
            info!(%pool, count = done, %reason, "{what}");
            self.wake();
        }
        Ok(())
    }

    /// Brings the warm and stopped targets of pools with a `forecast` up to date, from the arrivals in the
    /// store (read incrementally, so every replica's requests count), once a minute.
    pub(super) async fn refresh_forecasts(
        &self,
        policies: &crate::policy::Policies,
        now: i64,
    ) -> Result<(), FleetError> {
        let with: Vec<(String, vmfleet_scaler::forecast::Forecast)> = policies
            .pools
            .iter()
            .filter_map(|p| Some((pool_key(p.executor.as_str(), &p.image, &p.resource_class), p.forecast?.forecast())))
            .collect();
        let stopped_with: Vec<(String, vmfleet_scaler::forecast::Forecast)> = policies
            .pools
            .iter()
            .filter_map(|p| {
                Some((pool_key(p.executor.as_str(), &p.image, &p.resource_class), p.stopped?.forecast?.forecast()))
            })
            .collect();
        let stale = self.forecast_targets.lock().unwrap_or_else(|p| p.into_inner()).stale(&with, now)
            || self.stopped_targets.lock().unwrap_or_else(|p| p.into_inner()).stale(&stopped_with, now);
        if !stale {
            return Ok(());
        }
        let mut guard = self.arrivals.lock().await;
        let (histories, seen) = &mut *guard;
        if !with.is_empty() || !stopped_with.is_empty() {
            if *seen == 0 {
                *seen = now - 8 * 86_400_000;
            }
            loop {
                let batch = self.store.arrivals_since(*seen, 10_000).await?;
                for (pool, at) in &batch {
                    histories.entry(pool.clone()).or_default().record(*at);
                    *seen = (*seen).max(*at);
                }
                if batch.len() < 10_000 {
                    break;
                }
            }
        }
        self.forecast_targets.lock().unwrap_or_else(|p| p.into_inner()).refresh(with, |k| histories.get(k), now);
        self.stopped_targets.lock().unwrap_or_else(|p| p.into_inner()).refresh(stopped_with, |k| histories.get(k), now);
        Ok(())
    }

    /// The floor the alarm and the forecast put under a pool's warm target now.
    pub(super) fn target_floor(&self, pool: &str) -> Option<u32> {
        let forecast = self.forecast_targets.lock().unwrap_or_else(|p| p.into_inner()).get(pool);
        vmfleet_scaler::target_floor(self.step_target(pool), forecast)
    }
}

/// A VM row as the planner sees it; `current` is the image id its pool resolves to now (idle
/// VMs of another are outdated).
pub fn vm_view<'a>(vm: &'a VmRow, current: Option<&str>) -> VmView<'a> {
    let phase = match vm.vm_state() {
        Some(VmState::Requested | VmState::Provisioning | VmState::Booting)
            if vm.stop_after_boot && vm.task_id.is_none() =>
        {
            VmPhase::Initializing
        }
        Some(VmState::Requested | VmState::Provisioning | VmState::Booting | VmState::Starting) => VmPhase::Starting,
        Some(VmState::Stopping) => VmPhase::Initializing,
        Some(VmState::Stopped) => VmPhase::Stopped,
        Some(VmState::Ready) => VmPhase::Ready,
        Some(VmState::Assigned) => VmPhase::Assigned,
        Some(VmState::Releasing | VmState::Terminating) => VmPhase::Retiring,
        Some(VmState::Terminated | VmState::Failed) | None => VmPhase::Done,
    };
    VmView {
        id: &vm.id,
        pool: &vm.pool,
        phase,
        has_task: vm.task_id.is_some(),
        draining: vm.draining,
        // A stopped VM's idle time counts from its stop.
        ready_at_ms: if vm.vm_state() == Some(VmState::Stopped) { vm.stopped_at.or(vm.ready_at) } else { vm.ready_at },
        requested_at_ms: vm.requested_at,
        outdated: current.is_some_and(|c| c != vm.image_id),
    }
}

/// One pool as the scaler sees it: its VMs, and its tasks queued without a VM.
pub fn observe(key: &str, vms: &[VmRow], current: Option<&str>, queued: &[TaskRow]) -> PoolObservation {
    let queued = queued
        .iter()
        .filter(|t| t.pool == key)
        .map(|t| QueuedTask { task_id: t.id.clone(), project: t.project.clone(), created_at_ms: t.created_at })
        .collect();
    vmfleet_scaler::observe(key, vms.iter().map(|v| vm_view(v, current)), queued)
}

/// A pool's policy as the scaler takes it.
pub fn scaler_policy(p: &crate::config::PoolConfig, step_target: Option<u32>) -> vmfleet_scaler::PoolPolicy {
    vmfleet_scaler::PoolPolicy {
        min_idle: p.min_idle,
        max_instances: p.max_instances,
        max_replace_share: p.max_replace_share,
        idle_timeout_ms: p.idle_timeout.as_millis() as i64,
        max_age_ms: (!p.max_age.is_zero()).then_some(p.max_age.as_millis() as i64),
        scale_factor: p.scale_factor,
        // Checked when the policy was loaded.
        schedules: p
            .schedules
            .iter()
            .filter_map(|w| {
                let cron = vmfleet_scaler::CronWindow::parse(&w.cron, &w.timezone).ok()?;
                Some(vmfleet_scaler::Window { cron, min_idle: w.min_idle })
            })
            .collect(),
        step_target,
        min_stopped: p.stopped.map_or(0, |s| s.min),
        max_stopped: p.stopped.and_then(|s| s.max),
        stopped_floor: None,
    }
}
