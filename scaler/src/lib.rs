//! The pool planner.
//!
//! `plan` is a pure function from what the fleet looks like now (per pool: idle, booting and
//! busy VMs) and the operator's policy to the actions that bring each pool to its warm target:
//! launch N warm VMs, or retire idle warm VMs above the target. It reads no clock and does no
//! I/O; the service observes, calls it, re-checks each action against fresh state and acts, and
//! the simulator drives the same function.
//!
//! # Guarantees
//! A VM with a task is never chosen for termination. Launches never take a pool above its
//! `max_instances`, nor the fleet above the global bound. Output order is deterministic.

/// One idle (ready, unassigned) VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleVm {
    /// vmfleet VM id.
    pub vm_id: String,
    /// When it became ready, ms since the epoch.
    pub ready_at_ms: i64,
    /// Built from an image its pool no longer resolves to: to be replaced.
    pub outdated: bool,
}

/// What one pool looks like now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolObservation {
    /// Pool key (`executor/image/resource_class`).
    pub pool: String,
    /// Ready, unassigned VMs.
    pub idle: Vec<IdleVm>,
    /// Warm VMs still starting (not reserved for a task).
    pub starting: u32,
    /// VMs reserved for or running a task.
    pub busy: u32,
    /// Tasks waiting without a VM.
    pub waiting: u32,
}

impl PoolObservation {
    /// Every live instance of the pool.
    pub fn total(&self) -> u32 {
        self.idle.len() as u32 + self.starting + self.busy
    }
}

/// The operator's policy for one pool.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PoolPolicy {
    /// Warm VMs to keep ready.
    pub min_idle: u32,
    /// Hard bound on the pool's instances in every state.
    pub max_instances: Option<u32>,
    /// Most of `min_idle` (as a share, at least one VM) being replaced at once.
    pub max_replace_share: f64,
}

/// What the planner decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScaleAction {
    /// Launch `count` warm VMs in `pool`.
    Launch {
        /// Pool key.
        pool: String,
        /// How many.
        count: u32,
        /// Why, for logs and the audit trail.
        reason: String,
    },
    /// Retire an idle VM.
    Terminate {
        /// Pool key.
        pool: String,
        /// The VM.
        vm_id: String,
        /// Why.
        reason: String,
    },
}

/// Plans every pool. `fleet_max` bounds the instances of all pools together.
///
/// Outdated idle VMs are replaced, not dropped: fresh VMs are launched first (at most
/// `max_replace_share` of `min_idle` at a time), and an outdated VM is retired only while the
/// fresh idle ones alone meet `min_idle`, so the ready count never falls below target.
pub fn plan(pools: &[(PoolObservation, PoolPolicy)], fleet_max: Option<u32>) -> Vec<ScaleAction> {
    let mut actions = Vec::new();
    let mut fleet_total: u32 = pools.iter().map(|(o, _)| o.total()).sum();
    for (obs, policy) in pools {
        let outdated = obs.idle.iter().filter(|v| v.outdated).count() as u32;
        let fresh_idle = obs.idle.len() as u32 - outdated;
        let fresh_warm = fresh_idle + obs.starting;
        if fresh_warm < policy.min_idle {
            let deficit = policy.min_idle - fresh_warm;
            // Of the deficit, what outdated VMs still cover is a replacement, and rate-limited.
            let replacing = deficit.min(outdated);
            let share = ((policy.max_replace_share * f64::from(policy.min_idle)).ceil() as u32).max(1);
            let replace_now = replacing.min(share.saturating_sub(obs.starting));
            let want = deficit - replacing + replace_now;
            let pool_room = policy.max_instances.map_or(u32::MAX, |m| m.saturating_sub(obs.total()));
            let fleet_room = fleet_max.map_or(u32::MAX, |m| m.saturating_sub(fleet_total));
            let count = want.min(pool_room).min(fleet_room);
            if count > 0 {
                fleet_total += count;
                let mut reason = format!("{fresh_warm} warm of min_idle {}", policy.min_idle);
                if replacing > 0 {
                    reason.push_str(&format!("; replacing {replacing} outdated, {replace_now} now"));
                }
                if count < want {
                    reason.push_str(&format!("; {} held back by max_instances", want - count));
                }
                actions.push(ScaleAction::Launch { pool: obs.pool.clone(), count, reason });
            }
        }
        if obs.idle.len() as u32 > policy.min_idle && obs.waiting == 0 {
            // Retire above target: outdated VMs first, then the oldest. An outdated VM only
            // goes while the fresh idle ones alone meet the target.
            let mut idle: Vec<&IdleVm> = obs.idle.iter().collect();
            idle.sort_by(|a, b| {
                b.outdated.cmp(&a.outdated).then(a.ready_at_ms.cmp(&b.ready_at_ms)).then(a.vm_id.cmp(&b.vm_id))
            });
            let excess = obs.idle.len() as u32 - policy.min_idle;
            for vm in idle.into_iter().take(excess as usize) {
                if vm.outdated && fresh_idle < policy.min_idle {
                    continue;
                }
                let reason = if vm.outdated {
                    format!("outdated image; {fresh_idle} fresh idle meet min_idle {}", policy.min_idle)
                } else {
                    format!("{} idle above min_idle {}", obs.idle.len(), policy.min_idle)
                };
                actions.push(ScaleAction::Terminate { pool: obs.pool.clone(), vm_id: vm.vm_id.clone(), reason });
            }
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle(n: usize) -> Vec<IdleVm> {
        (0..n).map(|i| IdleVm { vm_id: format!("vm-{i}"), ready_at_ms: 1000 - i as i64, outdated: false }).collect()
    }

    fn obs(idle_n: usize, starting: u32, busy: u32) -> PoolObservation {
        PoolObservation { pool: "machine/default/medium".into(), idle: idle(idle_n), starting, busy, waiting: 0 }
    }

    fn launches(actions: &[ScaleAction]) -> u32 {
        actions.iter().map(|a| if let ScaleAction::Launch { count, .. } = a { *count } else { 0 }).sum()
    }

    #[test]
    fn table() {
        struct Case {
            name: &'static str,
            obs: PoolObservation,
            policy: PoolPolicy,
            fleet_max: Option<u32>,
            launch: u32,
            terminate: usize,
        }
        let p = |min_idle, max| PoolPolicy { min_idle, max_instances: max, max_replace_share: 0.25 };
        let cases = [
            Case {
                name: "empty pool fills",
                obs: obs(0, 0, 0),
                policy: p(3, None),
                fleet_max: None,
                launch: 3,
                terminate: 0,
            },
            Case {
                name: "starting counts as warm",
                obs: obs(1, 2, 5),
                policy: p(3, None),
                fleet_max: None,
                launch: 0,
                terminate: 0,
            },
            Case {
                name: "pool bound",
                obs: obs(0, 0, 4),
                policy: p(3, Some(5)),
                fleet_max: None,
                launch: 1,
                terminate: 0,
            },
            Case {
                name: "fleet bound",
                obs: obs(0, 0, 4),
                policy: p(3, None),
                fleet_max: Some(6),
                launch: 2,
                terminate: 0,
            },
            Case {
                name: "at bound",
                obs: obs(0, 0, 5),
                policy: p(3, Some(5)),
                fleet_max: None,
                launch: 0,
                terminate: 0,
            },
            Case {
                name: "excess idle retired",
                obs: obs(5, 0, 9),
                policy: p(2, None),
                fleet_max: None,
                launch: 0,
                terminate: 3,
            },
            Case {
                name: "zero target",
                obs: obs(0, 0, 3),
                policy: p(0, None),
                fleet_max: None,
                launch: 0,
                terminate: 0,
            },
        ];
        for c in cases {
            let actions = plan(&[(c.obs, c.policy)], c.fleet_max);
            assert_eq!(launches(&actions), c.launch, "{}", c.name);
            let terms = actions.iter().filter(|a| matches!(a, ScaleAction::Terminate { .. })).count();
            assert_eq!(terms, c.terminate, "{}", c.name);
        }
    }

    #[test]
    fn retires_oldest_idle_first_and_not_while_tasks_wait() {
        let actions =
            plan(&[(obs(3, 0, 0), PoolPolicy { min_idle: 1, max_instances: None, max_replace_share: 0.25 })], None);
        let ids: Vec<_> = actions
            .iter()
            .filter_map(|a| if let ScaleAction::Terminate { vm_id, .. } = a { Some(vm_id.as_str()) } else { None })
            .collect();
        assert_eq!(ids, ["vm-2", "vm-1"]);
        let mut waiting = obs(3, 0, 0);
        waiting.waiting = 1;
        assert!(plan(&[(waiting, PoolPolicy { min_idle: 1, max_instances: None, max_replace_share: 0.25 })], None)
            .is_empty());
    }

    /// Steps a pool through a rollout: at every step the ready count stays at target.
    #[test]
    fn outdated_vms_are_replaced_a_share_at_a_time_without_dropping_below_target() {
        let policy = PoolPolicy { min_idle: 4, max_instances: None, max_replace_share: 0.25 };
        let mut idle: Vec<IdleVm> =
            (0..4).map(|i| IdleVm { vm_id: format!("old-{i}"), ready_at_ms: i, outdated: true }).collect();
        let mut starting = 0u32;
        let mut fresh = 0;
        for step in 0..40 {
            let obs = PoolObservation { pool: "p".into(), idle: idle.clone(), starting, busy: 0, waiting: 0 };
            for a in plan(&[(obs, policy)], None) {
                match a {
                    ScaleAction::Launch { count, .. } => {
                        assert!(count + starting <= 1, "step {step}: a quarter of 4 at a time");
                        starting += count;
                    }
                    ScaleAction::Terminate { vm_id, .. } => {
                        assert!(vm_id.starts_with("old-"), "only outdated VMs go");
                        idle.retain(|v| v.vm_id != vm_id);
                    }
                }
            }
            assert!(idle.len() >= 4, "step {step}: ready count fell below target");
            // A started VM becomes ready by the next step.
            if starting > 0 {
                starting -= 1;
                fresh += 1;
                idle.push(IdleVm { vm_id: format!("new-{fresh}"), ready_at_ms: 100 + step, outdated: false });
            }
            if idle.iter().all(|v| !v.outdated) && starting == 0 {
                break;
            }
        }
        assert_eq!(idle.len(), 4);
        assert!(idle.iter().all(|v| !v.outdated), "rollout finished: {idle:?}");
    }

    #[test]
    fn fleet_bound_spans_pools() {
        let a = obs(0, 0, 0);
        let mut b = obs(0, 0, 0);
        b.pool = "machine/default/large".into();
        let pol = PoolPolicy { min_idle: 3, max_instances: None, max_replace_share: 0.25 };
        let actions = plan(&[(a, pol), (b, pol)], Some(4));
        assert_eq!(launches(&actions), 4);
    }
}
