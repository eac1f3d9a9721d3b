//! Cloud providers for vmfleet.
//!
//! A [`Provider`] launches, describes and terminates instances and manages Docker-layer-cache
//! volumes. Every object a provider creates carries the installation id and the vmfleet id of
//! the VM or volume it belongs to, and the vmfleet id is the idempotency token: launching the
//! same VM twice yields one instance.
//!
//! # Design
//! The fleet core records its intent in the store before it calls a provider, so a provider
//! never has to remember anything the store does not already know. Describe calls return every
//! object tagged with the installation, so the garbage collector can compare the two by id.
//! Deleting something that is already gone is success.

pub mod asg;
pub mod ec2;
pub mod local;
pub mod ssh;
pub mod tls;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Tag naming the installation an object belongs to.
pub const TAG_INSTALL: &str = "vmfleet:install";
/// Tag naming the vmfleet VM id of an instance.
pub const TAG_VM: &str = "vmfleet:vm";
/// Tag naming the vmfleet volume id of a volume.
pub const TAG_VOLUME: &str = "vmfleet:volume";
/// Tag naming the pool of an instance.
pub const TAG_POOL: &str = "vmfleet:pool";
/// Tag naming the project that owns a volume.
pub const TAG_PROJECT: &str = "vmfleet:project";

/// Errors a provider reports. Callers decide on retries from the variant.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The instance or volume does not exist (any more).
    #[error("not found: {0}")]
    NotFound(String),
    /// The cloud has no capacity for this instance type or zone right now.
    #[error("insufficient capacity: {0}")]
    InsufficientCapacity(String),
    /// The cloud asked us to slow down.
    #[error("throttled: {0}")]
    Throttled(String),
    /// The request can never succeed as made (bad image, bad type, wrong state).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Anything else: I/O, network, an unexpected answer. May succeed when retried.
    #[error("provider error: {0}")]
    Other(String),
}

impl From<std::io::Error> for ProvisionError {
    fn from(e: std::io::Error) -> Self {
        ProvisionError::Other(e.to_string())
    }
}

/// Operating system family of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// Linux, reached as the `circleci` user over SSH.
    Linux,
    /// Windows, reached over OpenSSH Server.
    Windows,
}

/// An image as the cloud describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFacts {
    /// Image id.
    pub image_id: String,
    /// `available`, `pending`, `failed`, …
    pub state: String,
    /// Linux or Windows.
    pub platform: Platform,
    /// `x86_64` or `arm64`.
    pub architecture: String,
}

/// What to launch. `vm_id` is the idempotency token.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The vmfleet VM id; launching the same id twice yields one instance.
    pub vm_id: String,
    /// The installation id, tagged on the instance.
    pub install_id: String,
    /// Pool label (`executor/image/resource_class`), tagged on the instance.
    pub pool: String,
    /// Image to boot: an AMI id for EC2, an image name for the local provider.
    pub image_id: String,
    /// Instance type (EC2) or a label (local).
    pub instance_type: String,
    /// Types to try, in order, when `instance_type` has no capacity.
    pub fallback_instance_types: Vec<String>,
    /// Which market to buy in.
    pub capacity: Capacity,
    /// Platform of the image.
    pub platform: Platform,
    /// User the VM's key is installed for.
    pub ssh_user: String,
    /// The VM's public key in OpenSSH format.
    pub ssh_public_key: String,
    /// Extra tags from the operator's configuration.
    pub tags: BTreeMap<String, String>,
    /// The caller has just described the installation's instances and none is this VM's: the
    /// provider skips its own lookup by the VM's tag (a burst of 200 launches would otherwise
    /// make 200 describe calls). On EC2 the VM id as client token still keeps a repeated
    /// launch from making a second instance.
    pub skip_lookup: bool,
    /// Launch it able to hibernate (EC2: `HibernationOptions`), so that a stop for the stopped
    /// tier keeps its memory. On-demand only: a spot or one-time instance cannot be stopped.
    pub hibernate: bool,
}

/// Which market an instance is bought in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capacity {
    /// On-demand only.
    #[default]
    OnDemand,
    /// Spot only.
    Spot,
    /// Spot first; on-demand when no spot capacity is found for any type or zone.
    SpotWithFallback,
}

impl LaunchSpec {
    /// `instance_type` followed by the fallbacks.
    pub fn instance_types(&self) -> Vec<&str> {
        std::iter::once(self.instance_type.as_str())
            .chain(self.fallback_instance_types.iter().map(String::as_str))
            .collect()
    }
}

/// Life-cycle state of a provider instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Launched, not yet running.
    Pending,
    /// Running; the address may be used.
    Running,
    /// Stopping or shutting down.
    Stopping,
    /// Stopped, keeping its volumes: [`Provider::start`] brings it back.
    Stopped,
    /// Gone.
    Terminated,
}

/// An instance as the provider sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Instance {
    /// Provider id (`i-…` on EC2).
    pub instance_id: String,
    /// The vmfleet VM id from the instance's tags, if any.
    pub vm_id: Option<String>,
    /// The installation id from the instance's tags.
    pub install_id: String,
    /// Current state.
    pub state: InstanceState,
    /// Address to reach SSH on, once known.
    pub host: Option<String>,
    /// SSH port.
    pub ssh_port: u16,
    /// The host's SSH public key in OpenSSH format, when the provider knows it.
    pub host_key: Option<String>,
    /// Availability zone.
    pub zone: String,
    /// The instance type it runs as (a fallback type when the first had no capacity); `None`
    /// where the driver has no types.
    #[serde(default)]
    pub instance_type: Option<String>,
    /// Launch time, milliseconds since the Unix epoch.
    pub launched_at_ms: i64,
}

/// What volume to create. `volume_id` is the idempotency token.
#[derive(Debug, Clone)]
pub struct VolumeSpec {
    /// The vmfleet volume id.
    pub volume_id: String,
    /// The installation id.
    pub install_id: String,
    /// The project the volume belongs to.
    pub project: String,
    /// Size in GiB.
    pub size_gb: u32,
    /// Availability zone to create it in.
    pub zone: String,
    /// Extra tags from the operator's configuration.
    pub tags: BTreeMap<String, String>,
}

/// A volume as the provider sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Volume {
    /// Provider id (`vol-…` on EC2).
    pub provider_id: String,
    /// The vmfleet volume id from the tags, if any.
    pub volume_id: Option<String>,
    /// The installation id from the tags.
    pub install_id: String,
    /// Availability zone.
    pub zone: String,
    /// The instance it is attached to, if any.
    pub attached_to: Option<String>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: i64,
}

/// A cloud provider.
///
/// # Guarantees
/// Every method is idempotent: launching a VM id that already has an instance returns that
/// instance, terminating or deleting something already gone succeeds, attaching a volume that
/// is already attached to the same instance succeeds.
///
/// # Errors
/// [`ProvisionError`]: `NotFound` for a missing object where absence matters (attach, detach),
/// `InsufficientCapacity` and `Throttled` for transient cloud conditions, `Invalid` for requests
/// that cannot succeed, `Other` for everything else.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Short driver name (`local`, `ec2`).
    fn kind(&self) -> &'static str;
    /// Launches an instance for `spec.vm_id`, or returns the one already launched for it.
    async fn launch(&self, spec: &LaunchSpec) -> Result<Instance, ProvisionError>;
    /// Every live instance tagged with `install_id`, in one pass.
    async fn describe(&self, install_id: &str) -> Result<Vec<Instance>, ProvisionError>;
    /// Terminates the given instances; ids that are already gone are ignored.
    async fn terminate(&self, instance_ids: &[String]) -> Result<(), ProvisionError>;
    /// Stops running instances, keeping their volumes and identity (the stopped tier); ids
    /// already stopping or stopped are success. `NotFound` when one is gone. With
    /// `hibernate`, memory is saved to the root volume where the instance was launched for it;
    /// where it cannot hibernate, it is stopped plainly.
    async fn stop(&self, instance_ids: &[String], hibernate: bool) -> Result<(), ProvisionError>;
    /// Starts stopped instances again, with the same volumes and keys; ids already pending or
    /// running are success. `InsufficientCapacity` when the cloud cannot start one now (the
    /// caller falls back to a fresh launch), `NotFound` when one is gone.
    async fn start(&self, instance_ids: &[String]) -> Result<(), ProvisionError>;
    /// Creates a volume for `spec.volume_id`, or returns the one already created for it.
    async fn create_volume(&self, spec: &VolumeSpec) -> Result<Volume, ProvisionError>;
    /// Every volume tagged with `install_id`.
    async fn describe_volumes(&self, install_id: &str) -> Result<Vec<Volume>, ProvisionError>;
    /// Attaches a volume to an instance and makes it the instance's Docker data root.
    async fn attach_volume(&self, provider_volume_id: &str, instance_id: &str) -> Result<(), ProvisionError>;
    /// Detaches a volume from an instance.
    async fn detach_volume(&self, provider_volume_id: &str, instance_id: &str) -> Result<(), ProvisionError>;
    /// A shell script to run on the instance (over SSH, as the VM's user) after
    /// [`Provider::attach_volume`], making the attached volume Docker's data root; `None` when
    /// attaching already did that (the local provider binds the directory).
    fn data_root_script(&self, _provider_volume_id: &str) -> Option<String> {
        None
    }
    /// Deletes a volume; a volume that is already gone is success.
    async fn delete_volume(&self, provider_volume_id: &str) -> Result<(), ProvisionError>;
    /// What the cloud knows of an image id: `Ok(None)` when this driver has no images to check
    /// (the local provider); `NotFound` when the cloud has no such image.
    async fn describe_image(&self, _image_id: &str) -> Result<Option<ImageFacts>, ProvisionError> {
        Ok(None)
    }
    /// Cloud API calls made so far, by operation (for `/metrics`); empty for drivers without any.
    fn call_counts(&self) -> BTreeMap<&'static str, u64> {
        BTreeMap::new()
    }
}

/// Milliseconds since the Unix epoch, for drivers that stamp what they create.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
