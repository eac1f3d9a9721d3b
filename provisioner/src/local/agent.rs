//! The local VM agent: an SSH server for one local VM.
//!
//! Started by [`super::LocalProvider::launch`] as `vmfleet local-vm-agent --dir DIR`. It accepts
//! exactly one public key for exactly one user, runs `exec` and `shell` requests with `bash` in
//! the VM's home directory, streams stdout and stderr, and reports the exit status. It has no
//! PTY support: interactive `ssh` works as a plain shell without a prompt. Each command runs in
//! its own process group, so a closed channel or a signal request ends the command and
//! everything it started, as a VM's sshd ends a session.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::{getpgrp, Pid};
use russh::keys::{Algorithm, PrivateKey, PublicKey};
use russh::server::{self, Auth, Msg, Server as _, Session};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{write_json_atomic, AgentFile, InstanceFile};

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The VM directory is missing or unreadable.
    #[error("local VM directory {0}: {1}")]
    Dir(PathBuf, String),
    /// Key or socket set-up failed.
    #[error("local VM agent: {0}")]
    Setup(String),
}

/// Process groups of the commands running now.
static GROUPS: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());
/// Every process group this agent started: all end with the VM.
static STARTED: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// Ends the group of a command still running (one that exited is left alone: what it started
/// in the background lives on, as under sshd).
fn end_group(pid: u32) {
    let mut groups = GROUPS.lock().unwrap_or_else(|p| p.into_inner());
    if groups.contains(&(pid as i32)) {
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        groups.retain(|g| *g != pid as i32);
    }
}

struct Vm {
    user: String,
    key: PublicKey,
    home: PathBuf,
    dlc: PathBuf,
    vm_id: String,
}

/// Runs the agent for the VM in `dir` until the directory is removed or the process is killed.
///
/// # Errors
/// [`AgentError`] when the VM directory or the listening socket cannot be set up.
pub async fn run(dir: &Path) -> Result<(), AgentError> {
    let file: InstanceFile = std::fs::read(dir.join("instance.json"))
        .map_err(|e| AgentError::Dir(dir.to_path_buf(), e.to_string()))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| AgentError::Dir(dir.to_path_buf(), e.to_string())))?;
    let key = crate::ssh::parse_public_key(&file.ssh_public_key).map_err(|e| AgentError::Setup(e.to_string()))?;
    let home = dir.join("home").join(&file.ssh_user);
    std::fs::create_dir_all(&home).map_err(|e| AgentError::Dir(home.clone(), e.to_string()))?;
    let vm = Arc::new(Vm { user: file.ssh_user, key, home, dlc: dir.join("dlc"), vm_id: file.vm_id });

    let host_key = host_key(dir)?;
    let host_public = host_key.public_key().to_openssh().map_err(|e| AgentError::Setup(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| AgentError::Setup(e.to_string()))?;
    let port = listener.local_addr().map_err(|e| AgentError::Setup(e.to_string()))?.port();
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    let config = Arc::new(server::Config {
        methods,
        keys: vec![host_key],
        auth_rejection_time: Duration::from_millis(200),
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: None,
        nodelay: true,
        ..Default::default()
    });
    write_json_atomic(
        &dir.join("agent.json"),
        &AgentFile { pid: std::process::id() as i32, port, host_key: host_public },
    )
    .map_err(|e| AgentError::Setup(e.to_string()))?;

    // A terminated VM is a removed directory: end everything this agent started.
    let marker = dir.join("instance.json");
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if !marker.exists() {
                for g in STARTED.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                    let _ = killpg(Pid::from_raw(*g), Signal::SIGKILL);
                }
                let _ = killpg(getpgrp(), Signal::SIGKILL);
                std::process::exit(0);
            }
        }
    });

    let mut server = AgentServer { vm };
    server.run_on_socket(config, &listener).await.map_err(|e| AgentError::Setup(e.to_string()))
}

/// The VM's host key: made on first boot and kept in `host_key` (0600), so a VM started again
/// from stopped answers with the key its controller pinned.
fn host_key(dir: &Path) -> Result<PrivateKey, AgentError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join("host_key");
    if let Ok(pem) = std::fs::read_to_string(&path) {
        return PrivateKey::from_openssh(&pem)
            .map_err(|_| AgentError::Setup(format!("{} is not an OpenSSH key", path.display())));
    }
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(|e| AgentError::Setup(e.to_string()))?;
    let pem = key.to_openssh(russh::keys::ssh_key::LineEnding::LF).map_err(|e| AgentError::Setup(e.to_string()))?;
    let tmp = dir.join("host_key.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| AgentError::Dir(tmp.clone(), e.to_string()))?;
    f.write_all(pem.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| AgentError::Dir(tmp.clone(), e.to_string()))?;
    std::fs::rename(&tmp, &path).map_err(|e| AgentError::Dir(path.clone(), e.to_string()))?;
    Ok(key)
}

struct AgentServer {
    vm: Arc<Vm>,
}

impl server::Server for AgentServer {
    type Handler = Conn;
    fn new_client(&mut self, _: Option<std::net::SocketAddr>) -> Conn {
        Conn { vm: self.vm.clone(), channels: HashMap::new() }
    }
}

#[derive(Default)]
struct ChanState {
    env: Vec<(String, String)>,
    stdin: Option<mpsc::UnboundedSender<Option<Vec<u8>>>>,
    pid: Option<u32>,
}

struct Conn {
    vm: Arc<Vm>,
    channels: HashMap<ChannelId, ChanState>,
}

impl Conn {
    fn start(
        &mut self,
        channel: ChannelId,
        command: Option<String>,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let state = self.channels.entry(channel).or_default();
        if state.stdin.is_some() {
            return session.channel_failure(channel);
        }
        let mut cmd = tokio::process::Command::new("bash");
        match &command {
            Some(c) => cmd.arg("-c").arg(c),
            None => cmd.arg("-l"),
        };
        cmd.current_dir(&self.vm.home)
            .env("HOME", &self.vm.home)
            .env("USER", &self.vm.user)
            .env("LOGNAME", &self.vm.user)
            .env("VMFLEET_DLC_DIR", &self.vm.dlc)
            .env("VMFLEET_VM_ID", &self.vm.vm_id)
            .envs(state.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(_) => return session.channel_failure(channel),
        };
        session.channel_success(channel)?;
        state.pid = child.id();
        if let Some(pid) = state.pid {
            GROUPS.lock().unwrap_or_else(|p| p.into_inner()).push(pid as i32);
            STARTED.lock().unwrap_or_else(|p| p.into_inner()).push(pid as i32);
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<Option<Vec<u8>>>();
        state.stdin = Some(tx);
        let handle = session.handle();
        let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return session.channel_failure(channel);
        };
        tokio::spawn(async move {
            while let Some(Some(chunk)) = rx.recv().await {
                if stdin.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        });
        let out_handle = handle.clone();
        let out = tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            while let Ok(n) = stdout.read(&mut buf).await {
                if n == 0 || out_handle.data(channel, buf[..n].to_vec()).await.is_err() {
                    break;
                }
            }
        });
        let err_handle = handle.clone();
        let err = tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 || err_handle.extended_data(channel, 1, buf[..n].to_vec()).await.is_err() {
                    break;
                }
            }
        });
        let pid = state.pid;
        tokio::spawn(async move {
            let status = child.wait().await;
            if let Some(pid) = pid {
                GROUPS.lock().unwrap_or_else(|p| p.into_inner()).retain(|g| *g != pid as i32);
            }
            let _ = out.await;
            let _ = err.await;
            let code = match status {
                Ok(s) => s.code().map(|c| c as u32).or_else(|| s.signal().map(|sig| 128 + sig as u32)).unwrap_or(255),
                Err(_) => 255,
            };
            let _ = handle.exit_status_request(channel, code).await;
            let _ = handle.eof(channel).await;
            let _ = handle.close(channel).await;
        });
        Ok(())
    }
}

impl server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if user == self.vm.user && offer.public_key.key_data() == self.vm.key.key_data() {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn auth_publickey(&mut self, user: &str, key: server::VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        Ok(if user == self.vm.user && key.public_key.key_data() == self.vm.key.key_data() {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.insert(channel.id(), ChanState::default());
        reply.accept().await;
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.entry(channel).or_default().env.push((name.to_string(), value.to_string()));
        session.channel_success(channel)
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        self.start(channel, None, session)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data).into_owned();
        self.start(channel, Some(command), session)
    }

    async fn data(&mut self, channel: ChannelId, data: &[u8], _session: &mut Session) -> Result<(), Self::Error> {
        if let Some(tx) = self.channels.get(&channel).and_then(|c| c.stdin.as_ref()) {
            let _ = tx.send(Some(data.to_vec()));
        }
        Ok(())
    }

    async fn channel_eof(&mut self, channel: ChannelId, _session: &mut Session) -> Result<(), Self::Error> {
        if let Some(tx) = self.channels.get(&channel).and_then(|c| c.stdin.as_ref()) {
            let _ = tx.send(None);
        }
        Ok(())
    }

    async fn channel_close(&mut self, channel: ChannelId, _session: &mut Session) -> Result<(), Self::Error> {
        if let Some(state) = self.channels.remove(&channel) {
            if let Some(pid) = state.pid {
                end_group(pid);
            }
        }
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        _signal: russh::Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(pid) = self.channels.get(&channel).and_then(|c| c.pid) {
            end_group(pid);
        }
        Ok(())
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // A dropped connection ends the commands it started, as sshd does.
        for state in self.channels.values() {
            if let Some(pid) = state.pid {
                end_group(pid);
            }
        }
    }
}
