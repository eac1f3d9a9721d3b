//! The job pipeline: CircleCI configs in, tasks on VMs, steps over SSH, output out.
//!
//! # Design
//! A submitted job is resolved and checked whole before anything is written ([`circleci`]),
//! then recorded with one task per `parallelism` node, all `queued`. Every `serve` process runs
//! a dispatcher: it claims queued tasks (fairly between projects) with a lease it renews while
//! it works, asks the fleet for each task's VM, and runs the steps over SSH, writing output to
//! the store as it comes, so any replica can stream it. A task whose owner stopped renewing
//! (the process died) is requeued once its lease runs out, its fleet task released so the VM
//! is destroyed; every write of an owner is conditional on still holding the claim, so a task
//! is never finished twice.

pub mod circleci;
pub mod cli;
pub mod script;
pub mod yaml;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, Notify};
use tracing::{info, warn};
use vmfleet_images::Executor as FleetExecutor;
use vmfleet_provisioner::ssh::{self, ExecEnd, Session, Stream};

use crate::fleet::{pool_key, tokio_util_shutdown::Shutdown, Fleet, FleetError, TaskRequest};
use crate::store::{now_ms, short_id, JobRow, JobTaskRow, OutputChunk, StoreError};
use circleci::{ConfigFile, Executor, JobSpec, Pipeline, Step, When};

/// A job as submitted (`POST /api/v1/jobs`).
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobSubmission {
    /// The config file's text.
    pub config: String,
    /// Its name, for error messages (default `config.yml`).
    #[serde(default)]
    pub config_file: Option<String>,
    /// The job: a job name, or a workflow instance's name.
    pub job: String,
    /// The project (`gh/org/repo`); DLC volumes belong to it.
    pub project: String,
    /// What `checkout` clones: a git URL, or a local path readable by the server.
    #[serde(default)]
    pub repo: Option<String>,
    /// The revision to check out (default: the repository's HEAD).
    #[serde(default)]
    pub revision: Option<String>,
    /// The branch name the job sees.
    #[serde(default)]
    pub branch: Option<String>,
    /// An SSH private key `checkout` clones with. Secret: stored for the job, never shown.
    #[serde(default)]
    pub deploy_key: Option<String>,
    /// Job parameter values.
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// Pipeline parameter values.
    #[serde(default)]
    pub pipeline_parameters: BTreeMap<String, String>,
}

impl std::fmt::Debug for JobSubmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSubmission").field("job", &self.job).field("project", &self.project).finish_non_exhaustive()
    }
}

/// A VM a job asks the fleet for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmAsk {
    /// `machine` or `remote-docker`.
    pub executor: String,
    /// Catalog image (alias or `name:version`).
    pub image: String,
    /// Resource class.
    pub resource_class: String,
    /// The project's DLC volume.
    pub docker_layer_caching: bool,
}

impl VmAsk {
    fn pool(&self) -> String {
        pool_key(&self.executor, &self.image, &self.resource_class)
    }
}

/// What is stored for a job: the resolved spec and the VMs it needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// The job.
    pub spec: JobSpec,
    /// The VM the steps run on.
    pub vm: VmAsk,
    /// The remote-Docker engine `setup_remote_docker` asks for.
    pub remote: Option<VmAsk>,
    /// Lines printed at the start of every task's output (image substitutions and the like).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Abort {
    Canceled,
    ClaimLost,
}

/// How a task ended.
struct Outcome {
    state: &'static str,
    exit_code: Option<i64>,
    reason: Option<String>,
}

impl Outcome {
    fn infra(reason: impl Into<String>) -> Self {
        Self { state: "infrastructure_fail", exit_code: None, reason: Some(reason.into()) }
    }
}

/// The job service of one process.
pub struct Jobs {
    /// The fleet.
    pub fleet: Arc<Fleet>,
    /// This process's claim name.
    pub owner: String,
    wake: Notify,
    running: Mutex<HashMap<String, watch::Sender<Option<Abort>>>>,
    last_renew: Mutex<i64>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs").field("owner", &self.owner).finish_non_exhaustive()
    }
}

fn bad(e: impl std::fmt::Display) -> FleetError {
    FleetError::BadRequest(e.to_string())
}

impl Jobs {
    /// The job service over `fleet`.
    pub fn new(fleet: Arc<Fleet>) -> Arc<Self> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let owner = format!("{}-{}-{}", host.trim(), std::process::id(), &short_id()[..6]);
        Arc::new(Self {
            fleet,
            owner,
            wake: Notify::new(),
            running: Mutex::new(HashMap::new()),
            last_renew: Mutex::new(0),
        })
    }

    /// Resolves and checks a submission into what would be stored, without storing anything.
    ///
    /// # Errors
    /// [`FleetError::BadRequest`] naming the file and line: YAML errors, unknown keys, an
    /// unknown job, an orb, a resource class or image this installation does not offer, a job
    /// that is not for this service.
    pub fn plan(&self, sub: &JobSubmission) -> Result<Plan, FleetError> {
        let file = sub.config_file.clone().unwrap_or_else(|| "config.yml".into());
        let cfg = ConfigFile::parse(&sub.config, &file).map_err(bad)?;
        let pipeline = Pipeline {
            revision: sub.revision.clone(),
            branch: sub.branch.clone(),
            git_url: sub.repo.clone(),
            parameters: sub.pipeline_parameters.clone(),
            ..Default::default()
        };
        let spec = cfg.job(&sub.job, &sub.parameters, &pipeline).map_err(bad)?;
        let at = format!("{file}:{}", spec.line);
        let mut notes = Vec::new();
        let offered = |class: &str| -> Result<(), FleetError> {
            if self.fleet.config.resource_classes.contains_key(class) {
                return Ok(());
            }
            let names: Vec<&str> = self.fleet.config.resource_classes.keys().map(String::as_str).collect();
            Err(bad(format!(
                "{at}: job {}: resource class {class:?} is not offered by this installation (it offers {})",
                spec.name,
                names.join(", ")
            )))
        };
        let (vm, remote) = match &spec.executor {
            Executor::Macos { .. } => {
                return Err(bad(format!("{at}: job {} runs on macOS, which this service does not offer", spec.name)))
            }
            Executor::Docker { image } => {
                let Some(Step::SetupRemoteDocker { docker_layer_caching, .. }) = spec.remote_docker() else {
                    return Err(bad(format!(
                        "{at}: job {} is a docker-executor job that never asks for setup_remote_docker: not a job for \
                         this service, which runs machine and remote-docker jobs",
                        spec.name
                    )));
                };
                offered(&spec.resource_class)?;
                notes.push(format!(
                    "docker executor: the steps run on a machine VM of class {} standing in for the primary container \
                     {image}, which is not pulled",
                    spec.resource_class
                ));
                let vm = self.machine_ask("default", &spec.resource_class, false, &at, &mut notes)?;
                let remote = VmAsk {
                    executor: FleetExecutor::RemoteDocker.as_str().into(),
                    image: "docker-default".into(),
                    resource_class: "medium".into(),
                    docker_layer_caching: *docker_layer_caching,
                };
                self.fleet
                    .resolve_image(FleetExecutor::RemoteDocker, &remote.image, &remote.resource_class)
                    .map_err(|e| bad(format!("{at}: job {}: remote Docker: {e}", spec.name)))?;
                (vm, Some(remote))
            }
            Executor::Machine { image, docker_layer_caching } => {
                offered(&spec.resource_class)?;
                let vm = self.machine_ask(image, &spec.resource_class, *docker_layer_caching, &at, &mut notes)?;
                (vm, None)
            }
        };
        crate::fleet::validate_project(&sub.project)?;
        Ok(Plan { spec, vm, remote, notes })
    }

    /// The machine VM for an image as the config names it: the catalog's image of that name if
    /// there is one, else the built-in image of the class's platform (noted in the output).
    fn machine_ask(
        &self,
        image: &str,
        class: &str,
        dlc: bool,
        at: &str,
        notes: &mut Vec<String>,
    ) -> Result<VmAsk, FleetError> {
        let machine = FleetExecutor::Machine;
        let chosen = if self.fleet.resolve_image(machine, image, class).is_ok() {
            image.to_string()
        } else {
            let rc = self.fleet.config.resource_classes.get(class);
            let fallback = match rc {
                Some(rc) if rc.platform == vmfleet_images::Platform::Windows => "windows-default",
                Some(rc) if rc.gpus > 0 => "gpu-default",
                _ => "default",
            };
            self.fleet.resolve_image(machine, fallback, class).map_err(|e| {
                let via = if fallback == image { String::new() } else { format!(" (run as {fallback})") };
                bad(format!("{at}: image {image}{via} on resource class {class}: {e}"))
            })?;
            notes.push(format!("image {image} is not in this installation's catalog; using {fallback}"));
            fallback.to_string()
        };
        Ok(VmAsk {
            executor: machine.as_str().into(),
            image: chosen,
            resource_class: class.into(),
            docker_layer_caching: dlc,
        })
    }

    /// Checks and records a job with one queued task per parallel node.
    ///
    /// # Errors
    /// As [`Jobs::plan`]; nothing is recorded when it fails.
    pub async fn submit(&self, sub: &JobSubmission, actor: &str) -> Result<JobRow, FleetError> {
        let plan = self.plan(sub)?;
        let now = now_ms();
        let id = format!("job-{}", short_id());
        let spec = serde_json::to_string(&plan).map_err(|e| FleetError::Internal(e.to_string()))?;
        let job = JobRow {
            id: id.clone(),
            number: 0,
            name: plan.spec.name.clone(),
            project: sub.project.clone(),
            config_file: sub.config_file.clone().unwrap_or_else(|| "config.yml".into()),
            spec,
            pool: plan.vm.pool(),
            repo: sub.repo.clone(),
            revision: sub.revision.clone(),
            branch: sub.branch.clone(),
            deploy_key: sub.deploy_key.clone().filter(|k| !k.trim().is_empty()),
            parallelism: i64::from(plan.spec.parallelism),
            state: "queued".into(),
            cancel_requested: false,
            failure_reason: None,
            queued_at: now,
            started_at: None,
            finished_at: None,
        };
        let tasks: Vec<JobTaskRow> =
            (0..plan.spec.parallelism).map(|i| JobTaskRow::queued(&id, i64::from(i), &sub.project, now)).collect();
        let payload =
            serde_json::json!({"job": plan.spec.name, "project": sub.project, "parallelism": plan.spec.parallelism,
                                         "pool": plan.vm.pool()})
            .to_string();
        let audit = self.fleet.event("workflow.job.scheduled", actor, &id, &payload);
        let number = self.fleet.store.insert_job(&job, &tasks, &audit).await?;
        info!(job = %id, number, name = %plan.spec.name, project = %sub.project, "job scheduled");
        self.wake.notify_one();
        Ok(self.fleet.store.job(&id).await?)
    }

    /// Asks for a job to be canceled: queued tasks end at once, running ones stop their steps
    /// and their VMs are destroyed.
    ///
    /// # Errors
    /// [`FleetError::NotFound`]; [`FleetError::Conflict`] when it has ended.
    pub async fn cancel(&self, id: &str, actor: &str) -> Result<JobRow, FleetError> {
        let job = self.fleet.store.cancel_job(id, now_ms()).await?;
        self.fleet.audit("workflow.job.cancel", actor, &job.id, "").await;
        self.finish_job(&job.id).await;
        self.wake.notify_one();
        Ok(self.fleet.store.job(&job.id).await?)
    }

    /// Runs the dispatcher until `shutdown`: requeues expired claims, renews this process's
    /// leases, passes cancellations to running tasks, and claims queued tasks while it has room.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        loop {
            if let Err(e) = self.tick().await {
                warn!(error = %e, "job dispatcher pass failed; retrying");
            }
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    async fn tick(self: &Arc<Self>) -> Result<(), StoreError> {
        let store = &self.fleet.store;
        let settings = self.fleet.config.jobs;
        let lease_ms = settings.lease.as_millis() as i64;
        let now = now_ms();
        for t in store.expired_job_tasks(now).await? {
            if let Some(state) = store.requeue_expired(&t, settings.max_attempts, now).await? {
                let owner = t.owner.as_deref().unwrap_or("?");
                warn!(task = %t.id, job = %t.job_id, %owner, state, "claim expired; its VM is released");
                let payload = format!("claim of {owner} expired at attempt {}; now {state}", t.attempt);
                self.fleet.audit("workflow.job.requeue", "dispatcher", &t.id, &payload).await;
                self.fleet.wake();
                self.finish_job(&t.job_id).await;
            }
        }
        let renew_due = {
            let mut last = self.last_renew.lock().unwrap_or_else(|p| p.into_inner());
            let due = now - *last >= lease_ms / 3;
            if due {
                *last = now;
            }
            due
        };
        let mine: Vec<(String, watch::Sender<Option<Abort>>)> = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if renew_due {
            for (id, abort) in &mine {
                if !store.renew_lease(id, &self.owner, now + lease_ms).await? {
                    warn!(task = %id, "claim lost; stopping the task");
                    let _ = abort.send(Some(Abort::ClaimLost));
                }
            }
        }
        if !mine.is_empty() {
            let canceled = store.canceled_job_tasks(&self.owner).await?;
            for (id, abort) in mine.iter().filter(|(id, _)| canceled.contains(id)) {
                info!(task = %id, "job canceled; stopping the task");
                let _ = abort.send(Some(Abort::Canceled));
            }
        }
        while self.running.lock().unwrap_or_else(|p| p.into_inner()).len() < settings.max_running {
            let now = now_ms();
            let Some(t) = store.claim_job_task(&self.owner, now + lease_ms, now).await? else { break };
            let (tx, rx) = watch::channel(None);
            self.running.lock().unwrap_or_else(|p| p.into_inner()).insert(t.id.clone(), tx);
            info!(task = %t.id, job = %t.job_id, node = t.node_index, attempt = t.attempt, "claimed");
            let me = self.clone();
            tokio::spawn(async move {
                let id = t.id.clone();
                me.run_task(t, rx).await;
                me.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                me.wake.notify_one();
            });
        }
        Ok(())
    }

    /// Ends a job whose tasks have all ended, and audits it.
    async fn finish_job(&self, job_id: &str) {
        match self.fleet.store.finish_job_if_done(job_id, now_ms()).await {
            Ok(Some(state)) => {
                info!(job = %job_id, %state, "job finished");
                self.fleet.audit("workflow.job.finish", "dispatcher", job_id, &state).await;
            }
            Ok(None) => {}
            Err(e) => warn!(job = %job_id, error = %e, "could not end the job"),
        }
    }

    async fn run_task(self: &Arc<Self>, t: JobTaskRow, abort: watch::Receiver<Option<Abort>>) {
        let store = &self.fleet.store;
        let job = match store.job(&t.job_id).await {
            Ok(j) => j,
            Err(e) => {
                warn!(task = %t.id, error = %e, "job not readable");
                return;
            }
        };
        let out = Output::start(self.fleet.clone(), &t);
        let outcome = match serde_json::from_str::<Plan>(&job.spec) {
            Ok(plan) => {
                if store.start_job(&job.id, now_ms()).await.unwrap_or(false) {
                    self.fleet.audit("workflow.job.start", &self.owner, &job.id, &plan.spec.name).await;
                }
                let mut run =
                    Run { jobs: self.clone(), job: &job, plan: &plan, task: &t, out: &out, abort, held: Vec::new() };
                let outcome = run.execute().await;
                for fleet_task in &run.held {
                    if let Err(e) = self.fleet.release_task(fleet_task).await {
                        warn!(task = %fleet_task, error = %e, "release failed; the collector will retire its VM");
                    }
                }
                outcome
            }
            Err(e) => Outcome::infra(format!("stored job is unreadable: {e}")),
        };
        let status = match (&outcome.reason, outcome.exit_code) {
            (Some(r), _) => format!("{} ({r})", outcome.state),
            (None, Some(c)) => format!("{} (exit code {c})", outcome.state),
            (None, None) => outcome.state.to_string(),
        };
        out.sys(-1, &format!("task {} node {}: {status}", t.id, t.node_index));
        out.close().await;
        let reason = outcome.reason.as_deref();
        match store.finish_job_task(&t.id, &self.owner, outcome.state, outcome.exit_code, reason, now_ms()).await {
            Ok(true) => self.finish_job(&t.job_id).await,
            Ok(false) => warn!(task = %t.id, "claim lost before the task ended; its outcome is not recorded"),
            Err(e) => warn!(task = %t.id, error = %e, "could not record the task's end; the claim will expire"),
        }
    }
}

/// One attempt of one job task on its VM.
struct Run<'a> {
    jobs: Arc<Jobs>,
    job: &'a JobRow,
    plan: &'a Plan,
    task: &'a JobTaskRow,
    out: &'a Output,
    abort: watch::Receiver<Option<Abort>>,
    /// Fleet tasks to release at the end.
    held: Vec<String>,
}

impl Run<'_> {
    fn aborted(&self) -> Option<Abort> {
        *self.abort.borrow()
    }

    fn abort_outcome(a: Abort) -> Outcome {
        match a {
            Abort::Canceled => {
                Outcome { state: "canceled", exit_code: None, reason: Some("the job was canceled".into()) }
            }
            Abort::ClaimLost => Outcome::infra("this process lost its claim on the task"),
        }
    }

    /// Asks the fleet for a VM and waits until it is handed over.
    async fn vm(&mut self, ask: &VmAsk, remote: bool) -> Result<crate::store::VmRow, Outcome> {
        let fleet = &self.jobs.fleet;
        let req = TaskRequest {
            executor: ask.executor.clone(),
            image: ask.image.clone(),
            resource_class: ask.resource_class.clone(),
            project: self.job.project.clone(),
            docker_layer_caching: ask.docker_layer_caching,
        };
        // Intent first: a requeue after this process dies releases the task by this id.
        let id = format!("task-{}", short_id());
        if fleet.store.set_job_fleet_task(&self.task.id, &self.jobs.owner, &id, remote).await.is_err() {
            return Err(Self::abort_outcome(Abort::ClaimLost));
        }
        let ft = fleet.request_task_as(&req, id).await.map_err(|e| Outcome::infra(format!("asking for a VM: {e}")))?;
        self.held.push(ft.id.clone());
        self.out.sys(0, &format!("waiting for a {} VM ({}), task {}", ask.executor, ask.pool(), ft.id));
        loop {
            if let Some(a) = self.aborted() {
                return Err(Self::abort_outcome(a));
            }
            let t = fleet.store.task(&ft.id).await.map_err(|e| Outcome::infra(e.to_string()))?;
            match t.state.as_str() {
                "assigned" => {
                    let vm_id = t.vm_id.unwrap_or_default();
                    let vm = fleet.store.vm(&vm_id).await.map_err(|e| Outcome::infra(e.to_string()))?;
                    let waited =
                        (t.assigned_at.unwrap_or_else(now_ms) - self.task.started_at.unwrap_or(t.created_at)).max(0);
                    if !remote {
                        let queued = (t.assigned_at.unwrap_or_else(now_ms) - self.task.queued_at).max(0);
                        fleet.metrics.observe_job_queue(&ask.pool(), queued as f64 / 1000.0);
                    }
                    self.out.sys(0, &format!("VM {} ready after {:.1} s", vm.id, waited as f64 / 1000.0));
                    return Ok(vm);
                }
                "waiting" => tokio::time::sleep(Duration::from_millis(150)).await,
                other => {
                    let why = t.failure_reason.unwrap_or_default();
                    return Err(Outcome::infra(format!("the VM task ended {other}: {why}")));
                }
            }
        }
    }

    async fn execute(&mut self) -> Outcome {
        for note in &self.plan.notes {
            self.out.sys(0, note);
        }
        let vm = match self.vm(&self.plan.vm.clone(), false).await {
            Ok(vm) => vm,
            Err(o) => return o,
        };
        let fleet = self.jobs.fleet.clone();
        let Some(target) = Fleet::ssh_target(&vm) else {
            return Outcome::infra(format!("VM {} has no SSH address", vm.id));
        };
        let session = match ssh::wait_ready(&target, fleet.config.timeouts.ssh_connect).await {
            Ok(s) => Arc::new(s),
            Err(e) => return Outcome::infra(format!("SSH to VM {}: {e}", vm.id)),
        };
        let outcome = self.steps(&session).await;
        session.disconnect().await;
        outcome
    }

    fn environment(&self) -> Vec<(String, String)> {
        let spec = &self.plan.spec;
        let (user, repo) = match self.job.project.rsplit_once('/') {
            Some((a, b)) => (a.rsplit('/').next().unwrap_or(a).to_string(), b.to_string()),
            None => (String::new(), self.job.project.clone()),
        };
        let mut env: Vec<(String, String)> = vec![
            ("CI".into(), "true".into()),
            ("CIRCLECI".into(), "true".into()),
            ("CIRCLE_JOB".into(), spec.name.clone()),
            ("CIRCLE_BUILD_NUM".into(), self.job.number.to_string()),
            ("CIRCLE_NODE_INDEX".into(), self.task.node_index.to_string()),
            ("CIRCLE_NODE_TOTAL".into(), self.job.parallelism.to_string()),
            ("CIRCLE_PROJECT_USERNAME".into(), user),
            ("CIRCLE_PROJECT_REPONAME".into(), repo),
            ("CIRCLE_WORKING_DIRECTORY".into(), spec.working_directory.clone()),
            ("VMFLEET_JOB_ID".into(), self.job.id.clone()),
            ("VMFLEET_JOB_TASK".into(), self.task.id.clone()),
            ("VMFLEET_ATTEMPT".into(), self.task.attempt.to_string()),
        ];
        for (k, v) in [
            ("CIRCLE_SHA1", &self.job.revision),
            ("CIRCLE_BRANCH", &self.job.branch),
            ("CIRCLE_REPOSITORY_URL", &self.job.repo),
        ] {
            if let Some(v) = v {
                env.push((k.into(), v.clone()));
            }
        }
        for (k, v) in &spec.environment {
            env.retain(|(e, _)| e != k);
            env.push((k.clone(), v.clone()));
        }
        env
    }

    async fn steps(&mut self, session: &Arc<Session>) -> Outcome {
        let spec = &self.plan.spec;
        let fleet = self.jobs.fleet.clone();
        let store = &fleet.store;
        let deadline = tokio::time::Instant::now() + fleet.config.timeouts.long_running_task;
        let mut env = self.environment();
        let mut failed: Option<(Option<i64>, String)> = None;
        let (bg_stop, _) = watch::channel(false);
        let mut background = Vec::new();
        let total = spec.steps.len();
        for (i, step) in spec.steps.iter().enumerate() {
            let idx = i as i64 + 1;
            if let Some(a) = self.aborted() {
                let _ = bg_stop.send(true);
                return Self::abort_outcome(a);
            }
            let when = match step {
                Step::Run(r) => r.when,
                _ => When::OnSuccess,
            };
            let runs = match when {
                When::OnSuccess => failed.is_none(),
                When::OnFail => failed.is_some(),
                When::Always => true,
            };
            let label = step_label(step);
            let _ = store.start_step(&self.task.id, self.task.attempt, idx, &label, now_ms()).await;
            if !runs {
                self.out.sys(idx, &format!("[{idx}/{total}] {label}: skipped"));
                let _ = store.finish_step(&self.task.id, self.task.attempt, idx, "skipped", None, now_ms()).await;
                continue;
            }
            self.out.sys(idx, &format!("[{idx}/{total}] {label}"));
            let ended = match step {
                Step::Unsupported { name, line } => {
                    self.out.sys(idx, &format!("{name} (line {line}) is not carried out by this service; skipped"));
                    Ok(StepResult::Skipped)
                }
                Step::SetupRemoteDocker { .. } => self.remote_docker(session, idx, &mut env).await,
                Step::Checkout { path } => self.checkout(session, idx, path.as_deref(), &env, deadline).await,
                Step::Run(r) if r.background => {
                    let (cmd, input) = self.command(r, &env, idx);
                    let (session, out, mut stop) = (session.clone(), self.out.clone(), bg_stop.subscribe());
                    background.push(tokio::spawn(async move {
                        let stopped = async move {
                            let _ = stop.wait_for(|s| *s).await;
                        };
                        let sink = |s: Stream, d: &[u8]| out.data(idx, s, d);
                        let _ = session.exec_until(&cmd, input.as_deref(), None, stopped, sink).await;
                    }));
                    Ok(StepResult::Background)
                }
                Step::Run(r) => {
                    let (cmd, input) = self.command(r, &env, idx);
                    let idle = r.no_output_timeout.unwrap_or(fleet.config.jobs.no_output_timeout);
                    self.exec(session, idx, &cmd, input.as_deref(), Some(idle), deadline).await
                }
            };
            let (state, code) = match ended {
                Ok(StepResult::Exited(0)) => ("success", Some(0)),
                Ok(StepResult::Exited(c)) => {
                    self.out.sys(idx, &format!("exited with code {c}"));
                    failed.get_or_insert((Some(c), format!("step {idx} ({label}) exited with code {c}")));
                    ("failed", Some(c))
                }
                Ok(StepResult::Skipped) => ("skipped", None),
                Ok(StepResult::Background) => ("background", None),
                Ok(StepResult::TimedOut(why)) => {
                    self.out.sys(idx, &why);
                    failed.get_or_insert((None, format!("step {idx} ({label}): {why}")));
                    ("timedout", None)
                }
                Ok(StepResult::Aborted(a)) => {
                    let _ = store.finish_step(&self.task.id, self.task.attempt, idx, "canceled", None, now_ms()).await;
                    let _ = bg_stop.send(true);
                    return Self::abort_outcome(a);
                }
                Err(o) => {
                    let _ = store.finish_step(&self.task.id, self.task.attempt, idx, "failed", None, now_ms()).await;
                    let _ = bg_stop.send(true);
                    return o;
                }
            };
            let _ = store.finish_step(&self.task.id, self.task.attempt, idx, state, code, now_ms()).await;
        }
        // Background steps end with the job.
        let _ = bg_stop.send(true);
        for b in background {
            let _ = tokio::time::timeout(Duration::from_secs(5), b).await;
        }
        match failed {
            None => Outcome { state: "success", exit_code: Some(0), reason: None },
            Some((code, why)) => Outcome { state: "failed", exit_code: code, reason: Some(why) },
        }
    }

    /// The command for a `run` step, and what goes to its standard input (the script, on
    /// Linux; on Windows the script rides inside the command).
    fn command(&self, r: &circleci::RunStep, env: &[(String, String)], idx: i64) -> (String, Option<Vec<u8>>) {
        let spec = &self.plan.spec;
        let mut all = env.to_vec();
        for (k, v) in &r.environment {
            all.retain(|(e, _)| e != k);
            all.push((k.clone(), v.clone()));
        }
        let dir = script::step_dir(&spec.working_directory, r.working_directory.as_deref());
        let shell = r.shell.as_deref().or(spec.shell.as_deref());
        let name = format!("{}-{}-{idx}", self.task.id, self.task.attempt);
        if spec.windows {
            (script::windows_step(shell, &dir, &all, &r.command, &name), None)
        } else {
            (script::linux_step(shell, &dir, &all, &format!("steps/{name}")), Some(r.command.clone().into_bytes()))
        }
    }

    /// Runs one command, streaming its output as step `idx`.
    async fn exec(
        &self,
        session: &Session,
        idx: i64,
        cmd: &str,
        input: Option<&[u8]>,
        idle: Option<Duration>,
        deadline: tokio::time::Instant,
    ) -> Result<StepResult, Outcome> {
        let mut abort = self.abort.clone();
        let stop = async move {
            tokio::select! {
                _ = abort.wait_for(Option::is_some) => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        };
        let out = self.out.clone();
        let end = session
            .exec_until(cmd, input, idle, stop, |s, d| out.data(idx, s, d))
            .await
            .map_err(|e| Outcome::infra(format!("SSH session broke: {e}")))?;
        Ok(match end {
            ExecEnd::Exited(Some(c)) => StepResult::Exited(i64::from(c)),
            ExecEnd::Exited(None) => StepResult::Exited(-1),
            ExecEnd::Idle => StepResult::TimedOut(format!(
                "no output for {} s (no_output_timeout); the step was ended",
                idle.unwrap_or_default().as_secs()
            )),
            ExecEnd::Stopped => match self.aborted() {
                Some(a) => StepResult::Aborted(a),
                None => StepResult::TimedOut(format!(
                    "the job ran longer than the long-running task timeout of {} s; the step was ended",
                    self.jobs.fleet.config.timeouts.long_running_task.as_secs()
                )),
            },
        })
    }

    async fn checkout(
        &self,
        session: &Session,
        idx: i64,
        path: Option<&str>,
        env: &[(String, String)],
        deadline: tokio::time::Instant,
    ) -> Result<StepResult, Outcome> {
        let Some(repo) = &self.job.repo else {
            self.out.sys(idx, "checkout: no repository was given with the job (--repo URL or PATH)");
            return Ok(StepResult::Exited(1));
        };
        if self.plan.spec.windows {
            self.out.sys(idx, "checkout on Windows VMs is not supported yet");
            return Ok(StepResult::Exited(1));
        }
        let write = |path: &str, bytes: Vec<u8>| {
            let cmd = script::linux_write_file(path, "600");
            async move { self.exec(session, idx, &cmd, Some(&bytes), None, deadline).await }
        };
        if let Some(key) = &self.job.deploy_key {
            let mut key = key.clone();
            if !key.ends_with('\n') {
                key.push('\n');
            }
            if !matches!(write("~/.ssh/vmfleet-deploy-key", key.into_bytes()).await?, StepResult::Exited(0)) {
                return Ok(StepResult::Exited(1));
            }
        }
        let local = std::path::Path::new(repo);
        let url = if local.is_dir() {
            // A local repository travels as a git bundle, so the VM needs no access to it.
            let bundle = match git_bundle(local).await {
                Ok(b) => b,
                Err(e) => {
                    self.out.sys(idx, &format!("checkout: bundling {repo}: {e}"));
                    return Ok(StepResult::Exited(1));
                }
            };
            if !matches!(write("~/.vmfleet/checkout.bundle", bundle).await?, StepResult::Exited(0)) {
                return Ok(StepResult::Exited(1));
            }
            None
        } else {
            Some(repo.as_str())
        };
        let script = script::checkout_script(
            url,
            self.job.revision.as_deref(),
            self.job.branch.as_deref(),
            self.job.deploy_key.is_some(),
        );
        let dir = script::step_dir(&self.plan.spec.working_directory, path);
        let name = format!("{}-{}-{idx}", self.task.id, self.task.attempt);
        let cmd = script::linux_step(None, &dir, env, &format!("steps/{name}"));
        self.exec(
            session,
            idx,
            &cmd,
            Some(script.as_bytes()),
            Some(self.jobs.fleet.config.jobs.no_output_timeout),
            deadline,
        )
        .await
    }

    /// `setup_remote_docker`: a remote-Docker VM; its TLS files are written to the job's VM and
    /// `DOCKER_HOST`, `DOCKER_TLS_VERIFY` and `DOCKER_CERT_PATH` are set for the later steps.
    async fn remote_docker(
        &mut self,
        session: &Session,
        idx: i64,
        env: &mut Vec<(String, String)>,
    ) -> Result<StepResult, Outcome> {
        let Some(ask) = self.plan.remote.clone() else { return Ok(StepResult::Skipped) };
        let vm = self.vm(&ask, true).await?;
        let fleet = self.jobs.fleet.clone();
        let remote_task = vm.task_id.clone().unwrap_or_default();
        let t = fleet.store.task(&remote_task).await.map_err(|e| Outcome::infra(e.to_string()))?;
        let ca = fleet.store.docker_ca_stored().await.map_err(|e| Outcome::infra(e.to_string()))?;
        let (Some(cert), Some(key), Some(ca)) = (t.docker_client_cert, t.docker_client_key, ca) else {
            return Err(Outcome::infra("the remote Docker VM came without TLS files"));
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        for (file, body) in [("ca.pem", ca.cert), ("cert.pem", cert), ("key.pem", key)] {
            let cmd = script::linux_write_file(&format!("~/.vmfleet/docker/{file}"), "600");
            if !matches!(
                self.exec(session, idx, &cmd, Some(body.as_bytes()), None, deadline).await?,
                StepResult::Exited(0)
            ) {
                return Ok(StepResult::Exited(1));
            }
        }
        env.push(("DOCKER_TLS_VERIFY".into(), "1".into()));
        env.push(("DOCKER_CERT_PATH".into(), "~/.vmfleet/docker".into()));
        match &vm.docker_host {
            Some(h) => {
                env.push(("DOCKER_HOST".into(), h.clone()));
                self.out.sys(idx, &format!("remote Docker engine {h} on VM {}", vm.id));
            }
            None => self.out.sys(
                idx,
                &format!(
                    "VM {} runs no Docker daemon (local provider): TLS files are in place, DOCKER_HOST is not set",
                    vm.id
                ),
            ),
        }
        Ok(StepResult::Exited(0))
    }
}

enum StepResult {
    Exited(i64),
    Skipped,
    Background,
    TimedOut(String),
    Aborted(Abort),
}

fn step_label(step: &Step) -> String {
    match step {
        Step::Checkout { .. } => "checkout".into(),
        Step::Run(r) => format!("run: {}", r.name),
        Step::SetupRemoteDocker { version, .. } => match version {
            Some(v) => format!("setup_remote_docker (version {v})"),
            None => "setup_remote_docker".into(),
        },
        Step::Unsupported { name, .. } => name.clone(),
    }
}

async fn git_bundle(repo: &std::path::Path) -> Result<Vec<u8>, String> {
    let dir = tempdir_path();
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let file = dir.join("checkout.bundle");
    let out = tokio::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["bundle", "create"])
        .arg(&file)
        .args(["HEAD", "--branches", "--tags"])
        .output()
        .await
        .map_err(|e| format!("running git: {e}"))?;
    let result = if out.status.success() {
        std::fs::read(&file).map_err(|e| e.to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    };
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempdir_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("vmfleet-checkout-{}", short_id()))
}

/// A task's output on its way to the store: chunks are batched (every 200 ms) and decoded as
/// UTF-8 without splitting a character across chunks.
#[derive(Clone)]
struct Output {
    tx: mpsc::UnboundedSender<(i64, &'static str, Vec<u8>)>,
    flusher: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Output {
    fn start(fleet: Arc<Fleet>, t: &JobTaskRow) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(i64, &'static str, Vec<u8>)>();
        let (task, attempt, job) = (t.id.clone(), t.attempt, t.job_id.clone());
        let flusher = tokio::spawn(async move {
            let mut seq = 0i64;
            let mut carry: HashMap<(i64, &'static str), Vec<u8>> = HashMap::new();
            let mut open = true;
            while open {
                let mut batch = Vec::new();
                match rx.recv().await {
                    Some(m) => batch.push(m),
                    None => open = false,
                }
                let until = tokio::time::Instant::now() + Duration::from_millis(200);
                while open {
                    match tokio::time::timeout_at(until, rx.recv()).await {
                        Ok(Some(m)) => batch.push(m),
                        Ok(None) => open = false,
                        Err(_) => break,
                    }
                }
                let mut chunks = Vec::new();
                for (step, stream, bytes) in batch {
                    let buf = carry.entry((step, stream)).or_default();
                    buf.extend_from_slice(&bytes);
                    let text = take_utf8(buf, !open);
                    if text.is_empty() {
                        continue;
                    }
                    seq += 1;
                    chunks.push(OutputChunk {
                        job_task_id: task.clone(),
                        attempt,
                        seq,
                        job_id: job.clone(),
                        step,
                        stream: stream.to_string(),
                        data: text,
                        at: now_ms(),
                    });
                }
                if let Err(e) = fleet.store.append_output(&chunks).await {
                    warn!(task = %task, error = %e, "output not stored");
                }
            }
        });
        Self { tx, flusher: Arc::new(Mutex::new(Some(flusher))) }
    }

    fn data(&self, step: i64, stream: Stream, bytes: &[u8]) {
        let s = match stream {
            Stream::Stdout => "out",
            Stream::Stderr => "err",
        };
        let _ = self.tx.send((step, s, bytes.to_vec()));
    }

    fn sys(&self, step: i64, line: &str) {
        let _ = self.tx.send((step, "sys", format!("{line}\n").into_bytes()));
    }

    /// Stores what is left and stops.
    async fn close(self) {
        let flusher = self.flusher.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(self.tx);
        if let Some(f) = flusher {
            let _ = f.await;
        }
    }
}

/// Takes the longest valid UTF-8 prefix of `buf` (all of it, lossily, when `last`), leaving an
/// incomplete character at its end for the next chunk.
fn take_utf8(buf: &mut Vec<u8>, last: bool) -> String {
    let valid = match std::str::from_utf8(buf) {
        Ok(_) => buf.len(),
        Err(e) if e.error_len().is_none() && !last => e.valid_up_to(),
        Err(_) => buf.len(),
    };
    let rest = buf.split_off(valid);
    let text = String::from_utf8_lossy(buf).into_owned();
    *buf = rest;
    text
}

/// New output of a job since `cursors` ((task, attempt) → last sequence read), in order per
/// task; updates the cursors. Used by the API's stream and the in-process `vmfleet run`.
///
/// # Errors
/// Store errors.
pub async fn poll_output(
    store: &crate::store::Store,
    job_id: &str,
    cursors: &mut HashMap<(String, i64), i64>,
) -> Result<Vec<(i64, OutputChunk)>, StoreError> {
    let mut out = Vec::new();
    for t in store.job_tasks(job_id).await? {
        for attempt in 1..=t.attempt {
            let cur = cursors.entry((t.id.clone(), attempt)).or_insert(0);
            loop {
                let chunks = store.output(&t.id, attempt, *cur, 500).await?;
                let n = chunks.len();
                for c in chunks {
                    *cur = c.seq;
                    out.push((t.node_index, c));
                }
                if n < 500 {
                    break;
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_not_split_across_chunks() {
        let mut buf = "é".as_bytes()[..1].to_vec();
        assert_eq!(take_utf8(&mut buf, false), "");
        buf.extend_from_slice(&"é".as_bytes()[1..]);
        assert_eq!(take_utf8(&mut buf, false), "é");
        assert!(buf.is_empty());
    }
}
