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
mod junit;
pub mod retention;
mod runner;
pub mod script;
mod storage;
mod workflows;

pub use crate::yaml;
pub use workflows::PipelineSubmission;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};
use vmfleet_images::Executor as FleetExecutor;

use crate::fleet::{pool_key, tokio_util_shutdown::Shutdown, Fleet, FleetError, TaskRequest};
use crate::secrets::{JobSecrets, Secrets, SecretsError};
use crate::store::{now_ms, short_id, JobRow, JobTaskRow, OutputChunk, StoreError, TaskRow};
use circleci::{ConfigFile, Executor, JobSpec, Pipeline, Step};
use runner::{Output, Run};

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
    /// The workflow the job runs in: its entry for the job gives the contexts and instance
    /// parameters (needed only when the job's workflows disagree on them).
    #[serde(default)]
    pub workflow: Option<String>,
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
    /// The secrets key and the jobs' secrets.
    pub secrets: Arc<Secrets>,
    /// Where caches, workspaces, artifacts and test results go.
    pub objects: Arc<dyn crate::objects::ObjectStore>,
    /// This process's claim name.
    pub owner: String,
    wake: Notify,
    running: Mutex<HashMap<String, watch::Sender<Option<Abort>>>>,
    last_renew: Mutex<i64>,
    last_sweep: Mutex<i64>,
    last_retention: Mutex<i64>,
}

/// How often each process advances every running workflow, whatever it was told.
const WORKFLOW_SWEEP_MS: i64 = 2_000;

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs").field("owner", &self.owner).finish_non_exhaustive()
    }
}

fn bad(e: impl std::fmt::Display) -> FleetError {
    FleetError::BadRequest(e.to_string())
}

fn plan_file(sub: &JobSubmission) -> &str {
    sub.config_file.as_deref().unwrap_or("config.yml")
}

/// A secrets error as the fleet's: what the caller got wrong is a bad request, prefixed `at`.
pub(crate) fn secrets_error(e: SecretsError, at: &str) -> FleetError {
    match e {
        SecretsError::Invalid(m) => FleetError::BadRequest(format!("{at}: {m}")),
        SecretsError::Store(e) => e.into(),
        e => FleetError::Conflict(e.to_string()),
    }
}

impl Jobs {
    /// The job service over `fleet`.
    pub fn new(fleet: Arc<Fleet>, secrets: Arc<Secrets>, objects: Arc<dyn crate::objects::ObjectStore>) -> Arc<Self> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let owner = format!("{}-{}-{}", host.trim(), std::process::id(), &short_id()[..6]);
        Arc::new(Self {
            fleet,
            secrets,
            objects,
            owner,
            wake: Notify::new(),
            running: Mutex::new(HashMap::new()),
            last_renew: Mutex::new(0),
            last_sweep: Mutex::new(0),
            last_retention: Mutex::new(now_ms()),
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
            workflow: sub.workflow.clone(),
            ..Default::default()
        };
        let spec = cfg.job(&sub.job, &sub.parameters, &pipeline).map_err(bad)?;
        crate::fleet::validate_project(&sub.project)?;
        self.plan_spec(spec, &file)
    }

    /// The VMs a resolved job needs, checked against what this installation offers.
    fn plan_spec(&self, spec: JobSpec, file: &str) -> Result<Plan, FleetError> {
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
        // Refused before anything is recorded or any VM asked for.
        if let Err(e) = self.secrets.check_contexts(&sub.project, &plan.spec.contexts).await {
            return Err(secrets_error(e, &format!("{}:{}: job {}", plan_file(sub), plan.spec.line, plan.spec.name)));
        }
        let now = now_ms();
        let id = format!("job-{}", short_id());
        let spec = serde_json::to_string(&plan).map_err(FleetError::other("encoding the job"))?;
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
            deploy_key: sub
                .deploy_key
                .as_deref()
                .filter(|k| !k.trim().is_empty())
                .map(|k| self.secrets.seal_deploy_key(&id, k)),
            parallelism: i64::from(plan.spec.parallelism),
            state: "queued".into(),
            cancel_requested: false,
            failure_reason: None,
            queued_at: now,
            started_at: None,
            finished_at: None,
            workflow_id: None,
            tag: None,
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
        // A blocked job ended without tasks: what requires it will not run.
        self.advance_job_workflow(&job.id).await;
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
        let renew_due = {
            let last = self.last_renew.lock().unwrap_or_else(|p| p.into_inner());
            now - *last >= lease_ms / 3
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
            // Only a pass that renewed them all counts: after a failed one the next pass tries again.
            *self.last_renew.lock().unwrap_or_else(|p| p.into_inner()) = now;
        }
        // Renewal comes first, and this process never requeues what it still runs: after the
        // store was unreachable for longer than a lease, the owner keeps its tasks (and their
        // VMs) rather than running them a second time.
        for t in store.expired_job_tasks(now).await? {
            if t.owner.as_deref() == Some(self.owner.as_str()) && mine.iter().any(|(id, _)| *id == t.id) {
                continue;
            }
            if let Some(state) = store.requeue_expired(&t, settings.max_attempts, now).await? {
                let owner = t.owner.as_deref().unwrap_or("?");
                warn!(task = %t.id, job = %t.job_id, %owner, state, "claim expired; its VM is released");
                let payload = format!("claim of {owner} expired at attempt {}; now {state}", t.attempt);
                self.fleet.audit("workflow.job.requeue", "dispatcher", &t.id, &payload).await;
                self.fleet.wake();
                self.finish_job(&t.job_id).await;
            }
        }
        let sweep_due = {
            let mut last = self.last_sweep.lock().unwrap_or_else(|p| p.into_inner());
            let due = now - *last >= WORKFLOW_SWEEP_MS;
            if due {
                *last = now;
            }
            due
        };
        if sweep_due {
            self.sweep_workflows().await;
        }
        let retention_due = {
            let mut last = self.last_retention.lock().unwrap_or_else(|p| p.into_inner());
            let due = now - *last >= self.fleet.config.gc.interval.as_millis() as i64;
            if due {
                *last = now;
            }
            due
        };
        if retention_due {
            // Listing the object store may be slow; the dispatcher does not wait for it.
            let me = self.clone();
            tokio::spawn(async move {
                let store = &me.fleet.store;
                match retention::plan(store, me.objects.as_ref(), &me.fleet.config, now_ms()).await {
                    Ok(actions) if !actions.is_empty() => {
                        let (done, errors) = retention::apply(store, me.objects.as_ref(), &actions).await;
                        info!(done, failed = errors.len(), "retention pass");
                        for e in errors.iter().take(5) {
                            warn!(error = %e, "retention");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "retention pass failed; the next one retries"),
                }
            });
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

    /// The variables and keys a job gets, with its deploy key among the masked values; the
    /// error says why it may not have them (a context deleted or restricted since submission).
    async fn job_secrets(&self, job: &JobRow, plan: &Plan) -> Result<JobSecrets, Outcome> {
        // An unreachable store is retried while the claim is renewed, as the task's end is.
        use backon::Retryable;
        let mut s = (|| self.secrets.for_job(&job.project, &plan.spec.contexts))
            .retry(db_backoff(60))
            .when(|e| matches!(e, SecretsError::Store(StoreError::Db(_))))
            .notify(|e, wait| warn!(job = %job.id, error = %e, ?wait, "could not read the job's secrets; retrying"))
            .await
            .map_err(|e| {
                let why = format!("job {}: {e}", plan.spec.name);
                match e {
                    SecretsError::Invalid(_) => Outcome { state: "failed", exit_code: None, reason: Some(why) },
                    _ => Outcome::infra(why),
                }
            })?;
        if let Some(stored) = &job.deploy_key {
            let key = self
                .secrets
                .open_deploy_key(&job.id, stored)
                .map_err(|e| Outcome::infra(format!("deploy key: {e}")))?;
            s.deploy_key = Some(key);
            s.remask();
        }
        Ok(s)
    }

    /// Ends a job whose tasks have all ended, and audits it.
    async fn finish_job(&self, job_id: &str) {
        match self.fleet.store.finish_job_if_done(job_id, now_ms()).await {
            Ok(Some(state)) => {
                info!(job = %job_id, %state, "job finished");
                self.fleet.audit("workflow.job.finish", "dispatcher", job_id, &state).await;
                self.advance_job_workflow(job_id).await;
            }
            Ok(None) => {}
            Err(e) => warn!(job = %job_id, error = %e, "could not end the job"),
        }
    }

    /// Moves the workflow of a job that changed forward (a job on its own has none).
    async fn advance_job_workflow(&self, job_id: &str) {
        match self.fleet.store.job(job_id).await {
            Ok(JobRow { workflow_id: Some(w), .. }) => self.advance(&w).await,
            Ok(_) => {}
            Err(e) => warn!(job = %job_id, error = %e, "could not read the job; the workflow sweep will advance it"),
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
        let plan = serde_json::from_str::<Plan>(&job.spec);
        // The secrets come before any output, so the first line is already masked.
        let secrets = match &plan {
            Ok(plan) => self.job_secrets(&job, plan).await,
            Err(_) => Ok(JobSecrets::default()),
        };
        let out = Output::start(self.fleet.clone(), &t, secrets.as_ref().map(|s| s.masker.clone()).unwrap_or_default());
        let outcome = match (plan, secrets) {
            (Ok(_), Err(outcome)) => {
                out.sys(0, outcome.reason.as_deref().unwrap_or_default());
                outcome
            }
            (Ok(plan), Ok(secrets)) => {
                if store.start_job(&job.id, now_ms()).await.unwrap_or(false) {
                    self.fleet.audit("workflow.job.start", &self.owner, &job.id, &plan.spec.name).await;
                }
                let mut run = Run {
                    jobs: self.clone(),
                    job: &job,
                    plan: &plan,
                    task: &t,
                    out: &out,
                    abort,
                    held: Vec::new(),
                    secrets: &secrets,
                    stored_bytes: 0,
                };
                let outcome = run.execute().await;
                for fleet_task in &run.held {
                    if let Err(e) = self.fleet.release_task(fleet_task).await {
                        warn!(task = %fleet_task, error = %e, "release failed; the collector will retire its VM");
                    }
                }
                outcome
            }
            (Err(e), _) => Outcome::infra(format!("stored job is unreadable: {e}")),
        };
        let status = match (&outcome.reason, outcome.exit_code) {
            (Some(r), _) => format!("{} ({r})", outcome.state),
            (None, Some(c)) => format!("{} (exit code {c})", outcome.state),
            (None, None) => outcome.state.to_string(),
        };
        out.sys(-1, &format!("task {} node {}: {status}", t.id, t.node_index));
        out.close().await;
        let reason = outcome.reason.as_deref();
        // The claim stays renewed while this retries (the task is still ours), so an unreachable
        // store delays the record of the outcome instead of running the task again.
        use backon::Retryable;
        let ended = (|| store.finish_job_task(&t.id, &self.owner, outcome.state, outcome.exit_code, reason, now_ms()))
            .retry(db_backoff(120))
            .when(|e| matches!(e, StoreError::Db(_)))
            .notify(|e, wait| warn!(task = %t.id, error = %e, ?wait, "could not record the task's end; retrying"))
            .await;
        match ended {
            Ok(true) => self.finish_job(&t.job_id).await,
            Ok(false) => warn!(task = %t.id, "claim lost before the task ended; its outcome is not recorded"),
            Err(e) => warn!(task = %t.id, error = %e, "could not record the task's end; the claim will expire"),
        }
    }
}

/// Backoff for a job's store calls through a database outage: up to about `times` × 5 s.
fn db_backoff(times: usize) -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(times)
        .with_jitter()
}

/// A store call of a running job, retried while the database is unreachable (the claim stays
/// renewed meanwhile, so the job waits out an outage rather than failing); `what` names it in
/// the log and in the error that ends the job if the outage outlasts about five minutes.
async fn db_retry<T, F, Fut>(job: &str, what: &str, f: F) -> Result<T, Outcome>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    retry_db(job, what, f).await.map_err(|e| Outcome::infra(format!("{what}: {e}")))
}

/// [`db_retry`], keeping the store's error for the caller.
async fn retry_db<T, F, Fut>(job: &str, what: &str, f: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    retry_unreachable(job, what, f, |e| matches!(e, StoreError::Db(_))).await
}

/// Asks the fleet for a VM under the task id the job recorded, waiting out a database outage
/// as [`retry_db`] does (a try whose answer was lost after its commit gets the recorded task
/// back: the id is the request's idempotency token).
async fn ask_vm(fleet: &Fleet, req: &TaskRequest, id: &str) -> Result<TaskRow, FleetError> {
    let ask = || fleet.request_task_as(req, id.to_string());
    retry_unreachable(id, "asking for a VM", ask, |e| matches!(e, FleetError::Store(StoreError::Db(_)))).await
}

/// `f`, retried with [`db_backoff`] while `unreachable` says its error is the database's.
async fn retry_unreachable<T, E, F, Fut>(job: &str, what: &str, f: F, unreachable: fn(&E) -> bool) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    use backon::Retryable;
    f.retry(db_backoff(60))
        .when(unreachable)
        .notify(|e, wait| warn!(job, error = %e, ?wait, "{what}: the store is unreachable; retrying"))
        .await
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
