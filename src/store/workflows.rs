//! Pipelines, workflows and the DAG of each workflow's jobs.
//!
//! # Design
//! A workflow moves forward by [`Store::advance_workflow`], one transaction that holds the
//! workflow's row (`FOR UPDATE` on PostgreSQL; SQLite writes one at a time): blocked jobs whose
//! required jobs all succeeded are queued with their tasks, those with a required job that did
//! not succeed become `not_run`, and the workflow's state is derived from its jobs. Every write
//! is conditional on the state it read, so any replica may advance any workflow at any time
//! (after a job ends, on approval, on cancel, and on a periodic sweep that heals a crash between
//! a job's end and its workflow's step) and a job is never queued twice.

use serde::Serialize;

use super::{AuditEvent, Db, JobRow, JobTaskRow, Store, StoreError};

/// A pipeline: one submission of a config for a project at a revision.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct PipelineRow {
    pub id: String,
    pub number: i64,
    pub project: String,
    pub config_file: String,
    pub repo: Option<String>,
    pub revision: Option<String>,
    pub branch: Option<String>,
    pub tag: Option<String>,
    /// JSON map of the pipeline parameters given.
    pub parameters: String,
    pub actor: String,
    pub created_at: i64,
}

/// A workflow of a pipeline.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WorkflowRow {
    pub id: String,
    pub pipeline_id: String,
    pub name: String,
    /// Its place in the file.
    pub idx: i64,
    pub project: String,
    /// `running`, `failing`, `on_hold`, `success`, `failed`, `canceled`.
    pub state: String,
    pub cancel_requested: bool,
    pub rerun_of: Option<String>,
    pub created_at: i64,
    pub stopped_at: Option<i64>,
}

impl WorkflowRow {
    /// Whether it has ended.
    pub fn ended(&self) -> bool {
        workflow_ended(&self.state)
    }
}

/// Whether a workflow in `state` has ended.
pub fn workflow_ended(state: &str) -> bool {
    matches!(state, "success" | "failed" | "canceled")
}

/// One job of a workflow.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WorkflowJobRow {
    pub workflow_id: String,
    pub name: String,
    pub idx: i64,
    /// JSON list of the names it requires.
    pub requires: String,
    pub approval: bool,
    /// Its job (none for an approval job).
    pub job_id: Option<String>,
    /// An approval's state (`blocked`, `on_hold`, `success`, `not_run`, `canceled`); for a job,
    /// `job` (its state is the job's).
    pub state: String,
    pub approved_by: Option<String>,
    pub finished_at: Option<i64>,
}

impl WorkflowJobRow {
    /// The names it requires.
    pub fn requires_list(&self) -> Vec<String> {
        serde_json::from_str(&self.requires).unwrap_or_default()
    }
}

/// What one [`Store::advance_workflow`] did.
#[derive(Debug, Clone, Default)]
pub struct Advanced {
    /// Jobs queued (their ids).
    pub queued: Vec<String>,
    /// Jobs and approvals that will not run, with why.
    pub not_run: Vec<(String, String)>,
    /// Approvals now waiting.
    pub on_hold: Vec<String>,
    /// The workflow's state before and after, when it changed.
    pub state: Option<(String, String)>,
}

/// A workflow's state from its jobs' states.
pub fn derive_workflow_state(states: &[&str], canceled: bool) -> &'static str {
    let any = |xs: &[&str]| states.iter().any(|s| xs.contains(s));
    let bad = any(&["failed", "infrastructure_fail"]);
    if any(&["queued", "running"]) {
        return if bad { "failing" } else { "running" };
    }
    if any(&["on_hold", "blocked"]) {
        return if bad { "failing" } else { "on_hold" };
    }
    if canceled || any(&["canceled"]) {
        "canceled"
    } else if bad || any(&["not_run"]) {
        "failed"
    } else {
        "success"
    }
}

const JOB_COLUMNS: &str = "id, number, name, project, config_file, spec, pool, repo, revision, branch, deploy_key, \
                           parallelism, state, cancel_requested, queued_at, workflow_id, tag";

macro_rules! insert_blocked_job {
    ($tx:ident, $j:expr, $number:expr) => {{
        let j: &JobRow = $j;
        execute_in!(
            $tx,
            &format!(
                "INSERT INTO jobs ({JOB_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
                 'blocked', FALSE, $13, $14, $15)"
            ),
            &j.id,
            $number,
            &j.name,
            &j.project,
            &j.config_file,
            &j.spec,
            &j.pool,
            &j.repo,
            &j.revision,
            &j.branch,
            &j.deploy_key,
            j.parallelism,
            j.queued_at,
            &j.workflow_id,
            &j.tag
        );
    }};
}

macro_rules! insert_nodes {
    ($tx:ident, $nodes:expr) => {{
        for n in $nodes {
            execute_in!(
                $tx,
                "INSERT INTO workflow_jobs (workflow_id, name, idx, requires, approval, job_id, state, approved_by, \
                 finished_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &n.workflow_id,
                &n.name,
                n.idx,
                &n.requires,
                n.approval,
                &n.job_id,
                &n.state,
                &n.approved_by,
                n.finished_at
            );
        }
    }};
}

/// Workflows, their jobs (numbered after the newest job; the caller holds the numbering lock)
/// and their nodes.
macro_rules! insert_workflows {
    ($tx:ident, $workflows:expr, $jobs:expr, $nodes:expr) => {{
        for w in $workflows {
            insert_workflow!($tx, w);
        }
        let mut number: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(number), 0) + 1 FROM jobs").fetch_one(&mut *$tx).await?;
        for j in $jobs {
            insert_blocked_job!($tx, j, number);
            number += 1;
        }
        insert_nodes!($tx, $nodes);
    }};
}

macro_rules! insert_workflow {
    ($tx:ident, $w:expr) => {{
        let w: &WorkflowRow = $w;
        execute_in!(
            $tx,
            "INSERT INTO workflows (id, pipeline_id, name, idx, project, state, cancel_requested, rerun_of, created_at) \
             VALUES ($1, $2, $3, $8, $4, $5, FALSE, $6, $7)",
            &w.id,
            &w.pipeline_id,
            &w.name,
            &w.project,
            &w.state,
            &w.rerun_of,
            w.created_at,
            w.idx
        );
    }};
}

impl Store {
    /// The number the next pipeline gets (checked again when it is recorded).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn next_pipeline_number(&self) -> Result<i64, StoreError> {
        let sql = "SELECT COALESCE(MAX(number), 0) + 1 FROM pipelines";
        Ok(with_pool!(&self.db, |p| sqlx::query_scalar(sql).fetch_one(p).await)?)
    }

    /// Records a pipeline, its workflows, their jobs (all `blocked`, numbered after the newest
    /// job) and nodes, in one transaction. `false` (nothing recorded) when another pipeline took
    /// `p.number` meanwhile: resolve again with the next number.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn insert_pipeline(
        &self,
        p: &PipelineRow,
        workflows: &[WorkflowRow],
        nodes: &[WorkflowJobRow],
        jobs: &[JobRow],
        audits: &[AuditEvent],
    ) -> Result<bool, StoreError> {
        let pg = matches!(self.db, Db::Postgres(_));
        Ok(in_tx!(&self.db, |tx| {
            if pg {
                execute_in!(tx, "SELECT pg_advisory_xact_lock(7596232762)");
            }
            let next: i64 =
                sqlx::query_scalar("SELECT COALESCE(MAX(number), 0) + 1 FROM pipelines").fetch_one(&mut *tx).await?;
            if next != p.number {
                false
            } else {
                execute_in!(
                    tx,
                    "INSERT INTO pipelines (id, number, project, config_file, repo, revision, branch, tag, parameters, \
                     actor, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    &p.id,
                    p.number,
                    &p.project,
                    &p.config_file,
                    &p.repo,
                    &p.revision,
                    &p.branch,
                    &p.tag,
                    &p.parameters,
                    &p.actor,
                    p.created_at
                );
                insert_workflows!(tx, workflows, jobs, nodes);
                for a in audits {
                    insert_audit!(&mut *tx, a)?;
                }
                true
            }
        }))
    }

    /// Records a rerun: a new workflow of the same pipeline, its new jobs (`blocked`) and its
    /// nodes (some may point at jobs of the workflow it reruns).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn insert_rerun(
        &self,
        w: &WorkflowRow,
        nodes: &[WorkflowJobRow],
        jobs: &[JobRow],
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        let pg = matches!(self.db, Db::Postgres(_));
        in_tx!(&self.db, |tx| {
            if pg {
                execute_in!(tx, "SELECT pg_advisory_xact_lock(7596232762)");
            }
            insert_workflows!(tx, std::slice::from_ref(w), jobs, nodes);
            insert_audit!(&mut *tx, audit)?;
        });
        Ok(())
    }

    /// A pipeline by id or number.
    ///
    /// # Errors
    /// [`StoreError::NotFound`].
    pub async fn pipeline(&self, id: &str) -> Result<PipelineRow, StoreError> {
        let sql = "SELECT * FROM pipelines WHERE id = $1 OR CAST(number AS TEXT) = $1";
        with_pool!(&self.db, |p| sqlx::query_as(sql).bind(id).fetch_optional(p).await)?
            .ok_or_else(|| StoreError::NotFound(format!("pipeline {id}")))
    }

    /// A pipeline's workflows, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn pipeline_workflows(&self, pipeline_id: &str) -> Result<Vec<WorkflowRow>, StoreError> {
        let sql = "SELECT * FROM workflows WHERE pipeline_id = $1 ORDER BY created_at, idx, id";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).bind(pipeline_id).fetch_all(p).await)?)
    }

    /// One workflow.
    ///
    /// # Errors
    /// [`StoreError::NotFound`].
    pub async fn workflow(&self, id: &str) -> Result<WorkflowRow, StoreError> {
        let sql = "SELECT * FROM workflows WHERE id = $1";
        with_pool!(&self.db, |p| sqlx::query_as(sql).bind(id).fetch_optional(p).await)?
            .ok_or_else(|| StoreError::NotFound(format!("workflow {id}")))
    }

    /// Workflows, newest first, optionally only those in `state`.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn workflows(&self, state: Option<&str>, limit: i64) -> Result<Vec<WorkflowRow>, StoreError> {
        let sql = "SELECT * FROM workflows WHERE ($1 IS NULL OR state = $1) ORDER BY created_at DESC, id LIMIT $2";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).bind(state).bind(limit).fetch_all(p).await)?)
    }

    /// The ids of workflows that have not ended, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn active_workflows(&self, limit: i64) -> Result<Vec<String>, StoreError> {
        let sql = "SELECT id FROM workflows WHERE state NOT IN ('success', 'failed', 'canceled') \
                   ORDER BY created_at, id LIMIT $1";
        Ok(with_pool!(&self.db, |p| sqlx::query_scalar(sql).bind(limit).fetch_all(p).await)?)
    }

    /// A workflow's jobs, in the file's order.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn workflow_nodes(&self, workflow_id: &str) -> Result<Vec<WorkflowJobRow>, StoreError> {
        let sql = "SELECT * FROM workflow_jobs WHERE workflow_id = $1 ORDER BY idx";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).bind(workflow_id).fetch_all(p).await)?)
    }

    /// Marks a workflow for cancellation; returns the ids of its jobs that are queued or
    /// running (for the caller to cancel). Blocked jobs and approvals end at the next
    /// [`Store::advance_workflow`].
    ///
    /// # Errors
    /// [`StoreError::NotFound`]; [`StoreError::Conflict`] when it has ended.
    pub async fn request_workflow_cancel(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let w = self.workflow(id).await?;
        if w.ended() {
            return Err(StoreError::Conflict(format!("workflow {id} has already ended ({})", w.state)));
        }
        execute!(&self.db, "UPDATE workflows SET cancel_requested = TRUE WHERE id = $1", id)?;
        let sql = "SELECT id FROM jobs WHERE workflow_id = $1 AND state IN ('queued', 'running')";
        Ok(with_pool!(&self.db, |p| sqlx::query_scalar(sql).bind(id).fetch_all(p).await)?)
    }

    /// Approves a held approval job.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for no such approval job; [`StoreError::Conflict`] when it is
    /// not on hold (its requirements have not finished, or it was approved or ended).
    pub async fn approve(&self, workflow_id: &str, name: &str, actor: &str, now: i64) -> Result<(), StoreError> {
        let sql = "UPDATE workflow_jobs SET state = 'success', approved_by = $3, finished_at = $4 \
                   WHERE workflow_id = $1 AND name = $2 AND approval AND state = 'on_hold'";
        if execute!(&self.db, sql, workflow_id, name, actor, now)? == 1 {
            return Ok(());
        }
        let nodes = self.workflow_nodes(workflow_id).await?;
        match nodes.iter().find(|n| n.name == name) {
            None => Err(StoreError::NotFound(format!("job {name} in workflow {workflow_id}"))),
            Some(n) if !n.approval => {
                Err(StoreError::Conflict(format!("job {name} of workflow {workflow_id} is not an approval job")))
            }
            Some(n) => Err(StoreError::Conflict(format!(
                "approval job {name} of workflow {workflow_id} is {}, not on_hold",
                n.state
            ))),
        }
    }

    /// Moves a workflow forward (see the module's design); `None` when it has ended.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn advance_workflow(&self, id: &str, now: i64) -> Result<Option<Advanced>, StoreError> {
        let lock = if matches!(self.db, Db::Postgres(_)) { " FOR UPDATE" } else { "" };
        let select = format!("SELECT * FROM workflows WHERE id = $1{lock}");
        Ok(in_tx!(&self.db, |tx| {
            let w: Option<WorkflowRow> = sqlx::query_as(&select).bind(id).fetch_optional(&mut *tx).await?;
            match w.filter(|w| !w.ended()) {
                None => None,
                Some(w) => {
                    let nodes: Vec<WorkflowJobRow> =
                        sqlx::query_as("SELECT * FROM workflow_jobs WHERE workflow_id = $1 ORDER BY idx")
                            .bind(id)
                            .fetch_all(&mut *tx)
                            .await?;
                    let mut states: Vec<String> = Vec::with_capacity(nodes.len());
                    let mut jobs: Vec<Option<(i64, String)>> = Vec::with_capacity(nodes.len());
                    for n in &nodes {
                        match &n.job_id {
                            Some(j) if !n.approval => {
                                let row: Option<(String, i64, String)> =
                                    sqlx::query_as("SELECT state, parallelism, project FROM jobs WHERE id = $1")
                                        .bind(j)
                                        .fetch_optional(&mut *tx)
                                        .await?;
                                let (state, par, project) =
                                    row.unwrap_or_else(|| ("infrastructure_fail".into(), 0, String::new()));
                                states.push(state);
                                jobs.push(Some((par, project)));
                            }
                            _ => {
                                states.push(n.state.clone());
                                jobs.push(None);
                            }
                        }
                    }
                    let index: std::collections::HashMap<&str, usize> =
                        nodes.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect();
                    let mut done = Advanced::default();
                    let mut changed = true;
                    while changed {
                        changed = false;
                        for (i, n) in nodes.iter().enumerate() {
                            let hold_canceled = w.cancel_requested && n.approval && states[i] == "on_hold";
                            if states[i] != "blocked" && !hold_canceled {
                                continue;
                            }
                            let reqs = n.requires_list();
                            let req_state =
                                |r: &String| index.get(r.as_str()).map_or("not_run", |&k| states[k].as_str());
                            let (next, why) = if w.cancel_requested {
                                ("canceled", "the workflow was canceled".to_string())
                            } else if reqs.iter().all(|r| req_state(r) == "success") {
                                (if n.approval { "on_hold" } else { "queued" }, String::new())
                            } else if let Some(r) = reqs.iter().find(|r| {
                                matches!(req_state(r), "failed" | "canceled" | "infrastructure_fail" | "not_run")
                            }) {
                                ("not_run", format!("it requires {r}, which ended {}", req_state(r)))
                            } else {
                                continue;
                            };
                            let moved = match (&n.job_id, n.approval) {
                                (Some(job), false) if next == "queued" => {
                                    let m = execute_in!(
                                        tx,
                                        "UPDATE jobs SET state = 'queued', queued_at = $2 WHERE id = $1 AND state = 'blocked'",
                                        job,
                                        now
                                    );
                                    if m == 1 {
                                        let (par, project) = jobs[i].clone().unwrap_or_default();
                                        for node in 0..par {
                                            insert_job_task!(tx, &JobTaskRow::queued(job, node, &project, now));
                                        }
                                        done.queued.push(job.clone());
                                    }
                                    m
                                }
                                (Some(job), false) => execute_in!(
                                    tx,
                                    "UPDATE jobs SET state = $2, finished_at = $3, failure_reason = $4 \
                                     WHERE id = $1 AND state = 'blocked'",
                                    job,
                                    next,
                                    now,
                                    &why
                                ),
                                _ => execute_in!(
                                    tx,
                                    "UPDATE workflow_jobs SET state = $3, \
                                     finished_at = CASE WHEN $3 = 'on_hold' THEN NULL ELSE $4 END \
                                     WHERE workflow_id = $1 AND name = $2 AND state = $5",
                                    id,
                                    &n.name,
                                    next,
                                    now,
                                    &states[i]
                                ),
                            };
                            if moved == 1 {
                                match next {
                                    "not_run" => done.not_run.push((n.name.clone(), why)),
                                    "on_hold" => done.on_hold.push(n.name.clone()),
                                    _ => {}
                                }
                                states[i] = next.to_string();
                                changed = true;
                            }
                        }
                    }
                    let refs: Vec<&str> = states.iter().map(String::as_str).collect();
                    let next = derive_workflow_state(&refs, w.cancel_requested);
                    if next != w.state {
                        let n = execute_in!(
                            tx,
                            "UPDATE workflows SET state = $2, stopped_at = $3 WHERE id = $1 AND state = $4",
                            id,
                            next,
                            workflow_ended(next).then_some(now),
                            &w.state
                        );
                        if n == 1 {
                            done.state = Some((w.state.clone(), next.to_string()));
                        }
                    }
                    Some(done)
                }
            }
        }))
    }
}
