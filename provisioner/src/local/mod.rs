//! The local provider: each VM is a sandbox on this host.
//!
//! A local VM is a directory under `<root>/instances/<instance-id>/` with its own home
//! directory, and an agent process (`vmfleet local-vm-agent`) that serves SSH on 127.0.0.1 with
//! a random port and accepts only that VM's key. Commands run as the user running vmfleet, in
//! the VM's home directory. **This is not a security boundary**: it is for development, demos,
//! tests and single-host CI where every job is trusted.
//!
//! A DLC volume is a directory under `<root>/volumes/<volume-id>/data`; attaching it makes
//! `<vm>/dlc` a link to it, which is the VM's Docker data root (`VMFLEET_DLC_DIR`).
//!
//! # Design
//! The agent runs in its own process group and outlives the controller, as an instance
//! outlives a crashed control plane, so the garbage collector has real orphans to find. The
//! agent exits (with every process it started) when its directory disappears.

pub mod agent;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::{Instance, InstanceState, LaunchSpec, Platform, Provider, ProvisionError, Volume, VolumeSpec};

/// The file that marks a stopped VM's directory.
const STOPPED_MARKER: &str = "stopped";
/// When the VM was last started from stopped, in milliseconds since the epoch.
const STARTED_STAMP: &str = "started";

/// The only zone of the local provider.
pub const LOCAL_ZONE: &str = "local-a";

/// What the controller writes into a VM directory at launch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceFile {
    /// Provider id.
    pub instance_id: String,
    /// vmfleet VM id.
    pub vm_id: String,
    /// Installation id.
    pub install_id: String,
    /// Pool label.
    pub pool: String,
    /// Image name.
    pub image_id: String,
    /// Instance type label.
    pub instance_type: String,
    /// SSH user.
    pub ssh_user: String,
    /// Authorized public key.
    pub ssh_public_key: String,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Launch time.
    pub launched_at_ms: i64,
}

/// What the agent writes once it listens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentFile {
    /// The agent's pid (also its process group id).
    pub pid: i32,
    /// SSH port on 127.0.0.1.
    pub port: u16,
    /// The agent's host key, OpenSSH public key line.
    pub host_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct VolumeFile {
    provider_id: String,
    volume_id: String,
    install_id: String,
    project: String,
    size_gb: u32,
    zone: String,
    attached_to: Option<String>,
    created_at_ms: i64,
    tags: BTreeMap<String, String>,
}

/// The local driver.
#[derive(Debug, Clone)]
pub struct LocalProvider {
    root: PathBuf,
    agent_program: PathBuf,
}

impl LocalProvider {
    /// A provider keeping its VMs and volumes under `root`, starting VM agents with
    /// `agent_program local-vm-agent --dir DIR`.
    ///
    /// # Errors
    /// I/O errors creating the directories.
    pub fn new(root: impl Into<PathBuf>, agent_program: impl Into<PathBuf>) -> Result<Self, ProvisionError> {
        let root = root.into();
        std::fs::create_dir_all(root.join("instances"))?;
        std::fs::create_dir_all(root.join("volumes"))?;
        Ok(Self { root, agent_program: agent_program.into() })
    }

    fn instance_dir(&self, instance_id: &str) -> Result<PathBuf, ProvisionError> {
        check_id(instance_id)?;
        Ok(self.root.join("instances").join(instance_id))
    }

    /// Ends the VM's agent and everything it ran, keeps its volume, removes its directory.
    fn terminate_one(&self, instance_id: &str) -> Result<(), ProvisionError> {
        let dir = self.instance_dir(instance_id)?;
        let agent: Option<AgentFile> = read_json(&dir.join("agent.json"));
        if let Some(pid) = agent.map(|a| a.pid).or_else(|| read_pid(&dir)) {
            // The agent leads its own process group: this ends it and every command it ran.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        // Detach volumes first so their data survives the VM.
        let dlc = dir.join("dlc");
        if std::fs::symlink_metadata(&dlc).is_ok() {
            let _ = std::fs::remove_file(&dlc);
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Starts the VM's agent in its own process group (appending to `agent.log`) and records
    /// its pid until the agent writes `agent.json`.
    fn spawn_agent(&self, dir: &Path) -> Result<(), ProvisionError> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("agent.log"))?;
        let mut child = tokio::process::Command::new(&self.agent_program)
            .arg("local-vm-agent")
            .arg("--dir")
            .arg(dir)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| {
                ProvisionError::Other(format!("cannot start the local VM agent {}: {e}", self.agent_program.display()))
            })?;
        if let Some(pid) = child.id() {
            std::fs::write(dir.join("pid"), pid.to_string())?;
        }
        // Reap the agent when it exits so it does not linger as a zombie.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(())
    }

    /// Stops a VM: its agent and every command it ran end; its directory (home, keys, the
    /// attached volume's link) stays, marked `stopped`.
    fn stop_one(&self, instance_id: &str) -> Result<(), ProvisionError> {
        let dir = self.instance_dir(instance_id)?;
        if !dir.join("instance.json").exists() {
            return Err(ProvisionError::NotFound(format!("instance {instance_id}")));
        }
        // The marker first: a VM whose agent died mid-stop still reads as stopped, not broken.
        std::fs::write(dir.join(STOPPED_MARKER), crate::now_ms().to_string())?;
        let agent: Option<AgentFile> = read_json(&dir.join("agent.json"));
        if let Some(pid) = agent.map(|a| a.pid).or_else(|| read_pid(&dir)) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        for f in ["agent.json", "pid"] {
            match std::fs::remove_file(dir.join(f)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Starts a stopped VM: a new agent on the same directory, with the VM's key and the host
    /// key it kept. A VM that is not stopped is left as it is.
    fn start_one(&self, instance_id: &str) -> Result<(), ProvisionError> {
        let dir = self.instance_dir(instance_id)?;
        if !dir.join("instance.json").exists() {
            return Err(ProvisionError::NotFound(format!("instance {instance_id}")));
        }
        if !dir.join(STOPPED_MARKER).exists() {
            return Ok(());
        }
        // Stamped so the VM reads as pending, not dead, until its new agent writes its pid.
        std::fs::write(dir.join(STARTED_STAMP), crate::now_ms().to_string())?;
        std::fs::remove_file(dir.join(STOPPED_MARKER))?;
        self.spawn_agent(&dir)
    }

    fn volume_dir(&self, provider_id: &str) -> Result<PathBuf, ProvisionError> {
        check_id(provider_id)?;
        Ok(self.root.join("volumes").join(provider_id))
    }

    /// The directory of a VM, for tools and tests that look inside.
    pub fn vm_dir(&self, instance_id: &str) -> Option<PathBuf> {
        self.instance_dir(instance_id).ok()
    }

    fn read_instance(&self, dir: &Path) -> Option<Instance> {
        let file: InstanceFile = read_json(&dir.join("instance.json"))?;
        let agent: Option<AgentFile> = read_json(&dir.join("agent.json"));
        let pid = agent.as_ref().map(|a| a.pid).or_else(|| read_pid(dir));
        let alive = pid.is_some_and(process_alive);
        let stopped = dir.join(STOPPED_MARKER).exists();
        let started_ms = std::fs::read_to_string(dir.join(STARTED_STAMP))
            .ok()
            .and_then(|t| t.trim().parse::<i64>().ok())
            .unwrap_or(file.launched_at_ms)
            .max(file.launched_at_ms);
        let state = match (&agent, alive) {
            (_, false) if stopped => InstanceState::Stopped,
            (_, true) if stopped => InstanceState::Stopping,
            (Some(_), true) => InstanceState::Running,
            (None, true) => InstanceState::Pending,
            // Launched or started moments ago and the agent has not written its pid yet.
            (None, false) if pid.is_none() && crate::now_ms() - started_ms < 10_000 => InstanceState::Pending,
            _ => InstanceState::Stopping,
        };
        Some(Instance {
            instance_id: file.instance_id,
            vm_id: Some(file.vm_id),
            install_id: file.install_id,
            state,
            host: agent.as_ref().map(|_| "127.0.0.1".to_string()),
            ssh_port: agent.as_ref().map_or(0, |a| a.port),
            host_key: agent.map(|a| a.host_key),
            zone: LOCAL_ZONE.into(),
            instance_type: None,
            launched_at_ms: file.launched_at_ms,
        })
    }

    fn read_volume(&self, provider_id: &str) -> Result<VolumeFile, ProvisionError> {
        read_json(&self.volume_dir(provider_id)?.join("volume.json"))
            .ok_or_else(|| ProvisionError::NotFound(format!("volume {provider_id}")))
    }

    fn write_volume(&self, v: &VolumeFile) -> Result<(), ProvisionError> {
        write_json_atomic(&self.volume_dir(&v.provider_id)?.join("volume.json"), v)
    }
}

fn check_id(id: &str) -> Result<(), ProvisionError> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(ProvisionError::Invalid(format!("malformed id {id:?}")));
    }
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes JSON through a temporary file and a rename, so readers never see half a file.
pub(crate) fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), ProvisionError> {
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| ProvisionError::Other(e.to_string()))?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn read_pid(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join("pid")).ok()?.trim().parse().ok()
}

fn process_alive(pid: i32) -> bool {
    // Signal 0 checks existence; a zombie counts as dead.
    if nix::sys::signal::kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// The provider id of the local instance for a VM id.
pub fn instance_id_for(vm_id: &str) -> String {
    format!("local-{vm_id}")
}

#[async_trait]
impl Provider for LocalProvider {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<Instance, ProvisionError> {
        if spec.platform != Platform::Linux {
            return Err(ProvisionError::Invalid(format!(
                "the local provider runs Linux images only; {} is a {:?} image",
                spec.image_id, spec.platform
            )));
        }
        let instance_id = instance_id_for(&spec.vm_id);
        let dir = self.instance_dir(&instance_id)?;
        if let Some(existing) = self.read_instance(&dir) {
            return Ok(existing);
        }
        std::fs::create_dir_all(dir.join("home").join(&spec.ssh_user))?;
        let file = InstanceFile {
            instance_id: instance_id.clone(),
            vm_id: spec.vm_id.clone(),
            install_id: spec.install_id.clone(),
            pool: spec.pool.clone(),
            image_id: spec.image_id.clone(),
            instance_type: spec.instance_type.clone(),
            ssh_user: spec.ssh_user.clone(),
            ssh_public_key: spec.ssh_public_key.clone(),
            tags: spec.tags.clone(),
            launched_at_ms: crate::now_ms(),
        };
        write_json_atomic(&dir.join("instance.json"), &file)?;
        self.spawn_agent(&dir)?;
        self.read_instance(&dir)
            .ok_or_else(|| ProvisionError::Other(format!("instance {instance_id} vanished during launch")))
    }

    async fn describe(&self, install_id: &str) -> Result<Vec<Instance>, ProvisionError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.root.join("instances"))? {
            let entry = entry?;
            if let Some(i) = self.read_instance(&entry.path()) {
                if i.install_id == install_id {
                    out.push(i);
                }
            }
        }
        out.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        Ok(out)
    }

    async fn terminate(&self, instance_ids: &[String]) -> Result<(), ProvisionError> {
        // One that cannot be removed does not keep the rest of the batch alive.
        let mut first_error = None;
        for id in instance_ids {
            if let Err(e) = self.terminate_one(id) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The local agent has no memory image to keep: a hibernating stop is a plain one.
    async fn stop(&self, instance_ids: &[String], _hibernate: bool) -> Result<(), ProvisionError> {
        instance_ids.iter().try_for_each(|id| self.stop_one(id))
    }

    async fn start(&self, instance_ids: &[String]) -> Result<(), ProvisionError> {
        instance_ids.iter().try_for_each(|id| self.start_one(id))
    }

    async fn create_volume(&self, spec: &VolumeSpec) -> Result<Volume, ProvisionError> {
        let provider_id = format!("lvol-{}", spec.volume_id);
        let dir = self.volume_dir(&provider_id)?;
        let file = match self.read_volume(&provider_id) {
            Ok(existing) => existing,
            Err(_) => {
                std::fs::create_dir_all(dir.join("data"))?;
                let file = VolumeFile {
                    provider_id: provider_id.clone(),
                    volume_id: spec.volume_id.clone(),
                    install_id: spec.install_id.clone(),
                    project: spec.project.clone(),
                    size_gb: spec.size_gb,
                    zone: spec.zone.clone(),
                    attached_to: None,
                    created_at_ms: crate::now_ms(),
                    tags: spec.tags.clone(),
                };
                self.write_volume(&file)?;
                file
            }
        };
        Ok(to_volume(file))
    }

    async fn describe_volumes(&self, install_id: &str) -> Result<Vec<Volume>, ProvisionError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.root.join("volumes"))? {
            let entry = entry?;
            if let Some(v) = read_json::<VolumeFile>(&entry.path().join("volume.json")) {
                if v.install_id == install_id {
                    out.push(to_volume(v));
                }
            }
        }
        out.sort_by(|a, b| a.provider_id.cmp(&b.provider_id));
        Ok(out)
    }

    async fn attach_volume(&self, provider_volume_id: &str, instance_id: &str) -> Result<(), ProvisionError> {
        let mut vol = self.read_volume(provider_volume_id)?;
        let vm = self.instance_dir(instance_id)?;
        if !vm.join("instance.json").exists() {
            return Err(ProvisionError::NotFound(format!("instance {instance_id}")));
        }
        match vol.attached_to.as_deref() {
            Some(other) if other != instance_id && self.instance_dir(other)?.exists() => {
                return Err(ProvisionError::Invalid(format!("volume {provider_volume_id} is attached to {other}")))
            }
            _ => {}
        }
        let link = vm.join("dlc");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(self.volume_dir(provider_volume_id)?.join("data"), &link)?;
        vol.attached_to = Some(instance_id.to_string());
        self.write_volume(&vol)
    }

    async fn detach_volume(&self, provider_volume_id: &str, instance_id: &str) -> Result<(), ProvisionError> {
        let mut vol = self.read_volume(provider_volume_id)?;
        if let Ok(vm) = self.instance_dir(instance_id) {
            let link = vm.join("dlc");
            if std::fs::read_link(&link).is_ok() {
                std::fs::remove_file(&link)?;
            }
        }
        if vol.attached_to.as_deref() == Some(instance_id) {
            vol.attached_to = None;
            self.write_volume(&vol)?;
        }
        Ok(())
    }

    async fn delete_volume(&self, provider_volume_id: &str) -> Result<(), ProvisionError> {
        let dir = self.volume_dir(provider_volume_id)?;
        if let Ok(v) = self.read_volume(provider_volume_id) {
            if let Some(vm) = v.attached_to {
                if self.instance_dir(&vm)?.exists() {
                    return Err(ProvisionError::Invalid(format!("volume {provider_volume_id} is attached to {vm}")));
                }
            }
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn to_volume(v: VolumeFile) -> Volume {
    Volume {
        provider_id: v.provider_id,
        volume_id: Some(v.volume_id),
        install_id: v.install_id,
        zone: v.zone,
        attached_to: v.attached_to,
        created_at_ms: v.created_at_ms,
    }
}
