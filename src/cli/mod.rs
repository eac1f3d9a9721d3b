//! The `vmfleet` command line: argument types in `args`, one file per command group that has
//! more than a few lines, and `run` dispatching the rest.

mod args;
mod images;
mod jobs;
mod output;
mod run_job;
mod secrets;
pub mod simulate;
mod workflows;

pub use args::Cli;
use args::*;
use images::images;
use jobs::{jobs, validate_jobs};
use output::*;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::api::views::{Summary, TaskView, VmView, VolumeView};
use crate::client::Client;
use crate::config::Config;
use serde_json::json;

/// Runs a parsed command line.
pub fn main(cli: Cli) -> std::process::ExitCode {
    if let Cmd::Simulate(args) = &cli.cmd {
        return match simulate::simulate(args) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::from(2)
            }
        };
    }
    if let Cmd::LocalVmAgent { dir } = &cli.cmd {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        return match rt.block_on(vmfleet_provisioner::local::agent::run(dir)) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("VMFLEET_LOG").unwrap_or_else(|_| {
            // The one-command demo prints the job's output, not the fleet's log.
            if matches!(cli.cmd, Cmd::Run(_)) { "warn,sqlx=warn" } else { "info,sqlx=warn" }.into()
        }))
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

pub(super) fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    Ok(Config::load(path, std::env::vars())?)
}

pub(super) fn client(cli: &Cli, config: &Config) -> anyhow::Result<Client> {
    let base = cli.server.clone().unwrap_or_else(|| format!("http://{}", config.listen));
    let token = match &cli.token {
        Some(t) => Some(t.clone()),
        None => std::fs::read_to_string(config.admin_token_path()).ok().map(|t| t.trim().to_string()),
    };
    Client::new(&base, token)
}

pub(super) async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let ok = std::process::ExitCode::SUCCESS;
    match &cli.cmd {
        Cmd::Serve => {
            let config = load_config(cli.config.as_deref())?;
            crate::server::serve(config, cli.config.clone()).await?;
        }
        Cmd::Migrate => {
            let config = load_config(cli.config.as_deref())?;
            std::fs::create_dir_all(&config.data_dir)?;
            let store = crate::store::Store::open(&config.database_url(), 2).await?;
            println!("database {} is up to date", store.backend());
        }
        Cmd::Config(ConfigCmd::Check) => match Config::load(cli.config.as_deref(), std::env::vars()) {
            Ok(c) => {
                if let Some(dir) = &c.policies_dir {
                    match crate::policy::Policies::load_dir(dir, &c) {
                        Ok(p) => println!(
                            "policies ok: {} files in {}, {} pools",
                            p.files.len(),
                            dir.display(),
                            p.pools.len()
                        ),
                        Err(e) => {
                            eprintln!("error: {e}");
                            return Ok(std::process::ExitCode::from(2));
                        }
                    }
                }
                println!(
                    "configuration ok: {} resource classes, {} pools, provider {:?}, database {}",
                    c.resource_classes.len(),
                    c.pools.len(),
                    c.provider.kind,
                    if c.database.url.is_some() { "postgres" } else { "sqlite (embedded)" }
                );
            }
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(std::process::ExitCode::from(2));
            }
        },
        Cmd::Policies(PoliciesCmd::Validate { file }) => {
            let config = load_config(cli.config.as_deref())?;
            match crate::policy::Policies::load_file(file, &config) {
                Ok(p) => {
                    let windows: usize = p.pools.iter().map(|p| p.schedules.len()).sum();
                    println!(
                        "{}: ok: {} pools ({} schedule windows), {} Auto Scaling groups",
                        file.display(),
                        p.pools.len() - config.pools.len(),
                        windows,
                        p.asg.len()
                    );
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(std::process::ExitCode::from(2));
                }
            }
        }
        Cmd::Policies(PoliciesCmd::Apply { file, dry_run }) => {
            let config = load_config(cli.config.as_deref())?;
            let policies = match crate::policy::Policies::load_file(file, &config) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(std::process::ExitCode::from(2));
                }
            };
            std::fs::create_dir_all(&config.data_dir)?;
            let store = crate::store::Store::open(&config.database_url(), 2).await?;
            let install = store.install_id(config.install_id.as_deref()).await?;
            let aws = crate::asg::Aws::new(&config.ec2_settings()).await;
            let plan = crate::asg::plan(&aws, &install, &policies.asg).await?;
            let mut changes = 0;
            for c in &plan {
                println!("{:<9} {:<16} {} {}", c.action.as_str(), c.key.kind.as_str(), c.key.asg, c.key.name);
                if c.action != vmfleet_scaler::asg::Action::Unchanged {
                    changes += 1;
                }
            }
            if changes == 0 {
                println!("no changes");
            } else if *dry_run {
                println!("{changes} changes (dry run: nothing done)");
            } else {
                aws.apply(&install, &plan).await?;
                println!("{changes} changes applied");
            }
        }
        Cmd::Status(f) => {
            let config = load_config(cli.config.as_deref())?;
            let s: Summary = client(&cli, &config)?.get("/api/v1/summary").await?;
            if f.json {
                return print_json(&s).map(|_| ok);
            }
            println!("Installation  {}", s.install_id);
            println!("Provider      {}", s.provider);
            println!("Database      {}", s.database);
            println!("Tasks         {} waiting, {} running", s.tasks_waiting, s.tasks_running);
            let vols: Vec<String> = s.volumes.iter().map(|(k, v)| format!("{v} {k}")).collect();
            println!("Volumes       {}", if vols.is_empty() { "none".into() } else { vols.join(", ") });
            println!();
            // Every live state, the stopped tier's included, in lifecycle order.
            let states: Vec<&str> = crate::store::VmState::ALL
                .into_iter()
                .filter(|s| !matches!(s, crate::store::VmState::Terminated | crate::store::VmState::Failed))
                .map(crate::store::VmState::as_str)
                .collect();
            let mut headers = vec!["Pool"];
            headers.extend(&states);
            let rows = s
                .pools
                .iter()
                .map(|(pool, m)| {
                    let mut r = vec![pool.clone()];
                    r.extend(states.iter().map(|st| m.get(*st).copied().unwrap_or(0).to_string()));
                    r
                })
                .collect();
            table(&headers, rows);
        }
        Cmd::Vms(c) => {
            let config = load_config(cli.config.as_deref())?;
            let api = client(&cli, &config)?;
            match c {
                VmsCmd::List(f) => {
                    let vms: Vec<VmView> = api.get("/api/v1/vms").await?;
                    if f.json {
                        return print_json(&vms).map(|_| ok);
                    }
                    table(
                        &["ID", "Pool", "State", "Warm", "Task", "Instance", "Address"],
                        vms.iter()
                            .map(|v| {
                                vec![
                                    v.id.clone(),
                                    v.pool.clone(),
                                    v.state.clone() + if v.draining { " (draining)" } else { "" },
                                    v.preallocated.to_string(),
                                    opt(&v.task_id),
                                    opt(&v.instance_id),
                                    match (&v.host, v.ssh_port) {
                                        (Some(h), Some(p)) => format!("{h}:{p}"),
                                        _ => "-".into(),
                                    },
                                ]
                            })
                            .collect(),
                    );
                }
                VmsCmd::Show { id, json } => {
                    let v: VmView = api.get(&format!("/api/v1/vms/{id}")).await?;
                    if json.json {
                        return print_json(&v).map(|_| ok);
                    }
                    print_kv(&serde_json::to_value(&v)?);
                }
                VmsCmd::Drain { id } => {
                    let v: VmView = api.post(&format!("/api/v1/vms/{id}/drain"), &json!({})).await?;
                    println!("vm {} draining (state {})", v.id, v.state);
                }
                VmsCmd::Destroy { id } => {
                    let v: VmView = api.delete(&format!("/api/v1/vms/{id}")).await?;
                    println!("vm {} is {}", v.id, v.state);
                }
            }
        }
        Cmd::Volumes(c) => {
            let config = load_config(cli.config.as_deref())?;
            let api = client(&cli, &config)?;
            match c {
                VolumesCmd::List(f) => {
                    let vols: Vec<VolumeView> = api.get("/api/v1/volumes").await?;
                    if f.json {
                        return print_json(&vols).map(|_| ok);
                    }
                    table(
                        &["ID", "Project", "State", "Zone", "Size", "VM", "Last used"],
                        vols.iter()
                            .map(|v| {
                                vec![
                                    v.id.clone(),
                                    v.project.clone(),
                                    v.state.clone(),
                                    v.zone.clone(),
                                    format!("{} GiB", v.size_gb),
                                    opt(&v.vm_id),
                                    v.last_used_at.clone(),
                                ]
                            })
                            .collect(),
                    );
                }
                VolumesCmd::Show { id, json } => {
                    let v: VolumeView = api.get(&format!("/api/v1/volumes/{id}")).await?;
                    if json.json {
                        return print_json(&v).map(|_| ok);
                    }
                    println!("Volume     {}", v.id);
                    println!("Project    {}", v.project);
                    println!("State      {}", v.state);
                    println!("Zone       {}", v.zone);
                    println!("Size       {} GiB", v.size_gb);
                    println!("VM         {}", opt(&v.vm_id));
                    println!("Last used  {}", v.last_used_at);
                }
                VolumesCmd::Delete { id } => {
                    let v: VolumeView = api.delete(&format!("/api/v1/volumes/{id}")).await?;
                    println!("volume {} is {}", v.id, v.state);
                }
            }
        }
        Cmd::Tasks(c) => {
            let config = load_config(cli.config.as_deref())?;
            let api = client(&cli, &config)?;
            match c {
                TasksCmd::Request {
                    executor,
                    image,
                    resource_class,
                    project,
                    dlc,
                    wait,
                    key_file,
                    docker_dir,
                    json,
                } => {
                    let body = json!({"executor": executor, "image": image, "resource_class": resource_class,
                                      "project": project, "docker_layer_caching": dlc});
                    let mut t: TaskView = api.post("/api/v1/tasks", &body).await?;
                    if *wait {
                        let deadline = tokio::time::Instant::now() + config.timeouts.vm_start + Duration::from_secs(30);
                        while t.state == "waiting" {
                            if tokio::time::Instant::now() > deadline {
                                bail!("task {} still waiting after the VM start timeout", t.id);
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            t = api.get(&format!("/api/v1/tasks/{}", t.id)).await?;
                        }
                    }
                    return show_task(&t, key_file.as_deref(), docker_dir.as_deref(), json.json);
                }
                TasksCmd::Show { id, key_file, docker_dir, json } => {
                    let t: TaskView = api.get(&format!("/api/v1/tasks/{id}")).await?;
                    return show_task(&t, key_file.as_deref(), docker_dir.as_deref(), json.json);
                }
                TasksCmd::Release { id } => {
                    let t: TaskView = api.delete(&format!("/api/v1/tasks/{id}")).await?;
                    println!("task {} {}; its VM is being destroyed", t.id, t.state);
                }
            }
        }
        Cmd::Images(c) => {
            let config = load_config(cli.config.as_deref())?;
            let api = client(&cli, &config)?;
            return images(&api, c).await;
        }
        Cmd::Gc { dry_run, orphan_grace } => {
            let config = load_config(cli.config.as_deref())?;
            std::fs::create_dir_all(&config.data_dir)?;
            let store = crate::store::Store::open(&config.database_url(), 2).await?;
            let provider = crate::fleet::build_provider(&config).await?;
            let fleet = crate::fleet::Fleet::new(config, store, provider).await?;
            let actions = fleet.gc_dry_run(*orphan_grace).await?;
            for a in &actions {
                let what = a.summary();
                let verb = if *dry_run { "would" } else { "will" };
                println!("{verb} {what}: {}", a.reason());
            }
            let objects = fleet.config.object_store().await?;
            let expired =
                crate::jobs::retention::plan(&fleet.store, objects.as_ref(), &fleet.config, crate::store::now_ms())
                    .await
                    .map_err(|e| anyhow::anyhow!("retention: {e}"))?;
            if actions.is_empty() && expired.is_empty() {
                println!("nothing to collect");
            }
            for e in &expired {
                let verb = if *dry_run { "would" } else { "will" };
                println!("{verb} {}: {}", e.summary(), e.reason());
            }
            if !*dry_run {
                fleet.apply_gc_all(&actions).await?;
                let (_, errors) = crate::jobs::retention::apply(&fleet.store, objects.as_ref(), &expired).await;
                for e in &errors {
                    eprintln!("retention: {e}");
                }
            }
        }
        Cmd::Reset { yes, force } => {
            let config = load_config(cli.config.as_deref())?;
            std::fs::create_dir_all(&config.data_dir)?;
            let store = crate::store::Store::open(&config.database_url(), 2).await?;
            let provider = crate::fleet::build_provider(&config).await?;
            let fleet = crate::fleet::Fleet::new(config, store, provider).await?;
            let active = fleet.active_tasks().await?;
            if active > 0 && !*force {
                bail!("{active} tasks are waiting or running; they would lose their VMs (use --force to reset anyway)");
            }
            if !*yes {
                eprint!(
                    "This terminates every instance and volume of installation {} and clears its records. Type 'yes': ",
                    fleet.install_id
                );
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer)?;
                if answer.trim() != "yes" {
                    bail!("not confirmed; nothing was changed");
                }
            }
            let r = fleet.reset().await?;
            println!("terminated {} instances: {}", r.instances_terminated.len(), r.instances_terminated.join(" "));
            println!("deleted {} volumes: {}", r.volumes_deleted.len(), r.volumes_deleted.join(" "));
            let (t, v, m) = r.records_cleared;
            println!("cleared {t} task, {v} volume and {m} VM records; assignment and preallocation resumed");
        }
        Cmd::Tokens(TokensCmd::Hash) => {
            let mut token = String::new();
            std::io::stdin().read_line(&mut token)?;
            println!("{}", crate::auth::hash_token(token.trim()));
        }
        Cmd::Tokens(TokensCmd::Create { name, scopes }) => {
            let config = load_config(cli.config.as_deref())?;
            for s in scopes {
                if crate::auth::Scope::parse(s).is_none() {
                    bail!("unknown scope {s:?}; use admin, operator, agent, image-publisher or secrets");
                }
            }
            std::fs::create_dir_all(&config.data_dir)?;
            let store = crate::store::Store::open(&config.database_url(), 2).await?;
            let token = crate::auth::generate_token();
            store
                .insert_token(name, &crate::auth::hash_token(&token), &scopes.join(","), crate::store::now_ms())
                .await?;
            println!("{token}");
        }
        Cmd::Bench(BenchCmd::Assign(args)) => {
            let config = load_config(cli.config.as_deref())?;
            crate::bench::assign(&config, args).await?;
        }
        Cmd::Bench(BenchCmd::Dlc(args)) => {
            let config = load_config(cli.config.as_deref())?;
            crate::bench::dlc(&config, args).await?;
        }
        Cmd::Run(args) => {
            let config = load_config(cli.config.as_deref())?;
            let api = client(&cli, &config)?;
            let remote = cli.server.is_some() || api.reachable().await;
            let code = if args.job.is_some() {
                let sub = crate::cli::run_job::submission(args)?;
                if remote {
                    crate::cli::run_job::run_remote(&api, &sub).await?
                } else {
                    crate::cli::run_job::run_local(config, &sub).await?
                }
            } else {
                let sub = workflows::pipeline_submission(args)?;
                if remote {
                    workflows::run_remote(&api, &sub).await?
                } else {
                    workflows::run_local(config, &sub).await?
                }
            };
            return Ok(std::process::ExitCode::from(code));
        }
        Cmd::Jobs(JobsCmd::Validate { file, json }) => return validate_jobs(file, json.json),
        Cmd::Jobs(c) => {
            let config = load_config(cli.config.as_deref())?;
            return jobs(&client(&cli, &config)?, c).await;
        }
        Cmd::Workflows(c) => {
            let config = load_config(cli.config.as_deref())?;
            workflows::workflows(&client(&cli, &config)?, c).await?;
        }
        Cmd::Projects(c) => {
            let config = load_config(cli.config.as_deref())?;
            secrets::projects(&client(&cli, &config)?, c).await?;
        }
        Cmd::Contexts(c) => {
            let config = load_config(cli.config.as_deref())?;
            secrets::contexts(&client(&cli, &config)?, c).await?;
        }
        Cmd::Secrets(c) => {
            let config = load_config(cli.config.as_deref())?;
            secrets::secrets(&client(&cli, &config)?, c).await?;
        }
        Cmd::LocalVmAgent { .. } | Cmd::Simulate(_) => unreachable!("handled before the runtime starts"),
    }
    Ok(ok)
}
