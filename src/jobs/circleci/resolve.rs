//! Resolving a job: parameters, executors, commands, steps and conditions.

use super::*;

impl ConfigFile {
    /// Binds `args` to a `parameters:` declaration: defaults first, then the values given, each
    /// substituted in `outer`.
    pub(super) fn bind(
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
                self.charge(weight(d, MAX_WORK), d.line)?;
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
    pub(super) fn subst(&self, node: &Node, scope: &Scope, depth: usize) -> Result<Node, CircleError> {
        if depth > MAX_DEPTH {
            return Err(self.err(node.line, "parameters nest too deeply"));
        }
        self.charge(cost(node), node.line)?;
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
    pub(super) fn reference(&self, r: &str, line: usize, scope: &Scope) -> Result<Option<Node>, CircleError> {
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
                Some(v) => {
                    self.charge(weight(v, MAX_WORK), line)?;
                    Ok(Some(v.clone()))
                }
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
            "pipeline.git.tag" => scalar(pl.tag.clone().unwrap_or_default()),
            "pipeline.project.git_url" => scalar(pl.git_url.clone().unwrap_or_default()),
            "pipeline.trigger_source" => scalar("api".into()),
            _ => None,
        })
    }

    pub(super) fn subst_text(&self, text: &str, line: usize, scope: &Scope) -> Result<String, CircleError> {
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
    pub(super) fn job_executor_node(&self, def: &Node, scope: &Scope) -> Result<Option<Node>, CircleError> {
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
    pub(super) fn orb_executor(
        &self,
        orb: &str,
        exec: &str,
        args: &[(String, Node)],
        line: usize,
    ) -> Result<Node, CircleError> {
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

    pub(super) fn resolve(
        &self,
        name: &str,
        def_name: &str,
        def: &Node,
        scope: &Scope,
    ) -> Result<JobSpec, CircleError> {
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
            contexts: Vec::new(),
        })
    }

    /// The executor, and a resource class and shell written inside `machine:` (as CircleCI's
    /// Windows documentation once showed).
    pub(super) fn executor(&self, exec: &Node) -> Result<(Executor, Option<String>, Option<String>), CircleError> {
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

    pub(super) fn steps(
        &self,
        raw: &Node,
        scope: &Scope,
        out: &mut Vec<Step>,
        depth: usize,
    ) -> Result<(), CircleError> {
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
                "add_ssh_keys" => {
                    let mut fingerprints = Vec::new();
                    if let Some(b) = body.filter(|b| !b.is_null()) {
                        let m =
                            b.map().ok_or_else(|| self.err(line, "add_ssh_keys takes a map (fingerprints, name)"))?;
                        for (k, v) in m {
                            match k.str().unwrap_or_default() {
                                "name" => {}
                                "fingerprints" => match v.seq() {
                                    Some(items) => fingerprints.extend(items.iter().map(scalar_text)),
                                    None => fingerprints.push(scalar_text(v)),
                                },
                                key => {
                                    return Err(self.err(
                                        k.line,
                                        format!("add_ssh_keys: unknown key {key:?} (expected fingerprints, name)"),
                                    ))
                                }
                            }
                        }
                    }
                    out.push(Step::AddSshKeys { fingerprints });
                }
                n if storage_steps::NAMES.contains(&n) => out.push(self.storage_step(n, body, line)?),
                n if n.contains('/') => {
                    let orb = n.split('/').next().unwrap_or_default();
                    let reference = self.orbs.get(orb).cloned().unwrap_or_else(|| "(not declared under orbs:)".into());
                    return Err(self.err(
                        line,
                        format!("step {n} comes from the orb {orb} ({reference}), and orbs cannot be fetched here"),
                    ));
                }
                n => {
                    self.charge(1, line)?;
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

    pub(super) fn run_step(&self, body: Option<&Node>, line: usize) -> Result<RunStep, CircleError> {
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
    /// `not`, `equal`, `matches`.
    pub(super) fn condition(&self, c: &Node) -> Result<bool, CircleError> {
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
                "matches" => {
                    let (Some(pattern), Some(value)) = (v.get("pattern"), v.get("value")) else {
                        return Err(self.err(k.line, "matches: needs `pattern` and `value`"));
                    };
                    let p = scalar_text(pattern);
                    if p.len() > 1_000 {
                        return Err(self.err(pattern.line, "matches: the pattern is longer than 1000 characters"));
                    }
                    let p = p.strip_prefix('/').and_then(|t| t.strip_suffix('/')).unwrap_or(&p).to_string();
                    regex_lite::Regex::new(&format!("^(?:{p})$"))
                        .map_err(|e| self.err(pattern.line, format!("matches: pattern {p}: {e}")))?
                        .is_match(&scalar_text(value))
                }
                other => {
                    return Err(
                        self.err(k.line, format!("condition {other:?}: use and, or, not, equal, matches or a value"))
                    )
                }
            });
        }
        Ok(truthy(c))
    }
}

/// What copying one node costs against [`MAX_WORK`]: one, and one per 64 bytes of its text.
pub(super) fn cost(n: &Node) -> usize {
    1 + n.str().map_or(0, |t| t.len() / 64)
}

/// What copying `n` costs, counted up to `cap`.
pub(super) fn weight(n: &Node, cap: usize) -> usize {
    fn walk(n: &Node, left: &mut usize) {
        if *left == 0 {
            return;
        }
        *left = left.saturating_sub(cost(n));
        match &n.value {
            Value::Seq(items) => items.iter().for_each(|i| walk(i, left)),
            Value::Map(entries) => entries.iter().for_each(|(k, v)| {
                walk(k, left);
                walk(v, left);
            }),
            _ => {}
        }
    }
    let mut left = cap;
    walk(n, &mut left);
    cap - left
}

pub(super) fn strip(def: &Node, keys: &[&str]) -> Node {
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

pub(super) fn relines(n: &mut Node, line: usize) {
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

pub(super) fn whole_reference(t: &str) -> Option<&str> {
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

pub(super) fn truthy(n: &Node) -> bool {
    match n.bool() {
        Some(b) => b,
        None => !matches!(scalar_text(n).trim(), "" | "false" | "0"),
    }
}

pub(super) fn has_srd(def: &Node) -> bool {
    pub(super) fn walk(n: &Node) -> bool {
        match &n.value {
            Value::Scalar { text, .. } => text == "setup_remote_docker",
            Value::Seq(items) => items.iter().any(walk),
            Value::Map(m) => m.iter().any(|(k, v)| k.str() == Some("setup_remote_docker") || walk(v)),
            Value::Null => false,
        }
    }
    def.get("steps").is_some_and(walk)
}

pub(super) fn classify_executor(ex: &Node) -> (JobKind, Option<String>, bool) {
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
pub(super) fn env(n: Option<&Node>, file: &str) -> Result<Vec<(String, String)>, CircleError> {
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
