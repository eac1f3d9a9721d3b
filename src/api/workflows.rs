//! Routes and views for pipelines and workflows.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{ApiError, ApiJson, AppState, Caller, ListQuery, AGENT, OPERATOR};
use crate::fleet::FleetError;
use crate::store::{rfc3339, PipelineRow, Store, WorkflowRow};

/// A pipeline and its workflows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineView {
    /// Id.
    pub id: String,
    /// `pipeline.number`.
    pub number: i64,
    /// Project.
    pub project: String,
    /// The config file.
    pub config_file: String,
    /// Revision.
    pub revision: Option<String>,
    /// Branch.
    pub branch: Option<String>,
    /// Tag.
    pub tag: Option<String>,
    /// Pipeline parameters given.
    pub parameters: BTreeMap<String, String>,
    /// Who submitted it.
    pub actor: String,
    /// When.
    pub created_at: String,
    /// Its workflows.
    pub workflows: Vec<WorkflowView>,
}

/// A workflow and its jobs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkflowView {
    /// Id (`CIRCLE_WORKFLOW_ID`).
    pub id: String,
    /// Name.
    pub name: String,
    /// Its pipeline.
    pub pipeline_id: String,
    /// Its pipeline's number.
    pub pipeline_number: i64,
    /// Project.
    pub project: String,
    /// `running`, `failing`, `on_hold`, `success`, `failed`, `canceled`.
    pub state: String,
    /// Cancel asked for.
    pub cancel_requested: bool,
    /// The workflow this one reruns.
    pub rerun_of: Option<String>,
    /// When created.
    pub created_at: String,
    /// When it ended.
    pub stopped_at: Option<String>,
    /// Its jobs, in the file's order.
    pub jobs: Vec<WorkflowJobView>,
}

/// One job of a workflow.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkflowJobView {
    /// Its name in the workflow.
    pub name: String,
    /// `build` or `approval`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The jobs it requires.
    pub requires: Vec<String>,
    /// `blocked`, `on_hold`, `queued`, `running`, `success`, `failed`, `canceled`,
    /// `infrastructure_fail`, `not_run`.
    pub state: String,
    /// Its job (a job carried over by a rerun is the earlier workflow's).
    pub job_id: Option<String>,
    /// Its job's number.
    pub job_number: Option<i64>,
    /// Who approved it.
    pub approved_by: Option<String>,
    /// Why it failed or did not run.
    pub failure_reason: Option<String>,
}

impl WorkflowView {
    /// A workflow with its jobs.
    ///
    /// # Errors
    /// Store errors.
    pub async fn load(store: &Store, w: &WorkflowRow) -> Result<Self, FleetError> {
        let pipeline = store.pipeline(&w.pipeline_id).await?;
        let mut jobs = Vec::new();
        for n in store.workflow_nodes(&w.id).await? {
            let job = match (&n.job_id, n.approval) {
                (Some(j), false) => Some(store.job(j).await?),
                _ => None,
            };
            jobs.push(WorkflowJobView {
                name: n.name.clone(),
                kind: if n.approval { "approval" } else { "build" }.into(),
                requires: n.requires_list(),
                state: job.as_ref().map_or_else(|| n.state.clone(), |j| j.state.clone()),
                job_id: n.job_id.clone(),
                job_number: job.as_ref().map(|j| j.number),
                approved_by: n.approved_by.clone(),
                failure_reason: job.and_then(|j| j.failure_reason),
            });
        }
        Ok(Self {
            id: w.id.clone(),
            name: w.name.clone(),
            pipeline_id: w.pipeline_id.clone(),
            pipeline_number: pipeline.number,
            project: w.project.clone(),
            state: w.state.clone(),
            cancel_requested: w.cancel_requested,
            rerun_of: w.rerun_of.clone(),
            created_at: rfc3339(w.created_at),
            stopped_at: w.stopped_at.map(rfc3339),
            jobs,
        })
    }

    /// Whether it has ended.
    pub fn ended(&self) -> bool {
        crate::store::workflow_ended(&self.state)
    }
}

impl PipelineView {
    /// A pipeline with its workflows.
    ///
    /// # Errors
    /// Store errors.
    pub async fn load(store: &Store, p: &PipelineRow) -> Result<Self, FleetError> {
        let mut workflows = Vec::new();
        for w in store.pipeline_workflows(&p.id).await? {
            workflows.push(WorkflowView::load(store, &w).await?);
        }
        Ok(Self {
            id: p.id.clone(),
            number: p.number,
            project: p.project.clone(),
            config_file: p.config_file.clone(),
            revision: p.revision.clone(),
            branch: p.branch.clone(),
            tag: p.tag.clone(),
            parameters: serde_json::from_str(&p.parameters).unwrap_or_default(),
            actor: p.actor.clone(),
            created_at: rfc3339(p.created_at),
            workflows,
        })
    }
}

pub(super) async fn submit_pipeline(
    State(s): State<AppState>,
    c: Caller,
    ApiJson(req): ApiJson<crate::jobs::PipelineSubmission>,
) -> Result<(StatusCode, Json<PipelineView>), ApiError> {
    c.require(AGENT)?;
    let (p, _) = s.jobs.submit_pipeline(&req, &c.0.name).await?;
    Ok((StatusCode::CREATED, Json(PipelineView::load(&s.fleet.store, &p).await?)))
}

pub(super) async fn show_pipeline(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<PipelineView>, ApiError> {
    c.require(AGENT)?;
    let p = s.fleet.store.pipeline(&id).await?;
    Ok(Json(PipelineView::load(&s.fleet.store, &p).await?))
}

pub(super) async fn list_workflows(
    State(s): State<AppState>,
    c: Caller,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<WorkflowView>>, ApiError> {
    c.require(OPERATOR)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let rows = s.fleet.store.workflows(q.state.as_deref(), q.limit.unwrap_or(50).clamp(1, 500)).await?;
    let mut out = Vec::new();
    for w in &rows {
        out.push(WorkflowView::load(&s.fleet.store, w).await?);
    }
    Ok(Json(out))
}

pub(super) async fn show_workflow(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<WorkflowView>, ApiError> {
    c.require(AGENT)?;
    let w = s.fleet.store.workflow(&id).await?;
    Ok(Json(WorkflowView::load(&s.fleet.store, &w).await?))
}

pub(super) async fn cancel_workflow(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<WorkflowView>, ApiError> {
    c.require(AGENT)?;
    let w = s.jobs.cancel_workflow(&id, &c.0.name).await?;
    Ok(Json(WorkflowView::load(&s.fleet.store, &w).await?))
}

/// How to rerun.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Rerun {
    #[serde(default)]
    from_failed: bool,
}

pub(super) async fn rerun_workflow(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<WorkflowView>), ApiError> {
    c.require(AGENT)?;
    // The body is optional.
    let req: Rerun = if body.iter().all(u8::is_ascii_whitespace) {
        Rerun::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("request body: {e}")))?
    };
    let from_failed = req.from_failed;
    let w = s.jobs.rerun_workflow(&id, from_failed, &c.0.name).await?;
    Ok((StatusCode::CREATED, Json(WorkflowView::load(&s.fleet.store, &w).await?)))
}

pub(super) async fn approve(
    State(s): State<AppState>,
    c: Caller,
    Path((id, job)): Path<(String, String)>,
) -> Result<Json<WorkflowView>, ApiError> {
    c.require(AGENT)?;
    let w = s.jobs.approve(&id, &job, &c.0.name).await?;
    Ok(Json(WorkflowView::load(&s.fleet.store, &w).await?))
}

/// The routes' OpenAPI paths and schemas.
pub(super) fn openapi(spec: &mut Value, op: impl Fn(&str, &str, &str, &[(&str, &str)]) -> Value, body_413: &str) {
    let with = |mut v: Value, names: &[&str]| {
        v["parameters"] = names
            .iter()
            .map(|n| json!({"name": n, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        v
    };
    let body = super::openapi::with_body;
    let a = "operator, agent";
    let paths = [
        (
            "/api/v1/pipelines",
            json!({
                "post": body(op("Submit a pipeline {config, config_file, project, repo, revision, branch, tag, deploy_key, parameters, workflow}: its workflows (or the one named) are checked whole, recorded, and their jobs run as their requirements succeed", a, "201", &[("400", "a bad config or workflow, named with its file and line, a job this installation cannot run, a context the project may not use, or no workflow to run"), ("413", body_413)]), "PipelineSubmission", true),
            }),
        ),
        (
            "/api/v1/pipelines/{id}",
            json!({"get": with(op("Show a pipeline (id or number) with its workflows", a, "200", &[("404", "no such pipeline")]), &["id"])}),
        ),
        (
            "/api/v1/workflows",
            json!({"get": op("List workflows, newest first (query: state, limit)", "operator", "200", &[("400", "bad query")])}),
        ),
        (
            "/api/v1/workflows/{id}",
            json!({"get": with(op("Show a workflow with its jobs", a, "200", &[("404", "no such workflow")]), &["id"])}),
        ),
        (
            "/api/v1/workflows/{id}/cancel",
            json!({"post": with(op("Cancel a workflow: its running jobs stop, the rest end canceled", a, "200", &[("404", "no such workflow"), ("409", "the workflow has ended")]), &["id"])}),
        ),
        (
            "/api/v1/workflows/{id}/rerun",
            json!({"post": with(body(op("Run an ended workflow again as a new workflow {from_failed}: every job, or only the failed ones and what requires them", a, "201", &[("400", "a bad body"), ("404", "no such workflow"), ("409", "the workflow runs, or nothing failed"), ("413", body_413)]), "Rerun", false), &["id"])}),
        ),
        (
            "/api/v1/workflows/{id}/approve/{job}",
            json!({"post": with(op("Approve a held approval job", a, "200", &[("404", "no such workflow or job"), ("409", "the job is not an approval job on hold")]), &["id", "job"])}),
        ),
    ];
    for (path, item) in paths {
        spec["paths"][path] = item;
    }
    let schemas = &mut spec["components"]["schemas"];
    schemas["PipelineSubmission"] = json!({"type": "object", "required": ["config", "project"], "additionalProperties": false, "properties": {
        "config": {"type": "string", "description": "the CircleCI config's text (at most 4 MiB)"},
        "config_file": {"type": "string"},
        "project": {"type": "string", "pattern": r"^[A-Za-z0-9_./@:-]{1,200}$"},
        "repo": {"type": "string"},
        "revision": {"type": "string"},
        "branch": {"type": "string", "description": "a branch pipeline (not with tag)"},
        "tag": {"type": "string", "description": "a tag pipeline (not with branch)"},
        "deploy_key": {"type": "string", "description": "an SSH private key `checkout` clones with"},
        "parameters": {"type": "object", "additionalProperties": {"type": "string"}, "description": "pipeline parameters"},
        "workflow": {"type": "string", "description": "run only this workflow"},
    }});
    schemas["Rerun"] = json!({"type": "object", "additionalProperties": false, "properties": {"from_failed": {"type": "boolean", "default": false}}});
}
