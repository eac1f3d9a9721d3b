//! `vmfleet run FILE` (a pipeline: the file's workflows) and `vmfleet workflows …`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::json;

use super::args::WorkflowsCmd;
use super::output::{opt, print_json, table};
use super::run_job::{sources, Printer, RunArgs, REFUSED};
use crate::api::views::{JobView, OutputView};
use crate::api::workflows::{PipelineView, WorkflowView};
use crate::client::Client;
use crate::config::Config;
use crate::jobs::{poll_output, PipelineSubmission};

/// Exit status of a local run that stopped at an approval job still on hold.
pub const ON_HOLD: u8 = 5;

/// The pipeline a run without `--job` submits: the branch defaults to the repository's.
///
/// # Errors
/// Unreadable files; job parameters given to a pipeline.
pub fn pipeline_submission(a: &RunArgs) -> anyhow::Result<PipelineSubmission> {
    let (config, project, repo, deploy_key) = sources(a)?;
    let mut parameters: BTreeMap<String, String> = a.pipeline_params.iter().cloned().collect();
    parameters.extend(a.params.iter().cloned());
    let branch = match (&a.branch, &a.tag) {
        (Some(b), _) => Some(b.clone()),
        (None, Some(_)) => None,
        (None, None) => repo.as_deref().and_then(current_branch),
    };
    Ok(PipelineSubmission {
        config,
        config_file: Some(a.config_file.display().to_string()),
        project,
        repo,
        revision: a.revision.clone(),
        branch,
        tag: a.tag.clone(),
        deploy_key,
        parameters,
        workflow: a.workflow.clone(),
    })
}

fn current_branch(repo: &str) -> Option<String> {
    let out =
        std::process::Command::new("git").args(["-C", repo, "symbolic-ref", "--short", "-q", "HEAD"]).output().ok()?;
    let b = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !b.is_empty()).then_some(b)
}

/// Exit status for a pipeline's end: 0 when every workflow succeeded, else the worst of
/// failed (1), canceled (4), on hold ([`ON_HOLD`]).
pub fn pipeline_exit(p: &PipelineView) -> u8 {
    let states: Vec<&str> = p.workflows.iter().map(|w| w.state.as_str()).collect();
    if states.iter().any(|s| matches!(*s, "failed" | "failing")) {
        1
    } else if states.contains(&"canceled") {
        4
    } else if states.contains(&"on_hold") {
        ON_HOLD
    } else if states.iter().all(|s| *s == "success") {
        0
    } else {
        3
    }
}

fn announce(p: &PipelineView, how: &str) {
    eprintln!("==> pipeline #{} ({}) for {}{how}", p.number, p.id, p.project);
    for w in &p.workflows {
        let jobs: Vec<String> = w
            .jobs
            .iter()
            .map(|j| {
                if j.requires.is_empty() {
                    j.name.clone()
                } else {
                    format!("{} <- {}", j.name, j.requires.join(", "))
                }
            })
            .collect();
        eprintln!("==> workflow {} ({}): {}", w.name, w.id, jobs.join("; "));
    }
}

fn summary(p: &PipelineView) {
    for w in &p.workflows {
        eprintln!("==> workflow {} ({}): {}", w.name, w.id, w.state);
        for j in &w.jobs {
            let why = j.failure_reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
            eprintln!("      {:<24} {}{why}", j.name, j.state);
        }
        if w.state == "on_hold" {
            for j in w.jobs.iter().filter(|j| j.state == "on_hold") {
                eprintln!("==> {} waits for approval: vmfleet workflows approve {} {}", j.name, w.id, j.name);
            }
        }
    }
}

/// Prints a state line for each job whose state changed since the last call.
fn print_changes(p: &PipelineView, seen: &mut HashMap<String, String>) {
    for w in &p.workflows {
        for j in &w.jobs {
            let key = format!("{}/{}", w.id, j.name);
            if seen.get(&key) != Some(&j.state) {
                if seen.contains_key(&key) || j.state != "blocked" {
                    eprintln!("==> [{}] {}", j.name, j.state);
                }
                seen.insert(key, j.state.clone());
            }
        }
    }
}

/// Whether nothing more will happen without someone acting (every workflow ended or on hold).
fn settled(p: &PipelineView) -> bool {
    p.workflows.iter().all(|w| w.ended() || w.state == "on_hold")
}

/// `vmfleet run FILE` with no server: an in-process fleet runs the pipeline until every
/// workflow has ended (or waits for an approval) and its VMs are gone.
///
/// # Errors
/// Set-up failures.
pub async fn run_local(config: Config, sub: &PipelineSubmission) -> anyhow::Result<u8> {
    let running = crate::server::start(config, None).await?;
    let result = async {
        let (p, _) = match running.jobs.submit_pipeline(sub, "cli").await {
            Ok(x) => x,
            Err(crate::fleet::FleetError::BadRequest(m)) => {
                eprintln!("error: {m}");
                return Ok(REFUSED);
            }
            Err(e) => return Err(e.into()),
        };
        let store = &running.fleet.store;
        announce(&PipelineView::load(store, &p).await?, " on an in-process fleet");
        let mut printers: HashMap<String, Printer> = HashMap::new();
        let mut cursors = HashMap::new();
        let mut seen = HashMap::new();
        let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
        let mut canceled = false;
        loop {
            let view = PipelineView::load(store, &p).await?;
            print_changes(&view, &mut seen);
            for w in &view.workflows {
                for j in w.jobs.iter().filter(|j| j.job_id.is_some()) {
                    let id = j.job_id.clone().unwrap_or_default();
                    let job = store.job(&id).await?;
                    let printer =
                        printers.entry(id.clone()).or_insert_with(|| Printer::labeled(&j.name, job.parallelism));
                    for (node, c) in poll_output(store, &id, &mut cursors).await? {
                        printer.print(&OutputView {
                            node,
                            attempt: c.attempt,
                            step: c.step,
                            stream: c.stream,
                            data: c.data,
                        });
                    }
                }
            }
            if settled(&view) {
                summary(&view);
                for w in &view.workflows {
                    for j in w.jobs.iter().filter_map(|j| j.job_id.as_ref()) {
                        let v = JobView::load(store, &store.job(j).await?).await?;
                        super::run_job::wait_vms_gone(&running, &v).await;
                    }
                }
                return anyhow::Ok(pipeline_exit(&view));
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = &mut ctrl_c, if !canceled => {
                    canceled = true;
                    for w in view.workflows.iter().filter(|w| !w.ended()) {
                        eprintln!("==> canceling workflow {}", w.id);
                        running.jobs.cancel_workflow(&w.id, "cli").await?;
                    }
                }
            }
        }
    }
    .await;
    running.shutdown.trigger();
    result
}

/// `vmfleet run FILE` against a server: submit, report each job's state as it changes and its
/// output once it ends, until every workflow has ended.
///
/// # Errors
/// Transport or API errors (a refused config prints its file and line).
pub async fn run_remote(api: &Client, sub: &PipelineSubmission) -> anyhow::Result<u8> {
    let p: PipelineView = match api.post("/api/v1/pipelines", &serde_json::to_value(sub)?).await {
        Ok(p) => p,
        Err(e) if e.to_string().starts_with("400 ") => {
            eprintln!("error: {e}");
            return Ok(REFUSED);
        }
        Err(e) => return Err(e),
    };
    announce(&p, "");
    let mut seen = HashMap::new();
    let mut shown: HashSet<String> = HashSet::new();
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut canceled = false;
    loop {
        let view: PipelineView = api.get(&format!("/api/v1/pipelines/{}", p.id)).await?;
        print_changes(&view, &mut seen);
        for w in &view.workflows {
            for j in &w.jobs {
                let Some(id) = &j.job_id else { continue };
                if crate::store::job_ended(&j.state) && j.state != "not_run" && shown.insert(id.clone()) {
                    let job: JobView = api.get(&format!("/api/v1/jobs/{id}")).await?;
                    super::run_job::follow_remote(api, id, Printer::labeled(&j.name, job.parallelism), false).await?;
                }
            }
        }
        if view.workflows.iter().all(WorkflowView::ended) {
            summary(&view);
            return Ok(pipeline_exit(&view));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = &mut ctrl_c, if !canceled => {
                canceled = true;
                for w in view.workflows.iter().filter(|w| !w.ended()) {
                    eprintln!("==> canceling workflow {}", w.id);
                    let _: WorkflowView = api.post(&format!("/api/v1/workflows/{}/cancel", w.id), &json!({})).await?;
                }
            }
        }
    }
}

fn print_workflow(w: &WorkflowView) {
    println!("workflow {} ({})  pipeline #{}  {}  {}", w.name, w.id, w.pipeline_number, w.project, w.state);
    if let Some(r) = &w.rerun_of {
        println!("rerun of {r}");
    }
    table(
        &["Job", "Type", "State", "Job ID", "Number", "Requires"],
        w.jobs
            .iter()
            .map(|j| {
                vec![
                    j.name.clone(),
                    j.kind.clone(),
                    j.state.clone(),
                    opt(&j.job_id),
                    j.job_number.map_or("-".into(), |n| n.to_string()),
                    j.requires.join(", "),
                ]
            })
            .collect(),
    );
    for j in &w.jobs {
        if let Some(r) = &j.failure_reason {
            println!("{}: {r}", j.name);
        }
        if let Some(a) = &j.approved_by {
            println!("{}: approved by {a}", j.name);
        }
    }
}

/// `vmfleet workflows …`.
///
/// # Errors
/// Transport or API errors.
pub async fn workflows(api: &Client, c: &WorkflowsCmd) -> anyhow::Result<()> {
    match c {
        WorkflowsCmd::List { state, json } => {
            let q = state.as_ref().map(|s| format!("?state={s}")).unwrap_or_default();
            let list: Vec<WorkflowView> = api.get(&format!("/api/v1/workflows{q}")).await?;
            if json.json {
                print_json(&list)?;
            } else {
                table(
                    &["ID", "Workflow", "Pipeline", "Project", "State", "Jobs", "Created"],
                    list.iter()
                        .map(|w| {
                            vec![
                                w.id.clone(),
                                w.name.clone(),
                                format!("#{}", w.pipeline_number),
                                w.project.clone(),
                                w.state.clone(),
                                w.jobs.len().to_string(),
                                w.created_at.clone(),
                            ]
                        })
                        .collect(),
                );
            }
        }
        WorkflowsCmd::Show { id, json } => {
            let w: WorkflowView = api.get(&format!("/api/v1/workflows/{id}")).await?;
            if json.json {
                print_json(&w)?;
            } else {
                print_workflow(&w);
            }
        }
        WorkflowsCmd::Cancel { id } => {
            let w: WorkflowView = api.post(&format!("/api/v1/workflows/{id}/cancel"), &json!({})).await?;
            println!("workflow {} ({}): cancel requested ({})", w.name, w.id, w.state);
        }
        WorkflowsCmd::Rerun { id, from_failed } => {
            let w: WorkflowView =
                api.post(&format!("/api/v1/workflows/{id}/rerun"), &json!({"from_failed": from_failed})).await?;
            println!("workflow {} rerun as {} ({})", w.name, w.id, w.state);
        }
        WorkflowsCmd::Approve { id, job } => {
            if job.is_empty() {
                bail!("name the approval job");
            }
            let w: WorkflowView = api
                .post(&format!("/api/v1/workflows/{id}/approve/{}", crate::client::segment(job)), &json!({}))
                .await
                .with_context(|| format!("approving {job}"))?;
            println!("{job} approved; workflow {} ({}) is {}", w.name, w.id, w.state);
        }
    }
    Ok(())
}
