//! The garbage-collection planner.
//!
//! `plan` is a pure function from a snapshot of the store's VMs, the provider's tagged
//! instances, the time and the settings to a list of actions, each with a reason. It reads no
//! clock and does no I/O; the service carries the actions out within a per-pass budget.
//!
//! # Guarantees
//! Only instances the provider reported for this installation are ever named (the provider's
//! describe call filters by the installation tag). An instance unknown to the store is only
//! reaped after `orphan_grace`, so a launch in flight is never mistaken for an orphan. A VM
//! busy with a task is only touched once it exceeds the long-running task timeout.

use std::collections::{HashMap, HashSet};

/// Where a VM is in its life, as far as collection is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Requested, provisioning or booting.
    Starting,
    /// Ready and idle.
    Ready,
    /// Assigned to a task.
    Assigned,
    /// Releasing or terminating: the fleet wants it gone.
    Retiring,
    /// Terminated or failed in the store.
    Done,
}

/// A VM as the store sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRecord {
    /// vmfleet VM id.
    pub vm_id: String,
    /// Phase.
    pub phase: Phase,
    /// Provider instance id, once launched.
    pub instance_id: Option<String>,
    /// When the VM was requested.
    pub requested_at_ms: i64,
    /// When it entered its current state.
    pub state_since_ms: i64,
}

/// An instance as the provider reports it (already filtered to this installation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudInstance {
    /// Provider id.
    pub instance_id: String,
    /// The vmfleet VM id from its tags.
    pub vm_id: Option<String>,
    /// Launch time.
    pub launched_at_ms: i64,
}

/// Timeouts, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// A VM must be ready within this of being requested.
    pub vm_start_timeout_ms: i64,
    /// A task may hold a VM this long.
    pub long_running_task_timeout_ms: i64,
    /// An unknown tagged instance is reaped once this old.
    pub orphan_grace_ms: i64,
    /// A retiring VM whose instance still exists after this is terminated again.
    pub retire_grace_ms: i64,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GcAction {
    /// Fail the VM (and its task, if any) and terminate its instance.
    FailVm {
        /// The VM.
        vm_id: String,
        /// Its instance, if launched.
        instance_id: Option<String>,
        /// Why.
        reason: String,
    },
    /// Terminate an instance (an orphan, a leaked or a stuck retiring VM's).
    TerminateInstance {
        /// The instance.
        instance_id: String,
        /// The VM it belongs to, if the store knows it.
        vm_id: Option<String>,
        /// Why.
        reason: String,
    },
    /// The provider no longer has the VM's instance.
    MarkLost {
        /// The VM.
        vm_id: String,
        /// Why.
        reason: String,
    },
}

impl GcAction {
    /// The reason, for printing.
    pub fn reason(&self) -> &str {
        match self {
            GcAction::FailVm { reason, .. }
            | GcAction::TerminateInstance { reason, .. }
            | GcAction::MarkLost { reason, .. } => reason,
        }
    }
}

fn secs(ms: i64) -> i64 {
    ms / 1000
}

/// Plans one pass. At most `budget` actions are returned, most urgent kinds first.
pub fn plan(vms: &[VmRecord], instances: &[CloudInstance], now_ms: i64, s: &Settings, budget: usize) -> Vec<GcAction> {
    let mut out = Vec::new();
    let by_instance: HashMap<&str, &CloudInstance> = instances.iter().map(|i| (i.instance_id.as_str(), i)).collect();
    let known_vms: HashMap<&str, &VmRecord> = vms.iter().map(|v| (v.vm_id.as_str(), v)).collect();
    let mut named: HashSet<String> = HashSet::new();

    for vm in vms {
        let live = vm.instance_id.as_deref().and_then(|id| by_instance.get(id));
        match vm.phase {
            Phase::Starting if now_ms - vm.requested_at_ms > s.vm_start_timeout_ms => {
                out.push(GcAction::FailVm {
                    vm_id: vm.vm_id.clone(),
                    instance_id: vm.instance_id.clone(),
                    reason: format!(
                        "vm {} not ready within the VM start timeout of {} s",
                        vm.vm_id,
                        secs(s.vm_start_timeout_ms)
                    ),
                });
            }
            Phase::Assigned if now_ms - vm.state_since_ms > s.long_running_task_timeout_ms => {
                out.push(GcAction::FailVm {
                    vm_id: vm.vm_id.clone(),
                    instance_id: vm.instance_id.clone(),
                    reason: format!(
                        "vm {} assigned for longer than the long-running task timeout of {} s",
                        vm.vm_id,
                        secs(s.long_running_task_timeout_ms)
                    ),
                });
            }
            Phase::Ready | Phase::Assigned if vm.instance_id.is_some() && live.is_none() => {
                out.push(GcAction::MarkLost {
                    vm_id: vm.vm_id.clone(),
                    reason: format!(
                        "vm {}: the provider has no instance {}",
                        vm.vm_id,
                        vm.instance_id.as_deref().unwrap_or_default()
                    ),
                });
            }
            Phase::Retiring if live.is_some() && now_ms - vm.state_since_ms > s.retire_grace_ms => {
                let id = vm.instance_id.clone().unwrap_or_default();
                named.insert(id.clone());
                out.push(GcAction::TerminateInstance {
                    instance_id: id.clone(),
                    vm_id: Some(vm.vm_id.clone()),
                    reason: format!("instance {id} of released vm {} is still alive", vm.vm_id),
                });
            }
            Phase::Done if live.is_some() => {
                let id = vm.instance_id.clone().unwrap_or_default();
                named.insert(id.clone());
                out.push(GcAction::TerminateInstance {
                    instance_id: id.clone(),
                    vm_id: Some(vm.vm_id.clone()),
                    reason: format!("instance {id} of finished vm {} leaked", vm.vm_id),
                });
            }
            _ => {}
        }
    }

    for inst in instances {
        if named.contains(&inst.instance_id) {
            continue;
        }
        let owner = inst.vm_id.as_deref().and_then(|id| known_vms.get(id));
        let claimed = owner.is_some_and(|vm| vm.instance_id.as_deref().is_none_or(|i| i == inst.instance_id));
        if !claimed && now_ms - inst.launched_at_ms > s.orphan_grace_ms {
            out.push(GcAction::TerminateInstance {
                instance_id: inst.instance_id.clone(),
                vm_id: inst.vm_id.clone(),
                reason: format!(
                    "instance {} is tagged with this installation but unknown to the store, older than the orphan grace of {} s",
                    inst.instance_id,
                    secs(s.orphan_grace_ms)
                ),
            });
        }
    }
    out.truncate(budget);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Settings = Settings {
        vm_start_timeout_ms: 300_000,
        long_running_task_timeout_ms: 6 * 3_600_000,
        orphan_grace_ms: 600_000,
        retire_grace_ms: 60_000,
    };

    fn vm(id: &str, phase: Phase, inst: Option<&str>, at: i64) -> VmRecord {
        VmRecord { vm_id: id.into(), phase, instance_id: inst.map(Into::into), requested_at_ms: at, state_since_ms: at }
    }

    fn inst(id: &str, vm: Option<&str>, at: i64) -> CloudInstance {
        CloudInstance { instance_id: id.into(), vm_id: vm.map(Into::into), launched_at_ms: at }
    }

    #[test]
    fn table() {
        let now = 10_000_000;
        type Case = (&'static str, Vec<VmRecord>, Vec<CloudInstance>, Vec<&'static str>);
        let cases: Vec<Case> = vec![
            (
                "fresh start left alone",
                vec![vm("a", Phase::Starting, Some("i-a"), now - 1000)],
                vec![inst("i-a", Some("a"), now)],
                vec![],
            ),
            (
                "stuck start failed",
                vec![vm("a", Phase::Starting, Some("i-a"), now - 301_000)],
                vec![inst("i-a", Some("a"), now)],
                vec!["fail a"],
            ),
            (
                "busy under timeout untouched",
                vec![vm("a", Phase::Assigned, Some("i-a"), now - 3_600_000)],
                vec![inst("i-a", Some("a"), now)],
                vec![],
            ),
            (
                "long runner failed",
                vec![vm("a", Phase::Assigned, Some("i-a"), now - 7 * 3_600_000)],
                vec![inst("i-a", Some("a"), now)],
                vec!["fail a"],
            ),
            ("lost instance", vec![vm("a", Phase::Ready, Some("i-a"), now - 1000)], vec![], vec!["lost a"]),
            (
                "leaked after done",
                vec![vm("a", Phase::Done, Some("i-a"), now - 1000)],
                vec![inst("i-a", Some("a"), now - 1000)],
                vec!["term i-a"],
            ),
            (
                "retiring within grace",
                vec![vm("a", Phase::Retiring, Some("i-a"), now - 1000)],
                vec![inst("i-a", Some("a"), now)],
                vec![],
            ),
            (
                "retiring past grace",
                vec![vm("a", Phase::Retiring, Some("i-a"), now - 61_000)],
                vec![inst("i-a", Some("a"), now)],
                vec!["term i-a"],
            ),
            ("young orphan spared", vec![], vec![inst("i-x", None, now - 1000)], vec![]),
            ("old orphan reaped", vec![], vec![inst("i-x", Some("gone"), now - 601_000)], vec!["term i-x"]),
            (
                "launch in flight: row without instance id",
                vec![vm("a", Phase::Starting, None, now - 1000)],
                vec![inst("i-a", Some("a"), now - 700_000)],
                vec![],
            ),
        ];
        for (name, vms, insts, want) in cases {
            let got: Vec<String> = plan(&vms, &insts, now, &S, 100)
                .into_iter()
                .map(|a| match a {
                    GcAction::FailVm { vm_id, .. } => format!("fail {vm_id}"),
                    GcAction::TerminateInstance { instance_id, .. } => format!("term {instance_id}"),
                    GcAction::MarkLost { vm_id, .. } => format!("lost {vm_id}"),
                })
                .collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn budget_bounds_a_pass() {
        let insts: Vec<_> = (0..10).map(|i| inst(&format!("i-{i}"), None, 0)).collect();
        assert_eq!(plan(&[], &insts, 10_000_000, &S, 3).len(), 3);
    }
}
