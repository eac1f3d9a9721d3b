//! Signals from AWS: alarm-driven step targets and the drain on Auto Scaling scale-in.

use super::*;

impl Fleet {
    /// The Auto Scaling and CloudWatch clients.
    pub async fn aws(&self) -> &crate::asg::Aws {
        self.aws.get_or_init(|| async { crate::asg::Aws::new(&self.config.ec2_settings()).await }).await
    }

    /// The alarm-driven warm target of a pool, if its alarm has moved it.
    pub fn step_target(&self, pool: &str) -> Option<u32> {
        self.step_targets.lock().unwrap_or_else(|p| p.into_inner()).get(pool).map(|s| s.0)
    }

    /// Reads the alarms of alarm-driven pools and moves their warm targets by the matching
    /// step, with the semantics of an AWS step scaling policy. The target never falls below
    /// the pool's (scheduled) `min_idle` nor rises above its `max_instances`.
    pub async fn step_scale(&self, now: i64) {
        let policies = self.policies();
        let driven: Vec<(String, &crate::config::PoolConfig, &crate::config::PoolStepScaling)> = policies
            .pools
            .iter()
            .filter_map(|p| {
                let st = p.step_scaling.as_ref()?;
                Some((pool_key(p.executor.as_str(), &p.image, &p.resource_class), p, st))
            })
            .collect();
        if driven.is_empty() || !self.due("alarms", self.config.metrics_out.alarm_poll, now) {
            return;
        }
        let mut names: Vec<String> = driven.iter().map(|(_, _, st)| st.alarm.clone()).collect();
        names.sort();
        names.dedup();
        let alarms = match self.aws().await.alarms(&names).await {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "reading alarms failed; warm targets stay");
                return;
            }
        };
        for (key, p, st) in driven {
            let Some(alarm) = alarms.get(&st.alarm) else {
                warn!(pool = %key, alarm = %st.alarm, "the pool's alarm does not exist");
                continue;
            };
            let policy = scaler_policy(p, None);
            let floor = vmfleet_scaler::schedule::scheduled_min_idle(p.min_idle, &policy.schedules, now);
            let ceiling = p.max_instances.unwrap_or(u32::MAX);
            let step = vmfleet_scaler::step::StepPolicy {
                adjustment_type: vmfleet_scaler::step::AdjustmentType::parse(&st.adjustment_type)
                    .unwrap_or(vmfleet_scaler::step::AdjustmentType::ChangeInCapacity),
                steps: crate::config::steps(&st.steps),
                cooldown_ms: st.cooldown.as_millis() as i64,
            };
            let reading = vmfleet_scaler::step::AlarmReading {
                in_alarm: alarm.state == "ALARM",
                value: alarm.value,
                threshold: alarm.threshold,
            };
            let (current, last) = {
                let t = self.step_targets.lock().unwrap_or_else(|p| p.into_inner());
                t.get(&key).copied().unwrap_or((floor, None))
            };
            let current = current.max(floor);
            if let Some((target, reason)) =
                vmfleet_scaler::step::next_target(current, &step, &reading, last, now, floor, ceiling)
            {
                self.step_targets.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), (target, Some(now)));
                info!(pool = %key, alarm = %st.alarm, target, %reason, "step scaling");
                self.audit("pool.scale", "scaler", &key, &reason).await;
                self.wake();
            }
        }
    }

    /// Drain on scale-in: for groups with vmfleet's termination hook, an instance waiting in
    /// `Terminating:Wait` gets no new work (its VM is drained); while its task runs, heartbeats
    /// keep it waiting, and once nothing runs the lifecycle action is completed (CONTINUE).
    pub async fn drain_lifecycle(&self, now: i64) {
        let groups: Vec<String> =
            self.policies().asg.iter().filter(|a| a.termination_hook.is_some()).map(|a| a.asg.clone()).collect();
        if groups.is_empty() || !self.due("lifecycle", self.config.metrics_out.lifecycle_poll, now) {
            return;
        }
        let aws = self.aws().await;
        let waiting = match aws.terminating_wait(&groups).await {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "reading terminating instances failed");
                return;
            }
        };
        for (group, instance) in waiting {
            let busy = match self.store.vm_by_instance(&instance).await {
                Ok(Some(vm)) => {
                    if !vm.draining {
                        if let Err(e) = self.store.drain_vm(&vm.id).await {
                            warn!(vm = %vm.id, error = %e, "drain failed");
                        }
                    }
                    Some(
                        vm.task_id.is_some()
                            && vm.vm_state().is_some_and(|s| !matches!(s, VmState::Releasing | VmState::Terminating)),
                    )
                }
                Ok(None) => None,
                Err(e) => {
                    warn!(%instance, error = %e, "looking up the instance failed");
                    continue;
                }
            };
            let result = match vmfleet_scaler::asg::lifecycle_step(busy) {
                vmfleet_scaler::asg::Lifecycle::Heartbeat => aws.heartbeat(&self.install_id, &group, &instance).await,
                vmfleet_scaler::asg::Lifecycle::Continue => {
                    let r = aws.complete(&self.install_id, &group, &instance).await;
                    if r.is_ok() {
                        info!(%group, %instance, "termination continues: no work left on the instance");
                        self.audit("asg.lifecycle.continue", "scaler", &instance, &group).await;
                    }
                    r
                }
            };
            if let Err(e) = result {
                warn!(error = %e, "lifecycle action failed; retrying on the next poll");
            }
        }
    }
}
