//! Printing: tables, JSON, key-value lists, and files written for the operator.

use super::*;

pub(super) fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub(super) fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{:<w$}", c, w = widths[i])).collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

pub(super) fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "-".into())
}

pub(super) fn print_kv(v: &serde_json::Value) {
    if let Some(map) = v.as_object() {
        for (k, v) in map {
            let s = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "-".into(),
                other => other.to_string(),
            };
            println!("{k:<22}{s}");
        }
    }
}

pub(super) fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

pub(super) fn show_task(
    t: &TaskView,
    key_file: Option<&Path>,
    docker_dir: Option<&Path>,
    as_json: bool,
) -> anyhow::Result<std::process::ExitCode> {
    if let (Some(path), Some(ssh)) = (key_file, &t.ssh) {
        write_private(path, &ssh.private_key)?;
    }
    if let (Some(dir), Some(d)) = (docker_dir, &t.docker) {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("ca.pem"), &d.ca_cert)?;
        std::fs::write(dir.join("cert.pem"), &d.client_cert)?;
        write_private(&dir.join("key.pem"), &d.client_key)?;
    }
    if as_json {
        print_json(t)?;
    } else {
        let mut v = serde_json::to_value(t)?;
        if let Some(o) = v.as_object_mut() {
            o.remove("ssh");
            o.remove("docker");
        }
        print_kv(&v);
        if let Some(ssh) = &t.ssh {
            let key = key_file.map_or_else(|| "KEY".to_string(), |p| p.display().to_string());
            println!("ssh                   ssh -i {key} -p {} {}@{}", ssh.port, ssh.user, ssh.host);
        }
        if let Some(d) = &t.docker {
            let dir = docker_dir.map_or_else(|| "DIR".to_string(), |p| p.display().to_string());
            match &d.docker_host {
                Some(h) => {
                    println!("docker                export DOCKER_HOST={h} DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH={dir}")
                }
                None => {
                    println!("docker                this VM runs no Docker daemon (local provider); TLS files in {dir}")
                }
            }
        }
    }
    Ok(if t.state == "failed" { std::process::ExitCode::FAILURE } else { std::process::ExitCode::SUCCESS })
}
