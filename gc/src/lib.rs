//! The garbage-collection planner.
//!
//! `plan` is a pure function from a [`Snapshot`] (the store's VMs, waiting tasks and volumes,
//! the provider's tagged instances and volumes), the time and the settings to a list of
//! actions, each with a reason. It reads no clock and does no I/O; the service carries the
//! actions out within a per-pass budget.
//!
//! # Guarantees
//! Only instances and volumes the provider reported for this installation are ever named (the
//! provider's describe calls filter by the installation tag). An instance or volume unknown to
//! the store is only reaped after `orphan_grace`, so a launch in flight is never mistaken for an
//! orphan. A VM busy with a task is only touched once it exceeds the long-running task
//! timeout. A volume attached to anything, or in use in the store, is never deleted.

pub mod retention;

use std::collections::{BTreeMap, HashMap, HashSet};

/// Where a VM is in its life, as far as collection is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Requested, provisioning or booting.
    Starting,
    /// Ready and idle.
    Ready,
    /// Assigned to a task.
    Assigned,
    /// Stopped tier: being stopped after its first boot.
    Stopping,
    /// Stopped tier: stopped, waiting to be started.
    Stopped,
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
    /// The task it is reserved for or running, and whether that task has started (been
    /// handed the VM).
    pub task: Option<(String, bool)>,
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

/// Where a DLC volume is, as far as collection is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumePhase {
    /// Being created, attached, attached or detaching: in use.
    InUse,
    /// Detached, kept for its project.
    Available,
    /// Marked for deletion (the service deletes it).
    Deleting,
}

/// A volume as the store sees it (deleted records are left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRecord {
    /// vmfleet volume id.
    pub volume_id: String,
    /// Provider id, once created.
    pub provider_id: Option<String>,
    /// Owning project.
    pub project: String,
    /// Phase.
    pub phase: VolumePhase,
    /// When a task last used it.
    pub last_used_at_ms: i64,
    /// When it entered its current state.
    pub state_since_ms: i64,
}

/// A volume as the provider reports it (already filtered to this installation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudVolume {
    /// Provider id.
    pub provider_id: String,
    /// The vmfleet volume id from its tags.
    pub volume_id: Option<String>,
    /// The instance it is attached to.
    pub attached_to: Option<String>,
    /// Creation time.
    pub created_at_ms: i64,
}

/// A task waiting for its VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingTask {
    /// vmfleet task id.
    pub task_id: String,
    /// When it was requested.
    pub created_at_ms: i64,
}

/// Everything one pass looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Live VMs, plus finished ones whose instance the provider still reports.
    pub vms: Vec<VmRecord>,
    /// Tagged instances that are not terminated.
    pub instances: Vec<CloudInstance>,
    /// Volume records that are not deleted.
    pub volumes: Vec<VolumeRecord>,
    /// Tagged volumes.
    pub cloud_volumes: Vec<CloudVolume>,
    /// Tasks still waiting.
    pub waiting: Vec<WaitingTask>,
}

/// Timeouts (milliseconds) and bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// A VM must be ready within this of being requested.
    pub vm_start_timeout_ms: i64,
    /// A task may hold a VM this long.
    pub long_running_task_timeout_ms: i64,
    /// An unknown tagged instance or volume is reaped once this old.
    pub orphan_grace_ms: i64,
    /// A retiring VM whose instance still exists after this is terminated again; a launched VM
    /// whose instance the provider does not report for this long is lost.
    pub retire_grace_ms: i64,
    /// An available volume unused for this long is deleted.
    pub volume_inactivity_ms: i64,
    /// Most volumes a project keeps; beyond it the least recently used available ones go.
    pub volumes_per_project: usize,
    /// A task waiting longer than this is failed.
    pub task_wait_limit_ms: i64,
}

/// Why the collector acts, one variant per rule; [`std::fmt::Display`] gives the sentence
/// operators read in `gc --dry-run`, logs and audit events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GcReason {
    /// The provider has no instance for a VM that should have one.
    NoInstance {
        /// The VM.
        vm_id: String,
        /// The instance it recorded.
        instance_id: String,
        /// What happens to its task.
        task: TaskFate,
    },
    /// A VM not ready within the VM start timeout.
    StartTimeout {
        /// The VM.
        vm_id: String,
        /// The timeout.
        limit_ms: i64,
    },
    /// A VM of the stopped tier whose instance did not stop within the VM start timeout.
    StopTimeout {
        /// The VM.
        vm_id: String,
        /// The timeout.
        limit_ms: i64,
    },
    /// A VM assigned for longer than the long-running task timeout.
    LongRunning {
        /// The VM.
        vm_id: String,
        /// The timeout.
        limit_ms: i64,
    },
    /// A released VM's instance still runs after the grace.
    ReleasedAlive {
        /// The VM.
        vm_id: String,
        /// Its instance.
        instance_id: String,
    },
    /// A finished VM's instance still runs.
    FinishedLeaked {
        /// The VM.
        vm_id: String,
        /// Its instance.
        instance_id: String,
    },
    /// An instance tagged with this installation that the store does not know.
    OrphanInstance {
        /// The instance.
        instance_id: String,
        /// The orphan grace.
        grace_ms: i64,
    },
    /// A task waited longer than the limit for a VM.
    WaitedTooLong {
        /// The task.
        task_id: String,
        /// The limit.
        limit_ms: i64,
    },
    /// A recorded volume the provider no longer has.
    VolumeGone {
        /// The vmfleet volume id.
        volume_id: String,
        /// The provider's id it recorded.
        provider_id: String,
    },
    /// A deletion that did not finish.
    DeletionUnfinished {
        /// The vmfleet volume id.
        volume_id: String,
    },
    /// A volume unused for longer than the DLC inactivity period.
    VolumeInactive {
        /// The vmfleet volume id.
        volume_id: String,
        /// Its project.
        project: String,
        /// The period.
        period_ms: i64,
    },
    /// A project over its volume cap; this is its least recently used available volume.
    ProjectCap {
        /// The project.
        project: String,
        /// How many volumes it has.
        count: usize,
        /// The cap.
        cap: usize,
        /// The volume that goes.
        volume_id: String,
    },
    /// A volume tagged with this installation that the store does not know.
    OrphanVolume {
        /// The provider's id.
        provider_id: String,
        /// The orphan grace.
        grace_ms: i64,
    },
}

/// What happens to the task of a VM whose instance is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskFate {
    /// The VM had no task.
    None,
    /// The task had not started: it gets a new VM.
    Requeued(String),
    /// The task had started: it fails.
    Fails(String),
}

impl std::fmt::Display for GcReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GcReason::NoInstance { vm_id, instance_id, task } => {
                write!(f, "vm {vm_id}: the provider has no instance {instance_id}")?;
                match task {
                    TaskFate::None => Ok(()),
                    TaskFate::Requeued(t) => write!(f, "; task {t} had not started and gets a new VM"),
                    TaskFate::Fails(t) => write!(f, "; task {t} fails"),
                }
            }
            GcReason::StartTimeout { vm_id, limit_ms } => {
                write!(f, "vm {vm_id} not ready within the VM start timeout of {} s", secs(*limit_ms))
            }
            GcReason::StopTimeout { vm_id, limit_ms } => {
                write!(f, "vm {vm_id} not stopped within the VM start timeout of {} s", secs(*limit_ms))
            }
            GcReason::LongRunning { vm_id, limit_ms } => write!(
                f,
                "vm {vm_id} assigned for longer than the long-running task timeout of {} s",
                secs(*limit_ms)
            ),
            GcReason::ReleasedAlive { vm_id, instance_id } => {
                write!(f, "instance {instance_id} of released vm {vm_id} is still alive")
            }
            GcReason::FinishedLeaked { vm_id, instance_id } => {
                write!(f, "instance {instance_id} of finished vm {vm_id} leaked")
            }
            GcReason::OrphanInstance { instance_id, grace_ms } => write!(
                f,
                "instance {instance_id} is tagged with this installation but unknown to the store, older than the orphan grace of {} s",
                secs(*grace_ms)
            ),
            GcReason::WaitedTooLong { task_id, limit_ms } => {
                write!(f, "task {task_id} waited longer than the limit of {} s for a VM", secs(*limit_ms))
            }
            GcReason::VolumeGone { volume_id, provider_id } => {
                write!(f, "volume {volume_id}: the provider has no volume {provider_id}")
            }
            GcReason::DeletionUnfinished { volume_id } => {
                write!(f, "deletion of volume {volume_id} has not finished; retrying")
            }
            GcReason::VolumeInactive { volume_id, project, period_ms } => write!(
                f,
                "volume {volume_id} of project {project} unused for longer than the DLC inactivity period of {}",
                days(*period_ms)
            ),
            GcReason::ProjectCap { project, count, cap, volume_id } => write!(
                f,
                "project {project} has {count} volumes, above the cap of {cap}; volume {volume_id} is the least recently used"
            ),
            GcReason::OrphanVolume { provider_id, grace_ms } => write!(
                f,
                "volume {provider_id} is tagged with this installation but unknown to the store, older than the orphan grace of {} s",
                secs(*grace_ms)
            ),
        }
    }
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
        reason: GcReason,
    },
    /// Terminate an instance (an orphan, a leaked or a stuck retiring VM's).
    TerminateInstance {
        /// The instance.
        instance_id: String,
        /// The VM it belongs to, if the store knows it.
        vm_id: Option<String>,
        /// Why.
        reason: GcReason,
    },
    /// The provider no longer has the VM's instance.
    MarkLost {
        /// The VM.
        vm_id: String,
        /// A task that had not started yet: it gets a new VM instead of failing.
        requeue: Option<String>,
        /// Why.
        reason: GcReason,
    },
    /// Delete a volume: a recorded one (`volume_id`) or an orphan known only to the provider.
    DeleteVolume {
        /// The vmfleet volume id, when the store has a record.
        volume_id: Option<String>,
        /// The provider's id, when created.
        provider_id: Option<String>,
        /// Why.
        reason: GcReason,
    },
    /// The store's record names a volume the provider no longer has: mark it deleted.
    ForgetVolume {
        /// The vmfleet volume id.
        volume_id: String,
        /// Why.
        reason: GcReason,
    },
    /// Fail a task that waited too long.
    FailTask {
        /// The task.
        task_id: String,
        /// Why.
        reason: GcReason,
    },
}

impl GcAction {
    /// Whether this only carries out what the store already decided (the instance of a
    /// finished or released VM), rather than deciding anything: such actions are not bounded
    /// by the budget.
    pub fn carries_out_the_store(&self) -> bool {
        matches!(
            self,
            GcAction::TerminateInstance {
                reason: GcReason::FinishedLeaked { .. } | GcReason::ReleasedAlive { .. },
                ..
            }
        )
    }

    /// The instance this action terminates, if any.
    pub fn terminates(&self) -> Option<&str> {
        match self {
            GcAction::FailVm { instance_id, .. } => instance_id.as_deref(),
            GcAction::TerminateInstance { instance_id, .. } => Some(instance_id),
            _ => None,
        }
    }

    /// Why.
    pub fn reason(&self) -> &GcReason {
        match self {
            GcAction::FailVm { reason, .. }
            | GcAction::TerminateInstance { reason, .. }
            | GcAction::MarkLost { reason, .. }
            | GcAction::DeleteVolume { reason, .. }
            | GcAction::ForgetVolume { reason, .. }
            | GcAction::FailTask { reason, .. } => reason,
        }
    }

    /// The audit action name (`vm.terminate`, `volume.delete`, …).
    pub fn audit_action(&self) -> &'static str {
        match self {
            GcAction::FailVm { .. } | GcAction::TerminateInstance { .. } => "vm.terminate",
            GcAction::MarkLost { .. } => "vm.lost",
            GcAction::DeleteVolume { .. } => "volume.delete",
            GcAction::ForgetVolume { .. } => "volume.forget",
            GcAction::FailTask { .. } => "task.fail",
        }
    }

    /// What it does, in a few words naming the ids: `terminate i-0abc`, `delete volume vol-1 (vol-0def)`.
    pub fn summary(&self) -> String {
        match self {
            GcAction::FailVm { vm_id, instance_id: Some(i), .. } => format!("fail {vm_id} and terminate {i}"),
            GcAction::FailVm { vm_id, instance_id: None, .. } => format!("fail {vm_id}"),
            GcAction::TerminateInstance { instance_id, .. } => format!("terminate {instance_id}"),
            GcAction::MarkLost { vm_id, requeue: Some(t), .. } => format!("mark {vm_id} lost and requeue {t}"),
            GcAction::MarkLost { vm_id, requeue: None, .. } => format!("mark {vm_id} lost"),
            GcAction::DeleteVolume { volume_id: Some(v), provider_id: Some(p), .. } => {
                format!("delete volume {v} ({p})")
            }
            GcAction::DeleteVolume { volume_id: Some(v), provider_id: None, .. } => format!("delete volume {v}"),
            GcAction::DeleteVolume { volume_id: None, provider_id, .. } => {
                format!("delete volume {}", provider_id.as_deref().unwrap_or_default())
            }
            GcAction::ForgetVolume { volume_id, .. } => format!("forget volume {volume_id}"),
            GcAction::FailTask { task_id, .. } => format!("fail task {task_id}"),
        }
    }

    /// What it acts on, for printing and the audit trail: ids of the store and the provider.
    pub fn target(&self) -> String {
        match self {
            GcAction::FailVm { vm_id, instance_id, .. } => match instance_id {
                Some(i) => format!("{vm_id} {i}"),
                None => vm_id.clone(),
            },
            GcAction::TerminateInstance { instance_id, vm_id, .. } => match vm_id {
                Some(v) => format!("{instance_id} {v}"),
                None => instance_id.clone(),
            },
            GcAction::MarkLost { vm_id, .. } => vm_id.clone(),
            GcAction::DeleteVolume { volume_id, provider_id, .. } => {
                [volume_id.as_deref(), provider_id.as_deref()].into_iter().flatten().collect::<Vec<_>>().join(" ")
            }
            GcAction::ForgetVolume { volume_id, .. } => volume_id.clone(),
            GcAction::FailTask { task_id, .. } => task_id.clone(),
        }
    }
}

fn secs(ms: i64) -> i64 {
    ms / 1000
}

fn days(ms: i64) -> String {
    let d = ms as f64 / 86_400_000.0;
    if d >= 1.0 {
        format!("{d:.0} days")
    } else {
        format!("{} s", secs(ms))
    }
}

/// Plans one pass. At most `budget` decisions are returned, most urgent kinds first: VMs and
/// instances (they cost money by the second), then tasks, then volumes. Terminating the
/// instance of a VM the store already records as finished or released carries out a decision
/// made before, so it is always planned, ahead of the rest and outside the budget: a crash that
/// left hundreds of failed VMs running is cleaned up in one pass (the service terminates in
/// batches).
pub fn plan(snap: &Snapshot, now_ms: i64, s: &Settings, budget: usize) -> Vec<GcAction> {
    let (mut out, mut decisions): (Vec<GcAction>, Vec<GcAction>) =
        plan_vms(snap, now_ms, s).into_iter().partition(GcAction::carries_out_the_store);
    plan_tasks(snap, now_ms, s, &mut decisions);
    plan_volumes(snap, now_ms, s, &mut decisions);
    decisions.truncate(budget);
    out.append(&mut decisions);
    out
}

fn plan_vms(snap: &Snapshot, now_ms: i64, s: &Settings) -> Vec<GcAction> {
    let mut out = Vec::new();
    let by_instance: HashMap<&str, &CloudInstance> =
        snap.instances.iter().map(|i| (i.instance_id.as_str(), i)).collect();
    let known_vms: HashMap<&str, &VmRecord> = snap.vms.iter().map(|v| (v.vm_id.as_str(), v)).collect();
    let mut named: HashSet<String> = HashSet::new();

    for vm in &snap.vms {
        let live = vm.instance_id.as_deref().and_then(|id| by_instance.get(id));
        // Describe calls may lag a launch by a moment: only a launch older than the grace is lost.
        let launched_long_ago = now_ms - vm.state_since_ms > s.retire_grace_ms;
        let lost = vm.instance_id.is_some() && live.is_none();
        match vm.phase {
            Phase::Starting | Phase::Ready | Phase::Assigned | Phase::Stopping | Phase::Stopped
                if lost && (vm.phase != Phase::Starting || launched_long_ago) =>
            {
                let requeue = vm.task.as_ref().filter(|(_, started)| !started).map(|(t, _)| t.clone());
                let task = match (&vm.task, &requeue) {
                    (_, Some(t)) => TaskFate::Requeued(t.clone()),
                    (Some((t, _)), None) => TaskFate::Fails(t.clone()),
                    (None, _) => TaskFate::None,
                };
                out.push(GcAction::MarkLost {
                    vm_id: vm.vm_id.clone(),
                    requeue,
                    reason: GcReason::NoInstance {
                        vm_id: vm.vm_id.clone(),
                        instance_id: vm.instance_id.clone().unwrap_or_default(),
                        task,
                    },
                });
            }
            Phase::Starting if now_ms - vm.requested_at_ms > s.vm_start_timeout_ms => {
                out.push(GcAction::FailVm {
                    vm_id: vm.vm_id.clone(),
                    instance_id: vm.instance_id.clone(),
                    reason: GcReason::StartTimeout { vm_id: vm.vm_id.clone(), limit_ms: s.vm_start_timeout_ms },
                });
            }
            Phase::Stopping if now_ms - vm.state_since_ms > s.vm_start_timeout_ms => {
                out.push(GcAction::FailVm {
                    vm_id: vm.vm_id.clone(),
                    instance_id: vm.instance_id.clone(),
                    reason: GcReason::StopTimeout { vm_id: vm.vm_id.clone(), limit_ms: s.vm_start_timeout_ms },
                });
            }
            Phase::Assigned if now_ms - vm.state_since_ms > s.long_running_task_timeout_ms => {
                out.push(GcAction::FailVm {
                    vm_id: vm.vm_id.clone(),
                    instance_id: vm.instance_id.clone(),
                    reason: GcReason::LongRunning { vm_id: vm.vm_id.clone(), limit_ms: s.long_running_task_timeout_ms },
                });
            }
            Phase::Retiring if live.is_some() && now_ms - vm.state_since_ms > s.retire_grace_ms => {
                let id = vm.instance_id.clone().unwrap_or_default();
                named.insert(id.clone());
                out.push(GcAction::TerminateInstance {
                    instance_id: id.clone(),
                    vm_id: Some(vm.vm_id.clone()),
                    reason: GcReason::ReleasedAlive { vm_id: vm.vm_id.clone(), instance_id: id },
                });
            }
            Phase::Done if live.is_some() => {
                let id = vm.instance_id.clone().unwrap_or_default();
                named.insert(id.clone());
                out.push(GcAction::TerminateInstance {
                    instance_id: id.clone(),
                    vm_id: Some(vm.vm_id.clone()),
                    reason: GcReason::FinishedLeaked { vm_id: vm.vm_id.clone(), instance_id: id },
                });
            }
            _ => {}
        }
    }

    for inst in &snap.instances {
        if named.contains(&inst.instance_id) {
            continue;
        }
        let owner = inst.vm_id.as_deref().and_then(|id| known_vms.get(id));
        let claimed = owner.is_some_and(|vm| vm.instance_id.as_deref().is_none_or(|i| i == inst.instance_id));
        if !claimed && now_ms - inst.launched_at_ms > s.orphan_grace_ms {
            out.push(GcAction::TerminateInstance {
                instance_id: inst.instance_id.clone(),
                vm_id: inst.vm_id.clone(),
                reason: GcReason::OrphanInstance { instance_id: inst.instance_id.clone(), grace_ms: s.orphan_grace_ms },
            });
        }
    }
    out
}

fn plan_tasks(snap: &Snapshot, now_ms: i64, s: &Settings, out: &mut Vec<GcAction>) {
    for t in &snap.waiting {
        if now_ms - t.created_at_ms > s.task_wait_limit_ms {
            out.push(GcAction::FailTask {
                task_id: t.task_id.clone(),
                reason: GcReason::WaitedTooLong { task_id: t.task_id.clone(), limit_ms: s.task_wait_limit_ms },
            });
        }
    }
}

fn plan_volumes(snap: &Snapshot, now_ms: i64, s: &Settings, out: &mut Vec<GcAction>) {
    let cloud: HashMap<&str, &CloudVolume> = snap.cloud_volumes.iter().map(|v| (v.provider_id.as_str(), v)).collect();
    let mut going: HashSet<&str> = HashSet::new();

    // Records whose volume is gone: forget them (an in-use one is the task's business).
    for v in &snap.volumes {
        let gone = v.provider_id.as_deref().is_some_and(|p| !cloud.contains_key(p));
        if gone && v.phase == VolumePhase::Available && now_ms - v.state_since_ms > s.retire_grace_ms {
            going.insert(&v.volume_id);
            out.push(GcAction::ForgetVolume {
                volume_id: v.volume_id.clone(),
                reason: GcReason::VolumeGone {
                    volume_id: v.volume_id.clone(),
                    provider_id: v.provider_id.clone().unwrap_or_default(),
                },
            });
        }
    }
    // Deletions that did not finish (a provider error, a crash): retried.
    for v in &snap.volumes {
        if v.phase == VolumePhase::Deleting && !going.contains(v.volume_id.as_str()) {
            going.insert(&v.volume_id);
            out.push(GcAction::DeleteVolume {
                volume_id: Some(v.volume_id.clone()),
                provider_id: v.provider_id.clone(),
                reason: GcReason::DeletionUnfinished { volume_id: v.volume_id.clone() },
            });
        }
    }
    let attached =
        |v: &VolumeRecord| v.provider_id.as_deref().and_then(|p| cloud.get(p)).is_some_and(|c| c.attached_to.is_some());
    // Inactivity.
    for v in &snap.volumes {
        if v.phase == VolumePhase::Available
            && !going.contains(v.volume_id.as_str())
            && !attached(v)
            && now_ms - v.last_used_at_ms > s.volume_inactivity_ms
        {
            going.insert(&v.volume_id);
            out.push(GcAction::DeleteVolume {
                volume_id: Some(v.volume_id.clone()),
                provider_id: v.provider_id.clone(),
                reason: GcReason::VolumeInactive {
                    volume_id: v.volume_id.clone(),
                    project: v.project.clone(),
                    period_ms: s.volume_inactivity_ms,
                },
            });
        }
    }
    // Per-project cap: the least recently used available volumes go first.
    let mut by_project: BTreeMap<&str, Vec<&VolumeRecord>> = BTreeMap::new();
    for v in &snap.volumes {
        if v.phase != VolumePhase::Deleting && !going.contains(v.volume_id.as_str()) {
            by_project.entry(&v.project).or_default().push(v);
        }
    }
    for (project, mut vols) in by_project {
        if vols.len() <= s.volumes_per_project {
            continue;
        }
        let count = vols.len();
        let mut excess = count - s.volumes_per_project;
        vols.sort_by(|a, b| a.last_used_at_ms.cmp(&b.last_used_at_ms).then(a.volume_id.cmp(&b.volume_id)));
        for v in vols {
            if excess == 0 {
                break;
            }
            if v.phase != VolumePhase::Available || attached(v) {
                continue;
            }
            excess -= 1;
            out.push(GcAction::DeleteVolume {
                volume_id: Some(v.volume_id.clone()),
                provider_id: v.provider_id.clone(),
                reason: GcReason::ProjectCap {
                    project: project.to_string(),
                    count,
                    cap: s.volumes_per_project,
                    volume_id: v.volume_id.clone(),
                },
            });
        }
    }
    // Orphans: tagged volumes the store does not know (or has deleted), detached, past the grace.
    let known: HashSet<&str> = snap.volumes.iter().filter_map(|v| v.provider_id.as_deref()).collect();
    let known_ids: HashSet<&str> = snap.volumes.iter().map(|v| v.volume_id.as_str()).collect();
    for c in &snap.cloud_volumes {
        let recorded =
            known.contains(c.provider_id.as_str()) || c.volume_id.as_deref().is_some_and(|id| known_ids.contains(id));
        if !recorded && c.attached_to.is_none() && now_ms - c.created_at_ms > s.orphan_grace_ms {
            out.push(GcAction::DeleteVolume {
                volume_id: None,
                provider_id: Some(c.provider_id.clone()),
                reason: GcReason::OrphanVolume { provider_id: c.provider_id.clone(), grace_ms: s.orphan_grace_ms },
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;
    const S: Settings = Settings {
        vm_start_timeout_ms: 300_000,
        long_running_task_timeout_ms: 6 * 3_600_000,
        orphan_grace_ms: 600_000,
        retire_grace_ms: 60_000,
        volume_inactivity_ms: 14 * DAY,
        volumes_per_project: 3,
        task_wait_limit_ms: 3_600_000,
    };

    fn vm(id: &str, phase: Phase, inst: Option<&str>, at: i64) -> VmRecord {
        VmRecord {
            vm_id: id.into(),
            phase,
            instance_id: inst.map(Into::into),
            requested_at_ms: at,
            state_since_ms: at,
            task: None,
        }
    }

    fn inst(id: &str, vm: Option<&str>, at: i64) -> CloudInstance {
        CloudInstance { instance_id: id.into(), vm_id: vm.map(Into::into), launched_at_ms: at }
    }

    fn vol(id: &str, project: &str, phase: VolumePhase, last_used: i64) -> VolumeRecord {
        VolumeRecord {
            volume_id: id.into(),
            provider_id: Some(format!("p-{id}")),
            project: project.into(),
            phase,
            last_used_at_ms: last_used,
            state_since_ms: last_used,
        }
    }

    fn cvol(id: &str, tag: Option<&str>, attached: Option<&str>, at: i64) -> CloudVolume {
        CloudVolume {
            provider_id: id.into(),
            volume_id: tag.map(Into::into),
            attached_to: attached.map(Into::into),
            created_at_ms: at,
        }
    }

    fn short(a: GcAction) -> String {
        match a {
            GcAction::FailVm { vm_id, .. } => format!("fail {vm_id}"),
            GcAction::TerminateInstance { instance_id, .. } => format!("term {instance_id}"),
            GcAction::MarkLost { vm_id, requeue: None, .. } => format!("lost {vm_id}"),
            GcAction::MarkLost { vm_id, requeue: Some(t), .. } => format!("lost {vm_id} requeue {t}"),
            GcAction::DeleteVolume { volume_id: Some(v), .. } => format!("delete {v}"),
            GcAction::DeleteVolume { volume_id: None, provider_id, .. } => {
                format!("delete orphan {}", provider_id.unwrap_or_default())
            }
            GcAction::ForgetVolume { volume_id, .. } => format!("forget {volume_id}"),
            GcAction::FailTask { task_id, .. } => format!("fail task {task_id}"),
        }
    }

    fn run(snap: &Snapshot, now: i64) -> Vec<String> {
        plan(snap, now, &S, 100).into_iter().map(short).collect()
    }

    #[test]
    fn vm_table() {
        let now = 10_000_000;
        let with_task = |mut v: VmRecord, started: bool| {
            v.task = Some(("t".into(), started));
            v
        };
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
            ("lost idle instance", vec![vm("a", Phase::Ready, Some("i-a"), now - 1000)], vec![], vec!["lost a"]),
            (
                "lost while running its task: the task fails",
                vec![with_task(vm("a", Phase::Assigned, Some("i-a"), now - 1000), true)],
                vec![],
                vec!["lost a"],
            ),
            (
                "lost before its task started: the task is requeued",
                vec![with_task(vm("a", Phase::Starting, Some("i-a"), now - 61_000), false)],
                vec![],
                vec!["lost a requeue t"],
            ),
            (
                "just launched and not yet described: not lost",
                vec![with_task(vm("a", Phase::Starting, Some("i-a"), now - 1000), false)],
                vec![],
                vec![],
            ),
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
        for (name, vms, instances, want) in cases {
            let snap = Snapshot { vms, instances, ..Default::default() };
            assert_eq!(run(&snap, now), want, "{name}");
        }
    }

    #[test]
    fn volume_table() {
        let now = 100 * DAY;
        type Case = (&'static str, Vec<VolumeRecord>, Vec<CloudVolume>, Vec<&'static str>);
        let cases: Vec<Case> = vec![
            (
                "recently used kept",
                vec![vol("a", "p", VolumePhase::Available, now - DAY)],
                vec![cvol("p-a", Some("a"), None, 0)],
                vec![],
            ),
            (
                "inactive deleted",
                vec![vol("a", "p", VolumePhase::Available, now - 15 * DAY)],
                vec![cvol("p-a", Some("a"), None, 0)],
                vec!["delete a"],
            ),
            (
                "inactive but in use (a busy VM's): kept",
                vec![vol("a", "p", VolumePhase::InUse, now - 15 * DAY)],
                vec![cvol("p-a", Some("a"), Some("i-1"), 0)],
                vec![],
            ),
            (
                "record says available, cloud says attached: kept",
                vec![vol("a", "p", VolumePhase::Available, now - 15 * DAY)],
                vec![cvol("p-a", Some("a"), Some("i-1"), 0)],
                vec![],
            ),
            (
                "above the per-project cap: least recently used first, in-use ones count but stay",
                vec![
                    vol("a", "p", VolumePhase::InUse, now - 9 * DAY),
                    vol("b", "p", VolumePhase::Available, now - 8 * DAY),
                    vol("c", "p", VolumePhase::Available, now - 3 * DAY),
                    vol("d", "p", VolumePhase::Available, now - 2 * DAY),
                    vol("e", "p", VolumePhase::Available, now - DAY),
                    vol("f", "q", VolumePhase::Available, now - 9 * DAY),
                ],
                ["a", "b", "c", "d", "e", "f"].iter().map(|v| cvol(&format!("p-{v}"), Some(v), None, 0)).collect(),
                vec!["delete b", "delete c"],
            ),
            (
                "record whose volume is gone is forgotten",
                vec![vol("a", "p", VolumePhase::Available, now - DAY)],
                vec![],
                vec!["forget a"],
            ),
            (
                "in-use record whose volume is gone is the task's business",
                vec![vol("a", "p", VolumePhase::InUse, now - DAY)],
                vec![],
                vec![],
            ),
            (
                "old orphan deleted",
                vec![],
                vec![cvol("p-x", Some("x"), None, now - 700_000)],
                vec!["delete orphan p-x"],
            ),
            ("young orphan spared", vec![], vec![cvol("p-x", None, None, now - 1000)], vec![]),
            ("attached orphan spared", vec![], vec![cvol("p-x", None, Some("i-1"), 0)], vec![]),
            (
                "an unfinished deletion is retried",
                vec![vol("a", "p", VolumePhase::Deleting, now - DAY)],
                vec![cvol("p-a", Some("a"), None, 0)],
                vec!["delete a"],
            ),
            (
                "created but its id not yet recorded: known by its tag",
                vec![VolumeRecord { provider_id: None, ..vol("a", "p", VolumePhase::InUse, now - DAY) }],
                vec![cvol("p-a", Some("a"), None, 0)],
                vec![],
            ),
        ];
        for (name, volumes, cloud_volumes, want) in cases {
            let snap = Snapshot { volumes, cloud_volumes, ..Default::default() };
            assert_eq!(run(&snap, now), want, "{name}");
        }
    }

    #[test]
    fn tasks_waiting_past_the_limit_fail() {
        let now = 10 * 3_600_000;
        let waiting = vec![
            WaitingTask { task_id: "old".into(), created_at_ms: now - 2 * 3_600_000 },
            WaitingTask { task_id: "new".into(), created_at_ms: now - 60_000 },
        ];
        let snap = Snapshot { waiting, ..Default::default() };
        assert_eq!(run(&snap, now), ["fail task old"]);
    }

    #[test]
    fn budget_bounds_a_pass_and_instances_come_first() {
        let instances: Vec<_> = (0..10).map(|i| inst(&format!("i-{i}"), None, 0)).collect();
        let cloud_volumes = vec![cvol("p-x", None, None, 0)];
        let snap = Snapshot { instances, cloud_volumes, ..Default::default() };
        let got = plan(&snap, 10_000_000, &S, 3);
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|a| matches!(a, GcAction::TerminateInstance { .. })));
    }

    #[test]
    fn instances_of_finished_vms_are_all_terminated_in_one_pass_whatever_the_budget() {
        let now = 10_000_000;
        let vms: Vec<_> = (0..200)
            .map(|i| VmRecord {
                vm_id: format!("vm-{i}"),
                phase: if i % 2 == 0 { Phase::Done } else { Phase::Retiring },
                instance_id: Some(format!("i-{i}")),
                requested_at_ms: 0,
                state_since_ms: 0,
                task: None,
            })
            .collect();
        let mut instances: Vec<_> = (0..200).map(|i| inst(&format!("i-{i}"), Some(&format!("vm-{i}")), 0)).collect();
        // Orphans are decisions: bounded.
        instances.extend((0..10).map(|i| inst(&format!("i-orphan-{i}"), None, 0)));
        let snap = Snapshot { vms, instances, ..Default::default() };
        let got = plan(&snap, now, &S, 3);
        assert_eq!(got.iter().filter(|a| a.carries_out_the_store()).count(), 200);
        assert_eq!(got.len(), 203);
        assert!(got[..200].iter().all(GcAction::carries_out_the_store), "carried out first");
        assert_eq!(got.iter().filter_map(GcAction::terminates).collect::<HashSet<_>>().len(), 203);
    }
}
