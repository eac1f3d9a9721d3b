//! One attempt of one job task: its VM from the fleet, its steps over SSH, its output to the
//! store as it comes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::warn;
use vmfleet_provisioner::ssh::{self, ExecEnd, Session, Stream};

use super::circleci::{self, Step, When};
use super::{script, Abort, Jobs, Outcome, Plan, VmAsk};
use crate::fleet::{Fleet, TaskRequest};
use crate::secrets::{JobSecrets, Masker};
use crate::store::{now_ms, short_id, JobRow, JobTaskRow, OutputChunk, StoreError};
/// One attempt of one job task on its VM.
pub(super) struct Run<'a> {
    pub(super) jobs: Arc<Jobs>,
    pub(super) job: &'a JobRow,
    pub(super) plan: &'a Plan,
    pub(super) task: &'a JobTaskRow,
    pub(super) out: &'a Output,
    pub(super) abort: watch::Receiver<Option<Abort>>,
    /// Fleet tasks to release at the end.
    pub(super) held: Vec<String>,
    /// The job's variables and keys.
    pub(super) secrets: &'a JobSecrets,
    /// Bytes this task has put in the object store.
    pub(super) stored_bytes: u64,
}

impl Run<'_> {
    fn aborted(&self) -> Option<Abort> {
        *self.abort.borrow()
    }

    pub(super) fn abort_outcome(a: Abort) -> Outcome {
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
        let (task, owner) = (&self.task.id, &self.jobs.owner);
        let set = || fleet.store.set_job_fleet_task(task, owner, &id, remote);
        match super::retry_db(task, "recording the VM task", set).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => return Err(Self::abort_outcome(Abort::ClaimLost)),
            Err(e) => return Err(Outcome::infra(format!("recording the VM task: {e}"))),
        }
        let ft = super::ask_vm(fleet, &req, &id).await.map_err(|e| Outcome::infra(format!("asking for a VM: {e}")))?;
        self.held.push(ft.id.clone());
        self.out.sys(0, &format!("waiting for a {} VM ({}), task {}", ask.executor, ask.pool(), ft.id));
        loop {
            if let Some(a) = self.aborted() {
                return Err(Self::abort_outcome(a));
            }
            // An unreachable store delays the wait (the claim is renewed meanwhile), not fails it.
            let t = match fleet.store.task(&ft.id).await {
                Ok(t) => t,
                Err(StoreError::Db(e)) => {
                    warn!(task = %ft.id, error = %e, "could not read the VM task; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(e) => return Err(Outcome::infra(e.to_string())),
            };
            match t.state.as_str() {
                "assigned" => {
                    let vm_id = t.vm_id.unwrap_or_default();
                    let vm = match fleet.store.vm(&vm_id).await {
                        Ok(vm) => vm,
                        Err(StoreError::Db(e)) => {
                            warn!(vm = %vm_id, error = %e, "could not read the VM; retrying");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                        Err(e) => return Err(Outcome::infra(e.to_string())),
                    };
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

    pub(super) async fn execute(&mut self) -> Outcome {
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
        let builtin: Vec<(String, String)> = vec![
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
        // As CircleCI: project variables, then contexts', then the built-ins, then the config's.
        let mut env = self.secrets.env.clone();
        for (k, v) in builtin {
            env.retain(|(e, _)| *e != k);
            env.push((k, v));
        }
        for (k, v) in [
            ("CIRCLE_SHA1", &self.job.revision),
            ("CIRCLE_BRANCH", &self.job.branch),
            ("CIRCLE_REPOSITORY_URL", &self.job.repo),
            ("CIRCLE_TAG", &self.job.tag),
            ("CIRCLE_WORKFLOW_ID", &self.job.workflow_id),
        ] {
            if let Some(v) = v {
                env.retain(|(e, _)| e != k);
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
        if !spec.windows {
            if let Err(o) = self.install_tools(session, deadline).await {
                return o;
            }
        }
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
                Step::SaveCache { when, .. }
                | Step::RestoreCache { when, .. }
                | Step::PersistToWorkspace { when, .. }
                | Step::AttachWorkspace { when, .. }
                | Step::StoreArtifacts { when, .. }
                | Step::StoreTestResults { when, .. } => *when,
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
                Step::SaveCache { .. }
                | Step::RestoreCache { .. }
                | Step::PersistToWorkspace { .. }
                | Step::AttachWorkspace { .. }
                | Step::StoreArtifacts { .. }
                | Step::StoreTestResults { .. } => self.storage_step(session, idx, step, &env, deadline).await,
                Step::AddSshKeys { fingerprints } => self.add_ssh_keys(session, idx, fingerprints, deadline).await,
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
                        out.end_step(idx);
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
            if state != "background" {
                self.out.end_step(idx);
            }
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
    pub(super) async fn exec(
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
        if let Some(key) = &self.secrets.deploy_key {
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
            self.secrets.deploy_key.is_some(),
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
        let job = &self.job.id;
        let t = super::db_retry(job, "reading the remote Docker task", || fleet.store.task(&remote_task)).await?;
        let ca = super::db_retry(job, "reading the Docker CA", || fleet.store.docker_ca_stored()).await?;
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

impl Run<'_> {
    /// `add_ssh_keys`: the project's keys (those named, by either fingerprint, or all) go to
    /// `~/.ssh/id_rsa_<fingerprint>` (0600), each with a `Host` entry in `~/.ssh/config`: its
    /// host, or every host for a key added without one.
    async fn add_ssh_keys(
        &self,
        session: &Session,
        idx: i64,
        fingerprints: &[String],
        deadline: tokio::time::Instant,
    ) -> Result<StepResult, Outcome> {
        if self.plan.spec.windows {
            self.out.sys(idx, "add_ssh_keys on Windows VMs is not supported yet");
            return Ok(StepResult::Exited(1));
        }
        let keys = &self.secrets.ssh_keys;
        let mut chosen = Vec::new();
        if fingerprints.is_empty() {
            chosen.extend(keys.iter());
        }
        for f in fingerprints {
            let md5 = f.trim().trim_start_matches("MD5:").to_ascii_lowercase();
            match keys.iter().find(|k| k.sha256 == f.trim() || k.md5 == md5) {
                Some(k) => chosen.push(k),
                None => {
                    self.out.sys(
                        idx,
                        &format!(
                            "add_ssh_keys: project {} has no SSH key {f} (vmfleet projects ssh-keys add)",
                            self.job.project
                        ),
                    );
                    return Ok(StepResult::Exited(1));
                }
            }
        }
        if chosen.is_empty() {
            self.out.sys(idx, &format!("add_ssh_keys: project {} has no SSH keys", self.job.project));
            return Ok(StepResult::Exited(0));
        }
        let mut config = String::from("\n# added by add_ssh_keys\n");
        let mut any_host = Vec::new();
        for k in &chosen {
            let file = format!("id_rsa_{}", k.md5.replace(':', ""));
            let cmd = script::linux_write_file(&format!("~/.ssh/{file}"), "600");
            if !matches!(
                self.exec(session, idx, &cmd, Some(k.private_key.as_bytes()), None, deadline).await?,
                StepResult::Exited(0)
            ) {
                return Ok(StepResult::Exited(1));
            }
            match &k.host {
                Some(h) => config.push_str(&format!("Host {h}\n  IdentityFile ~/.ssh/{file}\n")),
                None => any_host.push(file),
            }
            self.out.sys(idx, &format!("added SSH key {} ({})", k.sha256, k.host.as_deref().unwrap_or("every host")));
        }
        if !any_host.is_empty() {
            config.push_str("Host *\n");
            for f in any_host {
                config.push_str(&format!("  IdentityFile ~/.ssh/{f}\n"));
            }
        }
        let cmd = "set -e; umask 077; mkdir -p ~/.ssh; cat >> ~/.ssh/config; chmod 600 ~/.ssh/config";
        self.exec(session, idx, cmd, Some(config.as_bytes()), None, deadline).await
    }
}

pub(super) enum StepResult {
    Exited(i64),
    Skipped,
    Background,
    TimedOut(String),
    Aborted(Abort),
}

pub(super) fn step_label(step: &Step) -> String {
    match step {
        Step::Checkout { .. } => "checkout".into(),
        Step::Run(r) => format!("run: {}", r.name),
        Step::SetupRemoteDocker { version, .. } => match version {
            Some(v) => format!("setup_remote_docker (version {v})"),
            None => "setup_remote_docker".into(),
        },
        Step::AddSshKeys { .. } => "add_ssh_keys".into(),
        Step::SaveCache { .. } => "save_cache".into(),
        Step::RestoreCache { .. } => "restore_cache".into(),
        Step::PersistToWorkspace { .. } => "persist_to_workspace".into(),
        Step::AttachWorkspace { .. } => "attach_workspace".into(),
        Step::StoreArtifacts { .. } => "store_artifacts".into(),
        Step::StoreTestResults { .. } => "store_test_results".into(),
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

/// The marker [`Output::end_step`] sends in place of a stream name.
const END_STEP: &str = "end";

/// A task's output on its way to the store: chunks are batched (every 200 ms) and decoded as
/// UTF-8 without splitting a character across chunks.
#[derive(Clone)]
pub(super) struct Output {
    tx: mpsc::UnboundedSender<(i64, &'static str, Vec<u8>)>,
    flusher: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Output {
    /// Starts the flusher; every stream passes through `masker` on its way to the store.
    pub(super) fn start(fleet: Arc<Fleet>, t: &JobTaskRow, masker: Masker) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(i64, &'static str, Vec<u8>)>();
        let (task, attempt, job) = (t.id.clone(), t.attempt, t.job_id.clone());
        let flusher = tokio::spawn(async move {
            let mut seq = 0i64;
            // Per (step, stream): bytes the masker holds back, then bytes of an unfinished
            // UTF-8 character.
            let mut held: HashMap<(i64, &'static str), Vec<u8>> = HashMap::new();
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
                let mut ready: Vec<((i64, &'static str), Vec<u8>, bool)> = Vec::new();
                for (step, stream, bytes) in batch {
                    if stream == END_STEP {
                        let mut keys: Vec<_> = held.keys().filter(|k| k.0 == step).copied().collect();
                        keys.sort();
                        for k in keys {
                            let mut buf = held.remove(&k).unwrap_or_default();
                            ready.push((k, masker.take(&mut buf, true), true));
                        }
                    } else {
                        let buf = held.entry((step, stream)).or_default();
                        buf.extend_from_slice(&bytes);
                        let last = stream == "sys";
                        ready.push(((step, stream), masker.take(buf, last), false));
                    }
                }
                if !open {
                    let mut keys: Vec<_> = held.keys().chain(carry.keys()).copied().collect();
                    keys.sort();
                    keys.dedup();
                    for k in keys {
                        let mut buf = held.remove(&k).unwrap_or_default();
                        ready.push((k, masker.take(&mut buf, true), true));
                    }
                }
                let mut chunks = Vec::new();
                for (key, bytes, last) in ready {
                    let buf = carry.entry(key).or_default();
                    buf.extend_from_slice(&bytes);
                    let text = take_utf8(buf, last);
                    if last {
                        carry.remove(&key);
                    }
                    if text.is_empty() {
                        continue;
                    }
                    seq += 1;
                    chunks.push(OutputChunk {
                        job_task_id: task.clone(),
                        attempt,
                        seq,
                        job_id: job.clone(),
                        step: key.0,
                        stream: key.1.to_string(),
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

    /// Says that step `step` will print no more: what the masker held back for it goes out.
    pub(super) fn end_step(&self, step: i64) {
        let _ = self.tx.send((step, END_STEP, Vec::new()));
    }

    pub(super) fn data(&self, step: i64, stream: Stream, bytes: &[u8]) {
        let s = match stream {
            Stream::Stdout => "out",
            Stream::Stderr => "err",
        };
        let _ = self.tx.send((step, s, bytes.to_vec()));
    }

    pub(super) fn sys(&self, step: i64, line: &str) {
        let _ = self.tx.send((step, "sys", format!("{line}\n").into_bytes()));
    }

    /// Stores what is left and stops.
    pub(super) async fn close(self) {
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
