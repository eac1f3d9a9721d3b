//! The steps that move files between a job's VM and the object store, over the job's SSH
//! session as tar streams: caches, workspaces, artifacts, test results.
//!
//! # Design
//! What a step stores is bounded twice: per object (`storage.max_object_bytes`) and per task
//! (`storage.max_job_bytes`); a stream that grows past either is stopped and the step fails
//! naming the bound. The object is written before its row, so a crash in between leaves an
//! object the collector removes, never a row without its object. A missing cache, an empty
//! workspace and a malformed JUnit file are said in the output and fail nothing, as CircleCI
//! does; a workspace path that matches nothing and an oversized object fail the step.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use vmfleet_provisioner::ssh::{ExecEnd, Session, Stream};

use super::circleci::Step;
use super::runner::{Run, StepResult};
use super::script::{sh_dir, sh_quote, step_dir};
use super::Outcome;
use crate::objects::segment;
use crate::store::{now_ms, short_id, ArtifactRow, CacheRow, TestResultRow, WorkspaceLayerRow};

/// A short hex digest naming an object after text of any length.
fn digest(text: &str) -> String {
    use sha2::Digest as _;
    hex::encode(&sha2::Sha256::digest(text.as_bytes())[..16])
}

/// What a cache's paths under the VM user's home start with: a cache saved on one VM is
/// restored under the home of the next, wherever that is.
const HOME_MARK: &str = "__vmfleet_home__";

/// Most files one `store_artifacts` or `store_test_results` step takes.
const MAX_FILES: usize = 1_000;

/// A bash script to run on the VM: its arguments, its standard input, and how much of its
/// standard output to keep.
struct Sh<'a> {
    script: &'a str,
    args: &'a [String],
    input: Option<&'a [u8]>,
    limit: u64,
}

/// What a command printed on its standard output, kept whole.
struct Captured {
    code: i64,
    stdout: Vec<u8>,
    /// The output passed `limit` and the command was stopped.
    over: bool,
}

/// `circleci tests glob|split` for the job's steps.
const TESTS_SHIM: &str = include_str!("assets/circleci-tests.sh");

impl Run<'_> {
    /// Puts `circleci tests glob|split` on the VM's `PATH` (through the steps' `BASH_ENV`), with
    /// the timing data of this job's previous run.
    pub(super) async fn install_tools(&self, session: &Session, deadline: tokio::time::Instant) -> Result<(), Outcome> {
        let store = &self.jobs.fleet.store;
        let previous = super::db_retry(&self.job.id, "reading the previous run's test timings", || {
            store.previous_test_results(&self.job.project, &self.job.name, &self.job.id)
        })
        .await?;
        let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
        let mut timings = String::new();
        for r in &previous {
            let file = clean(r.file.as_deref().unwrap_or_default());
            timings.push_str(&format!("{file}\t{}\t{}\t{:.6}\n", clean(&r.classname), clean(&r.name), r.run_time));
        }
        for (path, body, mode) in
            [("~/.vmfleet/bin/circleci", TESTS_SHIM, "755"), ("~/.vmfleet/timings", timings.as_str(), "644")]
        {
            let cmd = super::script::linux_write_file(path, mode);
            let written = self.exec(session, 0, &cmd, Some(body.as_bytes()), None, deadline).await?;
            if !matches!(written, StepResult::Exited(0)) {
                return Err(Outcome::infra(format!("could not write {path} on the VM")));
            }
        }
        let line = "export PATH=\"$HOME/.vmfleet/bin:$PATH\"\n";
        let cmd = "set -e; mkdir -p ~/.vmfleet; cat >> ~/.vmfleet/bash_env";
        match self.exec(session, 0, cmd, Some(line.as_bytes()), None, deadline).await? {
            StepResult::Exited(0) => Ok(()),
            _ => Err(Outcome::infra("could not set up the steps' PATH on the VM")),
        }
    }

    /// Carries out one of the storage steps.
    pub(super) async fn storage_step(
        &mut self,
        session: &Session,
        idx: i64,
        step: &Step,
        env: &[(String, String)],
        deadline: tokio::time::Instant,
    ) -> Result<StepResult, Outcome> {
        if self.plan.spec.windows {
            let name = super::runner::step_label(step);
            self.out.sys(idx, &format!("{name} is not carried out on Windows VMs yet; skipped"));
            return Ok(StepResult::Skipped);
        }
        match step {
            Step::SaveCache { key, paths, .. } => self.save_cache(session, idx, key, paths, env, deadline).await,
            Step::RestoreCache { keys, .. } => self.restore_cache(session, idx, keys, env, deadline).await,
            Step::PersistToWorkspace { root, paths, .. } => self.persist(session, idx, root, paths, deadline).await,
            Step::AttachWorkspace { at, .. } => self.attach(session, idx, at, deadline).await,
            Step::StoreArtifacts { path, destination, .. } => {
                self.store_artifacts(session, idx, path, destination.as_deref(), deadline).await
            }
            Step::StoreTestResults { path, .. } => self.store_test_results(session, idx, path, deadline).await,
            _ => Ok(StepResult::Skipped),
        }
    }

    fn limits(&self) -> (u64, u64) {
        let s = &self.jobs.fleet.config.storage;
        (s.max_object_bytes, s.max_job_bytes)
    }

    /// The most the next object may be: the per-object bound or what is left of the task's.
    fn room(&self) -> u64 {
        let (object, job) = self.limits();
        object.min(job.saturating_sub(self.stored_bytes))
    }

    fn too_big(&self, idx: i64, what: &str) -> StepResult {
        let (object, job) = self.limits();
        self.out.sys(
            idx,
            &format!(
                "{what} is larger than this installation stores (storage.max_object_bytes {object}, \
                 storage.max_job_bytes {job} per task, {} used)",
                self.stored_bytes
            ),
        );
        StepResult::Exited(1)
    }

    /// Runs `script` (bash, with `args`) and keeps its standard output, up to `limit` bytes;
    /// its standard error goes to the step's output.
    async fn capture(
        &self,
        session: &Session,
        idx: i64,
        sh: Sh<'_>,
        deadline: tokio::time::Instant,
    ) -> Result<Captured, Outcome> {
        let Sh { script, args, input, limit } = sh;
        let mut cmd = format!("bash -c {} vmfleet", sh_quote(script));
        for a in args {
            cmd.push(' ');
            cmd.push_str(&sh_quote(a));
        }
        let buf = Arc::new(Mutex::new(Vec::new()));
        let over = Arc::new(Notify::new());
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut abort = self.abort.clone();
        let (over2, flag2) = (over.clone(), flag.clone());
        let stop = async move {
            tokio::select! {
                _ = abort.wait_for(Option::is_some) => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = over2.notified() => {}
            }
        };
        let (out, sink_buf) = (self.out.clone(), buf.clone());
        let end = session
            .exec_until(&cmd, input, None, stop, move |s, d| match s {
                Stream::Stdout => {
                    let mut b = sink_buf.lock().unwrap_or_else(|p| p.into_inner());
                    if (b.len() + d.len()) as u64 > limit {
                        flag2.store(true, std::sync::atomic::Ordering::SeqCst);
                        over.notify_one();
                    } else {
                        b.extend_from_slice(d);
                    }
                }
                Stream::Stderr => out.data(idx, s, d),
            })
            .await
            .map_err(|e| Outcome::infra(format!("SSH session broke: {e}")))?;
        let stdout = std::mem::take(&mut *buf.lock().unwrap_or_else(|p| p.into_inner()));
        let over = flag.load(std::sync::atomic::Ordering::SeqCst);
        let code = match end {
            ExecEnd::Exited(Some(c)) => i64::from(c),
            ExecEnd::Exited(None) => -1,
            ExecEnd::Stopped if over => -1,
            ExecEnd::Stopped | ExecEnd::Idle => match self.abort.borrow().as_ref() {
                Some(a) => return Err(Run::abort_outcome(*a)),
                None => {
                    return Err(Outcome {
                        state: "failed",
                        exit_code: None,
                        reason: Some("the job ran past the long-running task timeout".into()),
                    })
                }
            },
        };
        Ok(Captured { code, stdout, over })
    }

    /// Puts an object, counting it against the task's bound.
    async fn put(&mut self, key: &str, data: Vec<u8>) -> Result<(), Outcome> {
        let n = data.len() as u64;
        self.jobs.objects.put(key, data).await.map_err(|e| Outcome::infra(format!("storing {key}: {e}")))?;
        self.stored_bytes += n;
        Ok(())
    }

    async fn save_cache(
        &mut self,
        session: &Session,
        idx: i64,
        template: &str,
        paths: &[String],
        env: &[(String, String)],
        deadline: tokio::time::Instant,
    ) -> Result<StepResult, Outcome> {
        let key = match self.render_key(session, template, env, deadline).await? {
            Ok(k) => k,
            Err(why) => {
                self.out.sys(idx, &format!("save_cache: key {template}: {why}"));
                return Ok(StepResult::Exited(1));
            }
        };
        let store = self.jobs.fleet.store.clone();
        let project = &self.job.project;
        if store.cache_exact(project, &key).await.map_err(|e| Outcome::infra(e.to_string()))?.is_some() {
            self.out.sys(idx, &format!("cache {key} exists; caches are immutable, so it is not saved again"));
            return Ok(StepResult::Exited(0));
        }
        let script = format!(
            "set -e; mkdir -p {wd}; cd {wd}; files=(); for p in \"$@\"; do case \"$p\" in '~') p=\"$HOME\";; '~/'*) \
             p=\"$HOME/${{p#\\~/}}\";; esac; if [ -e \"$p\" ]; then d=$(cd \"$(dirname \"$p\")\" && pwd); \
             files+=(\"${{d#/}}/$(basename \"$p\")\"); else echo \"save_cache: $p does not exist; left out\" >&2; fi; \
             done; [ ${{#files[@]}} -gt 0 ] || exit 4; h=\"${{HOME#/}}\"; \
             tar -C / --transform \"s|^$h/|{HOME_MARK}/|\" -czf - -- \"${{files[@]}}\"",
            wd = sh_dir(&self.plan.spec.working_directory)
        );
        let room = self.room();
        let got =
            self.capture(session, idx, Sh { script: &script, args: paths, input: None, limit: room }, deadline).await?;
        if got.over {
            return Ok(self.too_big(idx, &format!("cache {key}")));
        }
        match got.code {
            0 => {}
            4 => {
                self.out.sys(idx, "save_cache: none of the paths exist; nothing saved");
                return Ok(StepResult::Exited(0));
            }
            c => {
                self.out.sys(idx, &format!("save_cache: archiving the paths failed (exit code {c})"));
                return Ok(StepResult::Exited(c));
            }
        }
        // Keys may be long and hold anything: the object is named by the key's hash.
        let object = format!("caches/{}/{}-{}.tar.gz", segment(project), digest(&key), short_id());
        let size = got.stdout.len() as i64;
        self.put(&object, got.stdout).await?;
        let row = CacheRow {
            project: project.clone(),
            cache_key: key.clone(),
            object_key: object.clone(),
            size,
            job_id: self.job.id.clone(),
            created_at: now_ms(),
            last_used_at: now_ms(),
        };
        if super::db_retry(&self.job.id, "recording the cache", || store.insert_cache(&row)).await? {
            self.out.sys(idx, &format!("saved cache {key} ({size} bytes)"));
        } else {
            // Another task saved the same key meanwhile: theirs stays, ours goes.
            let _ = self.jobs.objects.delete(&object).await;
            self.out.sys(idx, &format!("cache {key} was saved meanwhile by another job; keeping that one"));
        }
        Ok(StepResult::Exited(0))
    }

    async fn restore_cache(
        &mut self,
        session: &Session,
        idx: i64,
        templates: &[String],
        env: &[(String, String)],
        deadline: tokio::time::Instant,
    ) -> Result<StepResult, Outcome> {
        let store = self.jobs.fleet.store.clone();
        let project = self.job.project.clone();
        let mut tried = Vec::new();
        for t in templates {
            let key = match self.render_key(session, t, env, deadline).await? {
                Ok(k) => k,
                Err(why) => {
                    self.out.sys(idx, &format!("restore_cache: key {t}: {why}; trying the next"));
                    continue;
                }
            };
            let job = &self.job.id;
            let hit = match super::db_retry(job, "looking up the cache", || store.cache_exact(&project, &key)).await? {
                Some(c) => Some(c),
                None => super::db_retry(job, "looking up the cache", || store.cache_by_prefix(&project, &key)).await?,
            };
            let Some(cache) = hit else {
                tried.push(key);
                continue;
            };
            let Some(data) = self
                .jobs
                .objects
                .get(&cache.object_key)
                .await
                .map_err(|e| Outcome::infra(format!("reading cache {}: {e}", cache.cache_key)))?
            else {
                self.out.sys(
                    idx,
                    &format!("cache {} is recorded but its object is gone; trying the next", cache.cache_key),
                );
                tried.push(key);
                continue;
            };
            let unpack = format!("set -e; h=\"${{HOME#/}}\"; tar -C / --transform \"s|^{HOME_MARK}/|$h/|\" -xzf -");
            let got = self
                .capture(session, idx, Sh { script: &unpack, args: &[], input: Some(&data), limit: 1 << 20 }, deadline)
                .await?;
            if got.code != 0 {
                self.out
                    .sys(idx, &format!("restore_cache: unpacking {} failed (exit code {})", cache.cache_key, got.code));
                return Ok(StepResult::Exited(got.code));
            }
            let _ = store.touch_cache(&project, &cache.cache_key, now_ms()).await;
            let how = if cache.cache_key == key { "" } else { " (by prefix)" };
            self.out.sys(idx, &format!("restored cache {}{how}: {} bytes", cache.cache_key, cache.size));
            return Ok(StepResult::Exited(0));
        }
        self.out.sys(idx, &format!("no cache found for {}; continuing without one", tried.join(", ")));
        Ok(StepResult::Exited(0))
    }

    /// A cache key template rendered: `{{ checksum "file" }}`, `{{ .Branch }}`, `{{ .Revision }}`,
    /// `{{ .BuildNum }}`, `{{ .Environment.NAME }}`, `{{ epoch }}`, `{{ arch }}`.
    async fn render_key(
        &self,
        session: &Session,
        template: &str,
        env: &[(String, String)],
        deadline: tokio::time::Instant,
    ) -> Result<Result<String, String>, Outcome> {
        let mut out = String::new();
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else { return Ok(Err("an unclosed {{".into())) };
            let expr = after[..end].trim();
            let var =
                |name: &str| env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default();
            let value = match expr {
                ".Branch" => self.job.branch.clone().unwrap_or_default(),
                ".Revision" => self.job.revision.clone().unwrap_or_else(|| var("CIRCLE_SHA1")),
                ".BuildNum" => self.job.number.to_string(),
                "epoch" => (now_ms() / 1000).to_string(),
                "arch" => {
                    let got = self
                        .capture(
                            session,
                            0,
                            Sh { script: "uname -s -m", args: &[], input: None, limit: 4096 },
                            deadline,
                        )
                        .await?;
                    let text = String::from_utf8_lossy(&got.stdout).trim().to_lowercase();
                    text.replace(' ', "-").replace("x86_64", "amd64").replace("aarch64", "arm64")
                }
                e if e.starts_with(".Environment.") => var(&e[".Environment.".len()..]),
                e if e.starts_with("checksum ") => {
                    let file = e["checksum ".len()..].trim().trim_matches('"').to_string();
                    let script = format!(
                        "cd {} && f=\"$1\"; case \"$f\" in '~/'*) f=\"$HOME/${{f#\\~/}}\";; esac; sha256sum -- \"$f\"",
                        sh_dir(&self.plan.spec.working_directory)
                    );
                    let got = self
                        .capture(
                            session,
                            0,
                            Sh { script: &script, args: std::slice::from_ref(&file), input: None, limit: 4096 },
                            deadline,
                        )
                        .await?;
                    match String::from_utf8_lossy(&got.stdout).split_whitespace().next() {
                        Some(sum) if got.code == 0 => sum.to_string(),
                        _ => return Ok(Err(format!("no checksum of {file} (is it there?)"))),
                    }
                }
                e => return Ok(Err(format!("unknown template {{{{ {e} }}}}"))),
            };
            out.push_str(&value);
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        if out.len() > 900 {
            return Ok(Err("the key is longer than 900 characters".into()));
        }
        Ok(Ok(out))
    }

    async fn persist(
        &mut self,
        session: &Session,
        idx: i64,
        root: &str,
        paths: &[String],
        deadline: tokio::time::Instant,
    ) -> Result<StepResult, Outcome> {
        let Some(workflow) = self.job.workflow_id.clone() else {
            self.out
                .sys(idx, "persist_to_workspace: this job runs outside a workflow, so no job can attach it; skipped");
            return Ok(StepResult::Exited(0));
        };
        if let Some(p) = paths.iter().find(|p| p.starts_with('/')) {
            self.out.sys(idx, &format!("persist_to_workspace: {p} is absolute; paths are relative to root"));
            return Ok(StepResult::Exited(1));
        }
        let dir = step_dir(&self.plan.spec.working_directory, Some(root));
        let script = format!(
            "set -e; shopt -s globstar dotglob nullglob; cd {}; IFS=$'\\n'; files=(); for pat in \"$@\"; do m=( $pat ); \
             if [ ${{#m[@]}} -eq 0 ]; then echo \"persist_to_workspace: nothing matches $pat under $PWD\" >&2; exit 3; \
             fi; files+=(\"${{m[@]}}\"); done; tar -czf - -- \"${{files[@]}}\"",
            sh_dir(&dir)
        );
        let room = self.room();
        let got =
            self.capture(session, idx, Sh { script: &script, args: paths, input: None, limit: room }, deadline).await?;
        if got.over {
            return Ok(self.too_big(idx, "the workspace layer"));
        }
        if got.code != 0 {
            self.out.sys(idx, &format!("persist_to_workspace failed (exit code {})", got.code));
            return Ok(StepResult::Exited(got.code.max(1)));
        }
        let t = self.task;
        let object =
            format!("workspaces/{workflow}/{}/{}-{}-{}.tar.gz", self.job.id, t.node_index, t.attempt, short_id());
        let size = got.stdout.len() as i64;
        self.put(&object, got.stdout).await?;
        let row = WorkspaceLayerRow {
            id: format!("ws-{}", short_id()),
            workflow_id: workflow,
            job_id: self.job.id.clone(),
            node_index: t.node_index,
            object_key: object,
            size,
            created_at: now_ms(),
        };
        let store = &self.jobs.fleet.store;
        super::db_retry(&self.job.id, "recording the workspace layer", || store.insert_workspace_layer(&row)).await?;
        self.out.sys(idx, &format!("persisted {} to the workspace ({size} bytes)", paths.join(", ")));
        Ok(StepResult::Exited(0))
    }

    /// The jobs this one requires, directly or not, in its workflow.
    async fn upstream(&self) -> Result<Vec<String>, Outcome> {
        let Some(w) = &self.job.workflow_id else { return Ok(Vec::new()) };
        let store = &self.jobs.fleet.store;
        let nodes = super::db_retry(&self.job.id, "reading the workflow", || store.workflow_nodes(w)).await?;
        let by_name: std::collections::HashMap<&str, &crate::store::WorkflowJobRow> =
            nodes.iter().map(|n| (n.name.as_str(), n)).collect();
        let me = nodes.iter().find(|n| n.job_id.as_deref() == Some(self.job.id.as_str()));
        let mut todo: Vec<String> = me.map(|n| n.requires_list()).unwrap_or_default();
        let mut seen = std::collections::HashSet::new();
        let mut jobs = Vec::new();
        while let Some(name) = todo.pop() {
            if !seen.insert(name.clone()) {
                continue;
            }
            if let Some(n) = by_name.get(name.as_str()) {
                if let (Some(j), false) = (&n.job_id, n.approval) {
                    jobs.push(j.clone());
                }
                todo.extend(n.requires_list());
            }
        }
        Ok(jobs)
    }

    async fn attach(
        &mut self,
        session: &Session,
        idx: i64,
        at: &str,
        deadline: tokio::time::Instant,
    ) -> Result<StepResult, Outcome> {
        let upstream = self.upstream().await?;
        let store = &self.jobs.fleet.store;
        let layers =
            super::db_retry(&self.job.id, "reading the workspace", || store.workspace_layers(&upstream)).await?;
        if layers.is_empty() {
            self.out.sys(idx, "attach_workspace: no job this one requires persisted anything");
            return Ok(StepResult::Exited(0));
        }
        let dir = step_dir(&self.plan.spec.working_directory, Some(at));
        let script = format!("set -e; mkdir -p {d}; tar -C {d} -xzf -", d = sh_dir(&dir));
        for l in &layers {
            let Some(data) =
                self.jobs.objects.get(&l.object_key).await.map_err(|e| Outcome::infra(format!("workspace: {e}")))?
            else {
                self.out
                    .sys(idx, &format!("attach_workspace: the layer of job {} is gone (past retention?)", l.job_id));
                return Ok(StepResult::Exited(1));
            };
            let got = self
                .capture(session, idx, Sh { script: &script, args: &[], input: Some(&data), limit: 1 << 20 }, deadline)
                .await?;
            if got.code != 0 {
                self.out.sys(idx, &format!("attach_workspace: unpacking the layer of job {} failed", l.job_id));
                return Ok(StepResult::Exited(got.code.max(1)));
            }
        }
        self.out.sys(idx, &format!("attached {} workspace layer(s) at {at}", layers.len()));
        Ok(StepResult::Exited(0))
    }

    /// The files under `path` (a directory, each file matching `pattern`, or one file) as
    /// (size, name relative to it, full path), and whether it is a directory; `None` when it
    /// does not exist.
    async fn list_files(
        &self,
        session: &Session,
        idx: i64,
        path: &str,
        pattern: &str,
        deadline: tokio::time::Instant,
    ) -> Result<Option<(bool, Vec<(u64, String, String)>)>, Outcome> {
        let script = format!(
            "cd {} 2>/dev/null || cd; p=\"$1\"; case \"$p\" in '~') p=\"$HOME\";; '~/'*) p=\"$HOME/${{p#\\~/}}\";; esac; \
             if [ -d \"$p\" ]; then cd \"$p\" && printf 'dir\\0' && find . -type f -name {} -printf '%s\\0%P\\0'\"$PWD\"'/%P\\0'; \
             elif [ -f \"$p\" ]; then printf 'file\\0%s\\0%s\\0%s\\0' \"$(stat -c %s \"$p\")\" \"$(basename \"$p\")\" \"$p\"; \
             else exit 3; fi",
            sh_dir(&self.plan.spec.working_directory),
            sh_quote(pattern)
        );
        let got = self
            .capture(
                session,
                idx,
                Sh { script: &script, args: &[path.to_string()], input: None, limit: 8 << 20 },
                deadline,
            )
            .await?;
        if got.code == 3 {
            return Ok(None);
        }
        let mut parts = got.stdout.split(|b| *b == 0).map(|p| String::from_utf8_lossy(p).to_string());
        let is_dir = parts.next().as_deref() == Some("dir");
        let mut files = Vec::new();
        while let (Some(size), Some(rel), Some(full)) = (parts.next(), parts.next(), parts.next()) {
            files.push((size.parse().unwrap_or(0), rel, full));
        }
        Ok(Some((is_dir, files)))
    }

    async fn fetch(
        &self,
        session: &Session,
        idx: i64,
        file: &str,
        limit: u64,
        deadline: tokio::time::Instant,
    ) -> Result<Option<Vec<u8>>, Outcome> {
        let got = self
            .capture(
                session,
                idx,
                Sh { script: "cat -- \"$1\"", args: &[file.to_string()], input: None, limit },
                deadline,
            )
            .await?;
        Ok((got.code == 0 && !got.over).then_some(got.stdout))
    }

    async fn store_artifacts(
        &mut self,
        session: &Session,
        idx: i64,
        path: &str,
        destination: Option<&str>,
        deadline: tokio::time::Instant,
    ) -> Result<StepResult, Outcome> {
        let Some((is_dir, files)) = self.list_files(session, idx, path, "*", deadline).await? else {
            self.out.sys(idx, &format!("store_artifacts: {path} does not exist; nothing stored"));
            return Ok(StepResult::Exited(0));
        };
        if files.len() > MAX_FILES {
            let n = files.len();
            self.out.sys(idx, &format!("store_artifacts: {path} holds {n} files; a step stores at most {MAX_FILES}"));
            return Ok(StepResult::Exited(1));
        }
        let base = destination.unwrap_or(path).trim_start_matches("~/").to_string();
        let mut stored = 0u64;
        for (size, rel, full) in &files {
            if *size > self.room() {
                return Ok(self.too_big(idx, &format!("artifact {rel} ({size} bytes)")));
            }
            let name = if is_dir { format!("{base}/{rel}") } else { base.clone() };
            let name =
                name.split('/').filter(|s| !s.is_empty() && *s != "." && *s != "..").collect::<Vec<_>>().join("/");
            let Some(data) = self.fetch(session, idx, full, self.room(), deadline).await? else {
                self.out.sys(idx, &format!("store_artifacts: could not read {full}"));
                return Ok(StepResult::Exited(1));
            };
            let object = format!("artifacts/{}/{}/{}", self.job.id, self.task.node_index, digest(&name));
            let len = data.len() as i64;
            self.put(&object, data).await?;
            let row = ArtifactRow {
                job_id: self.job.id.clone(),
                node_index: self.task.node_index,
                path: name,
                object_key: object,
                size: len,
                created_at: now_ms(),
            };
            let store = &self.jobs.fleet.store;
            super::db_retry(&self.job.id, "recording the artifact", || store.insert_artifact(&row)).await?;
            stored += len as u64;
        }
        self.out.sys(idx, &format!("stored {} artifact(s) from {path} ({stored} bytes)", files.len()));
        Ok(StepResult::Exited(0))
    }

    async fn store_test_results(
        &mut self,
        session: &Session,
        idx: i64,
        path: &str,
        deadline: tokio::time::Instant,
    ) -> Result<StepResult, Outcome> {
        let Some((_, files)) = self.list_files(session, idx, path, "*.xml", deadline).await? else {
            self.out.sys(idx, &format!("store_test_results: {path} does not exist; no test results"));
            return Ok(StepResult::Exited(0));
        };
        let files: Vec<_> = files.into_iter().take(MAX_FILES).collect();
        let mut rows = Vec::new();
        for (size, rel, full) in &files {
            let limit = self.jobs.fleet.config.storage.max_object_bytes.min(super::junit::MAX_FILE_BYTES);
            if *size > limit {
                self.out.sys(
                    idx,
                    &format!(
                        "store_test_results: {rel} is {size} bytes, past the {limit} a results file may be; skipped"
                    ),
                );
                continue;
            }
            let Some(data) = self.fetch(session, idx, full, limit, deadline).await? else {
                self.out.sys(idx, &format!("store_test_results: could not read {rel}; skipped"));
                continue;
            };
            match super::junit::parse(&data) {
                Ok(cases) => rows.extend(cases.into_iter().map(|c| TestResultRow {
                    job_id: self.job.id.clone(),
                    node_index: self.task.node_index,
                    idx: 0,
                    project: self.job.project.clone(),
                    job_name: self.job.name.clone(),
                    file: c.file,
                    classname: c.classname,
                    name: c.name,
                    result: c.result.to_string(),
                    message: c.message,
                    run_time: c.time,
                    created_at: now_ms(),
                })),
                Err(e) => self.out.sys(idx, &format!("store_test_results: {rel} is not JUnit XML ({e}); skipped")),
            }
        }
        let count = |r: &str| rows.iter().filter(|x| x.result == r).count();
        let summary = format!(
            "stored test results: {} test(s), {} failed, {} errors, {} skipped",
            rows.len(),
            count("failure"),
            count("error"),
            count("skipped")
        );
        let store = &self.jobs.fleet.store;
        super::db_retry(&self.job.id, "recording the test results", || store.insert_test_results(&rows)).await?;
        self.out.sys(idx, &summary);
        Ok(StepResult::Exited(0))
    }
}
