//! The parser and resolver on small configs.

use super::*;

fn job(text: &str, name: &str) -> Result<JobSpec, CircleError> {
    ConfigFile::parse(text, "c.yml")?.job(name, &BTreeMap::new(), &Pipeline::default())
}

#[test]
fn executors_commands_and_parameters() {
    let text = r#"
version: 2.1
parameters:
  greeting: {type: string, default: hello}
executors:
  big:
    parameters:
      size: {type: string, default: large}
    machine: {image: ubuntu-2204:current, docker_layer_caching: true}
    resource_class: << parameters.size >>
    environment: {A: "1"}
commands:
  say:
    parameters:
      what: {type: string}
    steps:
      - run: echo << parameters.what >> << pipeline.parameters.greeting >>
jobs:
  build:
    executor: {name: big, size: xlarge}
    parallelism: 3
    environment:
      - B: "2"
    steps:
      - checkout
      - say: {what: world}
      - run:
          name: fails
          command: exit 1
          when: always
          no_output_timeout: 20m
      - save_cache: {key: x, paths: [a]}
"#;
    let j = job(text, "build").expect("resolves");
    assert_eq!(j.executor, Executor::Machine { image: "ubuntu-2204:current".into(), docker_layer_caching: true });
    assert_eq!(j.resource_class, "xlarge");
    assert_eq!(j.parallelism, 3);
    assert_eq!(j.environment, vec![("A".into(), "1".into()), ("B".into(), "2".into())]);
    assert_eq!(j.steps.len(), 4);
    let Step::Run(r) = &j.steps[1] else { panic!("run") };
    assert_eq!(r.command, "echo world hello");
    let Step::Run(r) = &j.steps[2] else { panic!("run") };
    assert_eq!((r.when, r.no_output_timeout), (When::Always, Some(Duration::from_secs(1200))));
    assert_eq!(
        j.steps[3],
        Step::SaveCache { key: "x".into(), paths: vec!["a".into()], when: When::OnSuccess, line: 32 }
    );
}

#[test]
fn storage_steps_take_their_keys_and_name_what_is_wrong() {
    let with = |step: &str| {
        let text = format!("version: 2.1\njobs:\n  build:\n    machine: true\n    steps:\n      - {step}\n");
        job(&text, "build").map(|j| j.steps).map_err(|e| e.to_string())
    };
    let steps = with("restore_cache: {keys: ['a-{{ .Branch }}', a-]}").expect("restore");
    assert_eq!(
        steps,
        [Step::RestoreCache { keys: vec!["a-{{ .Branch }}".into(), "a-".into()], when: When::OnSuccess, line: 6 }]
    );
    let steps = with("persist_to_workspace: {root: ., paths: [bin, '*.txt']}").expect("persist");
    assert!(matches!(&steps[0], Step::PersistToWorkspace { root, paths, .. } if root == "." && paths.len() == 2));
    let steps = with("store_artifacts: {path: out, destination: reports}").expect("artifacts");
    assert!(
        matches!(&steps[0], Step::StoreArtifacts { destination: Some(d), when: When::Always, .. } if d == "reports")
    );
    let steps = with("store_test_results: {path: r, when: on_success}").expect("test results");
    assert!(matches!(&steps[0], Step::StoreTestResults { when: When::OnSuccess, .. }));
    for (step, says) in [
        ("save_cache: {key: k}", "save_cache needs `paths`"),
        ("save_cache: {key: k, paths: [a], root: x}", "unknown key \"root\""),
        ("restore_cache: {name: x}", "needs `key` or `keys`"),
        ("attach_workspace: {}", "attach_workspace needs `at`"),
        ("store_test_results", "takes a map"),
        ("save_cache: {key: k, paths: [a], when: later}", "when \"later\""),
    ] {
        let err = with(step).expect_err(step);
        assert!(err.starts_with("c.yml:6:") && err.contains(says), "{step}: {err}");
    }
}

#[test]
fn matrix_instances_and_windows_by_class() {
    let text = r#"
version: 2.1
executors:
  win: {machine: true, resource_class: windows.medium}
  lin: {machine: {image: default}}
jobs:
  test:
    parameters:
      e: {type: executor}
    executor: << parameters.e >>
    steps: [{run: echo hi}]
workflows:
  w:
    jobs:
      - test:
          matrix:
            parameters:
              e: [lin, win]
"#;
    let cfg = ConfigFile::parse(text, "c.yml").expect("parses");
    let names: Vec<String> = cfg.workflow_jobs().expect("workflows").into_iter().map(|w| w.name).collect();
    assert_eq!(names, ["test-lin", "test-win"]);
    let w = cfg.job("test-win", &BTreeMap::new(), &Pipeline::default()).expect("instance");
    assert!(w.windows);
    assert_eq!(w.resource_class, "windows.medium");
    assert!(!cfg.job("test-lin", &BTreeMap::new(), &Pipeline::default()).expect("instance").windows);
    assert_eq!(cfg.summaries()[0].kind, JobKind::Parametrized);
}

#[test]
fn nested_commands_and_parameters_stop_at_the_work_limit() {
    let mut text =
        String::from("version: 2.1\ncommands:\n  c0:\n    parameters: {s: {type: steps}}\n    steps: [{run: echo}]\n");
    for i in 1..10 {
        let refs = ["<< parameters.s >>"; 10].join(", ");
        text += &format!(
            "  c{i}:\n    parameters: {{s: {{type: steps}}}}\n    steps:\n      - c{}: {{s: [{refs}]}}\n",
            i - 1
        );
    }
    text += "jobs:\n  build:\n    machine: true\n    steps:\n      - c9: {s: [{run: x}]}\n";
    let cfg = ConfigFile::parse(&text, "c.yml").expect("parses");
    let e = cfg.job("build", &BTreeMap::new(), &Pipeline::default()).expect_err("explodes");
    assert!(e.to_string().starts_with("c.yml:") && e.message.contains("expands past 500000"), "{e}");
    assert!(cfg.exhausted().is_some());
    // Every later job of the file is refused the same way, without more work.
    let spent = cfg.work();
    assert!(cfg.job("build", &BTreeMap::new(), &Pipeline::default()).is_err());
    assert!(cfg.work() <= spent + 10);
}

#[test]
fn errors_name_file_and_line() {
    let e = job("version: 2.1\njobs:\n  a:\n    machine: true\n    stepz: []\n", "a").expect_err("unknown key");
    assert_eq!((e.line, e.file.as_str()), (5, "c.yml"));
    assert!(e.message.contains("stepz"), "{e}");
    let e = job("version: 2.1\njobs:\n  a:\n    machine: true\n    steps: [{run: {comand: x}}]\n", "a")
        .expect_err("unknown run key");
    assert!(e.message.contains("comand"), "{e}");
    let e = job("version: 2.1\njobs:\n  a:\n    machine: true\n    steps: [checkout]\n", "b").expect_err("no job");
    assert!(e.message.contains("it has: a"), "{e}");
    let e = job("version: 2.1\norbs:\n  node: circleci/node@5\njobs:\n  a:\n    machine: true\n    steps:\n      - node/install\n", "a")
            .expect_err("orb");
    assert_eq!(e.line, 8);
    assert!(e.message.contains("circleci/node@5"), "{e}");
    let e = ConfigFile::parse("version: 2.1\njobs: [\n", "c.yml").expect_err("yaml");
    assert!(e.to_string().starts_with("c.yml:"), "{e}");
}

#[test]
fn windows_orb_executors_map_to_the_builtin_image() {
    let text = "version: 2.1\norbs:\n  win: circleci/windows@2.3.0\njobs:\n  a:\n    executor: {name: win/default, size: large}\n    steps: [{run: dir}]\n";
    let j = job(text, "a").expect("maps");
    assert!(j.windows);
    assert_eq!(j.resource_class, "windows.large");
    assert_eq!(j.shell.as_deref(), Some("powershell.exe"));
}

#[test]
fn when_steps_and_step_parameters() {
    let text = r#"
version: 2.1
jobs:
  a:
    parameters:
      extra: {type: steps, default: [{run: echo extra}]}
      on: {type: boolean, default: false}
    machine: true
    steps:
      - steps: << parameters.extra >>
      - when:
          condition: << parameters.on >>
          steps: [{run: echo on}]
      - unless:
          condition: {equal: [a, << parameters.on >>]}
          steps: [{run: echo off}]
"#;
    let j = job(text, "a").expect("resolves");
    let cmds: Vec<&str> =
        j.steps.iter().filter_map(|s| if let Step::Run(r) = s { Some(r.command.as_str()) } else { None }).collect();
    assert_eq!(cmds, ["echo extra", "echo off"]);
}

#[test]
fn contexts_come_from_the_workflow_entry_and_must_agree_unless_a_workflow_is_named() {
    let text = r#"
version: 2.1
jobs:
  deploy:
    machine: true
    steps:
      - add_ssh_keys:
          fingerprints: ["aa:bb", "SHA256:xyz"]
      - add_ssh_keys
  build:
    machine: true
    steps: [checkout]
workflows:
  main:
    jobs:
      - build
      - deploy:
          context: [org, deploy]
  nightly:
    jobs:
      - deploy:
          context: org
"#;
    let cfg = ConfigFile::parse(text, "c.yml").expect("parses");
    let in_wf = |wf: Option<&str>| {
        let p = Pipeline { workflow: wf.map(str::to_string), ..Default::default() };
        cfg.job("deploy", &BTreeMap::new(), &p)
    };
    let err = in_wf(None).expect_err("the workflows disagree").to_string();
    assert!(
        err.contains("job deploy runs with contexts [org, deploy] in workflow main") && err.contains("nightly"),
        "{err}"
    );
    let main = in_wf(Some("main")).expect("main");
    assert_eq!(main.contexts, ["org", "deploy"]);
    assert_eq!(
        main.steps,
        [
            Step::AddSshKeys { fingerprints: vec!["aa:bb".into(), "SHA256:xyz".into()] },
            Step::AddSshKeys { fingerprints: vec![] }
        ]
    );
    assert_eq!(in_wf(Some("nightly")).expect("nightly").contexts, ["org"]);
    assert!(job(text, "build").expect("build").contexts.is_empty());
    let err = in_wf(Some("weekly")).expect_err("no such workflow").to_string();
    assert!(err.contains("no workflow \"weekly\""), "{err}");
    let bad = text.replace("context: org", "context: {a: 1}");
    let err = job(&bad, "build").expect_err("a map is not a context").to_string();
    assert!(err.contains("context: a context name or a list of names"), "{err}");
}

const DAG: &str = r#"
version: 2.1
parameters:
  nightly: {type: boolean, default: false}
  target: {type: string, default: staging}
jobs:
  build: {machine: true, steps: [{run: "true"}]}
  test:
    parameters: {v: {type: string}}
    machine: true
    steps: [{run: echo << parameters.v >>}]
  deploy: {machine: true, steps: [{run: "true"}]}
workflows:
  main:
    jobs:
      - build:
          filters: {tags: {only: "/^v[0-9.]+$/"}}
      - test:
          requires: [build]
          matrix: {parameters: {v: ["1", "2"]}}
          filters: {tags: {only: /.*/}}
      - hold:
          type: approval
          requires: [test-1]
      - deploy:
          requires: [test, hold]
          filters: {branches: {only: [main, "/release-.*/"]}}
  nightly:
    when: << pipeline.parameters.nightly >>
    jobs: [build]
  prod:
    unless:
      matches: {pattern: "stag.*", value: << pipeline.parameters.target >>}
    jobs: [deploy]
"#;

fn dags(branch: Option<&str>, tag: Option<&str>, params: &[(&str, &str)]) -> Vec<Workflow> {
    let p = Pipeline {
        branch: branch.map(str::to_string),
        tag: tag.map(str::to_string),
        parameters: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    };
    ConfigFile::parse(DAG, "c.yml").expect("parses").workflows(&p, None).expect("workflows")
}

fn edges(w: &Workflow) -> Vec<String> {
    w.jobs
        .iter()
        .map(|j| format!("{}{}<-{}", j.name, if j.approval { "?" } else { "" }, j.requires.join(",")))
        .collect()
}

#[test]
fn workflows_resolve_requires_matrix_aliases_approvals_and_filters() {
    let w = dags(Some("main"), None, &[]);
    assert_eq!(w.len(), 3);
    assert_eq!(
        edges(&w[0]),
        ["build<-", "test-1<-build", "test-2<-build", "hold?<-test-1", "deploy<-test-1,test-2,hold"]
    );
    assert!(w[1].skipped.as_deref().is_some_and(|s| s.contains("`when:`")), "{:?}", w[1].skipped);
    // `target` defaults to staging, which matches, so `unless` holds it back.
    assert!(w[2].skipped.as_deref().is_some_and(|s| s.contains("`unless:`")), "{:?}", w[2].skipped);
    let w = dags(Some("release-7"), None, &[("nightly", "true"), ("target", "prod")]);
    assert_eq!(edges(&w[0]).last().map(String::as_str), Some("deploy<-test-1,test-2,hold"));
    assert!(w[1].skipped.is_none() && w[2].skipped.is_none());
    // A branch outside `only` leaves deploy out, and nothing else.
    let w = dags(Some("feature"), None, &[]);
    assert_eq!(edges(&w[0]).len(), 4);
    assert!(w[0].left_out[0].1.contains("not in its `only` filter"), "{:?}", w[0].left_out);
    // A tag pipeline runs only what tag filters let through; what requires a job left out goes too.
    let w = dags(None, Some("v1.2"), &[]);
    assert_eq!(edges(&w[0]), ["build<-", "test-1<-build", "test-2<-build"]);
    let w = dags(None, Some("nightly-1"), &[]);
    assert!(w[0].skipped.is_some(), "build's tag filter leaves it out and with it all it feeds");
    assert!(
        w[0].left_out.iter().any(|(j, why)| j == "test-1" && why.contains("requires build")),
        "{:?}",
        w[0].left_out
    );
}

#[test]
fn workflow_errors_name_the_line() {
    let cfg = |text: &str| ConfigFile::parse(text, "c.yml").expect("parses");
    let p = Pipeline::default();
    let unknown = DAG.replace("requires: [test-1]", "requires: [tset]");
    let err = cfg(&unknown).workflows(&p, None).expect_err("unknown requirement").to_string();
    assert!(err.starts_with("c.yml:") && err.contains("hold requires tset, which this workflow does not run"), "{err}");
    let cycle = DAG.replace("requires: [build]", "requires: [build, deploy]");
    let err = cfg(&cycle).workflows(&p, None).expect_err("a cycle").to_string();
    assert!(err.contains("require each other") && err.contains("deploy"), "{err}");
    let err = cfg(DAG).workflows(&p, Some("weekly")).expect_err("no such workflow").to_string();
    assert!(err.contains("no workflow \"weekly\"") && err.contains("main, nightly, prod"), "{err}");
    let bad = DAG.replace("/^v[0-9.]+$/", "/([/");
    let err = cfg(&bad).workflows(&Pipeline { tag: Some("v1".into()), ..p.clone() }, None).expect_err("bad regex");
    assert!(err.to_string().contains("filter pattern"), "{err}");
    let status = DAG.replace("requires: [test-1]", "requires: [{test-1: failed}]");
    let err = cfg(&status).workflows(&p, None).expect_err("statuses").to_string();
    assert!(err.contains("only success is supported"), "{err}");
    // A file without workflows runs its build job.
    let plain = "version: 2\njobs:\n  build: {machine: true, steps: [checkout]}\n";
    let w = cfg(plain).workflows(&p, None).expect("implicit workflow");
    assert_eq!(edges(&w[0]), ["build<-"]);
}
