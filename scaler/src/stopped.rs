//! The stopped tier: pre-initialized VMs kept stopped behind a pool's running warm VMs. They
//! cost only their volumes while stopped, and a start is much faster than a fresh boot. A
//! stopped VM has never run a job: it was launched with its own key, booted once until it
//! answered, and stopped.

use crate::{stale, IdleVm, PoolObservation, PoolPolicy, ScaleAction, ScaleReason};

/// The pool's stopped target: `min_stopped`, at least its forecast floor, within `max_stopped`.
pub fn stopped_target(policy: &PoolPolicy) -> u32 {
    policy.min_stopped.max(policy.stopped_floor.unwrap_or(0)).min(policy.max_stopped.unwrap_or(u32::MAX))
}

/// The stopped tier of one pool, after the running tier took what it started (`started`,
/// indexes into `obs.stopped`): launch up to the stopped target within `room`; retire stale
/// stopped VMs while the fresh ones meet the target, and fresh ones above it once stopped for
/// the idle timeout (not in a pass that found tasks queued).
#[allow(clippy::too_many_arguments)]
pub(crate) fn plan_stopped(
    obs: &PoolObservation,
    policy: &PoolPolicy,
    started: &[usize],
    had_queued: bool,
    now_ms: i64,
    room: u32,
    actions: &mut Vec<ScaleAction>,
    fleet_total: &mut u32,
) {
    let target = stopped_target(policy);
    let left: Vec<(&IdleVm, bool)> = (0..obs.stopped.len())
        .filter(|i| !started.contains(i))
        .map(|i| (&obs.stopped[i], stale(&obs.stopped[i], policy, now_ms)))
        .collect();
    let fresh = left.iter().filter(|(_, s)| !s).count() as u32;
    if fresh + obs.initializing < target {
        let want = target - fresh - obs.initializing;
        let count = want.min(room);
        if count > 0 {
            *fleet_total += count;
            let reason =
                ScaleReason::StoppedBelowTarget { stopped: fresh + obs.initializing, target, held_back: want - count };
            actions.push(ScaleAction::LaunchStopped { pool: obs.pool.clone(), count, reason });
        }
    }
    if had_queued || left.len() as u32 <= target {
        return;
    }
    let mut order = left.clone();
    order.sort_by(|(a, sa), (b, sb)| sb.cmp(sa).then(a.ready_at_ms.cmp(&b.ready_at_ms)).then(a.vm_id.cmp(&b.vm_id)));
    let excess = left.len() as u32 - target;
    let stopped = left.len() as u32;
    for (vm, is_stale) in order.into_iter().take(excess as usize) {
        let reason = if is_stale {
            if fresh < target {
                continue;
            }
            ScaleReason::StoppedStale { outdated: vm.outdated, fresh, target }
        } else {
            if now_ms - vm.ready_at_ms < policy.idle_timeout_ms {
                continue;
            }
            ScaleReason::StoppedAboveTarget { stopped, target }
        };
        actions.push(ScaleAction::Terminate { pool: obs.pool.clone(), vm_id: vm.vm_id.clone(), reason });
    }
}

#[cfg(test)]
mod tests {
    use crate::{plan, IdleVm, PoolObservation, PoolPolicy, QueuedTask, ScaleAction, ScaleReason};

    const NOW: i64 = 1_000_000_000;
    const HOUR: i64 = 3_600_000;
    const POOL: &str = "machine/default/medium";

    fn vms(prefix: &str, n: usize, stopped_ago: i64) -> Vec<IdleVm> {
        (0..n)
            .map(|i| IdleVm {
                vm_id: format!("{prefix}-{i}"),
                ready_at_ms: NOW - stopped_ago - i as i64,
                launched_at_ms: NOW - HOUR,
                outdated: false,
            })
            .collect()
    }

    fn pool(idle: usize, stopped: usize) -> PoolObservation {
        PoolObservation {
            pool: POOL.into(),
            idle: vms("run", idle, 1000),
            stopped: vms("cold", stopped, 1000),
            ..Default::default()
        }
    }

    fn policy(min_idle: u32, min_stopped: u32) -> PoolPolicy {
        PoolPolicy { min_idle, min_stopped, max_replace_share: 0.25, idle_timeout_ms: 600_000, ..Default::default() }
    }

    fn queued(n: usize) -> Vec<QueuedTask> {
        (0..n).map(|i| QueuedTask { task_id: format!("t-{i}"), project: "p".into(), created_at_ms: i as i64 }).collect()
    }

    fn starts(a: &[ScaleAction]) -> Vec<(String, Option<String>)> {
        a.iter()
            .filter_map(|a| match a {
                ScaleAction::Start { vm_id, task_id, .. } => Some((vm_id.clone(), task_id.clone())),
                _ => None,
            })
            .collect()
    }

    fn stopped_launches(a: &[ScaleAction]) -> u32 {
        a.iter().map(|a| if let ScaleAction::LaunchStopped { count, .. } = a { *count } else { 0 }).sum()
    }

    fn run(a: &[ScaleAction]) -> (u32, u32) {
        a.iter().fold((0, 0), |(l, t), a| match a {
            ScaleAction::Launch { count, .. } => (l + count, t),
            ScaleAction::LaunchForTasks { task_ids, .. } => (l, t + task_ids.len() as u32),
            _ => (l, t),
        })
    }

    #[test]
    fn an_empty_pool_fills_its_stopped_tier_within_the_bounds() {
        let a = plan(&[(pool(0, 0), policy(0, 2))], None, NOW);
        assert_eq!(stopped_launches(&a), 2);
        let initializing = PoolObservation { initializing: 1, ..pool(0, 0) };
        assert_eq!(stopped_launches(&plan(&[(initializing, policy(0, 2))], None, NOW)), 1, "one is on its way");
        assert_eq!(stopped_launches(&plan(&[(pool(0, 2), policy(0, 2))], None, NOW)), 0, "converged");
        let bounded = PoolPolicy { max_instances: Some(3), ..policy(2, 4) };
        let a = plan(&[(pool(2, 0), bounded)], None, NOW);
        assert_eq!(stopped_launches(&a), 1, "stopped VMs count against max_instances: {a:?}");
        let capped = PoolPolicy { max_stopped: Some(1), stopped_floor: Some(5), ..policy(0, 3) };
        assert_eq!(stopped_launches(&plan(&[(pool(0, 0), capped)], None, NOW)), 1, "max_stopped caps the floor");
        let floor = PoolPolicy { stopped_floor: Some(4), ..policy(0, 1) };
        assert_eq!(stopped_launches(&plan(&[(pool(0, 0), floor)], None, NOW)), 4, "the forecast raises the target");
    }

    #[test]
    fn a_queued_task_takes_an_idle_vm_then_a_stopped_one_then_a_launch() {
        let o = PoolObservation { queued: queued(3), ..pool(1, 1) };
        let a = plan(&[(o, policy(0, 0))], None, NOW);
        assert!(matches!(&a[0], ScaleAction::Assign { vm_id, task_id, .. } if vm_id == "run-0" && task_id == "t-0"));
        assert_eq!(starts(&a), [("cold-0".to_string(), Some("t-1".to_string()))]);
        assert!(
            a.iter()
                .any(|x| matches!(x, ScaleAction::LaunchForTasks { task_ids, .. } if task_ids == &["t-2".to_string()])),
            "{a:?}"
        );
    }

    #[test]
    fn below_the_running_target_stopped_vms_start_before_anything_launches() {
        let a = plan(&[(pool(0, 3), policy(2, 3))], None, NOW);
        let s = starts(&a);
        assert_eq!(s.len(), 2, "{a:?}");
        assert!(s.iter().all(|(_, t)| t.is_none()));
        assert_eq!(run(&a), (0, 0), "no fresh launch while stopped VMs cover the deficit");
        assert_eq!(stopped_launches(&a), 2, "the stopped tier refills what the running one took");
        // The longest stopped goes first (the nearest to max_age).
        assert_eq!(s[0].0, "cold-2");
        let a = plan(&[(pool(0, 1), policy(3, 0))], None, NOW);
        assert_eq!((starts(&a).len(), run(&a)), (1, (2, 0)), "the rest of the deficit launches: {a:?}");
    }

    #[test]
    fn stale_and_surplus_stopped_vms_are_retired_safely() {
        let mut o = pool(0, 3);
        o.stopped[0].outdated = true;
        // Two fresh meet a target of two: the outdated one goes.
        let a = plan(&[(o.clone(), policy(0, 2))], None, NOW);
        assert!(a.iter().any(|x| matches!(x, ScaleAction::Terminate { vm_id, reason: ScaleReason::StoppedStale { outdated: true, .. }, .. } if vm_id == "cold-0")), "{a:?}");
        // With a target of three it stays until its replacement is stopped.
        let a = plan(&[(o.clone(), policy(0, 3))], None, NOW);
        assert!(!a.iter().any(|x| matches!(x, ScaleAction::Terminate { .. })), "{a:?}");
        assert_eq!(stopped_launches(&a), 1);
        assert!(starts(&a).is_empty(), "an outdated VM is never started");
        // Above target: fresh stopped VMs go only after the idle timeout, never while tasks queue.
        let recent = pool(0, 3);
        assert!(!plan(&[(recent, policy(0, 1))], None, NOW).iter().any(|x| matches!(x, ScaleAction::Terminate { .. })));
        let old = PoolObservation { stopped: vms("cold", 3, 700_000), ..pool(0, 0) };
        let a = plan(&[(old.clone(), policy(0, 1))], None, NOW);
        assert_eq!(a.iter().filter(|x| matches!(x, ScaleAction::Terminate { .. })).count(), 2, "{a:?}");
        let busy = PoolObservation { queued: queued(1), ..old };
        let a = plan(&[(busy, PoolPolicy { max_instances: Some(3), ..policy(0, 1) })], None, NOW);
        assert!(
            !a.iter().any(|x| matches!(x, ScaleAction::Terminate { .. })),
            "not in a pass with queued tasks: {a:?}"
        );
    }

    #[test]
    fn aged_stopped_vms_cycle_and_count_as_cycles() {
        let policy = PoolPolicy { max_age_ms: Some(HOUR / 2), ..policy(0, 1) };
        let mut o = pool(0, 2);
        o.stopped[1].launched_at_ms = NOW - 10 * HOUR;
        o.stopped[0].launched_at_ms = NOW - 60_000;
        let a = plan(&[(o, policy)], None, NOW);
        let t: Vec<_> = a
            .iter()
            .filter_map(
                |x| if let ScaleAction::Terminate { vm_id, reason, .. } = x { Some((vm_id, reason)) } else { None },
            )
            .collect();
        assert_eq!(t.len(), 1, "{a:?}");
        assert_eq!(t[0].0, "cold-1");
        assert!(t[0].1.is_cycle());
    }
}
