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
    let port = free_port();
    let config = dir.join(format!("{name}.yaml"));
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
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log");
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
