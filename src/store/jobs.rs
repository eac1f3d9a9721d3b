//! Jobs, their parallel tasks, steps and output.
//!
//! # Design
//! A job task is claimed by one process at a time: the claim is a conditional update from
//! `queued` to `running` that stamps the owner and a lease; the owner renews the lease while it
//! works, and every later write of the owner is conditional on still being the owner, so a
//! process that lost its claim (its lease ran out and the task was requeued) cannot overwrite
//! the new attempt. Claims pick, among queued tasks, those of the project with the fewest
//! running tasks first, then the oldest: one project's 50-way matrix does not starve the rest.

use super::{AuditEvent, Db, JobRow, JobStepRow, JobTaskRow, OutputChunk, Store, StoreError};

impl Store {
    /// Records a job and its tasks (all `queued`), numbering the job after the newest one.
    /// Returns the number.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn insert_job(&self, job: &JobRow, tasks: &[JobTaskRow], audit: &AuditEvent) -> Result<i64, StoreError> {
        let pg = matches!(self.db, Db::Postgres(_));
        Ok(in_tx!(&self.db, |tx| {
            if pg {
                execute_in!(tx, "SELECT pg_advisory_xact_lock(7596232762)");
            }
            let number: i64 =
                sqlx::query_scalar("SELECT COALESCE(MAX(number), 0) + 1 FROM jobs").fetch_one(&mut *tx).await?;
            execute_in!(
                tx,
                "INSERT INTO jobs (id, number, name, project, config_file, spec, pool, repo, revision, branch, \
                 deploy_key, parallelism, state, cancel_requested, queued_at, workflow_id, tag) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'queued', FALSE, $13, $14, $15)",
                &job.id,
                number,
                &job.name,
                &job.project,
                &job.config_file,
                &job.spec,
                &job.pool,
                &job.repo,
                &job.revision,
                &job.branch,
                &job.deploy_key,
                job.parallelism,
                job.queued_at,
                &job.workflow_id,
                &job.tag
            );
            for t in tasks {
                insert_job_task!(tx, t);
            }
            insert_audit!(&mut *tx, audit)?;
            number
        }))
    }

    /// One job.
    ///
    /// # Errors
    /// [`StoreError::NotFound`].
    pub async fn job(&self, id: &str) -> Result<JobRow, StoreError> {
        let sql = "SELECT * FROM jobs WHERE id = $1 OR CAST(number AS TEXT) = $1";
        with_pool!(&self.db, |p| sqlx::query_as(sql).bind(id).fetch_optional(p).await)?
            .ok_or_else(|| StoreError::NotFound(format!("job {id}")))
    }

    /// Jobs, newest first, optionally only those in `state`.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn jobs(&self, state: Option<&str>, limit: i64) -> Result<Vec<JobRow>, StoreError> {
        let sql = "SELECT * FROM jobs WHERE ($1 IS NULL OR state = $1) ORDER BY number DESC LIMIT $2";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).bind(state).bind(limit).fetch_all(p).await)?)
    }

    /// A job's tasks by node index.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn job_tasks(&self, job_id: &str) -> Result<Vec<JobTaskRow>, StoreError> {
        let sql = "SELECT * FROM job_tasks WHERE job_id = $1 ORDER BY node_index";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).bind(job_id).fetch_all(p).await)?)
    }

    /// Claims the next queued job task for `owner` until `lease_until`: of the project with the
    /// fewest running tasks, then the oldest.
    ///
    /// # Guarantees
    /// Two concurrent claims never take the same task.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn claim_job_task(
        &self,
        owner: &str,
        lease_until: i64,
        now: i64,
    ) -> Result<Option<JobTaskRow>, StoreError> {
        let pick = format!(
            "SELECT jt.id FROM job_tasks jt WHERE jt.state = 'queued' ORDER BY \
             (SELECT COUNT(*) FROM job_tasks r WHERE r.project = jt.project AND r.state = 'running'), \
             jt.queued_at, jt.node_index, jt.id LIMIT 1{}",
            self.lock_clause()
        );
        Ok(in_tx!(&self.db, |tx| {
            let id: Option<String> = sqlx::query_scalar(&pick).fetch_optional(&mut *tx).await?;
            match id {
                None => None,
                Some(id) => {
                    sqlx::query_as(
                        "UPDATE job_tasks SET state = 'running', owner = $2, lease_until = $3, attempt = attempt + 1, \
                         started_at = $4, fleet_task_id = NULL, remote_task_id = NULL \
                         WHERE id = $1 AND state = 'queued' RETURNING *",
                    )
                    .bind(&id)
                    .bind(owner)
                    .bind(lease_until)
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await?
                }
            }
        }))
    }

    /// Renews `owner`'s lease on a running task; `false` when the claim is lost.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn renew_lease(&self, id: &str, owner: &str, lease_until: i64) -> Result<bool, StoreError> {
        let sql = "UPDATE job_tasks SET lease_until = $3 WHERE id = $1 AND owner = $2 AND state = 'running'";
        let n = execute!(&self.db, sql, id, owner, lease_until)?;
        Ok(n == 1)
    }

    /// Running tasks whose lease ran out before `now`.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn expired_job_tasks(&self, now: i64) -> Result<Vec<JobTaskRow>, StoreError> {
        let sql = "SELECT * FROM job_tasks WHERE state = 'running' AND lease_until < $1 ORDER BY queued_at";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).bind(now).fetch_all(p).await)?)
    }

    /// A task whose owner's lease ran out: its fleet tasks are released (their VMs destroyed,
    /// volumes detached) and it is queued again, or, after `max_attempts`, ended as an
    /// infrastructure failure. Returns the state it got, or `None` when someone else got there
    /// first (or the owner renewed in time).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn requeue_expired(
        &self,
        t: &JobTaskRow,
        max_attempts: u32,
        now: i64,
    ) -> Result<Option<&'static str>, StoreError> {
        let state = if t.attempt >= i64::from(max_attempts) { "infrastructure_fail" } else { "queued" };
        Ok(in_tx!(&self.db, |tx| {
            let reason =
                format!("the process running it ({}) stopped renewing its claim", t.owner.as_deref().unwrap_or("?"));
            let n = execute_in!(
                tx,
                "UPDATE job_tasks SET state = $4, owner = NULL, lease_until = NULL, \
                 failure_reason = CASE WHEN $4 = 'queued' THEN NULL ELSE $5 END, \
                 finished_at = CASE WHEN $4 = 'queued' THEN NULL ELSE $6 END \
                 WHERE id = $1 AND state = 'running' AND attempt = $2 AND lease_until < $3",
                &t.id,
                t.attempt,
                now,
                state,
                &reason,
                now
            );
            if n == 1 {
                for fleet_task in [&t.fleet_task_id, &t.remote_task_id].into_iter().flatten() {
                    release_task_in_tx!(tx, fleet_task, now);
                }
                Some(state)
            } else {
                None
            }
        }))
    }

    /// Records the fleet task (`remote` for the remote-Docker engine) an owner asked for.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the claim is lost.
    pub async fn set_job_fleet_task(
        &self,
        id: &str,
        owner: &str,
        fleet_task: &str,
        remote: bool,
    ) -> Result<(), StoreError> {
        let col = if remote { "remote_task_id" } else { "fleet_task_id" };
        let sql = format!("UPDATE job_tasks SET {col} = $3 WHERE id = $1 AND owner = $2 AND state = 'running'");
        let n = execute!(&self.db, &sql, id, owner, fleet_task)?;
        if n == 1 {
            Ok(())
        } else {
            Err(StoreError::Conflict(format!("job task {id} is no longer claimed by {owner}")))
        }
    }

    /// Ends an owner's task with `state`; `false` when the claim was lost.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn finish_job_task(
        &self,
        id: &str,
        owner: &str,
        state: &str,
        exit_code: Option<i64>,
        reason: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let sql = "UPDATE job_tasks SET state = $3, exit_code = $4, failure_reason = $5, finished_at = $6, \
                   lease_until = NULL WHERE id = $1 AND owner = $2 AND state = 'running'";
        let n = execute!(&self.db, sql, id, owner, state, exit_code, reason, now)?;
        Ok(n == 1)
    }

    /// Marks a job running when its first task starts; `true` for the call that did.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn start_job(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let sql = "UPDATE jobs SET state = 'running', started_at = $2 WHERE id = $1 AND state = 'queued'";
        let n = execute!(&self.db, sql, id, now)?;
        Ok(n == 1)
    }

    /// Ends a job once all its tasks have ended: `infrastructure_fail` if any task had one,
    /// else `canceled` if canceled, else `failed` if any failed, else `success`. Returns the
    /// state for the call that ended it.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn finish_job_if_done(&self, id: &str, now: i64) -> Result<Option<String>, StoreError> {
        Ok(in_tx!(&self.db, |tx| {
            let states: Vec<(String, Option<String>)> =
                sqlx::query_as("SELECT state, failure_reason FROM job_tasks WHERE job_id = $1")
                    .bind(id)
                    .fetch_all(&mut *tx)
                    .await?;
            let done = ["success", "failed", "canceled", "infrastructure_fail"];
            if states.is_empty() || !states.iter().all(|(s, _)| done.contains(&s.as_str())) {
                None
            } else {
                let has = |x: &str| states.iter().any(|(s, _)| s == x);
                let state =
                    ["infrastructure_fail", "canceled", "failed"].into_iter().find(|s| has(s)).unwrap_or("success");
                let reason = states.iter().find(|(s, _)| s == state).and_then(|(_, r)| r.clone());
                let n = execute_in!(
                    tx,
                    "UPDATE jobs SET state = $2, failure_reason = $3, finished_at = $4 \
                     WHERE id = $1 AND state IN ('queued','running')",
                    id,
                    state,
                    reason,
                    now
                );
                (n == 1).then(|| state.to_string())
            }
        }))
    }

    /// Asks for a job to be canceled: its queued tasks end at once, running ones when their
    /// owner sees the request.
    ///
    /// # Errors
    /// [`StoreError::NotFound`]; [`StoreError::Conflict`] when it has already ended.
    pub async fn cancel_job(&self, id: &str, now: i64) -> Result<JobRow, StoreError> {
        let job = self.job(id).await?;
        if job.ended() {
            return Err(StoreError::Conflict(format!("job {} has already ended ({})", job.id, job.state)));
        }
        in_tx!(&self.db, |tx| {
            execute_in!(tx, "UPDATE jobs SET cancel_requested = TRUE WHERE id = $1", &job.id);
            // A workflow's job still waiting for the jobs it requires never started.
            execute_in!(
                tx,
                "UPDATE jobs SET state = 'canceled', finished_at = $2, failure_reason = 'the job was canceled' \
                 WHERE id = $1 AND state = 'blocked'",
                &job.id,
                now
            );
            execute_in!(
                tx,
                "UPDATE job_tasks SET state = 'canceled', finished_at = $2, failure_reason = 'the job was canceled' \
                 WHERE job_id = $1 AND state = 'queued'",
                &job.id,
                now
            );
        });
        self.job(&job.id).await
    }

    /// `owner`'s running tasks whose job was asked to cancel.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn canceled_job_tasks(&self, owner: &str) -> Result<Vec<String>, StoreError> {
        let sql = "SELECT t.id FROM job_tasks t JOIN jobs j ON j.id = t.job_id \
                   WHERE t.owner = $1 AND t.state = 'running' AND j.cancel_requested";
        Ok(with_pool!(&self.db, |p| sqlx::query_scalar(sql).bind(owner).fetch_all(p).await)?)
    }

    /// Records that a step started.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn start_step(&self, task: &str, attempt: i64, idx: i64, name: &str, now: i64) -> Result<(), StoreError> {
        let sql = "INSERT INTO job_steps (job_task_id, attempt, idx, name, state, started_at) \
                   VALUES ($1, $2, $3, $4, 'running', $5)";
        execute!(&self.db, sql, task, attempt, idx, name, now)?;
        Ok(())
    }

    /// Records a step's end (`success`, `failed`, `timedout`, `canceled`, `skipped`).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn finish_step(
        &self,
        task: &str,
        attempt: i64,
        idx: i64,
        state: &str,
        exit_code: Option<i64>,
        now: i64,
    ) -> Result<(), StoreError> {
        let sql = "UPDATE job_steps SET state = $4, exit_code = $5, finished_at = $6 \
                   WHERE job_task_id = $1 AND attempt = $2 AND idx = $3";
        execute!(&self.db, sql, task, attempt, idx, state, exit_code, now)?;
        Ok(())
    }

    /// A job task's steps of one attempt.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn job_steps(&self, task: &str, attempt: i64) -> Result<Vec<JobStepRow>, StoreError> {
        let sql = "SELECT * FROM job_steps WHERE job_task_id = $1 AND attempt = $2 ORDER BY idx";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).bind(task).bind(attempt).fetch_all(p).await)?)
    }

    /// Appends output chunks in one transaction.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn append_output(&self, chunks: &[OutputChunk]) -> Result<(), StoreError> {
        if chunks.is_empty() {
            return Ok(());
        }
        in_tx!(&self.db, |tx| {
            for c in chunks {
                execute_in!(
                    tx,
                    "INSERT INTO job_output (job_task_id, attempt, seq, job_id, step, stream, data, at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    &c.job_task_id,
                    c.attempt,
                    c.seq,
                    &c.job_id,
                    c.step,
                    &c.stream,
                    &c.data,
                    c.at
                );
            }
        });
        Ok(())
    }

    /// Output of one attempt of a task after `after` (a sequence number), in order.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn output(
        &self,
        task: &str,
        attempt: i64,
        after: i64,
        limit: i64,
    ) -> Result<Vec<OutputChunk>, StoreError> {
        let sql = "SELECT * FROM job_output WHERE job_task_id = $1 AND attempt = $2 AND seq > $3 ORDER BY seq LIMIT $4";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql)
            .bind(task)
            .bind(attempt)
            .bind(after)
            .bind(limit)
            .fetch_all(p)
            .await)?)
    }
}
