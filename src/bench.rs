//! `vmfleet bench assign`: warm-pool assignment latency and throughput.
//!
//! Runs the production request path (`Fleet::request_task`: validation, key generation, the
//! assignment transaction, the audit record) against a throwaway database: a temporary SQLite
//! file, or a temporary database created on the given PostgreSQL server and dropped after.
//! Phase one sends requests at a fixed rate (open loop, latency measured from each request's
//! scheduled time, so a stall is not hidden); phase two runs `--concurrency` workers flat out.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sqlx::ConnectOptions;

use crate::config::Config;
use crate::fleet::{Fleet, TaskRequest};
use crate::store::{Db, Store};

/// Arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct AssignArgs {
    /// `sqlite` or a PostgreSQL server URL (a temporary database is created there).
    #[arg(long, default_value = "sqlite")]
    pub database: String,
    /// Requests in the fixed-rate phase.
    #[arg(long, default_value_t = 3000)]
    pub requests: u32,
    /// Requests per second in the fixed-rate phase.
    #[arg(long, default_value_t = 300)]
    pub rate: u32,
    /// Requests in the maximum-rate phase.
    #[arg(long, default_value_t = 5000)]
    pub max_requests: u32,
    /// Concurrent requesters in the maximum-rate phase.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

struct Target {
    url: String,
    cleanup: Option<(String, String)>,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn target(spec: &str) -> anyhow::Result<Target> {
    let dir = std::env::temp_dir().join(format!("vmfleet-bench-{}", crate::store::short_id()));
    std::fs::create_dir_all(&dir)?;
    let dir = tempdir::Dir(dir);
    if spec == "sqlite" {
        return Ok(Target { url: format!("sqlite:{}", dir.0.join("bench.db").display()), cleanup: None, _dir: dir });
    }
    let name = format!("vmfleet_bench_{}", crate::store::short_id());
    let opts = sqlx::postgres::PgConnectOptions::from_str(spec).context("--database")?;
    let mut admin = opts.connect().await.context("connecting to PostgreSQL")?;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await?;
    let url = opts.database(&name).to_url_lossy().to_string();
    Ok(Target { url, cleanup: Some((spec.to_string(), name)), _dir: dir })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn fill_pool(fleet: &Fleet, n: u32) -> anyhow::Result<()> {
    let now = crate::store::now_ms();
    for _ in 0..n {
        let vm = fleet_new_ready_vm(fleet, now)?;
        fleet.store.insert_vm(&vm).await?;
    }
    let sql = "UPDATE vms SET state = 'ready', ready_at = requested_at WHERE state = 'requested'";
    match fleet.store.db() {
        Db::Sqlite(p) => sqlx::query(sql).execute(p).await?.rows_affected(),
        Db::Postgres(p) => sqlx::query(sql).execute(p).await?.rows_affected(),
    };
    Ok(())
}

fn fleet_new_ready_vm(fleet: &Fleet, now: i64) -> anyhow::Result<crate::store::VmRow> {
    let id = format!("vm-{}", crate::store::short_id());
    let keys = vmfleet_provisioner::ssh::generate_keypair(&id)?;
    let rc = &fleet.config.resource_classes["medium"];
    let new = crate::store::NewVm {
        id,
        executor: "machine".into(),
        image: "default".into(),
        resource_class: "medium".into(),
        task_id: None,
        // What the pool resolves to now: assignment only takes VMs of the current image.
        image_id: fleet.resolve_image(vmfleet_images::Executor::Machine, "default", "medium")?.0,
        instance_type: rc.instance_type.clone(),
        platform: "linux".into(),
        ssh_private_key: keys.private_openssh,
        ssh_public_key: keys.public_openssh,
    };
    let mut vm = crate::store::VmRow::requested(new, now);
    vm.instance_id = Some("bench".into());
    vm.zone = Some("bench".into());
    vm.host = Some("127.0.0.1".into());
    vm.ssh_port = Some(22);
    Ok(vm)
}

async fn one(fleet: &Fleet) -> anyhow::Result<()> {
    let req = TaskRequest {
        executor: "machine".into(),
        image: "default".into(),
        resource_class: "medium".into(),
        project: "bench".into(),
        docker_layer_caching: false,
    };
    let t = fleet.request_task(&req).await?;
    if t.state != "assigned" {
        bail!("task {} was not served from the warm pool (pool too small?)", t.id);
    }
    Ok(())
}

/// Runs the benchmark and prints the results.
///
/// # Errors
/// Database set-up failures, or a request that was not served warm.
pub async fn assign(base: &Config, args: &AssignArgs) -> anyhow::Result<()> {
    let t = target(&args.database).await?;
    let result = run(base, args, &t).await;
    if let Some((admin_url, name)) = &t.cleanup {
        if let Ok(mut admin) = sqlx::postgres::PgConnectOptions::from_str(admin_url)?.connect().await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await;
        }
    }
    result
}

async fn run(base: &Config, args: &AssignArgs, t: &Target) -> anyhow::Result<()> {
    let mut config = base.clone();
    config.pools.clear();
    config.data_dir = t._dir.0.clone();
    config.database.max_connections = (args.concurrency as u32 + 2).max(4);
    let store = Store::open(&t.url, config.database.max_connections).await?;
    let provider = crate::fleet::build_provider(&config).await?;
    let fleet = Fleet::new(config, store, provider).await?;
    fill_pool(&fleet, args.requests + args.max_requests).await?;

    // Phase 1: fixed rate, open loop.
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let start = Instant::now();
    let mut handles = Vec::with_capacity(args.requests as usize);
    for i in 0..args.requests {
        let scheduled = start + interval * i;
        tokio::time::sleep_until(scheduled.into()).await;
        let f = fleet.clone();
        handles.push(tokio::spawn(async move { one(&f).await.map(|()| scheduled.elapsed().as_secs_f64() * 1000.0) }));
    }
    let mut lat = Vec::with_capacity(handles.len());
    for h in handles {
        lat.push(h.await??);
    }
    lat.sort_by(f64::total_cmp);

    // Phase 2: as fast as it goes.
    let done = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let f = fleet.clone();
        let done = done.clone();
        let total = args.max_requests;
        workers.push(tokio::spawn(async move {
            while done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                one(&f).await?;
            }
            anyhow::Ok(())
        }));
    }
    for w in workers {
        w.await??;
    }
    let max_rate = f64::from(args.max_requests) / start.elapsed().as_secs_f64();
    let out = serde_json::json!({
        "backend": fleet.store.backend(),
        "fixed_rate_per_s": args.rate,
        "requests": args.requests,
        "p50_ms": percentile(&lat, 0.50),
        "p99_ms": percentile(&lat, 0.99),
        "max_ms": lat.last().copied().unwrap_or(f64::NAN),
        "max_rate_per_s": max_rate,
        "concurrency": args.concurrency,
    });
    if args.json {
        println!("{out}");
    } else {
        println!(
            "{:<9} fixed {} req/s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms | max rate {:.0} assignments/s ({} workers)",
            fleet.store.backend(),
            args.rate,
            percentile(&lat, 0.50),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(f64::NAN),
            max_rate,
            args.concurrency
        );
    }
    Ok(())
}

/// Arguments of `vmfleet bench dlc`.
#[derive(Debug, Clone, clap::Args)]
pub struct DlcArgs {
    /// Tasks of each kind.
    #[arg(long, default_value_t = 20)]
    pub rounds: u32,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// What a DLC task costs on a warm VM: request-to-hand-over (as the store records it) for a
/// plain task on a warm VM, a DLC task on a warm VM (volume created or reused, attached,
/// mounted), and a DLC task on an on-demand VM, on the local provider in a scratch directory.
///
/// # Errors
/// Set-up failures, or a task that was not handed its VM within a minute.
pub async fn dlc(base: &Config, args: &DlcArgs) -> anyhow::Result<()> {
    let dir = tempdir::Dir(std::env::temp_dir().join(format!("vmfleet-bench-dlc-{}", crate::store::short_id())));
    std::fs::create_dir_all(&dir.0)?;
    let mut config = base.clone();
    config.data_dir = dir.0.clone();
    config.database = crate::config::DatabaseConfig::default();
    config.provider.kind = crate::config::ProviderKind::Local;
    config.provider.local.root = None;
    config.policies_dir = None;
    config.reconcile_interval = Duration::from_millis(20);
    config.pools = vec![serde_yaml_ng::from_str("{executor: machine, resource_class: medium, min_idle: 1}")?];
    let running = crate::server::start(config, None).await?;
    let fleet = running.fleet.clone();
    let result = dlc_rounds(&fleet, args).await;
    let _ = fleet.reset().await;
    running.shutdown.trigger();
    let (plain, warm, cold) = result?;
    let stats = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        (percentile(&s, 0.5), percentile(&s, 0.95))
    };
    let (p50, p95) = stats(&plain);
    let (w50, w95) = stats(&warm);
    let (c50, c95) = stats(&cold);
    if args.json {
        println!(
            "{}",
            serde_json::json!({"rounds": args.rounds, "warm_plain_ms": {"p50": p50, "p95": p95},
                "warm_dlc_ms": {"p50": w50, "p95": w95}, "on_demand_dlc_ms": {"p50": c50, "p95": c95}})
        );
    } else {
        println!("local provider, {} tasks each, request to hand-over:", args.rounds);
        println!("  warm VM, no DLC       p50 {p50:.0} ms  p95 {p95:.0} ms");
        println!(
            "  warm VM, DLC          p50 {w50:.0} ms  p95 {w95:.0} ms  (the volume adds {:.0} ms at p50)",
            w50 - p50
        );
        println!("  on-demand VM, DLC     p50 {c50:.0} ms  p95 {c95:.0} ms");
    }
    Ok(())
}

async fn dlc_rounds(fleet: &Fleet, args: &DlcArgs) -> anyhow::Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let (mut plain, mut warm, mut cold) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..args.rounds {
        for (kind, class, dlc) in [(0, "medium", false), (1, "medium", true), (2, "large", true)] {
            if class == "medium" {
                wait_warm(fleet).await?;
            }
            let req = TaskRequest {
                executor: "machine".into(),
                image: "default".into(),
                resource_class: class.into(),
                project: format!("bench-{}", i % 3),
                docker_layer_caching: dlc,
            };
            let t = fleet.request_task(&req).await?;
            let deadline = Instant::now() + Duration::from_secs(60);
            let t = loop {
                let t = fleet.store.task(&t.id).await?;
                if let Some(at) = t.assigned_at.filter(|_| t.state == "assigned") {
                    break (t, at);
                }
                if Instant::now() > deadline {
                    bail!("task {} was not handed its VM within a minute", t.id);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            let ms = (t.1 - t.0.created_at) as f64;
            [&mut plain, &mut warm, &mut cold][kind].push(ms);
            fleet.release_task(&t.0.id).await?;
        }
    }
    Ok((plain, warm, cold))
}

async fn wait_warm(fleet: &Fleet) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let vms = fleet.store.live_vms().await?;
        let ready = vms.iter().any(|v| v.state == "ready" && v.task_id.is_none() && v.resource_class == "medium");
        // Volumes must be free again too, so DLC tasks reuse their project's volume.
        let busy_volumes = fleet.store.volumes(Some("detaching")).await?.len();
        if ready && busy_volumes == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the warm pool did not refill within a minute");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
