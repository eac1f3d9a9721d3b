//! SSH helpers: VM key pairs, the readiness handshake, and running a command on a VM.
//!
//! Keys are ed25519, fresh for every VM. Private keys travel as OpenSSH PEM text and are never
//! written to logs or error messages.

use std::sync::Arc;
use std::time::Duration;

use russh::client;
use russh::keys::{Algorithm, HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::ChannelMsg;

/// Errors from SSH operations. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// A key could not be generated or parsed.
    #[error("ssh key: {0}")]
    Key(String),
    /// TCP connect, key exchange or the session failed.
    #[error("ssh connection to {addr}: {reason}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The server's host key is not the one we expected.
    #[error("ssh host key of {0} does not match the key the provider reported")]
    HostKeyMismatch(String),
    /// The server refused our key.
    #[error("ssh authentication as {user} on {addr} was refused")]
    AuthRefused {
        /// `host:port`.
        addr: String,
        /// User name.
        user: String,
    },
    /// Nothing succeeded within the deadline.
    #[error("ssh to {addr} not ready within {secs} s: {last}")]
    Timeout {
        /// `host:port`.
        addr: String,
        /// The deadline.
        secs: u64,
        /// The last error seen.
        last: String,
    },
}

/// A fresh key pair for one VM.
pub struct KeyPair {
    /// OpenSSH PEM of the private key. Secret.
    pub private_openssh: String,
    /// `ssh-ed25519 AAAA… comment` line.
    pub public_openssh: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public_openssh", &self.public_openssh)
            .field("private_openssh", &"<redacted>")
            .finish()
    }
}

/// Generates an ed25519 key pair.
///
/// # Errors
/// [`SshError::Key`] if encoding fails.
pub fn generate_keypair(comment: &str) -> Result<KeyPair, SshError> {
    let mut key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(|e| SshError::Key(e.to_string()))?;
    key.set_comment(comment);
    let private_openssh =
        key.to_openssh(russh::keys::ssh_key::LineEnding::LF).map_err(|e| SshError::Key(e.to_string()))?.to_string();
    let public_openssh = key.public_key().to_openssh().map_err(|e| SshError::Key(e.to_string()))?;
    Ok(KeyPair { private_openssh, public_openssh })
}

/// Parses an OpenSSH private key.
///
/// # Errors
/// [`SshError::Key`] without echoing the input.
pub fn parse_private_key(pem: &str) -> Result<PrivateKey, SshError> {
    PrivateKey::from_openssh(pem).map_err(|_| SshError::Key("private key is not a valid OpenSSH key".into()))
}

/// Parses an OpenSSH public key line.
///
/// # Errors
/// [`SshError::Key`].
pub fn parse_public_key(line: &str) -> Result<PublicKey, SshError> {
    PublicKey::from_openssh(line.trim()).map_err(|e| SshError::Key(format!("public key: {e}")))
}

/// The SHA-256 fingerprint of a public key line, as `ssh-keygen -l` prints it.
pub fn fingerprint(public_openssh: &str) -> Option<String> {
    parse_public_key(public_openssh).ok().map(|k| k.fingerprint(HashAlg::Sha256).to_string())
}

/// Where and as whom to connect.
#[derive(Clone)]
pub struct Target {
    /// Host name or IP.
    pub host: String,
    /// Port.
    pub port: u16,
    /// User.
    pub user: String,
    /// OpenSSH PEM private key. Secret.
    pub private_key: String,
    /// The host key we expect, if known (OpenSSH public key line).
    pub host_key: Option<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Target {
    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

struct Verifier {
    expected: Option<PublicKey>,
}

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn check_server_key(&mut self, server: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = server else {
            return Ok(self.expected.is_none());
        };
        Ok(match &self.expected {
            Some(expected) => expected.key_data() == key.key_data(),
            // Cloud hosts announce their key only through the console; the VM's own fresh key
            // pair is what authenticates both sides' intent here.
            None => true,
        })
    }
}

/// An authenticated SSH session to a VM.
pub struct Session {
    handle: client::Handle<Verifier>,
}

/// Output of a finished command.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    /// Exit status; `None` if the server sent none (killed by a signal).
    pub exit_status: Option<u32>,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
}

/// Connects and authenticates once.
///
/// # Errors
/// [`SshError::Connect`], [`SshError::HostKeyMismatch`], [`SshError::AuthRefused`].
pub async fn connect(target: &Target, timeout: Duration) -> Result<Session, SshError> {
    let addr = target.addr();
    let key = parse_private_key(&target.private_key)?;
    let expected = match &target.host_key {
        Some(line) => Some(parse_public_key(line)?),
        None => None,
    };
    let config = Arc::new(client::Config {
        inactivity_timeout: Some(Duration::from_secs(3600)),
        keepalive_interval: Some(Duration::from_secs(30)),
        ..Default::default()
    });
    let connect = client::connect(config, (target.host.as_str(), target.port), Verifier { expected });
    let mut handle = match tokio::time::timeout(timeout, connect).await {
        Err(_) => return Err(SshError::Connect { addr, reason: format!("no answer within {} s", timeout.as_secs()) }),
        Ok(Err(russh::Error::UnknownKey)) => return Err(SshError::HostKeyMismatch(addr)),
        Ok(Err(e)) => return Err(SshError::Connect { addr, reason: e.to_string() }),
        Ok(Ok(h)) => h,
    };
    let auth = handle
        .authenticate_publickey(target.user.clone(), PrivateKeyWithHashAlg::new(Arc::new(key), None))
        .await
        .map_err(|e| SshError::Connect { addr: addr.clone(), reason: e.to_string() })?;
    if !auth.success() {
        return Err(SshError::AuthRefused { addr, user: target.user.clone() });
    }
    Ok(Session { handle })
}

/// Retries [`connect`] until it succeeds or `deadline` passes: the readiness check.
///
/// # Errors
/// [`SshError::Timeout`] with the last error; [`SshError::Key`] at once for a bad key.
pub async fn wait_ready(target: &Target, deadline: Duration) -> Result<Session, SshError> {
    let start = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(50);
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        let last = match connect(target, left.max(Duration::from_millis(100))).await {
            Ok(s) => return Ok(s),
            Err(e @ SshError::Key(_)) => return Err(e),
            Err(e) => e.to_string(),
        };
        if start.elapsed() + delay >= deadline {
            return Err(SshError::Timeout { addr: target.addr(), secs: deadline.as_secs(), last });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

impl Session {
    /// Runs `command` and collects its output.
    ///
    /// # Errors
    /// [`SshError::Connect`] when the session breaks.
    pub async fn exec(&self, command: &str) -> Result<ExecOutput, SshError> {
        let mut out = ExecOutput::default();
        self.exec_streaming(command, &[], |stream, data| match stream {
            Stream::Stdout => out.stdout.extend_from_slice(data),
            Stream::Stderr => out.stderr.extend_from_slice(data),
        })
        .await
        .map(|status| {
            out.exit_status = status;
            out
        })
    }

    /// Runs `command` with `env` set, calling `sink` with output as it arrives; returns the exit
    /// status.
    ///
    /// # Errors
    /// [`SshError::Connect`] when the session breaks.
    pub async fn exec_streaming(
        &self,
        command: &str,
        env: &[(String, String)],
        mut sink: impl FnMut(Stream, &[u8]),
    ) -> Result<Option<u32>, SshError> {
        let broken = |e: russh::Error| SshError::Connect { addr: "session".into(), reason: e.to_string() };
        let mut channel = self.handle.channel_open_session().await.map_err(broken)?;
        for (k, v) in env {
            channel.set_env(true, k.as_str(), v.as_str()).await.map_err(broken)?;
        }
        channel.exec(true, command).await.map_err(broken)?;
        let mut status = None;
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { ref data } => sink(Stream::Stdout, data),
                ChannelMsg::ExtendedData { ref data, ext: 1 } => sink(Stream::Stderr, data),
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                _ => {}
            }
        }
        Ok(status)
    }

    /// Runs `command`, writing `input` to its standard input, calling `sink` with output as it
    /// arrives, until it exits, prints nothing for `idle` (when given), or `stop` completes.
    /// A command that is ended is sent SIGKILL and its channel closed.
    ///
    /// # Errors
    /// [`SshError::Connect`] when the session breaks.
    pub async fn exec_until(
        &self,
        command: &str,
        input: Option<&[u8]>,
        idle: Option<Duration>,
        stop: impl std::future::Future<Output = ()>,
        mut sink: impl FnMut(Stream, &[u8]),
    ) -> Result<ExecEnd, SshError> {
        let broken = |e: russh::Error| SshError::Connect { addr: "session".into(), reason: e.to_string() };
        let mut channel = self.handle.channel_open_session().await.map_err(broken)?;
        channel.exec(true, command).await.map_err(broken)?;
        if let Some(data) = input {
            channel.data(data).await.map_err(broken)?;
            channel.eof().await.map_err(broken)?;
        }
        tokio::pin!(stop);
        let mut status = None;
        let end = loop {
            let idle_for = idle.unwrap_or(Duration::from_secs(365 * 86400));
            tokio::select! {
                msg = channel.wait() => match msg {
                    None => break ExecEnd::Exited(status),
                    Some(ChannelMsg::Data { ref data }) => sink(Stream::Stdout, data),
                    Some(ChannelMsg::ExtendedData { ref data, ext: 1 }) => sink(Stream::Stderr, data),
                    Some(ChannelMsg::ExitStatus { exit_status }) => status = Some(exit_status),
                    Some(_) => {}
                },
                _ = tokio::time::sleep(idle_for) => break ExecEnd::Idle,
                _ = &mut stop => break ExecEnd::Stopped,
            }
        };
        if !matches!(end, ExecEnd::Exited(_)) {
            let _ = channel.signal(russh::Sig::KILL).await;
            let _ = channel.close().await;
        }
        Ok(end)
    }

    /// Closes the session politely.
    pub async fn close(self) {
        self.disconnect().await;
    }

    /// Closes the session politely, through a shared reference.
    pub async fn disconnect(&self) {
        let _ = self.handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
    }
}

/// How [`Session::exec_until`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecEnd {
    /// The command exited with this status (`None`: killed by a signal).
    Exited(Option<u32>),
    /// It printed nothing for the idle timeout and was ended.
    Idle,
    /// The stop future completed and it was ended.
    Stopped,
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}
