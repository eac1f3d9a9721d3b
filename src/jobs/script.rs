//! The commands the runner sends over SSH: a step's script in its shell, working directory and
//! environment, on Linux (`bash -eo pipefail`) or Windows (PowerShell).
//!
//! # Design
//! OpenSSH's sshd passes only the environment variables its `AcceptEnv` allows, so the
//! environment is exported inside the command, single-quoted (values are taken literally, as
//! CircleCI takes them). On Linux the script travels on the command's standard input into a
//! file that the step's shell then runs, so no script text is ever quoted into a command line.
//! On Windows the whole step is one PowerShell `-EncodedCommand` (UTF-16LE, base64), which
//! needs no quoting either.

use base64::Engine as _;

/// Single-quotes `s` for a POSIX shell.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r#"'\''"#))
}

/// A directory for the shell: `~` and `~/x` start at `$HOME`.
pub fn sh_dir(dir: &str) -> String {
    if dir == "~" {
        "\"$HOME\"".into()
    } else if let Some(rest) = dir.strip_prefix("~/") {
        format!("\"$HOME\"/{}", sh_quote(rest))
    } else {
        sh_quote(dir)
    }
}

/// A step's directory: its own (absolute, `~`, or relative to the job's), else the job's.
pub fn step_dir(job_dir: &str, step_dir: Option<&str>) -> String {
    match step_dir {
        None => job_dir.to_string(),
        Some(d) if d.starts_with('/') || d.starts_with('~') || d.contains(':') => d.to_string(),
        Some(d) => format!("{}/{}", job_dir.trim_end_matches('/'), d),
    }
}

/// The Linux command that writes its standard input to `script_path` (under `$HOME`), then
/// runs it with `shell` (default `/bin/bash -eo pipefail`) in `dir` with `env`.
pub fn linux_step(shell: Option<&str>, dir: &str, env: &[(String, String)], script_path: &str) -> String {
    let mut c = format!("set -e; umask 077; f=\"$HOME/.vmfleet/{script_path}\"; mkdir -p \"$(dirname \"$f\")\"; cat > \"$f\"; umask 022; ");
    c.push_str(&format!("mkdir -p {d} && cd {d}; ", d = sh_dir(dir)));
    for (k, v) in env {
        c.push_str(&format!("export {k}={}; ", sh_quote(v)));
    }
    let shell = shell.filter(|s| !s.trim().is_empty()).unwrap_or("/bin/bash -eo pipefail");
    // Steps share a BASH_ENV file: what one step appends to it, the next ones source.
    c.push_str("export BASH_ENV=\"$HOME/.vmfleet/bash_env\"; touch \"$BASH_ENV\"; ");
    c.push_str(&format!("exec {shell} \"$f\""));
    c
}

/// The Linux command that writes its standard input to `path` with `mode`.
pub fn linux_write_file(path: &str, mode: &str) -> String {
    format!("set -e; umask 077; mkdir -p \"$(dirname {p})\"; cat > {p}; chmod {mode} {p}", p = sh_dir(path))
}

/// PowerShell single-quoted string.
fn ps_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A directory for PowerShell: `~` starts at the profile.
fn ps_dir(dir: &str) -> String {
    match dir.strip_prefix('~') {
        Some(rest) => format!("(Join-Path $HOME {})", ps_quote(rest.trim_start_matches(['/', '\\']))),
        None => ps_quote(dir),
    }
}

/// The Windows command for a step: PowerShell writes the script to a file and runs it with
/// `shell` (default PowerShell; `bash.exe` and `cmd.exe` work too), exiting with its status.
pub fn windows_step(shell: Option<&str>, dir: &str, env: &[(String, String)], script: &str, name: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(script.as_bytes());
    let shell = shell.unwrap_or("powershell.exe").trim().to_ascii_lowercase();
    let (ext, run) = if shell.starts_with("bash") {
        ("sh", "& bash.exe -eo pipefail $f")
    } else if shell.starts_with("cmd") {
        ("cmd", "& cmd.exe /D /C $f")
    } else {
        ("ps1", "& powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -File $f")
    };
    let mut ps = String::from("$ErrorActionPreference = 'Stop'\n");
    ps.push_str(&format!(
        "$d = {}\nNew-Item -ItemType Directory -Force -Path $d | Out-Null\nSet-Location $d\n",
        ps_dir(dir)
    ));
    for (k, v) in env {
        ps.push_str(&format!("$env:{k} = {}\n", ps_quote(v)));
    }
    ps.push_str(&format!("$f = Join-Path $env:TEMP {}\n", ps_quote(&format!("vmfleet-{name}.{ext}"))));
    ps.push_str(&format!(
        "[IO.File]::WriteAllText($f, [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('{b64}')))\n"
    ));
    ps.push_str(&format!("$ErrorActionPreference = 'Continue'\n{run}\nexit $LASTEXITCODE\n"));
    windows_encoded(&ps)
}

/// `powershell.exe -EncodedCommand` of a script.
pub fn windows_encoded(ps: &str) -> String {
    let utf16: Vec<u8> = ps.encode_utf16().flat_map(u16::to_le_bytes).collect();
    format!(
        "powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -EncodedCommand {}",
        base64::engine::general_purpose::STANDARD.encode(utf16)
    )
}

/// The checkout script (run like a step): clone `repo` (a URL, or `BUNDLE` for a bundle the
/// runner uploaded first to `~/.vmfleet/checkout.bundle`) into the current directory and check
/// out `revision`, with the deploy key at `~/.ssh/vmfleet-deploy-key` when `deploy_key`.
pub fn checkout_script(repo: Option<&str>, revision: Option<&str>, branch: Option<&str>, deploy_key: bool) -> String {
    let mut s = String::new();
    if deploy_key {
        s.push_str(
            "export GIT_SSH_COMMAND=\"ssh -i $HOME/.ssh/vmfleet-deploy-key -o IdentitiesOnly=yes -o StrictHostKeyChecking=accept-new\"\n",
        );
    }
    let source = match repo {
        Some(r) => sh_quote(r),
        None => "\"$HOME/.vmfleet/checkout.bundle\"".into(),
    };
    s.push_str("if [ -e .git ]; then\n  git remote set-url origin ");
    s.push_str(&source);
    s.push_str(" && git fetch --quiet --tags origin\nelse\n  git clone --quiet ");
    s.push_str(&source);
    s.push_str(" .\nfi\n");
    match revision {
        Some(rev) => s.push_str(&format!("git checkout --quiet --force {}\n", sh_quote(rev))),
        None => s.push_str("git checkout --quiet --force FETCH_HEAD 2>/dev/null || true\n"),
    }
    if let Some(b) = branch {
        s.push_str(&format!("git checkout --quiet -B {} 2>/dev/null || true\n", sh_quote(b)));
    }
    s.push_str("git log -1 --format='checked out %H %s'\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes_and_dollars() {
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("export V={}; printf %s \"$V\"", sh_quote("it's $HOME `x`")))
            .output()
            .expect("bash");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "it's $HOME `x`");
    }

    #[test]
    fn linux_step_runs_the_script_from_stdin_with_env_and_dir() {
        let home = tempfile::tempdir().expect("tmp");
        let cmd = linux_step(None, "~/proj/sub", &[("A".into(), "a b".into())], "s1");
        let mut child = std::process::Command::new("bash")
            .arg("-c")
            .arg(&cmd)
            .env("HOME", home.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("bash");
        use std::io::Write as _;
        child.stdin.take().expect("stdin").write_all(b"echo \"$A\" $(pwd)\nfalse | true\n").expect("write");
        let out = child.wait_with_output().expect("wait");
        // pipefail: `false | true` fails the step.
        assert_eq!(out.status.code(), Some(1));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(text.starts_with("a b ") && text.trim_end().ends_with("proj/sub"), "{text}");
    }

    #[test]
    fn step_directories() {
        assert_eq!(step_dir("~/project", None), "~/project");
        assert_eq!(step_dir("~/project", Some("sub")), "~/project/sub");
        assert_eq!(step_dir("~/project", Some("/tmp")), "/tmp");
        assert_eq!(step_dir("~/project", Some("~/")), "~/");
    }

    #[test]
    fn windows_steps_are_one_encoded_powershell_command() {
        let c = windows_step(Some("bash.exe"), "~/project", &[("A".into(), "x'y".into())], "echo hi", "1-1");
        let b64 = c.rsplit(' ').next().expect("encoded");
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64");
        let units: Vec<u16> = bytes.chunks(2).map(|p| u16::from_le_bytes([p[0], p[1]])).collect();
        let ps = String::from_utf16(&units).expect("utf-16");
        assert!(ps.contains("$env:A = 'x''y'"), "{ps}");
        assert!(ps.contains("& bash.exe -eo pipefail $f") && ps.contains("exit $LASTEXITCODE"), "{ps}");
    }
}
