//! Workflows: the jobs a pipeline runs, each workflow a DAG from `requires`, with `filters` on
//! the pipeline's branch or tag, `when`/`unless` on pipeline parameters, and approval jobs.
//!
//! # Design
//! As CircleCI: a workflow with `triggers:` runs only on its schedule; a pipeline for a tag runs
//! only the jobs whose `filters.tags` let it (none by default); a job whose required job is left
//! out is left out too. Requiring a matrix job by its name (or `alias:`) requires every instance.
//! A `requires` naming a job the workflow does not run and a cycle are errors with their line
//! (nothing of a pipeline is recorded when a workflow it runs has one); a second job of one name
//! is left out, said so.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::resolve::scalar_text;
use super::{CircleError, ConfigFile, Pipeline, Scope, WorkflowJob};
use crate::yaml::{Node, Value};

/// The pipeline's git ref as `filters` see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GitFilter {
    /// The branch (a branch pipeline).
    pub branch: Option<String>,
    /// The tag (a tag pipeline).
    pub tag: Option<String>,
}

/// One job of a workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkflowNode {
    /// Its name in the workflow (matrix and `name:` applied).
    pub name: String,
    /// The job definition it runs (for an approval job, the name as written).
    pub job: String,
    /// `type: approval`: held until someone approves it.
    pub approval: bool,
    /// The names of the jobs it waits for.
    pub requires: Vec<String>,
    /// Its line.
    pub line: usize,
}

/// A workflow of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workflow {
    /// Its name.
    pub name: String,
    /// Its line.
    pub line: usize,
    /// Why it does not run for this pipeline (`when`, `unless`, `triggers`, no job left).
    pub skipped: Option<String>,
    /// Its jobs, in the file's order; every `requires` names an earlier-or-later job of this list.
    pub jobs: Vec<WorkflowNode>,
    /// Jobs filters leave out, with why.
    pub left_out: Vec<(String, String)>,
}

/// Longest `filters` pattern accepted.
const MAX_PATTERN: usize = 1_000;

impl ConfigFile {
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
                self.workflow_entry(wname, entry, &mut out)?;
            }
        }
        Ok(out)
    }

    fn workflow_entry(&self, wname: &str, entry: &Node, out: &mut Vec<WorkflowJob>) -> Result<(), CircleError> {
        let (job, args, line) = match &entry.value {
            Value::Scalar { text, .. } => (text.clone(), None, entry.line),
            // The first key names the job; a mis-indented entry carries its options as sibling
            // keys, which are ignored with it.
            Value::Map(m) => match m.first() {
                Some((k, v)) => (k.str().unwrap_or_default().to_string(), Some(v), k.line),
                None => return Ok(()),
            },
            _ => return Err(self.err(entry.line, "a workflow job is a name or a map")),
        };
        let mut params: Vec<(String, Node)> = Vec::new();
        let mut name_tpl: Option<Node> = None;
        let mut matrix: Option<&Node> = None;
        let mut contexts = Vec::new();
        let mut requires: Vec<&Node> = Vec::new();
        let mut approval = false;
        let mut filters = None;
        let mut alias = None;
        for (k, v) in args.and_then(|a| a.map()).unwrap_or_default() {
            match k.str().unwrap_or_default() {
                "name" => name_tpl = Some(v.clone()),
                "matrix" => {
                    matrix = Some(v);
                    alias = v.get("alias").map(scalar_text);
                }
                "context" => contexts = self.contexts(v)?,
                "requires" => match &v.value {
                    Value::Seq(items) => requires.extend(items.iter()),
                    Value::Null => {}
                    _ => requires.push(v),
                },
                "type" => approval = scalar_text(v) == "approval",
                "filters" => filters = Some(v.clone()),
                "serial-group" | "pre-steps" | "post-steps" | "override-with" => {}
                p => params.push((p.to_string(), v.clone())),
            }
        }
        let combos = match matrix {
            Some(m) => self.matrix(m)?,
            None => vec![Vec::new()],
        };
        let alias = alias.or_else(|| matrix.map(|_| job.clone()));
        for combo in combos {
            let mut p = params.clone();
            p.extend(combo.iter().cloned());
            let scope = Scope {
                params: combo.iter().map(|(k, v)| (format!("matrix.{k}"), v.clone())).collect(),
                lenient: true,
                ..Default::default()
            };
            let name = match &name_tpl {
                Some(n) => self.subst_text(n.str().unwrap_or_default(), n.line, &scope)?,
                None if combo.is_empty() => job.clone(),
                // CircleCI's default instance name: the job and its matrix values.
                None => {
                    let vals: Vec<String> = combo.iter().map(|(_, v)| scalar_text(v)).collect();
                    format!("{job}-{}", vals.join("-"))
                }
            };
            let mut reqs = Vec::new();
            for r in &requires {
                let text = match &r.value {
                    Value::Scalar { text, .. } => text.clone(),
                    // `- build: success` (a status list): only success is what a plain name means.
                    Value::Map(m) if m.len() == 1 => {
                        let (k, statuses) = &m[0];
                        let list: Vec<String> = match statuses.seq() {
                            Some(s) => s.iter().map(scalar_text).collect(),
                            None => vec![scalar_text(statuses)],
                        };
                        if list != ["success"] {
                            return Err(self.err(
                                k.line,
                                format!(
                                    "requires {} with statuses [{}]: only success is supported",
                                    scalar_text(k),
                                    list.join(", ")
                                ),
                            ));
                        }
                        scalar_text(k)
                    }
                    _ => return Err(self.err(r.line, "requires: a list of job names")),
                };
                reqs.push((self.subst_text(&text, r.line, &scope)?, r.line));
            }
            out.push(WorkflowJob {
                workflow: wname.to_string(),
                name,
                job: job.clone(),
                params: p,
                line,
                contexts: contexts.clone(),
                requires: reqs,
                approval,
                filters: filters.clone(),
                alias: alias.clone(),
            });
        }
        Ok(())
    }

    /// A workflow entry's `context:`: a name or a list of names.
    pub(super) fn contexts(&self, v: &Node) -> Result<Vec<String>, CircleError> {
        let names: Vec<&Node> = match v.seq() {
            Some(items) => items.iter().collect(),
            None => vec![v],
        };
        names
            .into_iter()
            .map(|n| match n.str() {
                Some(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
                _ => Err(self.err(n.line, "context: a context name or a list of names")),
            })
            .collect()
    }

    /// The workflows a pipeline runs, as DAGs; `only` limits them to one workflow. A file with
    /// no `workflows:` runs its `build` job, as CircleCI does.
    ///
    /// # Errors
    /// An unknown workflow; a malformed `when`, `filters` or `requires`; a `requires` naming a
    /// job the workflow does not run; a cycle.
    pub fn workflows(&self, pipeline: &Pipeline, only: Option<&str>) -> Result<Vec<Workflow>, CircleError> {
        let git = GitFilter { branch: pipeline.branch.clone(), tag: pipeline.tag.clone() };
        let declared: Vec<(&str, &Node)> = self
            .section("workflows")
            .iter()
            .filter_map(|(k, v)| k.str().filter(|n| *n != "version").map(|n| (n, v)))
            .collect();
        if let Some(name) = only {
            if !declared.iter().any(|(n, _)| *n == name) {
                let names: Vec<&str> = declared.iter().map(|(n, _)| *n).collect();
                let line = self.root().get("workflows").map_or(1, |n| n.line);
                let has = if names.is_empty() { "none".to_string() } else { names.join(", ") };
                return Err(self.err(line, format!("no workflow {name:?} in this file; it has: {has}")));
            }
        }
        if declared.is_empty() {
            let Some(build) = self.section("jobs").iter().find(|(k, _)| k.str() == Some("build")) else {
                return Err(self.err(1, "no `workflows:` and no `build` job: nothing for a pipeline to run"));
            };
            let node = WorkflowNode {
                name: "build".into(),
                job: "build".into(),
                approval: false,
                requires: Vec::new(),
                line: build.0.line,
            };
            let skipped = git.tag.as_ref().map(|t| {
                format!("a tag pipeline ({t}) runs only jobs with `filters.tags`, which a file without `workflows:` has none of")
            });
            return Ok(vec![Workflow {
                name: "workflow".into(),
                line: 1,
                skipped,
                jobs: vec![node],
                left_out: Vec::new(),
            }]);
        }
        let all = self.workflow_jobs()?;
        let mut out = Vec::new();
        for (name, wf) in declared {
            if only.is_some_and(|o| o != name) {
                continue;
            }
            let entries: Vec<&WorkflowJob> = all.iter().filter(|w| w.workflow == name).collect();
            out.push(self.workflow(name, wf, &entries, pipeline, &git)?);
        }
        Ok(out)
    }

    fn workflow(
        &self,
        name: &str,
        wf: &Node,
        entries: &[&WorkflowJob],
        pipeline: &Pipeline,
        git: &GitFilter,
    ) -> Result<Workflow, CircleError> {
        let mut w =
            Workflow { name: name.to_string(), line: wf.line, skipped: None, jobs: Vec::new(), left_out: Vec::new() };
        let scope = self.scope(&Node { line: wf.line, value: Value::Null }, &[], Some(pipeline))?;
        for (key, runs_when) in [("when", true), ("unless", false)] {
            if let Some(c) = wf.get(key) {
                let c = self.subst(c, &scope, 0)?;
                if self.condition(&c)? != runs_when {
                    w.skipped = Some(format!("its `{key}:` condition (line {}) does not hold", c.line));
                }
            }
        }
        if wf.get("triggers").is_some() {
            w.skipped = Some("it runs on a schedule (`triggers:`), not for a pipeline submission".into());
        }
        // Every name, and the instances a matrix alias stands for. A second job of the same
        // name is left out, said so (its options are usually mis-indented and lost with it).
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut unique: Vec<&WorkflowJob> = Vec::with_capacity(entries.len());
        for e in entries {
            match seen.get(e.name.as_str()) {
                Some(first) => w.left_out.push((
                    e.name.clone(),
                    format!(
                        "line {}: a second job named {} (the first is at line {first}); give it a `name:`",
                        e.line, e.name
                    ),
                )),
                None => {
                    seen.insert(e.name.as_str(), e.line);
                    unique.push(e);
                }
            }
        }
        let entries = &unique[..];
        let mut by_alias: HashMap<&str, Vec<&str>> = HashMap::new();
        for e in entries {
            if let Some(a) = &e.alias {
                by_alias.entry(a.as_str()).or_default().push(e.name.as_str());
            }
        }
        let mut nodes = Vec::new();
        for e in entries {
            let mut requires: Vec<String> = Vec::new();
            for (r, line) in &e.requires {
                let targets: Vec<&str> = if seen.contains_key(r.as_str()) {
                    vec![r.as_str()]
                } else if let Some(instances) = by_alias.get(r.as_str()) {
                    instances.clone()
                } else {
                    return Err(self.err(
                        *line,
                        format!("workflow {name}: job {} requires {r}, which this workflow does not run", e.name),
                    ));
                };
                self.charge(targets.len(), *line)?;
                for t in targets {
                    if t == e.name {
                        return Err(self.err(*line, format!("workflow {name}: job {} requires itself", e.name)));
                    }
                    if !requires.iter().any(|x| x == t) {
                        requires.push(t.to_string());
                    }
                }
            }
            nodes.push(WorkflowNode {
                name: e.name.clone(),
                job: e.job.clone(),
                approval: e.approval,
                requires,
                line: e.line,
            });
        }
        if let Some(cycle) = find_cycle(&nodes) {
            let line = nodes.iter().find(|n| n.name == cycle[0]).map_or(wf.line, |n| n.line);
            return Err(self.err(line, format!("workflow {name}: its jobs require each other: {}", cycle.join(" -> "))));
        }
        // Filters, then whatever requires a job left out.
        let mut out: HashSet<String> = HashSet::new();
        for (e, n) in entries.iter().zip(&nodes) {
            if let Some(why) = self.filtered(e.filters.as_ref(), git)? {
                w.left_out.push((n.name.clone(), why));
                out.insert(n.name.clone());
            }
        }
        loop {
            let mut more = Vec::new();
            for n in &nodes {
                if out.contains(&n.name) {
                    continue;
                }
                if let Some(r) = n.requires.iter().find(|r| out.contains(*r)) {
                    more.push((n.name.clone(), format!("it requires {r}, which does not run")));
                }
            }
            if more.is_empty() {
                break;
            }
            for (n, why) in more {
                out.insert(n.clone());
                w.left_out.push((n, why));
            }
        }
        w.jobs = nodes.into_iter().filter(|n| !out.contains(&n.name)).collect();
        if w.jobs.is_empty() && w.skipped.is_none() {
            let first = w.left_out.first().map(|(j, why)| format!(" ({j}: {why})")).unwrap_or_default();
            w.skipped = Some(format!("filters leave none of its jobs{first}"));
        }
        Ok(w)
    }

    /// Why `filters` leave a job out of this pipeline, if they do.
    fn filtered(&self, filters: Option<&Node>, git: &GitFilter) -> Result<Option<String>, CircleError> {
        let part = |key: &str| filters.and_then(|f| f.get(key));
        let (kind, value, f) = match &git.tag {
            Some(tag) => {
                let Some(f) = part("tags") else {
                    return Ok(Some(format!("a tag pipeline ({tag}) runs only jobs with `filters.tags`")));
                };
                ("tag", tag.as_str(), f)
            }
            None => match part("branches") {
                Some(f) => ("branch", git.branch.as_deref().unwrap_or_default(), f),
                None => return Ok(None),
            },
        };
        if let Some(only) = f.get("only") {
            if !self.any_match(only, value)? {
                return Ok(Some(format!("{kind} {value:?} is not in its `only` filter (line {})", only.line)));
            }
        }
        if let Some(ignore) = f.get("ignore") {
            if self.any_match(ignore, value)? {
                return Ok(Some(format!("{kind} {value:?} is in its `ignore` filter (line {})", ignore.line)));
            }
        }
        Ok(None)
    }

    /// Whether `value` is one of `patterns` (a name, `/regex/` matching the whole value, or a
    /// list of them).
    fn any_match(&self, patterns: &Node, value: &str) -> Result<bool, CircleError> {
        let list: Vec<&Node> = match patterns.seq() {
            Some(items) => items.iter().collect(),
            None => vec![patterns],
        };
        for p in list {
            let text = scalar_text(p);
            if text.len() > MAX_PATTERN {
                return Err(self.err(p.line, format!("a filter pattern is longer than {MAX_PATTERN} characters")));
            }
            let matched = match text.strip_prefix('/').and_then(|t| t.strip_suffix('/')) {
                Some(re) => regex_lite::Regex::new(&format!("^(?:{re})$"))
                    .map_err(|e| self.err(p.line, format!("filter pattern {text}: {e}")))?
                    .is_match(value),
                None => text == value,
            };
            if matched {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// A cycle among `nodes`' requires, as names, if there is one.
fn find_cycle(nodes: &[WorkflowNode]) -> Option<Vec<String>> {
    let index: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect();
    // 0 unvisited, 1 on the path, 2 done; iterative so a long chain cannot overflow the stack.
    let mut mark = vec![0u8; nodes.len()];
    for start in 0..nodes.len() {
        if mark[start] != 0 {
            continue;
        }
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        mark[start] = 1;
        while let Some(&mut (at, ref mut next)) = path.last_mut() {
            let reqs = &nodes[at].requires;
            if *next < reqs.len() {
                let to = index[reqs[*next].as_str()];
                *next += 1;
                match mark[to] {
                    0 => {
                        mark[to] = 1;
                        path.push((to, 0));
                    }
                    1 => {
                        let from = path.iter().position(|(i, _)| *i == to).unwrap_or(0);
                        let mut names: Vec<String> = path[from..].iter().map(|(i, _)| nodes[*i].name.clone()).collect();
                        names.push(nodes[to].name.clone());
                        return Some(names);
                    }
                    _ => {}
                }
            } else {
                mark[at] = 2;
                path.pop();
            }
        }
    }
    None
}
