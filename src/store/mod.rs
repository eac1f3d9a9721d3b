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
             host_key, draining, failure_reason, requested_at, state_since) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $22)",
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

const VM_LIVE: &str = "('requested','provisioning','booting','ready','assigned','releasing','terminating')";

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
            Db::Sqlite(SqlitePoolOptions::new().max_connections(1).connect_with(opts).await?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url).map_err(|_| StoreError::Url(redact_url(url)))?;
            Db::Postgres(
                PgPoolOptions::new()
                    .max_connections(max_connections.max(1))
                    .acquire_timeout(Duration::from_secs(10))
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
        with_pool!(&self.db, |p| sqlx::query("SELECT 1").execute(p).await.map(|r| r.rows_affected()))?;
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

    // ---- tasks and assignment ----

    /// Records a task and gives it a VM in one transaction: an idle VM of its pool built from
    /// `on_demand.image_id` if there is one (handed over at once unless the task needs a DLC
    /// volume attached first), else the on-demand VM `on_demand`, reserved for the task.
    ///
    /// # Guarantees
    /// Two concurrent calls never take the same idle VM.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] while the fleet is paused for a reset; [`StoreError::Db`].
    pub async fn request_task(
        &self,
        task: &TaskRow,
        on_demand: &VmRow,
        audit: Option<&AuditEvent>,
    ) -> Result<Assignment, StoreError> {
        self.request_task_within(task, on_demand, audit, Bounds::default()).await
    }

    /// [`Store::request_task`], recording the on-demand VM only while `bounds` leave room;
    /// otherwise the task is queued (waiting, without a VM) for the scaler to serve.
    ///
    /// # Guarantees
    /// Concurrent requests never take the pool or the fleet past the bounds.
    ///
    /// # Errors
    /// As [`Store::request_task`].
    pub async fn request_task_within(
        &self,
        task: &TaskRow,
        on_demand: &VmRow,
        audit: Option<&AuditEvent>,
        bounds: Bounds,
    ) -> Result<Assignment, StoreError> {
        let pg = matches!(self.db, Db::Postgres(_));
        let now = task.created_at;
        Ok(in_tx!(&self.db, |tx| {
            // In the same transaction as the assignment, so a reset cannot interleave.
            let paused: Option<String> =
                sqlx::query_scalar("SELECT value FROM meta WHERE key = 'paused'").fetch_optional(&mut *tx).await?;
            if paused.as_deref() == Some("1") {
                return Err(StoreError::Conflict("the fleet is paused for a reset; try again shortly".into()));
            }
            insert_task!(&mut *tx, task)?;
            if let Some(e) = audit {
                insert_audit!(&mut *tx, e)?;
            }
            // Only a VM of the image the pool resolves to now: after a promotion, new tasks get
            // the new version while outdated VMs wait to be replaced.
            let claimed: Option<VmRow> = claim_idle!(&mut *tx, &task.id, &task.pool, &on_demand.image_id, now);
            match claimed {
                Some(vm) => {
                    let handed = !task.dlc;
                    if handed {
                        sqlx::query("UPDATE tasks SET state = 'assigned', vm_id = $2, assigned_at = $3 WHERE id = $1")
                            .bind(&task.id)
                            .bind(&vm.id)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                    } else {
                        sqlx::query("UPDATE tasks SET vm_id = $2 WHERE id = $1")
                            .bind(&task.id)
                            .bind(&vm.id)
                            .execute(&mut *tx)
                            .await?;
                    }
                    Assignment { vm: Some(vm), warm: true, handed_over: handed }
                }
                None if room!(&mut *tx, pg, &on_demand.pool, bounds) => {
                    insert_vm!(&mut *tx, on_demand)?;
                    sqlx::query("UPDATE tasks SET vm_id = $2 WHERE id = $1")
                        .bind(&task.id)
                        .bind(&on_demand.id)
                        .execute(&mut *tx)
                        .await?;
                    Assignment { vm: Some(on_demand.clone()), warm: false, handed_over: false }
                }
                None => Assignment { vm: None, warm: false, handed_over: false },
            }
        }))
    }

    /// Hands a task its VM once the VM is up and any DLC volume is attached: the VM becomes
    /// `assigned`, the task `assigned`.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the task is no longer waiting.
    pub async fn hand_over(&self, task_id: &str, vm_id: &str, now: i64) -> Result<(), StoreError> {
        let changed = in_tx!(&self.db, |tx| {
            let t = sqlx::query(
                "UPDATE tasks SET state = 'assigned', vm_id = $2, assigned_at = $3 WHERE id = $1 AND state = 'waiting'",
            )
            .bind(task_id)
            .bind(vm_id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if t == 1 {
                sqlx::query(
                    "UPDATE vms SET state = 'assigned', assigned_at = COALESCE(assigned_at, $2), state_since = $2 \
                     WHERE id = $1 AND state IN ('booting','ready','assigned')",
                )
                .bind(vm_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            t
        });
        if changed == 1 {
            Ok(())
        } else {
            Err(StoreError::Conflict(format!("task {task_id} is no longer waiting")))
        }
    }

    /// One task.
    ///
    /// # Errors
    /// [`StoreError::NotFound`].
    pub async fn task(&self, id: &str) -> Result<TaskRow, StoreError> {
        with_pool!(&self.db, |p| sqlx::query_as("SELECT * FROM tasks WHERE id = $1").bind(id).fetch_optional(p).await)?
            .ok_or_else(|| StoreError::NotFound(format!("task {id}")))
    }

    /// Tasks, newest first, optionally only those in `state`.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn tasks(&self, state: Option<&str>, limit: i64) -> Result<Vec<TaskRow>, StoreError> {
        let sql = "SELECT * FROM tasks WHERE ($1 IS NULL OR state = $1) ORDER BY created_at DESC, id LIMIT $2";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).bind(state).bind(limit).fetch_all(p).await)?)
    }

    /// Releases a task: the task becomes `released`, its VM `releasing` (VMs are never reused)
    /// and its volume `detaching`. Releasing twice is harmless.
    ///
    /// # Errors
    /// [`StoreError::NotFound`].
    pub async fn release_task(&self, id: &str, now: i64) -> Result<TaskRow, StoreError> {
        in_tx!(&self.db, |tx| {
            release_task_in_tx!(tx, id, now);
        });
        self.task(id).await
    }

    /// Fails a task with a reason and retires its VM and volume.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn fail_task(&self, id: &str, reason: &str, now: i64) -> Result<(), StoreError> {
        in_tx!(&self.db, |tx| {
            sqlx::query(
                "UPDATE tasks SET state = 'failed', failure_reason = $2, released_at = $3 \
                 WHERE id = $1 AND state IN ('waiting','assigned')",
            )
            .bind(id)
            .bind(reason)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            retire_task_resources!(tx, id, now);
        });
        Ok(())
    }

    // ---- VMs ----

    /// Records a new VM (intent before effect: before the provider hears of it).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn insert_vm(&self, vm: &VmRow) -> Result<(), StoreError> {
        with_pool!(&self.db, |p| insert_vm!(p, vm))?;
        Ok(())
    }

    /// Records a new warm VM if `bounds` leave room; returns whether it did.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn insert_vm_within(&self, vm: &VmRow, bounds: Bounds) -> Result<bool, StoreError> {
        let pg = matches!(self.db, Db::Postgres(_));
        Ok(in_tx!(&self.db, |tx| {
            let ok = room!(&mut *tx, pg, &vm.pool, bounds);
            if ok {
                insert_vm!(&mut *tx, vm)?;
            }
            ok
        }))
    }

    /// Gives a queued task (waiting, without a VM) the on-demand VM `vm`, if it is still
    /// queued and `bounds` leave room; returns whether it did.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn reserve_vm_for_task(&self, task_id: &str, vm: &VmRow, bounds: Bounds) -> Result<bool, StoreError> {
        let pg = matches!(self.db, Db::Postgres(_));
        let lock = self.lock_clause().replace(" SKIP LOCKED", "");
        Ok(in_tx!(&self.db, |tx| {
            let queued: Option<String> = sqlx::query_scalar(&format!(
                "SELECT id FROM tasks WHERE id = $1 AND state = 'waiting' AND vm_id IS NULL{lock}"
            ))
            .bind(task_id)
            .fetch_optional(&mut *tx)
            .await?;
            let ok = queued.is_some() && room!(&mut *tx, pg, &vm.pool, bounds);
            if ok {
                insert_vm!(&mut *tx, vm)?;
                sqlx::query("UPDATE tasks SET vm_id = $2 WHERE id = $1")
                    .bind(task_id)
                    .bind(&vm.id)
                    .execute(&mut *tx)
                    .await?;
            }
            ok
        }))
    }

    /// (pool, milliseconds from request to hand-over) of tasks handed their VM since `since`.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn queue_times(&self, since: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let sql = "SELECT pool, assigned_at - created_at FROM tasks WHERE assigned_at >= $1";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).bind(since).fetch_all(p).await)?)
    }

    /// The live VM running on a provider instance, if any.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn vm_by_instance(&self, instance_id: &str) -> Result<Option<VmRow>, StoreError> {
        let sql = format!("SELECT * FROM vms WHERE instance_id = $1 AND state IN {VM_LIVE} LIMIT 1");
        Ok(with_pool!(&self.db, |p| sqlx::query_as(&sql).bind(instance_id).fetch_optional(p).await)?)
    }

    /// A warm VM that just came up (`booting`, unreserved) is given to the oldest task of its
    /// pool still waiting for the VM launched for it; that VM, still starting, becomes a warm
    /// one. Returns the task, if there was one.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn give_to_waiting_task(&self, vm_id: &str, pool: &str) -> Result<Option<String>, StoreError> {
        let find = "SELECT t.id, t.created_at, v.id FROM tasks t JOIN vms v ON v.id = t.vm_id AND v.task_id = t.id \
             WHERE t.pool = $1 AND t.state = 'waiting' AND v.state IN ('requested','provisioning','booting') \
             AND v.id <> $2";
        Ok(in_tx!(&self.db, |tx| {
            let rows: Vec<(String, i64, String)> =
                sqlx::query_as(find).bind(pool).bind(vm_id).fetch_all(&mut *tx).await?;
            let waiters: Vec<vmfleet_scaler::BootWaiter> = rows
                .into_iter()
                .map(|(task_id, created_at_ms, vm_id)| vmfleet_scaler::BootWaiter { task_id, created_at_ms, vm_id })
                .collect();
            let mut given = None;
            // The planner's order; each step conditional on the task's own VM still starting
            // and this VM still unreserved.
            for i in vmfleet_scaler::boot_waiter_order(&waiters) {
                let (task, old) = (&waiters[i].task_id, &waiters[i].vm_id);
                let freed = sqlx::query(
                    "UPDATE vms SET task_id = NULL, preallocated = TRUE WHERE id = $1 AND task_id = $2 \
                     AND state IN ('requested','provisioning','booting')",
                )
                .bind(old)
                .bind(task)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if freed != 1 {
                    continue;
                }
                let taken = sqlx::query(
                    "UPDATE vms SET task_id = $2, preallocated = FALSE WHERE id = $1 AND task_id IS NULL AND state = 'booting'",
                )
                .bind(vm_id)
                .bind(task)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if taken == 1 {
                    sqlx::query("UPDATE tasks SET vm_id = $2 WHERE id = $1")
                        .bind(task)
                        .bind(vm_id)
                        .execute(&mut *tx)
                        .await?;
                    given = Some(task.clone());
                } else {
                    // This VM is no longer free: put the reservation back as it was.
                    sqlx::query("UPDATE vms SET task_id = $2, preallocated = FALSE WHERE id = $1")
                        .bind(old)
                        .bind(task)
                        .execute(&mut *tx)
                        .await?;
                }
                break;
            }
            given
        }))
    }

    /// Gives the idle VM `vm_id` to `task_id`, queued without a VM (the planner's
    /// `ScaleAction::Assign`), if both still are: handed over at once unless the task needs its
    /// DLC volume attached first. Returns whether it did.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn assign_queued(&self, task_id: &str, vm_id: &str, now: i64) -> Result<bool, StoreError> {
        Ok(in_tx!(&self.db, |tx| {
            let dlc: Option<bool> =
                sqlx::query_scalar("SELECT dlc FROM tasks WHERE id = $1 AND state = 'waiting' AND vm_id IS NULL")
                    .bind(task_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let claimed = match dlc {
                None => 0,
                Some(_) => sqlx::query(
                    "UPDATE vms SET state = 'assigned', task_id = $1, assigned_at = $2, state_since = $2 \
                     WHERE id = $3 AND state = 'ready' AND NOT draining AND task_id IS NULL",
                )
                .bind(task_id)
                .bind(now)
                .bind(vm_id)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
            };
            if claimed == 1 {
                // A DLC task is handed over once its volume is attached.
                if dlc == Some(true) {
                    sqlx::query("UPDATE tasks SET vm_id = $2 WHERE id = $1")
                        .bind(task_id)
                        .bind(vm_id)
                        .execute(&mut *tx)
                        .await?;
                } else {
                    sqlx::query("UPDATE tasks SET state = 'assigned', vm_id = $2, assigned_at = $3 WHERE id = $1")
                        .bind(task_id)
                        .bind(vm_id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            claimed == 1
        }))
    }

    /// (pool, created_at) of tasks requested after `since`, oldest first, at most `limit`.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn arrivals_since(&self, since: i64, limit: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let sql = "SELECT pool, created_at FROM tasks WHERE created_at > $1 ORDER BY created_at LIMIT $2";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).bind(since).bind(limit).fetch_all(p).await)?)
    }

    /// Tasks queued without a VM, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn queued_tasks(&self) -> Result<Vec<TaskRow>, StoreError> {
        let sql = "SELECT * FROM tasks WHERE state = 'waiting' AND vm_id IS NULL ORDER BY created_at, id";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).fetch_all(p).await)?)
    }

    /// One VM.
    ///
    /// # Errors
    /// [`StoreError::NotFound`].
    pub async fn vm(&self, id: &str) -> Result<VmRow, StoreError> {
        with_pool!(&self.db, |p| sqlx::query_as("SELECT * FROM vms WHERE id = $1").bind(id).fetch_optional(p).await)?
            .ok_or_else(|| StoreError::NotFound(format!("vm {id}")))
    }

    /// VMs in any of `states` (all when empty), oldest first.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn vms(&self, states: &[VmState]) -> Result<Vec<VmRow>, StoreError> {
        let sql = if states.is_empty() {
            "SELECT * FROM vms ORDER BY requested_at, id".to_string()
        } else {
            format!("SELECT * FROM vms WHERE state IN ({}) ORDER BY requested_at, id", state_list(states))
        };
        Ok(with_pool!(&self.db, |p| sqlx::query_as(&sql).fetch_all(p).await)?)
    }

    /// Live VMs (not terminated or failed).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn live_vms(&self) -> Result<Vec<VmRow>, StoreError> {
        let sql = format!("SELECT * FROM vms WHERE state IN {VM_LIVE} ORDER BY requested_at, id");
        Ok(with_pool!(&self.db, |p| sqlx::query_as(&sql).fetch_all(p).await)?)
    }

    /// Moves a VM from one of `from` to `to`, stamping the state's time column. Returns whether
    /// it moved (false: someone else moved it first).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn transition(&self, id: &str, from: &[VmState], to: VmState, now: i64) -> Result<bool, StoreError> {
        let sql = format!(
            "UPDATE vms SET state = $2, {col} = $3, state_since = $3 WHERE id = $1 AND state IN ({from})",
            col = to.time_column(),
            from = state_list(from)
        );
        let n = with_pool!(&self.db, |p| sqlx::query(&sql)
            .bind(id)
            .bind(to.as_str())
            .bind(now)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    /// Records what the provider said at launch: the instance, its zone, and the instance type
    /// it got (a fallback type when the first had no capacity).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn set_launched(
        &self,
        id: &str,
        instance_id: &str,
        zone: &str,
        instance_type: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let sql = "UPDATE vms SET state = 'provisioning', instance_id = $2, zone = $3, provisioning_at = $4, \
                   instance_type = COALESCE($5, instance_type), state_since = $4 WHERE id = $1 AND state = 'requested'";
        let n = with_pool!(&self.db, |p| sqlx::query(sql)
            .bind(id)
            .bind(instance_id)
            .bind(zone)
            .bind(now)
            .bind(instance_type)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    /// Records the address once the instance runs.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn set_booting(
        &self,
        id: &str,
        host: &str,
        port: u16,
        host_key: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let sql = "UPDATE vms SET state = 'booting', host = $2, ssh_port = $3, host_key = $4, booting_at = $5, \
                   state_since = $5 WHERE id = $1 AND state IN ('requested','provisioning')";
        let n = with_pool!(&self.db, |p| sqlx::query(sql)
            .bind(id)
            .bind(host)
            .bind(i64::from(port))
            .bind(host_key)
            .bind(now)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    /// Fails a VM (and the task it was reserved for or running).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn fail_vm(&self, id: &str, reason: &str, now: i64) -> Result<(), StoreError> {
        let vm = self.vm(id).await?;
        let sql = format!(
            "UPDATE vms SET state = 'failed', failure_reason = $2, failed_at = $3, state_since = $3 \
             WHERE id = $1 AND state IN {VM_LIVE}"
        );
        with_pool!(&self.db, |p| sqlx::query(&sql)
            .bind(id)
            .bind(reason)
            .bind(now)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        if let Some(task) = vm.task_id {
            self.fail_task(&task, reason, now).await?;
        }
        Ok(())
    }

    /// A VM whose instance vanished before its task started: the VM fails, its volume is let
    /// go, and the task (if still waiting) is reserved `replacement` instead. Returns whether
    /// the task was requeued (false when it had started or ended meanwhile: then only the VM
    /// fails, and its task with it if running).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn requeue_task(
        &self,
        task_id: &str,
        lost_vm: &str,
        reason: &str,
        replacement: &VmRow,
        now: i64,
    ) -> Result<bool, StoreError> {
        let fail_vm = format!(
            "UPDATE vms SET state = 'failed', failure_reason = $2, failed_at = $3, state_since = $3, task_id = NULL \
             WHERE id = $1 AND state IN {VM_LIVE}"
        );
        let requeued = in_tx!(&self.db, |tx| {
            let waiting: Option<String> =
                sqlx::query_scalar("SELECT id FROM tasks WHERE id = $1 AND state = 'waiting' AND vm_id = $2")
                    .bind(task_id)
                    .bind(lost_vm)
                    .fetch_optional(&mut *tx)
                    .await?;
            if waiting.is_some() {
                sqlx::query(&fail_vm).bind(lost_vm).bind(reason).bind(now).execute(&mut *tx).await?;
                sqlx::query(
                    "UPDATE volumes SET state = CASE WHEN provider_id IS NULL THEN 'available' ELSE 'detaching' END, \
                     task_id = CASE WHEN provider_id IS NULL THEN NULL ELSE task_id END, \
                     vm_id = CASE WHEN provider_id IS NULL THEN NULL ELSE vm_id END, state_since = $2 \
                     WHERE task_id = $1 AND state IN ('creating','attaching','attached')",
                )
                .bind(task_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                insert_vm!(&mut *tx, replacement)?;
                sqlx::query("UPDATE tasks SET vm_id = $2, volume_id = NULL WHERE id = $1")
                    .bind(task_id)
                    .bind(&replacement.id)
                    .execute(&mut *tx)
                    .await?;
            }
            waiting.is_some()
        });
        if !requeued {
            self.fail_vm(lost_vm, reason, now).await?;
        }
        Ok(requeued)
    }

    /// A volume record whose volume the provider no longer has becomes `deleted`, if it is
    /// still unused. Returns whether it changed.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn forget_volume(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let sql = "UPDATE volumes SET state = 'deleted', state_since = $2 WHERE id = $1 AND state = 'available'";
        let n =
            with_pool!(&self.db, |p| sqlx::query(sql).bind(id).bind(now).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    /// Marks a VM for no new work.
    ///
    /// # Errors
    /// [`StoreError::NotFound`].
    pub async fn drain_vm(&self, id: &str) -> Result<VmRow, StoreError> {
        with_pool!(&self.db, |p| sqlx::query("UPDATE vms SET draining = TRUE WHERE id = $1")
            .bind(id)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        self.vm(id).await
    }

    /// Counts of live VMs by pool and state, and tasks by state.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn counts(&self) -> Result<Counts, StoreError> {
        let vms: Vec<(String, String, i64)> = with_pool!(&self.db, |p| sqlx::query_as(
            "SELECT pool, state, COUNT(*) FROM vms WHERE state NOT IN ('terminated','failed') GROUP BY pool, state"
        )
        .fetch_all(p)
        .await)?;
        let tasks: Vec<(String, String, i64)> = with_pool!(&self.db, |p| sqlx::query_as(
            "SELECT pool, state, COUNT(*) FROM tasks WHERE state IN ('waiting','assigned') GROUP BY pool, state"
        )
        .fetch_all(p)
        .await)?;
        let volumes: Vec<(String, i64)> = with_pool!(&self.db, |p| sqlx::query_as(
            "SELECT state, COUNT(*) FROM volumes WHERE state <> 'deleted' GROUP BY state"
        )
        .fetch_all(p)
        .await)?;
        Ok(Counts { vms, tasks, volumes })
    }

    // ---- volumes ----

    /// Gives a DLC task a volume of its own project in `zone`: an available one (most recently
    /// used first), else `fresh`, which is recorded.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn claim_volume(&self, task: &TaskRow, zone: &str, fresh: &VolumeRow) -> Result<VolumeRow, StoreError> {
        self.claim_volume_within(task, zone, fresh, None)
            .await?
            .ok_or_else(|| StoreError::Conflict("no volume within the bound".into()))
    }

    /// [`Store::claim_volume`] under a fleet-wide bound on volumes: at the bound, the least
    /// recently used available volume (of any project) is marked for deletion to make room;
    /// `None` when every volume is in use, and the task runs without its cache.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn claim_volume_within(
        &self,
        task: &TaskRow,
        zone: &str,
        fresh: &VolumeRow,
        max_volumes: Option<u32>,
    ) -> Result<Option<VolumeRow>, StoreError> {
        let pg = matches!(self.db, Db::Postgres(_));
        let vm_id = task.vm_id.clone().unwrap_or_default();
        let claim = format!(
            "UPDATE volumes SET state = 'attaching', task_id = $1, vm_id = $2, state_since = $3 \
             WHERE id = (SELECT id FROM volumes WHERE project = $4 AND zone = $5 AND state = 'available' \
             ORDER BY last_used_at DESC, id LIMIT 1{}) AND state = 'available' RETURNING *",
            self.lock_clause()
        );
        let now = fresh.created_at;
        Ok(in_tx!(&self.db, |tx| {
            let existing: Option<VolumeRow> = sqlx::query_as(
                "SELECT * FROM volumes WHERE task_id = $1 AND state IN ('creating','attaching','attached')",
            )
            .bind(&task.id)
            .fetch_optional(&mut *tx)
            .await?;
            let vol = match existing {
                Some(v) => Some(v),
                None => {
                    let claimed: Option<VolumeRow> = sqlx::query_as(&claim)
                        .bind(&task.id)
                        .bind(&vm_id)
                        .bind(now)
                        .bind(&task.project)
                        .bind(zone)
                        .fetch_optional(&mut *tx)
                        .await?;
                    match claimed {
                        Some(v) => Some(v),
                        None => {
                            let mut room = true;
                            if let Some(max) = max_volumes {
                                if pg {
                                    sqlx::query("SELECT pg_advisory_xact_lock(7596232762)").execute(&mut *tx).await?;
                                }
                                let n: i64 = sqlx::query_scalar(
                                    "SELECT COUNT(*) FROM volumes WHERE state NOT IN ('deleted','deleting')",
                                )
                                .fetch_one(&mut *tx)
                                .await?;
                                if n >= i64::from(max) {
                                    let evicted = sqlx::query(&format!(
                                        "UPDATE volumes SET state = 'deleting', state_since = $1 WHERE id = \
                                         (SELECT id FROM volumes WHERE state = 'available' AND task_id IS NULL \
                                         ORDER BY last_used_at, id LIMIT 1{}) AND state = 'available'",
                                        self.lock_clause()
                                    ))
                                    .bind(now)
                                    .execute(&mut *tx)
                                    .await?
                                    .rows_affected();
                                    room = evicted == 1;
                                }
                            }
                            if room {
                                insert_volume!(&mut *tx, fresh)?;
                                Some(fresh.clone())
                            } else {
                                None
                            }
                        }
                    }
                }
            };
            if let Some(vol) = &vol {
                sqlx::query("UPDATE tasks SET volume_id = $2 WHERE id = $1")
                    .bind(&task.id)
                    .bind(&vol.id)
                    .execute(&mut *tx)
                    .await?;
            }
            vol
        }))
    }

    /// Records that a volume is attached to a VM for a task.
    ///
    /// # Guarantees
    /// A volume is only ever attached to a VM whose task belongs to the volume's project: the
    /// update refuses otherwise.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the projects differ or the volume is not being attached.
    pub async fn set_volume_attached(
        &self,
        volume_id: &str,
        task_id: &str,
        vm_id: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let sql =
            "UPDATE volumes SET state = 'attached', task_id = $2, vm_id = $3, last_used_at = $4, state_since = $4 \
                   WHERE id = $1 AND state IN ('creating','attaching','available') \
                   AND (task_id IS NULL OR task_id = $2) \
                   AND project = (SELECT project FROM tasks WHERE id = $2) \
                   AND EXISTS (SELECT 1 FROM vms WHERE id = $3 AND task_id = $2)";
        let n = with_pool!(&self.db, |p| sqlx::query(sql)
            .bind(volume_id)
            .bind(task_id)
            .bind(vm_id)
            .bind(now)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        if n == 1 {
            Ok(())
        } else {
            Err(StoreError::Conflict(format!(
                "volume {volume_id} cannot be attached for task {task_id}: it belongs to another project, or is in use"
            )))
        }
    }

    /// Records a volume's provider id after creation.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn set_volume_provider_id(&self, volume_id: &str, provider_id: &str, now: i64) -> Result<(), StoreError> {
        let sql = "UPDATE volumes SET provider_id = $2, state = CASE WHEN state = 'creating' THEN 'attaching' ELSE state END, \
                   state_since = $3 WHERE id = $1";
        with_pool!(&self.db, |p| sqlx::query(sql)
            .bind(volume_id)
            .bind(provider_id)
            .bind(now)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// A detached volume becomes available to its project again.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn set_volume_detached(&self, volume_id: &str, now: i64) -> Result<(), StoreError> {
        let sql = "UPDATE volumes SET state = 'available', task_id = NULL, vm_id = NULL, last_used_at = $2, \
                   state_since = $2 WHERE id = $1 AND state = 'detaching'";
        with_pool!(&self.db, |p| sqlx::query(sql)
            .bind(volume_id)
            .bind(now)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Volumes, optionally in one state.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn volumes(&self, state: Option<&str>) -> Result<Vec<VolumeRow>, StoreError> {
        let sql =
            "SELECT * FROM volumes WHERE ($1 IS NULL AND state <> 'deleted') OR state = $1 ORDER BY created_at, id";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).bind(state).fetch_all(p).await)?)
    }

    /// One volume.
    ///
    /// # Errors
    /// [`StoreError::NotFound`].
    pub async fn volume(&self, id: &str) -> Result<VolumeRow, StoreError> {
        with_pool!(&self.db, |p| sqlx::query_as("SELECT * FROM volumes WHERE id = $1")
            .bind(id)
            .fetch_optional(p)
            .await)?
        .ok_or_else(|| StoreError::NotFound(format!("volume {id}")))
    }

    /// Marks a volume for deletion.
    ///
    /// # Errors
    /// [`StoreError::NotFound`]; [`StoreError::Conflict`] while it is attached or in use.
    pub async fn request_volume_delete(&self, id: &str, now: i64) -> Result<VolumeRow, StoreError> {
        let vol = self.volume(id).await?;
        let sql = "UPDATE volumes SET state = 'deleting', state_since = $2 WHERE id = $1 AND state = 'available' AND task_id IS NULL";
        let n =
            with_pool!(&self.db, |p| sqlx::query(sql).bind(id).bind(now).execute(p).await.map(|r| r.rows_affected()))?;
        if n == 1 || vol.state == "deleting" || vol.state == "deleted" {
            self.volume(id).await
        } else {
            Err(StoreError::Conflict(format!("volume {id} is {} and cannot be deleted now", vol.state)))
        }
    }

    /// Sets a volume's state unconditionally (worker bookkeeping).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn set_volume_state(&self, id: &str, state: &str, now: i64) -> Result<(), StoreError> {
        let sql = "UPDATE volumes SET state = $2, state_since = $3 WHERE id = $1";
        with_pool!(&self.db, |p| sqlx::query(sql)
            .bind(id)
            .bind(state)
            .bind(now)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }

    // ---- pause and reset ----

    /// Whether assignment and preallocation are paused (during a reset).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn paused(&self) -> Result<bool, StoreError> {
        let sql = "SELECT value FROM meta WHERE key = 'paused'";
        let v: Option<String> = with_pool!(&self.db, |p| sqlx::query_scalar(sql).fetch_optional(p).await)?;
        Ok(v.as_deref() == Some("1"))
    }

    /// Pauses or resumes assignment and preallocation.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn set_paused(&self, paused: bool) -> Result<(), StoreError> {
        let sql = "INSERT INTO meta (key, value) VALUES ('paused', $1) ON CONFLICT (key) DO UPDATE SET value = $1";
        let v = if paused { "1" } else { "0" };
        with_pool!(&self.db, |p| sqlx::query(sql).bind(v).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Deletes every task, volume and VM record (tokens, images and the audit log stay).
    /// Returns how many of each went.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn clear_fleet(&self) -> Result<(u64, u64, u64), StoreError> {
        Ok(in_tx!(&self.db, |tx| {
            let t = sqlx::query("DELETE FROM tasks").execute(&mut *tx).await?.rows_affected();
            let v = sqlx::query("DELETE FROM volumes").execute(&mut *tx).await?.rows_affected();
            let m = sqlx::query("DELETE FROM vms").execute(&mut *tx).await?.rows_affected();
            (t, v, m)
        }))
    }

    // ---- remote Docker TLS ----

    /// The installation's Docker CA: the stored one, or `fresh` if there is none yet (the first
    /// replica to store one wins).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn docker_ca(
        &self,
        fresh: &vmfleet_provisioner::tls::Pem,
    ) -> Result<vmfleet_provisioner::tls::Pem, StoreError> {
        let ins = "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING";
        let get = "SELECT value FROM meta WHERE key = $1";
        let pair: (String, String) = in_tx!(&self.db, |tx| {
            sqlx::query(ins).bind("docker_ca_cert").bind(&fresh.cert).execute(&mut *tx).await?;
            sqlx::query(ins).bind("docker_ca_key").bind(&fresh.key).execute(&mut *tx).await?;
            let cert: String = sqlx::query_scalar(get).bind("docker_ca_cert").fetch_one(&mut *tx).await?;
            let key: String = sqlx::query_scalar(get).bind("docker_ca_key").fetch_one(&mut *tx).await?;
            (cert, key)
        });
        Ok(vmfleet_provisioner::tls::Pem { cert: pair.0, key: pair.1 })
    }

    /// The stored Docker CA, if one was made.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn docker_ca_stored(&self) -> Result<Option<vmfleet_provisioner::tls::Pem>, StoreError> {
        let sql = "SELECT key, value FROM meta WHERE key IN ('docker_ca_cert', 'docker_ca_key')";
        let rows: Vec<(String, String)> = with_pool!(&self.db, |p| sqlx::query_as(sql).fetch_all(p).await)?;
        let get = |k: &str| rows.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        Ok(get("docker_ca_cert")
            .zip(get("docker_ca_key"))
            .map(|(cert, key)| vmfleet_provisioner::tls::Pem { cert, key }))
    }

    /// Records where a VM's Docker daemon listens with TLS.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn set_docker_host(&self, vm_id: &str, docker_host: Option<&str>) -> Result<(), StoreError> {
        let sql = "UPDATE vms SET docker_host = $2 WHERE id = $1";
        with_pool!(&self.db, |p| sqlx::query(sql)
            .bind(vm_id)
            .bind(docker_host)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Stores a task's Docker client certificate.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn set_docker_client(&self, task_id: &str, cert: &str, key: &str) -> Result<(), StoreError> {
        let sql = "UPDATE tasks SET docker_client_cert = $2, docker_client_key = $3 WHERE id = $1";
        with_pool!(&self.db, |p| sqlx::query(sql)
            .bind(task_id)
            .bind(cert)
            .bind(key)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }

    // ---- images ----

    /// Registers an image version.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when that version is registered already.
    pub async fn insert_image(&self, i: &ImageRow) -> Result<(), StoreError> {
        let sql = "INSERT INTO images (name, version, kind, arch, amis, registered_at) VALUES ($1, $2, $3, $4, $5, $6)";
        with_pool!(&self.db, |p| sqlx::query(sql)
            .bind(&i.name)
            .bind(&i.version)
            .bind(&i.kind)
            .bind(&i.arch)
            .bind(&i.amis)
            .bind(i.registered_at)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                StoreError::Conflict(format!("image {}:{} is registered already", i.name, i.version))
            }
            e => StoreError::Db(e),
        })?;
        Ok(())
    }

    /// Registered image versions, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn images(&self) -> Result<Vec<ImageRow>, StoreError> {
        let sql = "SELECT * FROM images ORDER BY registered_at, name, version";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).fetch_all(p).await)?)
    }

    /// Points an alias at `name:version` (appending to its history).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn set_alias(&self, alias: &str, target: &str, actor: &str, now: i64) -> Result<(), StoreError> {
        let sql = "INSERT INTO image_aliases (id, alias, target, set_at, actor) VALUES ($1, $2, $3, $4, $5)";
        with_pool!(&self.db, |p| sqlx::query(sql)
            .bind(short_id())
            .bind(alias)
            .bind(target)
            .bind(now)
            .bind(actor)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Alias history, oldest first (all aliases, or one).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn alias_history(&self, alias: Option<&str>) -> Result<Vec<AliasRow>, StoreError> {
        let sql = "SELECT * FROM image_aliases WHERE ($1 IS NULL OR alias = $1) ORDER BY set_at, id";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).bind(alias).fetch_all(p).await)?)
    }

    // ---- tokens and audit ----

    /// Stores an API token's hash.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the name is taken.
    pub async fn insert_token(&self, name: &str, hash: &str, scopes: &str, now: i64) -> Result<(), StoreError> {
        let sql = "INSERT INTO api_tokens (id, name, token_hash, scopes, created_at) VALUES ($1, $2, $3, $4, $5)";
        with_pool!(&self.db, |p| sqlx::query(sql)
            .bind(short_id())
            .bind(name)
            .bind(hash)
            .bind(scopes)
            .bind(now)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                StoreError::Conflict(format!("a token named {name} exists"))
            }
            e => StoreError::Db(e),
        })?;
        Ok(())
    }

    /// Looks a token up by its hash: `(name, scopes)`.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<(String, String)>, StoreError> {
        let sql = "SELECT name, scopes FROM api_tokens WHERE token_hash = $1";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).bind(hash).fetch_optional(p).await)?)
    }

    /// Whether a token of that name exists.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn token_exists(&self, name: &str) -> Result<bool, StoreError> {
        let sql = "SELECT COUNT(*) FROM api_tokens WHERE name = $1";
        let n: i64 = with_pool!(&self.db, |p| sqlx::query_scalar(sql).bind(name).fetch_one(p).await)?;
        Ok(n > 0)
    }

    /// Appends an audit event.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn audit(&self, e: &AuditEvent) -> Result<(), StoreError> {
        with_pool!(&self.db, |p| insert_audit!(p, e))?;
        Ok(())
    }

    /// Audit events, newest first.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn audit_events(&self, limit: i64) -> Result<Vec<AuditEvent>, StoreError> {
        let sql = "SELECT * FROM audit_events ORDER BY occurred_at DESC, id LIMIT $1";
        Ok(with_pool!(&self.db, |p| sqlx::query_as(sql).bind(limit).fetch_all(p).await)?)
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

mod jobs;
