//! The job parser against real CircleCI configs (`../shared/circleci-configs/`): every file
//! parses, and its jobs are classified as `tests/data/circleci-expected.tsv` says, one line per
//! job: file, job, kind, image, resource class, parallelism, DLC, Windows, and why it cannot run
//! here (empty when it can).
#![expect(clippy::tests_outside_test_module, reason = "integration tests live in tests/, not in a cfg(test) module")]

use std::collections::BTreeMap;
use std::path::PathBuf;

use vmfleet::jobs::circleci::{ConfigFile, JobKind, Pipeline, MAX_WORK};
use vmfleet::yaml::Limits;

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/circleci-configs")
}

/// The shared configs, sorted.
fn configs() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus())
        .expect("the shared CircleCI configs")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    files
}

fn classify_all() -> Vec<String> {
    let files = configs();
    assert_eq!(files.len(), 24, "the corpus has 24 configs");
    let mut lines = Vec::new();
    for path in files {
        let name = path.file_name().expect("name").to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).expect("read");
        let cfg = ConfigFile::parse(&text, &name).unwrap_or_else(|e| panic!("{name} does not parse: {e}"));
        let summaries = cfg.summaries();
        let _ = cfg.workflow_jobs();
        // Real configs stay far inside the parser's budgets.
        let (nodes, work) = (cfg.root().size(), cfg.work());
        assert!(nodes * 20 < Limits::CIRCLECI.nodes, "{name}: {nodes} nodes");
        assert!(work * 10 < MAX_WORK, "{name}: {work} units of expansion work");
        for s in summaries {
            lines.push(
                [
                    name.clone(),
                    s.name.clone(),
                    s.kind.as_str().to_string(),
                    s.image.clone().unwrap_or_default(),
                    s.resource_class.clone().unwrap_or_default(),
                    s.parallelism.to_string(),
                    s.docker_layer_caching.to_string(),
                    s.windows.to_string(),
                    s.error.clone().unwrap_or_default(),
                ]
                .join("\t"),
            );
        }
    }
    lines
}

#[test]
fn every_shared_config_parses_and_its_jobs_are_classified_as_expected() {
    same_as_reviewed(&classify_all(), "circleci-expected.tsv");
}

/// `got` line by line against `tests/data/<file>` (rewritten with `VMFLEET_WRITE_EXPECTED=1`,
/// then reviewed by hand).
fn same_as_reviewed(got: &[String], file: &str) {
    let expected_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(file);
    if std::env::var_os("VMFLEET_WRITE_EXPECTED").is_some() {
        std::fs::write(&expected_path, got.join("\n") + "\n").expect("write");
    }
    let expected = std::fs::read_to_string(&expected_path).expect("expected results");
    let expected: Vec<&str> = expected.lines().filter(|l| !l.is_empty()).collect();
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "line {} of {file}", i + 1);
    }
    assert_eq!(got.len(), expected.len(), "number of lines of {file}");
}

/// Every shared config's workflows as a branch pipeline on `main` with default parameters:
/// one line per workflow (or why it does not run, or the error), then one per job with what it
/// requires, then one per job filters leave out.
fn dags_all() -> Vec<String> {
    let mut lines = Vec::new();
    for path in configs() {
        let name = path.file_name().expect("name").to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).expect("read");
        let cfg = ConfigFile::parse(&text, &name).expect("parses");
        let pipeline = Pipeline { branch: Some("main".into()), ..Default::default() };
        let workflows = match cfg.workflows(&pipeline, None) {
            Ok(w) => w,
            Err(e) => {
                lines.push(format!("{name}\terror\t{e}"));
                continue;
            }
        };
        for w in workflows {
            let head = format!("{name}\t{}\tline {}", w.name, w.line);
            match &w.skipped {
                Some(why) => lines.push(format!("{head}\tskipped: {why}")),
                None => lines.push(format!("{head}\t{} jobs", w.jobs.len())),
            }
            for j in &w.jobs {
                let kind = if j.approval { "approval" } else { "job" };
                let def = if j.job == j.name { String::new() } else { format!(" ({})", j.job) };
                lines.push(format!("{name}\t{}\t  {kind} {}{def} <- [{}]", w.name, j.name, j.requires.join(", ")));
            }
            for (j, why) in &w.left_out {
                lines.push(format!("{name}\t{}\t  left out {j}: {why}", w.name));
            }
        }
        // The same file as a tag pipeline: only jobs with tag filters that let v1.2.3 run.
        let tagged = Pipeline { tag: Some("v1.2.3".into()), ..Default::default() };
        for w in cfg.workflows(&tagged, None).unwrap_or_default().iter().filter(|w| w.skipped.is_none()) {
            let jobs: Vec<String> =
                w.jobs.iter().map(|j| format!("{} <- [{}]", j.name, j.requires.join(", "))).collect();
            lines.push(format!("{name}\t{}\ttag v1.2.3 runs: {}", w.name, jobs.join("; ")));
        }
    }
    lines
}

#[test]
fn every_shared_configs_workflows_resolve_to_the_reviewed_dags() {
    same_as_reviewed(&dags_all(), "circleci-workflows.tsv");
}

fn load(name: &str) -> ConfigFile {
    let text = std::fs::read_to_string(corpus().join(name)).expect("read");
    ConfigFile::parse(&text, name).expect("parses")
}

fn none() -> (BTreeMap<String, String>, Pipeline) {
    (BTreeMap::new(), Pipeline::default())
}

#[test]
fn matrix_instances_resolve_their_executor() {
    let (p, pl) = none();
    let cli = load("CircleCI-Public__circleci-cli.yml");
    let names: Vec<String> = cli.workflow_jobs().expect("workflows").into_iter().map(|w| w.name).collect();
    for n in ["test-linux", "test-windows"] {
        assert!(names.contains(&n.to_string()), "{n} in {names:?}");
    }
    let win = cli.job("test-windows", &p, &pl).expect("windows instance");
    assert!(win.windows);
    assert_eq!(win.resource_class, "windows.medium");
    let linux = cli.job("test-linux", &p, &pl).expect("linux instance");
    assert_eq!(linux.resource_class, "large.gen3");
    assert!(!linux.windows);

    let orb = load("CircleCI-Public__windows-orb.yml");
    let names: Vec<String> = orb.workflow_jobs().expect("workflows").into_iter().map(|w| w.name).collect();
    assert!(names.contains(&"test-server-2019-vs2019-edge".to_string()), "{names:?}");
    assert!(orb.job("test-server-2019-vs2019-edge", &p, &pl).expect("instance").windows);

    // The workflow names a job the file does not define: a clear error naming what there is.
    let sandbox = load("algorand__sandbox.yml");
    let e = sandbox.job("build_and_test_betanet", &p, &pl).expect_err("dangling");
    assert!(
        e.to_string().contains("no job \"build_and_test\"") && e.to_string().contains("circleci_build_and_test"),
        "{e}"
    );
    // The defined job needs its parameter: given, it resolves.
    let mut given = BTreeMap::new();
    given.insert("machine".to_string(), "ubuntu-2004:202111-02".to_string());
    given.insert("config".to_string(), "".to_string());
    let j = sandbox.job("circleci_build_and_test", &given, &pl).expect("with parameters");
    assert_eq!(
        j.executor,
        vmfleet::jobs::circleci::Executor::Machine {
            image: "ubuntu-2004:202111-02".into(),
            docker_layer_caching: false
        }
    );
}

#[test]
fn orb_steps_are_refused_while_the_files_other_jobs_resolve() {
    let (p, pl) = none();
    let dlc = load("the-volte__dlc.yml");
    let e = dlc.job("build-image", &p, &pl).expect_err("orb step");
    assert_eq!(e.line, 19);
    assert!(e.message.contains("aws-ecr") && e.message.contains("circleci/aws-ecr@7.0.0"), "{e}");
    let waypoint = load("hashicorp__waypoint.yml");
    assert!(waypoint.job("go-test", &p, &pl).is_err(), "misspelled setup_remote_docker key");
    let ok = waypoint.job("image-release", &p, &pl).expect("its other jobs resolve");
    assert!(matches!(
        ok.remote_docker(),
        Some(vmfleet::jobs::circleci::Step::SetupRemoteDocker { docker_layer_caching: true, .. })
    ));
    let kinds: Vec<JobKind> = load("linuxkit__linuxkit.yml").summaries().into_iter().map(|s| s.kind).collect();
    assert_eq!(kinds, [JobKind::DockerOnly]);
}
