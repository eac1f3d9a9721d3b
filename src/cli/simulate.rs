//! `vmfleet simulate`: the simulator (`vmfleet-sim`) set up from the configuration's defaults
//! and a policy file, exactly as the service would run the same pools, and its report.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use vmfleet_sim::{Cloud, Collector, PoolSetup, Run, Setup, Sim, StoppedModel, Trace};

use crate::config::Config;

/// Arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Trace file (CSV, the format of the shared traces' README).
    #[arg(long)]
    pub trace: PathBuf,
    /// Policy file (pools as in `policies/`); pools it does not name get the defaults of a pool
    /// no policy names, as in the service.
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
    /// Median start of a pre-initialized stopped VM (an assumption; see docs/PERFORMANCE.md).
    #[arg(long, default_value = "30s", value_parser = humantime_serde::re::humantime::parse_duration)]
    pub start_time: Duration,
    /// 95th percentile start of a stopped VM.
    #[arg(long, default_value = "60s", value_parser = humantime_serde::re::humantime::parse_duration)]
    pub start_time_p95: Duration,
    /// Share of stopped-VM starts that fail (the VM is terminated, a fresh one launched).
    #[arg(long, default_value_t = 0.01)]
    pub start_failures: f64,
    /// Root volume of a stopped VM, GB (paid while it is stopped).
    #[arg(long, default_value_t = 100.0)]
    pub stopped_volume_gb: f64,
    /// EBS price, USD per GB-month (default: gp3 in us-east-1).
    #[arg(long, default_value_t = 0.08)]
    pub ebs_gb_month: f64,
    /// Burst sensitivity: move every arrival down to a multiple of this window, so that tasks
    /// arriving within one window come as one burst (the same work, larger bursts).
    #[arg(long, value_parser = humantime_serde::re::humantime::parse_duration, conflicts_with = "burst_spread")]
    pub burst_window: Option<Duration>,
    /// Burst sensitivity: move every arrival later by a stable pseudo-random share of this
    /// window (the same work, smaller bursts).
    #[arg(long, value_parser = humantime_serde::re::humantime::parse_duration)]
    pub burst_spread: Option<Duration>,
    /// Baselines to run the same trace through: `static`, `idle`, `step`, `schedule`,
    /// `asg-warm-pool`.
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

/// vmfleet's setup for the trace's pools: each pool's policy and forecast from `file` (pools it
/// does not name, or without `--policy` every pool: `PoolPolicy::unnamed()`, as the service
/// treats a pool no policy names), the fleet bound from its `limits`.
///
/// # Errors
/// The policy file's first problem, with file, line and key.
pub fn setup(trace: &Trace, config: &Config, file: Option<&Path>) -> anyhow::Result<Setup> {
    let policies = match file {
        Some(f) => crate::policy::Policies::load_file(f, config).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => crate::policy::Policies::from_config(config),
    };
    let pools = trace
        .pools
        .iter()
        .map(|key| match policies.pool(key) {
            Some(p) => PoolSetup {
                policy: crate::fleet::scaler_policy(p, None),
                forecast: p.forecast.map(|f| f.forecast()),
                stopped_forecast: p.stopped.and_then(|s| s.forecast).map(|f| f.forecast()),
            },
            None => PoolSetup { policy: vmfleet_scaler::PoolPolicy::unnamed(), forecast: None, stopped_forecast: None },
        })
        .collect();
    Ok(Setup { pools, fleet_max: policies.limits.max_instances })
}

/// The production collector's settings, from the configuration.
pub fn collector(config: &Config) -> Collector {
    Collector {
        settings: crate::fleet::gc_settings(config, config.gc.orphan_grace),
        interval_ms: config.gc.interval.as_millis() as i64,
        budget: config.gc.budget,
    }
}

/// Runs the simulation and prints the report.
///
/// # Errors
/// A bad trace, policy file or baseline name.
pub fn simulate(args: &SimArgs) -> anyhow::Result<()> {
    let mut trace = vmfleet_sim::load_trace(&args.trace)?;
    if let Some(w) = args.burst_window {
        trace = trace.regrouped(w.as_millis() as i64);
    }
    if let Some(w) = args.burst_spread {
        trace = trace.spread(w.as_millis() as i64, args.seed);
    }
    let bursts = trace.bursts();
    let prices: Vec<(String, f64)> = args
        .prices
        .iter()
        .map(|s| {
            let (c, p) = s.split_once('=').with_context(|| format!("--price {s:?}: use CLASS=USD"))?;
            Ok((c.to_string(), p.parse::<f64>().with_context(|| format!("--price {s:?}: {p:?} is not a number"))?))
        })
        .collect::<anyhow::Result<_>>()?;
    let config = Config::default();
    let cloud = Cloud::new(args.boot_time, args.boot_time_p95, args.capacity_errors).with_stopped(StoppedModel {
        start_median: args.start_time,
        start_p95: args.start_time_p95,
        start_failures: args.start_failures,
        volume_gb: args.stopped_volume_gb,
        usd_gb_month: args.ebs_gb_month,
    });
    let collector = collector(&config);
    let setup = setup(&trace, &config, args.policy.as_deref())?;
    let slow = vmfleet_sim::slow_pools(&trace, &cloud);
    let mut candidates = vmfleet_sim::vmfleet_candidates(&setup, args.sweep, &slow);
    let sh = vmfleet_sim::shares(&trace);
    for b in &args.compare {
        candidates.extend(vmfleet_sim::baseline_candidates(b.trim(), &sh, args.sweep)?);
    }
    let results = vmfleet_sim::run_all(&trace, cloud, collector, args.seed, &candidates, &prices);
    if let Some(path) = &args.plot {
        let mut planner = (candidates[0].make)();
        let (_, series) = Sim::new(&trace, cloud, collector, args.seed).run(planner.as_mut(), true);
        std::fs::write(path, vmfleet_sim::plot_svg(&series, &candidates[0].name))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        let map: serde_json::Map<String, serde_json::Value> =
            results.iter().map(|r| (r.name.clone(), serde_json::to_value(&r.outcome).unwrap_or_default())).collect();
        println!(
            "{}",
            serde_json::json!({
                "trace": args.trace.display().to_string(),
                "seed": args.seed,
                "bursts": bursts,
                "policies": map,
            })
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
        "bursts (tasks of one pool in one second): mean {:.2}, 99% of tasks in bursts of at most {}, largest {}",
        bursts.mean, bursts.p99_task, bursts.max
    );
    if let Some(o) = results.first().map(|r| &r.outcome) {
        println!(
            "clairvoyant bound (each VM launched one boot before its task; nothing queues or idles): {:.0} VM-h, ${:.0}",
            o.oracle_vm_hours, o.oracle_cost
        );
    }
    println!(
        "{:<36} {:>7} {:>7} {:>7} {:>7} {:>9} {:>9} {:>8} {:>9} {:>7} {:>7} {:>8} {:>7}",
        "policy",
        "p50 s",
        "p95 s",
        "p99 s",
        "max s",
        "VM-h",
        "idle+boot",
        "overhead",
        "cost $",
        "VM-h/b",
        "cost/b",
        "warm hit",
        "DLC hit"
    );
    for Run { name, outcome: o, .. } in &results {
        println!(
            "{:<36} {:>7.1} {:>7.1} {:>7.1} {:>7.0} {:>9.0} {:>9.0} {:>8.2} {:>9.0} {:>7.2} {:>7.2} {:>7.0}% {:>6.0}%",
            name,
            o.p50_queue_s,
            o.p95_queue_s,
            o.p99_queue_s,
            o.max_queue_s,
            o.vm_hours,
            o.idle_vm_hours + o.booting_vm_hours,
            o.idle_overhead,
            o.cost,
            o.vm_hours_vs_oracle,
            o.cost_vs_oracle,
            o.warm_hit_rate * 100.0,
            o.dlc_hit_rate * 100.0
        );
    }
    if !args.sweep {
        if let Some(Run { name, outcome: o, .. }) = results.iter().find(|r| r.name.starts_with("vmfleet")) {
            println!("\n{name} per pool:");
            for (pool, p) in o.pools.iter().flatten() {
                println!(
                    "  {:<40} {:>6} tasks  p95 {:>6.1} s  VM-h {:>7.0} ({:.2}x bound)  warm hit {:>3.0}%  launches {:>6}  cycles {:>4}  retired {:>5}",
                    pool,
                    p.tasks,
                    p.p95_queue_s,
                    p.vm_hours,
                    p.vm_hours_vs_oracle,
                    p.warm_hit_rate * 100.0,
                    p.launches,
                    p.cycles,
                    p.terminations
                );
            }
        }
    } else {
        println!("\nFrontiers (cost against p95 queue time; no other point of the family is better in both):");
        let mut families: Vec<&str> = results.iter().map(|r| r.family).collect();
        families.dedup();
        for fam in families {
            let pts: Vec<&Run> = results.iter().filter(|r| r.family == fam).collect();
            let front = vmfleet_sim::frontier(&pts);
            println!("  {fam}:");
            for Run { name, outcome: o, .. } in front {
                println!(
                    "    {:<34} p95 {:>7.1} s   {:>7.0} VM-h ({:.2}x bound)   ${:>8.0} ({:.2}x)   warm hit {:>3.0}%",
                    name,
                    o.p95_queue_s,
                    o.vm_hours,
                    o.vm_hours_vs_oracle,
                    o.cost,
                    o.cost_vs_oracle,
                    o.warm_hit_rate * 100.0
                );
            }
        }
        not_beaten(&results);
    }
    Ok(())
}

/// Names every baseline point that no vmfleet point beats on both p95 queue time and cost.
fn not_beaten(results: &[Run]) {
    let ours: Vec<&Run> = results.iter().filter(|r| r.family == "vmfleet").collect();
    let theirs: Vec<&Run> = results.iter().filter(|r| r.family != "vmfleet").collect();
    if theirs.is_empty() {
        return;
    }
    let open: Vec<&&Run> = theirs
        .iter()
        .filter(|b| {
            !ours.iter().any(|v| v.outcome.p95_queue_s < b.outcome.p95_queue_s && v.outcome.cost < b.outcome.cost)
        })
        .collect();
    if open.is_empty() {
        println!("\nEvery baseline point is beaten on both p95 and cost by some vmfleet point.");
    } else {
        println!("\nBaseline points no vmfleet point beats on both p95 and cost ({} of {}):", open.len(), theirs.len());
        for r in open {
            println!("  {:<36} p95 {:>7.1} s   ${:>8.0}", r.name, r.outcome.p95_queue_s, r.outcome.cost);
        }
    }
}
