//! The fleet core: hands tasks their VMs and runs the reconcile loop.
//!
//! # Design
//! Requests and releases only write intent to the store and wake the reconciler; the
//! reconciler observes (store + one provider describe), plans (the `scaler` and `gc`
//! planners), re-checks each action with a conditional update, and acts through the provider.
//! Because every step starts from the store, a restart at any moment resumes where it stopped:
//! a `requested` VM is launched (the VM id is the idempotency token), a `releasing` one is
//! terminated. Only one replica reconciles at a time (a PostgreSQL advisory lock; SQLite has
//! one process).

mod clock;
mod gc;
mod images;
mod lifecycle;
mod publish;
mod reconcile;
mod reset;
mod scale;
mod signals;
mod tasks;

pub use clock::{Clock, ManualClock, SystemClock};
pub use gc::gc_settings;
use images::image_of;
pub use images::RegisterImage;
pub use reset::ResetReport;
pub use scale::{observe, scaler_policy, vm_view, ScaleSnapshot};

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{info, warn};
use vmfleet_images::{Catalog, Executor};
use vmfleet_provisioner::{ssh, InstanceState, LaunchSpec, Platform, Provider, ProvisionError, VolumeSpec};

use crate::config::{requirement, Config, ProviderKind};
use crate::metrics::Metrics;
use crate::store::{short_id, AuditEvent, Db, NewVm, Store, StoreError, TaskRow, VmRow, VmState, VolumeRow};

/// Errors the API maps to status codes. Store and provider errors keep their sources, so a
/// caller can still tell a throttled or capacity-starved cloud from a broken request.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The request names something that does not exist or does not fit (400).
    #[error("{0}")]
    BadRequest(String),
    /// Not found (404).
    #[error("{0}")]
    NotFound(String),
    /// Conflicts with the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// The database (500).
    #[error("store: {0}")]
    Store(#[source] StoreError),
    /// A cloud call, with what was being done (503 when retrying may help, else 500).
    #[error("{what}: {source}")]
    Provider {
        /// What was being done.
        what: String,
        /// The provider's error.
        #[source]
        source: ProvisionError,
    },
    /// Key or certificate generation, encoding, SSH set-up on a VM (500).
    #[error("{what}: {source}")]
    Other {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A broken invariant with no underlying error (500).
    #[error("{0}")]
    Internal(String),
}

impl FleetError {
    /// Wraps a provider error with what was being done: `.map_err(FleetError::provider("describe"))`.
    pub fn provider(what: impl Into<String>) -> impl FnOnce(ProvisionError) -> FleetError {
        let what = what.into();
        move |source| FleetError::Provider { what, source }
    }

    /// Wraps any other error with what was being done.
    pub fn other<E: std::error::Error + Send + Sync + 'static>(
        what: impl Into<String>,
    ) -> impl FnOnce(E) -> FleetError {
        let what = what.into();
        move |source| FleetError::Other { what, source: Box::new(source) }
    }

    /// Whether the same call may succeed later (throttling, capacity, a lost connection).
    pub fn is_transient(&self) -> bool {
        match self {
            FleetError::Provider { source, .. } => {
                matches!(
                    source,
                    ProvisionError::Throttled(_) | ProvisionError::InsufficientCapacity(_) | ProvisionError::Other(_)
                )
            }
            FleetError::Store(StoreError::Db(_)) => true,
            _ => false,
        }
    }

    /// Whether the store refused the change for want of disk space.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, FleetError::Store(e) if e.is_disk_full())
    }
}

impl From<StoreError> for FleetError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => FleetError::NotFound(m),
            StoreError::Conflict(m) => FleetError::Conflict(m),
            e => FleetError::Store(e),
        }
    }
}

/// A request for a VM.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    /// `machine` or `remote-docker`.
    pub executor: String,
    /// Image alias or `name:version`.
    #[serde(default = "default_image")]
    pub image: String,
    /// Resource class.
    #[serde(default = "default_class")]
    pub resource_class: String,
    /// Project the task belongs to (DLC volumes are per project).
    pub project: String,
    /// Whether the task wants its project's Docker-layer-cache volume.
    #[serde(default)]
    pub docker_layer_caching: bool,
}

fn default_image() -> String {
    "default".into()
}
fn default_class() -> String {
    "medium".into()
}

pub use vmfleet_scaler::pool_key;

/// The fleet service.
pub struct Fleet {
    /// The store.
    pub store: Store,
    /// The provider.
    pub provider: Arc<dyn Provider>,
    /// Configuration.
    pub config: Arc<Config>,
    /// Image catalog: the configuration's, plus what was registered and promoted.
    catalog: std::sync::RwLock<Catalog>,
    /// Installation id.
    pub install_id: String,
    /// Metrics.
    pub metrics: Metrics,
    wake: Notify,
    checking: Mutex<HashSet<String>>,
    /// Where the time comes from.
    clock: Arc<dyn Clock>,
    /// Periodic jobs (collection, alarms, publishing) by name: when each last ran, and how many
    /// times it has run.
    timers: Mutex<HashMap<&'static str, (i64, u64)>>,
    /// Auto Scaling and CloudWatch clients, made on first use.
    aws: tokio::sync::OnceCell<crate::asg::Aws>,
    /// The scaling policies in force.
    policies: std::sync::RwLock<Arc<crate::policy::Policies>>,
    /// Why the policy files on disk were refused, while the last good ones stay in force.
    policy_error: std::sync::RwLock<Option<String>>,
    /// The store error that stopped the last reconcile pass, and since when passes fail so;
    /// `None` once a pass completes.
    store_fault: Mutex<Option<(i64, String)>>,
    /// Alarm-driven warm targets by pool: (target, when it last changed).
    step_targets: Mutex<HashMap<String, (u32, Option<i64>)>>,
    /// Arrivals per pool for the forecast, and the newest arrival time read.
    arrivals: tokio::sync::Mutex<(HashMap<String, vmfleet_scaler::forecast::History>, i64)>,
    /// The forecast targets, computed at most once a minute.
    forecast_targets: Mutex<vmfleet_scaler::forecast::Targets>,
    /// The stopped tier's forecast targets, per pool.
    stopped_targets: Mutex<vmfleet_scaler::forecast::Targets>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").field("install_id", &self.install_id).finish_non_exhaustive()
    }
}

/// Builds the configured provider.
///
/// # Errors
/// When the provider cannot be set up.
pub async fn build_provider(config: &Config) -> anyhow::Result<Arc<dyn Provider>> {
    match config.provider.kind {
        ProviderKind::Ec2 => {
            let settings = config.ec2_settings();
            Ok(Arc::new(vmfleet_provisioner::ec2::Ec2Provider::new(settings).await))
        }
        ProviderKind::Local => {
            let root = config.provider.local.root.clone().unwrap_or_else(|| config.data_dir.join("local"));
            let program = match &config.provider.local.agent_program {
                Some(p) => p.clone(),
                None => std::env::current_exe()?,
            };
            Ok(Arc::new(vmfleet_provisioner::local::LocalProvider::new(root, program)?))
        }
    }
}

impl Fleet {
    /// A fleet over `store` and `provider`.
    ///
    /// # Errors
    /// [`StoreError`] when the installation id cannot be read or set.
    pub async fn new(config: Config, store: Store, provider: Arc<dyn Provider>) -> Result<Arc<Self>, StoreError> {
        Self::with_clock(config, store, provider, Arc::new(SystemClock)).await
    }

    /// [`Fleet::new`] with time from `clock` (a [`ManualClock`] in tests).
    ///
    /// # Errors
    /// As [`Fleet::new`].
    pub async fn with_clock(
        config: Config,
        store: Store,
        provider: Arc<dyn Provider>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, StoreError> {
        let install_id = store.install_id(config.install_id.as_deref()).await?;
        let catalog = std::sync::RwLock::new(config.catalog());
        let config_for_policies = config.clone();
        let fleet = Arc::new(Self {
            store,
            provider,
            catalog,
            install_id,
            config: Arc::new(config),
            metrics: Metrics::default(),
            wake: Notify::new(),
            checking: Mutex::new(HashSet::new()),
            clock,
            timers: Mutex::new(HashMap::new()),
            aws: tokio::sync::OnceCell::new(),
            policies: std::sync::RwLock::new(Arc::new(crate::policy::Policies::from_config(&config_for_policies))),
            policy_error: std::sync::RwLock::new(None),
            store_fault: Mutex::new(None),
            step_targets: Mutex::new(HashMap::new()),
            arrivals: tokio::sync::Mutex::new((HashMap::new(), 0)),
            forecast_targets: Mutex::new(vmfleet_scaler::forecast::Targets::default()),
            stopped_targets: Mutex::new(vmfleet_scaler::forecast::Targets::default()),
        });
        fleet.refresh_catalog().await?;
        Ok(fleet)
    }

    /// The image catalog as it stands.
    pub fn catalog(&self) -> Catalog {
        self.catalog.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Rebuilds the catalog from the configuration and the store's images and aliases.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn refresh_catalog(&self) -> Result<(), StoreError> {
        let mut c = self.config.catalog();
        for row in self.store.images().await? {
            if let Some(img) = image_of(&row) {
                c.add(img);
            }
        }
        for a in self.store.alias_history(None).await? {
            c.alias(&a.alias, &a.target);
        }
        *self.catalog.write().unwrap_or_else(|p| p.into_inner()) = c;
        Ok(())
    }

    /// The scaling policies in force.
    pub fn policies(&self) -> Arc<crate::policy::Policies> {
        self.policies.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Why the policy files on disk were last refused, if they were.
    pub fn policy_error(&self) -> Option<String> {
        self.policy_error.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Why reconcile passes have been failing on the store, and since when (ms), if they are.
    pub fn store_fault(&self) -> Option<(i64, String)> {
        self.store_fault.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records how a reconcile pass ended, for `/status`.
    fn pass_ended(&self, result: &Result<(), FleetError>) {
        let mut fault = self.store_fault.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Err(e @ FleetError::Store(_)) => {
                let reason = if e.is_disk_full() { crate::store::DISK_FULL.to_string() } else { e.to_string() };
                let since = fault.as_ref().map_or_else(|| self.now(), |(t, _)| *t);
                *fault = Some((since, reason));
            }
            Ok(()) => *fault = None,
            Err(_) => {}
        }
    }

    /// Reads the policy directory (if configured) and puts it in force; when it does not
    /// validate, the policies in force stay and the error is kept for `/status`.
    ///
    /// # Errors
    /// The file, line and key of the first problem.
    pub fn reload_policies(&self) -> Result<(), crate::config::ConfigError> {
        let Some(dir) = &self.config.policies_dir else { return Ok(()) };
        match crate::policy::Policies::load_dir(dir, &self.config) {
            Ok(p) => {
                info!(files = p.files.len(), pools = p.pools.len(), "policies in force");
                *self.policies.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(p);
                *self.policy_error.write().unwrap_or_else(|p| p.into_inner()) = None;
                self.wake();
                Ok(())
            }
            Err(e) => {
                warn!(error = %e, "policy files refused; the policies in force stay");
                *self.policy_error.write().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// The pool of a pool key, if a policy or the configuration defines it (on-demand tasks may
    /// use pools defined nowhere).
    fn pool_config(&self, key: &str) -> Option<crate::config::PoolConfig> {
        self.policies().pool(key).cloned()
    }

    /// What bounds an insert into `pool`.
    fn bounds(&self, pool: &str) -> crate::store::Bounds {
        let p = self.policies();
        crate::store::Bounds { pool_max: p.pool(pool).and_then(|c| c.max_instances), fleet_max: p.limits.max_instances }
    }

    /// Instance types to try, in order: the pool's list, else the resource class's type and its
    /// fallbacks. Never empty for a known resource class.
    fn instance_types(&self, pool: &str, resource_class: &str) -> Vec<String> {
        match self.pool_config(pool) {
            Some(p) if !p.instance_types.is_empty() => p.instance_types,
            _ => match self.config.resource_classes.get(resource_class) {
                Some(rc) => {
                    std::iter::once(rc.instance_type.clone()).chain(rc.fallback_instance_types.clone()).collect()
                }
                None => vec![String::new()],
            },
        }
    }

    /// Now, from the fleet's clock.
    pub fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// How many times the periodic job `name` (`pass`, `gc`, `alarms`, `lifecycle`,
    /// `cloudwatch`, `dogstatsd`) has run in this process: a test that waits for "nothing
    /// changed" first waits for the pass that would have changed it.
    pub fn runs(&self, name: &str) -> u64 {
        self.timers.lock().unwrap_or_else(|p| p.into_inner()).get(name).map_or(0, |t| t.1)
    }

    /// Wakes the reconciler.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// What a pool's image resolves to now for the provider (an AMI of the region on EC2,
    /// `name:version` locally), and its platform.
    ///
    /// # Errors
    /// [`FleetError::BadRequest`] naming an unknown class or image, or why the image does not fit.
    pub(crate) fn resolve_image(
        &self,
        executor: Executor,
        image: &str,
        resource_class: &str,
    ) -> Result<(String, &'static str), FleetError> {
        let rc = self
            .config
            .resource_classes
            .get(resource_class)
            .ok_or_else(|| FleetError::BadRequest(format!("unknown resource class {resource_class:?}")))?;
        let catalog = self.catalog.read().unwrap_or_else(|p| p.into_inner());
        let img =
            catalog.resolve(image, &requirement(executor, rc)).map_err(|e| FleetError::BadRequest(e.to_string()))?;
        let platform = match img.platform {
            vmfleet_images::Platform::Linux => "linux",
            vmfleet_images::Platform::Windows => "windows",
        };
        let image_id = match self.config.provider.kind {
            ProviderKind::Local if platform != "linux" => {
                return Err(FleetError::BadRequest(format!(
                    "the local provider runs Linux images only; {image} is a Windows image"
                )));
            }
            ProviderKind::Local => img.id(),
            ProviderKind::Ec2 => catalog
                .ami(img, &self.config.provider.ec2.region)
                .map_err(|e| FleetError::BadRequest(e.to_string()))?
                .to_string(),
        };
        Ok((image_id, platform))
    }

    fn new_vm(
        &self,
        executor: Executor,
        image: &str,
        resource_class: &str,
        task_id: Option<&str>,
        now: i64,
    ) -> Result<VmRow, FleetError> {
        let (image_id, platform) = self.resolve_image(executor, image, resource_class)?;
        let id = format!("vm-{}", short_id());
        let keys = ssh::generate_keypair(&id).map_err(FleetError::other("generating the VM's SSH key"))?;
        let pool = pool_key(executor.as_str(), image, resource_class);
        let new = NewVm {
            id,
            executor: executor.as_str().into(),
            image: image.into(),
            resource_class: resource_class.into(),
            task_id: task_id.map(Into::into),
            image_id,
            instance_type: self.instance_types(&pool, resource_class).swap_remove(0),
            platform: platform.to_string(),
            ssh_private_key: keys.private_openssh,
            ssh_public_key: keys.public_openssh,
        };
        Ok(VmRow::requested(new, now))
    }

    pub(crate) fn event(&self, action: &str, actor: &str, target: &str, payload: &str) -> AuditEvent {
        AuditEvent::new(action, actor, target, payload, &self.install_id, self.now())
    }

    pub(crate) async fn audit(&self, action: &str, actor: &str, target: &str, payload: &str) {
        let e = self.event(action, actor, target, payload);
        if let Err(err) = self.store.audit(&e).await {
            warn!(%err, action, "audit event not written");
        }
    }
}

fn is_live(s: VmState) -> bool {
    !matches!(s, VmState::Terminated | VmState::Failed)
}

pub(crate) fn validate_project(p: &str) -> Result<(), FleetError> {
    let ok = !p.is_empty()
        && p.len() <= 200
        && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | '@' | ':'));
    if ok {
        Ok(())
    } else {
        Err(FleetError::BadRequest(format!("project name {p:?} must be 1 to 200 letters, digits or - _ . / @ :")))
    }
}

/// A tiny shutdown signal shared by the server and the loops.
pub mod tokio_util_shutdown {
    use std::sync::Arc;
    use tokio::sync::watch;

    /// Clonable shutdown signal.
    #[derive(Clone, Debug)]
    pub struct Shutdown {
        rx: watch::Receiver<bool>,
        tx: Arc<watch::Sender<bool>>,
    }

    impl Default for Shutdown {
        fn default() -> Self {
            let (tx, rx) = watch::channel(false);
            Self { rx, tx: Arc::new(tx) }
        }
    }

    impl Shutdown {
        /// Fires the signal.
        pub fn trigger(&self) {
            let _ = self.tx.send(true);
        }
        /// Waits for the signal.
        pub async fn wait(&self) {
            let mut rx = self.rx.clone();
            let _ = rx.wait_for(|v| *v).await;
        }
    }
}
