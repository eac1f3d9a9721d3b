//! Shared test helpers: databases on both backends and a fleet configuration.
#![allow(dead_code)]

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::ConnectOptions;
use vmfleet::config::Config;
use vmfleet::store::{now_ms, short_id, NewVm, Store, TaskRow, VmRow};

pub mod emulator;
pub mod harness;
pub mod serve;

/// The PostgreSQL server for tests. The test command starts one and sets the variable; without
/// it, PostgreSQL tests fail unless `VMFLEET_TEST_SKIP_PG=1` says to skip them.
pub fn pg_admin_url() -> Option<String> {
    match std::env::var("VMFLEET_TEST_PG_URL") {
        Ok(u) => Some(u),
        Err(_) if std::env::var("VMFLEET_TEST_SKIP_PG").as_deref() == Ok("1") => {
            eprintln!("skipping a PostgreSQL test: VMFLEET_TEST_SKIP_PG=1");
            None
        }
        Err(_) => panic!("VMFLEET_TEST_PG_URL is not set: run ./scripts/test.sh, or set VMFLEET_TEST_SKIP_PG=1"),
    }
}

/// A fresh, empty PostgreSQL database.
pub async fn fresh_pg_url() -> Option<String> {
    let admin = pg_admin_url()?;
    let opts = sqlx::postgres::PgConnectOptions::from_str(&admin).expect("VMFLEET_TEST_PG_URL");
    let mut conn = opts.connect().await.expect("connect to the test PostgreSQL");
    let name = format!("vmfleet_test_{}", short_id());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create database");
    Some(opts.database(&name).to_url_lossy().to_string())
}

pub async fn sqlite_store(dir: &Path) -> Store {
    Store::open(&format!("sqlite:{}", dir.join("t.db").display()), 8).await.expect("sqlite store")
}

pub async fn pg_store() -> Option<Store> {
    let url = fresh_pg_url().await?;
    Some(Store::open(&url, 16).await.expect("postgres store"))
}

/// A configuration for an in-process fleet on the local provider in `dir`.
pub fn test_config(dir: &Path) -> Config {
    let mut c = Config::parse("", "test", Vec::<(String, String)>::new()).expect("defaults");
    c.data_dir = dir.to_path_buf();
    c.provider.local.agent_program = Some(env!("CARGO_BIN_EXE_vmfleet").into());
    c.reconcile_interval = Duration::from_millis(100);
    c.timeouts.ssh_connect = Duration::from_secs(30);
    c.timeouts.vm_start = Duration::from_secs(60);
    c
}

/// A VM row in `state` for `pool`.
pub fn vm_row(pool: &str, state: &str, task: Option<&str>) -> VmRow {
    let now = now_ms();
    let (executor, image, resource_class) = match pool.splitn(3, '/').collect::<Vec<_>>()[..] {
        [e, i, r] => (e, i, r),
        _ => ("machine", "default", "medium"),
    };
    let new = NewVm {
        id: format!("vm-{}", short_id()),
        executor: executor.into(),
        image: image.into(),
        resource_class: resource_class.into(),
        task_id: task.map(Into::into),
        image_id: "img".into(),
        instance_type: "m5.large".into(),
        platform: "linux".into(),
        ssh_private_key: "secret".into(),
        ssh_public_key: "pub".into(),
    };
    let mut vm = VmRow::requested(new, now);
    // Tests name pools freely; keep the name they gave.
    vm.pool = pool.into();
    vm.state = state.into();
    vm.instance_id = Some(format!("i-{}", short_id()));
    vm.zone = Some("z1".into());
    vm.host = Some("127.0.0.1".into());
    vm.ssh_port = Some(22);
    vm.ready_at = Some(now);
    vm
}

/// A waiting task of `project` in `pool`.
pub fn task_row(pool: &str, project: &str, dlc: bool) -> TaskRow {
    TaskRow {
        id: format!("task-{}", short_id()),
        pool: pool.into(),
        executor: "machine".into(),
        image: "default".into(),
        resource_class: "medium".into(),
        project: project.into(),
        dlc,
        state: "waiting".into(),
        vm_id: None,
        volume_id: None,
        failure_reason: None,
        created_at: now_ms(),
        assigned_at: None,
        released_at: None,
        docker_client_cert: None,
        docker_client_key: None,
    }
}

/// Polls `f` until it returns `Some`, for up to `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "condition not reached within {secs} s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A PostgreSQL server of the test's own, which it may stop and start (the shared one of the
/// test command must stay up for the other tests).
pub struct PrivatePg {
    bin: std::path::PathBuf,
    data: std::path::PathBuf,
    socket_dir: std::path::PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PrivatePg {
    /// Initializes and starts one (as `postgres` when the test runs as root: initdb refuses root).
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is installed under /usr/lib/postgresql (./scripts/test.sh installs it)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|b| b.join("pg_ctl").exists())
            .max()
            .expect("a PostgreSQL bin directory");
        let dir = tempfile::tempdir().expect("dir");
        let data = dir.path().join("data");
        let pg = PrivatePg {
            bin,
            data,
            socket_dir: dir.path().to_path_buf(),
            port: std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port(),
            _dir: dir,
        };
        if Self::as_root() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&pg.socket_dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        }
        let out = pg
            .command("initdb")
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-D"])
            .arg(&pg.data)
            .output()
            .expect("initdb");
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        pg.up();
        pg
    }

    fn as_root() -> bool {
        std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
    }

    fn command(&self, program: &str) -> std::process::Command {
        let exe = self.bin.join(program);
        if Self::as_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            std::process::Command::new(exe)
        }
    }

    fn pg_ctl(&self, args: &[&str]) {
        let out = self.command("pg_ctl").arg("-D").arg(&self.data).args(args).output().expect("pg_ctl");
        assert!(out.status.success(), "pg_ctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Starts the server and waits until it accepts connections.
    pub fn up(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100",
            self.port,
            self.socket_dir.display()
        );
        let log = self.socket_dir.join("server.log");
        self.pg_ctl(&["-w", "-l", &log.display().to_string(), "-o", &opts, "start"]);
    }

    /// Stops the server the way a crash or a failover does: connections are cut at once.
    pub fn down(&self) {
        self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = self.command("pg_ctl").arg("-D").arg(&self.data).args(["-m", "immediate", "stop"]).output();
    }
}
