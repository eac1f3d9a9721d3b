//! The job pipeline end to end on the local provider: CircleCI jobs submitted, split into tasks,
//! run over SSH on fresh VMs, their output streamed and their VMs destroyed.
#![expect(clippy::tests_outside_test_module, reason = "integration tests live in tests/, not in a cfg(test) module")]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use vmfleet::api::views::JobView;
use vmfleet::jobs::{poll_output, JobSubmission};
use vmfleet::server::{start, Running};

struct Fleet {
    running: Running,
    _dir: tempfile::TempDir,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.running.shutdown.trigger();
    }
}

async fn fleet() -> Fleet {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::test_config(dir.path());
    config.jobs.lease = Duration::from_secs(5);
    let running = start(config, None).await.expect("start");
    Fleet { running, _dir: dir }
}

fn submission(config: &str, job: &str, project: &str) -> JobSubmission {
    JobSubmission {
        config: config.to_string(),
        config_file: Some("test.yml".into()),
        job: job.into(),
        project: project.into(),
        repo: None,
        revision: None,
        branch: None,
        deploy_key: None,
        parameters: BTreeMap::new(),
        pipeline_parameters: BTreeMap::new(),
        workflow: None,
    }
}

impl Fleet {
    /// Submits and waits until the job ends; its view and its output per node.
    async fn run(&self, sub: &JobSubmission) -> (JobView, HashMap<i64, String>) {
        let job = self.running.jobs.submit(sub, "test").await.expect("submitted");
        self.wait(&job.id).await
    }

    async fn wait(&self, id: &str) -> (JobView, HashMap<i64, String>) {
        let store = &self.running.fleet.store;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let mut cursors = HashMap::new();
        let mut text: HashMap<i64, String> = HashMap::new();
        loop {
            for (node, c) in poll_output(store, id, &mut cursors).await.expect("output") {
                text.entry(node).or_default().push_str(&c.data);
            }
            let j = store.job(id).await.expect("job");
            if j.ended() {
                for (node, c) in poll_output(store, id, &mut cursors).await.expect("output") {
                    text.entry(node).or_default().push_str(&c.data);
                }
                return (JobView::load(store, &j).await.expect("view"), text);
            }
            assert!(tokio::time::Instant::now() < deadline, "job {id} did not end: {text:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every VM the job's tasks held is terminated.
    async fn vms_destroyed(&self, v: &JobView) {
        let store = &self.running.fleet.store;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        for t in &v.tasks {
            let ft = t.fleet_task_id.as_ref().expect("the task asked for a VM");
            let vm = store.task(ft).await.expect("fleet task").vm_id.expect("a VM");
            loop {
                let state = store.vm(&vm).await.expect("vm").state;
                if state == "terminated" {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "VM {vm} of task {} is {state}", t.id);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

const BASIC: &str = r#"
version: 2.1
jobs:
  pass-fail:
    machine: true
    steps:
      - run: echo "hello from $CIRCLE_JOB number $CIRCLE_BUILD_NUM"
      - run:
          name: breaks
          command: echo about to fail; exit 7
      - run: echo SHOULD-NOT-RUN
      - run:
          name: report
          command: echo reported anyway
          when: always
  split:
    machine: {image: ubuntu-2204:current}
    parallelism: 3
    steps:
      - run: echo "node=$CIRCLE_NODE_INDEX total=$CIRCLE_NODE_TOTAL"
  silent:
    machine: true
    steps:
      - run:
          command: echo start; sleep 60; echo SHOULD-NOT-PRINT
          no_output_timeout: 1s
  long:
    machine: true
    steps:
      - run: echo started; sleep 120
"#;

#[tokio::test(flavor = "multi_thread")]
async fn output_arrives_and_a_failing_step_fails_the_job_and_skips_the_rest() {
    let f = fleet().await;
    let (v, out) = f.run(&submission(BASIC, "pass-fail", "gh/acme/app")).await;
    let text = &out[&0];
    assert!(text.contains("hello from pass-fail number 1"), "{text}");
    assert!(text.contains("about to fail"), "{text}");
    assert!(!text.lines().any(|l| l == "SHOULD-NOT-RUN"), "{text}");
    assert!(text.contains("reported anyway"), "{text}");
    assert_eq!((v.state.as_str(), v.exit_code), ("failed", Some(7)), "{v:?}");
    let steps: Vec<(&str, Option<i64>)> = v.tasks[0].steps.iter().map(|s| (s.state.as_str(), s.exit_code)).collect();
    assert_eq!(steps, [("success", Some(0)), ("failed", Some(7)), ("skipped", None), ("success", Some(0))]);
    f.vms_destroyed(&v).await;
    let actions: Vec<String> =
        f.running.fleet.store.audit_events(200).await.expect("audit").into_iter().map(|e| e.action).collect();
    for a in ["workflow.job.scheduled", "workflow.job.start", "workflow.job.finish"] {
        assert!(actions.iter().any(|x| x == a), "{a} in {actions:?}");
    }
    let metrics = f.running.fleet.metrics.render(&Default::default(), "i", "local", &Default::default());
    assert!(metrics.contains("vmfleet_job_queue_seconds_count{pool=\"machine/default/medium\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn parallelism_runs_one_task_per_node_index() {
    let f = fleet().await;
    let (v, out) = f.run(&submission(BASIC, "split", "gh/acme/app")).await;
    assert_eq!(v.state, "success", "{out:?}");
    assert_eq!(v.tasks.len(), 3);
    for i in 0..3 {
        assert!(out[&i].contains(&format!("node={i} total=3")), "{out:?}");
    }
    // Three VMs, one per task.
    let vms: std::collections::HashSet<String> = futures_vms(&f, &v).await;
    assert_eq!(vms.len(), 3);
    f.vms_destroyed(&v).await;
}

async fn futures_vms(f: &Fleet, v: &JobView) -> std::collections::HashSet<String> {
    let mut vms = std::collections::HashSet::new();
    for t in &v.tasks {
        let ft = t.fleet_task_id.clone().expect("fleet task");
        vms.insert(f.running.fleet.store.task(&ft).await.expect("task").vm_id.expect("vm"));
    }
    vms
}

#[tokio::test(flavor = "multi_thread")]
async fn no_output_timeout_ends_a_silent_step() {
    let f = fleet().await;
    let (v, out) = f.run(&submission(BASIC, "silent", "gh/acme/app")).await;
    assert_eq!(v.state, "failed");
    assert_eq!(v.tasks[0].steps[0].state, "timedout");
    assert!(out[&0].contains("no_output_timeout") && !out[&0].lines().any(|l| l == "SHOULD-NOT-PRINT"), "{out:?}");
    f.vms_destroyed(&v).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canceled_jobs_vm_is_destroyed() {
    let f = fleet().await;
    let job = f.running.jobs.submit(&submission(BASIC, "long", "gh/acme/app"), "test").await.expect("submitted");
    let store = &f.running.fleet.store;
    // Wait for the step to run.
    let mut cursors = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    'wait: loop {
        for (_, c) in poll_output(store, &job.id, &mut cursors).await.expect("output") {
            if c.data.contains("started") {
                break 'wait;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "the step never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f.running.jobs.cancel(&job.id, "test").await.expect("cancel");
    let (v, _) = f.wait(&job.id).await;
    assert_eq!(v.state, "canceled");
    assert_eq!(v.tasks[0].steps[0].state, "canceled");
    f.vms_destroyed(&v).await;
    assert!(f.running.jobs.cancel(&job.id, "test").await.is_err(), "an ended job cannot be canceled again");
}

const DLC: &str = r#"
version: 2.1
jobs:
  cache:
    machine:
      image: default
      docker_layer_caching: true
    steps:
      - run: |
          if [ -e "$VMFLEET_DLC_DIR/layer" ]; then echo "cache: warm $(cat "$VMFLEET_DLC_DIR/layer")"; else echo "cache: cold"; fi
          echo "$CIRCLE_PROJECT_REPONAME" > "$VMFLEET_DLC_DIR/layer"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn dlc_persists_within_a_project_and_not_across_projects() {
    let f = fleet().await;
    let (v, out) = f.run(&submission(DLC, "cache", "gh/acme/app")).await;
    assert_eq!(v.state, "success", "{out:?}");
    assert!(out[&0].contains("cache: cold"), "{out:?}");
    f.vms_destroyed(&v).await;
    let (v, out) = f.run(&submission(DLC, "cache", "gh/acme/app")).await;
    assert!(out[&0].contains("cache: warm app"), "{out:?}");
    f.vms_destroyed(&v).await;
    let (_, out) = f.run(&submission(DLC, "cache", "gh/other/lib")).await;
    assert!(out[&0].contains("cache: cold"), "another project has its own cache: {out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn checkout_clones_a_local_repository_at_its_revision() {
    let repo = tempfile::tempdir().expect("repo");
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(repo.path())
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .output()
            .expect("git");
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    git(&["init", "-q"]);
    std::fs::write(repo.path().join("VERSION"), "one\n").expect("write");
    git(&["add", "VERSION"]);
    git(&["commit", "-q", "-m", "one"]);
    let first = git(&["rev-parse", "HEAD"]);
    std::fs::write(repo.path().join("VERSION"), "two\n").expect("write");
    git(&["commit", "-q", "-am", "two"]);
    let config = "version: 2.1\njobs:\n  build:\n    machine: true\n    steps:\n      - checkout\n      - run: echo \"version $(cat VERSION) at $CIRCLE_SHA1\"\n";
    let f = fleet().await;
    let mut sub = submission(config, "build", "gh/acme/app");
    sub.repo = Some(repo.path().display().to_string());
    sub.revision = Some(first.clone());
    let (v, out) = f.run(&sub).await;
    assert_eq!(v.state, "success", "{out:?}");
    assert!(out[&0].contains(&format!("version one at {first}")), "{out:?}");
    // A git URL is cloned on the VM, with the deploy key in place (mode 0600, never printed).
    let with_key = format!("{config}      - run: stat -c 'key mode %a' ~/.ssh/vmfleet-deploy-key\n");
    let mut sub = submission(&with_key, "build", "gh/acme/app");
    sub.repo = Some(format!("file://{}", repo.path().display()));
    sub.deploy_key = Some("-----BEGIN OPENSSH PRIVATE KEY-----\nsecret-material\n".into());
    let (v, out) = f.run(&sub).await;
    assert_eq!(v.state, "success", "{out:?}");
    assert!(out[&0].contains("version two at") && out[&0].contains("key mode 600"), "{out:?}");
    assert!(!out[&0].contains("secret-material"), "{out:?}");
    let row = f.running.fleet.store.job(&v.id).await.expect("job");
    assert!(
        row.deploy_key.as_deref().is_some_and(|k| !k.contains("secret-material")),
        "the deploy key is sealed at rest"
    );
    // Without a repository, checkout fails with the reason.
    let (v, out) = f.run(&submission(config, "build", "gh/acme/app")).await;
    assert_eq!(v.state, "failed");
    assert!(out[&0].contains("no repository was given"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_configs_are_refused_with_file_and_line_and_nothing_is_queued() {
    let f = fleet().await;
    let cases = [
        ("version: 2.1\njobs:\n  a:\n    machine: true\n    steps: [{run: {comand: x}}]\n", "a", "test.yml:5"),
        ("version: 2.1\njobs:\n  a:\n    machine: true\n    steps: [checkout\n", "a", "test.yml:"),
        ("version: 2.1\njobs:\n  a:\n    machine: true\n    steps: [checkout]\n", "nope", "no job \"nope\""),
        (
            "version: 2.1\njobs:\n  a:\n    machine: true\n    resource_class: huge\n    steps: [checkout]\n",
            "a",
            "resource class \"huge\" is not offered",
        ),
        (
            "version: 2.1\njobs:\n  a:\n    docker: [{image: alpine}]\n    steps: [checkout]\n",
            "a",
            "not a job for this service",
        ),
        (
            "version: 2.1\njobs:\n  a:\n    machine: true\n    resource_class: windows.medium\n    steps: [checkout]\n",
            "a",
            "on resource class windows.medium",
        ),
    ];
    for (config, job, want) in cases {
        let e = f.running.jobs.submit(&submission(config, job, "gh/acme/app"), "test").await.expect_err(want);
        assert!(e.to_string().contains(want), "{want}: {e}");
    }
    assert!(f.running.fleet.store.jobs(None, 10).await.expect("jobs").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_streams_output_as_server_sent_events() {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let f = fleet().await;
    let token = std::fs::read_to_string(f.running.fleet.config.admin_token_path()).expect("admin token");
    let body = serde_json::json!({"config": BASIC, "job": "pass-fail", "project": "gh/acme/app"});
    let router = vmfleet::api::router(f.running.state.clone());
    let req = Request::post("/api/v1/jobs")
        .header("authorization", format!("Bearer {}", token.trim()))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    let resp = router.clone().oneshot(req).await.expect("response");
    assert_eq!(resp.status(), 201);
    let job: JobView =
        serde_json::from_slice(&resp.into_body().collect().await.expect("body").to_bytes()).expect("json");
    let req = Request::get(format!("/api/v1/jobs/{}/output", job.id))
        .header("authorization", format!("Bearer {}", token.trim()))
        .body(Body::empty())
        .expect("request");
    let resp = router.clone().oneshot(req).await.expect("response");
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let sse =
        String::from_utf8(resp.into_body().collect().await.expect("stream ends with the job").to_bytes().to_vec())
            .expect("utf-8");
    assert!(sse.contains("event: output") && sse.contains("hello from pass-fail"), "{sse}");
    assert!(
        sse.trim_end().ends_with(
            r#"data: {"exit_code":7,"failure_reason":"step 2 (run: breaks) exited with code 7","state":"failed"}"#
        ),
        "{sse}"
    );
    // A bad body is a 400 naming the line.
    let bad = serde_json::json!({"config": "version: 2.1\njobs:\n  a: {machine: true, stepz: []}\n", "job": "a", "project": "p"});
    let req = Request::post("/api/v1/jobs")
        .header("authorization", format!("Bearer {}", token.trim()))
        .header("content-type", "application/json")
        .body(Body::from(bad.to_string()))
        .expect("request");
    let resp = router.oneshot(req).await.expect("response");
    assert_eq!(resp.status(), 400);
    let v: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.expect("body").to_bytes()).expect("json");
    assert!(v["error"]["message"].as_str().unwrap_or_default().starts_with("config.yml:3:"), "{v}");
}

/// The one-command demo with the real binary: a machine job of a shared real config, with no
/// server running, on a fresh data directory.
#[test]
fn vmfleet_run_runs_a_shared_configs_machine_job_with_no_server() {
    let data = tempfile::tempdir().expect("data");
    let repo = tempfile::tempdir().expect("repo");
    let sh = |cmd: &str| {
        let ok = std::process::Command::new("bash").arg("-c").arg(cmd).current_dir(repo.path()).status().expect("bash");
        assert!(ok.success(), "{cmd}");
    };
    // The project's own script, so the job's `run` steps have what they call.
    sh("git init -q && printf '#!/bin/sh\\necho \"setup-lando $*\"\\n' > setup-lando.sh && chmod +x setup-lando.sh \
        && mkdir bin && printf '#!/bin/sh\\necho \"lando v3 $*\"\\n' > bin/lando && chmod +x bin/lando \
        && git add . && git -c user.name=t -c user.email=t@example.com commit -q -m init");
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/circleci-configs/lando__setup-lando.yml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vmfleet"))
        .args(["run", config, "--job", "install-on-linux", "--repo"])
        .arg(repo.path())
        .env("VMFLEET_DATA_DIR", data.path())
        .env("VMFLEET__LISTEN", "127.0.0.1:1")
        .output()
        .expect("vmfleet run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // `lando` is not on the VM's PATH: the step fails with 127, as it would on a bare VM; the
    // checkout and the script before it ran.
    assert!(stdout.contains("checked out"), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("Install Lando on Linux") && stdout.contains("setup-lando --no-setup"),
        "{stdout}\n{stderr}"
    );
    assert_eq!(out.status.code(), Some(127), "{stdout}\n{stderr}");
    assert!(stderr.contains("on an in-process fleet (local provider, sqlite)"), "{stderr}");
    let left = std::fs::read_dir(data.path().join("local/instances")).expect("instances").count();
    assert_eq!(left, 0, "the VM is destroyed before vmfleet run exits");

    // A job that needs an orb is refused with the file and line, exit status 2, nothing queued.
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/circleci-configs/the-volte__dlc.yml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vmfleet"))
        .args(["run", config, "--job", "build-image"])
        .env("VMFLEET_DATA_DIR", data.path())
        .env("VMFLEET__LISTEN", "127.0.0.1:1")
        .output()
        .expect("vmfleet run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("the-volte__dlc.yml:19: step aws-ecr/build-image comes from the orb aws-ecr"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vm_asked_for_again_under_the_same_task_id_is_not_asked_for_twice() {
    let f = fleet().await;
    let fleet = &f.running.fleet;
    let req = vmfleet::fleet::TaskRequest {
        executor: "machine".into(),
        image: "default".into(),
        resource_class: "medium".into(),
        project: "gh/acme/again".into(),
        docker_layer_caching: false,
    };
    // A retry after an answer lost past the commit: the same id and request.
    let first = fleet.request_task_as(&req, "task-again".into()).await.expect("first");
    let again = fleet.request_task_as(&req, "task-again".into()).await.expect("asked again");
    assert_eq!((again.id.as_str(), again.pool.as_str()), (first.id.as_str(), first.pool.as_str()));
    let tasks = fleet.store.tasks(None, 100).await.expect("tasks");
    assert_eq!(tasks.iter().filter(|t| t.id == "task-again").count(), 1, "{tasks:?}");
    let vms = fleet.store.vms(&[]).await.expect("vms");
    let held: Vec<_> = vms.iter().filter(|v| v.task_id.as_deref() == Some("task-again")).collect();
    assert_eq!(held.len(), 1, "one VM for the task, not one per ask: {vms:?}");
    // The same id for another request is refused and changes nothing.
    let other = vmfleet::fleet::TaskRequest { project: "gh/acme/other".into(), ..req.clone() };
    let err = fleet.request_task_as(&other, "task-again".into()).await.expect_err("another request");
    assert!(matches!(err, vmfleet::fleet::FleetError::Conflict(_)), "{err}");
    assert_eq!(fleet.store.task("task-again").await.expect("task").project, "gh/acme/again");
    fleet.release_task("task-again").await.expect("release");
}
