//! The pool planner.
//!
//! `plan` is a pure function from the operator's policies, the time, and what the fleet looks
//! like now (per pool: idle, starting, busy and retiring VMs, and tasks queued without a VM) to
//! the actions that bring each pool to its warm target: launch VMs for queued tasks, launch
//! warm VMs, retire idle ones. It reads no clock and does no I/O; the service observes, calls
//! it, re-checks each action against fresh state and acts, and the simulator drives the same
//! function.
//!
//! # Guarantees
//! A VM with a task is never chosen for termination. Launches never take a pool above its
//! `max_instances`, nor the fleet above the global bound (instances in every state count).
//! Replacing outdated or aged VMs launches first and retires after, so the ready count never
//! drops below target. Output order is deterministic.

pub mod asg;
pub mod claim;
pub mod forecast;
pub mod observe;
pub mod schedule;
pub mod step;
pub mod stopped;

pub use claim::{boot_waiter_order, claim_order, fair_order, room, target_floor, BootWaiter};
pub use observe::{observe, VmPhase, VmView};
pub use schedule::{CronWindow, Window};
pub use stopped::stopped_target;

/// Pool key of a task or VM: `executor/image/resource_class`.
pub fn pool_key(executor: &str, image: &str, resource_class: &str) -> String {
    format!("{executor}/{image}/{resource_class}")
}

/// One idle (ready, unassigned) VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleVm {
    /// vmfleet VM id.
    pub vm_id: String,
    /// When it became ready, ms since the epoch.
    pub ready_at_ms: i64,
    /// When it was requested (its age counts from here), ms since the epoch.
    pub launched_at_ms: i64,
    /// Built from an image its pool no longer resolves to: to be replaced.
    pub outdated: bool,
}

/// A task waiting without a VM (held back by a bound, or by a policy without on-demand
/// launches).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedTask {
    /// The task.
    pub task_id: String,
    /// Its project (queued tasks take turns between projects).
    pub project: String,
    /// When it was requested, ms since the epoch.
    pub created_at_ms: i64,
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
    /// VMs being released or terminated: still instances until they are gone.
    pub retiring: u32,
    /// Tasks waiting without a VM, in any order.
    pub queued: Vec<QueuedTask>,
    /// Pre-initialized stopped VMs (`ready_at_ms`: when they stopped).
    pub stopped: Vec<IdleVm>,
    /// VMs launched for the stopped tier, booting once or stopping.
    pub initializing: u32,
    /// Ready or stopped VMs an operator drained, with no task: they will never get one.
    pub drained: Vec<String>,
}

impl PoolObservation {
    /// Every instance of the pool, in every state.
    pub fn total(&self) -> u32 {
        self.idle.len() as u32
            + self.starting
            + self.busy
            + self.retiring
            + self.stopped.len() as u32
            + self.initializing
            + self.drained.len() as u32
    }
}

/// The operator's policy for one pool.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PoolPolicy {
    /// Warm VMs to keep ready outside schedule windows.
    pub min_idle: u32,
    /// Hard bound on the pool's instances in every state.
    pub max_instances: Option<u32>,
    /// Most of the warm target (as a share, at least one VM) being replaced at once.
    pub max_replace_share: f64,
    /// Idle VMs above the warm target are retired once idle this long.
    pub idle_timeout_ms: i64,
    /// Warm VMs older than this (less up to a tenth as jitter) are replaced.
    pub max_age_ms: Option<i64>,
    /// Extra warm VMs as a share of busy ones.
    pub scale_factor: f64,
    /// Working-hours windows; the last matching one sets `min_idle`.
    pub schedules: Vec<Window>,
    /// A floor under the warm target (from step scaling and the forecast; see
    /// [`target_floor`]); the target is at least this.
    pub step_target: Option<u32>,
    /// Stopped VMs to keep behind the running ones.
    pub min_stopped: u32,
    /// Most stopped VMs (they count against `max_instances` too).
    pub max_stopped: Option<u32>,
    /// A floor under the stopped target (its forecast).
    pub stopped_floor: Option<u32>,
}

impl PoolPolicy {
    /// The policy of a pool that no policy file or configuration names (tasks may ask for any
    /// image and class): no warm VMs, and an idle one (a launch its task no longer needed) is
    /// retired at once. The service and the simulator both use this.
    pub fn unnamed() -> Self {
        Self { max_replace_share: 0.25, ..Self::default() }
    }
}

/// Why the planner chose an action: for logs, the audit trail and the simulator's counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScaleReason {
    /// Tasks wait without a VM; `held_back` of them stay queued at a bound.
    QueuedTasks {
        /// Tasks queued.
        queued: u32,
        /// Of those, how many the bounds hold back.
        held_back: u32,
    },
    /// An idle VM takes a task that was queued without one.
    IdleForQueued,
    /// Fewer warm VMs than the target.
    BelowTarget {
        /// Fresh warm VMs (idle and starting).
        warm: u32,
        /// The warm target.
        target: u32,
        /// Stale VMs being replaced.
        replacing: u32,
        /// Of those, replaced in this pass.
        replace_now: u32,
        /// Launches the bounds hold back.
        held_back: u32,
    },
    /// An idle VM built from an outdated image (`outdated`) or older than `max_age`, retired
    /// because the fresh idle VMs alone meet the target.
    Stale {
        /// Outdated image rather than age.
        outdated: bool,
        /// Fresh idle VMs.
        fresh_idle: u32,
        /// The warm target.
        target: u32,
    },
    /// Idle above the target for longer than the idle timeout.
    IdleAboveTarget {
        /// Idle VMs.
        idle: u32,
        /// The warm target.
        target: u32,
    },
    /// A stopped VM started for a task that found no running idle VM.
    StoppedForQueued,
    /// Fewer stopped VMs (stopped and initializing) than the stopped target.
    StoppedBelowTarget {
        /// Fresh stopped VMs, and those initializing.
        stopped: u32,
        /// The stopped target.
        target: u32,
        /// Launches the bounds hold back.
        held_back: u32,
    },
    /// A stopped VM of an outdated image or older than `max_age`, retired because the fresh
    /// stopped VMs alone meet the stopped target.
    StoppedStale {
        /// Outdated image rather than age.
        outdated: bool,
        /// Fresh stopped VMs.
        fresh: u32,
        /// The stopped target.
        target: u32,
    },
    /// Stopped above the stopped target for longer than the idle timeout.
    StoppedAboveTarget {
        /// Stopped VMs.
        stopped: u32,
        /// The stopped target.
        target: u32,
    },
    /// Drained by an operator while idle or stopped: it would never run a job.
    Drained,
    /// A rule of another system's policy (the simulator's baselines).
    Baseline(&'static str),
}

impl ScaleReason {
    /// Whether this retires a VM for its age (daily cycling).
    pub fn is_cycle(&self) -> bool {
        matches!(self, ScaleReason::Stale { outdated: false, .. } | ScaleReason::StoppedStale { outdated: false, .. })
    }
}

impl std::fmt::Display for ScaleReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScaleReason::QueuedTasks { queued, held_back } => {
                write!(f, "{queued} tasks queued without a VM")?;
                if *held_back > 0 {
                    write!(f, "; {held_back} held back by max_instances")?;
                }
                Ok(())
            }
            ScaleReason::IdleForQueued => write!(f, "an idle VM for a task queued without one"),
            ScaleReason::BelowTarget { warm, target, replacing, replace_now, held_back } => {
                write!(f, "{warm} warm of target {target}")?;
                if *replacing > 0 {
                    write!(f, "; replacing {replacing} outdated or aged, {replace_now} now")?;
                }
                if *held_back > 0 {
                    write!(f, "; {held_back} held back by max_instances")?;
                }
                Ok(())
            }
            ScaleReason::Stale { outdated, fresh_idle, target } => {
                let why = if *outdated { "outdated image" } else { "older than max_age" };
                write!(f, "{why}; {fresh_idle} fresh idle meet the target {target}")
            }
            ScaleReason::IdleAboveTarget { idle, target } => {
                write!(f, "{idle} idle above the target {target} for longer than the idle timeout")
            }
            ScaleReason::StoppedForQueued => write!(f, "a stopped VM started for a task that found no idle one"),
            ScaleReason::Drained => write!(f, "drained while idle or stopped"),
            ScaleReason::StoppedBelowTarget { stopped, target, held_back } => {
                write!(f, "{stopped} stopped of target {target}")?;
                if *held_back > 0 {
                    write!(f, "; {held_back} held back by max_instances")?;
                }
                Ok(())
            }
            ScaleReason::StoppedStale { outdated, fresh, target } => {
                let why = if *outdated { "outdated image" } else { "older than max_age" };
                write!(f, "stopped, {why}; {fresh} fresh stopped meet the target {target}")
            }
            ScaleReason::StoppedAboveTarget { stopped, target } => {
                write!(f, "{stopped} stopped above the target {target} for longer than the idle timeout")
            }
            ScaleReason::Baseline(rule) => write!(f, "{rule}"),
        }
    }
}

/// What the planner decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScaleAction {
    /// Give an idle VM to a queued task.
    Assign {
        /// Pool key.
        pool: String,
        /// The idle VM.
        vm_id: String,
        /// The queued task.
        task_id: String,
        /// Why.
        reason: ScaleReason,
    },
    /// Launch on-demand VMs for these queued tasks, in this order.
    LaunchForTasks {
        /// Pool key.
        pool: String,
        /// The tasks, in the order they get VMs.
        task_ids: Vec<String>,
        /// Why.
        reason: ScaleReason,
    },
    /// Launch `count` warm VMs in `pool`.
    Launch {
        /// Pool key.
        pool: String,
        /// How many.
        count: u32,
        /// Why, for logs and the audit trail.
        reason: ScaleReason,
    },
    /// Start a stopped VM: for a queued task, or (no task) for the running warm target.
    Start {
        /// Pool key.
        pool: String,
        /// The stopped VM.
        vm_id: String,
        /// The queued task it is started for.
        task_id: Option<String>,
        /// Why.
        reason: ScaleReason,
    },
    /// Launch `count` VMs for the stopped tier: each boots once until it answers, then stops.
    LaunchStopped {
        /// Pool key.
        pool: String,
        /// How many.
        count: u32,
        /// Why.
        reason: ScaleReason,
    },
    /// Retire an idle or stopped VM.
    Terminate {
        /// Pool key.
        pool: String,
        /// The VM.
        vm_id: String,
        /// Why.
        reason: ScaleReason,
    },
}

/// The pool's warm target at `now_ms`: the schedule's (or the pool's) `min_idle`, at least the
/// step target, plus `scale_factor` of the busy VMs, within `max_instances`.
pub fn warm_target(obs: &PoolObservation, policy: &PoolPolicy, now_ms: i64) -> u32 {
    let base =
        schedule::scheduled_min_idle(policy.min_idle, &policy.schedules, now_ms).max(policy.step_target.unwrap_or(0));
    let extra = (policy.scale_factor.max(0.0) * f64::from(obs.busy)).ceil() as u32;
    (base + extra).min(policy.max_instances.unwrap_or(u32::MAX))
}

/// A VM's share of the jitter, stable for its id: up to a tenth of `max_age`.
fn jitter_ms(vm_id: &str, max_age_ms: i64) -> i64 {
    // FNV-1a: stable across runs and platforms.
    let h = vm_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let span = (max_age_ms / 10).max(1) as u64;
    (h % span) as i64
}

/// Whether an idle VM is due for replacement: outdated image, or older than `max_age`.
pub(crate) fn stale(vm: &IdleVm, policy: &PoolPolicy, now_ms: i64) -> bool {
    vm.outdated || policy.max_age_ms.is_some_and(|m| now_ms - vm.launched_at_ms > m - jitter_ms(&vm.vm_id, m))
}

/// Plans every pool at `now_ms`. `fleet_max` bounds the instances of all pools together.
///
/// Queued tasks come first: they are waiting now. They take the pool's idle VMs (in
/// [`claim_order`], tasks in [`fair_order`]), and the rest get on-demand launches within the
/// bounds, in fair order. Stale idle VMs (outdated image, or older than `max_age`) are replaced,
/// not dropped: fresh VMs are launched first (at most `max_replace_share` of the target at a
/// time), and a stale VM is retired only while the fresh idle ones alone meet the target, so
/// the ready count never falls below it. No idle VM is retired in a pass that found tasks
/// queued.
pub fn plan(pools: &[(PoolObservation, PoolPolicy)], fleet_max: Option<u32>, now_ms: i64) -> Vec<ScaleAction> {
    let mut actions = Vec::new();
    let mut fleet_total: u32 = pools.iter().map(|(o, _)| o.total()).sum();
    for (seen, policy) in pools {
        let had_queued = !seen.queued.is_empty();
        for vm_id in &seen.drained {
            let pool = seen.pool.clone();
            actions.push(ScaleAction::Terminate { pool, vm_id: vm_id.clone(), reason: ScaleReason::Drained });
        }
        // One fair order for the pass: idle VMs go to its first tasks, launches to the next.
        let order = fair_order(&seen.queued);
        let obs = assign_queued(seen, &mut actions);
        let assigned = seen.queued.len() - obs.queued.len();
        let target = warm_target(&obs, policy, now_ms);
        let mut pool_total = obs.total();
        let room = |pool_total: u32, fleet_total: u32| room(pool_total, policy.max_instances, fleet_total, fleet_max);
        if !obs.queued.is_empty() {
            let queued = obs.queued.len() as u32;
            let count = queued.min(room(pool_total, fleet_total));
            if count > 0 {
                pool_total += count;
                fleet_total += count;
                let task_ids =
                    order.iter().skip(assigned).take(count as usize).map(|&i| seen.queued[i].task_id.clone());
                actions.push(ScaleAction::LaunchForTasks {
                    pool: obs.pool.clone(),
                    task_ids: task_ids.collect(),
                    reason: ScaleReason::QueuedTasks { queued, held_back: queued - count },
                });
            }
        }
        let stale_n = obs.idle.iter().filter(|v| stale(v, policy, now_ms)).count() as u32;
        let fresh_idle = obs.idle.len() as u32 - stale_n;
        let fresh_warm = fresh_idle + obs.starting;
        // Below the running target, stopped VMs start first: a start is faster than a boot.
        let mut started: Vec<usize> = Vec::new();
        if fresh_warm < target {
            started = claim_order(&obs.stopped).into_iter().take((target - fresh_warm) as usize).collect();
            for &i in &started {
                let reason =
                    ScaleReason::BelowTarget { warm: fresh_warm, target, replacing: 0, replace_now: 0, held_back: 0 };
                actions.push(ScaleAction::Start {
                    pool: obs.pool.clone(),
                    vm_id: obs.stopped[i].vm_id.clone(),
                    task_id: None,
                    reason,
                });
            }
        }
        let fresh_warm = fresh_warm + started.len() as u32;
        if fresh_warm < target {
            let deficit = target - fresh_warm;
            // Of the deficit, what stale VMs still cover is a replacement, and rate-limited.
            let replacing = deficit.min(stale_n);
            let share = ((policy.max_replace_share * f64::from(target)).ceil() as u32).max(1);
            let replace_now = replacing.min(share.saturating_sub(obs.starting));
            let want = deficit - replacing + replace_now;
            let count = want.min(room(pool_total, fleet_total));
            if count > 0 {
                pool_total += count;
                fleet_total += count;
                let reason = ScaleReason::BelowTarget {
                    warm: fresh_warm,
                    target,
                    replacing,
                    replace_now,
                    held_back: want - count,
                };
                actions.push(ScaleAction::Launch { pool: obs.pool.clone(), count, reason });
            }
        }
        if obs.idle.len() as u32 > target && !had_queued {
            // Retire above target: stale VMs first, then the longest idle. A stale VM only
            // goes while the fresh idle ones alone meet the target; a fresh one only once idle
            // for `idle_timeout`.
            let mut idle: Vec<(&IdleVm, bool)> = obs.idle.iter().map(|v| (v, stale(v, policy, now_ms))).collect();
            idle.sort_by(|(a, sa), (b, sb)| {
                sb.cmp(sa).then(a.ready_at_ms.cmp(&b.ready_at_ms)).then(a.vm_id.cmp(&b.vm_id))
            });
            let excess = obs.idle.len() as u32 - target;
            for (vm, is_stale) in idle.into_iter().take(excess as usize) {
                let reason = if is_stale {
                    if fresh_idle < target {
                        continue;
                    }
                    ScaleReason::Stale { outdated: vm.outdated, fresh_idle, target }
                } else {
                    if now_ms - vm.ready_at_ms < policy.idle_timeout_ms {
                        continue;
                    }
                    ScaleReason::IdleAboveTarget { idle: obs.idle.len() as u32, target }
                };
                actions.push(ScaleAction::Terminate { pool: obs.pool.clone(), vm_id: vm.vm_id.clone(), reason });
            }
        }
        stopped::plan_stopped(
            &obs,
            policy,
            &started,
            had_queued,
            now_ms,
            room(pool_total, fleet_total),
            &mut actions,
            &mut fleet_total,
        );
    }
    actions
}

/// Queued tasks take idle VMs first (tasks in fair order, VMs in claim order); returns the
/// pool as it is after those assignments.
pub fn assign_queued(obs: &PoolObservation, actions: &mut Vec<ScaleAction>) -> PoolObservation {
    let mut after = obs.clone();
    if obs.queued.is_empty() || (obs.idle.is_empty() && obs.stopped.is_empty()) {
        return after;
    }
    let pairs: Vec<(usize, usize)> = fair_order(&obs.queued).into_iter().zip(claim_order(&obs.idle)).collect();
    let (mut tasks_taken, mut vms_taken) = (Vec::new(), Vec::new());
    for (t, v) in pairs {
        actions.push(ScaleAction::Assign {
            pool: obs.pool.clone(),
            vm_id: obs.idle[v].vm_id.clone(),
            task_id: obs.queued[t].task_id.clone(),
            reason: ScaleReason::IdleForQueued,
        });
        tasks_taken.push(t);
        vms_taken.push(v);
    }
    // The tasks still without a VM take stopped VMs, in the same orders.
    let rest: Vec<usize> = fair_order(&obs.queued).into_iter().filter(|t| !tasks_taken.contains(t)).collect();
    let mut stopped_taken = Vec::new();
    for (t, v) in rest.into_iter().zip(claim_order(&obs.stopped)) {
        actions.push(ScaleAction::Start {
            pool: obs.pool.clone(),
            vm_id: obs.stopped[v].vm_id.clone(),
            task_id: Some(obs.queued[t].task_id.clone()),
            reason: ScaleReason::StoppedForQueued,
        });
        tasks_taken.push(t);
        stopped_taken.push(v);
    }
    after.busy += (vms_taken.len() + stopped_taken.len()) as u32;
    after.queued =
        obs.queued.iter().enumerate().filter(|(i, _)| !tasks_taken.contains(i)).map(|(_, q)| q.clone()).collect();
    after.idle = obs.idle.iter().enumerate().filter(|(i, _)| !vms_taken.contains(i)).map(|(_, v)| v.clone()).collect();
    after.stopped =
        obs.stopped.iter().enumerate().filter(|(i, _)| !stopped_taken.contains(i)).map(|(_, v)| v.clone()).collect();
    after
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000_000;
    const HOUR: i64 = 3_600_000;

    fn idle(n: usize) -> Vec<IdleVm> {
        (0..n)
            .map(|i| IdleVm {
                vm_id: format!("vm-{i}"),
                ready_at_ms: NOW - 1000 - i as i64,
                launched_at_ms: NOW - HOUR,
                outdated: false,
            })
            .collect()
    }

    fn obs(idle_n: usize, starting: u32, busy: u32) -> PoolObservation {
        PoolObservation {
            pool: "machine/default/medium".into(),
            idle: idle(idle_n),
            starting,
            busy,
            ..Default::default()
        }
    }

    fn queued(n: usize) -> Vec<QueuedTask> {
        (0..n)
            .map(|i| QueuedTask { task_id: format!("t-{i}"), project: format!("p{}", i % 2), created_at_ms: i as i64 })
            .collect()
    }

    fn pol(min_idle: u32, max: Option<u32>) -> PoolPolicy {
        PoolPolicy { min_idle, max_instances: max, max_replace_share: 0.25, ..Default::default() }
    }

    fn launches(actions: &[ScaleAction]) -> u32 {
        actions.iter().map(|a| if let ScaleAction::Launch { count, .. } = a { *count } else { 0 }).sum()
    }

    fn for_tasks(actions: &[ScaleAction]) -> u32 {
        actions
            .iter()
            .map(|a| if let ScaleAction::LaunchForTasks { task_ids, .. } = a { task_ids.len() as u32 } else { 0 })
            .sum()
    }

    fn retired(actions: &[ScaleAction]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| if let ScaleAction::Terminate { vm_id, .. } = a { Some(vm_id.as_str()) } else { None })
            .collect()
    }

    #[test]
    fn table() {
        struct Case {
            name: &'static str,
            obs: PoolObservation,
            policy: PoolPolicy,
            fleet_max: Option<u32>,
            launch: u32,
            tasks: u32,
            terminate: usize,
        }
        let with = |mut o: PoolObservation, f: &dyn Fn(&mut PoolObservation)| {
            f(&mut o);
            o
        };
        let cases = [
            Case {
                name: "empty pool fills",
                obs: obs(0, 0, 0),
                policy: pol(3, None),
                fleet_max: None,
                launch: 3,
                tasks: 0,
                terminate: 0,
            },
            Case {
                name: "starting counts as warm",
                obs: obs(1, 2, 5),
                policy: pol(3, None),
                fleet_max: None,
                launch: 0,
                tasks: 0,
                terminate: 0,
            },
            Case {
                name: "pool bound",
                obs: obs(0, 0, 4),
                policy: pol(3, Some(5)),
                fleet_max: None,
                launch: 1,
                tasks: 0,
                terminate: 0,
            },
            Case {
                name: "retiring instances count against the bound",
                obs: with(obs(0, 0, 3), &|o| o.retiring = 2),
                policy: pol(3, Some(5)),
                fleet_max: None,
                launch: 0,
                tasks: 0,
                terminate: 0,
            },
            Case {
                name: "fleet bound",
                obs: obs(0, 0, 4),
                policy: pol(3, None),
                fleet_max: Some(6),
                launch: 2,
                tasks: 0,
                terminate: 0,
            },
            Case {
                name: "at bound",
                obs: obs(0, 0, 5),
                policy: pol(3, Some(5)),
                fleet_max: None,
                launch: 0,
                tasks: 0,
                terminate: 0,
            },
            Case {
                name: "excess idle retired",
                obs: obs(5, 0, 9),
                policy: pol(2, None),
                fleet_max: None,
                launch: 0,
                tasks: 0,
                terminate: 3,
            },
            Case {
                name: "excess idle kept within the idle timeout",
                obs: obs(5, 0, 9),
                policy: PoolPolicy { idle_timeout_ms: 60_000, ..pol(2, None) },
                fleet_max: None,
                launch: 0,
                tasks: 0,
                terminate: 0,
            },
            Case {
                name: "zero target",
                obs: obs(0, 0, 3),
                policy: pol(0, None),
                fleet_max: None,
                launch: 0,
                tasks: 0,
                terminate: 0,
            },
            Case {
                name: "scale factor adds a share of busy",
                obs: obs(0, 0, 10),
                policy: PoolPolicy { scale_factor: 0.25, ..pol(1, None) },
                fleet_max: None,
                launch: 4,
                tasks: 0,
                terminate: 0,
            },
            Case {
                name: "step target raises the warm target",
                obs: obs(2, 0, 0),
                policy: PoolPolicy { step_target: Some(5), ..pol(2, None) },
                fleet_max: None,
                launch: 3,
                tasks: 0,
                terminate: 0,
            },
            Case {
                name: "queued tasks launch first, within the bound",
                obs: with(obs(0, 0, 3), &|o| o.queued = queued(4)),
                policy: pol(2, Some(5)),
                fleet_max: None,
                launch: 0,
                tasks: 2,
                terminate: 0,
            },
            Case {
                name: "no scale-in while tasks are queued",
                obs: with(obs(4, 0, 0), &|o| o.queued = queued(1)),
                policy: pol(0, None),
                fleet_max: Some(4),
                launch: 0,
                tasks: 0,
                terminate: 0,
            },
        ];
        for c in cases {
            let actions = plan(&[(c.obs, c.policy)], c.fleet_max, NOW);
            assert_eq!(launches(&actions), c.launch, "{}: launch", c.name);
            assert_eq!(for_tasks(&actions), c.tasks, "{}: for tasks", c.name);
            assert_eq!(retired(&actions).len(), c.terminate, "{}: terminate", c.name);
        }
    }

    #[test]
    fn retires_longest_idle_first() {
        let actions = plan(&[(obs(3, 0, 0), pol(1, None))], None, NOW);
        assert_eq!(retired(&actions), ["vm-2", "vm-1"]);
    }

    #[test]
    fn drained_idle_and_stopped_vms_are_retired_and_replaced() {
        // A drained VM never gets work: it goes at once, even with tasks queued, and the
        // target is refilled around it (it still counts against the bound until it is gone).
        let mut o = obs(1, 0, 0);
        o.drained = vec!["d-ready".into(), "d-stopped".into()];
        o.queued = queued(1);
        let actions = plan(&[(o, pol(2, Some(4)))], None, NOW);
        assert_eq!(retired(&actions), ["d-ready", "d-stopped"]);
        assert!(actions.iter().any(|a| matches!(a, ScaleAction::Terminate { reason: ScaleReason::Drained, .. })));
        assert_eq!((for_tasks(&actions), launches(&actions)), (0, 1), "the idle VM serves the task; 4 - 3 left");
    }

    #[test]
    fn schedule_window_sets_the_target() {
        let mut p = pol(1, None);
        p.schedules = vec![Window { cron: CronWindow::parse("* 8-17 * * 1-5", "UTC").expect("cron"), min_idle: 4 }];
        let monday_9 = chrono::DateTime::parse_from_rfc3339("2026-11-30T09:00:00Z").expect("t").timestamp_millis();
        let monday_20 = monday_9 + 11 * HOUR;
        assert_eq!(warm_target(&obs(0, 0, 0), &p, monday_9), 4);
        assert_eq!(warm_target(&obs(0, 0, 0), &p, monday_20), 1);
        assert_eq!(launches(&plan(&[(obs(1, 0, 0), p.clone())], None, monday_9)), 3);
    }

    /// Steps a pool through replacing stale VMs (outdated, or aged past `max_age`): at every
    /// step the ready count stays at target, and only stale VMs are retired.
    fn replace_all(mut idle: Vec<IdleVm>, policy: PoolPolicy, now: i64) {
        let target = policy.min_idle as usize;
        let mut starting = 0u32;
        let mut fresh = 0;
        for step in 0..40 {
            let o = PoolObservation { pool: "p".into(), idle: idle.clone(), starting, ..Default::default() };
            for a in plan(&[(o, policy.clone())], None, now) {
                match a {
                    ScaleAction::Launch { count, .. } => {
                        assert!(count + starting <= 1, "step {step}: a quarter of 4 at a time");
                        starting += count;
                    }
                    ScaleAction::Terminate { vm_id, .. } => {
                        assert!(vm_id.starts_with("old-"), "only stale VMs go");
                        idle.retain(|v| v.vm_id != vm_id);
                    }
                    ScaleAction::LaunchForTasks { .. } | ScaleAction::Assign { .. } => panic!("no tasks"),
                    ScaleAction::Start { .. } | ScaleAction::LaunchStopped { .. } => panic!("no stopped tier"),
                }
            }
            assert!(idle.len() >= target, "step {step}: ready count fell below target");
            // A started VM becomes ready by the next step.
            if starting > 0 {
                starting -= 1;
                fresh += 1;
                idle.push(IdleVm {
                    vm_id: format!("new-{fresh}"),
                    ready_at_ms: now,
                    launched_at_ms: now,
                    outdated: false,
                });
            }
            if idle.iter().all(|v| v.vm_id.starts_with("new-")) && starting == 0 {
                break;
            }
        }
        assert_eq!(idle.len(), target);
        assert!(idle.iter().all(|v| v.vm_id.starts_with("new-")), "replacement finished: {idle:?}");
    }

    #[test]
    fn outdated_vms_are_replaced_a_share_at_a_time_without_dropping_below_target() {
        let idle = (0..4)
            .map(|i| IdleVm { vm_id: format!("old-{i}"), ready_at_ms: i, launched_at_ms: NOW, outdated: true })
            .collect();
        replace_all(idle, pol(4, None), NOW);
    }

    #[test]
    fn aged_vms_are_cycled_the_same_way() {
        let policy = PoolPolicy { max_age_ms: Some(24 * HOUR), ..pol(4, None) };
        let idle: Vec<IdleVm> = (0..4)
            .map(|i| IdleVm {
                vm_id: format!("old-{i}"),
                ready_at_ms: i,
                launched_at_ms: NOW - 25 * HOUR,
                outdated: false,
            })
            .collect();
        // Younger than max_age less the largest jitter: left alone.
        let young: Vec<IdleVm> = idle.iter().map(|v| IdleVm { launched_at_ms: NOW - 21 * HOUR, ..v.clone() }).collect();
        let o = PoolObservation { pool: "p".into(), idle: young, ..Default::default() };
        assert!(plan(&[(o, policy.clone())], None, NOW).is_empty());
        replace_all(idle, policy, NOW);
    }

    #[test]
    fn jitter_spreads_cycling_within_a_tenth_of_max_age() {
        let max_age = 24 * HOUR;
        let j: Vec<i64> = (0..50).map(|i| jitter_ms(&format!("vm-{i}"), max_age)).collect();
        assert!(j.iter().all(|&x| (0..max_age / 10).contains(&x)));
        assert!(j.iter().collect::<std::collections::HashSet<_>>().len() > 40, "spread out");
    }

    #[test]
    fn queued_tasks_take_idle_vms_before_launches_in_fair_order() {
        let mut o = obs(1, 0, 3);
        o.queued = queued(3);
        let actions = plan(&[(o, pol(0, Some(5)))], None, NOW);
        assert_eq!(
            actions[0],
            ScaleAction::Assign {
                pool: "machine/default/medium".into(),
                vm_id: "vm-0".into(),
                task_id: "t-0".into(),
                reason: ScaleReason::IdleForQueued
            }
        );
        // Room for one more instance: the other project's task goes before t-2.
        let ScaleAction::LaunchForTasks { task_ids, reason, .. } = &actions[1] else { panic!("{actions:?}") };
        assert_eq!(task_ids, &["t-1"]);
        assert_eq!(reason.to_string(), "2 tasks queued without a VM; 1 held back by max_instances");
        assert_eq!(actions.len(), 2);
    }

    #[test]
    fn reasons_read_as_before() {
        let r = ScaleReason::BelowTarget { warm: 1, target: 4, replacing: 2, replace_now: 1, held_back: 0 };
        assert_eq!(r.to_string(), "1 warm of target 4; replacing 2 outdated or aged, 1 now");
        let s = ScaleReason::Stale { outdated: false, fresh_idle: 4, target: 4 };
        assert_eq!(s.to_string(), "older than max_age; 4 fresh idle meet the target 4");
        assert!(s.is_cycle() && !ScaleReason::Stale { outdated: true, fresh_idle: 4, target: 4 }.is_cycle());
    }

    #[test]
    fn fleet_bound_spans_pools() {
        let a = obs(0, 0, 0);
        let mut b = obs(0, 0, 0);
        b.pool = "machine/default/large".into();
        let actions = plan(&[(a, pol(3, None)), (b, pol(3, None))], Some(4), NOW);
        assert_eq!(launches(&actions), 4);
    }
}
