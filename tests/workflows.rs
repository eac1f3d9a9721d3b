//! Workflows end to end on the local provider: a pipeline's DAG runs in dependency order, a
//! failure leaves what requires it `not_run`, approvals hold, cancel and rerun from failed act on
//! the whole workflow, bad pipelines record nothing; and two `serve` replicas on PostgreSQL run
//! one pipeline through the CLI.
#![expect(clippy::tests_outside_test_module, reason = "integration tests live in tests/, not in a cfg(test) module")]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use vmfleet::api::workflows::{PipelineView, WorkflowView};
use vmfleet::jobs::{poll_output, PipelineSubmission};
use vmfleet::server::{start, Running};

struct Fleet {
    running: Running,
    dir: tempfile::TempDir,
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
    Fleet { running, dir }
}

fn pipeline(config: &str, params: &[(&str, &str)]) -> PipelineSubmission {
    PipelineSubmission {
        config: config.to_string(),
        config_file: Some("wf.yml".into()),
        project: "gh/acme/app".into(),
        repo: None,
        revision: None,
        branch: Some("main".into()),
        tag: None,
        deploy_key: None,
        parameters: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        workflow: None,
    }
}

impl Fleet {
    async fn view(&self, id: &str) -> WorkflowView {
        let store = &self.running.fleet.store;
        WorkflowView::load(store, &store.workflow(id).await.expect("workflow")).await.expect("view")
    }

    /// Waits until the workflow is in one of `states`.
    async fn until(&self, id: &str, states: &[&str]) -> WorkflowView {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let v = self.view(id).await;
            if states.contains(&v.state.as_str()) {
                return v;
            }
            assert!(tokio::time::Instant::now() < deadline, "workflow {id} stayed {}: {v:?}", v.state);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A job's whole output.
    async fn output(&self, job: &str) -> String {
        let mut cursors = std::collections::HashMap::new();
        let chunks = poll_output(&self.running.fleet.store, job, &mut cursors).await.expect("output");
        chunks.into_iter().map(|(_, c)| c.data).collect()
    }
}

fn job<'a>(v: &'a WorkflowView, name: &str) -> &'a vmfleet::api::workflows::WorkflowJobView {
    v.jobs.iter().find(|j| j.name == name).unwrap_or_else(|| panic!("no job {name} in {v:?}"))
}

const DAG: &str = r#"
version: 2.1
parameters:
  lint_exit: {type: string, default: "0"}
jobs:
  build:
    machine: true
    steps:
      - run: echo "built in $CIRCLE_WORKFLOW_ID"
  test:
    machine: true
    parallelism: 3
    steps:
      - run: echo "test node $CIRCLE_NODE_INDEX of $CIRCLE_NODE_TOTAL"
  lint:
    machine: true
    steps:
      - run: exit << pipeline.parameters.lint_exit >>
  deploy:
    machine: true
    steps:
      - run: echo deployed
workflows:
  main:
    jobs:
      - build
      - test: {requires: [build]}
      - lint: {requires: [build]}
      - deploy: {requires: [test, lint]}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_dag_runs_in_dependency_order_and_a_failure_leaves_its_dependents_not_run() {
    let f = fleet().await;
    let jobs = &f.running.jobs;
    let store = &f.running.fleet.store;
    let (p, w) = jobs.submit_pipeline(&pipeline(DAG, &[]), "test").await.expect("submitted");
    assert_eq!(w.len(), 1);
    let v = f.until(&w[0].id, &["success", "failed"]).await;
    assert_eq!(v.state, "success", "{v:?}");
    assert_eq!(v.pipeline_number, p.number);
    let rows = |name: &str| {
        let id = job(&v, name).job_id.clone().expect("a job");
        async move { store.job(&id).await.expect("job") }
    };
    let (build, test, lint, deploy) =
        (rows("build").await, rows("test").await, rows("lint").await, rows("deploy").await);
    // Each waited for what it requires: queued only once that had ended.
    for (later, earlier) in [(&test, &build), (&lint, &build), (&deploy, &test), (&deploy, &lint)] {
        let done = earlier.finished_at.expect("ended");
        assert!(later.queued_at >= done, "{} queued before {} ended", later.name, earlier.name);
    }
    assert_eq!(store.job_tasks(&test.id).await.expect("tasks").len(), 3);
    assert!(f.output(&build.id).await.contains(&format!("built in {}", v.id)));
    let out = f.output(&test.id).await;
    for n in 0..3 {
        assert!(out.contains(&format!("test node {n} of 3")), "{out}");
    }

    // The same pipeline with lint failing: deploy does not run, test still does.
    let (_, w) = jobs.submit_pipeline(&pipeline(DAG, &[("lint_exit", "3")]), "test").await.expect("submitted");
    let v = f.until(&w[0].id, &["success", "failed"]).await;
    assert_eq!(v.state, "failed");
    assert_eq!(job(&v, "lint").state, "failed");
    assert_eq!(job(&v, "test").state, "success");
    let d = job(&v, "deploy");
    assert_eq!(d.state, "not_run");
    assert!(d.failure_reason.as_deref().is_some_and(|r| r.contains("requires lint, which ended failed")), "{d:?}");
    let deploy = store.job(d.job_id.as_deref().expect("job")).await.expect("job");
    assert!(store.job_tasks(&deploy.id).await.expect("tasks").is_empty(), "a job not run never had tasks");
    let events = store.audit_events(500).await.expect("audit");
    for action in ["workflow.start", "workflow.job.scheduled", "workflow.job.not_run", "workflow.finish"] {
        assert!(events.iter().any(|e| e.action == action), "no {action} event");
    }
}

const HELD: &str = r#"
version: 2.1
jobs:
  build:
    machine: true
    steps: [{run: echo built}]
  slow:
    machine: true
    steps: [{run: sleep 60}]
  deploy:
    machine: true
    steps: [{run: echo deployed}]
workflows:
  release:
    jobs:
      - build
      - hold: {type: approval, requires: [build]}
      - deploy: {requires: [hold]}
  long:
    jobs:
      - slow
      - deploy: {requires: [slow]}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn an_approval_holds_its_dependents_and_cancel_ends_a_whole_workflow() {
    let f = fleet().await;
    let jobs = &f.running.jobs;
    let (_, w) = jobs.submit_pipeline(&pipeline(HELD, &[]), "test").await.expect("submitted");
    let (release, long) = (&w[0], &w[1]);
    assert_eq!((release.name.as_str(), long.name.as_str()), ("release", "long"));
    let err = jobs.approve(&release.id, "hold", "alice").await.expect_err("build has not ended yet");
    assert!(err.to_string().contains("not on_hold"), "{err}");
    let v = f.until(&release.id, &["on_hold"]).await;
    assert_eq!(job(&v, "deploy").state, "blocked");
    let err = jobs.approve(&release.id, "deploy", "alice").await.expect_err("not an approval");
    assert!(err.to_string().contains("not an approval job"), "{err}");
    jobs.approve(&release.id, "hold", "alice").await.expect("approved");
    let v = f.until(&release.id, &["success", "failed"]).await;
    assert_eq!(v.state, "success");
    assert_eq!(job(&v, "hold").approved_by.as_deref(), Some("alice"));

    // Cancel while slow runs: it stops, deploy never starts, the workflow is canceled.
    let store = &f.running.fleet.store;
    let slow = job(&f.view(&long.id).await, "slow").job_id.clone().expect("job");
    common::eventually(60, || async { (store.job(&slow).await.expect("job").state == "running").then_some(()) }).await;
    jobs.cancel_workflow(&long.id, "bob").await.expect("canceled");
    let v = f.until(&long.id, &["canceled"]).await;
    assert_eq!(job(&v, "slow").state, "canceled");
    assert_eq!(job(&v, "deploy").state, "canceled");
    let err = jobs.cancel_workflow(&long.id, "bob").await.expect_err("already ended");
    assert!(err.to_string().contains("already ended"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rerun_from_failed_carries_the_jobs_that_succeeded() {
    let f = fleet().await;
    let marker = f.dir.path().join("flaky-ran-once");
    let config = format!(
        r#"
version: 2.1
jobs:
  build: {{machine: true, steps: [{{run: echo built}}]}}
  flaky:
    machine: true
    steps:
      - run: if [ -e {m} ]; then echo second; else touch {m}; echo first; exit 1; fi
  deploy: {{machine: true, steps: [{{run: echo deployed}}]}}
workflows:
  main:
    jobs:
      - build
      - flaky: {{requires: [build]}}
      - deploy: {{requires: [flaky]}}
"#,
        m = marker.display()
    );
    let jobs = &f.running.jobs;
    let (_, w) = jobs.submit_pipeline(&pipeline(&config, &[]), "test").await.expect("submitted");
    let first = f.until(&w[0].id, &["failed", "success"]).await;
    assert_eq!(first.state, "failed");
    assert_eq!(job(&first, "deploy").state, "not_run");
    let err = jobs.rerun_workflow(&w[0].id, false, "test").await.map(|_| ());
    assert!(err.is_ok(), "a full rerun of an ended workflow is allowed");
    let full =
        f.until(&f.running.fleet.store.workflows(None, 1).await.expect("list")[0].id, &["success", "failed"]).await;
    assert_eq!(full.rerun_of.as_deref(), Some(first.id.as_str()));
    assert_ne!(job(&full, "build").job_id, job(&first, "build").job_id, "a full rerun runs build again");

    std::fs::remove_file(&marker).ok();
    std::fs::write(&marker, "").expect("marker");
    let again = jobs.rerun_workflow(&first.id, true, "test").await.expect("rerun");
    let v = f.until(&again.id, &["success", "failed"]).await;
    assert_eq!(v.state, "success", "{v:?}");
    assert_eq!(job(&v, "build").job_id, job(&first, "build").job_id, "build is carried over");
    assert_ne!(job(&v, "flaky").job_id, job(&first, "flaky").job_id);
    assert!(f.output(job(&v, "flaky").job_id.as_deref().expect("job")).await.contains("second"));
    let err = jobs.rerun_workflow(&v.id, true, "test").await.expect_err("nothing failed");
    assert!(err.to_string().contains("no failed job"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_pipelines_are_refused_with_file_and_line_and_record_nothing() {
    let f = fleet().await;
    let jobs = &f.running.jobs;
    let store = &f.running.fleet.store;
    let cases = [
        (DAG.replace("requires: [test, lint]", "requires: [tset]"), "wf.yml:", "requires tset"),
        (
            DAG.replace("      - deploy:", "      - node/lint: {requires: [build]}\n      - deploy:"),
            "wf.yml:",
            "no job \"node/lint\"",
        ),
        (
            DAG.replace("requires: [build]}\n      - lint", "requires: [deploy]}\n      - lint"),
            "wf.yml:",
            "require each other",
        ),
        (DAG.replace("machine: true\n    parallelism", "macos: {xcode: 14.0.0}\n    parallelism"), "wf.yml:", "macOS"),
        (DAG.replace("      - build\n", "      - build: {context: nowhere}\n"), "wf.yml:", "nowhere"),
    ];
    for (config, at, what) in cases {
        let err = jobs.submit_pipeline(&pipeline(&config, &[]), "test").await.expect_err("refused").to_string();
        assert!(err.contains(at) && err.contains(what), "{what}: {err}");
    }
    let mut sub = pipeline(DAG, &[]);
    sub.workflow = Some("nightly".into());
    let err = jobs.submit_pipeline(&sub, "test").await.expect_err("no such workflow").to_string();
    assert!(err.contains("no workflow \"nightly\"") && err.contains("main"), "{err}");
    sub.workflow = None;
    sub.tag = Some("v1".into());
    let err = jobs.submit_pipeline(&sub, "test").await.expect_err("both").to_string();
    assert!(err.contains("not both"), "{err}");
    sub.branch = None;
    let err = jobs.submit_pipeline(&sub, "test").await.expect_err("a tag runs nothing here").to_string();
    assert!(err.contains("no workflow runs") && err.contains("filters.tags"), "{err}");
    assert!(store.workflows(None, 10).await.expect("list").is_empty());
    assert!(store.jobs(None, 10).await.expect("list").is_empty());
    assert!(store.pipeline("1").await.is_err());
}

/// Two replicas (each its own data directory, one database and one secrets key) run one
/// pipeline submitted with `vmfleet run`; `workflows show`, `approve` and `rerun` act through
/// whichever replica is asked.
#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_on_postgres_run_a_pipeline_through_the_cli() {
    let Some(url) = common::fresh_pg_url().await else { return };
    let (a, b, _key) = common::serve::replicas_on(&url, "");
    let file = a.dir.path().join("config.yml");
    let config = format!(
        "{DAG}\n  gated:\n    jobs:\n      - build\n      - hold: {{type: approval, requires: [build]}}\n      - deploy: \
         {{requires: [hold]}}\n"
    );
    std::fs::write(&file, &config).expect("config");
    let file = file.display().to_string();
    let out = a.cli(&["run", &file, "--project", "gh/acme/app", "--workflow", "main"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("[test/2] test node 2 of 3") && text.contains("workflow main") && text.contains("success"));

    // The gated workflow, submitted through one replica, approved through the other.
    let sub = serde_json::json!({"config": config, "project": "gh/acme/app", "workflow": "gated"});
    let listed: Vec<serde_json::Value> =
        b.json(&["workflows", "list", "--json"]).as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len(), 1, "the main workflow ran: {listed:?}");
    assert_eq!(listed[0]["state"], "success");
    let http = reqwest::Client::new();
    let base = format!("http://{}", listen_of(&a));
    let p: PipelineView = http
        .post(format!("{base}/api/v1/pipelines"))
        .bearer_auth(a.token.as_deref().expect("token"))
        .json(&sub)
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("pipeline");
    let wid = p.workflows[0].id.clone();
    let state = |s: &common::serve::Server| {
        let v = s.json(&["workflows", "show", &wid, "--json"]);
        v["state"].as_str().unwrap_or_default().to_string()
    };
    common::eventually(120, || async { (state(&b) == "on_hold").then_some(()) }).await;
    let out = b.cli_ok(&["workflows", "approve", &wid, "hold"]);
    assert!(out.contains("hold approved"), "{out}");
    common::eventually(120, || async { (state(&a) == "success").then_some(()) }).await;
    let out = a.cli(&["workflows", "rerun", &wid, "--from-failed"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no failed job"));
    let shown = a.cli_ok(&["workflows", "show", &wid]);
    assert!(shown.contains("approved by admin"), "{shown}");
}

fn listen_of(s: &common::serve::Server) -> String {
    let config = std::fs::read_to_string(&s.config).expect("config");
    config.lines().find_map(|l| l.strip_prefix("listen: ")).expect("listen").trim().to_string()
}
