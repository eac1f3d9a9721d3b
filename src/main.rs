//! The `vmfleet` command.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use vmfleet::api::views::{Summary, TaskView, VmView, VolumeView};
use vmfleet::client::Client;
use vmfleet::config::Config;

#[derive(Parser)]
#[command(name = "vmfleet", version, about = "VM fleet and autoscaling controller for CI executors")]
struct Cli {
    /// Configuration file (YAML). Every key can also be set as VMFLEET__SECTION__KEY.
    #[arg(long, global = true, env = "VMFLEET_CONFIG")]
    config: Option<PathBuf>,
    /// Server to talk to; default the configured listen address.
    #[arg(long, global = true, env = "VMFLEET_SERVER")]
    server: Option<String>,
    /// API token; default VMFLEET_TOKEN, else the admin token in the data directory.
    #[arg(long, global = true, env = "VMFLEET_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the service (API on the configured listen address, default 127.0.0.1:3001).
    Serve,
    /// Bring the database schema up to date.
    Migrate,
    /// Installation id, VMs by state per pool, tasks waiting and running, volumes.
    Status(JsonFlag),
    /// Configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// VMs.
    #[command(subcommand)]
    Vms(VmsCmd),
    /// Docker-layer-cache volumes.
    #[command(subcommand)]
    Volumes(VolumesCmd),
    /// Tasks: ask for a VM, look at it, release it.
    #[command(subcommand)]
    Tasks(TasksCmd),
    /// Image catalog: register from packer, promote, roll back.
    #[command(subcommand)]
    Images(ImagesCmd),
    /// One garbage-collection pass: stuck, lost, leaked and orphaned VMs and instances.
    Gc {
        /// Print what would be done, and why, without doing it.
        #[arg(long)]
        dry_run: bool,
        /// Override the orphan grace for this pass (such as 0s or 10m).
        #[arg(long, value_parser = humantime_serde::re::humantime::parse_duration)]
        orphan_grace: Option<Duration>,
    },
    /// Start the fleet over: terminate every instance and volume tagged with this installation
    /// and clear the task, volume and VM records.
    Reset {
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// Even while tasks are waiting or running (they lose their VMs).
        #[arg(long)]
        force: bool,
    },
    /// Scaling policies: check a file; apply its Auto Scaling resources to AWS.
    #[command(subcommand)]
    Policies(PoliciesCmd),
    /// Replay a CI trace in virtual time through the production planners and other systems'
    /// policies; report queue times, VM-hours and cost.
    Simulate(vmfleet::sim::SimArgs),
    /// API tokens.
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Run a CircleCI job and stream its output; exits with the job's status. Without --server
    /// and with no server running, a fleet on the embedded default runs it in this process.
    Run(vmfleet::jobs::cli::RunArgs),
    /// Jobs: list, show, logs, cancel, ssh; check a CircleCI config.
    #[command(subcommand)]
    Jobs(JobsCmd),
    /// Runs one local VM's agent (started by the local provider).
    #[command(hide = true)]
    LocalVmAgent {
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Args)]
struct JsonFlag {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum JobsCmd {
    /// Jobs, newest first.
    List {
        /// Only jobs in this state.
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// One job (id or number): its tasks and their steps.
    Show {
        id: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// A job's output; with --follow until it ends.
    Logs {
        id: String,
        #[arg(long, short)]
        follow: bool,
    },
    /// Cancel a job: its steps stop and its VMs are destroyed.
    Cancel { id: String },
    /// Print the ssh command that reaches a running task's VM (writes its key to --key-file).
    Ssh {
        id: String,
        /// Which parallel task.
        #[arg(long, default_value_t = 0)]
        node: i64,
        /// Where to write the VM's private key (mode 0600).
        #[arg(long, default_value = "vmfleet-job.key")]
        key_file: PathBuf,
    },
    /// Check a CircleCI config: every job with its executor, image, resource class,
    /// parallelism and DLC, and why a job cannot run here.
    Validate {
        file: PathBuf,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate the configuration; names the bad key and line.
    Check,
}

#[derive(Subcommand)]
enum VmsCmd {
    /// Live VMs.
    List(JsonFlag),
    /// One VM.
    Show {
        id: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Give a VM no new work.
    Drain { id: String },
    /// Destroy a VM now (a task on it fails).
    Destroy { id: String },
}

#[derive(Subcommand)]
enum PoliciesCmd {
    /// Check a policy file (against the configuration's resource classes and images).
    Validate { file: PathBuf },
    /// Create, update or delete the Auto Scaling policies, alarms, scheduled actions and
    /// lifecycle hooks the file's `asg_policies` describe; prints the plan.
    Apply {
        file: PathBuf,
        /// Print the plan without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum VolumesCmd {
    /// Volumes.
    List(JsonFlag),
    /// One volume, deleted ones included.
    Show {
        id: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Delete a volume (refused while attached).
    Delete { id: String },
}

#[derive(Subcommand)]
enum TasksCmd {
    /// Ask for a VM.
    Request {
        #[arg(long, default_value = "machine")]
        executor: String,
        #[arg(long, default_value = "default")]
        image: String,
        #[arg(long, default_value = "medium")]
        resource_class: String,
        #[arg(long)]
        project: String,
        /// Attach the project's Docker-layer-cache volume.
        #[arg(long)]
        dlc: bool,
        /// Wait until the VM is handed over (or the task fails).
        #[arg(long)]
        wait: bool,
        /// Write the VM's private key here (mode 0600) and print the ssh command.
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Remote docker: write ca.pem, cert.pem and key.pem here and print the DOCKER_* variables.
        #[arg(long)]
        docker_dir: Option<PathBuf>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// One task; with --json an assigned task carries its VM's SSH details.
    Show {
        id: String,
        /// Write the VM's private key here (mode 0600) and print the ssh command.
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Remote docker: write ca.pem, cert.pem and key.pem here and print the DOCKER_* variables.
        #[arg(long)]
        docker_dir: Option<PathBuf>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Release a task: its VM is destroyed.
    Release { id: String },
}

#[derive(Subcommand)]
enum ImagesCmd {
    /// Register a version from packer's manifest post-processor output (its newest run).
    Register {
        #[arg(long)]
        packer_manifest: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: String,
        /// linux, windows, gpu or remote-docker.
        #[arg(long, default_value = "linux")]
        kind: String,
        /// The build to take when the run has several Amazon builds.
        #[arg(long)]
        build: Option<String>,
        /// x86_64 or arm64; default the build's custom_data.arch, else x86_64.
        #[arg(long)]
        arch: Option<String>,
    },
    /// Images and aliases.
    List(JsonFlag),
    /// One image: versions, aliases, history.
    Show {
        name: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Point an alias (default: the image's name) at a version.
    Promote {
        name: String,
        version: String,
        #[arg(long)]
        alias: Option<String>,
    },
    /// Point an alias (default: NAME) back at its previous version.
    Rollback {
        name: String,
        #[arg(long)]
        alias: Option<String>,
    },
}

#[derive(Subcommand)]
enum TokensCmd {
    /// Create a token in the database and print it once.
    Create {
        #[arg(long)]
        name: String,
        /// admin, operator, agent or image-publisher (repeatable).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
    /// Print the SHA-256 of a token read from standard input, for `auth.tokens[].sha256`.
    Hash,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Warm-pool assignment latency and throughput against the configured database.
    Assign(vmfleet::bench::AssignArgs),
    /// What a DLC volume adds to a task on a warm VM, against an on-demand launch (local provider).
    Dlc(vmfleet::bench::DlcArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Cmd::Simulate(args) = &cli.cmd {
        return match vmfleet::sim::simulate(args) {
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

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    Ok(Config::load(path, std::env::vars())?)
}

fn client(cli: &Cli, config: &Config) -> anyhow::Result<Client> {
    let base = cli.server.clone().unwrap_or_else(|| format!("http://{}", config.listen));
    let token = match &cli.token {
        Some(t) => Some(t.clone()),
        None => std::fs::read_to_string(config.admin_token_path()).ok().map(|t| t.trim().to_string()),
    };
    Client::new(&base, token)
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{:<w$}", c, w = widths[i])).collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "-".into())
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let ok = std::process::ExitCode::SUCCESS;
    match &cli.cmd {
        Cmd::Serve => {
            let config = load_config(cli.config.as_deref())?;
            vmfleet::server::serve(config, cli.config.clone()).await?;
        }
        Cmd::Migrate => {
            let config = load_config(cli.config.as_deref())?;
            std::fs::create_dir_all(&config.data_dir)?;
            let store = vmfleet::store::Store::open(&config.database_url(), 2).await?;
            println!("database {} is up to date", store.backend());
        }
        Cmd::Config(ConfigCmd::Check) => match Config::load(cli.config.as_deref(), std::env::vars()) {
            Ok(c) => {
                if let Some(dir) = &c.policies_dir {
                    match vmfleet::policy::Policies::load_dir(dir, &c) {
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
            match vmfleet::policy::Policies::load_file(file, &config) {
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
            let policies = match vmfleet::policy::Policies::load_file(file, &config) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(std::process::ExitCode::from(2));
                }
            };
            std::fs::create_dir_all(&config.data_dir)?;
            let store = vmfleet::store::Store::open(&config.database_url(), 2).await?;
            let install = store.install_id(config.install_id.as_deref()).await?;
            let aws = vmfleet::asg::Aws::new(&config).await;
            let plan = aws.plan(&install, &policies.asg).await?;
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
            let states = ["requested", "provisioning", "booting", "ready", "assigned", "releasing", "terminating"];
            let mut headers = vec!["Pool"];
            headers.extend(states);
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
            let store = vmfleet::store::Store::open(&config.database_url(), 2).await?;
            let provider = vmfleet::fleet::build_provider(&config).await?;
            let fleet = vmfleet::fleet::Fleet::new(config, store, provider).await?;
            let actions = fleet.gc_dry_run(*orphan_grace).await?;
            if actions.is_empty() {
                println!("nothing to collect");
            }
            for a in &actions {
                let what = a.summary();
                let verb = if *dry_run { "would" } else { "will" };
                println!("{verb} {what}: {}", a.reason());
                if !*dry_run {
                    fleet.apply_gc(a).await?;
                }
            }
        }
        Cmd::Reset { yes, force } => {
            let config = load_config(cli.config.as_deref())?;
            std::fs::create_dir_all(&config.data_dir)?;
            let store = vmfleet::store::Store::open(&config.database_url(), 2).await?;
            let provider = vmfleet::fleet::build_provider(&config).await?;
            let fleet = vmfleet::fleet::Fleet::new(config, store, provider).await?;
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
            println!("{}", vmfleet::auth::hash_token(token.trim()));
        }
        Cmd::Tokens(TokensCmd::Create { name, scopes }) => {
            let config = load_config(cli.config.as_deref())?;
            for s in scopes {
                if vmfleet::auth::Scope::parse(s).is_none() {
                    bail!("unknown scope {s:?}; use admin, operator, agent or image-publisher");
                }
            }
            std::fs::create_dir_all(&config.data_dir)?;
            let store = vmfleet::store::Store::open(&config.database_url(), 2).await?;
            let token = vmfleet::auth::generate_token();
            store
                .insert_token(name, &vmfleet::auth::hash_token(&token), &scopes.join(","), vmfleet::store::now_ms())
                .await?;
            println!("{token}");
        }
        Cmd::Bench(BenchCmd::Assign(args)) => {
            let config = load_config(cli.config.as_deref())?;
            vmfleet::bench::assign(&config, args).await?;
        }
        Cmd::Bench(BenchCmd::Dlc(args)) => {
            let config = load_config(cli.config.as_deref())?;
            vmfleet::bench::dlc(&config, args).await?;
        }
        Cmd::Run(args) => {
            let config = load_config(cli.config.as_deref())?;
            let sub = vmfleet::jobs::cli::submission(args)?;
            let api = client(&cli, &config)?;
            let code = if cli.server.is_some() || api.reachable().await {
                vmfleet::jobs::cli::run_remote(&api, &sub).await?
            } else {
                vmfleet::jobs::cli::run_local(config, &sub).await?
            };
            return Ok(std::process::ExitCode::from(code));
        }
        Cmd::Jobs(JobsCmd::Validate { file, json }) => return validate_jobs(file, json.json),
        Cmd::Jobs(c) => {
            let config = load_config(cli.config.as_deref())?;
            return jobs(&client(&cli, &config)?, c).await;
        }
        Cmd::LocalVmAgent { .. } | Cmd::Simulate(_) => unreachable!("handled before the runtime starts"),
    }
    Ok(ok)
}

async fn images(api: &Client, c: &ImagesCmd) -> anyhow::Result<std::process::ExitCode> {
    use vmfleet::api::views::{ImageDetail, ImagesView};
    let detail = |d: &ImageDetail| {
        table(
            &["Version", "Platform", "Arch", "GPU", "Regions"],
            d.versions
                .iter()
                .map(|i| {
                    vec![
                        i.version.clone(),
                        format!("{:?}", i.platform).to_lowercase(),
                        format!("{:?}", i.arch).to_lowercase(),
                        i.gpu.to_string(),
                        i.amis.keys().cloned().collect::<Vec<_>>().join(","),
                    ]
                })
                .collect(),
        );
        for (a, t) in &d.aliases {
            println!("alias {a} -> {t}");
        }
        for h in &d.history {
            println!("{}  {} -> {}  by {}", h.set_at, h.alias, h.target, h.actor);
        }
    };
    match c {
        ImagesCmd::Register { packer_manifest, name, version, kind, build, arch } => {
            let origin = packer_manifest.display().to_string();
            let text = std::fs::read_to_string(packer_manifest).with_context(|| format!("reading {origin}"))?;
            let artifact = vmfleet_images::packer::parse_manifest(&text, &origin, build.as_deref())?;
            let arch =
                arch.clone().or_else(|| artifact.custom_data.get("arch").cloned()).unwrap_or_else(|| "x86_64".into());
            let body = json!({"name": name, "version": version, "kind": kind, "arch": arch, "amis": artifact.amis});
            let d: ImageDetail = api.post("/api/v1/images", &body).await?;
            println!("registered {name}:{version} ({} regions, build {})", artifact.amis.len(), artifact.build_name);
            detail(&d);
        }
        ImagesCmd::List(f) => {
            let v: ImagesView = api.get("/api/v1/images").await?;
            if f.json {
                print_json(&v)?;
            } else {
                table(
                    &["Image", "Platform", "Arch", "Executors", "Regions"],
                    v.images
                        .iter()
                        .map(|i| {
                            vec![
                                i.id(),
                                format!("{:?}", i.platform).to_lowercase() + if i.gpu { " (GPU)" } else { "" },
                                format!("{:?}", i.arch).to_lowercase(),
                                i.executors.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(","),
                                i.amis.len().to_string(),
                            ]
                        })
                        .collect(),
                );
                println!();
                table(&["Alias", "Target"], v.aliases.iter().map(|(a, t)| vec![a.clone(), t.clone()]).collect());
            }
        }
        ImagesCmd::Show { name, json } => {
            let d: ImageDetail = api.get(&format!("/api/v1/images/{name}")).await?;
            if json.json {
                print_json(&d)?;
            } else {
                detail(&d);
            }
        }
        ImagesCmd::Promote { name, version, alias } => {
            let d: ImageDetail = api
                .post(&format!("/api/v1/images/{name}/promote"), &json!({"version": version, "alias": alias}))
                .await?;
            println!("{} -> {name}:{version}", alias.as_deref().unwrap_or(name));
            detail(&d);
        }
        ImagesCmd::Rollback { name, alias } => {
            let d: ImageDetail = api.post(&format!("/api/v1/images/{name}/rollback"), &json!({"alias": alias})).await?;
            let a = alias.as_deref().unwrap_or(name);
            println!("{a} -> {}", d.aliases.get(a).map_or("?", String::as_str));
            detail(&d);
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn validate_jobs(file: &Path, as_json: bool) -> anyhow::Result<std::process::ExitCode> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let cfg = match vmfleet::jobs::circleci::ConfigFile::parse(&text, &file.display().to_string()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(std::process::ExitCode::from(2));
        }
    };
    let jobs = cfg.summaries();
    if as_json {
        print_json(&jobs)?;
    } else {
        table(
            &["Job", "Line", "Kind", "Image", "Class", "Parallelism", "DLC", "Windows"],
            jobs.iter()
                .map(|j| {
                    vec![
                        j.name.clone(),
                        j.line.to_string(),
                        j.kind.as_str().to_string(),
                        opt(&j.image),
                        opt(&j.resource_class),
                        j.parallelism.to_string(),
                        j.docker_layer_caching.to_string(),
                        j.windows.to_string(),
                    ]
                })
                .collect(),
        );
        for j in jobs.iter().filter(|j| j.error.is_some()) {
            println!("cannot run {}: {}", j.name, j.error.as_deref().unwrap_or_default());
        }
        match cfg.workflow_jobs() {
            Ok(w) if !w.is_empty() => {
                let names: Vec<String> = w.iter().filter(|w| w.name != w.job).map(|w| w.name.clone()).collect();
                if !names.is_empty() {
                    println!("workflow instances: {}", names.join(", "));
                }
            }
            Ok(_) => {}
            Err(e) => println!("workflows: {e}"),
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn jobs(api: &Client, c: &JobsCmd) -> anyhow::Result<std::process::ExitCode> {
    use vmfleet::api::views::{JobView, TaskView};
    match c {
        JobsCmd::List { state, json } => {
            let q = state.as_ref().map(|s| format!("?state={s}")).unwrap_or_default();
            let jobs: Vec<JobView> = api.get(&format!("/api/v1/jobs{q}")).await?;
            if json.json {
                print_json(&jobs)?;
            } else {
                table(
                    &["Number", "ID", "Job", "Project", "State", "Tasks", "Queued", "Finished"],
                    jobs.iter()
                        .map(|j| {
                            vec![
                                j.number.to_string(),
                                j.id.clone(),
                                j.name.clone(),
                                j.project.clone(),
                                j.state.clone(),
                                j.parallelism.to_string(),
                                j.queued_at.clone(),
                                opt(&j.finished_at),
                            ]
                        })
                        .collect(),
                );
            }
        }
        JobsCmd::Show { id, json } => {
            let j: JobView = api.get(&format!("/api/v1/jobs/{id}")).await?;
            if json.json {
                print_json(&j)?;
            } else {
                let mut v = serde_json::to_value(&j)?;
                if let Some(o) = v.as_object_mut() {
                    o.remove("tasks");
                }
                print_kv(&v);
                for t in &j.tasks {
                    println!();
                    println!(
                        "task {} node {}: {} (attempt {}, exit code {})",
                        t.id,
                        t.node_index,
                        t.state,
                        t.attempt,
                        t.exit_code.map_or("-".into(), |c| c.to_string())
                    );
                    if let Some(r) = &t.failure_reason {
                        println!("  {r}");
                    }
                    for s in &t.steps {
                        let d = s.duration_s.map_or("-".into(), |d| format!("{d:.1} s"));
                        let code = s.exit_code.map_or(String::new(), |c| format!(" (exit code {c})"));
                        println!("  {:>3}  {:<10} {:>8}  {}{code}", s.index, s.state, d, s.name);
                    }
                }
            }
        }
        JobsCmd::Logs { id, follow } => {
            let j: JobView = api.get(&format!("/api/v1/jobs/{id}")).await?;
            let code = vmfleet::jobs::cli::follow_remote(api, &j.id, j.parallelism, *follow).await?;
            return Ok(std::process::ExitCode::from(if *follow { code } else { 0 }));
        }
        JobsCmd::Cancel { id } => {
            let j: JobView = api.post(&format!("/api/v1/jobs/{id}/cancel"), &json!({})).await?;
            println!("job {} #{}: cancel requested ({})", j.id, j.number, j.state);
        }
        JobsCmd::Ssh { id, node, key_file } => {
            let j: JobView = api.get(&format!("/api/v1/jobs/{id}")).await?;
            let Some(t) = j.tasks.iter().find(|t| t.node_index == *node) else {
                bail!("job {} has no task with node index {node}", j.id);
            };
            let Some(ft) = t.fleet_task_id.as_ref().filter(|_| t.state == "running") else {
                bail!("task {} of job {} is {}, not running on a VM", t.id, j.id, t.state);
            };
            let task: TaskView = api.get(&format!("/api/v1/tasks/{ft}")).await?;
            let Some(ssh) = &task.ssh else { bail!("task {} has no VM yet ({})", t.id, task.state) };
            write_private(key_file, &ssh.private_key)?;
            println!(
                "ssh -i {} -p {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null {}@{}",
                key_file.display(),
                ssh.port,
                ssh.user,
                ssh.host
            );
        }
        JobsCmd::Validate { .. } => unreachable!("handled without a server"),
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn print_kv(v: &serde_json::Value) {
    if let Some(map) = v.as_object() {
        for (k, v) in map {
            let s = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "-".into(),
                other => other.to_string(),
            };
            println!("{k:<22}{s}");
        }
    }
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

fn show_task(
    t: &TaskView,
    key_file: Option<&Path>,
    docker_dir: Option<&Path>,
    as_json: bool,
) -> anyhow::Result<std::process::ExitCode> {
    if let (Some(path), Some(ssh)) = (key_file, &t.ssh) {
        write_private(path, &ssh.private_key)?;
    }
    if let (Some(dir), Some(d)) = (docker_dir, &t.docker) {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("ca.pem"), &d.ca_cert)?;
        std::fs::write(dir.join("cert.pem"), &d.client_cert)?;
        write_private(&dir.join("key.pem"), &d.client_key)?;
    }
    if as_json {
        print_json(t)?;
    } else {
        let mut v = serde_json::to_value(t)?;
        if let Some(o) = v.as_object_mut() {
            o.remove("ssh");
            o.remove("docker");
        }
        print_kv(&v);
        if let Some(ssh) = &t.ssh {
            let key = key_file.map_or_else(|| "KEY".to_string(), |p| p.display().to_string());
            println!("ssh                   ssh -i {key} -p {} {}@{}", ssh.port, ssh.user, ssh.host);
        }
        if let Some(d) = &t.docker {
            let dir = docker_dir.map_or_else(|| "DIR".to_string(), |p| p.display().to_string());
            match &d.docker_host {
                Some(h) => {
                    println!("docker                export DOCKER_HOST={h} DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH={dir}")
                }
                None => {
                    println!("docker                this VM runs no Docker daemon (local provider); TLS files in {dir}")
                }
            }
        }
    }
    Ok(if t.state == "failed" { std::process::ExitCode::FAILURE } else { std::process::ExitCode::SUCCESS })
}
