//! Which VM serves which task: the orders the service's store carries out and the simulator
//! follows, so both make the same choice from the same snapshot.

use crate::{IdleVm, QueuedTask};

/// The order in which a task takes the idle VMs of its pool: only VMs of the image the pool
/// resolves to now (outdated ones wait to be replaced), the longest ready first (they are the
/// nearest to `max_age`), then by id so the order is total.
pub fn claim_order(idle: &[IdleVm]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..idle.len()).filter(|&i| !idle[i].outdated).collect();
    order.sort_by(|&a, &b| idle[a].ready_at_ms.cmp(&idle[b].ready_at_ms).then(idle[a].vm_id.cmp(&idle[b].vm_id)));
    order
}

/// The order in which a pool's queued tasks get VMs: round robin between projects, each
/// project's oldest first, so one project's 50-way matrix does not hold back everyone else.
/// Within a round the older task goes first.
pub fn fair_order(queued: &[QueuedTask]) -> Vec<usize> {
    let mut by_age: Vec<usize> = (0..queued.len()).collect();
    by_age.sort_by(|&a, &b| {
        queued[a].created_at_ms.cmp(&queued[b].created_at_ms).then(queued[a].task_id.cmp(&queued[b].task_id))
    });
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut ranked: Vec<(usize, usize)> = by_age
        .into_iter()
        .map(|i| {
            let n = seen.entry(queued[i].project.as_str()).or_default();
            *n += 1;
            (*n, i)
        })
        .collect();
    // Stable: within a round, the older task first.
    ranked.sort_by_key(|(rank, _)| *rank);
    ranked.into_iter().map(|(_, i)| i).collect()
}

/// A task still waiting for the VM launched for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootWaiter {
    /// The task.
    pub task_id: String,
    /// When it was requested, ms since the epoch.
    pub created_at_ms: i64,
    /// The VM starting for it.
    pub vm_id: String,
}

/// The order in which a warm VM that just came up is offered to tasks waiting for their own
/// boot: the oldest task first. That task takes the warm VM; the VM launched for it joins the
/// warm pool when it is up.
pub fn boot_waiter_order(waiters: &[BootWaiter]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..waiters.len()).collect();
    order.sort_by(|&a, &b| {
        waiters[a].created_at_ms.cmp(&waiters[b].created_at_ms).then(waiters[a].task_id.cmp(&waiters[b].task_id))
    });
    order
}

/// Instances a pool may still add: the smaller of what its own bound and the fleet's leave.
pub fn room(pool_total: u32, pool_max: Option<u32>, fleet_total: u32, fleet_max: Option<u32>) -> u32 {
    let pool_room = pool_max.map_or(u32::MAX, |m| m.saturating_sub(pool_total));
    let fleet_room = fleet_max.map_or(u32::MAX, |m| m.saturating_sub(fleet_total));
    pool_room.min(fleet_room)
}

/// The floor the alarm (step scaling) and the forecast put under a pool's warm target: the
/// larger of the two where both are set.
pub fn target_floor(step: Option<u32>, forecast: Option<u32>) -> Option<u32> {
    match (step, forecast) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(project: &str, at: i64) -> QueuedTask {
        QueuedTask { task_id: format!("t-{project}-{at:03}"), project: project.into(), created_at_ms: at }
    }

    #[test]
    fn queued_tasks_take_turns_between_projects() {
        let mut tasks: Vec<QueuedTask> = (0..50).map(|i| q("big", i)).collect();
        tasks.push(q("small", 100));
        tasks.push(q("small", 101));
        let order: Vec<&str> = fair_order(&tasks).iter().take(5).map(|&i| tasks[i].project.as_str()).collect();
        assert_eq!(order, ["big", "small", "big", "small", "big"]);
        assert!(fair_order(&[]).is_empty());
    }

    #[test]
    fn the_longest_ready_current_vm_is_claimed_first() {
        let vm = |id: &str, ready: i64, outdated: bool| IdleVm {
            vm_id: id.into(),
            ready_at_ms: ready,
            launched_at_ms: 0,
            outdated,
        };
        let idle = [vm("c", 5, false), vm("a", 1, true), vm("b", 5, false), vm("d", 2, false)];
        let order: Vec<&str> = claim_order(&idle).iter().map(|&i| idle[i].vm_id.as_str()).collect();
        assert_eq!(order, ["d", "b", "c"], "outdated VMs are never claimed");
    }

    #[test]
    fn the_oldest_boot_waiter_is_served_first() {
        let w = |t: &str, at: i64| BootWaiter { task_id: t.into(), created_at_ms: at, vm_id: format!("vm-{t}") };
        let ws = [w("b", 2), w("a", 1), w("c", 2)];
        assert_eq!(boot_waiter_order(&ws), [1, 0, 2]);
    }

    #[test]
    fn floors_and_room() {
        assert_eq!(target_floor(Some(2), Some(5)), Some(5));
        assert_eq!(target_floor(None, Some(5)), Some(5));
        assert_eq!(target_floor(Some(2), None), Some(2));
        assert_eq!(target_floor(None, None), None);
        assert_eq!(room(3, Some(5), 10, None), 2);
        assert_eq!(room(3, None, 10, Some(11)), 1);
        assert_eq!(room(3, None, 10, None), u32::MAX);
    }
}
