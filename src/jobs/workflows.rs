//! Pipelines and workflows: a submission resolves and checks every job of every workflow it
//! runs before anything is recorded, then records them all in one transaction; jobs leave
//! `blocked` as the jobs they require succeed (see [`crate::store::Store::advance_workflow`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::circleci::{ConfigFile, Pipeline};
use super::{bad, secrets_error, Jobs};
use crate::fleet::FleetError;
use crate::store::{now_ms, short_id, JobRow, PipelineRow, WorkflowJobRow, WorkflowRow};

/// A pipeline as submitted (`POST /api/v1/pipelines`, `vmfleet run FILE`).
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSubmission {
    /// The config file's text.
    pub config: String,
    /// Its name, for error messages (default `config.yml`).
    #[serde(default)]
    pub config_file: Option<String>,
    /// The project (`gh/org/repo`).
    pub project: String,
    /// What `checkout` clones: a git URL, or a local path readable by the server.
    #[serde(default)]
    pub repo: Option<String>,
    /// The revision (default: the repository's HEAD).
    #[serde(default)]
    pub revision: Option<String>,
    /// The branch (for `filters.branches`, `CIRCLE_BRANCH`).
    #[serde(default)]
    pub branch: Option<String>,
    /// The tag: a tag pipeline (for `filters.tags`, `CIRCLE_TAG`).
    #[serde(default)]
    pub tag: Option<String>,
    /// An SSH private key `checkout` clones with. Secret: sealed for each job, never shown.
    #[serde(default)]
    pub deploy_key: Option<String>,
    /// Pipeline parameter values.
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// Run only this workflow.
    #[serde(default)]
    pub workflow: Option<String>,
}

impl std::fmt::Debug for PipelineSubmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineSubmission")
            .field("project", &self.project)
            .field("workflow", &self.workflow)
            .finish_non_exhaustive()
    }
}

/// Jobs one pipeline may create.
pub const MAX_PIPELINE_JOBS: usize = 500;

impl Jobs {
    /// Checks and records a pipeline: its workflows (or the one asked for), each job resolved
    /// and checked as a single job is; then the jobs without requirements are queued.
    ///
    /// # Errors
    /// [`FleetError::BadRequest`] naming the file and line (nothing is recorded): as
    /// [`Jobs::plan`] for any job, a malformed workflow, no workflow left to run.
    pub async fn submit_pipeline(
        &self,
        sub: &PipelineSubmission,
        actor: &str,
    ) -> Result<(PipelineRow, Vec<WorkflowRow>), FleetError> {
        crate::fleet::validate_project(&sub.project)?;
        if sub.branch.is_some() && sub.tag.is_some() {
            return Err(bad("a pipeline is for a branch or for a tag, not both"));
        }
        let file = sub.config_file.clone().unwrap_or_else(|| "config.yml".into());
        let store = &self.fleet.store;
        for _ in 0..20 {
            // Parsed again on a retry: resolution work counts against the file's budget.
            let cfg = ConfigFile::parse(&sub.config, &file).map_err(bad)?;
            let number = store.next_pipeline_number().await?;
            let now = now_ms();
            let pipeline_id = format!("pipeline-{}", short_id());
            let pipeline = Pipeline {
                number,
                id: pipeline_id.clone(),
                revision: sub.revision.clone(),
                branch: sub.branch.clone(),
                tag: sub.tag.clone(),
                git_url: sub.repo.clone(),
                parameters: sub.parameters.clone(),
                workflow: None,
            };
            let workflows = cfg.workflows(&pipeline, sub.workflow.as_deref()).map_err(bad)?;
            if workflows.iter().all(|w| w.skipped.is_some()) {
                let why: Vec<String> = workflows
                    .iter()
                    .map(|w| format!("{} (line {}): {}", w.name, w.line, w.skipped.as_deref().unwrap_or_default()))
                    .collect();
                return Err(bad(format!("{file}: no workflow runs for this pipeline: {}", why.join("; "))));
            }
            let total: usize = workflows.iter().filter(|w| w.skipped.is_none()).map(|w| w.jobs.len()).sum();
            if total > MAX_PIPELINE_JOBS {
                return Err(bad(format!(
                    "{file}: this pipeline has {total} jobs; one pipeline may have at most {MAX_PIPELINE_JOBS}"
                )));
            }
            let mut wf_rows = Vec::new();
            let mut nodes = Vec::new();
            let mut jobs = Vec::new();
            let mut audits = Vec::new();
            for w in workflows.iter().filter(|w| w.skipped.is_none()) {
                let wid = format!("wf-{}", short_id());
                for (idx, n) in w.jobs.iter().enumerate() {
                    let job_id = if n.approval {
                        None
                    } else {
                        let p = Pipeline { workflow: Some(w.name.clone()), ..pipeline.clone() };
                        let spec = cfg.job(&n.name, &BTreeMap::new(), &p).map_err(bad)?;
                        let plan = self.plan_spec(spec, &file)?;
                        if let Err(e) = self.secrets.check_contexts(&sub.project, &plan.spec.contexts).await {
                            let at = format!("{file}:{}: workflow {}: job {}", n.line, w.name, n.name);
                            return Err(secrets_error(e, &at));
                        }
                        let id = format!("job-{}", short_id());
                        let spec = serde_json::to_string(&plan).map_err(FleetError::other("encoding the job"))?;
                        jobs.push(JobRow {
                            id: id.clone(),
                            number: 0,
                            name: n.name.clone(),
                            project: sub.project.clone(),
                            config_file: file.clone(),
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
                            state: "blocked".into(),
                            cancel_requested: false,
                            failure_reason: None,
                            queued_at: now,
                            started_at: None,
                            finished_at: None,
                            workflow_id: Some(wid.clone()),
                            tag: sub.tag.clone(),
                        });
                        Some(id)
                    };
                    nodes.push(WorkflowJobRow {
                        workflow_id: wid.clone(),
                        name: n.name.clone(),
                        idx: idx as i64,
                        requires: serde_json::to_string(&n.requires).unwrap_or_else(|_| "[]".into()),
                        approval: n.approval,
                        state: if n.approval { "blocked".into() } else { "job".into() },
                        job_id,
                        approved_by: None,
                        finished_at: None,
                    });
                }
                let payload = serde_json::json!({
                    "pipeline": number, "workflow": w.name, "project": sub.project,
                    "jobs": w.jobs.len(), "left_out": w.left_out,
                })
                .to_string();
                audits.push(self.fleet.event("workflow.start", actor, &wid, &payload));
                wf_rows.push(WorkflowRow {
                    id: wid,
                    pipeline_id: pipeline_id.clone(),
                    name: w.name.clone(),
                    idx: wf_rows.len() as i64,
                    project: sub.project.clone(),
                    state: "running".into(),
                    cancel_requested: false,
                    rerun_of: None,
                    created_at: now,
                    stopped_at: None,
                });
            }
            if let Some(e) = cfg.exhausted() {
                return Err(bad(e));
            }
            let row = PipelineRow {
                id: pipeline_id,
                number,
                project: sub.project.clone(),
                config_file: file.clone(),
                repo: sub.repo.clone(),
                revision: sub.revision.clone(),
                branch: sub.branch.clone(),
                tag: sub.tag.clone(),
                parameters: serde_json::to_string(&sub.parameters).unwrap_or_else(|_| "{}".into()),
                actor: actor.to_string(),
                created_at: now,
            };
            if !store.insert_pipeline(&row, &wf_rows, &nodes, &jobs, &audits).await? {
                continue;
            }
            info!(pipeline = %row.id, number, project = %sub.project, workflows = wf_rows.len(), "pipeline created");
            for w in &wf_rows {
                self.advance(&w.id).await;
            }
            let workflows = store.pipeline_workflows(&row.id).await?;
            return Ok((row, workflows));
        }
        Err(FleetError::Conflict("pipeline numbers kept being taken by other submissions; try again".into()))
    }

    /// Moves a workflow forward and audits what moved.
    pub(crate) async fn advance(&self, workflow_id: &str) {
        let advanced = match self.fleet.store.advance_workflow(workflow_id, now_ms()).await {
            Ok(Some(a)) => a,
            Ok(None) => return,
            Err(e) => {
                warn!(workflow = %workflow_id, error = %e, "could not advance the workflow; the next sweep will");
                return;
            }
        };
        for job in &advanced.queued {
            info!(workflow = %workflow_id, %job, "workflow job queued");
            self.fleet.audit("workflow.job.scheduled", "dispatcher", job, workflow_id).await;
        }
        for (name, why) in &advanced.not_run {
            info!(workflow = %workflow_id, job = %name, %why, "workflow job not run");
            let payload = serde_json::json!({"job": name, "why": why}).to_string();
            self.fleet.audit("workflow.job.not_run", "dispatcher", workflow_id, &payload).await;
        }
        for name in &advanced.on_hold {
            self.fleet.audit("workflow.job.on_hold", "dispatcher", workflow_id, name).await;
        }
        if let Some((from, to)) = &advanced.state {
            info!(workflow = %workflow_id, %from, %to, "workflow state");
            if crate::store::workflow_ended(to) {
                self.fleet.audit("workflow.finish", "dispatcher", workflow_id, to).await;
            }
        }
        if !advanced.queued.is_empty() {
            self.wake.notify_one();
        }
    }

    /// Advances every workflow that has not ended: heals a crash between a job's end and its
    /// workflow's step.
    pub(super) async fn sweep_workflows(&self) {
        match self.fleet.store.active_workflows(500).await {
            Ok(ids) => {
                for id in ids {
                    self.advance(&id).await;
                }
            }
            Err(e) => warn!(error = %e, "could not list the running workflows"),
        }
    }

    /// Cancels a workflow: its running and queued jobs are canceled, the rest end `canceled`.
    ///
    /// # Errors
    /// [`FleetError::NotFound`]; [`FleetError::Conflict`] when it has ended.
    pub async fn cancel_workflow(&self, id: &str, actor: &str) -> Result<WorkflowRow, FleetError> {
        let jobs = self.fleet.store.request_workflow_cancel(id).await?;
        self.fleet.audit("workflow.cancel", actor, id, "").await;
        for job in jobs {
            match self.cancel(&job, actor).await {
                Ok(_) | Err(FleetError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.advance(id).await;
        Ok(self.fleet.store.workflow(id).await?)
    }

    /// Approves a held approval job; the jobs that require it go on.
    ///
    /// # Errors
    /// [`FleetError::NotFound`]; [`FleetError::Conflict`] when it is not on hold.
    pub async fn approve(&self, workflow_id: &str, job: &str, actor: &str) -> Result<WorkflowRow, FleetError> {
        let w = self.fleet.store.workflow(workflow_id).await?;
        self.fleet.store.approve(&w.id, job, actor, now_ms()).await?;
        info!(workflow = %w.id, %job, %actor, "approved");
        self.fleet.audit("workflow.job.approve", actor, &w.id, job).await;
        self.advance(&w.id).await;
        Ok(self.fleet.store.workflow(&w.id).await?)
    }

    /// Runs an ended workflow again as a new workflow of its pipeline: every job, or with
    /// `from_failed` only those that did not succeed (and what requires them); succeeded jobs
    /// are carried over, their workspaces with them.
    ///
    /// # Errors
    /// [`FleetError::NotFound`]; [`FleetError::Conflict`] while it runs, or from failed when
    /// nothing failed.
    pub async fn rerun_workflow(&self, id: &str, from_failed: bool, actor: &str) -> Result<WorkflowRow, FleetError> {
        let store = &self.fleet.store;
        let old = store.workflow(id).await?;
        if !old.ended() {
            return Err(FleetError::Conflict(format!("workflow {id} is {}; rerun it once it has ended", old.state)));
        }
        if from_failed && old.state == "success" {
            return Err(FleetError::Conflict(format!("workflow {id} succeeded: no failed job to rerun from")));
        }
        let now = now_ms();
        let wid = format!("wf-{}", short_id());
        let mut nodes = Vec::new();
        let mut jobs = Vec::new();
        for n in store.workflow_nodes(&old.id).await? {
            let prior = match (&n.job_id, n.approval) {
                (Some(j), false) => Some(store.job(j).await?),
                _ => None,
            };
            let state = prior.as_ref().map_or(n.state.as_str(), |j| j.state.as_str());
            let carry = from_failed && state == "success";
            let mut node =
                WorkflowJobRow { workflow_id: wid.clone(), finished_at: None, approved_by: None, ..n.clone() };
            match prior {
                Some(_) if carry => {}
                Some(j) => {
                    let job_id = format!("job-{}", short_id());
                    let deploy_key = match &j.deploy_key {
                        Some(sealed) => {
                            let key = self
                                .secrets
                                .open_deploy_key(&j.id, sealed)
                                .map_err(|e| FleetError::Conflict(format!("job {}: deploy key: {e}", j.id)))?;
                            Some(self.secrets.seal_deploy_key(&job_id, &key))
                        }
                        None => None,
                    };
                    jobs.push(JobRow { id: job_id.clone(), deploy_key, ..j }.into_blocked(&wid, now));
                    node.job_id = Some(job_id);
                }
                None if carry => {
                    node.approved_by = n.approved_by.clone();
                    node.finished_at = n.finished_at;
                }
                None => node.state = "blocked".into(),
            }
            nodes.push(node);
        }
        let w = WorkflowRow {
            id: wid.clone(),
            state: "running".into(),
            cancel_requested: false,
            rerun_of: Some(old.id.clone()),
            created_at: now,
            stopped_at: None,
            ..old.clone()
        };
        let payload =
            serde_json::json!({"rerun_of": old.id, "from_failed": from_failed, "jobs": jobs.len()}).to_string();
        let audit = self.fleet.event("workflow.retry", actor, &wid, &payload);
        store.insert_rerun(&w, &nodes, &jobs, &audit).await?;
        info!(workflow = %wid, rerun_of = %old.id, from_failed, "workflow rerun");
        self.advance(&wid).await;
        Ok(store.workflow(&wid).await?)
    }
}
