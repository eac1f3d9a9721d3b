//! `vmfleet simulate`: replays a CI trace in virtual time through the production planners
//! (`vmfleet_scaler::plan`, `vmfleet_scaler::step`, `vmfleet_scaler::forecast`, `vmfleet_gc::plan`)
//! against a simulated cloud, and through the policies of other systems written as planners
//! beside them, and reports queue times, VM-hours and cost.
//!
//! The simulated cloud: boot times drawn from a log-normal distribution (median and p95
//! configurable; Windows 2.5x, GPU 1.5x), occasional capacity errors that cost a retry, DLC
//! volumes created or attached in seconds. Deterministic for a seed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use rand::{RngExt, SeedableRng};
use vmfleet_scaler::forecast::{Forecast, History};
use vmfleet_scaler::{IdleVm, PoolObservation, PoolPolicy, ScaleAction};

/// Arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Trace file (CSV, the format of the shared traces' README).
    #[arg(long)]
    pub trace: PathBuf,
    /// Policy file (pools as in `policies/`); without it every pool gets vmfleet's defaults.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Random seed: the same seed gives the same result.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Median instance boot time.
    #[arg(long, default_value = "90s", value_parser = humantime_serde::re::humantime::parse_duration)]
    pub boot_time: Duration,
    /// 95th percentile instance boot time.
    #[arg(long, default_value = "180s", value_parser = humantime_serde::re::humantime::parse_duration)]
    pub boot_time_p95: Duration,
    /// Share of launches that hit a capacity error first (each costs a 30 s retry).
    #[arg(long, default_value_t = 0.01)]
    pub capacity_errors: f64,
    /// Baselines to run the same trace through: `static`, `idle`, `step`, `schedule`.
    #[arg(long, value_delimiter = ',')]
    pub compare: Vec<String>,
    /// Run a grid of each policy's parameters and print the cost / p95 queue-time frontier.
    #[arg(long)]
    pub sweep: bool,
    /// Hourly price per resource class, `CLASS=USD` (defaults: on-demand prices of the classes'
    /// EC2 types in us-east-1).
    #[arg(long = "price")]
    pub prices: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Draw waiting tasks, warm and busy VMs over time (vmfleet's policy) to an SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// One task of a trace.
#[derive(Debug, Clone, Copy)]
struct Task {
    at: i64,
    project: u32,
    pool: usize,
    dlc: bool,
    dur: i64,
}

/// A parsed trace.
#[derive(Debug, Clone)]
pub struct Trace {
    tasks: Vec<Task>,
    pools: Vec<String>,
    projects: usize,
}

fn pool_of(executor: &str, class: &str) -> String {
    let image = match (executor, class) {
        ("remote-docker", _) => "docker-default",
        (_, c) if c.starts_with("windows.") => "windows-default",
        (_, c) if c.starts_with("gpu.") => "gpu-default",
        _ => "default",
    };
    crate::fleet::pool_key(executor, image, class)
}

/// Reads a trace.
///
/// # Errors
/// The file, line and column of the first bad field.
pub fn load_trace(path: &Path) -> anyhow::Result<Trace> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |name: &str| {
        header.iter().position(|h| *h == name).with_context(|| format!("{}:1: no column {name}", path.display()))
    };
    let (c_at, c_proj, c_exec, c_class, c_dlc, c_dur) = (
        col("submitted_at")?,
        col("project")?,
        col("executor")?,
        col("resource_class")?,
        col("docker_layer_caching")?,
        col("duration_s")?,
    );
    let mut pools: Vec<String> = Vec::new();
    let mut projects: HashMap<String, u32> = HashMap::new();
    let mut tasks = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let at_line = || format!("{}:{}", path.display(), i + 2);
        let get = |c: usize, name: &str| f.get(c).copied().with_context(|| format!("{}: no {name}", at_line()));
        let at = chrono::DateTime::parse_from_rfc3339(get(c_at, "submitted_at")?)
            .with_context(|| format!("{}: submitted_at", at_line()))?
            .timestamp_millis();
        let dur: f64 = get(c_dur, "duration_s")?.parse().with_context(|| format!("{}: duration_s", at_line()))?;
        let dlc = match get(c_dlc, "docker_layer_caching")? {
            "true" => true,
            "false" => false,
            other => bail!("{}: docker_layer_caching {other:?} is neither true nor false", at_line()),
        };
        let key = pool_of(get(c_exec, "executor")?, get(c_class, "resource_class")?);
        let pool = match pools.iter().position(|p| *p == key) {
            Some(p) => p,
            None => {
                pools.push(key);
                pools.len() - 1
            }
        };
        let n = projects.len() as u32;
        let project = *projects.entry(get(c_proj, "project")?.to_string()).or_insert(n);
        tasks.push(Task { at, project, pool, dlc, dur: (dur * 1000.0).max(0.0) as i64 });
    }
    if tasks.is_empty() {
        bail!("{}: no tasks", path.display());
    }
    tasks.sort_by_key(|t| t.at);
    Ok(Trace { tasks, pools, projects: projects.len() })
}

/// What the simulated cloud does.
#[derive(Debug, Clone, Copy)]
pub struct Cloud {
    boot_median_s: f64,
    boot_sigma: f64,
    capacity_errors: f64,
}

impl Cloud {
    fn new(median: Duration, p95: Duration, capacity_errors: f64) -> Self {
        let m = median.as_secs_f64().max(1.0);
        let q = p95.as_secs_f64().max(m);
        Self { boot_median_s: m, boot_sigma: (q / m).ln() / 1.644_854, capacity_errors }
    }
}

fn normal(rng: &mut rand::rngs::StdRng) -> f64 {
    // Box–Muller.
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn lognormal_ms(rng: &mut rand::rngs::StdRng, median_s: f64, sigma: f64) -> i64 {
    (median_s * (sigma * normal(rng)).exp() * 1000.0) as i64
}

/// A policy under test: vmfleet's or a baseline's planner.
trait Planner: Send {
    /// Whether a task that finds no warm VM gets an on-demand launch (else it waits for the pool).
    fn on_demand(&self) -> bool {
        true
    }
    /// Whether a warm VM that comes up is handed to the oldest task still waiting for its own
    /// launch (vmfleet does; CircleCI 2.x keeps each task on its launch).
    fn hand_ready_to_waiting(&self) -> bool {
        false
    }
    fn plan(&mut self, obs: &[PoolObservation], now: i64, history: &[History], waiting_avg: &[f64])
        -> Vec<ScaleAction>;
}

/// vmfleet: the production planner, with the warm target at least the forecast.
struct Vmfleet {
    policies: Vec<PoolPolicy>,
    forecasts: Vec<Forecast>,
    /// The forecast per pool, computed once a minute: (minute, target).
    cache: Vec<(i64, u32)>,
}

impl Planner for Vmfleet {
    fn hand_ready_to_waiting(&self) -> bool {
        true
    }
    fn plan(&mut self, obs: &[PoolObservation], now: i64, history: &[History], _: &[f64]) -> Vec<ScaleAction> {
        let minute = now.div_euclid(60_000);
        if self.cache.len() != obs.len() {
            self.cache = vec![(i64::MIN, 0); obs.len()];
        }
        for ((c, h), f) in self.cache.iter_mut().zip(history).zip(&self.forecasts) {
            if c.0 != minute {
                *c = (minute, f.target(h, now));
            }
        }
        let pairs: Vec<(PoolObservation, PoolPolicy)> = obs
            .iter()
            .zip(&self.policies)
            .zip(&self.cache)
            .map(|((o, p), c)| {
                let mut p = p.clone();
                p.step_target = Some(c.1);
                (o.clone(), p)
            })
            .collect();
        vmfleet_scaler::plan(&pairs, None, now)
    }
}

fn launch_to(pool: &str, have: u32, want: u32, why: &str) -> Option<ScaleAction> {
    (want > have).then(|| ScaleAction::Launch { pool: pool.to_string(), count: want - have, reason: why.to_string() })
}

/// CircleCI Server 2.x: a fixed number of preallocated VMs per pool, the rest on demand.
struct Static {
    n: Vec<u32>,
}

impl Planner for Static {
    fn plan(&mut self, obs: &[PoolObservation], _: i64, _: &[History], _: &[f64]) -> Vec<ScaleAction> {
        obs.iter()
            .zip(&self.n)
            .filter_map(|(o, n)| launch_to(&o.pool, o.idle.len() as u32 + o.starting, *n, "static"))
            .collect()
    }
}

/// GitLab's autoscaler: `idle_count` idle VMs, or `idle_scale_factor` of the busy ones if more;
/// idle VMs above that go after `idle_time`.
struct Idle {
    count: Vec<u32>,
    factor: f64,
    idle_time_ms: i64,
}

impl Planner for Idle {
    fn plan(&mut self, obs: &[PoolObservation], now: i64, _: &[History], _: &[f64]) -> Vec<ScaleAction> {
        let mut out = Vec::new();
        for (o, c) in obs.iter().zip(&self.count) {
            let want = (*c).max((self.factor * f64::from(o.busy)).ceil() as u32);
            let have = o.idle.len() as u32 + o.starting;
            out.extend(launch_to(&o.pool, have, want, "idle_count"));
            let mut excess = have.saturating_sub(want) as usize;
            for vm in &o.idle {
                if excess == 0 {
                    break;
                }
                if now - vm.ready_at_ms >= self.idle_time_ms {
                    excess -= 1;
                    out.push(ScaleAction::Terminate {
                        pool: o.pool.clone(),
                        vm_id: vm.vm_id.clone(),
                        reason: "idle_time".into(),
                    });
                }
            }
        }
        out
    }
}

/// An Auto Scaling group per pool with a step policy on a queue-depth alarm (60 s periods): no
/// on-demand launches, tasks wait for the group's instances; the step arithmetic is
/// `vmfleet_scaler::step`, the same as production.
struct Step {
    min: Vec<u32>,
    up: vmfleet_scaler::step::StepPolicy,
    down: vmfleet_scaler::step::StepPolicy,
    threshold: f64,
    desired: Vec<u32>,
    last: Vec<Option<i64>>,
    next_eval: i64,
    calm: Vec<u32>,
}

impl Planner for Step {
    fn on_demand(&self) -> bool {
        false
    }
    fn plan(&mut self, obs: &[PoolObservation], now: i64, _: &[History], waiting_avg: &[f64]) -> Vec<ScaleAction> {
        use vmfleet_scaler::step::{next_target, AlarmReading};
        if self.desired.is_empty() {
            self.desired = self.min.clone();
            self.last = vec![None; obs.len()];
            self.calm = vec![0; obs.len()];
        }
        if now >= self.next_eval {
            self.next_eval = now + 60_000;
            for (i, avg) in waiting_avg.iter().enumerate() {
                let up = AlarmReading { in_alarm: *avg > self.threshold, value: Some(*avg), threshold: self.threshold };
                if let Some((t, _)) =
                    next_target(self.desired[i], &self.up, &up, self.last[i], now, self.min[i], 10_000)
                {
                    self.desired[i] = t;
                    self.last[i] = Some(now);
                }
                // Scale in after five calm periods (queue empty).
                self.calm[i] = if *avg < 0.01 { self.calm[i] + 1 } else { 0 };
                let down = AlarmReading { in_alarm: self.calm[i] >= 5, value: Some(0.0), threshold: 1.0 };
                if let Some((t, _)) =
                    next_target(self.desired[i], &self.down, &down, self.last[i], now, self.min[i], 10_000)
                {
                    self.desired[i] = t;
                    self.last[i] = Some(now);
                }
            }
        }
        let mut out = Vec::new();
        for (o, d) in obs.iter().zip(&self.desired) {
            let total = o.idle.len() as u32 + o.starting + o.busy;
            out.extend(launch_to(&o.pool, total, *d, "desired capacity"));
            for vm in o.idle.iter().take(total.saturating_sub(*d) as usize) {
                out.push(ScaleAction::Terminate {
                    pool: o.pool.clone(),
                    vm_id: vm.vm_id.clone(),
                    reason: "scale in".into(),
                });
            }
        }
        out
    }
}

/// The operations guide's recommendation: a larger preallocation in working hours, a smaller
/// one at night, the rest on demand.
struct Schedule {
    window: vmfleet_scaler::CronWindow,
    day: Vec<u32>,
    night: Vec<u32>,
}

impl Planner for Schedule {
    fn plan(&mut self, obs: &[PoolObservation], now: i64, _: &[History], _: &[f64]) -> Vec<ScaleAction> {
        let n = if self.window.matches(now) { &self.day } else { &self.night };
        obs.iter()
            .zip(n)
            .filter_map(|(o, n)| launch_to(&o.pool, o.idle.len() as u32 + o.starting, *n, "schedule"))
            .collect()
    }
}

/// Results of one run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Outcome {
    /// Tasks.
    pub tasks: u64,
    /// Queue time (submission to hand-over), seconds.
    pub p50_queue_s: f64,
    /// p95.
    pub p95_queue_s: f64,
    /// p99.
    pub p99_queue_s: f64,
    /// Longest.
    pub max_queue_s: f64,
    /// VM-hours with a task.
    pub busy_vm_hours: f64,
    /// VM-hours ready without one.
    pub idle_vm_hours: f64,
    /// VM-hours booting.
    pub booting_vm_hours: f64,
    /// All VM-hours.
    pub vm_hours: f64,
    /// (idle + booting) / busy.
    pub idle_overhead: f64,
    /// At the hourly prices.
    pub cost: f64,
    /// Share of DLC tasks that found their project's volume.
    pub dlc_hit_rate: f64,
    /// Instances launched.
    pub launches: u64,
    /// Warm VMs replaced for age.
    pub cycles: u64,
    /// Idle VMs retired.
    pub terminations: u64,
    /// Per pool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pools: Option<std::collections::BTreeMap<String, Outcome>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// A VM is up; for a task, or warm.
    Ready { pool: usize, vm: u64, task: Option<usize> },
    /// A task ends.
    End { pool: usize, task: usize },
}

struct IdleSim {
    name: String,
    ready_at: i64,
    launched_at: i64,
}

#[derive(Default)]
struct PoolSim {
    /// Tasks waiting for the VM launched for them, oldest first: (task, vm).
    booting_for: VecDeque<(usize, u64)>,
    idle: VecDeque<IdleSim>,
    starting_warm: u32,
    starting_od: u32,
    running: u32,
    waiting: VecDeque<usize>,
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
}

struct Vol {
    last_used: i64,
    in_use: bool,
    gone: bool,
}

/// Samples of the pool sizes over time, for `--plot`.
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// (time ms, waiting, warm (idle + starting), busy), every 5 minutes.
    pub points: Vec<(i64, u32, u32, u32)>,
}

struct Sim<'a> {
    trace: &'a Trace,
    cloud: Cloud,
    rng: rand::rngs::StdRng,
    pools: Vec<PoolSim>,
    heap: BinaryHeap<Reverse<(i64, u64, Ev)>>,
    seq: u64,
    next_vm: u64,
    now: i64,
    volumes: Vec<Vec<Vol>>,
    task_volume: HashMap<usize, (u32, usize)>,
    /// On-demand VMs whose task was served by another VM: they come up warm.
    released: std::collections::HashSet<u64>,
    history: Vec<History>,
    series: Series,
}

const TICK_MS: i64 = 10_000;

impl<'a> Sim<'a> {
    fn new(trace: &'a Trace, cloud: Cloud, seed: u64) -> Self {
        Self {
            trace,
            cloud,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            pools: (0..trace.pools.len()).map(|_| PoolSim::default()).collect(),
            heap: BinaryHeap::new(),
            seq: 0,
            next_vm: 0,
            now: trace.tasks[0].at,
            volumes: (0..trace.projects).map(|_| Vec::new()).collect(),
            task_volume: HashMap::new(),
            released: std::collections::HashSet::new(),
            history: (0..trace.pools.len()).map(|_| History::default()).collect(),
            series: Series::default(),
        }
    }

    fn push(&mut self, at: i64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, ev)));
    }

    fn advance(&mut self, to: i64) {
        let dt = (to - self.now).max(0) as f64 / 3_600_000.0;
        for p in &mut self.pools {
            p.acc_busy += f64::from(p.running) * dt;
            p.acc_idle += p.idle.len() as f64 * dt;
            p.acc_boot += f64::from(p.starting_warm + p.starting_od) * dt;
            p.acc_waiting += p.waiting.len() as f64 * dt;
        }
        self.now = to;
    }

    fn boot_ms(&mut self, pool: usize) -> i64 {
        let key = &self.trace.pools[pool];
        let factor = if key.contains("windows") {
            2.5
        } else if key.contains("gpu") {
            1.5
        } else {
            1.0
        };
        let mut ms = lognormal_ms(&mut self.rng, self.cloud.boot_median_s * factor, self.cloud.boot_sigma);
        let mut tries = 0;
        while tries < 5 && self.rng.random::<f64>() < self.cloud.capacity_errors {
            ms += 30_000;
            tries += 1;
        }
        ms
    }

    fn launch(&mut self, pool: usize, task: Option<usize>) {
        let boot = self.boot_ms(pool);
        self.next_vm += 1;
        let vm = self.next_vm;
        let p = &mut self.pools[pool];
        p.launches += 1;
        match task {
            Some(t) => {
                p.starting_od += 1;
                p.booting_for.push_back((t, vm));
            }
            None => p.starting_warm += 1,
        }
        self.push(self.now + boot, Ev::Ready { pool, vm, task });
    }

    /// Hands `task` a VM now: the DLC volume (if any) is claimed, then the task runs.
    fn start_task(&mut self, pool: usize, task: usize) {
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
        let p = &mut self.pools[pool];
        p.running += 1;
        p.queue.push((self.now + delay - t.at) as f64 / 1000.0);
        self.push(self.now + delay + t.dur, Ev::End { pool, task });
    }

    fn observe(&self) -> Vec<PoolObservation> {
        self.pools
            .iter()
            .zip(&self.trace.pools)
            .map(|(p, key)| PoolObservation {
                pool: key.clone(),
                idle: p
                    .idle
                    .iter()
                    .map(|v| IdleVm {
                        vm_id: v.name.clone(),
                        ready_at_ms: v.ready_at,
                        launched_at_ms: v.launched_at,
                        outdated: false,
                    })
                    .collect(),
                starting: p.starting_warm,
                busy: p.running + p.starting_od,
                retiring: 0,
                queued: p.waiting.len() as u32,
            })
            .collect()
    }

    fn apply(&mut self, actions: Vec<ScaleAction>) {
        for a in actions {
            match a {
                ScaleAction::Launch { pool, count, .. } => {
                    let Some(i) = self.trace.pools.iter().position(|p| *p == pool) else { continue };
                    for _ in 0..count {
                        self.launch(i, None);
                    }
                }
                ScaleAction::LaunchForTasks { pool, count, .. } => {
                    let Some(i) = self.trace.pools.iter().position(|p| *p == pool) else { continue };
                    for _ in 0..count {
                        if let Some(t) = self.pools[i].waiting.pop_front() {
                            self.launch(i, Some(t));
                        }
                    }
                }
                ScaleAction::Terminate { pool, vm_id, reason } => {
                    let Some(i) = self.trace.pools.iter().position(|p| *p == pool) else { continue };
                    let p = &mut self.pools[i];
                    if let Some(pos) = p.idle.iter().position(|v| v.name == vm_id) {
                        p.idle.remove(pos);
                        p.terminations += 1;
                        if reason.contains("max_age") {
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
        let settings = vmfleet_gc::Settings {
            vm_start_timeout_ms: 300_000,
            long_running_task_timeout_ms: 6 * 3_600_000,
            orphan_grace_ms: 600_000,
            retire_grace_ms: 60_000,
            volume_inactivity_ms: 14 * 86_400_000,
            volumes_per_project: 50,
            task_wait_limit_ms: i64::MAX / 4,
        };
        for a in vmfleet_gc::plan(&snap, self.now, &settings, usize::MAX) {
            if let vmfleet_gc::GcAction::DeleteVolume { volume_id: Some(id), .. } = a {
                if let Some((p, i)) = id.split_once('/') {
                    if let (Ok(p), Ok(i)) = (p.parse::<usize>(), i.parse::<usize>()) {
                        self.volumes[p][i].gone = true;
                    }
                }
            }
        }
    }

    fn run(mut self, planner: &mut dyn Planner, record: bool) -> (Outcome, Series) {
        let tasks = &self.trace.tasks;
        let mut next_task = 0usize;
        let mut next_tick = self.now;
        let mut next_gc = self.now + 3_600_000;
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
                let warm: u32 = self.pools.iter().map(|p| p.idle.len() as u32 + p.starting_warm).sum();
                let busy: u32 = self.pools.iter().map(|p| p.running).sum();
                let waiting: u32 = self.pools.iter().map(|p| p.waiting.len() as u32 + p.starting_od).sum();
                self.series.points.push((t, waiting, warm, busy));
                next_sample = t + 300_000;
            }
            if t == t_ev {
                let Some(Reverse((_, _, ev))) = self.heap.pop() else { continue };
                match ev {
                    Ev::Ready { pool, vm, task: Some(task) } if !self.released.contains(&vm) => {
                        self.pools[pool].starting_od -= 1;
                        self.pools[pool].booting_for.retain(|(_, v)| *v != vm);
                        self.start_task(pool, task);
                    }
                    Ev::Ready { pool, vm, .. } => {
                        self.released.remove(&vm);
                        self.pools[pool].starting_warm -= 1;
                        let launched_at = self.now;
                        if let Some(task) = self.pools[pool].waiting.pop_front() {
                            self.start_task(pool, task);
                        } else if let Some((task, own)) =
                            self.pools[pool].booting_for.pop_front().filter(|_| planner.hand_ready_to_waiting())
                        {
                            // The task takes this VM; its own launch comes up warm.
                            self.released.insert(own);
                            let p = &mut self.pools[pool];
                            p.starting_od -= 1;
                            p.starting_warm += 1;
                            self.start_task(pool, task);
                        } else {
                            self.pools[pool].idle.push_back(IdleSim {
                                name: vm.to_string(),
                                ready_at: self.now,
                                launched_at,
                            });
                        }
                    }
                    Ev::End { pool, task } => {
                        self.pools[pool].running -= 1;
                        if let Some((p, i)) = self.task_volume.remove(&task) {
                            let v = &mut self.volumes[p as usize][i];
                            v.in_use = false;
                            v.last_used = self.now;
                        }
                    }
                }
                continue;
            }
            if t == t_task {
                // Every task submitted at this instant, then one planner pass (as the service
                // wakes once per batch of requests).
                while let Some(task) = tasks.get(next_task).filter(|x| x.at == t) {
                    let pool = task.pool;
                    self.history[pool].record(t);
                    if self.pools[pool].idle.pop_front().is_some() {
                        self.start_task(pool, next_task);
                    } else if planner.on_demand() {
                        self.launch(pool, Some(next_task));
                    } else {
                        self.pools[pool].waiting.push_back(next_task);
                    }
                    next_task += 1;
                }
            } else {
                next_tick = t + TICK_MS;
                if t >= next_gc {
                    next_gc = t + 3_600_000;
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
                        avg.max(p.waiting.len() as f64)
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
                let obs = self.observe();
                let actions = planner.plan(&obs, t, &self.history, &waiting_avg);
                self.apply(actions);
            }
            // Once the trace is over and every task has ended, idle VMs no longer count.
            if next_task >= tasks.len()
                && self.pools.iter().all(|p| p.running == 0 && p.starting_od == 0 && p.waiting.is_empty())
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
        let (mut dlc, mut hits) = (0u64, 0u64);
        for (p, key) in self.pools.iter().zip(&self.trace.pools) {
            let mut q = p.queue.clone();
            q.sort_by(f64::total_cmp);
            let o = summarize(&q, p, price_of(key, &[]));
            all_q.extend_from_slice(&q);
            total.busy_vm_hours += o.busy_vm_hours;
            total.idle_vm_hours += o.idle_vm_hours;
            total.booting_vm_hours += o.booting_vm_hours;
            total.cost += o.cost;
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
        total.pools = Some(pools);
        total
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summarize(q: &[f64], p: &PoolSim, price: f64) -> Outcome {
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
        launches: p.launches,
        cycles: p.cycles,
        terminations: p.terminations,
        pools: None,
    }
}

/// On-demand hourly prices in us-east-1 of the default instance types of the classes.
fn price_of(pool: &str, overrides: &[(String, f64)]) -> f64 {
    let class = pool.rsplit('/').next().unwrap_or_default();
    if let Some((_, p)) = overrides.iter().find(|(c, _)| c == class) {
        return *p;
    }
    match class {
        "medium" => 0.096,           // m5.large
        "large" => 0.192,            // m5.xlarge
        "windows.medium" => 0.188,   // m5.large, Windows
        "gpu.nvidia.small" => 0.526, // g4dn.xlarge
        _ => 0.096,
    }
}

/// The share of busy time of each pool in the trace (what a fair baseline scales its sizes by).
fn shares(trace: &Trace) -> Vec<f64> {
    let mut busy = vec![0f64; trace.pools.len()];
    for t in &trace.tasks {
        busy[t.pool] += t.dur as f64;
    }
    let total: f64 = busy.iter().sum::<f64>().max(1.0);
    busy.iter().map(|b| b / total).collect()
}

fn spread(n: u32, shares: &[f64]) -> Vec<u32> {
    shares.iter().map(|s| if n == 0 { 0 } else { (f64::from(n) * s).round().max(1.0) as u32 }).collect()
}

/// One named policy to run.
struct Candidate {
    name: String,
    family: &'static str,
    make: Box<dyn Fn() -> Box<dyn Planner> + Send + Sync>,
}

fn vmfleet_candidates(base: &[(PoolPolicy, Forecast)], sweep: bool) -> Vec<Candidate> {
    let qs: Vec<Option<f64>> =
        if sweep { [0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 1.0].map(Some).to_vec() } else { vec![None] };
    qs.into_iter()
        .map(|q| {
            let policies: Vec<PoolPolicy> = base.iter().map(|(p, _)| p.clone()).collect();
            let forecasts: Vec<Forecast> =
                base.iter().map(|(_, f)| Forecast { quantile: q.unwrap_or(f.quantile), ..*f }).collect();
            let name = q.map_or_else(|| "vmfleet".to_string(), |q| format!("vmfleet:q={q}"));
            Candidate {
                name,
                family: "vmfleet",
                make: Box::new(move || {
                    Box::new(Vmfleet { policies: policies.clone(), forecasts: forecasts.clone(), cache: Vec::new() })
                        as Box<dyn Planner>
                }),
            }
        })
        .collect()
}

fn baseline_candidates(which: &str, shares: &[f64], sweep: bool) -> anyhow::Result<Vec<Candidate>> {
    let shares = shares.to_vec();
    let mut out = Vec::new();
    match which {
        "static" => {
            let ns: Vec<u32> = if sweep { vec![0, 2, 4, 8, 12, 16, 24, 32, 48, 64] } else { vec![12] };
            for n in ns {
                let sh = shares.clone();
                out.push(Candidate {
                    name: format!("static:n={n}"),
                    family: "static",
                    make: Box::new(move || Box::new(Static { n: spread(n, &sh) }) as Box<dyn Planner>),
                });
            }
        }
        "idle" => {
            let grid: Vec<(u32, f64)> = if sweep {
                [0u32, 4, 8, 16, 32].iter().flat_map(|c| [0.0, 0.1, 0.25, 0.5].map(|f| (*c, f))).collect()
            } else {
                vec![(8, 0.1)]
            };
            for (c, f) in grid {
                let sh = shares.clone();
                out.push(Candidate {
                    name: format!("idle:count={c},factor={f}"),
                    family: "idle",
                    make: Box::new(move || {
                        Box::new(Idle { count: spread(c, &sh), factor: f, idle_time_ms: 600_000 }) as Box<dyn Planner>
                    }),
                });
            }
        }
        "step" => {
            let grid: Vec<(u32, f64, i64)> = if sweep {
                [0u32, 8, 16, 32, 64]
                    .iter()
                    .flat_map(|m| [(1.0, 2), (1.0, 5), (5.0, 5), (1.0, 10)].map(|(t, a)| (*m, t, a)))
                    .collect()
            } else {
                vec![(16, 1.0, 5)]
            };
            for (m, thr, adj) in grid {
                let sh = shares.clone();
                out.push(Candidate {
                    name: format!("step:min={m},threshold={thr},step={adj}"),
                    family: "step",
                    make: Box::new(move || {
                        use vmfleet_scaler::step::{AdjustmentType, Step as S, StepPolicy};
                        Box::new(Step {
                            min: spread(m, &sh),
                            up: StepPolicy {
                                adjustment_type: AdjustmentType::ChangeInCapacity,
                                steps: vec![
                                    S { lower: Some(0.0), upper: Some(10.0), adjustment: adj },
                                    S { lower: Some(10.0), upper: None, adjustment: adj * 3 },
                                ],
                                cooldown_ms: 60_000,
                            },
                            down: StepPolicy {
                                adjustment_type: AdjustmentType::ChangeInCapacity,
                                steps: vec![S { lower: None, upper: None, adjustment: -1 }],
                                cooldown_ms: 60_000,
                            },
                            threshold: thr,
                            desired: Vec::new(),
                            last: Vec::new(),
                            next_eval: 0,
                            calm: Vec::new(),
                        }) as Box<dyn Planner>
                    }),
                });
            }
        }
        "schedule" => {
            let grid: Vec<(u32, u32)> = if sweep {
                [4u32, 8, 16, 24, 32, 48].iter().flat_map(|d| [0u32, 2, 4, 8].map(|n| (*d, n))).collect()
            } else {
                vec![(16, 4)]
            };
            for (d, n) in grid {
                let sh = shares.clone();
                out.push(Candidate {
                    name: format!("schedule:day={d},night={n}"),
                    family: "schedule",
                    make: Box::new(move || {
                        Box::new(Schedule {
                            // The trace's busy hours (UTC), weekdays.
                            window: vmfleet_scaler::CronWindow::parse("* 12-22 * * 1-5", "UTC")
                                .unwrap_or_else(|_| unreachable!()),
                            day: spread(d, &sh),
                            night: spread(n, &sh),
                        }) as Box<dyn Planner>
                    }),
                });
            }
        }
        other => bail!("--compare: unknown baseline {other:?}; use static, idle, step or schedule"),
    }
    Ok(out)
}

/// The policy and forecast of each trace pool, from `--policy` (pools it does not name, and
/// pools without a `forecast`: vmfleet's defaults, with the boot p95 as the horizon).
fn pool_policies(trace: &Trace, file: Option<&Path>, horizon_ms: i64) -> anyhow::Result<Vec<(PoolPolicy, Forecast)>> {
    let config = crate::config::Config::default();
    let defaults = PoolPolicy {
        min_idle: 0,
        max_instances: None,
        max_replace_share: 0.25,
        idle_timeout_ms: 600_000,
        max_age_ms: Some(24 * 3_600_000),
        scale_factor: 0.0,
        schedules: Vec::new(),
        step_target: None,
    };
    let forecast = Forecast { horizon_ms, ..Forecast::default() };
    let Some(file) = file else { return Ok(vec![(defaults, forecast); trace.pools.len()]) };
    let policies = crate::policy::Policies::load_file(file, &config).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(trace
        .pools
        .iter()
        .map(|key| match policies.pool(key) {
            Some(p) => (crate::fleet::scaler_policy(p, None), p.forecast.map_or(forecast, |f| f.forecast())),
            None => (defaults.clone(), forecast),
        })
        .collect())
}

/// Runs the simulation and prints the report.
///
/// # Errors
/// A bad trace, policy file or baseline name.
pub fn simulate(args: &SimArgs) -> anyhow::Result<()> {
    let trace = load_trace(&args.trace)?;
    let prices: Vec<(String, f64)> = args
        .prices
        .iter()
        .map(|s| {
            let (c, p) = s.split_once('=').with_context(|| format!("--price {s:?}: use CLASS=USD"))?;
            Ok((c.to_string(), p.parse::<f64>().with_context(|| format!("--price {s:?}: {p:?} is not a number"))?))
        })
        .collect::<anyhow::Result<_>>()?;
    let cloud = Cloud::new(args.boot_time, args.boot_time_p95, args.capacity_errors);
    let base = pool_policies(&trace, args.policy.as_deref(), args.boot_time_p95.as_millis() as i64)?;
    let mut candidates = vmfleet_candidates(&base, args.sweep);
    let sh = shares(&trace);
    for b in &args.compare {
        candidates.extend(baseline_candidates(b.trim(), &sh, args.sweep)?);
    }
    // Two workers: the machine has two cores.
    let results: Vec<(String, &'static str, Outcome)> = std::thread::scope(|s| {
        let chunks: Vec<Vec<&Candidate>> = (0..2).map(|w| candidates.iter().skip(w).step_by(2).collect()).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let trace = &trace;
                let prices = &prices;
                s.spawn(move || {
                    chunk
                        .into_iter()
                        .map(|c| {
                            let mut planner = (c.make)();
                            let (mut o, _) = Sim::new(trace, cloud, args.seed).run(planner.as_mut(), false);
                            reprice(&mut o, prices);
                            (c.name.clone(), c.family, o)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    let mut results = results;
    results.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(path) = &args.plot {
        let mut planner = (candidates[0].make)();
        let (_, series) = Sim::new(&trace, cloud, args.seed).run(planner.as_mut(), true);
        std::fs::write(path, plot_svg(&series, &candidates[0].name))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        let map: serde_json::Map<String, serde_json::Value> =
            results.iter().map(|(n, _, o)| (n.clone(), serde_json::to_value(o).unwrap_or_default())).collect();
        println!(
            "{}",
            serde_json::json!({ "trace": args.trace.display().to_string(), "seed": args.seed, "policies": map })
        );
        return Ok(());
    }
    println!(
        "{} tasks, {} pools, boot time median {} s / p95 {} s, seed {}",
        trace.tasks.len(),
        trace.pools.len(),
        args.boot_time.as_secs(),
        args.boot_time_p95.as_secs(),
        args.seed
    );
    println!(
        "{:<36} {:>7} {:>7} {:>7} {:>7} {:>9} {:>9} {:>8} {:>9} {:>6}",
        "policy", "p50 s", "p95 s", "p99 s", "max s", "VM-h", "idle+boot", "overhead", "cost $", "DLC hit"
    );
    for (name, _, o) in &results {
        println!(
            "{:<36} {:>7.1} {:>7.1} {:>7.1} {:>7.0} {:>9.0} {:>9.0} {:>8.2} {:>9.0} {:>6.0}%",
            name,
            o.p50_queue_s,
            o.p95_queue_s,
            o.p99_queue_s,
            o.max_queue_s,
            o.vm_hours,
            o.idle_vm_hours + o.booting_vm_hours,
            o.idle_overhead,
            o.cost,
            o.dlc_hit_rate * 100.0
        );
    }
    if !args.sweep {
        if let Some((name, _, o)) = results.iter().find(|(n, _, _)| n.starts_with("vmfleet")) {
            println!("\n{name} per pool:");
            for (pool, p) in o.pools.iter().flatten() {
                println!(
                    "  {:<40} {:>6} tasks  p95 {:>6.1} s  VM-h {:>7.0}  launches {:>6}  cycles {:>4}  retired {:>5}",
                    pool, p.tasks, p.p95_queue_s, p.vm_hours, p.launches, p.cycles, p.terminations
                );
            }
        }
    } else {
        println!("\nFrontiers (cost against p95 queue time; no other point of the family is better in both):");
        let mut families: Vec<&str> = results.iter().map(|r| r.1).collect();
        families.dedup();
        for fam in families {
            let pts: Vec<&(String, &str, Outcome)> = results.iter().filter(|r| r.1 == fam).collect();
            let front = frontier(&pts);
            println!("  {fam}:");
            for (n, _, o) in front {
                println!("    {:<34} p95 {:>7.1} s   {:>7.0} VM-h   ${:>8.0}", n, o.p95_queue_s, o.vm_hours, o.cost);
            }
        }
    }
    Ok(())
}

fn reprice(o: &mut Outcome, prices: &[(String, f64)]) {
    let Some(pools) = o.pools.as_mut() else { return };
    let mut cost = 0.0;
    for (key, p) in pools.iter_mut() {
        p.cost = p.vm_hours * price_of(key, prices);
        cost += p.cost;
    }
    o.cost = cost;
}

/// Points no other point beats on both cost and p95, cheapest first.
fn frontier<'a>(pts: &[&'a (String, &'static str, Outcome)]) -> Vec<&'a (String, &'static str, Outcome)> {
    let mut front: Vec<&(String, &str, Outcome)> = pts
        .iter()
        .copied()
        .filter(|a| {
            !pts.iter().any(|b| {
                (b.2.cost <= a.2.cost && b.2.p95_queue_s < a.2.p95_queue_s)
                    || (b.2.cost < a.2.cost && b.2.p95_queue_s <= a.2.p95_queue_s)
            })
        })
        .collect();
    front.sort_by(|a, b| a.2.cost.total_cmp(&b.2.cost));
    front
}

/// A line chart of waiting tasks, warm VMs and busy VMs over time.
fn plot_svg(s: &Series, title: &str) -> String {
    let (w, h, pad) = (1200.0, 400.0, 40.0);
    let Some(first) = s.points.first() else { return String::from("<svg xmlns=\"http://www.w3.org/2000/svg\"/>") };
    let t0 = first.0 as f64;
    let t1 = s.points.last().map_or(t0 + 1.0, |p| p.0 as f64).max(t0 + 1.0);
    let ymax = s.points.iter().map(|p| p.1.max(p.2).max(p.3)).max().unwrap_or(1).max(1) as f64;
    let x = |t: i64| pad + (t as f64 - t0) / (t1 - t0) * (w - 2.0 * pad);
    let y = |v: u32| h - pad - f64::from(v) / ymax * (h - 2.0 * pad);
    // Column 1: waiting, 2: warm, 3: busy.
    let line = |col: usize| {
        s.points
            .iter()
            .map(|p| {
                let v = match col {
                    1 => p.1,
                    2 => p.2,
                    _ => p.3,
                };
                format!("{:.1},{:.1}", x(p.0), y(v))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{pad}\" y=\"20\">{title}: busy (blue), warm (green), waiting for a VM (red); y max {ymax}</text>\n\
         <line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - pad,
        w - pad,
        h - pad
    );
    // One tick a day.
    let mut day = (t0 as i64).div_euclid(86_400_000) * 86_400_000 + 86_400_000;
    while (day as f64) < t1 {
        let d = chrono::DateTime::from_timestamp_millis(day).map(|d| d.format("%a %d").to_string()).unwrap_or_default();
        svg.push_str(&format!(
            "<line x1=\"{0:.1}\" y1=\"{1}\" x2=\"{0:.1}\" y2=\"{2}\" stroke=\"#ddd\"/><text x=\"{0:.1}\" y=\"{3}\">{d}</text>\n",
            x(day),
            pad,
            h - pad,
            h - pad + 15.0
        ));
        day += 86_400_000;
    }
    for (color, col) in [("#1f77b4", 3), ("#2ca02c", 2), ("#d62728", 1)] {
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1\" points=\"{}\"/>\n",
            line(col)
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(tasks: Vec<Task>) -> Trace {
        Trace { tasks, pools: vec!["machine/default/medium".into()], projects: 2 }
    }

    #[test]
    fn a_warm_vm_serves_at_once_and_on_demand_waits_a_boot() {
        let t = trace(vec![
            Task { at: 0, project: 0, pool: 0, dlc: false, dur: 60_000 },
            Task { at: 3_600_000, project: 0, pool: 0, dlc: false, dur: 60_000 },
        ]);
        let cloud = Cloud::new(Duration::from_secs(90), Duration::from_secs(90), 0.0);
        let mut none = Static { n: vec![0] };
        let (o, _) = Sim::new(&t, cloud, 1).run(&mut none, false);
        assert_eq!(o.tasks, 2);
        assert!((o.max_queue_s - 90.0).abs() < 0.01, "on demand: one boot, {o:?}");
        let mut warm = Static { n: vec![1] };
        let (o, _) = Sim::new(&t, cloud, 1).run(&mut warm, false);
        assert!(o.p50_queue_s <= 90.0 && o.max_queue_s >= 89.0, "the first task arrives before the pool is warm");
        assert!(o.idle_vm_hours > 0.9, "the warm VM idles most of the hour: {}", o.idle_vm_hours);
    }

    #[test]
    fn same_seed_same_result() {
        let tasks: Vec<Task> = (0..200)
            .map(|i| Task { at: i * 20_000, project: (i % 2) as u32, pool: 0, dlc: i % 3 == 0, dur: 300_000 })
            .collect();
        let t = trace(tasks);
        let cloud = Cloud::new(Duration::from_secs(90), Duration::from_secs(180), 0.05);
        let run = |seed| {
            let mut p = Vmfleet {
                policies: vec![PoolPolicy { max_replace_share: 0.25, ..Default::default() }],
                forecasts: vec![Forecast::default()],
                cache: Vec::new(),
            };
            Sim::new(&t, cloud, seed).run(&mut p, false).0
        };
        let (a, b) = (run(7), run(7));
        assert_eq!((a.p95_queue_s, a.vm_hours, a.launches), (b.p95_queue_s, b.vm_hours, b.launches));
        // About five DLC tasks of two projects run at once: each project needs a few volumes,
        // and every later task reuses one.
        assert!(a.dlc_hit_rate > 0.8 && a.dlc_hit_rate < 1.0, "volumes are reused within projects: {}", a.dlc_hit_rate);
    }

    #[test]
    fn the_shared_week_trace_loads_and_bad_rows_name_their_line() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/traces/travis-2019-10-07-week.csv");
        let t = load_trace(&path).expect("trace");
        assert_eq!(t.tasks.len(), 29_202, "the README's count");
        assert_eq!(t.pools.len(), 5);
        assert!(t.pools.contains(&"machine/windows-default/windows.medium".to_string()));
        assert!(t.tasks.windows(2).all(|w| w[0].at <= w[1].at));
        let dir = std::env::temp_dir().join(format!("vmfleet-trace-{}", crate::store::short_id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let bad = dir.join("bad.csv");
        std::fs::write(
            &bad,
            "submitted_at,project,executor,resource_class,docker_layer_caching,duration_s\n\
             2019-10-07T00:01:21Z,a/b,machine,medium,false,10\n2019-10-07T00:01:22Z,a/b,machine,medium,maybe,10\n",
        )
        .expect("write");
        let err = load_trace(&bad).expect_err("bad").to_string();
        assert!(err.contains("bad.csv:3") && err.contains("docker_layer_caching"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_frontier_keeps_only_undominated_points() {
        let o = |cost: f64, p95: f64| Outcome { cost, p95_queue_s: p95, ..Default::default() };
        let pts = [
            ("a".to_string(), "x", o(10.0, 100.0)),
            ("b".to_string(), "x", o(20.0, 50.0)),
            ("c".to_string(), "x", o(25.0, 60.0)),
        ];
        let refs: Vec<_> = pts.iter().collect();
        let f: Vec<&str> = frontier(&refs).iter().map(|p| p.0.as_str()).collect();
        assert_eq!(f, ["a", "b"]);
    }
}
