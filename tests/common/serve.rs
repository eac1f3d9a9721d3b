//! The real `vmfleet serve` binary in a temporary data directory, and the CLI against it.

use std::io::Write as _;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_vmfleet");

pub struct Server {
    pub child: Child,
    pub config: std::path::PathBuf,
    pub dir: tempfile::TempDir,
    /// The token the CLI uses (VMFLEET_TOKEN); the data directory's admin token when `None`.
    pub token: Option<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Terminate any VM agents left behind.
        let _ =
            Command::new("pkill").arg("-f").arg(format!("local-vm-agent --dir {}", self.dir.path().display())).status();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A server whose configuration ends with `extra` (YAML).
pub fn serve_with(extra: &str) -> Server {
    serve_as(extra, None)
}

/// A server whose CLI calls carry `token`.
pub fn serve_as(extra: &str, token: Option<String>) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = dir.path().join("vmfleet.yaml");
    std::fs::write(
        &config,
        format!("data_dir: {}\nlisten: 127.0.0.1:{port}\nreconcile_interval: 200ms\n{extra}", dir.path().display()),
    )
    .expect("config");
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("serve.log")).expect("log"))
        .spawn()
        .expect("serve");
    let s = Server { child, config, dir, token };
    for _ in 0..100 {
        if s.cli(&["status"]).status.success() {
            return s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("server did not come up: {}", std::fs::read_to_string(s.dir.path().join("serve.log")).unwrap_or_default());
}

impl Server {
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_in(args, None)
    }

    /// The CLI with `stdin` on its standard input.
    pub fn cli_in(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(&self.config).args(args).env_remove("VMFLEET_TOKEN").env_remove("VMFLEET_SERVER");
        if let Some(t) = &self.token {
            cmd.env("VMFLEET_TOKEN", t);
        }
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("cli");
        if let Some(input) = stdin {
            child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
        }
        child.wait_with_output().expect("cli")
    }

    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "vmfleet {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf8")
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.cli_ok(args)).expect("json")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }
}

/// Two servers on one PostgreSQL database (`url`), each with its own data directory, sharing one
/// secrets key file and one admin token (the CLI's); `extra` (YAML) goes into both configs.
/// The key's directory is returned with them: keep it while they run.
pub fn replicas_on(url: &str, extra: &str) -> (Server, Server, tempfile::TempDir) {
    use std::os::unix::fs::OpenOptionsExt as _;
    let keys = tempfile::tempdir().expect("tempdir");
    let key = keys.path().join("secrets.key");
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&key).expect("key");
    f.write_all(b"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n").expect("write key");
    let token = vmfleet::auth::generate_token();
    let config = format!(
        "timeouts:\n  ssh_connect: 30s\n  vm_start: 60s\ndatabase:\n  url: {url}\nsecrets:\n  key_file: {}\nauth:\n  \
         tokens:\n    - name: admin\n      sha256: {}\n      scopes: [admin]\n{extra}",
        key.display(),
        vmfleet::auth::hash_token(&token)
    );
    let a = serve_as(&config, Some(token.clone()));
    let b = serve_as(&config, Some(token));
    (a, b, keys)
}
