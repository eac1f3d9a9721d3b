//! `vmfleet jobs`.

use super::*;

pub(super) fn validate_jobs(file: &Path, as_json: bool) -> anyhow::Result<std::process::ExitCode> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let cfg = match crate::jobs::circleci::ConfigFile::parse(&text, &file.display().to_string()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(std::process::ExitCode::from(2));
        }
    };
    let jobs = cfg.summaries();
    let workflows = cfg.workflow_jobs();
    if let Some(e) = cfg.exhausted() {
        eprintln!("error: {e}");
        return Ok(std::process::ExitCode::from(2));
    }
    if as_json {
        print_json(&jobs)?;
    } else {
        table(
            &["Job", "Line", "Kind", "Image", "Class", "Parallelism", "DLC", "Windows"],
            jobs.iter()
                .map(|j| {
                    vec![
                        j.name.clone(),
                        j.line.to_string(),
                        j.kind.as_str().to_string(),
                        opt(&j.image),
                        opt(&j.resource_class),
                        j.parallelism.to_string(),
                        j.docker_layer_caching.to_string(),
                        j.windows.to_string(),
                    ]
                })
                .collect(),
        );
        for j in jobs.iter().filter(|j| j.error.is_some()) {
            println!("cannot run {}: {}", j.name, j.error.as_deref().unwrap_or_default());
        }
        match workflows {
            Ok(w) if !w.is_empty() => {
                let names: Vec<String> = w.iter().filter(|w| w.name != w.job).map(|w| w.name.clone()).collect();
                if !names.is_empty() {
                    println!("workflow instances: {}", names.join(", "));
                }
            }
            Ok(_) => {}
            Err(e) => println!("workflows: {e}"),
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

pub(super) async fn jobs(api: &Client, c: &JobsCmd) -> anyhow::Result<std::process::ExitCode> {
    use crate::api::storage::{ArtifactView, TestsView};
    use crate::api::views::{JobView, TaskView};
    match c {
        JobsCmd::List { state, json } => {
            let q = state.as_ref().map(|s| format!("?state={s}")).unwrap_or_default();
            let jobs: Vec<JobView> = api.get(&format!("/api/v1/jobs{q}")).await?;
            if json.json {
                print_json(&jobs)?;
            } else {
                table(
                    &["Number", "ID", "Job", "Project", "State", "Tasks", "Queued", "Finished"],
                    jobs.iter()
                        .map(|j| {
                            vec![
                                j.number.to_string(),
                                j.id.clone(),
                                j.name.clone(),
                                j.project.clone(),
                                j.state.clone(),
                                j.parallelism.to_string(),
                                j.queued_at.clone(),
                                opt(&j.finished_at),
                            ]
                        })
                        .collect(),
                );
            }
        }
        JobsCmd::Show { id, json } => {
            let j: JobView = api.get(&format!("/api/v1/jobs/{id}")).await?;
            if json.json {
                print_json(&j)?;
            } else {
                let mut v = serde_json::to_value(&j)?;
                if let Some(o) = v.as_object_mut() {
                    o.remove("tasks");
                }
                print_kv(&v);
                let tests: crate::api::storage::TestsView = api.get(&format!("/api/v1/jobs/{}/tests", j.id)).await?;
                if tests.total > 0 {
                    println!();
                    print_tests(&tests);
                }
                for t in &j.tasks {
                    println!();
                    println!(
                        "task {} node {}: {} (attempt {}, exit code {})",
                        t.id,
                        t.node_index,
                        t.state,
                        t.attempt,
                        t.exit_code.map_or("-".into(), |c| c.to_string())
                    );
                    if let Some(r) = &t.failure_reason {
                        println!("  {r}");
                    }
                    for s in &t.steps {
                        let d = s.duration_s.map_or("-".into(), |d| format!("{d:.1} s"));
                        let code = s.exit_code.map_or(String::new(), |c| format!(" (exit code {c})"));
                        println!("  {:>3}  {:<10} {:>8}  {}{code}", s.index, s.state, d, s.name);
                    }
                }
            }
        }
        JobsCmd::Logs { id, follow } => {
            let j: JobView = api.get(&format!("/api/v1/jobs/{id}")).await?;
            let code = crate::cli::run_job::follow_remote(
                api,
                &j.id,
                crate::cli::run_job::Printer::new(j.parallelism),
                *follow,
            )
            .await?;
            return Ok(std::process::ExitCode::from(if *follow { code } else { 0 }));
        }
        JobsCmd::Artifacts { id, download, json } => {
            let list: Vec<ArtifactView> = api.get(&format!("/api/v1/jobs/{id}/artifacts")).await?;
            if json.json {
                print_json(&list)?;
            } else {
                table(
                    &["Node", "Path", "Bytes"],
                    list.iter().map(|a| vec![a.node.to_string(), a.path.clone(), a.size.to_string()]).collect(),
                );
            }
            if let Some(dir) = download {
                for a in &list {
                    let bytes = api.stream(&a.url).await?.bytes().await?;
                    let path = dir.join(a.node.to_string()).join(&a.path);
                    // Stored paths have no `..` or absolute parts; check again before writing.
                    if !path.starts_with(dir) || a.path.split('/').any(|s| s == ".." || s.is_empty()) {
                        bail!("artifact path {:?} would leave {}", a.path, dir.display());
                    }
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
                }
                eprintln!("downloaded {} artifact(s) into {}", list.len(), dir.display());
            }
        }
        JobsCmd::Tests { id, json } => {
            let t: TestsView = api.get(&format!("/api/v1/jobs/{id}/tests")).await?;
            if json.json {
                print_json(&t)?;
            } else {
                print_tests(&t);
            }
        }
        JobsCmd::Cancel { id } => {
            let j: JobView = api.post(&format!("/api/v1/jobs/{id}/cancel"), &json!({})).await?;
            println!("job {} #{}: cancel requested ({})", j.id, j.number, j.state);
        }
        JobsCmd::Ssh { id, node, key_file } => {
            let j: JobView = api.get(&format!("/api/v1/jobs/{id}")).await?;
            let Some(t) = j.tasks.iter().find(|t| t.node_index == *node) else {
                bail!("job {} has no task with node index {node}", j.id);
            };
            let Some(ft) = t.fleet_task_id.as_ref().filter(|_| t.state == "running") else {
                bail!("task {} of job {} is {}, not running on a VM", t.id, j.id, t.state);
            };
            let task: TaskView = api.get(&format!("/api/v1/tasks/{ft}")).await?;
            let Some(ssh) = &task.ssh else { bail!("task {} has no VM yet ({})", t.id, task.state) };
            write_private(key_file, &ssh.private_key)?;
            println!(
                "ssh -i {} -p {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null {}@{}",
                key_file.display(),
                ssh.port,
                ssh.user,
                ssh.host
            );
        }
        JobsCmd::Validate { .. } => unreachable!("handled without a server"),
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn print_tests(t: &crate::api::storage::TestsView) {
    println!(
        "tests: {} ({} passed, {} failed, {} errors, {} skipped) in {:.1} s",
        t.total, t.success, t.failed, t.errors, t.skipped, t.time_s
    );
    for c in t.cases.iter().filter(|c| matches!(c.result.as_str(), "failure" | "error")) {
        let at = c.file.as_deref().map(|f| format!(" ({f})")).unwrap_or_default();
        println!("  {} {}.{}{at}: {}", c.result, c.classname, c.name, c.message.as_deref().unwrap_or_default());
    }
    let mut slow: Vec<&crate::api::storage::TestCaseView> = t.cases.iter().collect();
    slow.sort_by(|a, b| b.time_s.total_cmp(&a.time_s));
    for c in slow.iter().take(5).filter(|c| c.time_s > 0.0) {
        println!("  slowest: {:.2} s {}.{}", c.time_s, c.classname, c.name);
    }
}
