//! TLS for remote Docker: one CA per installation, a server certificate per VM, a client
//! certificate per task.
//!
//! The CA's key lives in the store next to the VMs' SSH keys; the CA is rebuilt for signing from
//! its fixed parameters and that key. Server certificates name the address the task will dial;
//! client certificates live no longer than a task may (the long-running task timeout plus an
//! hour), since every daemon of the installation trusts the same CA.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Errors issuing certificates. Never contains key material.
#[derive(Debug, thiserror::Error)]
#[error("docker TLS: {0}")]
pub struct TlsError(String);

fn err(e: rcgen::Error) -> TlsError {
    TlsError(e.to_string())
}

/// A PEM certificate and its PEM key. The key is secret.
#[derive(Clone)]
pub struct Pem {
    /// Certificate.
    pub cert: String,
    /// Private key.
    pub key: String,
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pem").field("cert", &self.cert).field("key", &"<redacted>").finish()
    }
}

/// The installation's Docker CA.
#[derive(Debug, Clone)]
pub struct DockerCa {
    install_id: String,
    /// The CA certificate and key.
    pub pem: Pem,
}

fn ca_params(install_id: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "vmfleet");
    dn.push(DnType::CommonName, format!("vmfleet docker CA {install_id}"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p
}

fn window(params: &mut CertificateParams, valid_for: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::seconds(valid_for.as_secs() as i64);
}

impl DockerCa {
    /// A new CA, valid for ten years.
    ///
    /// # Errors
    /// [`TlsError`] when key generation fails.
    pub fn generate(install_id: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate().map_err(err)?;
        let mut params = ca_params(install_id);
        window(&mut params, Duration::from_secs(10 * 365 * 86400));
        let cert = params.self_signed(&key).map_err(err)?;
        Ok(Self { install_id: install_id.into(), pem: Pem { cert: cert.pem(), key: key.serialize_pem() } })
    }

    /// The CA from its stored certificate and key.
    pub fn from_pem(install_id: &str, pem: Pem) -> Self {
        Self { install_id: install_id.into(), pem }
    }

    fn issue(&self, mut params: CertificateParams, valid_for: Duration) -> Result<Pem, TlsError> {
        let ca_key = KeyPair::from_pem(&self.pem.key).map_err(err)?;
        let issuer = Issuer::new(ca_params(&self.install_id), ca_key);
        window(&mut params, valid_for);
        let key = KeyPair::generate().map_err(err)?;
        let cert = params.signed_by(&key, &issuer).map_err(err)?;
        Ok(Pem { cert: cert.pem(), key: key.serialize_pem() })
    }

    /// A server certificate for a VM's Docker daemon reached at `host` (an IP or a name).
    ///
    /// # Errors
    /// [`TlsError`].
    pub fn issue_server(&self, vm_id: &str, host: &str, valid_for: Duration) -> Result<Pem, TlsError> {
        let mut params = CertificateParams::new(vec![host.to_string(), "localhost".to_string()]).map_err(err)?;
        params.distinguished_name.push(DnType::CommonName, vm_id);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        self.issue(params, valid_for)
    }

    /// A client certificate for one task.
    ///
    /// # Errors
    /// [`TlsError`].
    pub fn issue_client(&self, task_id: &str, valid_for: Duration) -> Result<Pem, TlsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, task_id);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.issue(params, valid_for)
    }
}

/// The shell script that installs a server certificate on a VM and, where a Docker daemon and
/// root are available, serves Docker on 2376 with TLS required. It prints `docker-tls: enabled`
/// or `docker-tls: no-daemon`.
pub fn install_script(ca: &str, server: &Pem) -> String {
    format!(
        r#"set -eu
if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi
if command -v dockerd >/dev/null 2>&1 && [ "$SUDO" != none ]; then dir=/etc/docker/tls; else dir="$HOME/.docker-tls"; SUDO=""; fi
$SUDO mkdir -p "$dir"
$SUDO tee "$dir/ca.pem" >/dev/null <<'VMFLEET_CA'
{ca}VMFLEET_CA
$SUDO tee "$dir/server-cert.pem" >/dev/null <<'VMFLEET_CERT'
{cert}VMFLEET_CERT
$SUDO tee "$dir/server-key.pem" >/dev/null <<'VMFLEET_KEY'
{key}VMFLEET_KEY
$SUDO chmod 600 "$dir/server-key.pem"
if [ "$dir" = /etc/docker/tls ]; then
  $SUDO mkdir -p /etc/systemd/system/docker.service.d
  $SUDO tee /etc/systemd/system/docker.service.d/vmfleet-tls.conf >/dev/null <<VMFLEET_UNIT
[Service]
ExecStart=
ExecStart=$(command -v dockerd) -H unix:///var/run/docker.sock -H tcp://0.0.0.0:2376 --tlsverify --tlscacert=$dir/ca.pem --tlscert=$dir/server-cert.pem --tlskey=$dir/server-key.pem
VMFLEET_UNIT
  $SUDO systemctl daemon-reload
  $SUDO systemctl restart docker
  echo "docker-tls: enabled"
else
  echo "docker-tls: no-daemon"
fi
"#,
        ca = ca,
        cert = server.cert,
        key = server.key
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_server_and_client_certificates_and_hides_keys() {
        let ca = DockerCa::generate("inst-1").expect("ca");
        let server = ca.issue_server("vm-1", "10.0.0.7", Duration::from_secs(86400)).expect("server");
        let client = ca.issue_client("task-1", Duration::from_secs(3600)).expect("client");
        for p in [&ca.pem, &server, &client] {
            assert!(p.cert.starts_with("-----BEGIN CERTIFICATE-----"));
            assert!(p.key.contains("PRIVATE KEY"));
            assert!(!format!("{p:?}").contains("PRIVATE KEY"));
        }
        let script = install_script(&ca.pem.cert, &server);
        assert!(script.contains("--tlsverify") && script.contains("tcp://0.0.0.0:2376"));
    }
}
