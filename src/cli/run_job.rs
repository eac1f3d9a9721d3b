//! `vmfleet run` and `vmfleet jobs …`: submit a CircleCI job and stream its output, against a
//! server or, when none runs, an in-process fleet on the embedded default.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use crate::api::views::{JobView, OutputView};
use crate::client::Client;
use crate::config::Config;
use crate::jobs::{poll_output, JobSubmission};

/// `vmfleet run` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The CircleCI config file.
    pub config_file: PathBuf,
    /// Run one job: its name, or a workflow instance's name (matrix instances included).
    /// Without it the file's workflows run (all, or the one --workflow names).
    #[arg(long)]
    pub job: Option<String>,
    /// Project (DLC volumes belong to it); default `local/<repository or config directory>`.
    #[arg(long)]
    pub project: Option<String>,
    /// What `checkout` clones: a git URL or a local repository; default the git work tree the
    /// config file is in.
    #[arg(long)]
    pub repo: Option<String>,
    /// Revision to check out (default: the repository's HEAD).
    #[arg(long)]
    pub revision: Option<String>,
    /// Branch name the job sees (`CIRCLE_BRANCH`).
    #[arg(long)]
    pub branch: Option<String>,
    /// SSH private key file `checkout` clones with.
    #[arg(long)]
    pub deploy_key: Option<PathBuf>,
    /// With --job, a job parameter; without, a pipeline parameter: `NAME=VALUE` (repeatable).
    #[arg(long = "param", value_parser = key_value)]
    pub params: Vec<(String, String)>,
    /// A pipeline parameter, `NAME=VALUE` (repeatable).
    #[arg(long = "pipeline-param", value_parser = key_value)]
    pub pipeline_params: Vec<(String, String)>,
    /// Without --job: run only this workflow. With --job: the workflow the job runs in (its
    /// entry's contexts and parameters apply), needed only when the job's workflows disagree.
    #[arg(long)]
    pub workflow: Option<String>,
    /// A tag pipeline for this tag (`filters.tags`, `CIRCLE_TAG`); not with --branch.
    #[arg(long, conflicts_with = "branch")]
    pub tag: Option<String>,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("{s:?} is not NAME=VALUE"))
}

/// Exit status when the config or the job is refused (nothing was queued).
pub const REFUSED: u8 = 2;

/// Exit status for a job's end: its failing step's code when it failed, 0 on success, 3 for an
/// infrastructure failure, 4 when canceled.
pub fn exit_code(v: &JobView) -> u8 {
    match v.state.as_str() {
        "success" => 0,
        "failed" => v.exit_code.and_then(|c| u8::try_from(c).ok()).filter(|c| *c != 0).unwrap_or(1),
        "canceled" => 4,
        _ => 3,
    }
}

/// Builds the submission: reads the config (and deploy key), finds the repository.
///
/// # Errors
/// Unreadable files.
pub fn submission(a: &RunArgs) -> anyhow::Result<JobSubmission> {
    let job = a.job.clone().ok_or_else(|| anyhow!("--job names the job to run"))?;
    if a.tag.is_some() {
        bail!("--tag makes a tag pipeline: leave out --job to run the workflows");
    }
    let (config, project, repo, deploy_key) = sources(a)?;
    Ok(JobSubmission {
        config,
        config_file: Some(a.config_file.display().to_string()),
        job,
        project,
        repo,
        revision: a.revision.clone(),
        branch: a.branch.clone(),
        deploy_key,
        parameters: a.params.iter().cloned().collect::<BTreeMap<_, _>>(),
        pipeline_parameters: a.pipeline_params.iter().cloned().collect::<BTreeMap<_, _>>(),
        workflow: a.workflow.clone(),
    })
}

/// The config's text, the project, the repository and the deploy key of a run.
pub(crate) fn sources(a: &RunArgs) -> anyhow::Result<(String, String, Option<String>, Option<String>)> {
    let config =
        std::fs::read_to_string(&a.config_file).with_context(|| format!("reading {}", a.config_file.display()))?;
    let repo = match &a.repo {
        Some(r) if Path::new(r).exists() => Some(std::fs::canonicalize(r)?.display().to_string()),
        Some(r) => Some(r.clone()),
        None => git_toplevel(&a.config_file),
    };
    let project = a.project.clone().unwrap_or_else(|| {
        let base = repo
            .as_deref()
            .filter(|r| Path::new(r).is_dir())
            .map(PathBuf::from)
            .or_else(|| std::fs::canonicalize(&a.config_file).ok().and_then(|p| p.parent().map(Path::to_path_buf)));
        let name = base
            .and_then(|b| b.file_name().map(|n| n.to_string_lossy().to_string()))
            .unwrap_or_else(|| "project".into());
        let clean: String =
            name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' }).collect();
        format!("local/{clean}")
    });
    let deploy_key = match &a.deploy_key {
        Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("reading the deploy key {}", p.display()))?),
        None => None,
    };
    Ok((config, project, repo, deploy_key))
}

pub(crate) fn git_toplevel(file: &Path) -> Option<String> {
    let dir = std::fs::canonicalize(file).ok()?.parent()?.to_path_buf();
    let out =
        std::process::Command::new("git").arg("-C").arg(&dir).args(["rev-parse", "--show-toplevel"]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Prints output chunks as they come: `sys` lines as `==> …`, stderr to stderr, and every line
/// prefixed with its node when the job runs on several.
pub struct Printer {
    parallel: bool,
    label: Option<String>,
    at_line_start: HashMap<(i64, String), bool>,
}

impl Printer {
    /// A printer for a job of `parallelism` tasks.
    pub fn new(parallelism: i64) -> Self {
        Self { parallel: parallelism > 1, label: None, at_line_start: HashMap::new() }
    }

    /// A printer for one job of a workflow: every line starts with its name.
    pub fn labeled(label: &str, parallelism: i64) -> Self {
        Self { label: Some(label.to_string()), ..Self::new(parallelism) }
    }

    /// Prints one chunk.
    pub fn print(&mut self, o: &OutputView) {
        let tag = match (&self.label, self.parallel) {
            (Some(l), true) => Some(format!("{l}/{}", o.node)),
            (Some(l), false) => Some(l.clone()),
            (None, true) => Some(o.node.to_string()),
            (None, false) => None,
        };
        let prefix = match (tag, o.stream.as_str()) {
            (Some(t), "sys") => format!("[{t}] ==> "),
            (Some(t), _) => format!("[{t}] "),
            (None, "sys") => "==> ".into(),
            (None, _) => String::new(),
        };
        let start = self.at_line_start.entry((o.node, o.stream.clone())).or_insert(true);
        let mut text = String::new();
        for piece in o.data.split_inclusive('\n') {
            if *start {
                text.push_str(&prefix);
            }
            text.push_str(piece);
            *start = piece.ends_with('\n');
        }
        if o.stream == "err" {
            let mut e = std::io::stderr();
            let _ = e.write_all(text.as_bytes());
            let _ = e.flush();
        } else {
            let mut s = std::io::stdout();
            let _ = s.write_all(text.as_bytes());
            let _ = s.flush();
        }
    }
}

/// `vmfleet run` against a server: submit, then follow the output stream.
///
/// # Errors
/// Transport or API errors (a refused config prints its file and line).
pub async fn run_remote(api: &Client, sub: &JobSubmission) -> anyhow::Result<u8> {
    let body = serde_json::to_value(sub)?;
    let job: JobView = match api.post("/api/v1/jobs", &body).await {
        Ok(j) => j,
        Err(e) if e.to_string().starts_with("400 ") => {
            eprintln!("error: {e}");
            return Ok(REFUSED);
        }
        Err(e) => return Err(e),
    };
    eprintln!(
        "==> job {} #{} ({}) queued: {} task(s) in pool {}",
        job.id, job.number, job.name, job.parallelism, job.pool
    );
    follow_remote(api, &job.id, Printer::new(job.parallelism), true).await
}

/// Server-sent events, split out of the chunks of a response as they arrive.
#[derive(Default)]
struct SseParser {
    buf: String,
    event: String,
}

impl SseParser {
    /// The (event, data) pairs completed by `chunk`.
    fn feed(&mut self, chunk: &[u8]) -> Vec<(String, String)> {
        self.buf.push_str(&String::from_utf8_lossy(chunk));
        let mut out = Vec::new();
        while let Some(nl) = self.buf.find('\n') {
            let line = self.buf[..nl].trim_end_matches('\r').to_string();
            self.buf.drain(..=nl);
            if let Some(e) = line.strip_prefix("event:") {
                self.event = e.trim().to_string();
            } else if let Some(d) = line.strip_prefix("data:") {
                out.push((self.event.clone(), d.strip_prefix(' ').unwrap_or(d).to_string()));
            }
        }
        out
    }
}

/// Follows a job's output stream from a server, printing it with `printer`, until the job ends (or, without `follow`, prints
/// what there is now); returns its exit status once it ended.
///
/// # Errors
/// Transport or API errors.
pub async fn follow_remote(api: &Client, job_id: &str, mut printer: Printer, follow: bool) -> anyhow::Result<u8> {
    let query = if follow { "" } else { "?follow=false" };
    let mut resp = api.stream(&format!("/api/v1/jobs/{job_id}/output{query}")).await?;
    let mut sse = SseParser::default();
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut canceled = !follow;
    loop {
        let chunk = tokio::select! {
            c = resp.chunk() => c?,
            _ = &mut ctrl_c, if !canceled => {
                canceled = true;
                eprintln!("==> canceling job {job_id}");
                let _: JobView = api.post(&format!("/api/v1/jobs/{job_id}/cancel"), &serde_json::json!({})).await?;
                continue;
            }
        };
        let Some(chunk) = chunk else { break };
        for (event, data) in sse.feed(&chunk) {
            match event.as_str() {
                "output" => printer.print(&serde_json::from_str(&data)?),
                "end" => {
                    let v: JobView = api.get(&format!("/api/v1/jobs/{job_id}")).await?;
                    report(&v);
                    return Ok(exit_code(&v));
                }
                "error" => bail!("output stream: {data}"),
                _ => {}
            }
        }
    }
    if follow {
        Err(anyhow!("the server closed the output stream before the job ended"))
    } else {
        Ok(0)
    }
}

fn report(v: &JobView) {
    let how = match (&v.failure_reason, v.exit_code) {
        (Some(r), _) => format!("{} ({r})", v.state),
        (None, Some(c)) if c != 0 => format!("{} (exit code {c})", v.state),
        _ => v.state.clone(),
    };
    eprintln!("==> job {} #{} {}: {how}", v.id, v.number, v.name);
}

/// `vmfleet run` with no server: starts a fleet in this process on `config` (the embedded
/// default), runs the job end to end, waits until its VMs are destroyed, and stops.
///
/// # Errors
/// Set-up failures; a refused config.
pub async fn run_local(config: Config, sub: &JobSubmission) -> anyhow::Result<u8> {
    let running = crate::server::start(config, None).await?;
    let result = async {
        let job = match running.jobs.submit(sub, "cli").await {
            Ok(j) => j,
            Err(crate::fleet::FleetError::BadRequest(m)) => {
                eprintln!("error: {m}");
                return Ok(REFUSED);
            }
            Err(e) => return Err(e.into()),
        };
        let store = &running.fleet.store;
        eprintln!(
            "==> job {} #{} ({}) queued on an in-process fleet ({} provider, {}): {} task(s)",
            job.id,
            job.number,
            job.name,
            running.fleet.provider.kind(),
            store.backend(),
            job.parallelism
        );
        let mut printer = Printer::new(job.parallelism);
        let mut cursors = HashMap::new();
        let mut ended = false;
        let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
        let mut canceled = false;
        loop {
            for (node, c) in poll_output(store, &job.id, &mut cursors).await? {
                printer.print(&OutputView { node, attempt: c.attempt, step: c.step, stream: c.stream, data: c.data });
            }
            if ended {
                break;
            }
            ended = store.job(&job.id).await?.ended();
            if !ended {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(150)) => {}
                    _ = &mut ctrl_c, if !canceled => {
                        canceled = true;
                        eprintln!("==> canceling job {}", job.id);
                        running.jobs.cancel(&job.id, "cli").await?;
                    }
                }
            }
        }
        let v = JobView::load(store, &store.job(&job.id).await?).await?;
        report(&v);
        wait_vms_gone(&running, &v).await;
        anyhow::Ok(exit_code(&v))
    }
    .await;
    running.shutdown.trigger();
    result
}

/// Waits (up to a minute) until the VMs the job's tasks held are terminated, so the process
/// leaves nothing running behind.
pub(crate) async fn wait_vms_gone(running: &crate::server::Running, v: &JobView) {
    let store = &running.fleet.store;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let fleet_tasks: Vec<String> =
        v.tasks.iter().flat_map(|t| [t.fleet_task_id.clone(), t.remote_task_id.clone()]).flatten().collect();
    loop {
        let mut left = 0;
        for ft in &fleet_tasks {
            if let Ok(t) = store.task(ft).await {
                if let Some(vm) = t.vm_id {
                    if store.vm(&vm).await.is_ok_and(|vm| !matches!(vm.state.as_str(), "terminated" | "failed")) {
                        left += 1;
                    }
                }
            }
        }
        if left == 0 {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            eprintln!("==> {left} VM(s) not yet terminated; the next `vmfleet serve` or `vmfleet gc` finishes them");
            return;
        }
        running.fleet.wake();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
