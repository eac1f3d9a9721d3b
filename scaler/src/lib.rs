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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolPolicy {
    /// Warm VMs to keep ready.
    pub min_idle: u32,
    /// Hard bound on the pool's instances in every state.
    pub max_instances: Option<u32>,
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
pub fn plan(pools: &[(PoolObservation, PoolPolicy)], fleet_max: Option<u32>) -> Vec<ScaleAction> {
    let mut actions = Vec::new();
    let mut fleet_total: u32 = pools.iter().map(|(o, _)| o.total()).sum();
    for (obs, policy) in pools {
        let warm = obs.idle.len() as u32 + obs.starting;
        if warm < policy.min_idle {
            let want = policy.min_idle - warm;
            let pool_room = policy.max_instances.map_or(u32::MAX, |m| m.saturating_sub(obs.total()));
            let fleet_room = fleet_max.map_or(u32::MAX, |m| m.saturating_sub(fleet_total));
            let count = want.min(pool_room).min(fleet_room);
            if count > 0 {
                fleet_total += count;
                let mut reason = format!("{warm} warm of min_idle {}", policy.min_idle);
                if count < want {
                    reason.push_str(&format!("; {} held back by max_instances", want - count));
                }
                actions.push(ScaleAction::Launch { pool: obs.pool.clone(), count, reason });
            }
        } else if obs.idle.len() as u32 > policy.min_idle && obs.waiting == 0 {
            // Retire the oldest idle VMs above target; starting ones become idle later and are
            // judged then.
            let excess = obs.idle.len() as u32 - policy.min_idle;
            let mut idle: Vec<&IdleVm> = obs.idle.iter().collect();
            idle.sort_by(|a, b| a.ready_at_ms.cmp(&b.ready_at_ms).then(a.vm_id.cmp(&b.vm_id)));
            for vm in idle.into_iter().take(excess as usize) {
                actions.push(ScaleAction::Terminate {
                    pool: obs.pool.clone(),
                    vm_id: vm.vm_id.clone(),
                    reason: format!("{} idle above min_idle {}", obs.idle.len(), policy.min_idle),
                });
            }
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle(n: usize) -> Vec<IdleVm> {
        (0..n).map(|i| IdleVm { vm_id: format!("vm-{i}"), ready_at_ms: 1000 - i as i64 }).collect()
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
        let p = |min_idle, max| PoolPolicy { min_idle, max_instances: max };
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
        let actions = plan(&[(obs(3, 0, 0), PoolPolicy { min_idle: 1, max_instances: None })], None);
        let ids: Vec<_> = actions
            .iter()
            .filter_map(|a| if let ScaleAction::Terminate { vm_id, .. } = a { Some(vm_id.as_str()) } else { None })
            .collect();
        assert_eq!(ids, ["vm-2", "vm-1"]);
        let mut waiting = obs(3, 0, 0);
        waiting.waiting = 1;
        assert!(plan(&[(waiting, PoolPolicy { min_idle: 1, max_instances: None })], None).is_empty());
    }

    #[test]
    fn fleet_bound_spans_pools() {
        let a = obs(0, 0, 0);
        let mut b = obs(0, 0, 0);
        b.pool = "machine/default/large".into();
        let pol = PoolPolicy { min_idle: 3, max_instances: None };
        let actions = plan(&[(a, pol), (b, pol)], Some(4));
        assert_eq!(launches(&actions), 4);
    }
}
