//! The fleet store: VMs, tasks, volumes, API tokens and the audit log, on SQLite or PostgreSQL.
//!
//! # Design
//! One SQL text serves both backends wherever the dialects agree (`$N` placeholders work on
//! both); the few statements that differ say so. Every state change is a conditional `UPDATE …
//! WHERE state IN (…)`, so two replicas (or two requests) racing for the same row cannot both
//! win. Idle-VM assignment is a single statement: on PostgreSQL its sub-select takes the row
//! with `FOR UPDATE SKIP LOCKED`; SQLite has one writer, and write transactions start with
//! `BEGIN IMMEDIATE` so they never fail half-way on a lock upgrade.

mod rows;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

pub use rows::*;

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed or could not be reached.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row that must exist does not.
    #[error("{0} not found")]
    NotFound(String),
    /// The change conflicts with the row's state.
    #[error("{0}")]
    Conflict(String),
    /// The database URL is not one we support.
    #[error("database url: {0}")]
    Url(String),
}

/// How the service says that the store's disk is full (`/status`, API errors, logs).
pub const DISK_FULL: &str = "the store's disk is full";

impl StoreError {
    /// Whether the database ran out of disk space (SQLite's SQLITE_FULL, PostgreSQL's
    /// `disk_full` class 53100, or the OS's ENOSPC on either): nothing was written, and a retry
    /// succeeds once space returns.
    pub fn is_disk_full(&self) -> bool {
        let StoreError::Db(e) = self else { return false };
        match e {
            sqlx::Error::Database(d) => {
                matches!(d.code().as_deref(), Some("13") | Some("53100"))
                    || d.message().contains("No space left on device")
            }
            sqlx::Error::Io(io) => io.raw_os_error() == Some(28),
            _ => false,
        }
    }
}

/// Which database a store talks to.
#[derive(Clone, Debug)]
pub enum Db {
    /// Embedded SQLite.
    Sqlite(SqlitePool),
    /// PostgreSQL.
    Postgres(PgPool),
}

/// Runs `$body` with `$p` bound to the backend's pool.
macro_rules! with_pool {
    ($db:expr, |$p:ident| $body:expr) => {
        match $db {
            Db::Sqlite($p) => $body,
            Db::Postgres($p) => $body,
        }
    };
}

/// Runs one statement with its binds on either backend and yields the number of rows it changed.
/// Every conditional update has this shape: the caller reads the count as "the guard held".
macro_rules! execute {
    ($db:expr, $sql:expr $(, $bind:expr)* $(,)?) => {
        with_pool!($db, |p| sqlx::query($sql)$(.bind($bind))*.execute(p).await.map(|r| r.rows_affected()))
    };
}

/// [`execute!`] inside an open transaction.
macro_rules! execute_in {
    ($tx:ident, $sql:expr $(, $bind:expr)* $(,)?) => {
        sqlx::query($sql)$(.bind($bind))*.execute(&mut *$tx).await?.rows_affected()
    };
}

/// Runs `$body` inside a write transaction bound to `$tx`, committing on success.
macro_rules! in_tx {
    ($db:expr, |$tx:ident| $body:expr) => {
        match $db {
            Db::Sqlite(p) => {
                let mut $tx = p.begin_with("BEGIN IMMEDIATE").await?;
                let r = $body;
                $tx.commit().await?;
                r
            }
            Db::Postgres(p) => {
                let mut $tx = p.begin().await?;
                let r = $body;
                $tx.commit().await?;
                r
            }
        }
    };
}

/// Claims an idle VM of `pool` for a task, in the planner's claim order
/// (`vmfleet_scaler::claim_order`: only VMs of `image_id`, the image the pool resolves to now),
/// each claim conditional on the VM still being idle, so concurrent requests never take the same
/// VM. Evaluates to the claimed VM, if any.
macro_rules! claim_idle {
    ($ex:expr, $task_id:expr, $pool:expr, $image_id:expr, $now:expr) => {{
        let image_id: &str = $image_id;
        let rows: Vec<(String, Option<i64>, i64, String)> = sqlx::query_as(
            "SELECT id, ready_at, requested_at, image_id FROM vms \
             WHERE pool = $1 AND state = 'ready' AND NOT draining AND task_id IS NULL",
        )
        .bind($pool)
        .fetch_all($ex)
        .await?;
        let idle: Vec<vmfleet_scaler::IdleVm> = rows
            .iter()
            .map(|(id, ready_at, requested_at, image)| vmfleet_scaler::IdleVm {
                vm_id: id.clone(),
                ready_at_ms: ready_at.unwrap_or(*requested_at),
                launched_at_ms: *requested_at,
                outdated: image != image_id,
            })
            .collect();
        let mut claimed: Option<VmRow> = None;
        for i in vmfleet_scaler::claim_order(&idle) {
            claimed = sqlx::query_as(
                "UPDATE vms SET state = 'assigned', task_id = $1, assigned_at = $2, state_since = $2 \
                 WHERE id = $3 AND state = 'ready' AND NOT draining AND task_id IS NULL AND image_id = $4 RETURNING *",
            )
            .bind($task_id)
            .bind($now)
            .bind(&idle[i].vm_id)
            .bind(image_id)
            .fetch_optional($ex)
            .await?;
            if claimed.is_some() {
                break;
            }
        }
        claimed
    }};
}

/// Starts a stopped VM of `pool` (of `image_id`) for a task that found no idle one, in the
/// planner's claim order, each step conditional on the VM still being stopped and free.
/// Evaluates to the VM, now `starting` and reserved for the task; the caller asks the provider.
macro_rules! claim_stopped {
    ($ex:expr, $task_id:expr, $pool:expr, $image_id:expr, $now:expr) => {{
        let image_id: &str = $image_id;
        let rows: Vec<(String, Option<i64>, i64)> = sqlx::query_as(
            "SELECT id, stopped_at, requested_at FROM vms \
             WHERE pool = $1 AND state = 'stopped' AND NOT draining AND task_id IS NULL AND image_id = $2",
        )
        .bind($pool)
        .bind(image_id)
        .fetch_all($ex)
        .await?;
        let stopped: Vec<vmfleet_scaler::IdleVm> = rows
            .iter()
            .map(|(id, stopped_at, requested_at)| vmfleet_scaler::IdleVm {
                vm_id: id.clone(),
                ready_at_ms: stopped_at.unwrap_or(*requested_at),
                launched_at_ms: *requested_at,
                outdated: false,
            })
            .collect();
        let mut started: Option<VmRow> = None;
        for i in vmfleet_scaler::claim_order(&stopped) {
            started = sqlx::query_as(
                "UPDATE vms SET state = 'starting', task_id = $1, preallocated = FALSE, stop_after_boot = FALSE, \
                 starting_at = $2, state_since = $2 \
                 WHERE id = $3 AND state = 'stopped' AND NOT draining AND task_id IS NULL RETURNING *",
            )
            .bind($task_id)
            .bind($now)
            .bind(&stopped[i].vm_id)
            .fetch_optional($ex)
            .await?;
            if started.is_some() {
                break;
            }
        }
        started
    }};
}

macro_rules! insert_task {
    ($ex:expr, $t:expr) => {{
        let t: &TaskRow = $t;
        sqlx::query(
            "INSERT INTO tasks (id, pool, executor, image, resource_class, project, dlc, state, vm_id, volume_id, \
             failure_reason, created_at, assigned_at, released_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&t.id)
        .bind(&t.pool)
        .bind(&t.executor)
        .bind(&t.image)
        .bind(&t.resource_class)
        .bind(&t.project)
        .bind(t.dlc)
        .bind(&t.state)
        .bind(&t.vm_id)
        .bind(&t.volume_id)
        .bind(&t.failure_reason)
        .bind(t.created_at)
        .bind(t.assigned_at)
        .bind(t.released_at)
        .execute($ex)
        .await
        .map(|r| r.rows_affected())
    }};
}

macro_rules! insert_vm {
    ($ex:expr, $v:expr) => {{
        let v: &VmRow = $v;
        sqlx::query(
            "INSERT INTO vms (id, pool, executor, image, resource_class, preallocated, state, task_id, instance_id, \
             image_id, instance_type, platform, zone, host, ssh_port, ssh_user, ssh_private_key, ssh_public_key, \
             host_key, draining, failure_reason, requested_at, state_since, stop_after_boot) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $22, $23)",
        )
        .bind(&v.id)
        .bind(&v.pool)
        .bind(&v.executor)
        .bind(&v.image)
        .bind(&v.resource_class)
        .bind(v.preallocated)
        .bind(&v.state)
        .bind(&v.task_id)
        .bind(&v.instance_id)
        .bind(&v.image_id)
        .bind(&v.instance_type)
        .bind(&v.platform)
        .bind(&v.zone)
        .bind(&v.host)
        .bind(v.ssh_port)
        .bind(&v.ssh_user)
        .bind(&v.ssh_private_key)
        .bind(&v.ssh_public_key)
        .bind(&v.host_key)
        .bind(v.draining)
        .bind(&v.failure_reason)
        .bind(v.requested_at)
        .bind(v.stop_after_boot)
        .execute($ex)
        .await
        .map(|r| r.rows_affected())
    }};
}

macro_rules! insert_volume {
    ($ex:expr, $v:expr) => {{
        let v: &VolumeRow = $v;
        sqlx::query(
            "INSERT INTO volumes (id, project, provider_id, zone, size_gb, state, task_id, vm_id, created_at, \
             last_used_at, state_since) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $9)",
        )
        .bind(&v.id)
        .bind(&v.project)
        .bind(&v.provider_id)
        .bind(&v.zone)
        .bind(v.size_gb)
        .bind(&v.state)
        .bind(&v.task_id)
        .bind(&v.vm_id)
        .bind(v.created_at)
        .bind(v.last_used_at)
        .execute($ex)
        .await
        .map(|r| r.rows_affected())
    }};
}

/// Inserts a queued, never-started job task inside an open transaction.
macro_rules! insert_job_task {
    ($tx:ident, $t:expr) => {{
        let t: &JobTaskRow = $t;
        execute_in!(
            $tx,
            "INSERT INTO job_tasks (id, job_id, node_index, project, state, attempt, queued_at) \
             VALUES ($1, $2, $3, $4, 'queued', 0, $5)",
            &t.id,
            &t.job_id,
            t.node_index,
            &t.project,
            t.queued_at
        );
    }};
}

macro_rules! insert_audit {
    ($ex:expr, $e:expr) => {{
        let e: &AuditEvent = $e;
        sqlx::query(
            "INSERT INTO audit_events (id, version, action, actor, target, payload, occurred_at, scope, success, \
             request) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&e.id)
        .bind(e.version)
        .bind(&e.action)
        .bind(&e.actor)
        .bind(&e.target)
        .bind(&e.payload)
        .bind(e.occurred_at)
        .bind(&e.scope)
        .bind(e.success)
        .bind(&e.request)
        .execute($ex)
        .await
        .map(|r| r.rows_affected())
    }};
}

/// After a task ends its VM is retired (VMs are never reused) and its volume detached.
macro_rules! retire_task_resources {
    ($tx:ident, $task_id:expr, $now:expr) => {{
        sqlx::query(
            "UPDATE vms SET state = 'releasing', releasing_at = $2, state_since = $2 \
             WHERE task_id = $1 AND state IN ('requested','provisioning','booting','ready','assigned')",
        )
        .bind($task_id)
        .bind($now)
        .execute(&mut *$tx)
        .await?;
        sqlx::query(
            "UPDATE volumes SET state = CASE WHEN provider_id IS NULL THEN 'available' ELSE 'detaching' END, \
             task_id = CASE WHEN provider_id IS NULL THEN NULL ELSE task_id END, \
             vm_id = CASE WHEN provider_id IS NULL THEN NULL ELSE vm_id END, state_since = $2 \
             WHERE task_id = $1 AND state IN ('creating','attaching','attached')",
        )
        .bind($task_id)
        .bind($now)
        .execute(&mut *$tx)
        .await?;
    }};
}

/// Releases a task inside a transaction: `released`, its VM retired and its volume detached.
macro_rules! release_task_in_tx {
    ($tx:ident, $task_id:expr, $now:expr) => {{
        sqlx::query(
            "UPDATE tasks SET state = 'released', released_at = $2 WHERE id = $1 AND state IN ('waiting','assigned')",
        )
        .bind($task_id)
        .bind($now)
        .execute(&mut *$tx)
        .await?;
        retire_task_resources!($tx, $task_id, $now);
    }};
}

/// Whether `bounds` leave room for one more VM in `pool`, inside a transaction. On PostgreSQL
/// a transaction-scoped advisory lock serializes bounded inserts, so two replicas cannot both
/// take the last place; SQLite transactions are serialized already.
macro_rules! room {
    ($ex:expr, $pg:expr, $pool:expr, $bounds:expr) => {{
        let b: Bounds = $bounds;
        if b.pool_max.is_none() && b.fleet_max.is_none() {
            true
        } else {
            if $pg {
                sqlx::query("SELECT pg_advisory_xact_lock(7596232761)").execute($ex).await?;
            }
            let pool_n: i64 = match b.pool_max {
                Some(_) => {
                    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM vms WHERE pool = $1 AND state IN {VM_LIVE}"))
                        .bind($pool)
                        .fetch_one($ex)
                        .await?
                }
                None => 0,
            };
            let fleet_n: i64 = match b.fleet_max {
                Some(_) => {
                    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM vms WHERE state IN {VM_LIVE}"))
                        .fetch_one($ex)
                        .await?
                }
                None => 0,
            };
            b.pool_max.is_none_or(|m| pool_n < i64::from(m)) && b.fleet_max.is_none_or(|m| fleet_n < i64::from(m))
        }
    }};
}

/// The store.
#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A time in milliseconds as RFC 3339, as the API shows times.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

const VM_LIVE: &str =
    "('requested','provisioning','booting','ready','assigned','stopping','stopped','starting','releasing','terminating')";

impl Store {
    /// Connects to `url` (`sqlite:PATH` or `postgres://…`) and runs the migrations.
    ///
    /// # Errors
    /// [`StoreError::Url`] for an unsupported URL, [`StoreError::Db`] when unreachable,
    /// [`StoreError::Migrate`] when the schema cannot be brought up to date.
    pub async fn open(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let store = Self::connect(url, max_connections).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects without migrating.
    ///
    /// # Errors
    /// As [`Store::open`].
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let db = if let Some(rest) = url.strip_prefix("sqlite:") {
            let opts = SqliteConnectOptions::from_str(&format!("sqlite:{rest}"))
                .map_err(|e| StoreError::Url(e.to_string()))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            // One connection whatever `max_connections` says: SQLite has one writer anyway, and
            // queueing in-process is far cheaper than its sleeping busy handler when writers collide.
            // A connection that comes back still inside a transaction is closed, not reused: when
            // SQLite rolls a transaction back by itself (a full disk), sqlx's ROLLBACK fails and
            // its count of open transactions would refuse every later BEGIN on that connection.
            Db::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(1)
                    .after_release(|conn, _| Box::pin(async move { Ok(!sqlx::Connection::is_in_transaction(conn)) }))
                    .connect_with(opts)
                    .await?,
            )
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url).map_err(|_| StoreError::Url(redact_url(url)))?;
            Db::Postgres(
                PgPoolOptions::new()
                    .max_connections(max_connections.max(1))
                    .acquire_timeout(Duration::from_secs(10))
                    .after_release(|conn, _| Box::pin(async move { Ok(!sqlx::Connection::is_in_transaction(conn)) }))
                    .connect_with(opts)
                    .await?,
            )
        } else {
            return Err(StoreError::Url(format!("{}: expected sqlite:PATH or postgres://…", redact_url(url))));
        };
        Ok(Self { db })
    }

    /// Brings the schema up to date.
    ///
    /// # Errors
    /// [`StoreError::Migrate`].
    pub async fn migrate(&self) -> Result<(), StoreError> {
        // One set of migrations: the SQL is valid on both backends. Should one ever differ,
        // per-backend directories can take its place.
        let migrator = sqlx::migrate!("./migrations");
        match &self.db {
            Db::Sqlite(p) => migrator.run(p).await?,
            Db::Postgres(p) => migrator.run(p).await?,
        }
        Ok(())
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// The underlying pool, for leader election and benchmarks.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Cheap liveness probe.
    ///
    /// # Errors
    /// [`StoreError::Db`] when the database does not answer.
    pub async fn ping(&self) -> Result<(), StoreError> {
        execute!(&self.db, "SELECT 1")?;
        Ok(())
    }

    fn lock_clause(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "",
            Db::Postgres(_) => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// The installation id, created on first use (or set to `wanted` if given and none exists).
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when `wanted` differs from the stored id.
    pub async fn install_id(&self, wanted: Option<&str>) -> Result<String, StoreError> {
        let fresh = wanted.map_or_else(|| format!("vmf-{}", short_id()), str::to_string);
        let sql_ins = "INSERT INTO meta (key, value) VALUES ('install_id', $1) ON CONFLICT (key) DO NOTHING";
        let sql_get = "SELECT value FROM meta WHERE key = 'install_id'";
        let id: String = with_pool!(&self.db, |p| {
            sqlx::query(sql_ins).bind(&fresh).execute(p).await?;
            sqlx::query_scalar(sql_get).fetch_one(p).await?
        });
        if let Some(w) = wanted {
            if w != id {
                return Err(StoreError::Conflict(format!(
                    "config sets install_id {w} but this database belongs to installation {id}"
                )));
            }
        }
        Ok(id)
    }
}

fn state_list(states: &[VmState]) -> String {
    states.iter().map(|s| format!("'{}'", s.as_str())).collect::<Vec<_>>().join(",")
}

/// A short random id (12 hex digits from a v4 UUID).
pub fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// A URL with any password replaced, for error messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}://{}:***@{}", &url[..s], user, &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

mod admin;
mod jobs;
mod secrets;
mod storage;
mod tasks;
mod vms;
mod volumes;
mod workflows;

pub use storage::{ArtifactRow, CacheRow, TestResultRow, WorkspaceLayerRow};
pub use workflows::{derive_workflow_state, workflow_ended, Advanced, PipelineRow, WorkflowJobRow, WorkflowRow};
