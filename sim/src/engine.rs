//! The event loop: tasks arrive, VMs boot, tasks end, and after each of those (and on a 10 s
//! tick, as the service's reconcile loop wakes on requests, readiness and releases and on a
//! timer) the policy under test plans a pass over the same observation the service makes.
//!
//! Every VM is a record with the phase the service's store would give it; the observation is
//! built by `vmfleet_scaler::observe`, a task takes an idle VM in `vmfleet_scaler::claim_order`,
//! a warm VM that comes up is offered in `vmfleet_scaler::boot_waiter_order`, and on-demand
//! launches at submission are bounded by `vmfleet_scaler::room`: the production decisions.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use rand::SeedableRng;
use vmfleet_scaler::forecast::History;
use vmfleet_scaler::{BootWaiter, IdleVm, PoolObservation, QueuedTask, ScaleAction, VmPhase, VmView};

use crate::cloud::{lognormal_ms, Cloud};
use crate::report::{pct, ratio, Outcome, Series};
use crate::trace::Trace;

/// A policy under test: vmfleet's or a baseline's planner.
pub trait Planner: Send {
    /// Whether a task that finds no idle VM gets an on-demand launch (else it queues for the
    /// pool).
    fn on_demand(&self) -> bool {
        true
    }
    /// Whether a warm VM that comes up is handed to the oldest task still waiting for its own
    /// launch (vmfleet does; CircleCI 2.x keeps each task on its launch).
    fn hand_ready_to_waiting(&self) -> bool {
        false
    }
    /// The bounds on an on-demand launch at submission: (the pool's `max_instances`, the
    /// fleet's). A task beyond them queues.
    fn bounds(&self, _pool: usize) -> (Option<u32>, Option<u32>) {
        (None, None)
    }
    /// One pass: the pools as observed, the time, the arrivals so far per pool, and the
    /// average queue depth per pool since the last minute's evaluation.
    fn plan(&mut self, obs: &[PoolObservation], now: i64, history: &[History], waiting_avg: &[f64])
        -> Vec<ScaleAction>;
}

/// How the simulated fleet collects DLC volumes: the production collector's settings.
#[derive(Debug, Clone, Copy)]
pub struct Collector {
    /// The collector's settings, from the configuration.
    pub settings: vmfleet_gc::Settings,
    /// How often it runs, ms.
    pub interval_ms: i64,
    /// At most this many actions a pass.
    pub budget: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// A VM is up.
    Ready { pool: usize, vm: u64 },
    /// A task ends; its VM is destroyed.
    End { pool: usize, vm: u64, task: usize },
    /// A VM launched for the stopped tier has booted once and stopped.
    Stopped { pool: usize, vm: u64 },
}

/// A VM of the simulated fleet, as the service's store would record it.
#[derive(Debug, Clone)]
pub struct SimVm {
    name: String,
    /// Phase.
    pub phase: VmPhase,
    /// The task it is reserved for or runs.
    pub task: Option<usize>,
    /// When it became ready.
    pub ready_at: Option<i64>,
    /// When it was requested.
    pub requested_at: i64,
}

#[derive(Default)]
struct PoolSim {
    vms: BTreeMap<u64, SimVm>,
    /// Tasks waiting without a VM.
    queued: Vec<usize>,
    idle: u32,
    starting_warm: u32,
    starting_od: u32,
    running: u32,
    acc_busy: f64,
    acc_idle: f64,
    acc_boot: f64,
    acc_waiting: f64,
    waiting_area_at_eval: f64,
    queue: Vec<f64>,
    launches: u64,
    cycles: u64,
    terminations: u64,
    dlc: u64,
    dlc_hits: u64,
    /// Tasks that found a ready VM on arrival.
    warm_hits: u64,
    stopped: u32,
    initializing: u32,
    acc_stopped: f64,
    start_failures: u64,
}

impl PoolSim {
    fn count(&mut self, vm: &SimVm, d: i32) {
        let c = match (vm.phase, vm.task.is_some()) {
            (VmPhase::Ready, false) => &mut self.idle,
            (VmPhase::Starting, false) => &mut self.starting_warm,
            (VmPhase::Starting, true) => &mut self.starting_od,
            (VmPhase::Assigned, _) => &mut self.running,
            (VmPhase::Stopped, _) => &mut self.stopped,
            (VmPhase::Initializing, _) => &mut self.initializing,
            _ => return,
        };
        *c = c.saturating_add_signed(d);
    }

    fn insert(&mut self, id: u64, vm: SimVm) {
        self.count(&vm, 1);
        self.vms.insert(id, vm);
    }

    fn update(&mut self, id: u64, f: impl FnOnce(&mut SimVm)) {
        let Some(mut vm) = self.vms.remove(&id) else { return };
        self.count(&vm, -1);
        f(&mut vm);
        self.insert(id, vm);
    }

    fn remove(&mut self, id: u64) -> Option<SimVm> {
        let vm = self.vms.remove(&id)?;
        self.count(&vm, -1);
        Some(vm)
    }

    fn idle_vms(&self) -> Vec<IdleVm> {
        self.in_phase(VmPhase::Ready)
    }

    fn in_phase(&self, phase: VmPhase) -> Vec<IdleVm> {
        self.vms
            .values()
            .filter(|v| v.phase == phase && v.task.is_none())
            .map(|v| IdleVm {
                vm_id: v.name.clone(),
                ready_at_ms: v.ready_at.unwrap_or(v.requested_at),
                launched_at_ms: v.requested_at,
                outdated: false,
            })
            .collect()
    }
}

struct Vol {
    last_used: i64,
    in_use: bool,
    gone: bool,
}

/// The id of task `i` as the planner sees it (zero-padded, so the ids sort as the tasks do).
pub fn task_id(i: usize) -> String {
    format!("t{i:09}")
}

fn parse_task(id: &str) -> Option<usize> {
    id.strip_prefix('t')?.parse().ok()
}

fn parse_vm(id: &str) -> Option<u64> {
    id.strip_prefix("vm-")?.parse().ok()
}

/// A simulated fleet replaying one trace.
pub struct Sim<'a> {
    trace: &'a Trace,
    cloud: Cloud,
    collector: Collector,
    rng: rand::rngs::StdRng,
    pools: Vec<PoolSim>,
    heap: BinaryHeap<Reverse<(i64, u64, Ev)>>,
    seq: u64,
    next_vm: u64,
    now: i64,
    volumes: Vec<Vec<Vol>>,
    task_volume: std::collections::HashMap<usize, (u32, usize)>,
    history: Vec<History>,
    series: Series,
}

const TICK_MS: i64 = 10_000;

impl<'a> Sim<'a> {
    /// A fleet with no VMs at the trace's first submission.
    pub fn new(trace: &'a Trace, cloud: Cloud, collector: Collector, seed: u64) -> Self {
        Self {
            trace,
            cloud,
            collector,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            pools: (0..trace.pools.len()).map(|_| PoolSim::default()).collect(),
            heap: BinaryHeap::new(),
            seq: 0,
            next_vm: 0,
            now: trace.tasks.first().map_or(0, |t| t.at),
            volumes: (0..trace.projects).map(|_| Vec::new()).collect(),
            task_volume: std::collections::HashMap::new(),
            history: (0..trace.pools.len()).map(|_| History::default()).collect(),
            series: Series::default(),
        }
    }

    /// Puts a VM of `pool` in the fleet as it stands (for comparing one observation with the
    /// service's); it is named `vm-N`, N counting from 1.
    pub fn place(
        &mut self,
        pool: usize,
        phase: VmPhase,
        task: Option<usize>,
        ready_at: Option<i64>,
        requested_at: i64,
    ) {
        self.next_vm += 1;
        let id = self.next_vm;
        self.pools[pool].insert(id, SimVm { name: format!("vm-{id}"), phase, task, ready_at, requested_at });
    }

    /// Queues task `task` of `pool` without a VM.
    pub fn enqueue(&mut self, pool: usize, task: usize) {
        self.pools[pool].queued.push(task);
    }

    /// The pools as the planner sees them now.
    pub fn observe(&self) -> Vec<PoolObservation> {
        self.pools
            .iter()
            .zip(&self.trace.pools)
            .map(|(p, key)| {
                let views = p.vms.values().map(|v| VmView {
                    id: &v.name,
                    pool: key,
                    phase: v.phase,
                    has_task: v.task.is_some(),
                    draining: false,
                    ready_at_ms: v.ready_at,
                    requested_at_ms: v.requested_at,
                    outdated: false,
                });
                let queued = p
                    .queued
                    .iter()
                    .map(|&t| QueuedTask {
                        task_id: task_id(t),
                        project: self.trace.tasks[t].project.to_string(),
                        created_at_ms: self.trace.tasks[t].at,
                    })
                    .collect();
                vmfleet_scaler::observe(key, views, queued)
            })
            .collect()
    }

    fn push(&mut self, at: i64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, ev)));
    }

    fn advance(&mut self, to: i64) {
        let dt = (to - self.now).max(0) as f64 / 3_600_000.0;
        for p in &mut self.pools {
            p.acc_busy += f64::from(p.running) * dt;
            p.acc_idle += f64::from(p.idle) * dt;
            // Initializing VMs run (and are paid) until they stop.
            p.acc_boot += f64::from(p.starting_warm + p.starting_od + p.initializing) * dt;
            p.acc_stopped += f64::from(p.stopped) * dt;
            p.acc_waiting += p.queued.len() as f64 * dt;
        }
        self.now = to;
    }

    fn launch(&mut self, pool: usize, task: Option<usize>) {
        let boot = self.cloud.boot_ms(&mut self.rng, &self.trace.pools[pool]);
        let now = self.now;
        self.place(pool, VmPhase::Starting, task, None, now);
        self.pools[pool].launches += 1;
        let vm = self.next_vm;
        self.push(now + boot, Ev::Ready { pool, vm });
    }

    /// Launches a VM for the stopped tier: it boots once, then stops.
    fn launch_stopped(&mut self, pool: usize) {
        let boot = self.cloud.boot_ms(&mut self.rng, &self.trace.pools[pool]);
        // Stopping takes a few seconds more; it is counted as running, to err on the dear side.
        let stop = lognormal_ms(&mut self.rng, 10.0, 0.4);
        let now = self.now;
        self.place(pool, VmPhase::Initializing, None, None, now);
        self.pools[pool].launches += 1;
        let vm = self.next_vm;
        self.push(now + boot + stop, Ev::Stopped { pool, vm });
    }

    /// Starts the stopped VM `vm`, for `task` or the running target; a failed start
    /// terminates it and launches a fresh VM instead.
    fn start_stopped(&mut self, pool: usize, vm: u64, task: Option<usize>) {
        match self.cloud.start_ms(&mut self.rng, &self.trace.pools[pool]) {
            Some(ms) => {
                self.pools[pool].update(vm, |v| {
                    v.phase = VmPhase::Starting;
                    v.task = task;
                });
                let now = self.now;
                self.push(now + ms, Ev::Ready { pool, vm });
            }
            None => {
                let p = &mut self.pools[pool];
                p.remove(vm);
                p.start_failures += 1;
                self.launch(pool, task);
            }
        }
    }

    /// Hands `task` the VM `vm` now: the DLC volume (if any) is claimed, then the task runs.
    fn start_task(&mut self, pool: usize, vm: u64, task: usize) {
        let t = self.trace.tasks[task];
        let mut delay = 0;
        if t.dlc {
            self.pools[pool].dlc += 1;
            let vols = &mut self.volumes[t.project as usize];
            let free = vols
                .iter()
                .enumerate()
                .filter(|(_, v)| !v.in_use && !v.gone)
                .max_by_key(|(_, v)| v.last_used)
                .map(|(i, _)| i);
            let idx = match free {
                Some(i) => {
                    self.pools[pool].dlc_hits += 1;
                    delay += lognormal_ms(&mut self.rng, 5.0, 0.6);
                    i
                }
                None => {
                    vols.push(Vol { last_used: self.now, in_use: false, gone: false });
                    delay += lognormal_ms(&mut self.rng, 10.0, 0.4) + lognormal_ms(&mut self.rng, 5.0, 0.6);
                    self.volumes[t.project as usize].len() - 1
                }
            };
            self.volumes[t.project as usize][idx].in_use = true;
            self.task_volume.insert(task, (t.project, idx));
        }
        let now = self.now;
        let p = &mut self.pools[pool];
        p.update(vm, |v| {
            v.phase = VmPhase::Assigned;
            v.task = Some(task);
        });
        p.queue.push((now + delay - t.at) as f64 / 1000.0);
        self.push(now + delay + t.dur, Ev::End { pool, vm, task });
    }

    /// A VM is up: its own task starts; a warm one is offered to the tasks waiting for their
    /// own boot (when the policy does that), else it is idle.
    fn ready(&mut self, pool: usize, vm: u64, planner: &dyn Planner) {
        let Some(task) = self.pools[pool].vms.get(&vm).map(|v| v.task) else { return };
        if let Some(t) = task {
            self.start_task(pool, vm, t);
            return;
        }
        if planner.hand_ready_to_waiting() {
            let waiters: Vec<(u64, BootWaiter)> = self.pools[pool]
                .vms
                .iter()
                .filter(|(id, v)| v.phase == VmPhase::Starting && **id != vm)
                .filter_map(|(id, v)| {
                    let t = v.task?;
                    let w = BootWaiter {
                        task_id: task_id(t),
                        created_at_ms: self.trace.tasks[t].at,
                        vm_id: v.name.clone(),
                    };
                    Some((*id, w))
                })
                .collect();
            let ws: Vec<BootWaiter> = waiters.iter().map(|(_, w)| w.clone()).collect();
            if let Some(&first) = vmfleet_scaler::boot_waiter_order(&ws).first() {
                let (own, w) = &waiters[first];
                let Some(t) = parse_task(&w.task_id) else { return };
                // The task takes this VM; its own launch comes up warm.
                self.pools[pool].update(*own, |v| v.task = None);
                self.start_task(pool, vm, t);
                return;
            }
        }
        let now = self.now;
        self.pools[pool].update(vm, |v| {
            v.phase = VmPhase::Ready;
            v.ready_at = Some(now);
        });
    }

    /// A task arrives: an idle VM in claim order, else an on-demand launch within the bounds
    /// (when the policy launches on demand), else it queues.
    fn arrive(&mut self, task: usize, planner: &dyn Planner) {
        let pool = self.trace.tasks[task].pool;
        self.history[pool].record(self.now);
        let idle = self.pools[pool].idle_vms();
        if let Some(&i) = vmfleet_scaler::claim_order(&idle).first() {
            if let Some(vm) = parse_vm(&idle[i].vm_id) {
                self.pools[pool].warm_hits += 1;
                self.start_task(pool, vm, task);
                return;
            }
        }
        // No running idle VM: a stopped one is started before a fresh launch.
        let stopped = self.pools[pool].in_phase(VmPhase::Stopped);
        if let Some(&i) = vmfleet_scaler::claim_order(&stopped).first() {
            if let Some(vm) = parse_vm(&stopped[i].vm_id) {
                self.start_stopped(pool, vm, Some(task));
                return;
            }
        }
        let (pool_max, fleet_max) = planner.bounds(pool);
        let fleet_total = self.pools.iter().map(|p| p.vms.len() as u32).sum();
        if planner.on_demand()
            && vmfleet_scaler::room(self.pools[pool].vms.len() as u32, pool_max, fleet_total, fleet_max) > 0
        {
            self.launch(pool, Some(task));
        } else {
            self.pools[pool].queued.push(task);
        }
    }

    /// Carries out a pass's actions, each re-checked against the fleet as it is.
    fn apply(&mut self, actions: Vec<ScaleAction>) {
        for a in actions {
            match a {
                ScaleAction::Assign { pool, vm_id, task_id, .. } => {
                    let Some(i) = self.trace.pools.iter().position(|p| *p == pool) else { continue };
                    let (Some(vm), Some(t)) = (parse_vm(&vm_id), parse_task(&task_id)) else { continue };
                    let p = &mut self.pools[i];
                    let idle = p.vms.get(&vm).is_some_and(|v| v.phase == VmPhase::Ready && v.task.is_none());
                    let Some(pos) = p.queued.iter().position(|&q| q == t).filter(|_| idle) else { continue };
                    p.queued.remove(pos);
                    self.start_task(i, vm, t);
                }
                ScaleAction::LaunchForTasks { pool, task_ids, .. } => {
                    let Some(i) = self.trace.pools.iter().position(|p| *p == pool) else { continue };
                    for t in task_ids.iter().filter_map(|id| parse_task(id)) {
                        let Some(pos) = self.pools[i].queued.iter().position(|&q| q == t) else { continue };
                        self.pools[i].queued.remove(pos);
                        self.launch(i, Some(t));
                    }
                }
                ScaleAction::Launch { pool, count, .. } => {
                    let Some(i) = self.trace.pools.iter().position(|p| *p == pool) else { continue };
                    for _ in 0..count {
                        self.launch(i, None);
                    }
                }
                ScaleAction::Start { pool, vm_id, task_id, .. } => {
                    let Some(i) = self.trace.pools.iter().position(|p| *p == pool) else { continue };
                    let Some(vm) = parse_vm(&vm_id) else { continue };
                    let p = &mut self.pools[i];
                    if !p.vms.get(&vm).is_some_and(|v| v.phase == VmPhase::Stopped && v.task.is_none()) {
                        continue;
                    }
                    let task = match task_id.as_deref().map(parse_task) {
                        None => None,
                        Some(t) => {
                            let Some(pos) = t.and_then(|t| p.queued.iter().position(|&q| q == t)) else { continue };
                            Some(p.queued.remove(pos))
                        }
                    };
                    self.start_stopped(i, vm, task);
                }
                ScaleAction::LaunchStopped { pool, count, .. } => {
                    let Some(i) = self.trace.pools.iter().position(|p| *p == pool) else { continue };
                    for _ in 0..count {
                        self.launch_stopped(i);
                    }
                }
                ScaleAction::Terminate { pool, vm_id, reason } => {
                    let Some(i) = self.trace.pools.iter().position(|p| *p == pool) else { continue };
                    let Some(vm) = parse_vm(&vm_id) else { continue };
                    let p = &mut self.pools[i];
                    if p.vms
                        .get(&vm)
                        .is_some_and(|v| matches!(v.phase, VmPhase::Ready | VmPhase::Stopped) && v.task.is_none())
                    {
                        p.remove(vm);
                        p.terminations += 1;
                        if reason.is_cycle() {
                            p.cycles += 1;
                        }
                    }
                }
            }
        }
    }

    fn collect_volumes(&mut self) {
        // The production collector decides which volumes go (inactivity, per-project cap).
        let mut snap = vmfleet_gc::Snapshot::default();
        for (proj, vols) in self.volumes.iter().enumerate() {
            for (i, v) in vols.iter().enumerate().filter(|(_, v)| !v.gone) {
                let id = format!("{proj}/{i}");
                snap.volumes.push(vmfleet_gc::VolumeRecord {
                    volume_id: id.clone(),
                    provider_id: Some(id.clone()),
                    project: proj.to_string(),
                    phase: if v.in_use { vmfleet_gc::VolumePhase::InUse } else { vmfleet_gc::VolumePhase::Available },
                    last_used_at_ms: v.last_used,
                    state_since_ms: v.last_used,
                });
                snap.cloud_volumes.push(vmfleet_gc::CloudVolume {
                    provider_id: id.clone(),
                    volume_id: Some(id),
                    attached_to: None,
                    created_at_ms: v.last_used,
                });
            }
        }
        for a in vmfleet_gc::plan(&snap, self.now, &self.collector.settings, self.collector.budget) {
            if let vmfleet_gc::GcAction::DeleteVolume { volume_id: Some(id), .. } = a {
                if let Some((p, i)) = id.split_once('/') {
                    if let (Ok(p), Ok(i)) = (p.parse::<usize>(), i.parse::<usize>()) {
                        self.volumes[p][i].gone = true;
                    }
                }
            }
        }
    }

    /// One pass of `planner` over the fleet as it stands, without acting.
    pub fn plan_once(&self, planner: &mut dyn Planner, now: i64) -> Vec<ScaleAction> {
        let waiting: Vec<f64> = self.pools.iter().map(|p| p.queued.len() as f64).collect();
        planner.plan(&self.observe(), now, &self.history, &waiting)
    }

    /// Replays the whole trace; `record` samples the pool sizes every five minutes.
    pub fn run(mut self, planner: &mut dyn Planner, record: bool) -> (Outcome, Series) {
        let tasks = &self.trace.tasks;
        let mut next_task = 0usize;
        let mut next_tick = self.now;
        let mut next_gc = self.now + self.collector.interval_ms;
        let mut next_sample = self.now;
        let mut last_eval = self.now;
        let end_of_arrivals = tasks.last().map_or(self.now, |t| t.at);
        loop {
            let t_task = tasks.get(next_task).map_or(i64::MAX, |t| t.at);
            let t_ev = self.heap.peek().map_or(i64::MAX, |Reverse((t, _, _))| *t);
            let t_tick = if next_task < tasks.len() || !self.heap.is_empty() { next_tick } else { i64::MAX };
            let t = t_task.min(t_ev).min(t_tick);
            if t == i64::MAX {
                break;
            }
            self.advance(t);
            if record && t >= next_sample {
                let warm: u32 = self.pools.iter().map(|p| p.idle + p.starting_warm).sum();
                let busy: u32 = self.pools.iter().map(|p| p.running).sum();
                let waiting: u32 = self.pools.iter().map(|p| p.queued.len() as u32 + p.starting_od).sum();
                self.series.points.push((t, waiting, warm, busy));
                next_sample = t + 300_000;
            }
            if t == t_ev {
                let Some(Reverse((_, _, ev))) = self.heap.pop() else { continue };
                match ev {
                    Ev::Ready { pool, vm } => self.ready(pool, vm, planner),
                    Ev::Stopped { pool, vm } => {
                        let now = self.now;
                        self.pools[pool].update(vm, |v| {
                            v.phase = VmPhase::Stopped;
                            v.ready_at = Some(now);
                        });
                    }
                    Ev::End { pool, vm, task } => {
                        self.pools[pool].remove(vm);
                        if let Some((p, i)) = self.task_volume.remove(&task) {
                            let v = &mut self.volumes[p as usize][i];
                            v.in_use = false;
                            v.last_used = self.now;
                        }
                    }
                }
            } else if t == t_task {
                // Every task submitted at this instant, then one planner pass (as the service
                // wakes once per batch of requests).
                while tasks.get(next_task).is_some_and(|x| x.at == t) {
                    self.arrive(next_task, planner);
                    next_task += 1;
                }
            } else {
                next_tick = t + TICK_MS;
                if t >= next_gc {
                    next_gc = t + self.collector.interval_ms;
                    self.collect_volumes();
                }
            }
            // Queue depth averaged since the last evaluation; over a span under 3.6 s (1e-6 h)
            // the depth now counts too.
            let span = ((t - last_eval) as f64 / 3_600_000.0).max(1e-9);
            let waiting_avg: Vec<f64> = self
                .pools
                .iter()
                .map(|p| {
                    let avg = (p.acc_waiting - p.waiting_area_at_eval) / span;
                    if span < 1e-6 {
                        avg.max(p.queued.len() as f64)
                    } else {
                        avg
                    }
                })
                .collect();
            if t - last_eval >= 60_000 {
                for p in &mut self.pools {
                    p.waiting_area_at_eval = p.acc_waiting;
                }
                last_eval = t;
            }
            if t <= end_of_arrivals + 86_400_000 {
                let actions = planner.plan(&self.observe(), t, &self.history, &waiting_avg);
                self.apply(actions);
            }
            // Once the trace is over and every task has ended, idle VMs no longer count.
            if next_task >= tasks.len()
                && self.pools.iter().all(|p| p.running == 0 && p.starting_od == 0 && p.queued.is_empty())
            {
                break;
            }
        }
        (self.outcome(), self.series)
    }

    fn outcome(&self) -> Outcome {
        let mut total = Outcome::default();
        let mut all_q: Vec<f64> = Vec::new();
        let mut pools = std::collections::BTreeMap::new();
        let (mut dlc, mut hits, mut warm_hits) = (0u64, 0u64, 0u64);
        let mut oracle_ms = vec![0.0; self.pools.len()];
        for t in &self.trace.tasks {
            oracle_ms[t.pool] += t.dur as f64 + self.cloud.mean_boot_ms(&self.trace.pools[t.pool]);
        }
        for ((p, key), oracle_ms) in self.pools.iter().zip(&self.trace.pools).zip(oracle_ms) {
            let mut q = p.queue.clone();
            q.sort_by(f64::total_cmp);
            let mut o = summarize(&q, p, crate::report::price_of(key, &[]), oracle_ms / 3_600_000.0);
            o.stopped_vm_hours = p.acc_stopped;
            o.stopped_cost = p.acc_stopped * self.cloud.stopped_usd_hour();
            o.start_failures = p.start_failures;
            o.cost += o.stopped_cost;
            o.cost_vs_oracle = ratio(o.cost, o.oracle_cost);
            all_q.extend_from_slice(&q);
            total.busy_vm_hours += o.busy_vm_hours;
            total.idle_vm_hours += o.idle_vm_hours;
            total.booting_vm_hours += o.booting_vm_hours;
            total.cost += o.cost;
            total.stopped_vm_hours += o.stopped_vm_hours;
            total.stopped_cost += o.stopped_cost;
            total.start_failures += o.start_failures;
            total.oracle_vm_hours += o.oracle_vm_hours;
            total.oracle_cost += o.oracle_cost;
            warm_hits += p.warm_hits;
            total.launches += o.launches;
            total.cycles += o.cycles;
            total.terminations += o.terminations;
            dlc += p.dlc;
            hits += p.dlc_hits;
            pools.insert(key.clone(), o);
        }
        all_q.sort_by(f64::total_cmp);
        total.tasks = all_q.len() as u64;
        total.p50_queue_s = pct(&all_q, 0.50);
        total.p95_queue_s = pct(&all_q, 0.95);
        total.p99_queue_s = pct(&all_q, 0.99);
        total.max_queue_s = all_q.last().copied().unwrap_or(0.0);
        total.vm_hours = total.busy_vm_hours + total.idle_vm_hours + total.booting_vm_hours;
        total.idle_overhead = (total.idle_vm_hours + total.booting_vm_hours) / total.busy_vm_hours.max(1e-9);
        total.dlc_hit_rate = if dlc == 0 { 0.0 } else { hits as f64 / dlc as f64 };
        total.warm_hit_rate = ratio(warm_hits as f64, total.tasks as f64);
        total.vm_hours_vs_oracle = ratio(total.vm_hours, total.oracle_vm_hours);
        total.cost_vs_oracle = ratio(total.cost, total.oracle_cost);
        total.pools = Some(pools);
        total
    }
}

fn summarize(q: &[f64], p: &PoolSim, price: f64, oracle_vm_hours: f64) -> Outcome {
    let hours = p.acc_busy + p.acc_idle + p.acc_boot;
    Outcome {
        tasks: q.len() as u64,
        p50_queue_s: pct(q, 0.50),
        p95_queue_s: pct(q, 0.95),
        p99_queue_s: pct(q, 0.99),
        max_queue_s: q.last().copied().unwrap_or(0.0),
        busy_vm_hours: p.acc_busy,
        idle_vm_hours: p.acc_idle,
        booting_vm_hours: p.acc_boot,
        vm_hours: hours,
        idle_overhead: (p.acc_idle + p.acc_boot) / p.acc_busy.max(1e-9),
        cost: hours * price,
        dlc_hit_rate: if p.dlc == 0 { 0.0 } else { p.dlc_hits as f64 / p.dlc as f64 },
        warm_hit_rate: ratio(p.warm_hits as f64, q.len() as f64),
        oracle_vm_hours,
        oracle_cost: oracle_vm_hours * price,
        vm_hours_vs_oracle: ratio(hours, oracle_vm_hours),
        cost_vs_oracle: ratio(hours * price, oracle_vm_hours * price),
        stopped_vm_hours: 0.0,
        stopped_cost: 0.0,
        start_failures: 0,
        launches: p.launches,
        cycles: p.cycles,
        terminations: p.terminations,
        pools: None,
    }
}
