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

mod resolve;
mod storage_steps;
mod workflows;

pub use workflows::{GitFilter, Workflow, WorkflowNode};

use resolve::*;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::yaml::{self, Node, Value};

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
    /// Install the project's SSH keys (those of `fingerprints`, or all when empty).
    AddSshKeys {
        /// `SHA256:…` or MD5 `aa:bb:…` fingerprints, as written.
        fingerprints: Vec<String>,
    },
    /// `save_cache`: `paths` under the rendered `key`, unless the key is taken.
    SaveCache {
        /// The key template (`v1-{{ checksum "Cargo.lock" }}`).
        key: String,
        /// Files and directories (relative to the working directory, `~`, or absolute).
        paths: Vec<String>,
        /// When it runs.
        #[serde(default)]
        when: When,
        /// Its line.
        line: usize,
    },
    /// `restore_cache`: the first of `keys` that matches exactly or as a prefix.
    RestoreCache {
        /// When it runs.
        #[serde(default)]
        when: When,
        /// Key templates, in order.
        keys: Vec<String>,
        /// Its line.
        line: usize,
    },
    /// `persist_to_workspace`: `paths` (globs) under `root` into this job's workspace layer.
    PersistToWorkspace {
        /// When it runs.
        #[serde(default)]
        when: When,
        /// The directory `paths` are relative to.
        root: String,
        /// Paths or globs.
        paths: Vec<String>,
        /// Its line.
        line: usize,
    },
    /// `attach_workspace`: the layers of the jobs this one requires, at `at`.
    AttachWorkspace {
        /// When it runs.
        #[serde(default)]
        when: When,
        /// Where.
        at: String,
        /// Its line.
        line: usize,
    },
    /// `store_artifacts`: a file or directory kept with the job.
    StoreArtifacts {
        /// When it runs.
        #[serde(default)]
        when: When,
        /// What.
        path: String,
        /// Its name among the artifacts (default: the path).
        destination: Option<String>,
        /// Its line.
        line: usize,
    },
    /// `store_test_results`: JUnit XML files (a file or a directory of them).
    StoreTestResults {
        /// When it runs.
        #[serde(default)]
        when: When,
        /// Where.
        path: String,
        /// Its line.
        line: usize,
    },
    /// A step of an older record this service no longer produces: reported and skipped.
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
    /// The contexts its workflow entry names (`context:`).
    #[serde(default)]
    pub contexts: Vec<String>,
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
    /// The contexts it names.
    pub contexts: Vec<String>,
    /// The jobs it requires, as written (matrix values substituted).
    pub requires: Vec<(String, usize)>,
    /// `type: approval`.
    pub approval: bool,
    /// Its `filters:`.
    pub filters: Option<Node>,
    /// The name that stands for every instance of a matrix (`alias:`, else the job's name).
    pub alias: Option<String>,
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
    /// `pipeline.git.tag`.
    pub tag: Option<String>,
    /// `pipeline.project.git_url`.
    pub git_url: Option<String>,
    /// Pipeline parameter values given at submission (override the defaults).
    pub parameters: BTreeMap<String, String>,
    /// The workflow the job runs in, when one is named: its entry gives the job's instance
    /// parameters and contexts.
    pub workflow: Option<String>,
}

/// A parsed config file.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    file: String,
    root: Node,
    version: String,
    orbs: HashMap<String, String>,
    /// Expansion work spent resolving jobs so far (see [`MAX_WORK`]).
    work: std::cell::Cell<usize>,
    /// Where the work first passed [`MAX_WORK`].
    exhausted: std::cell::Cell<Option<usize>>,
    /// Position of each name in `jobs`, `commands` and `executors` (the first of duplicates), so
    /// a file of many names resolves in linear time.
    index: HashMap<&'static str, HashMap<String, usize>>,
}

/// Expansion work one config may take while its jobs are resolved: a unit per command called,
/// node substituted or copied from a parameter (and per 64 bytes of its text), matrix instance.
/// A config that nests commands or parameters ten deep, ten wide, would otherwise expand to
/// billions of steps; the largest of the shared real configs takes about 1,100 for all its jobs.
pub const MAX_WORK: usize = 500_000;

/// Jobs one `matrix:` may expand to.
pub const MAX_MATRIX: usize = 1_000;

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
const MAX_DEPTH: usize = 32;

/// Parameters in scope while a node is substituted.
#[derive(Clone, Default)]
pub(super) struct Scope<'a> {
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
        let mut cfg = Self {
            file: file.to_string(),
            root,
            version,
            orbs,
            work: std::cell::Cell::new(0),
            exhausted: std::cell::Cell::new(None),
            index: HashMap::new(),
        };
        for section in ["jobs", "commands", "executors"] {
            let mut names = HashMap::new();
            for (i, (k, _)) in cfg.section(section).iter().enumerate() {
                if let Some(name) = k.str() {
                    names.entry(name.to_string()).or_insert(i);
                }
            }
            cfg.index.insert(section, names);
        }
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

    /// The document tree.
    pub fn root(&self) -> &Node {
        &self.root
    }

    /// The file as given.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// `2`, `2.0` or `2.1`.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub(super) fn err(&self, line: usize, message: impl Into<String>) -> CircleError {
        CircleError { file: self.file.clone(), line, message: message.into() }
    }

    /// Counts `n` units of expansion work done at `line` against [`MAX_WORK`].
    pub(super) fn charge(&self, n: usize, line: usize) -> Result<(), CircleError> {
        let spent = self.work.get().saturating_add(n);
        self.work.set(spent);
        if spent <= MAX_WORK {
            return Ok(());
        }
        let first = *self.exhausted.get().get_or_insert(line);
        self.exhausted.set(Some(first));
        Err(self.work_error(first))
    }

    fn work_error(&self, line: usize) -> CircleError {
        self.err(
            line,
            format!(
                "resolving the jobs of this file expands past {MAX_WORK} nodes (commands called, parameters \
                 substituted, matrix instances), its limit"
            ),
        )
    }

    /// The error of a file whose resolution passed [`MAX_WORK`], once any job has passed it.
    pub fn exhausted(&self) -> Option<CircleError> {
        self.exhausted.get().map(|line| self.work_error(line))
    }

    /// Expansion work spent so far.
    pub fn work(&self) -> usize {
        self.work.get()
    }

    pub(super) fn section(&self, name: &str) -> &[(Node, Node)] {
        self.root.get(name).and_then(Node::map).unwrap_or_default()
    }

    pub(super) fn lookup<'n>(&'n self, section: &str, name: &str) -> Option<&'n Node> {
        self.entry(section, name).map(|(_, v)| v)
    }

    fn entry<'n>(&'n self, section: &str, name: &str) -> Option<&'n (Node, Node)> {
        match self.index.get(section) {
            Some(names) => self.section(section).get(*names.get(name)?),
            None => self.section(section).iter().find(|(k, _)| k.str() == Some(name)),
        }
    }

    /// The names of the jobs the file defines, in order.
    pub fn job_names(&self) -> Vec<String> {
        self.section("jobs").iter().filter_map(|(k, _)| k.str().map(str::to_string)).collect()
    }

    pub(super) fn matrix(&self, m: &Node) -> Result<Vec<Vec<(String, Node)>>, CircleError> {
        let params =
            m.get("parameters").and_then(Node::map).ok_or_else(|| self.err(m.line, "matrix needs parameters"))?;
        let mut combos: Vec<Vec<(String, Node)>> = vec![Vec::new()];
        for (k, v) in params {
            let name = k.str().unwrap_or_default().to_string();
            let values = v.seq().ok_or_else(|| self.err(v.line, format!("matrix parameter {name} is a list")))?;
            let count = combos.len().saturating_mul(values.len());
            if count > MAX_MATRIX {
                return Err(
                    self.err(m.line, format!("this matrix expands to {count} or more jobs; the limit is {MAX_MATRIX}"))
                );
            }
            self.charge(count, v.line)?;
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

    pub(super) fn summary(&self, name: &str, line: usize, def: &Node) -> JobSummary {
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
        let mut entries = self.workflow_jobs()?;
        if let Some(wf) = &pipeline.workflow {
            if !self.section("workflows").iter().any(|(k, _)| k.str() == Some(wf.as_str())) {
                let line = self.root.get("workflows").map_or(1, |n| n.line);
                return Err(self.err(line, format!("no workflow {wf:?} in this file")));
            }
            entries.retain(|w| w.workflow == *wf);
            if !entries.iter().any(|w| w.name == name) {
                return Err(self.err(1, format!("workflow {wf} does not run a job named {name:?}")));
            }
        }
        entries.retain(|w| w.name == name);
        let contexts = match entries.split_first() {
            None => Vec::new(),
            Some((first, rest)) => {
                if let Some(other) = rest.iter().find(|w| w.contexts != first.contexts) {
                    return Err(self.err(
                        other.line,
                        format!(
                            "job {name} runs with contexts [{}] in workflow {} (line {}) and [{}] in workflow {}: name \
                             the workflow to run it in",
                            first.contexts.join(", "),
                            first.workflow,
                            first.line,
                            other.contexts.join(", "),
                            other.workflow
                        ),
                    ));
                }
                first.contexts.clone()
            }
        };
        // A renamed instance, or the job's own entry with the parameters the workflow gives it.
        let instance = entries.into_iter().find(|w| w.job != name || !w.params.is_empty());
        let (def_name, mut args) = match &instance {
            Some(w) => (w.job.clone(), w.params.clone()),
            None => (name.to_string(), Vec::new()),
        };
        let Some((key, def)) = self.entry("jobs", &def_name) else {
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
        spec.contexts = contexts;
        Ok(spec)
    }

    /// The parameters of a job: declared defaults, then `args`, checked against the declaration.
    pub(super) fn scope<'a>(
        &self,
        def: &Node,
        args: &[(String, Node)],
        pipeline: Option<&'a Pipeline>,
    ) -> Result<Scope<'a>, CircleError> {
        let mut scope = Scope { pipeline, ..Default::default() };
        for (k, v) in self.section("parameters") {
            self.charge(1, k.line)?;
            if let (Some(name), Some(d)) = (k.str(), v.get("default")) {
                scope.pipeline_defaults.insert(name.to_string(), d.clone());
            }
        }
        scope.params = self.bind(def.get("parameters"), args, def.line, &scope)?;
        Ok(scope)
    }
}

#[cfg(test)]
mod tests;
