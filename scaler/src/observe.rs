//! One way of looking at a pool: the service (from its store rows) and the simulator (from its
//! simulated VMs) both describe each VM as a [`VmView`] and let [`observe`] count them.

use crate::{IdleVm, PoolObservation, QueuedTask};

/// Where a VM is in its life, as the planner cares about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmPhase {
    /// Requested, launching or booting.
    Starting,
    /// Up and answering SSH.
    Ready,
    /// Handed to a task.
    Assigned,
    /// Launched for the stopped tier: booting once, then stopping.
    Initializing,
    /// Pre-initialized and stopped: paid for its volume only, started for a task or the
    /// running target.
    Stopped,
    /// Being released or terminated: still an instance until it is gone.
    Retiring,
    /// Terminated or failed.
    Done,
}

/// One VM as the planner sees it.
#[derive(Debug, Clone, Copy)]
pub struct VmView<'a> {
    /// vmfleet VM id.
    pub id: &'a str,
    /// Pool key.
    pub pool: &'a str,
    /// Phase.
    pub phase: VmPhase,
    /// Reserved for or running a task.
    pub has_task: bool,
    /// Takes no new work.
    pub draining: bool,
    /// When it became ready (ms since the epoch), if it did.
    pub ready_at_ms: Option<i64>,
    /// When it was requested.
    pub requested_at_ms: i64,
    /// Built from an image its pool no longer resolves to.
    pub outdated: bool,
}

/// The pool `key` as the planner takes it: ready unreserved VMs are idle, unreserved starting
/// ones are warm VMs on their way, retiring ones still count against the bounds, and every
/// other live VM (reserved, assigned, or draining) is busy. `queued` are the pool's tasks
/// waiting without a VM.
pub fn observe<'a>(key: &str, vms: impl IntoIterator<Item = VmView<'a>>, queued: Vec<QueuedTask>) -> PoolObservation {
    let mut obs = PoolObservation { pool: key.to_string(), queued, ..Default::default() };
    for vm in vms.into_iter().filter(|v| v.pool == key) {
        match vm.phase {
            VmPhase::Ready if !vm.draining && !vm.has_task => obs.idle.push(IdleVm {
                vm_id: vm.id.to_string(),
                ready_at_ms: vm.ready_at_ms.unwrap_or(vm.requested_at_ms),
                launched_at_ms: vm.requested_at_ms,
                outdated: vm.outdated,
            }),
            VmPhase::Ready | VmPhase::Stopped if vm.draining && !vm.has_task => obs.drained.push(vm.id.to_string()),
            VmPhase::Starting if !vm.has_task => obs.starting += 1,
            VmPhase::Stopped if !vm.draining && !vm.has_task => obs.stopped.push(IdleVm {
                vm_id: vm.id.to_string(),
                ready_at_ms: vm.ready_at_ms.unwrap_or(vm.requested_at_ms),
                launched_at_ms: vm.requested_at_ms,
                outdated: vm.outdated,
            }),
            VmPhase::Initializing => obs.initializing += 1,
            VmPhase::Retiring => obs.retiring += 1,
            VmPhase::Done => {}
            _ => obs.busy += 1,
        }
    }
    obs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_phase_counts_once() {
        let v = |id, phase, has_task, draining| VmView {
            id,
            pool: "p",
            phase,
            has_task,
            draining,
            ready_at_ms: Some(5),
            requested_at_ms: 1,
            outdated: false,
        };
        let vms = [
            v("idle", VmPhase::Ready, false, false),
            v("drained", VmPhase::Ready, false, true),
            v("warm", VmPhase::Starting, false, false),
            v("od", VmPhase::Starting, true, false),
            v("busy", VmPhase::Assigned, true, false),
            v("going", VmPhase::Retiring, false, false),
            v("gone", VmPhase::Done, false, false),
            v("cold", VmPhase::Stopped, false, false),
            v("drained-cold", VmPhase::Stopped, false, true),
            v("init", VmPhase::Initializing, false, false),
            VmView { pool: "other", ..v("x", VmPhase::Ready, false, false) },
        ];
        let o = observe("p", vms, Vec::new());
        assert_eq!(o.idle.iter().map(|i| i.vm_id.as_str()).collect::<Vec<_>>(), ["idle"]);
        assert_eq!((o.starting, o.busy, o.retiring), (1, 2, 1));
        assert_eq!(o.drained, ["drained", "drained-cold"]);
        assert_eq!(o.stopped.iter().map(|i| i.vm_id.as_str()).collect::<Vec<_>>(), ["cold"]);
        assert_eq!(o.initializing, 1);
        assert_eq!(o.total(), 9, "stopped and drained VMs count against the bounds");
    }
}
