//! CircleCI `.circleci/config.yml` files (`version: 2` and `2.1`), as people write them.
//!
//! [`ConfigFile::parse`] reads a file; [`ConfigFile::summaries`] classifies every job it defines
//! (machine, remote Docker, docker-only, macOS, …) with its image, resource class, parallelism
//! and DLC as written; [`ConfigFile::job`] resolves one job into a [`JobSpec`] the runner can
//! execute: executors, reusable commands, parameters (`<< parameters.x >>`,
//! `<< pipeline.parameters.x >>`), matrix instances from `workflows:`, `when`/`unless` steps.
//!
//! # Design
//! Every error names the file and the line. A problem in one job (an orb command, an unknown
//! key) is that job's error: the file's other jobs still resolve. Orbs are never fetched; the
//! Windows orb's executors map to the built-in Windows image, everything else from an orb is
//! refused with the orb's name.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::yaml::{self, Node, Value};

/// An error in a config file, with where it is.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct CircleError {
    /// The file as given.
    pub file: String,
    /// The line (1-based).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// How a job gets its machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Executor {
    /// A `machine` VM.
    Machine {
        /// The image as written (`ubuntu-2004:202101-01`, `default`, …).
        image: String,
        /// Docker layer caching on the VM.
        docker_layer_caching: bool,
    },
    /// A docker executor; runnable here only with `setup_remote_docker`.
    Docker {
        /// The primary container's image.
        image: String,
    },
    /// macOS (not served by this fleet).
    Macos {
        /// The Xcode version.
        xcode: String,
    },
}

/// When a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    /// Only while every step before it succeeded (the default).
    #[default]
    OnSuccess,
    /// Only after a step failed.
    OnFail,
    /// Always.
    Always,
}

/// A `run` step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStep {
    /// Shown in the output.
    pub name: String,
    /// The script.
    pub command: String,
    /// Step environment (added to the job's).
    pub environment: Vec<(String, String)>,
    /// Relative to the job's working directory, or absolute.
    pub working_directory: Option<String>,
    /// Runs beside the following steps.
    pub background: bool,
    /// Ends the step when it prints nothing this long.
    pub no_output_timeout: Option<Duration>,
    /// When it runs.
    pub when: When,
    /// Its shell, if not the job's.
    pub shell: Option<String>,
}

/// One step of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Step {
    /// Clone the project at the job's revision.
    Checkout {
        /// Where (default: the working directory).
        path: Option<String>,
    },
    /// Run a script.
    Run(RunStep),
    /// Ask for a remote Docker engine.
    SetupRemoteDocker {
        /// Docker version asked for (informational).
        version: Option<String>,
        /// The project's layer cache on the engine.
        docker_layer_caching: bool,
    },
    /// A CircleCI built-in this service does not carry out (caches, workspaces, artifacts):
    /// reported in the output and skipped.
    Unsupported {
        /// The step's name (`save_cache`, …).
        name: String,
        /// Its line.
        line: usize,
    },
}

/// A job, resolved and ready to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The name it was asked for under (a workflow instance's name, or the job's).
    pub name: String,
    /// The job definition's name.
    pub definition: String,
    /// Its executor.
    pub executor: Executor,
    /// Resource class as written (`medium` when none).
    pub resource_class: String,
    /// Parallel tasks.
    pub parallelism: u32,
    /// Job environment.
    pub environment: Vec<(String, String)>,
    /// Working directory (default `~/project`).
    pub working_directory: String,
    /// Job-level shell.
    pub shell: Option<String>,
    /// The steps, commands expanded.
    pub steps: Vec<Step>,
    /// Whether the job runs on Windows (from the image or the resource class).
    pub windows: bool,
    /// The line of the job definition.
    pub line: usize,
}

impl JobSpec {
    /// Whether a step asks for remote Docker.
    pub fn remote_docker(&self) -> Option<&Step> {
        self.steps.iter().find(|s| matches!(s, Step::SetupRemoteDocker { .. }))
    }
}

/// What kind of job a definition is, for classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    /// A machine VM job.
    Machine,
    /// A docker job with `setup_remote_docker`: a remote-docker VM.
    RemoteDocker,
    /// A docker job that never asks for remote Docker: not a job for this service.
    DockerOnly,
    /// A macOS job: not a job for this service.
    Macos,
    /// No executor at all (`type: no-op`, approval jobs).
    NoExecutor,
    /// The executor is a parameter without a default; only a workflow instance says which.
    Parametrized,
}

impl JobKind {
    /// The name used in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Machine => "machine",
            JobKind::RemoteDocker => "remote-docker",
            JobKind::DockerOnly => "docker-only",
            JobKind::Macos => "macos",
            JobKind::NoExecutor => "no-executor",
            JobKind::Parametrized => "parametrized",
        }
    }
}

/// A job as the file defines it.
#[derive(Debug, Clone, Serialize)]
pub struct JobSummary {
    /// Name.
    pub name: String,
    /// Line of the definition.
    pub line: usize,
    /// Kind.
    pub kind: JobKind,
    /// Machine image or primary docker image as written.
    pub image: Option<String>,
    /// Resource class as written.
    pub resource_class: Option<String>,
    /// Parallel tasks.
    pub parallelism: u32,
    /// DLC (machine) or remote Docker's DLC.
    pub docker_layer_caching: bool,
    /// Runs on Windows.
    pub windows: bool,
    /// Why the job cannot run here, when it cannot.
    pub error: Option<String>,
}

/// A job a workflow runs, with its instance name and parameters.
#[derive(Debug, Clone)]
pub struct WorkflowJob {
    /// The workflow.
    pub workflow: String,
    /// The instance name (`name:`, matrix names expanded).
    pub name: String,
    /// The job definition it runs.
    pub job: String,
    /// Parameter values.
    pub params: Vec<(String, Node)>,
    /// Where.
    pub line: usize,
}

/// Values a pipeline supplies to `<< pipeline.* >>`.
#[derive(Debug, Clone, Default)]
pub struct Pipeline {
    /// `pipeline.number`.
    pub number: i64,
    /// `pipeline.id`.
    pub id: String,
    /// `pipeline.git.revision`.
    pub revision: Option<String>,
    /// `pipeline.git.branch`.
    pub branch: Option<String>,
    /// `pipeline.project.git_url`.
    pub git_url: Option<String>,
    /// Pipeline parameter values given at submission (override the defaults).
    pub parameters: BTreeMap<String, String>,
}

/// A parsed config file.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    file: String,
    root: Node,
    version: String,
    orbs: HashMap<String, String>,
}

const JOB_KEYS: &[&str] = &[
    "docker",
    "machine",
    "macos",
    "executor",
    "resource_class",
    "parallelism",
    "environment",
    "working_directory",
    "shell",
    "steps",
    "parameters",
    "description",
    "circleci_ip_ranges",
    "type",
    "branches",
    "retention",
];
const EXECUTOR_KEYS: &[&str] = &[
    "docker",
    "machine",
    "macos",
    "resource_class",
    "environment",
    "working_directory",
    "shell",
    "parameters",
    "description",
];
const RUN_KEYS: &[&str] =
    &["command", "name", "environment", "working_directory", "background", "no_output_timeout", "when", "shell"];
const SRD_KEYS: &[&str] = &["version", "docker_layer_caching", "name"];
/// Built-ins parsed and reported, but not carried out by this service.
const UNSUPPORTED: &[&str] = &[
    "save_cache",
    "restore_cache",
    "store_artifacts",
    "store_test_results",
    "persist_to_workspace",
    "attach_workspace",
    "add_ssh_keys",
];
const MAX_DEPTH: usize = 32;

/// Parameters in scope while a node is substituted.
#[derive(Clone, Default)]
struct Scope<'a> {
    params: HashMap<String, Node>,
    pipeline: Option<&'a Pipeline>,
    /// Pipeline parameter defaults from the file.
    pipeline_defaults: HashMap<String, Node>,
    /// Leave unknown references as written (classification) instead of failing.
    lenient: bool,
}

impl ConfigFile {
    /// Parses `text`; `file` names it in errors.
    ///
    /// # Errors
    /// YAML syntax errors; a file that is not a map; a missing or unsupported `version`.
    pub fn parse(text: &str, file: &str) -> Result<Self, CircleError> {
        let err = |line: usize, message: String| CircleError { file: file.to_string(), line, message };
        let root = yaml::parse(text).map_err(|e| err(e.line, e.message))?;
        if root.map().is_none() {
            return Err(err(root.line, format!("a CircleCI config is a map, not {}", root.kind())));
        }
        let version = match root.get("version") {
            Some(v) => v.str().unwrap_or_default().to_string(),
            None => return Err(err(1, "no `version:` (use 2 or 2.1)".into())),
        };
        if !matches!(version.as_str(), "2" | "2.0" | "2.1") {
            let line = root.get("version").map_or(1, |n| n.line);
            return Err(err(line, format!("version {version:?} is not supported (use 2 or 2.1)")));
        }
        let mut orbs = HashMap::new();
        if let Some(o) = root.get("orbs") {
            for (k, v) in o.map().unwrap_or_default() {
                let name = k.str().unwrap_or_default().to_string();
                let reference = v.str().map(str::to_string).unwrap_or_else(|| "(inline orb)".into());
                orbs.insert(name, reference);
            }
        }
        let cfg = Self { file: file.to_string(), root, version, orbs };
        let jobs = cfg.root.get("jobs").ok_or_else(|| err(1, "no `jobs:`".into()))?;
        if jobs.map().is_none() {
            return Err(err(jobs.line, format!("`jobs:` is a map of job names, not {}", jobs.kind())));
        }
        for section in ["executors", "commands", "parameters", "workflows", "orbs"] {
            if let Some(n) = cfg.root.get(section) {
                if n.map().is_none() && !n.is_null() {
                    return Err(err(n.line, format!("`{section}:` is a map, not {}", n.kind())));
                }
            }
        }
        Ok(cfg)
    }

    /// The file as given.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// `2`, `2.0` or `2.1`.
    pub fn version(&self) -> &str {
        &self.version
    }

    fn err(&self, line: usize, message: impl Into<String>) -> CircleError {
        CircleError { file: self.file.clone(), line, message: message.into() }
    }

    fn section(&self, name: &str) -> &[(Node, Node)] {
        self.root.get(name).and_then(Node::map).unwrap_or_default()
    }

    fn lookup<'n>(&'n self, section: &str, name: &str) -> Option<&'n Node> {
        self.section(section).iter().find(|(k, _)| k.str() == Some(name)).map(|(_, v)| v)
    }

    /// The names of the jobs the file defines, in order.
    pub fn job_names(&self) -> Vec<String> {
        self.section("jobs").iter().filter_map(|(k, _)| k.str().map(str::to_string)).collect()
    }

    /// Every job a workflow runs, matrix instances expanded.
    ///
    /// # Errors
    /// A malformed workflow entry or matrix.
    pub fn workflow_jobs(&self) -> Result<Vec<WorkflowJob>, CircleError> {
        let mut out = Vec::new();
        for (wk, wf) in self.section("workflows") {
            let Some(wname) = wk.str() else { continue };
            if wname == "version" {
                continue;
            }
            let Some(entries) = wf.get("jobs").and_then(Node::seq) else { continue };
            for entry in entries {
                let (job, args, line) = match &entry.value {
                    Value::Scalar { text, .. } => (text.clone(), None, entry.line),
                    // The first key names the job; a mis-indented entry carries its options as
                    // sibling keys, which are ignored with it.
                    Value::Map(m) => match m.first() {
                        Some((k, v)) => (k.str().unwrap_or_default().to_string(), Some(v), k.line),
                        None => continue,
                    },
                    _ => return Err(self.err(entry.line, "a workflow job is a name or a map")),
                };
                let mut params: Vec<(String, Node)> = Vec::new();
                let mut name_tpl: Option<Node> = None;
                let mut matrix: Option<&Node> = None;
                for (k, v) in args.and_then(|a| a.map()).unwrap_or_default() {
                    match k.str().unwrap_or_default() {
                        "name" => name_tpl = Some(v.clone()),
                        "matrix" => matrix = Some(v),
                        "requires" | "filters" | "context" | "type" | "serial-group" | "pre-steps" | "post-steps"
                        | "override-with" => {}
                        p => params.push((p.to_string(), v.clone())),
                    }
                }
                let combos = match matrix {
                    Some(m) => self.matrix(m)?,
                    None => vec![Vec::new()],
                };
                for combo in combos {
                    let mut p = params.clone();
                    p.extend(combo.iter().cloned());
                    let name = match &name_tpl {
                        Some(n) => {
                            let scope = Scope {
                                params: combo.iter().map(|(k, v)| (format!("matrix.{k}"), v.clone())).collect(),
                                lenient: true,
                                ..Default::default()
                            };
                            self.subst_text(n.str().unwrap_or_default(), n.line, &scope)?
                        }
                        None if combo.is_empty() => job.clone(),
                        // CircleCI's default instance name: the job and its matrix values.
                        None => {
                            let vals: Vec<String> = combo.iter().map(|(_, v)| scalar_text(v)).collect();
                            format!("{job}-{}", vals.join("-"))
                        }
                    };
                    out.push(WorkflowJob { workflow: wname.to_string(), name, job: job.clone(), params: p, line });
                }
            }
        }
        Ok(out)
    }

    fn matrix(&self, m: &Node) -> Result<Vec<Vec<(String, Node)>>, CircleError> {
        let params =
            m.get("parameters").and_then(Node::map).ok_or_else(|| self.err(m.line, "matrix needs parameters"))?;
        let mut combos: Vec<Vec<(String, Node)>> = vec![Vec::new()];
        for (k, v) in params {
            let name = k.str().unwrap_or_default().to_string();
            let values = v.seq().ok_or_else(|| self.err(v.line, format!("matrix parameter {name} is a list")))?;
            let mut next = Vec::new();
            for c in &combos {
                for val in values {
                    let mut c = c.clone();
                    c.push((name.clone(), val.clone()));
                    next.push(c);
                }
            }
            combos = next;
        }
        let excluded: Vec<Vec<(String, String)>> = m
            .get("exclude")
            .and_then(Node::seq)
            .unwrap_or_default()
            .iter()
            .map(|e| {
                e.map().unwrap_or_default().iter().map(|(k, v)| (scalar_text(k), scalar_text(v))).collect::<Vec<_>>()
            })
            .collect();
        combos.retain(|c| {
            !excluded.iter().any(|ex| ex.iter().all(|(k, v)| c.iter().any(|(ck, cv)| ck == k && scalar_text(cv) == *v)))
        });
        Ok(combos)
    }

    /// Every job the file defines, classified with its defaults applied.
    pub fn summaries(&self) -> Vec<JobSummary> {
        let mut out = Vec::new();
        for (k, v) in self.section("jobs") {
            let Some(name) = k.str() else { continue };
            out.push(self.summary(name, k.line, v));
        }
        out
    }

    fn summary(&self, name: &str, line: usize, def: &Node) -> JobSummary {
        let mut s = JobSummary {
            name: name.to_string(),
            line,
            kind: JobKind::NoExecutor,
            image: None,
            resource_class: None,
            parallelism: 1,
            docker_layer_caching: false,
            windows: false,
            error: None,
        };
        let scope = Scope { lenient: true, ..self.scope(def, &[], None).unwrap_or_default() };
        match self.resolve(name, name, def, &scope) {
            Ok(spec) => {
                s.parallelism = spec.parallelism;
                s.windows = spec.windows;
                s.resource_class = Some(spec.resource_class.clone());
                match &spec.executor {
                    Executor::Machine { image, docker_layer_caching } => {
                        s.kind = JobKind::Machine;
                        s.image = Some(image.clone());
                        s.docker_layer_caching = *docker_layer_caching;
                    }
                    Executor::Docker { image } => {
                        s.image = Some(image.clone());
                        match spec.remote_docker() {
                            Some(Step::SetupRemoteDocker { docker_layer_caching, .. }) => {
                                s.kind = JobKind::RemoteDocker;
                                s.docker_layer_caching = *docker_layer_caching;
                            }
                            _ => s.kind = JobKind::DockerOnly,
                        }
                    }
                    Executor::Macos { xcode } => {
                        s.kind = JobKind::Macos;
                        s.image = Some(format!("xcode:{xcode}"));
                    }
                }
            }
            Err(e) => {
                // Classify as far as the executor goes; the error says why it cannot run.
                let exec = self.job_executor_node(def, &scope);
                match exec {
                    Ok(Some(ex)) => {
                        let (kind, image, dlc) = classify_executor(&ex);
                        s.kind = kind;
                        s.image = image;
                        s.docker_layer_caching = dlc;
                        let nested = ex.get("machine").and_then(|m| m.get("resource_class"));
                        let class = def.get("resource_class").or_else(|| ex.get("resource_class")).or(nested);
                        s.resource_class = Some(class.map_or_else(|| "medium".into(), scalar_text));
                        s.parallelism =
                            def.get("parallelism").and_then(|p| p.str()).and_then(|p| p.parse().ok()).unwrap_or(1);
                        s.windows = is_windows(s.image.as_deref(), s.resource_class.as_deref());
                    }
                    Ok(None) => s.kind = JobKind::NoExecutor,
                    Err(_) => s.kind = JobKind::Parametrized,
                }
                if s.kind == JobKind::DockerOnly && has_srd(def) {
                    s.kind = JobKind::RemoteDocker;
                }
                s.error = Some(e.to_string());
            }
        }
        s
    }

    /// Resolves the job `name`: a workflow instance name (with its parameters and matrix values)
    /// or a job definition (with its parameters' defaults). `params` override both.
    ///
    /// # Errors
    /// An unknown job (naming the ones there are), or why this job cannot be resolved.
    pub fn job(
        &self,
        name: &str,
        params: &BTreeMap<String, String>,
        pipeline: &Pipeline,
    ) -> Result<JobSpec, CircleError> {
        let instance = self.workflow_jobs()?.into_iter().find(|w| w.name == name && w.job != name);
        let (def_name, mut args) = match &instance {
            Some(w) => (w.job.clone(), w.params.clone()),
            None => (name.to_string(), Vec::new()),
        };
        let Some((key, def)) = self.section("jobs").iter().find(|(k, _)| k.str() == Some(def_name.as_str())) else {
            let mut names = self.job_names();
            for w in self.workflow_jobs().unwrap_or_default() {
                if !names.contains(&w.name) && self.lookup("jobs", &w.job).is_some() {
                    names.push(w.name);
                }
            }
            let line = instance.as_ref().map_or(1, |w| w.line);
            return Err(self.err(line, format!("no job {def_name:?} in this file; it has: {}", names.join(", "))));
        };
        for (k, v) in params {
            args.retain(|(a, _)| a != k);
            args.push((k.clone(), Node { line: 0, value: Value::Scalar { text: v.clone(), plain: true } }));
        }
        let scope = self.scope(def, &args, Some(pipeline))?;
        let mut spec = self.resolve(name, &def_name, def, &scope)?;
        spec.line = key.line;
        Ok(spec)
    }

    /// The parameters of a job: declared defaults, then `args`, checked against the declaration.
    fn scope<'a>(
        &self,
        def: &Node,
        args: &[(String, Node)],
        pipeline: Option<&'a Pipeline>,
    ) -> Result<Scope<'a>, CircleError> {
        let mut scope = Scope { pipeline, ..Default::default() };
        for (k, v) in self.section("parameters") {
            if let (Some(name), Some(d)) = (k.str(), v.get("default")) {
                scope.pipeline_defaults.insert(name.to_string(), d.clone());
            }
        }
        scope.params = self.bind(def.get("parameters"), args, def.line, &scope)?;
        Ok(scope)
    }

    /// Binds `args` to a `parameters:` declaration: defaults first, then the values given, each
    /// substituted in `outer`.
    fn bind(
        &self,
        decl: Option<&Node>,
        args: &[(String, Node)],
        line: usize,
        outer: &Scope,
    ) -> Result<HashMap<String, Node>, CircleError> {
        let mut params = HashMap::new();
        let decl = decl.and_then(Node::map).unwrap_or_default();
        for (k, v) in decl {
            if let (Some(n), Some(d)) = (k.str(), v.get("default")) {
                params.insert(n.to_string(), d.clone());
            }
        }
        for (k, v) in args {
            let declared = decl.iter().find(|(dk, _)| dk.str() == Some(k.as_str()));
            let Some((_, d)) = declared else {
                if outer.lenient || decl.is_empty() && self.version != "2.1" {
                    continue;
                }
                return Err(self.err(v.line.max(line), format!("parameter {k:?} is not declared here")));
            };
            let value = self.subst(v, outer, 0)?;
            if let Some(allowed) = d.get("enum").and_then(Node::seq) {
                let t = scalar_text(&value);
                if !allowed.iter().any(|a| scalar_text(a) == t) && !t.contains("<<") {
                    return Err(self.err(v.line.max(line), format!("parameter {k:?}: {t:?} is not one of its enum")));
                }
            }
            params.insert(k.clone(), value);
        }
        Ok(params)
    }

    /// Substitutes `<< … >>` references in a node: a scalar that is exactly one reference takes
    /// the referenced node (a list of steps, an executor map); references inside text take its
    /// text.
    fn subst(&self, node: &Node, scope: &Scope, depth: usize) -> Result<Node, CircleError> {
        if depth > MAX_DEPTH {
            return Err(self.err(node.line, "parameters nest too deeply"));
        }
        Ok(match &node.value {
            Value::Scalar { text, plain } if text.contains("<<") => {
                let t = text.trim();
                if let Some(reference) = whole_reference(t) {
                    if let Some(v) = self.reference(reference, node.line, scope)? {
                        return Ok(Node { line: node.line, value: v.value });
                    }
                }
                let text = self.subst_text(text, node.line, scope)?;
                Node { line: node.line, value: Value::Scalar { text, plain: *plain } }
            }
            Value::Seq(items) => Node {
                line: node.line,
                value: Value::Seq(items.iter().map(|i| self.subst(i, scope, depth + 1)).collect::<Result<_, _>>()?),
            },
            Value::Map(entries) => Node {
                line: node.line,
                value: Value::Map(
                    entries.iter().map(|(k, v)| Ok((k.clone(), self.subst(v, scope, depth + 1)?))).collect::<Result<
                        _,
                        CircleError,
                    >>(
                    )?,
                ),
            },
            _ => node.clone(),
        })
    }

    /// The node a reference stands for; `None` to leave it as written.
    fn reference(&self, r: &str, line: usize, scope: &Scope) -> Result<Option<Node>, CircleError> {
        let unknown = |what: &str| {
            if scope.lenient {
                Ok(None)
            } else {
                Err(self.err(line, format!("<< {r} >>: {what}")))
            }
        };
        let scalar = |s: String| Some(Node { line, value: Value::Scalar { text: s, plain: false } });
        if let Some(p) = r.strip_prefix("parameters.") {
            return match scope.params.get(p) {
                Some(v) => Ok(Some(v.clone())),
                None => unknown("no such parameter, or it has no value (give it in the workflow or with --param)"),
            };
        }
        if let Some(p) = r.strip_prefix("matrix.") {
            return match scope.params.get(&format!("matrix.{p}")) {
                Some(v) => Ok(Some(v.clone())),
                None => unknown("no such matrix parameter"),
            };
        }
        if let Some(p) = r.strip_prefix("pipeline.parameters.") {
            if let Some(v) = scope.pipeline.and_then(|pl| pl.parameters.get(p)) {
                return Ok(scalar(v.clone()));
            }
            return match scope.pipeline_defaults.get(p) {
                Some(v) => Ok(Some(v.clone())),
                None => unknown("no such pipeline parameter, or it has no default (give it with --pipeline-param)"),
            };
        }
        let Some(pl) = scope.pipeline else { return Ok(None) };
        Ok(match r {
            "pipeline.number" => scalar(pl.number.to_string()),
            "pipeline.id" => scalar(pl.id.clone()),
            "pipeline.git.revision" => scalar(pl.revision.clone().unwrap_or_default()),
            "pipeline.git.branch" => scalar(pl.branch.clone().unwrap_or_default()),
            "pipeline.project.git_url" => scalar(pl.git_url.clone().unwrap_or_default()),
            "pipeline.trigger_source" => scalar("api".into()),
            _ => None,
        })
    }

    fn subst_text(&self, text: &str, line: usize, scope: &Scope) -> Result<String, CircleError> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("<<") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find(">>") else {
                out.push_str(&rest[start..]);
                return Ok(out);
            };
            let r = after[..end].trim();
            match self.reference(r, line, scope)? {
                Some(n) if !matches!(n.value, Value::Seq(_) | Value::Map(_)) => out.push_str(&scalar_text(&n)),
                Some(_) => {
                    return Err(self.err(line, format!("<< {r} >> is a list or map and cannot stand inside text")))
                }
                None => out.push_str(&rest[start..start + 2 + end + 2]),
            }
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// The executor of a job as a map with `machine`/`docker`/`macos` (and the executor's
    /// `resource_class`, `environment`, …), or `None` when it has none.
    fn job_executor_node(&self, def: &Node, scope: &Scope) -> Result<Option<Node>, CircleError> {
        for k in ["machine", "docker", "macos"] {
            if def.get(k).is_some() {
                return Ok(Some(self.subst(def, scope, 0)?));
            }
        }
        let Some(e) = def.get("executor") else { return Ok(None) };
        let e = self.subst(e, scope, 0)?;
        let (name, args): (String, Vec<(String, Node)>) = match &e.value {
            Value::Scalar { text, .. } => (text.clone(), Vec::new()),
            Value::Map(m) => {
                let name = e.get("name").and_then(Node::str).unwrap_or_default().to_string();
                let args = m.iter().filter(|(k, _)| k.str() != Some("name")).map(|(k, v)| (scalar_text(k), v.clone()));
                (name, args.collect())
            }
            _ => return Err(self.err(e.line, format!("executor is a name or a map, not {}", e.kind()))),
        };
        if name.contains("<<") {
            return Err(self.err(e.line, format!("executor {name} depends on a parameter with no value")));
        }
        if let Some((orb, exec)) = name.split_once('/') {
            return self.orb_executor(orb, exec, &args, e.line).map(Some);
        }
        let Some(ex) = self.lookup("executors", &name) else {
            return Err(self.err(e.line, format!("executor {name:?} is not defined under `executors:`")));
        };
        for (k, _) in ex.map().unwrap_or_default() {
            let key = k.str().unwrap_or_default();
            if !EXECUTOR_KEYS.contains(&key) {
                return Err(self.err(k.line, format!("executor {name}: unknown key {key:?}")));
            }
        }
        let inner = Scope { params: self.bind(ex.get("parameters"), &args, e.line, scope)?, ..scope.clone() };
        Ok(Some(self.subst(ex, &inner, 0)?))
    }

    /// The Windows orb's executors map to the built-in Windows image; any other orb executor
    /// is refused, since orbs are not fetched here.
    fn orb_executor(&self, orb: &str, exec: &str, args: &[(String, Node)], line: usize) -> Result<Node, CircleError> {
        let Some(reference) = self.orbs.get(orb) else {
            return Err(self.err(line, format!("executor {orb}/{exec}: no orb {orb:?} under `orbs:`")));
        };
        let windows_orb =
            reference.starts_with("circleci/windows@") || reference.starts_with("circleci/windows-tools@");
        let known =
            ["default", "preview-default", "server-2019", "server-2022", "server-2019-cuda", "server-2022-cuda"];
        if !windows_orb || !known.contains(&exec) {
            return Err(self.err(
                line,
                format!("executor {orb}/{exec} comes from the orb {reference}, and orbs cannot be fetched here"),
            ));
        }
        let size =
            args.iter().find(|(k, _)| k == "size").map(|(_, v)| scalar_text(v)).unwrap_or_else(|| "medium".into());
        let class =
            if exec.ends_with("-cuda") { format!("windows.gpu.nvidia.{size}") } else { format!("windows.{size}") };
        let text = format!("machine:\n  image: windows-default\nresource_class: {class}\nshell: powershell.exe\n");
        let mut n = yaml::parse(&text).map_err(|e| self.err(line, e.message))?;
        relines(&mut n, line);
        Ok(n)
    }

    fn resolve(&self, name: &str, def_name: &str, def: &Node, scope: &Scope) -> Result<JobSpec, CircleError> {
        let Some(entries) = def.map() else {
            return Err(self.err(def.line, format!("job {def_name} is a map, not {}", def.kind())));
        };
        for (k, _) in entries {
            let key = k.str().unwrap_or_default();
            if !JOB_KEYS.contains(&key) {
                return Err(self.err(
                    k.line,
                    format!("job {def_name}: unknown key {key:?} (expected one of {})", JOB_KEYS.join(", ")),
                ));
            }
        }
        let job = self.subst(&strip(def, &["steps", "parameters"]), scope, 0)?;
        let exec = self.job_executor_node(def, scope)?.ok_or_else(|| {
            self.err(def.line, format!("job {def_name} has no executor (docker, machine, macos or executor)"))
        })?;
        // The job's own keys win over its executor's.
        let pick = |k: &str| job.get(k).or_else(|| exec.get(k)).cloned();
        let (executor, nested_class, nested_shell) = self.executor(&exec)?;
        let resource_class =
            pick("resource_class").map(|n| scalar_text(&n)).or(nested_class).unwrap_or_else(|| "medium".into());
        let parallelism = match job.get("parallelism") {
            None => 1,
            Some(p) => match scalar_text(p).parse::<u32>() {
                Ok(n) if (1..=500).contains(&n) => n,
                _ if scope.lenient => 1,
                _ => {
                    return Err(
                        self.err(p.line, format!("parallelism {:?} is not a number from 1 to 500", scalar_text(p)))
                    )
                }
            },
        };
        let mut environment = env(exec.get("environment"), &self.file)?;
        for (k, v) in env(job.get("environment"), &self.file)? {
            environment.retain(|(e, _)| *e != k);
            environment.push((k, v));
        }
        let working_directory =
            pick("working_directory").map(|n| scalar_text(&n)).unwrap_or_else(|| "~/project".into());
        let shell = pick("shell").map(|n| scalar_text(&n)).or(nested_shell);
        let mut steps = Vec::new();
        let raw = def.get("steps").ok_or_else(|| self.err(def.line, format!("job {def_name} has no steps")))?;
        let raw = self.subst(raw, scope, 0)?;
        self.steps(&raw, scope, &mut steps, 0)?;
        let image = match &executor {
            Executor::Machine { image, .. } | Executor::Docker { image } => Some(image.as_str()),
            Executor::Macos { .. } => None,
        };
        let windows = matches!(executor, Executor::Machine { .. }) && is_windows(image, Some(&resource_class));
        Ok(JobSpec {
            name: name.to_string(),
            definition: def_name.to_string(),
            executor,
            resource_class,
            parallelism,
            environment,
            working_directory,
            shell,
            steps,
            windows,
            line: def.line,
        })
    }

    /// The executor, and a resource class and shell written inside `machine:` (as CircleCI's
    /// Windows documentation once showed).
    fn executor(&self, exec: &Node) -> Result<(Executor, Option<String>, Option<String>), CircleError> {
        if let Some(m) = exec.get("machine") {
            return Ok(match &m.value {
                Value::Scalar { .. } if m.bool() == Some(true) => {
                    (Executor::Machine { image: "default".into(), docker_layer_caching: false }, None, None)
                }
                Value::Map(entries) => {
                    for (k, _) in entries {
                        let key = k.str().unwrap_or_default();
                        if !["image", "docker_layer_caching", "resource_class", "shell"].contains(&key) {
                            return Err(self.err(
                                k.line,
                                format!(
                                    "machine: unknown key {key:?} (expected image, docker_layer_caching, resource_class, shell)"
                                ),
                            ));
                        }
                    }
                    let image = m.get("image").map_or_else(|| "default".into(), scalar_text);
                    let dlc = m.get("docker_layer_caching").is_some_and(truthy);
                    let machine = Executor::Machine { image, docker_layer_caching: dlc };
                    (machine, m.get("resource_class").map(scalar_text), m.get("shell").map(scalar_text))
                }
                _ => return Err(self.err(m.line, "machine is `true` or a map with image")),
            });
        }
        if let Some(d) = exec.get("docker") {
            let first =
                d.seq().and_then(|s| s.first()).ok_or_else(|| self.err(d.line, "docker is a list of images"))?;
            let image = first
                .get("image")
                .map(scalar_text)
                .ok_or_else(|| self.err(first.line, "docker image without `image:`"))?;
            return Ok((Executor::Docker { image }, None, None));
        }
        if let Some(m) = exec.get("macos") {
            return Ok((Executor::Macos { xcode: m.get("xcode").map(scalar_text).unwrap_or_default() }, None, None));
        }
        Err(self.err(exec.line, "no docker, machine or macos executor"))
    }

    fn steps(&self, raw: &Node, scope: &Scope, out: &mut Vec<Step>, depth: usize) -> Result<(), CircleError> {
        if depth > MAX_DEPTH {
            return Err(self.err(raw.line, "commands nest too deeply (a command that calls itself?)"));
        }
        let items = match &raw.value {
            Value::Seq(items) => items.as_slice(),
            Value::Null => &[],
            _ => return Err(self.err(raw.line, format!("steps is a list, not {}", raw.kind()))),
        };
        for item in items {
            let (name, body, line) = match &item.value {
                Value::Scalar { text, .. } => (text.as_str(), None, item.line),
                Value::Map(m) if m.len() == 1 => (m[0].0.str().unwrap_or_default(), Some(&m[0].1), m[0].0.line),
                Value::Map(m) => {
                    let keys: Vec<String> = m.iter().map(|(k, _)| scalar_text(k)).collect();
                    return Err(
                        self.err(item.line, format!("a step has one key, not {}: {}", keys.len(), keys.join(", ")))
                    );
                }
                _ => return Err(self.err(item.line, "a step is a name or a map")),
            };
            match name {
                "checkout" => out.push(Step::Checkout { path: body.and_then(|b| b.get("path")).map(scalar_text) }),
                "run" | "deploy" => out.push(Step::Run(self.run_step(body, line)?)),
                "setup_remote_docker" => {
                    let b = body.filter(|b| !b.is_null());
                    for (k, _) in b.and_then(Node::map).unwrap_or_default() {
                        let key = k.str().unwrap_or_default();
                        if !SRD_KEYS.contains(&key) {
                            return Err(self.err(
                                k.line,
                                format!(
                                    "setup_remote_docker: unknown key {key:?} (expected version, docker_layer_caching)"
                                ),
                            ));
                        }
                    }
                    out.push(Step::SetupRemoteDocker {
                        version: b.and_then(|b| b.get("version")).map(scalar_text),
                        docker_layer_caching: b.and_then(|b| b.get("docker_layer_caching")).is_some_and(truthy),
                    });
                }
                "steps" => self.steps(body.unwrap_or(item), scope, out, depth + 1)?,
                "when" | "unless" => {
                    let b = body.ok_or_else(|| self.err(line, format!("{name} needs condition and steps")))?;
                    let cond = b.get("condition").ok_or_else(|| self.err(line, format!("{name} needs a condition")))?;
                    let holds = self.condition(cond)?;
                    if holds == (name == "when") {
                        let s = b.get("steps").ok_or_else(|| self.err(line, format!("{name} needs steps")))?;
                        self.steps(s, scope, out, depth + 1)?;
                    }
                }
                n if UNSUPPORTED.contains(&n) => out.push(Step::Unsupported { name: n.to_string(), line }),
                n if n.contains('/') => {
                    let orb = n.split('/').next().unwrap_or_default();
                    let reference = self.orbs.get(orb).cloned().unwrap_or_else(|| "(not declared under orbs:)".into());
                    return Err(self.err(
                        line,
                        format!("step {n} comes from the orb {orb} ({reference}), and orbs cannot be fetched here"),
                    ));
                }
                n => {
                    let Some(cmd) = self.lookup("commands", n) else {
                        return Err(self.err(line, format!("unknown step or command {n:?}")));
                    };
                    let args: Vec<(String, Node)> = body
                        .and_then(Node::map)
                        .unwrap_or_default()
                        .iter()
                        .map(|(k, v)| (scalar_text(k), v.clone()))
                        .collect();
                    let inner =
                        Scope { params: self.bind(cmd.get("parameters"), &args, line, scope)?, ..scope.clone() };
                    let body =
                        cmd.get("steps").ok_or_else(|| self.err(cmd.line, format!("command {n} has no steps")))?;
                    let body = self.subst(body, &inner, 0)?;
                    self.steps(&body, &inner, out, depth + 1)?;
                }
            }
        }
        Ok(())
    }

    fn run_step(&self, body: Option<&Node>, line: usize) -> Result<RunStep, CircleError> {
        let body = body.ok_or_else(|| self.err(line, "run needs a command"))?;
        let mut step = RunStep {
            name: String::new(),
            command: String::new(),
            environment: Vec::new(),
            working_directory: None,
            background: false,
            no_output_timeout: None,
            when: When::OnSuccess,
            shell: None,
        };
        match &body.value {
            Value::Scalar { text, .. } => step.command = text.clone(),
            Value::Map(entries) => {
                for (k, v) in entries {
                    let key = k.str().unwrap_or_default();
                    match key {
                        "command" => step.command = scalar_text(v),
                        "name" => step.name = scalar_text(v),
                        "environment" => step.environment = env(Some(v), &self.file)?,
                        "working_directory" => step.working_directory = Some(scalar_text(v)),
                        "background" => step.background = truthy(v),
                        "shell" => step.shell = Some(scalar_text(v)),
                        "no_output_timeout" => {
                            step.no_output_timeout = Some(parse_timeout(&scalar_text(v)).ok_or_else(|| {
                                self.err(
                                    v.line,
                                    format!(
                                        "no_output_timeout {:?}: use a duration such as 10m, 30s or 1h",
                                        scalar_text(v)
                                    ),
                                )
                            })?)
                        }
                        "when" => {
                            step.when = match scalar_text(v).as_str() {
                                "on_success" => When::OnSuccess,
                                "on_fail" => When::OnFail,
                                "always" => When::Always,
                                other => {
                                    return Err(
                                        self.err(v.line, format!("when {other:?}: use on_success, on_fail or always"))
                                    )
                                }
                            }
                        }
                        _ => {
                            return Err(self.err(
                                k.line,
                                format!("run: unknown key {key:?} (expected one of {})", RUN_KEYS.join(", ")),
                            ))
                        }
                    }
                }
            }
            _ => return Err(self.err(body.line, "run is a command or a map")),
        }
        if step.command.trim().is_empty() {
            return Err(self.err(body.line, "run has no command"));
        }
        if step.name.is_empty() {
            step.name = step.command.lines().next().unwrap_or_default().chars().take(80).collect();
        }
        Ok(step)
    }

    /// A `when`/`unless` condition: a value (empty, `false` and `0` are false) or `and`, `or`,
    /// `not`, `equal`.
    fn condition(&self, c: &Node) -> Result<bool, CircleError> {
        if let Some(m) = c.map() {
            let Some((k, v)) = m.first() else { return Ok(false) };
            let list = || v.seq().map(<[Node]>::to_vec).unwrap_or_default();
            return Ok(match k.str().unwrap_or_default() {
                "and" => {
                    list().iter().map(|n| self.condition(n)).collect::<Result<Vec<_>, _>>()?.into_iter().all(|b| b)
                }
                "or" => list().iter().map(|n| self.condition(n)).collect::<Result<Vec<_>, _>>()?.into_iter().any(|b| b),
                "not" => !self.condition(v)?,
                "equal" => {
                    let l = list();
                    l.windows(2).all(|w| scalar_text(&w[0]) == scalar_text(&w[1]))
                }
                other => {
                    return Err(self.err(k.line, format!("condition {other:?}: use and, or, not, equal or a value")))
                }
            });
        }
        Ok(truthy(c))
    }
}

fn strip(def: &Node, keys: &[&str]) -> Node {
    match &def.value {
        Value::Map(m) => Node {
            line: def.line,
            value: Value::Map(
                m.iter().filter(|(k, _)| !keys.contains(&k.str().unwrap_or_default())).cloned().collect(),
            ),
        },
        _ => def.clone(),
    }
}

fn relines(n: &mut Node, line: usize) {
    n.line = line;
    match &mut n.value {
        Value::Seq(items) => items.iter_mut().for_each(|i| relines(i, line)),
        Value::Map(m) => m.iter_mut().for_each(|(k, v)| {
            relines(k, line);
            relines(v, line);
        }),
        _ => {}
    }
}

fn whole_reference(t: &str) -> Option<&str> {
    let inner = t.strip_prefix("<<")?.strip_suffix(">>")?;
    (!inner.contains("<<") && !inner.contains(">>")).then(|| inner.trim())
}

/// A scalar's text (`""` for null; lists and maps as their YAML kind).
pub fn scalar_text(n: &Node) -> String {
    match &n.value {
        Value::Scalar { text, .. } => text.clone(),
        Value::Null => String::new(),
        Value::Seq(_) => "[list]".into(),
        Value::Map(_) => "{map}".into(),
    }
}

fn truthy(n: &Node) -> bool {
    match n.bool() {
        Some(b) => b,
        None => !matches!(scalar_text(n).trim(), "" | "false" | "0"),
    }
}

fn has_srd(def: &Node) -> bool {
    fn walk(n: &Node) -> bool {
        match &n.value {
            Value::Scalar { text, .. } => text == "setup_remote_docker",
            Value::Seq(items) => items.iter().any(walk),
            Value::Map(m) => m.iter().any(|(k, v)| k.str() == Some("setup_remote_docker") || walk(v)),
            Value::Null => false,
        }
    }
    def.get("steps").is_some_and(walk)
}

fn classify_executor(ex: &Node) -> (JobKind, Option<String>, bool) {
    if let Some(m) = ex.get("machine") {
        let image = if m.bool() == Some(true) { Some("default".into()) } else { m.get("image").map(scalar_text) };
        let dlc = m.get("docker_layer_caching").is_some_and(truthy);
        return (JobKind::Machine, image, dlc);
    }
    if let Some(d) = ex.get("docker") {
        let image = d.seq().and_then(|s| s.first()).and_then(|f| f.get("image")).map(scalar_text);
        return (JobKind::DockerOnly, image, false);
    }
    if let Some(m) = ex.get("macos") {
        return (JobKind::Macos, m.get("xcode").map(|x| format!("xcode:{}", scalar_text(x))), false);
    }
    (JobKind::NoExecutor, None, false)
}

/// Whether an image or a resource class says Windows.
pub fn is_windows(image: Option<&str>, resource_class: Option<&str>) -> bool {
    image.is_some_and(|i| i.starts_with("windows")) || resource_class.is_some_and(|c| c.starts_with("windows."))
}

/// `environment:` as a map or as a list of `KEY: value` maps or `KEY=value` strings.
fn env(n: Option<&Node>, file: &str) -> Result<Vec<(String, String)>, CircleError> {
    let Some(n) = n else { return Ok(Vec::new()) };
    let bad = |line: usize, m: String| CircleError { file: file.to_string(), line, message: m };
    let mut out = Vec::new();
    match &n.value {
        Value::Null => {}
        Value::Map(m) => out.extend(m.iter().map(|(k, v)| (scalar_text(k), scalar_text(v)))),
        Value::Seq(items) => {
            for i in items {
                match &i.value {
                    Value::Map(m) => out.extend(m.iter().map(|(k, v)| (scalar_text(k), scalar_text(v)))),
                    Value::Scalar { text, .. } => match text.split_once('=') {
                        Some((k, v)) => out.push((k.to_string(), v.to_string())),
                        None => return Err(bad(i.line, format!("environment entry {text:?} is not KEY=value"))),
                    },
                    _ => return Err(bad(i.line, "environment entries are maps or KEY=value".into())),
                }
            }
        }
        Value::Scalar { .. } => return Err(bad(n.line, "environment is a map of names to values".into())),
    }
    for (k, _) in &out {
        let ok = !k.is_empty()
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !k.starts_with(|c: char| c.is_ascii_digit());
        if !ok {
            return Err(bad(n.line, format!("environment variable name {k:?} is not valid")));
        }
    }
    Ok(out)
}

/// CircleCI durations: `10m`, `1h`, `30s`, `1h30m`, or a bare number of seconds... and minutes
/// like `20m`.
pub fn parse_timeout(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Some(Duration::from_secs(n));
    }
    humantime_serde::re::humantime::parse_duration(s).ok().filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
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
        assert!(matches!(&j.steps[3], Step::Unsupported { name, .. } if name == "save_cache"));
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
}
