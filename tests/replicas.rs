//! Two `vmfleet serve` processes on one PostgreSQL database share the job queue: every task runs
//! exactly once, and when one process is killed mid-run its tasks finish on the other.
#![expect(clippy::tests_outside_test_module, reason = "integration tests live in tests/, not in a cfg(test) module")]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use vmfleet::api::views::JobView;
use vmfleet::client::Client;

const BIN: &str = env!("CARGO_BIN_EXE_vmfleet");
const TOKEN: &str = "replica-test-token";

struct Replica {
    child: Child,
    url: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A `serve` process on `db`, sharing `dir` (the local provider's VMs) with the others.
fn replica(dir: &Path, db: &str, name: &str) -> Replica {
    replica_logging_to(dir, dir, db, name)
}

/// [`replica`] with its config and log in `logs` rather than the data directory.
fn replica_logging_to(dir: &Path, logs: &Path, db: &str, name: &str) -> Replica {
    let port = free_port();
    let config = logs.join(format!("{name}.yaml"));
    std::fs::write(
        &config,
        format!(
            "data_dir: {dir}\nlisten: 127.0.0.1:{port}\ndatabase: {{url: \"{db}\", max_connections: 12}}\n\
             reconcile_interval: 200ms\ntimeouts: {{ssh_connect: 60s, vm_start: 180s}}\nlimits: {{max_instances: 24}}\n\
             jobs: {{lease: 3s, max_running: 20}}\nprovider: {{local: {{agent_program: {BIN}}}}}\n\
             auth: {{tokens: [{{name: test, sha256: {}, scopes: [admin]}}]}}\n",
            vmfleet::auth::hash_token(TOKEN),
            dir = dir.display(),
        ),
    )
    .expect("config");
    let log = std::fs::File::create(logs.join(format!("{name}.log"))).expect("log");
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("VMFLEET_LOG", "info,sqlx=warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("serve");
    let url = format!("http://127.0.0.1:{port}");
    Replica { child, url }
}

async fn ready(r: &Replica) -> Client {
    let c = Client::new(&r.url, Some(TOKEN.into())).expect("client");
    for _ in 0..300 {
        if c.get::<serde_json::Value>("/status").await.is_ok() {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("replica at {} did not come up", r.url);
}

fn config(parallelism: u32, command: &str) -> String {
    format!(
        "version: 2.1\njobs:\n  work:\n    machine: true\n    parallelism: {parallelism}\n    steps:\n      - run: |\n          {command}\n"
    )
}

async fn submit(c: &Client, parallelism: u32, command: &str, project: &str) -> JobView {
    let body = json!({"config": config(parallelism, command), "job": "work", "project": project});
    c.post("/api/v1/jobs", &body).await.expect("submitted")
}

async fn wait_ended(c: &Client, ids: &[String], secs: u64) -> Vec<JobView> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let mut views = Vec::new();
        for id in ids {
            views.push(c.get::<JobView>(&format!("/api/v1/jobs/{id}")).await.expect("job"));
        }
        if views.iter().all(JobView::ended) {
            return views;
        }
        let open: Vec<String> = views
            .iter()
            .flat_map(|v| v.tasks.iter().filter(|t| !matches!(t.state.as_str(), "success" | "failed")))
            .map(|t| format!("{}:{}", t.id, t.state))
            .take(5)
            .collect();
        assert!(tokio::time::Instant::now() < deadline, "jobs did not end in {secs} s; e.g. {open:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Lines of the marker file: (job task, attempt).
fn markers(path: &Path) -> Vec<(String, i64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (t, a) = l.split_once(' ')?;
            Some((t.to_string(), a.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_serve_processes_run_each_task_once_and_take_over_a_killed_ones_tasks() {
    let Some(db) = common::fresh_pg_url().await else { return };
    let dir = tempfile::tempdir().expect("dir");
    let a = replica(dir.path(), &db, "a");
    let b = replica(dir.path(), &db, "b");
    let (ca, cb) = (ready(&a).await, ready(&b).await);

    // 200 tasks, submitted through both replicas: every task runs exactly once.
    let marks = dir.path().join("marks");
    let step = format!("echo \"$VMFLEET_JOB_TASK $VMFLEET_ATTEMPT\" >> {}", marks.display());
    let mut ids = Vec::new();
    for i in 0..10 {
        let c = if i % 2 == 0 { &ca } else { &cb };
        ids.push(submit(c, 20, &step, &format!("gh/acme/p{}", i % 3)).await.id);
    }
    let views = wait_ended(&ca, &ids, 600).await;
    let tasks: Vec<_> = views.iter().flat_map(|v| v.tasks.iter()).collect();
    assert_eq!(tasks.len(), 200);
    assert!(views.iter().all(|v| v.state == "success"), "{:?}", views.iter().map(|v| &v.state).collect::<Vec<_>>());
    let mut counts: HashMap<String, usize> = HashMap::new();
    for (t, _) in markers(&marks) {
        *counts.entry(t).or_default() += 1;
    }
    for t in &tasks {
        assert_eq!(counts.get(&t.id), Some(&1), "task {} ran {:?} times", t.id, counts.get(&t.id));
        assert_eq!(t.attempt, 1);
    }
    assert_eq!(counts.len(), 200);
    for (name, r) in [("a", &a), ("b", &b)] {
        let pid = format!("-{}-", r.child.id());
        let n = tasks.iter().filter(|t| t.owner.as_deref().is_some_and(|o| o.contains(&pid))).count();
        assert!(n > 0, "replica {name} ran none of the 200 tasks");
    }

    // Kill one replica while it runs tasks: they are requeued when its lease runs out and finish
    // on the other; their VMs are destroyed.
    let marks2 = dir.path().join("marks2");
    let slow = format!("sleep 3; echo \"$VMFLEET_JOB_TASK $VMFLEET_ATTEMPT\" >> {}", marks2.display());
    let job = submit(&cb, 30, &slow, "gh/acme/slow").await;
    let a_pid = a.child.id();
    let store = vmfleet::store::Store::open(&db, 2).await.expect("store");
    let a_owned = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let held: Vec<String> = store
                .job_tasks(&job.id)
                .await
                .expect("tasks")
                .into_iter()
                .filter(|t| t.state == "running" && t.fleet_task_id.is_some())
                .filter(|t| t.owner.as_deref().is_some_and(|o| o.contains(&format!("-{a_pid}-"))))
                .map(|t| t.id)
                .collect();
            if held.len() >= 2 {
                break held;
            }
            assert!(tokio::time::Instant::now() < deadline, "replica a never ran a task of the slow job");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let mut a = a;
    a.child.kill().expect("kill -9");
    let _ = a.child.wait();
    let views = wait_ended(&cb, std::slice::from_ref(&job.id), 600).await;
    let v = &views[0];
    assert_eq!(v.state, "success", "{v:?}");
    assert_eq!(v.tasks.len(), 30);
    let done = markers(&marks2);
    for t in &v.tasks {
        assert_eq!(t.state, "success");
        let finished: Vec<i64> = done.iter().filter(|(id, _)| *id == t.id).map(|(_, a)| *a).collect();
        assert!(finished.contains(&t.attempt), "task {} finished its last attempt {}: {finished:?}", t.id, t.attempt);
        if a_owned.contains(&t.id) {
            assert!(t.attempt >= 2, "task {} of the killed replica was requeued", t.id);
            assert!(!t.owner.as_deref().unwrap_or_default().contains(&format!("-{a_pid}-")));
        } else {
            assert_eq!(finished, [t.attempt], "task {} ran once", t.id);
        }
    }
    let requeues = store
        .audit_events(10_000)
        .await
        .expect("audit")
        .into_iter()
        .filter(|e| e.action == "workflow.job.requeue")
        .count();
    assert!(requeues >= a_owned.len(), "{requeues} requeues for {} tasks", a_owned.len());
    // Every VM, including those the killed replica's tasks held, is destroyed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let live = store.live_vms().await.expect("vms");
        let busy: Vec<String> =
            live.iter().filter(|v| v.task_id.is_some()).map(|v| format!("{}:{}", v.id, v.state)).collect();
        if busy.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "VMs still held: {busy:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(b);
    let _ = Command::new("pkill").arg("-f").arg(format!("local-vm-agent --dir {}", dir.path().display())).status();
}

/// `GET /status` with its code, its reason and how long it took.
async fn status_now(http: &reqwest::Client, url: &str) -> (u16, String, Duration) {
    let started = tokio::time::Instant::now();
    let (code, reason) = match http.get(format!("{url}/status")).timeout(Duration::from_secs(30)).send().await {
        Ok(r) => {
            let code = r.status().as_u16();
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            (code, v["reason"].as_str().unwrap_or_default().to_string())
        }
        Err(e) => (0, format!("no answer: {e}")),
    };
    (code, reason, started.elapsed())
}

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The PostgreSQL campaign (docs/RELIABILITY.md): the database stops while jobs run and
/// arrive (VMFLEET_CHAOS_PG_OUTAGE_SECS, 5 s by default, `scripts/chaos.sh` 30 s), then comes
/// back. `serve` answers `/status` throughout with the reason, recovers by itself, and every
/// job acknowledged before, during or after the outage ends; none is run twice to success.
#[tokio::test(flavor = "multi_thread")]
async fn chaos_postgres_stopped_under_load_recovers_without_a_restart_and_loses_nothing() {
    if common::pg_admin_url().is_none() {
        return;
    }
    let outage = Duration::from_secs(env_secs("VMFLEET_CHAOS_PG_OUTAGE_SECS", 5));
    let pg = common::PrivatePg::start();
    let dir = tempfile::tempdir().expect("dir");
    let mut serve = replica(dir.path(), &pg.url(), "a");
    let c = ready(&serve).await;
    let http = reqwest::Client::new();
    let marks = dir.path().join("marks");
    let step = format!("sleep 2; echo \"$VMFLEET_JOB_TASK $VMFLEET_ATTEMPT\" >> {}", marks.display());
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(submit(&c, 3, &step, &format!("gh/acme/p{i}")).await.id);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    pg.down();
    let down_at = tokio::time::Instant::now();
    // Health checks and new work arrive side by side, as from a load balancer and CI.
    let probes = async {
        let mut answers = Vec::new();
        while down_at.elapsed() < outage {
            answers.push(status_now(&http, &serve.url).await);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        answers
    };
    let submissions = async {
        let (mut acked, mut refused, mut other) = (Vec::new(), 0, Vec::<String>::new());
        while down_at.elapsed() < outage {
            // A submission is refused with 503 (after the pool's acquire timeout), never half-made.
            let body = json!({"config": config(1, &step), "job": "work", "project": "gh/acme/outage"});
            match http.post(format!("{}/api/v1/jobs", serve.url)).bearer_auth(TOKEN).json(&body).send().await {
                Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => refused += 1,
                Ok(r) if r.status().is_success() => acked
                    .push(r.json::<serde_json::Value>().await.expect("job")["id"].as_str().expect("id").to_string()),
                Ok(r) => other.push(r.status().to_string()),
                Err(e) => other.push(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        (acked, refused, other)
    };
    let (answers, (acked, refused, other)) = tokio::join!(probes, submissions);
    ids.extend(acked);
    pg.up();
    let up_at = tokio::time::Instant::now();
    let recovered = loop {
        let (code, _, _) = status_now(&http, &serve.url).await;
        if code == 200 {
            break up_at.elapsed();
        }
        assert!(up_at.elapsed() < Duration::from_secs(120), "serve did not recover from the outage");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(serve.child.try_wait().expect("wait").is_none(), "serve exited during the outage");
    let c = ready(&serve).await;
    for i in 0..2 {
        ids.push(submit(&c, 2, &step, &format!("gh/acme/after{i}")).await.id);
    }
    let views = wait_ended(&c, &ids, 300).await;

    let slowest = answers.iter().map(|(_, _, t)| *t).max().unwrap_or_default();
    let unhealthy = answers.iter().filter(|(code, reason, _)| *code == 503 && reason.contains("database")).count();
    let tasks: Vec<_> = views.iter().flat_map(|v| v.tasks.iter()).collect();
    let mut done: HashMap<String, usize> = HashMap::new();
    for (t, _) in markers(&marks) {
        *done.entry(t).or_default() += 1;
    }
    let succeeded = views.iter().filter(|v| v.state == "success").count();
    let failed: Vec<_> = views.iter().filter(|v| v.state != "success").map(|v| (&v.state, &v.failure_reason)).collect();
    let reran = tasks.iter().filter(|t| t.attempt > 1).count();
    let doubled = done.values().filter(|n| **n > 1).count();
    eprintln!(
        "chaos postgres: {outage:?} outage; {} /status answers during it, {unhealthy} of them 503 naming the \
         database, slowest {slowest:?}; {refused} submissions refused with 503, others {other:?}; /status 200 again \
         {recovered:?} after the restart; {} jobs ({} tasks) acknowledged: {succeeded} succeeded, failed {failed:?}, \
         {reran} tasks run again after a lost lease, {doubled} tasks finished twice",
        answers.len(),
        views.len(),
        tasks.len(),
    );
    assert_eq!(unhealthy, answers.len(), "every /status during the outage names the database: {answers:?}");
    assert!(slowest < Duration::from_secs(5), "a /status took {slowest:?}");
    assert!(other.is_empty(), "submissions during the outage answered {other:?}");
    assert_eq!(succeeded, views.len(), "{failed:?}");
    for t in &tasks {
        assert!(done.contains_key(&t.id), "task {} of an acknowledged job never finished", t.id);
    }
    drop(serve);
    let _ = Command::new("pkill").arg("-f").arg(format!("local-vm-agent --dir {}", dir.path().display())).status();
}

/// The disk-full campaign (docs/RELIABILITY.md): the data directory (SQLite store and the
/// local VMs) is a small tmpfs; it fills up while tasks arrive. Each refused request says the
/// disk is full (507), nothing half-made remains, and once space returns the service serves
/// again with an intact store.
#[tokio::test(flavor = "multi_thread")]
async fn chaos_disk_full_gives_clear_errors_and_an_intact_store_once_space_returns() {
    let logs = tempfile::tempdir().expect("dir");
    let data = logs.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"]).arg(&data).status();
    if !mounted.is_ok_and(|s| s.success()) {
        assert_eq!(
            std::env::var("VMFLEET_TEST_SKIP_MOUNT").as_deref(),
            Ok("1"),
            "mounting a tmpfs failed: run as root, or set VMFLEET_TEST_SKIP_MOUNT=1 to skip this test"
        );
        eprintln!("skipping the disk-full test: VMFLEET_TEST_SKIP_MOUNT=1");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("pkill").arg("-f").arg(format!("local-vm-agent --dir {}", self.0.display())).status();
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(data.clone());
    let db = format!("sqlite:{}", data.join("vmfleet.db").display());
    let mut serve = replica_logging_to(&data, logs.path(), &db, "a");
    ready(&serve).await;
    let http = reqwest::Client::new();
    let request = |project: &str| {
        let body = json!({"executor": "machine", "project": project});
        http.post(format!("{}/api/v1/tasks", serve.url)).bearer_auth(TOKEN).json(&body).send()
    };
    let mut acknowledged = Vec::new();
    for i in 0..3 {
        let r = request(&format!("gh/acme/before{i}")).await.expect("request");
        assert_eq!(r.status(), reqwest::StatusCode::CREATED);
        acknowledged.push(r.json::<serde_json::Value>().await.expect("task")["id"].as_str().expect("id").to_string());
    }

    // Fill the disk to the last byte.
    let filler = data.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).expect("filler");
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let mut byte = [0u8; 1];
        while f.write_all(&byte).is_ok() {
            byte[0] = 1;
        }
        let _ = f.sync_all();
    }
    let (mut refused, mut others, mut refused_message) = (0, Vec::new(), String::new());
    for i in 0..40 {
        let r = request(&format!("gh/acme/full{i}")).await.expect("request");
        let code = r.status().as_u16();
        let v: serde_json::Value = r.json().await.unwrap_or_default();
        match code {
            201 => acknowledged.push(v["id"].as_str().expect("id").to_string()),
            507 => {
                refused += 1;
                refused_message = v["error"]["message"].as_str().unwrap_or_default().to_string();
            }
            _ => others.push((code, v.to_string())),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (full_code, full_reason, _) = status_now(&http, &serve.url).await;

    std::fs::remove_file(&filler).expect("free the space");
    let back = tokio::time::Instant::now();
    let served_again = loop {
        let r = request("gh/acme/after").await.expect("request");
        let code = r.status();
        let v: serde_json::Value = r.json().await.unwrap_or_default();
        if code == reqwest::StatusCode::CREATED {
            acknowledged.push(v["id"].as_str().expect("id").to_string());
            break back.elapsed();
        }
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "no request served after space returned: {code} {v}; log:\n{}",
            std::fs::read_to_string(logs.path().join("a.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let c = ready(&serve).await;
    let mut states = HashMap::new();
    for id in &acknowledged {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        let state = loop {
            let t: serde_json::Value = c.get(&format!("/api/v1/tasks/{id}")).await.expect("acknowledged task");
            let s = t["state"].as_str().unwrap_or_default().to_string();
            if s == "failed" {
                break format!("failed: {}", t["failure_reason"].as_str().unwrap_or_default());
            }
            if s == "assigned" || tokio::time::Instant::now() > deadline {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        *states.entry(state).or_insert(0) += 1;
        let _: serde_json::Value = c.delete(&format!("/api/v1/tasks/{id}")).await.expect("release");
    }
    let _ = serve.child.kill();
    let _ = serve.child.wait();
    let store = vmfleet::store::Store::open(&db, 1).await.expect("the store opens after the disk was full");
    let vmfleet::store::Db::Sqlite(pool) = store.db() else { unreachable!() };
    let check: String = sqlx::query_scalar("PRAGMA integrity_check").fetch_one(pool).await.expect("integrity_check");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks").fetch_one(pool).await.expect("count");
    eprintln!(
        "chaos disk full: {refused} of 40 requests refused with 507 ({refused_message:?}), others {others:?}; \
         /status while full: {full_code} {full_reason:?}; served again {served_again:?} after space returned; \
         {} tasks acknowledged, ended {states:?}; integrity_check {check:?}, {rows} task rows",
        acknowledged.len()
    );
    assert!(refused > 0, "the full disk refused nothing");
    assert!(others.is_empty(), "answers other than 201 and 507: {others:?}");
    assert!(refused_message.contains("disk is full"), "{refused_message}");
    assert_eq!(check, "ok");
    assert_eq!(rows as usize, acknowledged.len(), "a refused request left a row, or an acknowledged one vanished");
    // Served, or failed with its reason (a VM whose launch the full disk broke ends at the start
    // timeout); none is left waiting.
    assert!(states.keys().all(|s| s == "assigned" || s.len() > "failed: ".len()), "{states:?}");
}
