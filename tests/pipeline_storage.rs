//! A whole pipeline through `vmfleet run`: workspaces from build to test and deploy, a cache
//! saved by one pipeline and restored by the next, JUnit results and artifacts stored and shown,
//! tests split by the previous run's timings, and a failing lint leaving deploy `not_run`; on
//! the embedded default (SQLite, the filesystem store).
#![expect(clippy::tests_outside_test_module, reason = "integration tests live in tests/, not in a cfg(test) module")]

mod common;

use common::serve::{serve_with, Server};

pub const PIPELINE: &str = r#"
version: 2.1
parameters:
  lint_exit: {type: string, default: "0"}
jobs:
  build:
    machine: true
    steps:
      - run: mkdir -p out && echo lock-1 > deps.lock
      - restore_cache:
          keys: ['v1-deps-{{ checksum "deps.lock" }}', 'v1-deps-']
      - run: if [ -f deps/installed ]; then echo CACHE-HIT; else echo CACHE-MISS; mkdir -p deps; date > deps/installed; fi
      - save_cache:
          key: 'v1-deps-{{ checksum "deps.lock" }}'
          paths: [deps]
      - run: echo the-binary > out/app; for i in 1 2 3 4 5 6; do echo x > out/test_$i.py; done
      - persist_to_workspace: {root: out, paths: [app, "*.py"]}
  test:
    machine: true
    parallelism: 3
    steps:
      - attach_workspace: {at: ws}
      - run: |
          mkdir -p results
          files=$(cd ws && circleci tests glob "*.py" | circleci tests split --split-by=timings | tr '\n' ' ')
          echo "node $CIRCLE_NODE_INDEX runs: $files"
          {
            echo '<testsuite name="unit">'
            for f in $files; do
              n=${f%.py}
              if [ "$n" = test_3 ]; then fail='<failure message="expected 3, got 4">assert 3 == 4</failure>'; else fail=; fi
              echo "<testcase classname=\"unit\" name=\"$n\" file=\"$f\" time=\"${n#test_}\">$fail</testcase>"
            done
            echo '</testsuite>'
          } > results/junit.xml
      - store_test_results: {path: results}
      - store_artifacts: {path: results, destination: reports}
  lint:
    machine: true
    steps:
      - run: exit << pipeline.parameters.lint_exit >>
  deploy:
    machine: true
    steps:
      - attach_workspace: {at: ws}
      - run: echo "deploying $(cat ws/app)"
workflows:
  main:
    jobs:
      - build
      - test: {requires: [build]}
      - lint: {requires: [build]}
      - deploy: {requires: [test, lint]}
"#;

fn run(s: &Server, file: &str, lint_exit: &str) -> (i32, String) {
    let out = s.cli(&[
        "run",
        file,
        "--project",
        "gh/acme/app",
        "--branch",
        "main",
        "--param",
        &format!("lint_exit={lint_exit}"),
    ]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// The test job of the newest workflow.
fn newest_job(s: &Server, name: &str) -> String {
    let list = s.json(&["workflows", "list", "--json"]);
    let jobs = list[0]["jobs"].as_array().cloned().unwrap_or_default();
    let job = jobs.iter().find(|j| j["name"] == name).unwrap_or_else(|| panic!("no {name} in {list}"));
    job["job_id"].as_str().expect("job id").to_string()
}

/// The scenario against the servers given (CLI calls alternate between them).
pub fn scenario(servers: &[&Server]) {
    let first = servers[0];
    let file = first.dir.path().join("config.yml");
    std::fs::write(&file, PIPELINE).expect("config");
    let file = file.display().to_string();
    let pick = |i: usize| servers[i % servers.len()];

    let (code, text) = run(pick(0), &file, "0");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("[build] CACHE-MISS") && text.contains("saved cache v1-deps-"), "{text}");
    assert!(text.contains("no timing data for this job yet"), "{text}");
    assert!(text.contains("[deploy] deploying the-binary"), "the workspace reached deploy: {text}");
    assert!(text.contains("attached 1 workspace layer(s) at ws"), "{text}");

    let (code, text) = run(pick(1), &file, "1");
    assert_eq!(code, 1, "lint fails the pipeline: {text}");
    assert!(text.contains("restored cache v1-deps-") && text.contains("[build] CACHE-HIT"), "{text}");
    assert!(!text.contains("no timing data"), "{text}");
    // Times are 1..6 s: greedy packing puts 6+1, 5+2 and 4+3 together.
    for (node, files) in [(0, "test_6.py test_1.py"), (1, "test_5.py test_2.py"), (2, "test_4.py test_3.py")] {
        assert!(text.contains(&format!("node {node} runs: {files}")), "node {node}: {text}");
    }
    assert!(text.contains("deploy") && text.contains("not_run (it requires lint, which ended failed)"), "{text}");
    assert!(!text.contains("deploying"), "{text}");

    let test = newest_job(pick(0), "test");
    let shown = pick(1).cli_ok(&["jobs", "tests", &test]);
    assert!(shown.contains("tests: 6 (5 passed, 1 failed"), "{shown}");
    assert!(shown.contains("failure unit.test_3 (test_3.py): expected 3, got 4"), "{shown}");
    let shown = pick(0).cli_ok(&["jobs", "show", &test]);
    assert!(shown.contains("tests: 6") && shown.contains("slowest: 6.00 s unit.test_6"), "{shown}");
    let dest = first.dir.path().join("downloaded");
    let listed = pick(1).cli_ok(&["jobs", "artifacts", &test, "--download", &dest.display().to_string()]);
    assert!(listed.contains("reports/junit.xml"), "{listed}");
    for node in 0..3 {
        let xml = std::fs::read_to_string(dest.join(node.to_string()).join("reports/junit.xml")).expect("artifact");
        assert!(xml.contains("<testsuite"), "{xml}");
    }
}

#[test]
fn a_pipeline_passes_workspaces_caches_test_results_and_artifacts_on_the_embedded_default() {
    let s = serve_with("timeouts:\n  ssh_connect: 30s\n  vm_start: 60s\n");
    scenario(&[&s]);
    let objects = s.dir.path().join("objects");
    for kind in ["caches", "workspaces", "artifacts"] {
        assert!(objects.join(kind).is_dir(), "{kind} under {}", objects.display());
    }

    // Retention: with caches kept 0 s, gc names the cache (and an upload a crash left), then
    // removes them; the next pipeline misses the cache.
    let stray = objects.join("caches/stray.tar.gz");
    std::fs::write(&stray, b"x").expect("stray object");
    assert!(std::process::Command::new("touch")
        .args(["-d", "2 days ago"])
        .arg(&stray)
        .status()
        .expect("touch")
        .success());
    let gc = |args: &[&str]| {
        let out = std::process::Command::new(common::serve::BIN)
            .arg("--config")
            .arg(&s.config)
            .arg("gc")
            .args(args)
            .env("VMFLEET__STORAGE__RETENTION__CACHES", "0s")
            .output()
            .expect("gc");
        assert!(out.status.success(), "gc {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let planned = gc(&["--dry-run"]);
    assert!(
        planned.contains("would delete cache gh/acme/app v1-deps-") && planned.contains("past its retention"),
        "{planned}"
    );
    assert!(planned.contains("would delete unrecorded object caches/stray.tar.gz"), "{planned}");
    assert!(
        !planned.contains("artifact") && !planned.contains("workspace"),
        "artifacts and workspaces are kept: {planned}"
    );
    assert!(stray.exists(), "a dry run removes nothing");
    gc(&[]);
    assert!(!stray.exists());
    let (_, text) = run(&s, &s.dir.path().join("config.yml").display().to_string(), "0");
    assert!(text.contains("[build] CACHE-MISS"), "the cache is gone: {text}");
}

/// The same pipeline with the objects in S3 (moto) and two `serve` replicas on one PostgreSQL
/// database, each with its own data directory: the CLI calls alternate between them.
#[tokio::test(flavor = "multi_thread")]
async fn the_same_pipeline_runs_on_s3_with_two_replicas_on_postgres() {
    let Some(url) = common::fresh_pg_url().await else { return };
    let Some(moto) = common::emulator::moto_url() else { return };
    let bucket = format!("vmfleet-{}", vmfleet::store::short_id());
    let creds = aws_sdk_s3::config::Credentials::new("testing", "testing", None, None, "test");
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(&moto)
        .credentials_provider(creds)
        .force_path_style(true)
        .build();
    let s3 = aws_sdk_s3::Client::from_conf(conf);
    s3.create_bucket().bucket(&bucket).send().await.expect("create the bucket");

    let extra = format!(
        "storage:\n  kind: s3\n  bucket: {bucket}\n  prefix: ci\n  region: us-east-1\n  endpoint_url: {moto}\n\
         provider:\n  ec2:\n    access_key_id: testing\n    secret_access_key: testing\n"
    );
    let (a, b, _key) = common::serve::replicas_on(&url, &extra);
    tokio::task::spawn_blocking(move || {
        scenario(&[&a, &b]);
        for s in [&a, &b] {
            assert!(!s.dir.path().join("objects").exists(), "nothing went to a replica's disk");
        }
    })
    .await
    .expect("scenario");
    let listed = s3.list_objects_v2().bucket(&bucket).prefix("ci/").send().await.expect("list");
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    for kind in ["ci/caches/", "ci/workspaces/", "ci/artifacts/"] {
        assert!(keys.iter().any(|k| k.starts_with(kind)), "no {kind} object in {keys:?}");
    }
}
