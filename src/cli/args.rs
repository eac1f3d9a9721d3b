//! The command line's arguments.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "vmfleet", version, about = "VM fleet and autoscaling controller for CI executors")]
pub struct Cli {
    /// Configuration file (YAML). Every key can also be set as VMFLEET__SECTION__KEY.
    #[arg(long, global = true, env = "VMFLEET_CONFIG")]
    pub config: Option<PathBuf>,
    /// Server to talk to; default the configured listen address.
    #[arg(long, global = true, env = "VMFLEET_SERVER")]
    pub server: Option<String>,
    /// API token; default VMFLEET_TOKEN, else the admin token in the data directory.
    #[arg(long, global = true, env = "VMFLEET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
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
    Simulate(crate::cli::simulate::SimArgs),
    /// API tokens.
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Run a CircleCI config's workflows (or, with --job, one job) and stream the output; exits
    /// with their status. Without --server and with no server running, a fleet on the embedded
    /// default runs them in this process.
    Run(crate::cli::run_job::RunArgs),
    /// Workflows: list, show, cancel, rerun, approve.
    #[command(subcommand)]
    Workflows(WorkflowsCmd),
    /// Jobs: list, show, logs, cancel, ssh; check a CircleCI config.
    #[command(subcommand)]
    Jobs(JobsCmd),
    /// Projects' secrets for jobs: environment variables and SSH keys.
    #[command(subcommand)]
    Projects(ProjectsCmd),
    /// Contexts: variables shared by the jobs whose workflow entry names them.
    #[command(subcommand)]
    Contexts(ContextsCmd),
    /// The key that seals secrets at rest.
    #[command(subcommand)]
    Secrets(SecretsCmd),
    /// Runs one local VM's agent (started by the local provider).
    #[command(hide = true)]
    LocalVmAgent {
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum ProjectsCmd {
    /// A project's environment variables.
    #[command(subcommand)]
    Env(VarsCmd),
    /// A project's SSH keys, for `add_ssh_keys`.
    #[command(subcommand, name = "ssh-keys")]
    SshKeys(SshKeysCmd),
}

/// Variables of a project (`vmfleet projects env`) or a context (`vmfleet contexts env`).
#[derive(Subcommand)]
pub enum VarsCmd {
    /// Set a variable; the value is read from standard input (a trailing newline is dropped).
    Set { owner: String, name: String },
    /// Variables: names and hints (the last 4 characters of values of 8 or more), never values.
    List {
        owner: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Remove a variable.
    Unset { owner: String, name: String },
}

#[derive(Subcommand)]
pub enum SshKeysCmd {
    /// Add an SSH private key read from standard input; prints its fingerprints.
    Add {
        project: String,
        /// The host it is for (`Host` in ~/.ssh/config); every host when not given.
        #[arg(long)]
        host: Option<String>,
    },
    /// Keys: fingerprints and hosts.
    List {
        project: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Remove a key (either fingerprint).
    Remove { project: String, fingerprint: String },
}

#[derive(Subcommand)]
pub enum ContextsCmd {
    /// Create a context, usable by the projects given (every project when none is).
    Create {
        name: String,
        /// A project that may use it (repeatable).
        #[arg(long = "project")]
        projects: Vec<String>,
    },
    /// Contexts.
    List(JsonFlag),
    /// One context and its variables (names and hints).
    Show {
        name: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Delete a context and its variables.
    Delete { name: String },
    /// A context's variables.
    #[command(subcommand)]
    Env(VarsCmd),
}

#[derive(Subcommand)]
pub enum SecretsCmd {
    /// Re-seal every value under a new key, in one transaction. With a key file, the server
    /// writes the new key to it; with VMFLEET__SECRETS__KEY, give the new key on standard
    /// input (--new-key-stdin) and then set it on every replica.
    RotateKey {
        /// Read the new key (base64 of 32 bytes) from standard input.
        #[arg(long)]
        new_key_stdin: bool,
    },
}

#[derive(Args)]
pub struct JsonFlag {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum JobsCmd {
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
    /// A job's artifacts; with --download, fetched into DIR (as node/path).
    Artifacts {
        id: String,
        #[arg(long)]
        download: Option<PathBuf>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// A job's test results: counts, failures with their messages, per-test times.
    Tests {
        id: String,
        #[command(flatten)]
        json: JsonFlag,
    },
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
pub enum WorkflowsCmd {
    /// Workflows, newest first.
    List {
        /// Only workflows in this state.
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// One workflow: its jobs, their states and requirements.
    Show {
        id: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Cancel a workflow: its running jobs stop, the rest end canceled.
    Cancel { id: String },
    /// Run an ended workflow again, as a new workflow of its pipeline.
    Rerun {
        id: String,
        /// Only the jobs that did not succeed, and what requires them.
        #[arg(long)]
        from_failed: bool,
    },
    /// Approve an approval job that is on hold.
    Approve { id: String, job: String },
}

#[derive(Subcommand)]
pub enum ConfigCmd {
    /// Validate the configuration; names the bad key and line.
    Check,
}

#[derive(Subcommand)]
pub enum VmsCmd {
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
pub enum PoliciesCmd {
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
pub enum VolumesCmd {
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
pub enum TasksCmd {
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
pub enum ImagesCmd {
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
pub enum TokensCmd {
    /// Create a token in the database and print it once.
    Create {
        #[arg(long)]
        name: String,
        /// admin, operator, agent, image-publisher or secrets (repeatable).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
    /// Print the SHA-256 of a token read from standard input, for `auth.tokens[].sha256`.
    Hash,
}

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Warm-pool assignment latency and throughput against the configured database.
    Assign(crate::bench::AssignArgs),
    /// What a DLC volume adds to a task on a warm VM, against an on-demand launch (local provider).
    Dlc(crate::bench::DlcArgs),
}
