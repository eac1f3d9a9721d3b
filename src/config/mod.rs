//! Configuration: one YAML file, every key overridable from the environment.
//!
//! `VMFLEET__SECTION__KEY=value` sets `section.key` (keys are lower-cased; values are read as
//! YAML scalars, so `true`, `3` and `180s` keep their types). Unknown keys are errors. Defaults
//! follow the operations guide: SSH connect timeout 180 s, VM start timeout 300 s, long-running
//! task timeout 6 h, DLC volume inactivity 14 days, private IPs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vmfleet_images::{Arch, Catalog, Executor, Image, Platform};

/// A configuration problem, naming the key (and line, where the file has one).
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ConfigError {
    /// File (and line) or environment variable.
    pub origin: String,
    /// What is wrong.
    pub message: String,
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Installation id; generated and stored on first start when absent.
    pub install_id: Option<String>,
    /// Where the embedded database, the local provider's VMs and the admin token live.
    pub data_dir: PathBuf,
    /// API listen address.
    pub listen: SocketAddr,
    /// Database.
    pub database: DatabaseConfig,
    /// Cloud provider.
    pub provider: ProviderConfig,
    /// The guide's three timeouts and DLC inactivity.
    pub timeouts: Timeouts,
    /// Resource classes by name.
    pub resource_classes: BTreeMap<String, ResourceClass>,
    /// Custom images and aliases.
    pub images: ImagesConfig,
    /// Warm pools.
    pub pools: Vec<PoolConfig>,
    /// Fleet-wide bounds.
    pub limits: Limits,
    /// DLC volumes.
    pub volumes: VolumesConfig,
    /// API tokens (hashed).
    pub auth: AuthConfig,
    /// Outbound proxies.
    pub proxy: ProxyConfig,
    /// How often the service reconciles even when nothing happened.
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// Directory of scaling policy files (`*.yaml`), reloaded when they change.
    pub policies_dir: Option<PathBuf>,
    /// Garbage collection.
    pub gc: GcConfig,
    /// Publishing the fleet's metrics to CloudWatch and DogStatsD, and reading alarms.
    pub metrics_out: MetricsOut,
    /// The job pipeline: claims, leases and how much this process runs at once.
    pub jobs: JobsConfig,
    /// The key that seals jobs' secrets at rest.
    pub secrets: SecretsConfig,
    /// Where jobs' caches, workspaces, artifacts and test results go, and for how long.
    pub storage: crate::objects::StorageConfig,
}

/// Where the secrets key comes from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// The key file (base64 of 32 bytes, mode 0600); default `<data_dir>/secrets.key`, generated
    /// on the installation's first start.
    pub key_file: Option<PathBuf>,
    /// The key itself, instead of a file: set it as VMFLEET__SECRETS__KEY, not in a file.
    pub key: Option<Secret>,
}

/// Job pipeline settings.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// How long a claim on a job task lasts without a heartbeat; a task of a process that died
    /// is requeued once it expires.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Most job tasks this process runs at once.
    pub max_running: usize,
    /// Most times a task is started (a requeue after a lost claim counts); then it ends as an
    /// infrastructure failure.
    pub max_attempts: u32,
    /// How long a `run` step may print nothing when its config gives no `no_output_timeout`.
    #[serde(with = "humantime_serde")]
    pub no_output_timeout: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            max_running: 32,
            max_attempts: 3,
            no_output_timeout: Duration::from_secs(600),
        }
    }
}

/// Where the fleet's metrics go, besides `/metrics`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsOut {
    /// CloudWatch PutMetricData, when set.
    pub cloudwatch: Option<CloudWatchOut>,
    /// DogStatsD over UDP (Datadog agent, Telegraf), when set.
    pub dogstatsd: Option<DogStatsdOut>,
    /// How often the alarms of alarm-driven pools are read.
    #[serde(with = "humantime_serde")]
    pub alarm_poll: Duration,
    /// How often groups with vmfleet's termination hook are checked for instances waiting to
    /// terminate.
    #[serde(with = "humantime_serde")]
    pub lifecycle_poll: Duration,
}

impl Default for MetricsOut {
    fn default() -> Self {
        Self {
            cloudwatch: None,
            dogstatsd: None,
            alarm_poll: Duration::from_secs(30),
            lifecycle_poll: Duration::from_secs(15),
        }
    }
}

/// CloudWatch publishing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudWatchOut {
    /// Namespace.
    #[serde(default = "default_cw_namespace")]
    pub namespace: String,
    /// How often.
    #[serde(default = "default_cw_interval", with = "humantime_serde")]
    pub interval: Duration,
}

fn default_cw_namespace() -> String {
    "vmfleet".into()
}
fn default_cw_interval() -> Duration {
    Duration::from_secs(60)
}

/// DogStatsD publishing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DogStatsdOut {
    /// `host:port` of the agent (UDP), such as `127.0.0.1:8125`.
    pub address: String,
    /// Metric name prefix.
    #[serde(default = "default_statsd_prefix")]
    pub prefix: String,
    /// Tags added to every metric (`env:prod`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// How often.
    #[serde(default = "default_statsd_interval", with = "humantime_serde")]
    pub interval: Duration,
}

fn default_statsd_prefix() -> String {
    "circle".into()
}
fn default_statsd_interval() -> Duration {
    Duration::from_secs(10)
}

/// Database settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://…` for production; absent means SQLite in the data directory.
    pub url: Option<String>,
    /// Pool size.
    pub max_connections: u32,
}

/// Provider selection and settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderConfig {
    /// `local` (the embedded default).
    pub kind: ProviderKind,
    /// Use instances' public addresses (for developer SSH access) instead of private ones.
    pub use_public_ip: bool,
    /// Local provider settings.
    pub local: LocalConfig,
    /// EC2 settings.
    pub ec2: Ec2Config,
    /// Operator tags added to every instance and volume.
    pub tags: BTreeMap<String, String>,
}

/// Provider kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Sandboxes on this host.
    #[default]
    Local,
    /// Amazon EC2.
    Ec2,
}

/// A secret from the config: never printed, never serialized.
#[derive(Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// EC2 settings (the old VM Provider settings page, and more).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ec2Config {
    /// AWS region.
    pub region: String,
    /// Endpoint for emulators and VPC endpoints.
    pub endpoint_url: Option<String>,
    /// Subnets to launch into.
    pub subnet_ids: Vec<String>,
    /// Security group of every instance.
    pub security_group_id: Option<String>,
    /// IAM instance profile name given to instances.
    pub instance_profile: Option<String>,
    /// Access key id; without it the SDK's default chain (instance profile, environment).
    pub access_key_id: Option<String>,
    /// Secret access key. Never logged or printed.
    pub secret_access_key: Option<Secret>,
    /// Reach every instance's SSH here (`host:port`) instead of its address: emulators, tunnels.
    pub ssh_address_override: Option<String>,
    /// Sustained mutating EC2 calls per second.
    pub mutations_per_second: f64,
    /// Burst of mutating EC2 calls.
    pub mutation_burst: u32,
    /// Attempts of the SDK's adaptive retry per call.
    pub sdk_max_attempts: u32,
    /// Our own backoff retries of a throttled call after that.
    pub throttle_retries: usize,
}

/// Outbound proxies for cloud APIs. Unset keys fall back to `HTTP_PROXY`, `HTTPS_PROXY` and
/// `NO_PROXY`; the instance metadata address 169.254.169.254 is never proxied.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Proxy for `http://` endpoints.
    pub http: Option<Secret>,
    /// Proxy for `https://` endpoints.
    pub https: Option<Secret>,
    /// Hosts, domains and networks that bypass the proxies.
    pub no_proxy: Option<String>,
}

impl Default for Ec2Config {
    fn default() -> Self {
        Self {
            region: String::new(),
            endpoint_url: None,
            subnet_ids: Vec::new(),
            security_group_id: None,
            instance_profile: None,
            access_key_id: None,
            secret_access_key: None,
            ssh_address_override: None,
            mutations_per_second: 5.0,
            mutation_burst: 20,
            sdk_max_attempts: 3,
            throttle_retries: 5,
        }
    }
}

/// Local provider settings.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    /// Where VM directories live; default `<data_dir>/local`.
    pub root: Option<PathBuf>,
    /// The program started as each VM's agent; default this executable.
    pub agent_program: Option<PathBuf>,
}

/// Timeouts from the operations guide.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Waiting for SSH to connect to a VM.
    #[serde(with = "humantime_serde")]
    pub ssh_connect: Duration,
    /// From request to ready.
    #[serde(with = "humantime_serde")]
    pub vm_start: Duration,
    /// How long a task may hold a VM.
    #[serde(with = "humantime_serde")]
    pub long_running_task: Duration,
    /// Unused DLC volumes are deleted after this.
    #[serde(with = "humantime_serde")]
    pub dlc_inactivity: Duration,
}

/// A resource class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceClass {
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in GiB.
    pub memory_gb: f64,
    /// GPUs.
    #[serde(default)]
    pub gpus: u32,
    /// CPU architecture.
    #[serde(default = "default_arch")]
    pub arch: Arch,
    /// Platform.
    #[serde(default = "default_platform")]
    pub platform: Platform,
    /// EC2 instance type.
    pub instance_type: String,
    /// Types to try, in order, when `instance_type` has no capacity.
    #[serde(default)]
    pub fallback_instance_types: Vec<String>,
}

fn default_arch() -> Arch {
    Arch::X86_64
}
fn default_platform() -> Platform {
    Platform::Linux
}

/// Custom AMIs per region (the old settings page's fields) and extra images.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesConfig {
    /// Custom Linux AMI per region, for `machine` and (unless set separately) remote Docker.
    pub custom_linux: BTreeMap<String, String>,
    /// Custom remote-Docker AMI per region.
    pub custom_remote_docker: BTreeMap<String, String>,
    /// Custom Windows AMI per region.
    pub custom_windows: BTreeMap<String, String>,
    /// Custom GPU AMI per region.
    pub custom_gpu: BTreeMap<String, String>,
    /// More images.
    pub extra: Vec<Image>,
    /// More aliases: alias → `name:version`.
    pub aliases: BTreeMap<String, String>,
}

/// A warm pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Executor.
    pub executor: Executor,
    /// Image alias.
    #[serde(default = "default_image")]
    pub image: String,
    /// Resource class.
    #[serde(default = "default_class")]
    pub resource_class: String,
    /// Preallocated (warm) VMs to keep ready.
    #[serde(default, alias = "preallocated")]
    pub min_idle: u32,
    /// Hard bound on the pool's instances.
    #[serde(default)]
    pub max_instances: Option<u32>,
    /// `on-demand`, `spot` or `spot-with-fallback` (EC2).
    #[serde(default)]
    pub capacity: vmfleet_provisioner::Capacity,
    /// Instance types to try in order; default the resource class's type and its fallbacks.
    #[serde(default)]
    pub instance_types: Vec<String>,
    /// Most of the warm target (a share; at least one VM) replaced at once after an image
    /// promotion or when VMs reach `max_age`.
    #[serde(default = "default_replace_share")]
    pub max_replace_share: f64,
    /// Idle VMs above the warm target are retired once idle this long.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Warm VMs older than this are replaced (daily cycling); `0s` turns cycling off.
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub max_age: Duration,
    /// Extra warm VMs as a share of busy ones (0.1: one more warm VM per ten busy).
    #[serde(default)]
    pub scale_factor: f64,
    /// Working-hours windows: while one matches (the last matching one wins), its `min_idle`
    /// holds instead of the pool's.
    #[serde(default)]
    pub schedules: Vec<ScheduleConfig>,
    /// Moves the warm target by the steps of a CloudWatch alarm.
    #[serde(default)]
    pub step_scaling: Option<PoolStepScaling>,
    /// Sizes the warm target from a forecast of arrivals within the coming boot window.
    #[serde(default)]
    pub forecast: Option<ForecastConfig>,
    /// Pre-initialized stopped VMs behind the running warm ones.
    #[serde(default)]
    pub stopped: Option<StoppedConfig>,
}

/// A pool's stopped tier.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoppedConfig {
    /// Stopped VMs to keep.
    #[serde(default)]
    pub min: u32,
    /// Most stopped VMs (they also count against `max_instances`).
    #[serde(default)]
    pub max: Option<u32>,
    /// Raises the stopped target to a forecast of what arrives within a fresh boot.
    #[serde(default)]
    pub forecast: Option<ForecastConfig>,
    /// Launch the tier's VMs able to hibernate and hibernate them (EC2), so that a start
    /// resumes memory rather than booting the OS again. EC2 needs an instance type and AMI that
    /// support it and an encrypted root volume as large as the RAM; where a stop cannot
    /// hibernate, it is a plain stop.
    #[serde(default)]
    pub hibernate: bool,
}

/// Forecast-driven warm target of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForecastConfig {
    /// Which quantile of the tasks that arrived per window to keep warm (0.9: nine windows in
    /// ten are covered).
    #[serde(default = "default_quantile")]
    pub quantile: f64,
    /// The window: about the p95 boot time of the pool's instances.
    #[serde(default = "default_horizon", with = "humantime_serde")]
    pub horizon: Duration,
    /// Weight of the last half hour against the same time of day on the previous seven days.
    #[serde(default = "default_recent_weight")]
    pub recent_weight: f64,
}

fn default_quantile() -> f64 {
    0.9
}
fn default_horizon() -> Duration {
    Duration::from_secs(180)
}
fn default_recent_weight() -> f64 {
    0.5
}

impl ForecastConfig {
    /// As the planner takes it.
    pub fn forecast(&self) -> vmfleet_scaler::forecast::Forecast {
        vmfleet_scaler::forecast::Forecast {
            horizon_ms: self.horizon.as_millis() as i64,
            quantile: self.quantile,
            recent_weight: self.recent_weight,
        }
    }
}

/// A schedule window of a pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Five-field cron; the window is every minute it matches.
    pub cron: String,
    /// IANA time zone the cron is read in.
    #[serde(default = "default_tz")]
    pub timezone: String,
    /// Warm VMs to keep ready meanwhile.
    pub min_idle: u32,
}

fn default_tz() -> String {
    "UTC".into()
}

/// One step: the breach (metric value minus threshold) range it covers, and the adjustment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    /// Lower bound of the breach; none: −∞.
    #[serde(default)]
    pub lower: Option<f64>,
    /// Upper bound of the breach; none: +∞.
    #[serde(default)]
    pub upper: Option<f64>,
    /// The adjustment.
    pub adjustment: i64,
}

/// Alarm-driven warm target of a pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolStepScaling {
    /// Name of the CloudWatch alarm to follow.
    pub alarm: String,
    /// `ChangeInCapacity` (default), `PercentChangeInCapacity` or `ExactCapacity`.
    #[serde(default = "default_adjustment_type")]
    pub adjustment_type: String,
    /// The steps.
    pub steps: Vec<StepConfig>,
    /// No further adjustment within this of the last.
    #[serde(default = "default_cooldown", with = "humantime_serde")]
    pub cooldown: Duration,
}

/// `ChangeInCapacity`.
pub fn default_adjustment_type() -> String {
    "ChangeInCapacity".into()
}
fn default_cooldown() -> Duration {
    Duration::from_secs(300)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_max_age() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_replace_share() -> f64 {
    0.25
}

fn default_image() -> String {
    "default".into()
}
fn default_class() -> String {
    "medium".into()
}

/// Fleet-wide bounds (the guide had none).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Instances in every pool and state together.
    pub max_instances: Option<u32>,
    /// DLC volumes together.
    pub max_volumes: Option<u32>,
}

/// DLC volume settings.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VolumesConfig {
    /// Size of a new volume, GiB.
    pub size_gb: u32,
}

/// API tokens.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Tokens, each stored as the SHA-256 of the token.
    pub tokens: Vec<TokenConfig>,
}

/// One configured token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Name, for audit.
    pub name: String,
    /// Hex SHA-256 of the token (`vmfleet tokens hash` prints it).
    pub sha256: String,
    /// Scopes: `admin`, `operator`, `agent`.
    pub scopes: Vec<String>,
}

/// Garbage-collection settings.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    /// Unknown tagged instances younger than this are left alone.
    #[serde(with = "humantime_serde")]
    pub orphan_grace: Duration,
    /// Most actions in one pass.
    pub budget: usize,
    /// How often the collector runs inside the reconcile loop.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A task still waiting for a VM after this is failed with that reason.
    #[serde(with = "humantime_serde")]
    pub task_wait_limit: Duration,
    /// Most DLC volumes one project keeps; beyond it the least recently used available ones go.
    pub volumes_per_project: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            install_id: None,
            data_dir: default_data_dir(),
            listen: SocketAddr::from(([127, 0, 0, 1], 3001)),
            database: DatabaseConfig::default(),
            provider: ProviderConfig::default(),
            timeouts: Timeouts::default(),
            resource_classes: default_resource_classes(),
            images: ImagesConfig::default(),
            pools: Vec::new(),
            limits: Limits::default(),
            volumes: VolumesConfig::default(),
            auth: AuthConfig::default(),
            proxy: ProxyConfig::default(),
            reconcile_interval: Duration::from_secs(1),
            policies_dir: None,
            gc: GcConfig::default(),
            metrics_out: MetricsOut::default(),
            jobs: JobsConfig::default(),
            secrets: SecretsConfig::default(),
            storage: crate::objects::StorageConfig::default(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self { url: None, max_connections: 8 }
    }
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            kind: ProviderKind::Local,
            use_public_ip: false,
            local: LocalConfig::default(),
            ec2: Ec2Config::default(),
            tags: BTreeMap::new(),
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            ssh_connect: Duration::from_secs(180),
            vm_start: Duration::from_secs(300),
            long_running_task: Duration::from_secs(6 * 3600),
            dlc_inactivity: Duration::from_secs(14 * 86400),
        }
    }
}

impl Default for VolumesConfig {
    fn default() -> Self {
        Self { size_gb: 100 }
    }
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            orphan_grace: Duration::from_secs(600),
            budget: 50,
            interval: Duration::from_secs(30),
            task_wait_limit: Duration::from_secs(3600),
            volumes_per_project: 50,
        }
    }
}

/// `$VMFLEET_DATA_DIR`, else `$XDG_DATA_HOME/vmfleet`, else `~/.local/share/vmfleet`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("VMFLEET_DATA_DIR") {
        return PathBuf::from(d);
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(x).join("vmfleet");
    }
    std::env::var_os("HOME")
        .map_or_else(|| PathBuf::from(".vmfleet"), |h| PathBuf::from(h).join(".local/share/vmfleet"))
}

/// CircleCI's machine resource classes, with the EC2 instance types that match them.
pub fn default_resource_classes() -> BTreeMap<String, ResourceClass> {
    let rc = |vcpus, memory_gb, gpus, arch, platform, it: &str| ResourceClass {
        vcpus,
        memory_gb,
        gpus,
        arch,
        platform,
        instance_type: it.to_string(),
        fallback_instance_types: Vec::new(),
    };
    use Arch::{Arm64, X86_64};
    use Platform::{Linux, Windows};
    BTreeMap::from([
        ("medium".into(), rc(2, 7.5, 0, X86_64, Linux, "m5.large")),
        ("large".into(), rc(4, 15.0, 0, X86_64, Linux, "m5.xlarge")),
        ("xlarge".into(), rc(8, 32.0, 0, X86_64, Linux, "m5.2xlarge")),
        ("2xlarge".into(), rc(16, 64.0, 0, X86_64, Linux, "m5.4xlarge")),
        ("arm.medium".into(), rc(2, 8.0, 0, Arm64, Linux, "m6g.large")),
        ("arm.large".into(), rc(4, 16.0, 0, Arm64, Linux, "m6g.xlarge")),
        ("windows.medium".into(), rc(4, 15.0, 0, X86_64, Windows, "m5.xlarge")),
        ("windows.large".into(), rc(8, 30.0, 0, X86_64, Windows, "m5.2xlarge")),
        ("gpu.nvidia.small".into(), rc(4, 16.0, 1, X86_64, Linux, "g4dn.xlarge")),
        ("gpu.nvidia.medium".into(), rc(8, 32.0, 1, X86_64, Linux, "g4dn.2xlarge")),
        ("gpu.nvidia.medium.multi".into(), rc(48, 192.0, 4, X86_64, Linux, "g4dn.12xlarge")),
        ("gpu.nvidia.large".into(), rc(8, 61.0, 1, X86_64, Linux, "p3.2xlarge")),
    ])
}

mod load;

pub use load::{from_yaml_str, requirement, steps};
