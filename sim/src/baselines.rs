//! The policies of other systems, written as planners beside vmfleet's, and vmfleet's own:
//! the production planner with its forecast floor.

use vmfleet_scaler::forecast::{Forecast, History, Targets};
use vmfleet_scaler::{PoolObservation, PoolPolicy, ScaleAction, ScaleReason};

use crate::engine::Planner;

/// vmfleet: the production planner, with the warm target at least the forecast, as the service
/// computes it (`vmfleet_scaler::forecast::Targets`, `vmfleet_scaler::target_floor`).
pub struct Vmfleet {
    /// Each trace pool's policy, in trace pool order.
    pub policies: Vec<PoolPolicy>,
    /// Each pool's forecast, if its policy has one.
    pub forecasts: Vec<Option<Forecast>>,
    /// The fleet's `limits.max_instances`.
    pub fleet_max: Option<u32>,
    /// Each pool's stopped-tier forecast, if it has one.
    pub stopped_forecasts: Vec<Option<Forecast>>,
    targets: Targets,
    stopped_targets: Targets,
}

impl Vmfleet {
    /// vmfleet's planner over these pool policies and forecasts.
    pub fn new(policies: Vec<PoolPolicy>, forecasts: Vec<Option<Forecast>>, fleet_max: Option<u32>) -> Self {
        Self {
            policies,
            forecasts,
            fleet_max,
            stopped_forecasts: Vec::new(),
            targets: Targets::default(),
            stopped_targets: Targets::default(),
        }
    }

    /// The same planner with these stopped-tier forecasts, per pool.
    pub fn with_stopped(mut self, forecasts: Vec<Option<Forecast>>) -> Self {
        self.stopped_forecasts = forecasts;
        self
    }
}

impl Planner for Vmfleet {
    fn hand_ready_to_waiting(&self) -> bool {
        true
    }
    fn bounds(&self, pool: usize) -> (Option<u32>, Option<u32>) {
        (self.policies.get(pool).and_then(|p| p.max_instances), self.fleet_max)
    }
    fn plan(&mut self, obs: &[PoolObservation], now: i64, history: &[History], _: &[f64]) -> Vec<ScaleAction> {
        let with: Vec<(String, Forecast)> =
            obs.iter().zip(&self.forecasts).filter_map(|(o, f)| Some((o.pool.clone(), (*f)?))).collect();
        let lookup = |key: &str| obs.iter().position(|o| o.pool == key).and_then(|i| history.get(i));
        if self.targets.stale(&with, now) {
            self.targets.refresh(with, lookup, now);
        }
        let stopped: Vec<(String, Forecast)> =
            obs.iter().zip(&self.stopped_forecasts).filter_map(|(o, f)| Some((o.pool.clone(), (*f)?))).collect();
        if self.stopped_targets.stale(&stopped, now) {
            self.stopped_targets.refresh(stopped, lookup, now);
        }
        let pairs: Vec<(PoolObservation, PoolPolicy)> = obs
            .iter()
            .zip(&self.policies)
            .map(|(o, p)| {
                let mut p = p.clone();
                p.step_target = vmfleet_scaler::target_floor(None, self.targets.get(&o.pool));
                p.stopped_floor = self.stopped_targets.get(&o.pool);
                (o.clone(), p)
            })
            .collect();
        vmfleet_scaler::plan(&pairs, self.fleet_max, now)
    }
}

/// Every policy hands queued tasks to idle VMs first, as vmfleet's planner does.
fn assigned(obs: &[PoolObservation]) -> (Vec<PoolObservation>, Vec<ScaleAction>) {
    let mut out = Vec::new();
    let after = obs.iter().map(|o| vmfleet_scaler::assign_queued(o, &mut out)).collect();
    (after, out)
}

fn launch_to(pool: &str, have: u32, want: u32, why: &'static str) -> Option<ScaleAction> {
    (want > have).then(|| ScaleAction::Launch {
        pool: pool.to_string(),
        count: want - have,
        reason: ScaleReason::Baseline(why),
    })
}

/// CircleCI Server 2.x: a fixed number of preallocated VMs per pool, the rest on demand.
pub struct Static {
    /// Preallocated VMs per pool.
    pub n: Vec<u32>,
}

impl Planner for Static {
    fn plan(&mut self, obs: &[PoolObservation], _: i64, _: &[History], _: &[f64]) -> Vec<ScaleAction> {
        let (obs, mut out) = assigned(obs);
        out.extend(
            obs.iter()
                .zip(&self.n)
                .filter_map(|(o, n)| launch_to(&o.pool, o.idle.len() as u32 + o.starting, *n, "static")),
        );
        out
    }
}

/// GitLab's autoscaler: `idle_count` idle VMs, or `idle_scale_factor` of the busy ones if more;
/// idle VMs above that go after `idle_time`.
pub(crate) struct Idle {
    pub(crate) count: Vec<u32>,
    pub(crate) factor: f64,
    pub(crate) idle_time_ms: i64,
}

impl Planner for Idle {
    fn plan(&mut self, obs: &[PoolObservation], now: i64, _: &[History], _: &[f64]) -> Vec<ScaleAction> {
        let (obs, mut out) = assigned(obs);
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
                        reason: ScaleReason::Baseline("idle_time"),
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
pub(crate) struct Step {
    pub(crate) min: Vec<u32>,
    pub(crate) up: vmfleet_scaler::step::StepPolicy,
    pub(crate) down: vmfleet_scaler::step::StepPolicy,
    pub(crate) threshold: f64,
    pub(crate) desired: Vec<u32>,
    pub(crate) last: Vec<Option<i64>>,
    pub(crate) next_eval: i64,
    pub(crate) calm: Vec<u32>,
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
        let (obs, mut out) = assigned(obs);
        for (o, d) in obs.iter().zip(&self.desired) {
            let total = o.idle.len() as u32 + o.starting + o.busy;
            out.extend(launch_to(&o.pool, total, *d, "desired capacity"));
            for vm in o.idle.iter().take(total.saturating_sub(*d) as usize) {
                out.push(ScaleAction::Terminate {
                    pool: o.pool.clone(),
                    vm_id: vm.vm_id.clone(),
                    reason: ScaleReason::Baseline("scale in"),
                });
            }
        }
        out
    }
}

/// The operations guide's recommendation: a larger preallocation in working hours, a smaller
/// one at night, the rest on demand.
pub(crate) struct Schedule {
    pub(crate) window: vmfleet_scaler::CronWindow,
    pub(crate) day: Vec<u32>,
    pub(crate) night: Vec<u32>,
}

impl Planner for Schedule {
    fn plan(&mut self, obs: &[PoolObservation], now: i64, _: &[History], _: &[f64]) -> Vec<ScaleAction> {
        let n = if self.window.matches(now) { &self.day } else { &self.night };
        let (obs, mut out) = assigned(obs);
        out.extend(
            obs.iter().zip(n).filter_map(|(o, n)| launch_to(&o.pool, o.idle.len() as u32 + o.starting, *n, "schedule")),
        );
        out
    }
}

/// An EC2 Auto Scaling group with a warm pool: a fixed number of pre-initialized stopped
/// instances per pool behind an on-demand group. A task with no idle VM takes a stopped one
/// (the engine starts it before any fresh launch), and the warm pool refills to its size; the
/// group keeps no running spares.
pub(crate) struct AsgWarmPool {
    pub(crate) stopped: Vec<u32>,
}

impl Planner for AsgWarmPool {
    fn plan(&mut self, obs: &[PoolObservation], _: i64, _: &[History], _: &[f64]) -> Vec<ScaleAction> {
        let (obs, mut out) = assigned(obs);
        for (o, n) in obs.iter().zip(&self.stopped) {
            let have = o.stopped.len() as u32 + o.initializing;
            if *n > have {
                out.push(ScaleAction::LaunchStopped {
                    pool: o.pool.clone(),
                    count: n - have,
                    reason: ScaleReason::Baseline("warm pool size"),
                });
            }
        }
        out
    }
}
