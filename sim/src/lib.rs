//! `vmfleet simulate`'s engine: replays a CI trace in virtual time through the production
//! planners (`vmfleet_scaler::plan` with its claim, hand-over and fairness orders,
//! `vmfleet_scaler::forecast`, `vmfleet_scaler::step`, `vmfleet_gc::plan`) against a simulated
//! cloud, and through the policies of other systems written as planners beside them, and
//! reports queue times, VM-hours and cost.
//!
//! Pure: it reads the trace and nothing else, keeps virtual time, and is deterministic for a
//! seed. Every setting comes from the caller (the CLI builds it from the configuration's
//! defaults and a policy file); the crate has no defaults of its own for the fleet.

pub mod baselines;
pub mod cloud;
pub mod engine;
pub mod report;
pub mod trace;

use vmfleet_scaler::forecast::Forecast;
use vmfleet_scaler::PoolPolicy;

use baselines::{AsgWarmPool, Idle, Schedule, Step};
pub use baselines::{Static, Vmfleet};
pub use cloud::{Cloud, StoppedModel};
pub use engine::{Collector, Planner, Sim};
pub use report::{frontier, plot_svg, price_of, reprice, Outcome, Run, Series};
pub use trace::{load_trace, Bursts, Trace, TraceError};

/// One trace pool as vmfleet would run it.
#[derive(Debug, Clone)]
pub struct PoolSetup {
    /// Its policy (the policy file's, or `PoolPolicy::unnamed()`).
    pub policy: PoolPolicy,
    /// Its forecast, if its policy has one.
    pub forecast: Option<Forecast>,
    /// Its stopped tier's forecast, if it has one.
    pub stopped_forecast: Option<Forecast>,
}

/// vmfleet's setup for a trace: a policy per trace pool, in trace pool order.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Per trace pool.
    pub pools: Vec<PoolSetup>,
    /// The fleet's `limits.max_instances`.
    pub fleet_max: Option<u32>,
}

/// A baseline name that is not one.
#[derive(Debug, thiserror::Error)]
#[error("--compare: unknown baseline {0:?}; use static, idle, step, schedule or asg-warm-pool")]
pub struct UnknownBaseline(String);

/// Runs every candidate over `trace` (two at a time: the machine has two cores), sorted by
/// name, priced at `prices` (`CLASS`, USD an hour) over the defaults.
pub fn run_all(
    trace: &Trace,
    cloud: Cloud,
    collector: Collector,
    seed: u64,
    candidates: &[Candidate],
    prices: &[(String, f64)],
) -> Vec<Run> {
    let mut results: Vec<Run> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|w| {
                let chunk: Vec<&Candidate> = candidates.iter().skip(w).step_by(2).collect();
                s.spawn(move || {
                    chunk
                        .into_iter()
                        .map(|c| {
                            let mut planner = (c.make)();
                            let (mut outcome, _) = Sim::new(trace, cloud, collector, seed).run(planner.as_mut(), false);
                            reprice(&mut outcome, prices);
                            Run { name: c.name.clone(), family: c.family, outcome }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    results.sort_by(|a, b| a.name.cmp(&b.name));
    results
}

/// The share of busy time of each pool in the trace (what a fair baseline scales its sizes by).
pub fn shares(trace: &Trace) -> Vec<f64> {
    let mut busy = vec![0f64; trace.pools.len()];
    for t in &trace.tasks {
        busy[t.pool] += t.dur as f64;
    }
    let total: f64 = busy.iter().sum::<f64>().max(1.0);
    busy.iter().map(|b| b / total).collect()
}

pub(crate) fn spread(n: u32, shares: &[f64]) -> Vec<u32> {
    shares.iter().map(|s| if n == 0 { 0 } else { (f64::from(n) * s).round().max(1.0) as u32 }).collect()
}

/// One named policy to run.
pub struct Candidate {
    /// Policy name.
    pub name: String,
    /// Family.
    pub family: &'static str,
    /// Makes a fresh planner for one run.
    pub make: Box<dyn Fn() -> Box<dyn Planner> + Send + Sync>,
}

/// The pools whose expected boot is longer than the trace's average boot per task (Windows and
/// GPU with the simulator's boot factors): where a start saves the most over a fresh boot.
pub fn slow_pools(trace: &Trace, cloud: &Cloud) -> Vec<bool> {
    let boots: Vec<f64> = trace.pools.iter().map(|p| cloud.mean_boot_ms(p)).collect();
    let mean = trace.tasks.iter().map(|t| boots[t.pool]).sum::<f64>() / trace.tasks.len().max(1) as f64;
    boots.iter().map(|&b| b > mean * 1.000_001).collect()
}

/// vmfleet's policy as set up; with `sweep`, one point per forecast quantile (applied to every
/// pool that has a forecast), and where a pool has a stopped tier, per quantile and scale of
/// the stopped tier (`min` and `max` of every pool's tier times 0, 0.25, 0.5, 1 or 2; at 0 the
/// tier and its forecast are off), the small budgets again with the tier kept only in the
/// `slow` pools (quantiles 0 and 0.3, scales 0.25, 0.5 and 1: a stopped VM saves a boot minus
/// a start, which is largest where boots are slowest), and one point with neither a warm pool
/// nor a stopped tier.
pub fn vmfleet_candidates(setup: &Setup, sweep: bool, slow: &[bool]) -> Vec<Candidate> {
    let tier = |p: &PoolSetup| p.policy.min_stopped > 0 || p.stopped_forecast.is_some();
    let tiered = setup.pools.iter().any(tier);
    let is_slow = |i: usize| slow.get(i).copied().unwrap_or(false);
    // Slow-only points differ from the plain ones only where both kinds of pool have a tier.
    let split = setup.pools.iter().enumerate().any(|(i, p)| tier(p) && is_slow(i))
        && setup.pools.iter().enumerate().any(|(i, p)| tier(p) && !is_slow(i));
    let mut grid: Vec<(Option<f64>, Option<f64>, bool)> = match (sweep, tiered) {
        (false, _) => vec![(None, None, false)],
        (true, false) => [0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 1.0].map(|q| (Some(q), None, false)).to_vec(),
        (true, true) => [0.0, 0.3, 0.5, 0.8]
            .iter()
            .flat_map(|&q| [0.0, 0.25, 0.5, 1.0, 2.0].map(|s| (Some(q), Some(s), false)))
            .collect(),
    };
    if sweep && split {
        grid.extend([0.0, 0.3].iter().flat_map(|&q| [0.25, 0.5, 1.0].map(|s| (Some(q), Some(s), true))));
    }
    let mut points: Vec<Candidate> = grid
        .into_iter()
        .map(|(q, scale, slow_only)| {
            let mut policies: Vec<PoolPolicy> = setup.pools.iter().map(|p| p.policy.clone()).collect();
            let forecasts: Vec<Option<Forecast>> = setup
                .pools
                .iter()
                .map(|p| p.forecast.map(|f| Forecast { quantile: q.unwrap_or(f.quantile), ..f }))
                .collect();
            let mut stopped: Vec<Option<Forecast>> = setup.pools.iter().map(|p| p.stopped_forecast).collect();
            if let Some(k) = scale {
                for (i, p) in policies.iter_mut().enumerate() {
                    let k_here = if slow_only && !is_slow(i) { 0.0 } else { k };
                    p.min_stopped = scaled(p.min_stopped, k_here);
                    p.max_stopped = p.max_stopped.map(|n| scaled(n, k_here));
                    if k_here == 0.0 {
                        stopped[i] = None;
                    }
                }
            }
            let fleet_max = setup.fleet_max;
            let name = match (q, scale) {
                (None, _) => "vmfleet".to_string(),
                (Some(q), None) => format!("vmfleet:q={q}"),
                (Some(q), Some(k)) if slow_only => format!("vmfleet:q={q},stopped={k}x-slow"),
                (Some(q), Some(k)) => format!("vmfleet:q={q},stopped={k}x"),
            };
            Candidate {
                name,
                family: "vmfleet",
                make: Box::new(move || {
                    Box::new(Vmfleet::new(policies.clone(), forecasts.clone(), fleet_max).with_stopped(stopped.clone()))
                        as Box<dyn Planner>
                }),
            }
        })
        .collect();
    if sweep {
        points.push(on_demand(setup));
    }
    points
}

fn scaled(n: u32, k: f64) -> u32 {
    (f64::from(n) * k).round() as u32
}

/// vmfleet with no warm pool and no stopped tier: every task gets its own launch, and a VM
/// that comes up serves the oldest task still waiting (the sweep's cheapest corner).
fn on_demand(setup: &Setup) -> Candidate {
    let policies: Vec<PoolPolicy> = setup
        .pools
        .iter()
        .map(|p| PoolPolicy {
            min_idle: 0,
            schedules: Vec::new(),
            scale_factor: 0.0,
            min_stopped: 0,
            max_stopped: None,
            ..p.policy.clone()
        })
        .collect();
    let n = policies.len();
    let fleet_max = setup.fleet_max;
    Candidate {
        name: "vmfleet:on-demand".into(),
        family: "vmfleet",
        make: Box::new(move || {
            Box::new(Vmfleet::new(policies.clone(), vec![None; n], fleet_max).with_stopped(vec![None; n]))
                as Box<dyn Planner>
        }),
    }
}

/// The points of one baseline family: its default point, or with `sweep` a grid.
///
/// # Errors
/// An unknown family name.
pub fn baseline_candidates(which: &str, shares: &[f64], sweep: bool) -> Result<Vec<Candidate>, UnknownBaseline> {
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
        "asg-warm-pool" => {
            let ns: Vec<u32> = if sweep { vec![4, 8, 16, 32, 64, 128] } else { vec![32] };
            for n in ns {
                let sh = shares.clone();
                out.push(Candidate {
                    name: format!("asg-warm-pool:stopped={n}"),
                    family: "asg-warm-pool",
                    make: Box::new(move || Box::new(AsgWarmPool { stopped: spread(n, &sh) }) as Box<dyn Planner>),
                });
            }
        }
        other => return Err(UnknownBaseline(other.to_string())),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::trace::Task;
    use vmfleet_scaler::ScaleAction;

    fn trace(tasks: Vec<Task>) -> Trace {
        Trace { tasks, pools: vec!["machine/default/medium".into()], projects: 2 }
    }

    const COLLECTOR: Collector = Collector {
        settings: vmfleet_gc::Settings {
            vm_start_timeout_ms: 300_000,
            long_running_task_timeout_ms: 6 * 3_600_000,
            orphan_grace_ms: 600_000,
            retire_grace_ms: 60_000,
            volume_inactivity_ms: 14 * 86_400_000,
            volumes_per_project: 50,
            task_wait_limit_ms: 3_600_000,
        },
        interval_ms: 30_000,
        budget: 1000,
    };

    #[test]
    fn a_warm_vm_serves_at_once_and_on_demand_waits_a_boot() {
        let t = trace(vec![
            Task { at: 0, project: 0, pool: 0, dlc: false, dur: 60_000 },
            Task { at: 3_600_000, project: 0, pool: 0, dlc: false, dur: 60_000 },
        ]);
        let cloud = Cloud::new(Duration::from_secs(90), Duration::from_secs(90), 0.0);
        let mut none = Static { n: vec![0] };
        let (o, _) = Sim::new(&t, cloud, COLLECTOR, 1).run(&mut none, false);
        assert_eq!(o.tasks, 2);
        assert!((o.max_queue_s - 90.0).abs() < 0.01, "on demand: one boot, {o:?}");
        let mut warm = Static { n: vec![1] };
        let (o, _) = Sim::new(&t, cloud, COLLECTOR, 1).run(&mut warm, false);
        assert!(o.p50_queue_s <= 90.0 && o.max_queue_s >= 89.0, "the first task arrives before the pool is warm");
        assert!(o.idle_vm_hours > 0.9, "the warm VM idles most of the hour: {}", o.idle_vm_hours);
        assert!((o.warm_hit_rate - 0.5).abs() < 1e-9, "only the second task finds a ready VM: {o:?}");
    }

    #[test]
    fn the_clairvoyant_bound_is_each_task_and_one_boot() {
        let t = trace(vec![
            Task { at: 0, project: 0, pool: 0, dlc: false, dur: 60_000 },
            Task { at: 3_600_000, project: 0, pool: 0, dlc: false, dur: 60_000 },
        ]);
        // A fixed 90 s boot and no capacity errors: on demand pays exactly the bound.
        let cloud = Cloud::new(Duration::from_secs(90), Duration::from_secs(90), 0.0);
        let (o, _) = Sim::new(&t, cloud, COLLECTOR, 1).run(&mut Static { n: vec![0] }, false);
        assert!((o.oracle_vm_hours - 300.0 / 3600.0).abs() < 1e-9, "{o:?}");
        assert!((o.vm_hours_vs_oracle - 1.0).abs() < 1e-6, "on demand, nothing idles: {o:?}");
        assert!((o.oracle_cost - o.oracle_vm_hours * price_of("machine/default/medium", &[])).abs() < 1e-9);
        assert_eq!(o.warm_hit_rate, 0.0);
        // A warm VM kept all hour costs more than the bound.
        let (w, _) = Sim::new(&t, cloud, COLLECTOR, 1).run(&mut Static { n: vec![1] }, false);
        assert_eq!(w.oracle_vm_hours, o.oracle_vm_hours, "the bound depends on the trace, not the policy");
        assert!(w.vm_hours_vs_oracle > 5.0 && w.cost_vs_oracle > 5.0, "{w:?}");
        // Repricing moves the bound's cost with the fleet's.
        let mut r = w.clone();
        reprice(&mut r, &[("medium".into(), 1.0)]);
        assert!((r.oracle_cost - r.oracle_vm_hours).abs() < 1e-9 && (r.cost_vs_oracle - w.cost_vs_oracle).abs() < 1e-9);
    }

    /// Boots of exactly 90 s, starts of exactly 20 s, `failures` of the starts failing.
    fn fixed_starts(failures: f64) -> Cloud {
        Cloud::new(Duration::from_secs(90), Duration::from_secs(90), 0.0).with_stopped(StoppedModel {
            start_median: Duration::from_secs(20),
            start_p95: Duration::from_secs(20),
            start_failures: failures,
            volume_gb: 100.0,
            usd_gb_month: 0.08,
        })
    }

    /// One task, then three at once an hour later.
    fn one_then_a_burst_of_three() -> Trace {
        let task = |at, project| Task { at, project, pool: 0, dlc: false, dur: 60_000 };
        trace(vec![task(0, 0), task(3_600_000, 0), task(3_600_000, 1), task(3_600_000, 1)])
    }

    #[test]
    fn a_task_that_finds_no_running_vm_starts_a_stopped_one_and_the_tier_refills() {
        let t = one_then_a_burst_of_three();
        let policy = PoolPolicy { min_stopped: 2, idle_timeout_ms: 600_000, ..PoolPolicy::unnamed() };
        let run = |cloud| {
            let mut p = Vmfleet::new(vec![policy.clone()], vec![None], None);
            Sim::new(&t, cloud, COLLECTOR, 1).run(&mut p, false).0
        };
        let o = run(fixed_starts(0.0));
        let q = |o: &Outcome| {
            let mut v = vec![o.p50_queue_s, o.max_queue_s];
            v.sort_by(f64::total_cmp);
            v
        };
        // The first task comes before the tier is filled (a boot); of the burst of three, two
        // start stopped VMs (20 s) and the third waits a fresh boot.
        assert!((o.max_queue_s - 90.0).abs() < 0.5, "{o:?}");
        assert!((o.p50_queue_s - 20.0).abs() < 0.5, "stopped starts serve the burst: {o:?} {:?}", q(&o));
        assert_eq!(o.warm_hit_rate, 0.0, "no VM was running and idle");
        // The two started ones were replaced: 4 task launches/starts need 2 + 2 stopped launches
        // and 2 fresh ones.
        assert_eq!(o.launches, 6, "{o:?}");
        assert!(o.stopped_vm_hours > 1.9, "two VMs stopped for about an hour: {o:?}");
        let rate = 100.0 * 0.08 / 730.0;
        assert!((o.stopped_cost - o.stopped_vm_hours * rate).abs() < 1e-9);
        assert!(o.cost > o.vm_hours * price_of("machine/default/medium", &[]), "volumes are paid for");
        assert_eq!(o.start_failures, 0);
        // Every start failing: the tasks get fresh launches instead, and the failures count.
        let f = run(fixed_starts(1.0));
        assert!(f.start_failures >= 2 && (f.p50_queue_s - 90.0).abs() < 0.5, "{f:?}");
    }

    #[test]
    fn the_sweep_of_a_tiered_policy_scales_its_stopped_tier() {
        let t = one_then_a_burst_of_three();
        let policy = PoolPolicy { min_stopped: 2, idle_timeout_ms: 600_000, ..PoolPolicy::unnamed() };
        let setup =
            Setup { pools: vec![PoolSetup { policy, forecast: None, stopped_forecast: None }], fleet_max: None };
        let points = vmfleet_candidates(&setup, true, &[]);
        assert_eq!(points.len(), 4 * 5 + 1, "running quantiles times stopped scales, and on demand");
        let hours = |name: &str| {
            let c = points.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no point {name}"));
            Sim::new(&t, fixed_starts(0.0), COLLECTOR, 1).run((c.make)().as_mut(), false).0.stopped_vm_hours
        };
        let (off, one, two) =
            (hours("vmfleet:q=0,stopped=0x"), hours("vmfleet:q=0,stopped=1x"), hours("vmfleet:q=0,stopped=2x"));
        assert_eq!(off, 0.0, "scale 0: no stopped tier");
        assert!(one > 1.9 && two > 2.0 * one - 0.2, "twice the tier, about twice its hours: {one} {two}");
        // Without a stopped tier, the sweep is over the running quantile only.
        let plain = Setup {
            pools: vec![PoolSetup { policy: PoolPolicy::unnamed(), forecast: None, stopped_forecast: None }],
            fleet_max: None,
        };
        assert!(vmfleet_candidates(&plain, true, &[]).iter().all(|c| !c.name.contains("stopped")));
        assert_eq!(hours("vmfleet:on-demand"), 0.0);
    }

    #[test]
    fn the_sweep_keeps_small_tiers_in_the_slow_pools_only_too() {
        let pool = |min_stopped| PoolSetup {
            policy: PoolPolicy { min_stopped, ..PoolPolicy::unnamed() },
            forecast: None,
            stopped_forecast: None,
        };
        let setup = Setup { pools: vec![pool(8), pool(4)], fleet_max: None };
        let names = |slow: &[bool]| -> Vec<String> {
            vmfleet_candidates(&setup, true, slow).into_iter().map(|c| c.name).collect()
        };
        assert_eq!(names(&[]).len(), 4 * 5 + 1, "no slow pool: the plain grid");
        assert_eq!(names(&[true, true]).len(), 4 * 5 + 1, "every pool slow: the same grid");
        let both = names(&[false, true]);
        assert_eq!(both.len(), 4 * 5 + 1 + 2 * 3, "{both:?}");
        assert!(both.contains(&"vmfleet:q=0.3,stopped=0.5x-slow".to_string()), "{both:?}");
        // The slow-only point keeps no stopped VM in the fast pool: a trace of the fast pool
        // only pays no stopped hours there, and the plain point does.
        let t = one_then_a_burst_of_three();
        let run = |name: &str| {
            let c = vmfleet_candidates(&setup, true, &[false, true]).into_iter().find(|c| c.name == name).expect(name);
            Sim::new(&t, fixed_starts(0.0), COLLECTOR, 1).run((c.make)().as_mut(), false).0.stopped_vm_hours
        };
        assert_eq!(run("vmfleet:q=0,stopped=1x-slow"), 0.0);
        assert!(run("vmfleet:q=0,stopped=1x") > 1.0);
    }

    #[test]
    fn slow_pools_are_those_that_boot_slower_than_the_average_task() {
        let cloud = Cloud::new(Duration::from_secs(90), Duration::from_secs(180), 0.0);
        let pools = [
            "machine/default/medium",
            "machine/windows-default/windows.medium",
            "machine/gpu-default/gpu.nvidia.small",
        ];
        let task = |pool| Task { at: 0, project: 0, pool, dlc: false, dur: 60_000 };
        let t = Trace {
            tasks: vec![task(0), task(0), task(0), task(0), task(1), task(2)],
            pools: pools.iter().map(|p| p.to_string()).collect(),
            projects: 1,
        };
        assert_eq!(slow_pools(&t, &cloud), [false, true, true]);
        let only_one = Trace { tasks: vec![task(0)], pools: vec![pools[0].to_string()], projects: 1 };
        assert_eq!(slow_pools(&only_one, &cloud), [false], "one pool is never slower than itself");
    }

    #[test]
    fn the_asg_warm_pool_baseline_keeps_a_fixed_stopped_pool_and_no_running_spares() {
        let t = one_then_a_burst_of_three();
        let cloud = fixed_starts(0.0);
        let make = baseline_candidates("asg-warm-pool", &[1.0], false).expect("known").remove(0);
        assert_eq!((make.name.as_str(), make.family), ("asg-warm-pool:stopped=32", "asg-warm-pool"));
        let mut p = AsgWarmPool { stopped: vec![2] };
        let (o, _) = Sim::new(&t, cloud, COLLECTOR, 1).run(&mut p, false);
        // The first task comes before the pool is filled (a boot); two of the burst start
        // stopped VMs (20 s), the third waits a fresh boot; nothing running idled, and the
        // pool refilled behind them.
        assert!((o.max_queue_s - 90.0).abs() < 0.5 && (o.p50_queue_s - 20.0).abs() < 0.5, "{o:?}");
        assert_eq!(o.warm_hit_rate, 0.0);
        assert!(o.idle_vm_hours < 0.01, "no running spares: {o:?}");
        assert_eq!(o.launches, 1 + 2 + 2 + 1, "a fresh one, the pool, its refill, a fresh one: {o:?}");
        assert!(o.stopped_vm_hours > 1.9 && o.stopped_cost > 0.0, "{o:?}");
    }

    #[test]
    fn the_expected_boot_is_the_mean_of_the_drawn_ones() {
        use rand::SeedableRng;
        let cloud = Cloud::new(Duration::from_secs(90), Duration::from_secs(180), 0.2);
        for pool in ["machine/default/medium", "machine/windows-default/windows.medium"] {
            let mut rng = rand::rngs::StdRng::seed_from_u64(3);
            let n = 200_000;
            let mean = (0..n).map(|_| cloud.boot_ms(&mut rng, pool) as f64).sum::<f64>() / f64::from(n);
            let want = cloud.mean_boot_ms(pool);
            assert!((mean - want).abs() / want < 0.01, "{pool}: drawn mean {mean}, expected {want}");
        }
    }

    #[test]
    fn same_seed_same_result() {
        let tasks: Vec<Task> = (0..200)
            .map(|i| Task { at: i * 20_000, project: (i % 2) as u32, pool: 0, dlc: i % 3 == 0, dur: 300_000 })
            .collect();
        let t = trace(tasks);
        let cloud = Cloud::new(Duration::from_secs(90), Duration::from_secs(180), 0.05);
        let run = |seed| {
            let mut p = Vmfleet::new(vec![PoolPolicy::unnamed()], vec![Some(Forecast::default())], None);
            Sim::new(&t, cloud, COLLECTOR, seed).run(&mut p, false).0
        };
        let (a, b) = (run(7), run(7));
        assert_eq!((a.p95_queue_s, a.vm_hours, a.launches), (b.p95_queue_s, b.vm_hours, b.launches));
        // About five DLC tasks of two projects run at once: each project needs a few volumes,
        // and every later task reuses one.
        assert!(a.dlc_hit_rate > 0.8 && a.dlc_hit_rate < 1.0, "volumes are reused within projects: {}", a.dlc_hit_rate);
    }

    #[test]
    fn at_the_pool_bound_tasks_queue_and_take_turns_between_projects() {
        // Project 0 submits ten tasks at once, project 1 one a moment later; the pool holds two.
        let mut tasks: Vec<Task> =
            (0..10).map(|_| Task { at: 0, project: 0, pool: 0, dlc: false, dur: 600_000 }).collect();
        tasks.push(Task { at: 1, project: 1, pool: 0, dlc: false, dur: 600_000 });
        let t = trace(tasks);
        let cloud = Cloud::new(Duration::from_secs(60), Duration::from_secs(60), 0.0);
        let policy = PoolPolicy { max_instances: Some(2), ..PoolPolicy::unnamed() };
        let mut p = Vmfleet::new(vec![policy], vec![None], None);
        let (o, _) = Sim::new(&t, cloud, COLLECTOR, 1).run(&mut p, false);
        assert_eq!(o.tasks, 11);
        // Two at a time, ten minutes each: project 1's task goes in the second round, not the
        // sixth.
        let q = o.pools.as_ref().and_then(|p| p.get("machine/default/medium")).map(|p| p.max_queue_s);
        assert!(q.is_some_and(|q| q > 2_000.0), "the bound held tasks back: {q:?}");
        let mut order = Sim::new(&t, cloud, COLLECTOR, 1);
        for i in 0..11 {
            order.enqueue(0, i);
        }
        let ScaleAction::LaunchForTasks { task_ids, .. } = &order.plan_once(&mut p, 0)[0] else { panic!("launch") };
        assert_eq!(task_ids, &[engine::task_id(0), engine::task_id(10)], "fair order at the bound");
    }
}
