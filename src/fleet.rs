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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{info, warn};
use vmfleet_images::{Catalog, Executor};
use vmfleet_provisioner::{ssh, InstanceState, LaunchSpec, Platform, Provider, ProvisionError, VolumeSpec};

use crate::config::{requirement, Config, ProviderKind};
use crate::metrics::Metrics;
use crate::store::{now_ms, short_id, AuditEvent, Db, Store, StoreError, TaskRow, VmRow, VmState, VolumeRow};

/// Errors the API maps to status codes.
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
    /// Database or provider trouble (500/503).
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for FleetError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => FleetError::NotFound(m),
            StoreError::Conflict(m) => FleetError::Conflict(m),
            e => FleetError::Internal(e.to_string()),
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

/// Pool key of a task or VM.
pub fn pool_key(executor: &str, image: &str, resource_class: &str) -> String {
    format!("{executor}/{image}/{resource_class}")
}

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
    /// When periodic jobs (collection, alarms, publishing) last ran, by name.
    timers: Mutex<HashMap<&'static str, i64>>,
    /// Auto Scaling and CloudWatch clients, made on first use.
    aws: tokio::sync::OnceCell<crate::asg::Aws>,
    /// The scaling policies in force.
    policies: std::sync::RwLock<Arc<crate::policy::Policies>>,
    /// Why the policy files on disk were refused, while the last good ones stay in force.
    policy_error: std::sync::RwLock<Option<String>>,
    /// Alarm-driven warm targets by pool: (target, when it last changed).
    step_targets: Mutex<HashMap<String, (u32, Option<i64>)>>,
    /// Arrivals per pool for the forecast, and the newest arrival time read.
    arrivals: tokio::sync::Mutex<(HashMap<String, vmfleet_scaler::forecast::History>, i64)>,
    /// The forecast targets, with the minute and the forecasts they were computed for (a target
    /// depends only on whole minutes, so one computation a minute serves every pass).
    forecast_last: Mutex<ForecastCache>,
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
            let settings = ec2_settings(config);
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

/// The EC2 driver's settings (shared with the Auto Scaling and CloudWatch clients).
pub fn ec2_settings(config: &Config) -> vmfleet_provisioner::ec2::Ec2Settings {
    let e = &config.provider.ec2;
    vmfleet_provisioner::ec2::Ec2Settings {
        region: e.region.clone(),
        endpoint_url: e.endpoint_url.clone(),
        subnet_ids: e.subnet_ids.clone(),
        security_group_id: e.security_group_id.clone(),
        instance_profile: e.instance_profile.clone(),
        use_public_ip: config.provider.use_public_ip,
        access_key_id: e.access_key_id.clone(),
        secret_access_key: e.secret_access_key.as_ref().map(|s| s.0.clone()),
        ssh_address_override: e.ssh_address_override.clone(),
        mutations_per_second: e.mutations_per_second,
        mutation_burst: e.mutation_burst,
        sdk_max_attempts: e.sdk_max_attempts,
        throttle_retries: e.throttle_retries,
        proxy: {
            let env = vmfleet_provisioner::ec2::ProxySettings::from_env(|k| std::env::var(k).ok());
            let p = &config.proxy;
            vmfleet_provisioner::ec2::ProxySettings {
                http: p.http.as_ref().map(|s| s.0.clone()).or(env.http),
                https: p.https.as_ref().map(|s| s.0.clone()).or(env.https),
                no_proxy: p.no_proxy.clone().or(env.no_proxy),
            }
        },
    }
}

impl Fleet {
    /// A fleet over `store` and `provider`.
    ///
    /// # Errors
    /// [`StoreError`] when the installation id cannot be read or set.
    pub async fn new(config: Config, store: Store, provider: Arc<dyn Provider>) -> Result<Arc<Self>, StoreError> {
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
            timers: Mutex::new(HashMap::new()),
            aws: tokio::sync::OnceCell::new(),
            policies: std::sync::RwLock::new(Arc::new(crate::policy::Policies::from_config(&config_for_policies))),
            policy_error: std::sync::RwLock::new(None),
            step_targets: Mutex::new(HashMap::new()),
            arrivals: tokio::sync::Mutex::new((HashMap::new(), 0)),
            forecast_last: Mutex::new(ForecastCache::default()),
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
        let keys = ssh::generate_keypair(&id).map_err(|e| FleetError::Internal(e.to_string()))?;
        Ok(VmRow {
            id,
            pool: pool_key(executor.as_str(), image, resource_class),
            executor: executor.as_str().into(),
            image: image.into(),
            resource_class: resource_class.into(),
            preallocated: task_id.is_none(),
            state: VmState::Requested.as_str().into(),
            task_id: task_id.map(Into::into),
            instance_id: None,
            image_id,
            instance_type: self
                .instance_types(&pool_key(executor.as_str(), image, resource_class), resource_class)
                .swap_remove(0),
            platform: platform.to_string(),
            zone: None,
            host: None,
            ssh_port: None,
            ssh_user: "circleci".into(),
            ssh_private_key: keys.private_openssh,
            ssh_public_key: keys.public_openssh,
            host_key: None,
            draining: false,
            failure_reason: None,
            requested_at: now,
            provisioning_at: None,
            booting_at: None,
            ready_at: None,
            assigned_at: None,
            releasing_at: None,
            terminating_at: None,
            terminated_at: None,
            failed_at: None,
            state_since: now,
            docker_host: None,
        })
    }

    /// Records a task and gives it a VM: a warm one at once if its pool has one, else an
    /// on-demand launch.
    ///
    /// # Errors
    /// [`FleetError::BadRequest`] naming an unknown executor, image, resource class or a bad
    /// project name.
    pub async fn request_task(&self, req: &TaskRequest) -> Result<TaskRow, FleetError> {
        self.request_task_as(req, format!("task-{}", short_id())).await
    }

    /// [`Fleet::request_task`] under an id the caller chose (and recorded first, so a crash
    /// between the two leaves nothing unknown).
    ///
    /// # Errors
    /// As [`Fleet::request_task`].
    pub async fn request_task_as(&self, req: &TaskRequest, id: String) -> Result<TaskRow, FleetError> {
        let executor = Executor::parse(&req.executor).ok_or_else(|| {
            FleetError::BadRequest(format!("unknown executor {:?}; use machine or remote-docker", req.executor))
        })?;
        validate_project(&req.project)?;
        let now = now_ms();
        let task = TaskRow {
            id,
            pool: pool_key(executor.as_str(), &req.image, &req.resource_class),
            executor: executor.as_str().into(),
            image: req.image.clone(),
            resource_class: req.resource_class.clone(),
            project: req.project.clone(),
            dlc: req.docker_layer_caching,
            state: "waiting".into(),
            vm_id: None,
            volume_id: None,
            failure_reason: None,
            created_at: now,
            assigned_at: None,
            released_at: None,
            docker_client_cert: None,
            docker_client_key: None,
        };
        let on_demand = self.new_vm(executor, &req.image, &req.resource_class, Some(&task.id), now)?;
        let audit = self.event("task.request", "api", &task.id, &task.pool);
        let a = self.store.request_task_within(&task, &on_demand, Some(&audit), self.bounds(&task.pool)).await?;
        self.wake();
        let mut task = task;
        task.vm_id = a.vm.as_ref().map(|v| v.id.clone());
        if a.vm.is_none() {
            info!(task = %task.id, pool = %task.pool, "queued: max_instances reached");
        }
        if a.handed_over {
            task.state = "assigned".into();
            task.assigned_at = Some(now);
            self.metrics.assignment_latency.observe((now_ms() - now) as f64 / 1000.0);
        }
        Ok(task)
    }

    /// Releases a task; its VM is destroyed and its volume detached.
    ///
    /// # Errors
    /// [`FleetError::NotFound`].
    pub async fn release_task(&self, id: &str) -> Result<TaskRow, FleetError> {
        let t = self.store.release_task(id, now_ms()).await?;
        self.audit("task.release", "api", id, "").await;
        self.wake();
        Ok(t)
    }

    /// Stops new work going to a VM.
    ///
    /// # Errors
    /// [`FleetError::NotFound`].
    pub async fn drain_vm(&self, id: &str) -> Result<VmRow, FleetError> {
        let vm = self.store.drain_vm(id).await?;
        self.audit("vm.drain", "api", id, "").await;
        Ok(vm)
    }

    /// Destroys a VM now; a task running on it fails with that reason.
    ///
    /// # Errors
    /// [`FleetError::NotFound`].
    pub async fn destroy_vm(&self, id: &str) -> Result<VmRow, FleetError> {
        let vm = self.store.vm(id).await?;
        let now = now_ms();
        match &vm.task_id {
            Some(task) if matches!(vm.vm_state(), Some(s) if is_live(s)) => {
                self.store.fail_task(task, &format!("vm {id} was destroyed by an operator"), now).await?;
            }
            _ => {
                use VmState::*;
                self.store.transition(id, &[Requested, Provisioning, Booting, Ready, Assigned], Releasing, now).await?;
            }
        }
        self.audit("vm.destroy", "api", id, "").await;
        self.wake();
        Ok(self.store.vm(id).await?)
    }

    /// Marks a volume for deletion.
    ///
    /// # Errors
    /// [`FleetError::Conflict`] while it is attached.
    pub async fn delete_volume(&self, id: &str) -> Result<VolumeRow, FleetError> {
        let v = self.store.request_volume_delete(id, now_ms()).await?;
        self.audit("volume.delete", "api", id, "").await;
        self.wake();
        Ok(v)
    }

    pub(crate) fn event(&self, action: &str, actor: &str, target: &str, payload: &str) -> AuditEvent {
        AuditEvent {
            id: short_id(),
            version: 1,
            action: action.into(),
            actor: actor.into(),
            target: target.into(),
            payload: payload.into(),
            occurred_at: now_ms(),
            scope: self.install_id.clone(),
            success: true,
            request: None,
        }
    }

    pub(crate) async fn audit(&self, action: &str, actor: &str, target: &str, payload: &str) {
        let e = self.event(action, actor, target, payload);
        if let Err(err) = self.store.audit(&e).await {
            warn!(%err, action, "audit event not written");
        }
    }

    /// Runs the reconcile loop until `shutdown` fires.
    pub async fn run(self: Arc<Self>, shutdown: tokio_util_shutdown::Shutdown) {
        let mut leader: Option<sqlx::pool::PoolConnection<sqlx::Postgres>> = None;
        loop {
            let is_leader = match self.store.db() {
                Db::Sqlite(_) => true,
                Db::Postgres(pool) => {
                    if leader.is_none() {
                        leader = try_lead(pool).await;
                    }
                    leader.is_some()
                }
            };
            if is_leader {
                if let Err(e) = self.reconcile_once().await {
                    warn!(error = %e, "reconcile pass failed; retrying");
                    // A failed pass may mean a lost connection: lead again from scratch.
                    leader = None;
                }
            }
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = self.wake.notified() => {},
                _ = tokio::time::sleep(self.config.reconcile_interval) => {},
            }
        }
    }

    /// One pass of observe, plan, re-check, act.
    ///
    /// # Errors
    /// Store or provider errors that stop the pass; the next pass starts over.
    pub async fn reconcile_once(self: &Arc<Self>) -> Result<(), FleetError> {
        let now = now_ms();
        // Other replicas may have registered or promoted images.
        self.refresh_catalog().await?;
        self.launch_requested().await?;
        let instances = self
            .provider
            .describe(&self.install_id)
            .await
            .map_err(|e| FleetError::Internal(format!("describe instances: {e}")))?;
        let by_id: HashMap<&str, &vmfleet_provisioner::Instance> =
            instances.iter().map(|i| (i.instance_id.as_str(), i)).collect();

        let vms = self.store.live_vms().await?;
        for vm in &vms {
            let Some(state) = vm.vm_state() else { continue };
            match state {
                VmState::Provisioning => {
                    let inst = vm.instance_id.as_deref().and_then(|id| by_id.get(id));
                    if let Some(inst) = inst.filter(|i| i.state == InstanceState::Running) {
                        if let Some(host) = &inst.host {
                            self.store.set_booting(&vm.id, host, inst.ssh_port, inst.host_key.as_deref(), now).await?;
                            self.spawn_readiness(&vm.id);
                        }
                    }
                }
                VmState::Booting => self.spawn_readiness(&vm.id),
                VmState::Assigned => {
                    // A warm VM claimed by a DLC task: attach the volume, then hand over.
                    if let Some(task_id) = &vm.task_id {
                        let task = self.store.task(task_id).await?;
                        if task.state == "waiting" {
                            self.spawn_handover(&vm.id);
                        }
                    }
                }
                _ => {}
            }
        }
        let gone = self.retire_released(&vms).await?;
        self.delete_volumes().await?;
        self.step_scale(now).await;
        self.scale(&vms).await?;
        self.publish(&vms, now).await;
        self.drain_lifecycle(now).await;
        // The describe above predates this pass's terminations.
        let still: Vec<vmfleet_provisioner::Instance> =
            instances.into_iter().filter(|i| !gone.contains(&i.instance_id)).collect();
        self.collect(&still, now).await?;
        Ok(())
    }

    async fn launch_requested(&self) -> Result<(), FleetError> {
        for vm in self.store.vms(&[VmState::Requested]).await? {
            let pool = self.pool_config(&vm.pool);
            let spec = LaunchSpec {
                vm_id: vm.id.clone(),
                install_id: self.install_id.clone(),
                pool: vm.pool.clone(),
                image_id: vm.image_id.clone(),
                instance_type: vm.instance_type.clone(),
                fallback_instance_types: self.instance_types(&vm.pool, &vm.resource_class).split_off(1),
                capacity: pool.as_ref().map(|p| p.capacity).unwrap_or_default(),
                platform: if vm.platform == "windows" { Platform::Windows } else { Platform::Linux },
                ssh_user: vm.ssh_user.clone(),
                ssh_public_key: vm.ssh_public_key.clone(),
                tags: self.config.provider.tags.clone(),
            };
            match self.provider.launch(&spec).await {
                Ok(inst) => {
                    let itype = inst.instance_type.as_deref();
                    self.store.set_launched(&vm.id, &inst.instance_id, &inst.zone, itype, now_ms()).await?;
                    info!(vm = %vm.id, instance = %inst.instance_id, pool = %vm.pool, "launched");
                }
                Err(ProvisionError::Invalid(m)) => {
                    self.store.fail_vm(&vm.id, &format!("launch refused: {m}"), now_ms()).await?;
                }
                Err(e) => warn!(vm = %vm.id, error = %e, "launch failed; will retry"),
            }
        }
        Ok(())
    }

    /// Runs `job` for `vm_id` in the background unless one is already running for that VM,
    /// then wakes the loop so its outcome is acted on at once.
    fn spawn_for_vm<F, Fut>(self: &Arc<Self>, vm_id: &str, what: &'static str, job: F)
    where
        F: FnOnce(Arc<Self>, String) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), FleetError>> + Send + 'static,
    {
        if !self.checking.lock().unwrap_or_else(|p| p.into_inner()).insert(vm_id.to_string()) {
            return;
        }
        let fleet = self.clone();
        let vm_id = vm_id.to_string();
        tokio::spawn(async move {
            if let Err(e) = job(fleet.clone(), vm_id.clone()).await {
                warn!(vm = %vm_id, error = %e, "{what} failed");
            }
            fleet.checking.lock().unwrap_or_else(|p| p.into_inner()).remove(&vm_id);
            fleet.wake();
        });
    }

    fn spawn_readiness(self: &Arc<Self>, vm_id: &str) {
        self.spawn_for_vm(vm_id, "readiness check", |fleet, id| async move { fleet.become_ready(&id).await });
    }

    fn spawn_handover(self: &Arc<Self>, vm_id: &str) {
        self.spawn_for_vm(vm_id, "hand-over", |fleet, id| async move {
            let vm = fleet.store.vm(&id).await?;
            fleet.hand_over(&vm).await
        });
    }

    pub(crate) fn ssh_target(vm: &VmRow) -> Option<ssh::Target> {
        Some(ssh::Target {
            host: vm.host.clone()?,
            port: u16::try_from(vm.ssh_port?).ok()?,
            user: vm.ssh_user.clone(),
            private_key: vm.ssh_private_key.clone(),
            host_key: vm.host_key.clone(),
        })
    }

    /// SSH handshake within the connect timeout (and what is left of the start timeout), then
    /// ready (or handed to its task).
    async fn become_ready(&self, vm_id: &str) -> Result<(), FleetError> {
        let vm = self.store.vm(vm_id).await?;
        if vm.vm_state() != Some(VmState::Booting) {
            return Ok(());
        }
        let Some(target) = Self::ssh_target(&vm) else { return Ok(()) };
        let start_left = self.config.timeouts.vm_start.as_millis() as i64 - (now_ms() - vm.requested_at);
        let deadline = self.config.timeouts.ssh_connect.min(Duration::from_millis(start_left.max(1) as u64));
        let setup = match ssh::wait_ready(&target, deadline).await {
            Ok(session) => {
                let setup = if vm.executor == Executor::RemoteDocker.as_str() {
                    self.install_docker_tls(&vm, &target.host, &session).await
                } else {
                    Ok(())
                };
                session.close().await;
                setup
            }
            Err(e) => Err(format!("SSH not ready: {e}")),
        };
        if let Err(reason) = setup {
            self.store.fail_vm(vm_id, &reason, now_ms()).await?;
            self.audit("vm.fail", "fleet", vm_id, &reason).await;
            return Ok(());
        }
        let now = now_ms();
        self.metrics.provisioning_duration.observe((now - vm.requested_at) as f64 / 1000.0);
        match &vm.task_id {
            Some(_) => self.hand_over(&vm).await,
            None => {
                // A task of this pool still waiting for its own launch takes this VM now; the
                // VM launched for it joins the warm pool when it is up.
                if let Some(task) = self.store.give_to_waiting_task(vm_id, &vm.pool).await? {
                    info!(vm = %vm_id, task = %task, "ready: taken by a task waiting for a boot");
                    let vm = self.store.vm(vm_id).await?;
                    return self.hand_over(&vm).await;
                }
                self.store.transition(vm_id, &[VmState::Booting], VmState::Ready, now).await?;
                info!(vm = %vm_id, pool = %vm.pool, "ready (warm)");
                Ok(())
            }
        }
    }

    /// The installation's Docker CA, made on first use.
    async fn docker_ca(&self) -> Result<vmfleet_provisioner::tls::DockerCa, FleetError> {
        use vmfleet_provisioner::tls::DockerCa;
        let pem = match self.store.docker_ca_stored().await? {
            Some(pem) => pem,
            None => {
                let fresh = DockerCa::generate(&self.install_id).map_err(|e| FleetError::Internal(e.to_string()))?;
                self.store.docker_ca(&fresh.pem).await?
            }
        };
        Ok(DockerCa::from_pem(&self.install_id, pem))
    }

    /// Issues the VM's Docker server certificate for the address tasks will dial and installs it
    /// over SSH; where the image has a Docker daemon, it then serves on 2376 with TLS required.
    async fn install_docker_tls(&self, vm: &VmRow, host: &str, session: &ssh::Session) -> Result<(), String> {
        let ca = self.docker_ca().await.map_err(|e| e.to_string())?;
        // A VM lives at most a day by default; the certificate outlives it comfortably.
        let server = ca.issue_server(&vm.id, host, Duration::from_secs(7 * 86400)).map_err(|e| e.to_string())?;
        let out = session
            .exec(&vmfleet_provisioner::tls::install_script(&ca.pem.cert, &server))
            .await
            .map_err(|e| format!("installing Docker TLS: {e}"))?;
        if out.exit_status != Some(0) {
            return Err(format!(
                "installing Docker TLS failed with status {:?}: {}",
                out.exit_status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let enabled = String::from_utf8_lossy(&out.stdout).contains("docker-tls: enabled");
        let docker_host = enabled.then(|| format!("tcp://{host}:2376"));
        self.store.set_docker_host(&vm.id, docker_host.as_deref()).await.map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Attaches the task's DLC volume if it wants one, then hands the VM over.
    async fn hand_over(&self, vm: &VmRow) -> Result<(), FleetError> {
        let Some(task_id) = &vm.task_id else { return Ok(()) };
        let task = self.store.task(task_id).await?;
        if task.state != "waiting" {
            return Ok(());
        }
        if task.dlc {
            self.attach_volume(&task, vm).await?;
        }
        if task.executor == Executor::RemoteDocker.as_str() {
            let ca = self.docker_ca().await?;
            let valid = self.config.timeouts.long_running_task + Duration::from_secs(3600);
            let client = ca.issue_client(task_id, valid).map_err(|e| FleetError::Internal(e.to_string()))?;
            self.store.set_docker_client(task_id, &client.cert, &client.key).await?;
        }
        let now = now_ms();
        self.store.hand_over(task_id, &vm.id, now).await?;
        self.metrics.assignment_latency.observe((now - task.created_at) as f64 / 1000.0);
        info!(vm = %vm.id, task = %task_id, "handed over");
        Ok(())
    }

    async fn attach_volume(&self, task: &TaskRow, vm: &VmRow) -> Result<(), FleetError> {
        let now = now_ms();
        let zone = vm.zone.clone().unwrap_or_default();
        let fresh = VolumeRow {
            id: format!("vol-{}", short_id()),
            project: task.project.clone(),
            provider_id: None,
            zone: zone.clone(),
            size_gb: i64::from(self.config.volumes.size_gb),
            state: "creating".into(),
            task_id: Some(task.id.clone()),
            vm_id: Some(vm.id.clone()),
            created_at: now,
            last_used_at: now,
            state_since: now,
        };
        let mut task = task.clone();
        task.vm_id = Some(vm.id.clone());
        let max = self.policies().limits.max_volumes;
        let Some(vol) = self.store.claim_volume_within(&task, &zone, &fresh, max).await? else {
            // Every volume is in use at the bound: the task runs with a cold cache.
            warn!(task = %task.id, project = %task.project, "no DLC volume: max_volumes reached and none is free");
            self.audit("volume.skipped", "fleet", &task.id, "max_volumes reached and every volume is in use").await;
            return Ok(());
        };
        let provider_id = match &vol.provider_id {
            Some(p) => p.clone(),
            None => {
                let spec = VolumeSpec {
                    volume_id: vol.id.clone(),
                    install_id: self.install_id.clone(),
                    project: vol.project.clone(),
                    size_gb: vol.size_gb as u32,
                    zone,
                    tags: self.config.provider.tags.clone(),
                };
                let created =
                    self.provider.create_volume(&spec).await.map_err(|e| FleetError::Internal(e.to_string()))?;
                self.store.set_volume_provider_id(&vol.id, &created.provider_id, now_ms()).await?;
                created.provider_id
            }
        };
        let instance = vm.instance_id.clone().unwrap_or_default();
        self.provider.attach_volume(&provider_id, &instance).await.map_err(|e| FleetError::Internal(e.to_string()))?;
        if let Some(script) = self.provider.data_root_script(&provider_id) {
            // A running VM (warm or on-demand): remount Docker's data root before the hand-over.
            let target = Self::ssh_target(vm)
                .ok_or_else(|| FleetError::Internal(format!("vm {} has no SSH address yet", vm.id)))?;
            let session = ssh::wait_ready(&target, self.config.timeouts.ssh_connect)
                .await
                .map_err(|e| FleetError::Internal(format!("mounting the DLC volume: {e}")))?;
            let out = session.exec(&script).await;
            session.close().await;
            let out = out.map_err(|e| FleetError::Internal(format!("mounting the DLC volume: {e}")))?;
            if out.exit_status != Some(0) {
                return Err(FleetError::Internal(format!(
                    "mounting the DLC volume failed with status {:?}: {}",
                    out.exit_status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        self.store.set_volume_attached(&vol.id, &task.id, &vm.id, now_ms()).await?;
        Ok(())
    }

    /// Detaches volumes of released VMs, then terminates their instances in one call. Returns
    /// the instances terminated.
    async fn retire_released(&self, vms: &[VmRow]) -> Result<HashSet<String>, FleetError> {
        let now = now_ms();
        let mut still_attached: HashSet<String> = HashSet::new();
        for vol in self.store.volumes(Some("detaching")).await? {
            let instance =
                vol.vm_id.as_deref().and_then(|id| vms.iter().find(|v| v.id == id)).and_then(|v| v.instance_id.clone());
            let detached = match (&vol.provider_id, instance) {
                (Some(p), Some(i)) => self.provider.detach_volume(p, &i).await,
                _ => Ok(()),
            };
            match detached {
                Ok(()) | Err(ProvisionError::NotFound(_)) => self.store.set_volume_detached(&vol.id, now).await?,
                Err(e) => {
                    warn!(volume = %vol.id, error = %e, "detach failed; will retry");
                    still_attached.extend(vol.vm_id);
                }
            }
        }
        let retiring: Vec<&VmRow> =
            vms.iter().filter(|v| matches!(v.vm_state(), Some(VmState::Releasing | VmState::Terminating))).collect();
        if retiring.is_empty() {
            return Ok(HashSet::new());
        }
        let ready: Vec<&VmRow> = retiring.into_iter().filter(|v| !still_attached.contains(&v.id)).collect();
        let ids: Vec<String> = ready.iter().filter_map(|v| v.instance_id.clone()).collect();
        for vm in &ready {
            self.store.transition(&vm.id, &[VmState::Releasing], VmState::Terminating, now).await?;
        }
        match self.provider.terminate(&ids).await {
            Ok(()) => {
                for vm in ready {
                    self.store.transition(&vm.id, &[VmState::Terminating], VmState::Terminated, now_ms()).await?;
                    info!(vm = %vm.id, "terminated");
                }
                Ok(ids.into_iter().collect())
            }
            Err(e) => {
                warn!(error = %e, "terminate failed; will retry");
                Ok(HashSet::new())
            }
        }
    }

    async fn delete_volumes(&self) -> Result<(), FleetError> {
        for vol in self.store.volumes(Some("deleting")).await? {
            let result = match &vol.provider_id {
                Some(p) => self.provider.delete_volume(p).await,
                None => Ok(()),
            };
            match result {
                Ok(()) => self.store.set_volume_state(&vol.id, "deleted", now_ms()).await?,
                Err(e) => warn!(volume = %vol.id, error = %e, "volume delete failed; will retry"),
            }
        }
        Ok(())
    }

    /// Warm pools and queued tasks: observe, plan with the scaler, re-check, act.
    async fn scale(&self, vms: &[VmRow]) -> Result<(), FleetError> {
        if self.store.paused().await? {
            return Ok(());
        }
        let policies = self.policies();
        let queued = self.store.queued_tasks().await?;
        let mut keys: Vec<String> =
            policies.pools.iter().map(|p| pool_key(p.executor.as_str(), &p.image, &p.resource_class)).collect();
        for t in &queued {
            if !keys.contains(&t.pool) {
                keys.push(t.pool.clone());
            }
        }
        // A pool no policy names may still hold idle VMs (a launch a task no longer needed).
        for v in vms {
            if v.vm_state() == Some(VmState::Ready) && v.task_id.is_none() && !keys.contains(&v.pool) {
                keys.push(v.pool.clone());
            }
        }
        if keys.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        self.refresh_forecasts(&policies, now).await?;
        let mut pools = Vec::new();
        for key in &keys {
            let cfg = policies.pool(key);
            // A promotion changes what the pool's image resolves to; idle VMs on the old one are
            // outdated. (A pool whose image no longer resolves keeps its VMs.)
            let current =
                cfg.and_then(|p| self.resolve_image(p.executor, &p.image, &p.resource_class).ok()).map(|(id, _)| id);
            let mut obs = observe(key, vms, current.as_deref());
            obs.queued = queued.iter().filter(|t| t.pool == *key).count() as u32;
            let policy = match cfg {
                Some(p) => scaler_policy(p, self.target_floor(key)),
                None => vmfleet_scaler::PoolPolicy { max_replace_share: 0.25, ..Default::default() },
            };
            pools.push((obs, policy));
        }
        // Instances of pools outside the plan count against the fleet bound too.
        let others =
            vms.iter().filter(|v| !keys.contains(&v.pool)).filter(|v| v.vm_state().is_some_and(is_live)).count() as u32;
        let fleet_max = policies.limits.max_instances.map(|m| m.saturating_sub(others));
        for action in vmfleet_scaler::plan(&pools, fleet_max, now) {
            match action {
                vmfleet_scaler::ScaleAction::LaunchForTasks { pool, count, reason } => {
                    let mut done = 0;
                    for t in fair_queue(&queued, &pool).into_iter().take(count as usize) {
                        let Some(ex) = Executor::parse(&t.executor) else { continue };
                        let vm = match self.new_vm(ex, &t.image, &t.resource_class, Some(&t.id), now_ms()) {
                            Ok(vm) => vm,
                            Err(e) => {
                                self.store.fail_task(&t.id, &format!("no VM can be made: {e}"), now_ms()).await?;
                                continue;
                            }
                        };
                        // Re-check: still queued, and the bounds still leave room.
                        if !self.store.reserve_vm_for_task(&t.id, &vm, self.bounds(&pool)).await? {
                            break;
                        }
                        done += 1;
                    }
                    if done > 0 {
                        info!(%pool, count = done, %reason, "on-demand launch for queued tasks");
                        self.wake();
                    }
                }
                vmfleet_scaler::ScaleAction::Launch { pool, count, reason } => {
                    let Some(p) = policies.pool(&pool) else { continue };
                    let mut done = 0;
                    for _ in 0..count {
                        let vm = match self.new_vm(p.executor, &p.image, &p.resource_class, None, now_ms()) {
                            Ok(vm) => vm,
                            // One misconfigured pool must not stop the others.
                            Err(e) => {
                                warn!(%pool, error = %e, "cannot launch for this pool");
                                break;
                            }
                        };
                        if !self.store.insert_vm_within(&vm, self.bounds(&pool)).await? {
                            break;
                        }
                        done += 1;
                    }
                    if done > 0 {
                        info!(%pool, count = done, %reason, "warm launch");
                        self.wake();
                    }
                }
                vmfleet_scaler::ScaleAction::Terminate { vm_id, reason, .. } => {
                    // Re-check: only if it is still idle (a task may have just claimed it).
                    if self.store.transition(&vm_id, &[VmState::Ready], VmState::Releasing, now_ms()).await? {
                        info!(vm = %vm_id, %reason, "scale in");
                        self.audit("vm.terminate", "scaler", &vm_id, &reason).await;
                    }
                }
            }
        }
        Ok(())
    }

    /// Brings the warm targets of pools with a `forecast` up to date, from the arrivals in the
    /// store (read incrementally, so every replica's requests count), once a minute.
    async fn refresh_forecasts(&self, policies: &crate::policy::Policies, now: i64) -> Result<(), FleetError> {
        let with: Vec<(String, vmfleet_scaler::forecast::Forecast)> = policies
            .pools
            .iter()
            .filter_map(|p| Some((pool_key(p.executor.as_str(), &p.image, &p.resource_class), p.forecast?.forecast())))
            .collect();
        let minute = now.div_euclid(60_000);
        {
            let cache = self.forecast_last.lock().unwrap_or_else(|p| p.into_inner());
            if cache.minute == minute && cache.forecasts == with {
                return Ok(());
            }
        }
        let mut targets = HashMap::new();
        if !with.is_empty() {
            let mut guard = self.arrivals.lock().await;
            let (histories, seen) = &mut *guard;
            if *seen == 0 {
                *seen = now - 8 * 86_400_000;
            }
            loop {
                let batch = self.store.arrivals_since(*seen, 10_000).await?;
                for (pool, at) in &batch {
                    histories.entry(pool.clone()).or_default().record(*at);
                    *seen = (*seen).max(*at);
                }
                if batch.len() < 10_000 {
                    break;
                }
            }
            for (key, f) in &with {
                targets.insert(key.clone(), histories.get(key).map_or(0, |h| f.target(h, now)));
            }
        }
        *self.forecast_last.lock().unwrap_or_else(|p| p.into_inner()) =
            ForecastCache { minute, forecasts: with, targets };
        Ok(())
    }

    /// The floor the alarm and the forecast put under a pool's warm target now.
    fn target_floor(&self, pool: &str) -> Option<u32> {
        let step = self.step_target(pool);
        let forecast = self.forecast_last.lock().unwrap_or_else(|p| p.into_inner()).targets.get(pool).copied();
        match (step, forecast) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the periodic job `name` is due (and if so, marks it run at `now`).
    fn due(&self, name: &'static str, every: Duration, now: i64) -> bool {
        let mut t = self.timers.lock().unwrap_or_else(|p| p.into_inner());
        let last = t.get(name).copied();
        if last.is_some_and(|l| now - l < every.as_millis() as i64) {
            return false;
        }
        t.insert(name, now);
        true
    }

    /// The Auto Scaling and CloudWatch clients.
    pub async fn aws(&self) -> &crate::asg::Aws {
        self.aws.get_or_init(|| crate::asg::Aws::new(&self.config)).await
    }

    /// The alarm-driven warm target of a pool, if its alarm has moved it.
    pub fn step_target(&self, pool: &str) -> Option<u32> {
        self.step_targets.lock().unwrap_or_else(|p| p.into_inner()).get(pool).map(|s| s.0)
    }

    /// Reads the alarms of alarm-driven pools and moves their warm targets by the matching
    /// step, with the semantics of an AWS step scaling policy. The target never falls below
    /// the pool's (scheduled) `min_idle` nor rises above its `max_instances`.
    pub async fn step_scale(&self, now: i64) {
        let policies = self.policies();
        let driven: Vec<(String, &crate::config::PoolConfig, &crate::config::PoolStepScaling)> = policies
            .pools
            .iter()
            .filter_map(|p| {
                let st = p.step_scaling.as_ref()?;
                Some((pool_key(p.executor.as_str(), &p.image, &p.resource_class), p, st))
            })
            .collect();
        if driven.is_empty() || !self.due("alarms", self.config.metrics_out.alarm_poll, now) {
            return;
        }
        let mut names: Vec<String> = driven.iter().map(|(_, _, st)| st.alarm.clone()).collect();
        names.sort();
        names.dedup();
        let alarms = match self.aws().await.alarms(&names).await {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "reading alarms failed; warm targets stay");
                return;
            }
        };
        for (key, p, st) in driven {
            let Some(alarm) = alarms.get(&st.alarm) else {
                warn!(pool = %key, alarm = %st.alarm, "the pool's alarm does not exist");
                continue;
            };
            let policy = scaler_policy(p, None);
            let floor = vmfleet_scaler::schedule::scheduled_min_idle(p.min_idle, &policy.schedules, now);
            let ceiling = p.max_instances.unwrap_or(u32::MAX);
            let step = vmfleet_scaler::step::StepPolicy {
                adjustment_type: vmfleet_scaler::step::AdjustmentType::parse(&st.adjustment_type)
                    .unwrap_or(vmfleet_scaler::step::AdjustmentType::ChangeInCapacity),
                steps: crate::config::steps(&st.steps),
                cooldown_ms: st.cooldown.as_millis() as i64,
            };
            let reading = vmfleet_scaler::step::AlarmReading {
                in_alarm: alarm.state == "ALARM",
                value: alarm.value,
                threshold: alarm.threshold,
            };
            let (current, last) = {
                let t = self.step_targets.lock().unwrap_or_else(|p| p.into_inner());
                t.get(&key).copied().unwrap_or((floor, None))
            };
            let current = current.max(floor);
            if let Some((target, reason)) =
                vmfleet_scaler::step::next_target(current, &step, &reading, last, now, floor, ceiling)
            {
                self.step_targets.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), (target, Some(now)));
                info!(pool = %key, alarm = %st.alarm, target, %reason, "step scaling");
                self.audit("pool.scale", "scaler", &key, &reason).await;
                self.wake();
            }
        }
    }

    /// Drain on scale-in: for groups with vmfleet's termination hook, an instance waiting in
    /// `Terminating:Wait` gets no new work (its VM is drained); while its task runs, heartbeats
    /// keep it waiting, and once nothing runs the lifecycle action is completed (CONTINUE).
    pub async fn drain_lifecycle(&self, now: i64) {
        let groups: Vec<String> =
            self.policies().asg.iter().filter(|a| a.termination_hook.is_some()).map(|a| a.asg.clone()).collect();
        if groups.is_empty() || !self.due("lifecycle", self.config.metrics_out.lifecycle_poll, now) {
            return;
        }
        let aws = self.aws().await;
        let waiting = match aws.terminating_wait(&groups).await {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "reading terminating instances failed");
                return;
            }
        };
        for (group, instance) in waiting {
            let busy = match self.store.vm_by_instance(&instance).await {
                Ok(Some(vm)) => {
                    if !vm.draining {
                        if let Err(e) = self.store.drain_vm(&vm.id).await {
                            warn!(vm = %vm.id, error = %e, "drain failed");
                        }
                    }
                    Some(
                        vm.task_id.is_some()
                            && vm.vm_state().is_some_and(|s| !matches!(s, VmState::Releasing | VmState::Terminating)),
                    )
                }
                Ok(None) => None,
                Err(e) => {
                    warn!(%instance, error = %e, "looking up the instance failed");
                    continue;
                }
            };
            let result = match vmfleet_scaler::asg::lifecycle_step(busy) {
                vmfleet_scaler::asg::Lifecycle::Heartbeat => aws.heartbeat(&self.install_id, &group, &instance).await,
                vmfleet_scaler::asg::Lifecycle::Continue => {
                    let r = aws.complete(&self.install_id, &group, &instance).await;
                    if r.is_ok() {
                        info!(%group, %instance, "termination continues: no work left on the instance");
                        self.audit("asg.lifecycle.continue", "scaler", &instance, &group).await;
                    }
                    r
                }
            };
            if let Err(e) = result {
                warn!(error = %e, "lifecycle action failed; retrying on the next poll");
            }
        }
    }

    /// Publishes per-pool numbers to CloudWatch and DogStatsD when each is due.
    pub async fn publish(&self, vms: &[VmRow], now: i64) {
        let out = &self.config.metrics_out;
        let cw = out.cloudwatch.as_ref().filter(|c| self.due("cloudwatch", c.interval, now));
        let sd = out.dogstatsd.as_ref().filter(|d| self.due("dogstatsd", d.interval, now));
        if cw.is_none() && sd.is_none() {
            return;
        }
        let (stats, fleet_p95) = match self.pool_stats(vms, now).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "metrics not published");
                return;
            }
        };
        if let Some(c) = cw {
            let data = crate::metrics_out::cloudwatch_data(&stats, fleet_p95);
            if let Err(e) = self.aws().await.put_metrics(&c.namespace, &data).await {
                warn!(error = %e, "CloudWatch metrics not published");
            }
        }
        if let Some(d) = sd {
            let lines = crate::metrics_out::dogstatsd_lines(&d.prefix, &d.tags, &stats);
            if let Err(e) = send_udp(&d.address, &crate::metrics_out::datagrams(&lines, 1432)).await {
                warn!(error = %e, address = %d.address, "DogStatsD metrics not sent");
            }
        }
    }

    /// Per-pool numbers now, and the fleet-wide queue-time p95 over the last minute.
    async fn pool_stats(
        &self,
        vms: &[VmRow],
        now: i64,
    ) -> Result<(std::collections::BTreeMap<String, crate::metrics_out::PoolStats>, Option<f64>), FleetError> {
        use crate::metrics_out::{p95, PoolStats};
        let policies = self.policies();
        let counts = self.store.counts().await?;
        let mut stats: std::collections::BTreeMap<String, PoolStats> = std::collections::BTreeMap::new();
        for p in &policies.pools {
            stats.entry(pool_key(p.executor.as_str(), &p.image, &p.resource_class)).or_default();
        }
        for (pool, state, n) in &counts.tasks {
            if state == "waiting" {
                stats.entry(pool.clone()).or_default().waiting += *n as u32;
            }
        }
        for vm in vms {
            stats.entry(vm.pool.clone()).or_default();
        }
        for (key, s) in stats.iter_mut() {
            let obs = observe(key, vms, None);
            s.idle = obs.idle.len() as u32;
            s.busy = obs.busy;
            if let Some(p) = policies.pool(key) {
                s.target = vmfleet_scaler::warm_target(&obs, &scaler_policy(p, self.target_floor(key)), now);
            }
        }
        let mut all = Vec::new();
        let mut by_pool: HashMap<String, Vec<f64>> = HashMap::new();
        for (pool, ms) in self.store.queue_times(now - 60_000).await? {
            let s = ms as f64 / 1000.0;
            all.push(s);
            by_pool.entry(pool).or_default().push(s);
        }
        for (pool, mut v) in by_pool {
            if let Some(s) = stats.get_mut(&pool) {
                s.queue_p95_s = p95(&mut v);
            }
        }
        Ok((stats, p95(&mut all)))
    }

    /// Garbage collection within the reconcile pass, on the instances it already described,
    /// once every `gc.interval`.
    async fn collect(&self, instances: &[vmfleet_provisioner::Instance], now: i64) -> Result<(), FleetError> {
        if !self.due("gc", self.config.gc.interval, now) {
            return Ok(());
        }
        let volumes = self
            .provider
            .describe_volumes(&self.install_id)
            .await
            .map_err(|e| FleetError::Internal(format!("describe volumes: {e}")))?;
        for action in self.gc_plan(instances, &volumes, now, self.config.gc.orphan_grace).await? {
            self.apply_gc(&action).await?;
        }
        Ok(())
    }

    /// What the collector would do now: observe (one describe of instances, one of volumes),
    /// plan. `orphan_grace` overrides the configured grace for this pass.
    ///
    /// # Errors
    /// Store or provider errors.
    pub async fn gc_dry_run(&self, orphan_grace: Option<Duration>) -> Result<Vec<vmfleet_gc::GcAction>, FleetError> {
        let cloud = |what: &str, e: ProvisionError| FleetError::Internal(format!("describe {what}: {e}"));
        let instances = self.provider.describe(&self.install_id).await.map_err(|e| cloud("instances", e))?;
        let volumes = self.provider.describe_volumes(&self.install_id).await.map_err(|e| cloud("volumes", e))?;
        self.gc_plan(&instances, &volumes, now_ms(), orphan_grace.unwrap_or(self.config.gc.orphan_grace)).await
    }

    /// Stuck, lost, leaked and orphaned VMs and volumes, and tasks waiting too long: the `gc`
    /// planner over the store and what the provider reported.
    async fn gc_plan(
        &self,
        instances: &[vmfleet_provisioner::Instance],
        volumes: &[vmfleet_provisioner::Volume],
        now: i64,
        orphan_grace: Duration,
    ) -> Result<Vec<vmfleet_gc::GcAction>, FleetError> {
        // Live VMs, plus the few finished ones whose instance the provider still reports: not the
        // whole history, which grows without bound.
        let mut vms = self.store.live_vms().await?;
        let live: HashSet<String> = vms.iter().map(|v| v.id.clone()).collect();
        for id in instances.iter().filter_map(|i| i.vm_id.as_ref()).filter(|id| !live.contains(*id)) {
            match self.store.vm(id).await {
                Ok(vm) => vms.push(vm),
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let waiting = self.store.tasks(Some("waiting"), i64::MAX).await?;
        let waiting_ids: HashSet<&str> = waiting.iter().map(|t| t.id.as_str()).collect();
        let snap = vmfleet_gc::Snapshot {
            vms: vms.iter().filter_map(|v| gc_record(v, &waiting_ids)).collect(),
            instances: instances
                .iter()
                .filter(|i| i.state != InstanceState::Terminated)
                .map(|i| vmfleet_gc::CloudInstance {
                    instance_id: i.instance_id.clone(),
                    vm_id: i.vm_id.clone(),
                    launched_at_ms: i.launched_at_ms,
                })
                .collect(),
            volumes: self.store.volumes(None).await?.iter().filter_map(gc_volume).collect(),
            cloud_volumes: volumes
                .iter()
                .map(|v| vmfleet_gc::CloudVolume {
                    provider_id: v.provider_id.clone(),
                    volume_id: v.volume_id.clone(),
                    attached_to: v.attached_to.clone(),
                    created_at_ms: v.created_at_ms,
                })
                .collect(),
            waiting: waiting
                .iter()
                .map(|t| vmfleet_gc::WaitingTask { task_id: t.id.clone(), created_at_ms: t.created_at })
                .collect(),
        };
        let settings = vmfleet_gc::Settings {
            vm_start_timeout_ms: self.config.timeouts.vm_start.as_millis() as i64,
            long_running_task_timeout_ms: self.config.timeouts.long_running_task.as_millis() as i64,
            orphan_grace_ms: orphan_grace.as_millis() as i64,
            retire_grace_ms: 60_000,
            volume_inactivity_ms: self.config.timeouts.dlc_inactivity.as_millis() as i64,
            volumes_per_project: self.config.gc.volumes_per_project,
            task_wait_limit_ms: self.config.gc.task_wait_limit.as_millis() as i64,
        };
        Ok(vmfleet_gc::plan(&snap, now, &settings, self.config.gc.budget))
    }

    /// Carries out one collector action and writes it, with its reason and outcome, to the
    /// audit log.
    ///
    /// # Errors
    /// Store errors; provider errors leave the record for the next pass (and are audited as
    /// unsuccessful).
    pub async fn apply_gc(&self, action: &vmfleet_gc::GcAction) -> Result<(), FleetError> {
        use vmfleet_gc::GcAction;
        let now = now_ms();
        let done = match action {
            GcAction::FailVm { vm_id, instance_id, reason } => {
                let terminated = match instance_id {
                    Some(i) => self.provider.terminate(std::slice::from_ref(i)).await,
                    None => Ok(()),
                };
                match terminated {
                    Ok(()) => {
                        self.store.fail_vm(vm_id, reason, now).await?;
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            GcAction::TerminateInstance { instance_id, vm_id, .. } => {
                match self.provider.terminate(std::slice::from_ref(instance_id)).await {
                    Ok(()) => {
                        if let Some(vm) = vm_id {
                            let retiring = [VmState::Releasing, VmState::Terminating];
                            self.store.transition(vm, &retiring, VmState::Terminated, now).await?;
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            GcAction::MarkLost { vm_id, requeue, reason } => {
                let reason = format!("lost: {reason}");
                match requeue {
                    Some(task_id) => self.requeue(task_id, vm_id, &reason, now).await?,
                    None => self.store.fail_vm(vm_id, &reason, now).await?,
                }
                Ok(())
            }
            GcAction::DeleteVolume { volume_id: Some(id), provider_id, .. } => {
                // Re-check: only while still unused. A provider error leaves it `deleting`, and
                // the deletion is retried on every pass until it succeeds.
                match self.store.request_volume_delete(id, now).await {
                    Ok(_) => match provider_id {
                        Some(p) => match self.provider.delete_volume(p).await {
                            Ok(()) => {
                                self.store.set_volume_state(id, "deleted", now_ms()).await?;
                                Ok(())
                            }
                            Err(e) => Err(e),
                        },
                        None => {
                            self.store.set_volume_state(id, "deleted", now_ms()).await?;
                            Ok(())
                        }
                    },
                    Err(StoreError::Conflict(m)) | Err(StoreError::NotFound(m)) => {
                        info!(volume = %id, "not collected: {m}");
                        return Ok(());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            GcAction::DeleteVolume { volume_id: None, provider_id, .. } => match provider_id {
                Some(p) => self.provider.delete_volume(p).await,
                None => Ok(()),
            },
            GcAction::ForgetVolume { volume_id, .. } => {
                self.store.forget_volume(volume_id, now).await?;
                Ok(())
            }
            GcAction::FailTask { task_id, reason } => {
                self.store.fail_task(task_id, reason, now).await?;
                self.wake();
                Ok(())
            }
        };
        let mut e = self.event(action.audit_action(), "gc", &action.target(), action.reason());
        match &done {
            Ok(()) => info!(target = %action.target(), reason = action.reason(), "gc"),
            Err(err) => {
                warn!(target = %action.target(), error = %err, "gc action failed; will retry on the next pass");
                e.success = false;
                e.payload = format!("{}; failed: {err}", action.reason());
            }
        }
        if let Err(err) = self.store.audit(&e).await {
            warn!(%err, "audit event not written");
        }
        Ok(())
    }

    /// Gives a task whose VM was lost before it started a new on-demand VM.
    async fn requeue(&self, task_id: &str, lost_vm: &str, reason: &str, now: i64) -> Result<(), FleetError> {
        let task = self.store.task(task_id).await?;
        let fresh = Executor::parse(&task.executor)
            .ok_or_else(|| FleetError::Internal(format!("task {task_id} has unknown executor {}", task.executor)))
            .and_then(|ex| self.new_vm(ex, &task.image, &task.resource_class, Some(task_id), now));
        match fresh {
            Ok(vm) => {
                if self.store.requeue_task(task_id, lost_vm, reason, &vm, now).await? {
                    info!(task = %task_id, lost = %lost_vm, vm = %vm.id, "requeued on a new VM");
                    self.wake();
                }
            }
            // Its image no longer resolves, say: the task cannot get another VM.
            Err(e) => self.store.fail_vm(lost_vm, &format!("{reason}; no new VM: {e}"), now).await?,
        }
        Ok(())
    }
}

/// A registered image row as a catalog image; `None` for a row this version cannot read.
fn image_of(row: &crate::store::ImageRow) -> Option<vmfleet_images::Image> {
    let kind = vmfleet_images::packer::ImageKind::parse(&row.kind)?;
    let arch: vmfleet_images::Arch = serde_json::from_value(serde_json::Value::String(row.arch.clone())).ok()?;
    let amis = serde_json::from_str(&row.amis).ok()?;
    Some(kind.image(&row.name, &row.version, arch, amis))
}

/// A request to register an image version.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterImage {
    /// Name, such as `ubuntu-2004`.
    pub name: String,
    /// Version, such as `202010-01`.
    pub version: String,
    /// `linux`, `windows`, `gpu` or `remote-docker`.
    pub kind: String,
    /// `x86_64` (default) or `arm64`.
    #[serde(default = "default_arch")]
    pub arch: String,
    /// AMI per region.
    pub amis: std::collections::BTreeMap<String, String>,
}

fn default_arch() -> String {
    "x86_64".into()
}

fn valid_image_part(s: &str) -> bool {
    !s.is_empty() && s.len() <= 100 && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Fleet {
    /// Registers an image version (from a packer pipeline).
    ///
    /// # Errors
    /// [`FleetError::BadRequest`] naming the bad field; [`FleetError::Conflict`] when that version
    /// exists.
    pub async fn register_image(&self, req: &RegisterImage, actor: &str) -> Result<crate::store::ImageRow, FleetError> {
        use vmfleet_images::packer::{valid_ami, valid_region, ImageKind};
        let bad = |m: String| Err(FleetError::BadRequest(m));
        if !valid_image_part(&req.name) {
            return bad(format!("name {:?}: use letters, digits, '-', '_' or '.'", req.name));
        }
        if !valid_image_part(&req.version) {
            return bad(format!("version {:?}: use letters, digits, '-', '_' or '.'", req.version));
        }
        if ImageKind::parse(&req.kind).is_none() {
            return bad(format!("kind {:?}: use linux, windows, gpu or remote-docker", req.kind));
        }
        if serde_json::from_value::<vmfleet_images::Arch>(serde_json::Value::String(req.arch.clone())).is_err() {
            return bad(format!("arch {:?}: use x86_64 or arm64", req.arch));
        }
        if req.amis.is_empty() {
            return bad("amis: at least one region's AMI is needed".into());
        }
        for (region, ami) in &req.amis {
            if !valid_region(region) || !valid_ami(ami) {
                return bad(format!("amis.{region}: {ami:?} is not an AMI id in a region"));
            }
        }
        self.check_amis(req).await?;
        let row = crate::store::ImageRow {
            name: req.name.clone(),
            version: req.version.clone(),
            kind: req.kind.clone(),
            arch: req.arch.clone(),
            amis: serde_json::to_string(&req.amis).map_err(|e| FleetError::Internal(e.to_string()))?,
            registered_at: now_ms(),
        };
        self.store.insert_image(&row).await?;
        self.refresh_catalog().await?;
        self.audit("image.register", actor, &format!("{}:{}", req.name, req.version), &row.amis).await;
        Ok(row)
    }

    /// With a cloud provider, checks the AMI of its region: it exists, is `available`, and its
    /// platform and architecture are what the kind and arch declare. (The provider's client is
    /// bound to one region; AMIs of other regions are checked when used there.)
    async fn check_amis(&self, req: &RegisterImage) -> Result<(), FleetError> {
        let region = match self.config.provider.kind {
            ProviderKind::Ec2 => &self.config.provider.ec2.region,
            ProviderKind::Local => return Ok(()),
        };
        let Some(ami) = req.amis.get(region) else { return Ok(()) };
        let facts = match self.provider.describe_image(ami).await {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(ProvisionError::NotFound(_)) | Err(ProvisionError::Invalid(_)) => {
                return Err(FleetError::BadRequest(format!("amis.{region}: {ami} does not exist in {region}")))
            }
            Err(e) => return Err(FleetError::Internal(format!("checking {ami}: {e}"))),
        };
        if facts.state != "available" {
            return Err(FleetError::BadRequest(format!("amis.{region}: {ami} is {}, not available", facts.state)));
        }
        let want = if req.kind == "windows" { Platform::Windows } else { Platform::Linux };
        if facts.platform != want {
            return Err(FleetError::BadRequest(format!(
                "amis.{region}: {ami} is a {:?} image, and kind {} needs {:?}",
                facts.platform, req.kind, want
            )));
        }
        if !facts.architecture.is_empty() && facts.architecture != req.arch {
            return Err(FleetError::BadRequest(format!(
                "amis.{region}: {ami} is built for {}, and arch says {}",
                facts.architecture, req.arch
            )));
        }
        Ok(())
    }

    /// Points `alias` (default: the image's name) at `name:version`.
    ///
    /// # Errors
    /// [`FleetError::NotFound`] for an unknown version.
    pub async fn promote_image(
        &self,
        name: &str,
        version: &str,
        alias: Option<&str>,
        actor: &str,
    ) -> Result<String, FleetError> {
        let target = format!("{name}:{version}");
        if !self.catalog().images().iter().any(|i| i.id() == target) {
            return Err(FleetError::NotFound(format!("image {target} is not registered")));
        }
        let alias = alias.unwrap_or(name);
        self.point_alias(alias, &target, actor).await?;
        self.audit("image.promote", actor, alias, &target).await;
        Ok(target)
    }

    /// Points `alias` back at what it pointed to before its current target.
    ///
    /// # Errors
    /// [`FleetError::Conflict`] when there is nothing to roll back to.
    pub async fn rollback_image(&self, alias: &str, actor: &str) -> Result<String, FleetError> {
        let history = self.store.alias_history(Some(alias)).await?;
        let Some(current) = history.last() else {
            return Err(FleetError::Conflict(format!("alias {alias} has no promotion history")));
        };
        let Some(previous) = history.iter().rev().find(|a| a.target != current.target) else {
            return Err(FleetError::Conflict(format!(
                "alias {alias} has never pointed elsewhere than {}",
                current.target
            )));
        };
        let target = previous.target.clone();
        self.point_alias(alias, &target, actor).await?;
        self.audit("image.rollback", actor, alias, &target).await;
        Ok(target)
    }

    async fn point_alias(&self, alias: &str, target: &str, actor: &str) -> Result<(), FleetError> {
        // Keep history strictly ordered even within one millisecond.
        let last = self.store.alias_history(Some(alias)).await?.last().map_or(0, |a| a.set_at);
        self.store.set_alias(alias, target, actor, now_ms().max(last + 1)).await?;
        self.refresh_catalog().await?;
        Ok(())
    }
}

/// What `vmfleet reset` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ResetReport {
    /// Instances tagged with this installation that were terminated.
    pub instances_terminated: Vec<String>,
    /// Volumes tagged with this installation that were deleted.
    pub volumes_deleted: Vec<String>,
    /// Records cleared: tasks, volumes, VMs.
    pub records_cleared: (u64, u64, u64),
}

impl Fleet {
    /// Tasks waiting or holding a VM.
    ///
    /// # Errors
    /// Store errors.
    pub async fn active_tasks(&self) -> Result<i64, FleetError> {
        let c = self.store.counts().await?;
        Ok(c.tasks.iter().map(|(_, _, n)| n).sum())
    }

    /// The recovery the operations guide did by hand: pause assignment and preallocation,
    /// terminate every instance and delete every volume tagged with this installation, clear the
    /// fleet's records, resume. The caller checks for running tasks first.
    ///
    /// # Errors
    /// Store or provider errors; the fleet stays paused when a step fails, so it can be rerun.
    pub async fn reset(&self) -> Result<ResetReport, FleetError> {
        let cloud = |e: ProvisionError| FleetError::Internal(e.to_string());
        self.store.set_paused(true).await?;
        let mut report = ResetReport::default();
        let instances = self.provider.describe(&self.install_id).await.map_err(cloud)?;
        report.instances_terminated = instances.iter().map(|i| i.instance_id.clone()).collect();
        self.provider.terminate(&report.instances_terminated).await.map_err(cloud)?;
        for v in self.provider.describe_volumes(&self.install_id).await.map_err(cloud)? {
            if let Some(i) = &v.attached_to {
                match self.provider.detach_volume(&v.provider_id, i).await {
                    Ok(()) | Err(ProvisionError::NotFound(_)) => {}
                    Err(e) => return Err(cloud(e)),
                }
            }
            self.provider.delete_volume(&v.provider_id).await.map_err(cloud)?;
            report.volumes_deleted.push(v.provider_id);
        }
        report.records_cleared = self.store.clear_fleet().await?;
        let payload = serde_json::to_string(&report).unwrap_or_default();
        self.audit("fleet.reset", "cli", &self.install_id, &payload).await;
        self.store.set_paused(false).await?;
        Ok(report)
    }
}

fn is_live(s: VmState) -> bool {
    !matches!(s, VmState::Terminated | VmState::Failed)
}

fn gc_record(vm: &VmRow, waiting: &HashSet<&str>) -> Option<vmfleet_gc::VmRecord> {
    use vmfleet_gc::Phase;
    let phase = match vm.vm_state()? {
        VmState::Requested | VmState::Provisioning | VmState::Booting => Phase::Starting,
        VmState::Ready => Phase::Ready,
        VmState::Assigned => Phase::Assigned,
        VmState::Releasing | VmState::Terminating => Phase::Retiring,
        VmState::Terminated | VmState::Failed => Phase::Done,
    };
    Some(vmfleet_gc::VmRecord {
        vm_id: vm.id.clone(),
        phase,
        instance_id: vm.instance_id.clone(),
        requested_at_ms: vm.requested_at,
        state_since_ms: vm.state_since,
        task: vm.task_id.as_ref().map(|t| (t.clone(), !waiting.contains(t.as_str()))),
    })
}

fn gc_volume(v: &VolumeRow) -> Option<vmfleet_gc::VolumeRecord> {
    use vmfleet_gc::VolumePhase;
    let phase = match v.state.as_str() {
        "available" => VolumePhase::Available,
        "deleting" => VolumePhase::Deleting,
        "deleted" => return None,
        _ => VolumePhase::InUse,
    };
    Some(vmfleet_gc::VolumeRecord {
        volume_id: v.id.clone(),
        provider_id: v.provider_id.clone(),
        project: v.project.clone(),
        phase,
        last_used_at_ms: v.last_used_at,
        state_since_ms: v.state_since,
    })
}

/// Forecast targets and what they were computed for.
#[derive(Debug, Default)]
struct ForecastCache {
    minute: i64,
    forecasts: Vec<(String, vmfleet_scaler::forecast::Forecast)>,
    targets: HashMap<String, u32>,
}

/// One pool as the scaler sees it. `current` is the image id the pool resolves to now; idle
/// VMs of another are outdated.
fn observe(key: &str, vms: &[VmRow], current: Option<&str>) -> vmfleet_scaler::PoolObservation {
    let mut obs = vmfleet_scaler::PoolObservation { pool: key.to_string(), ..Default::default() };
    for vm in vms.iter().filter(|v| v.pool == key) {
        match vm.vm_state() {
            Some(VmState::Ready) if !vm.draining && vm.task_id.is_none() => obs.idle.push(vmfleet_scaler::IdleVm {
                vm_id: vm.id.clone(),
                ready_at_ms: vm.ready_at.unwrap_or(vm.requested_at),
                launched_at_ms: vm.requested_at,
                outdated: current.is_some_and(|c| c != vm.image_id),
            }),
            Some(VmState::Requested | VmState::Provisioning | VmState::Booting) if vm.task_id.is_none() => {
                obs.starting += 1
            }
            Some(VmState::Releasing | VmState::Terminating) => obs.retiring += 1,
            Some(VmState::Terminated | VmState::Failed) | None => {}
            Some(_) => obs.busy += 1,
        }
    }
    obs
}

/// A pool's policy as the scaler takes it.
pub(crate) fn scaler_policy(p: &crate::config::PoolConfig, step_target: Option<u32>) -> vmfleet_scaler::PoolPolicy {
    vmfleet_scaler::PoolPolicy {
        min_idle: p.min_idle,
        max_instances: p.max_instances,
        max_replace_share: p.max_replace_share,
        idle_timeout_ms: p.idle_timeout.as_millis() as i64,
        max_age_ms: (!p.max_age.is_zero()).then_some(p.max_age.as_millis() as i64),
        scale_factor: p.scale_factor,
        // Checked when the policy was loaded.
        schedules: p
            .schedules
            .iter()
            .filter_map(|w| {
                let cron = vmfleet_scaler::CronWindow::parse(&w.cron, &w.timezone).ok()?;
                Some(vmfleet_scaler::Window { cron, min_idle: w.min_idle })
            })
            .collect(),
        step_target,
    }
}

/// A pool's queued tasks in the order they get VMs: round robin between projects, each
/// project's oldest first, so one project's 50-way matrix does not hold back everyone else.
/// `queued` comes oldest first.
fn fair_queue<'a>(queued: &'a [TaskRow], pool: &str) -> Vec<&'a TaskRow> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut ranked: Vec<(usize, &TaskRow)> = queued
        .iter()
        .filter(|t| t.pool == pool)
        .map(|t| {
            let n = seen.entry(t.project.as_str()).or_default();
            *n += 1;
            (*n, t)
        })
        .collect();
    // Stable: within a round, the older task first.
    ranked.sort_by_key(|(rank, _)| *rank);
    ranked.into_iter().map(|(_, t)| t).collect()
}

/// Sends datagrams to `address` (`host:port`) from an ephemeral local port.
async fn send_udp(address: &str, datagrams: &[String]) -> std::io::Result<()> {
    let target = tokio::net::lookup_host(address)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
    let local = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let sock = tokio::net::UdpSocket::bind(local).await?;
    for d in datagrams {
        sock.send_to(d.as_bytes(), target).await?;
    }
    Ok(())
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

async fn try_lead(pool: &sqlx::PgPool) -> Option<sqlx::pool::PoolConnection<sqlx::Postgres>> {
    // A session-level advisory lock held on a dedicated connection: it is released when the
    // connection (or the process) dies, and another replica takes over.
    const KEY: i64 = 0x0076_6d66_6c65_6574;
    let mut conn = pool.acquire().await.ok()?;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(KEY).fetch_one(&mut *conn).await.ok()?;
    got.then_some(conn)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(project: &str, at: i64) -> TaskRow {
        TaskRow {
            id: format!("t-{project}-{at}"),
            pool: "p".into(),
            executor: "machine".into(),
            image: "default".into(),
            resource_class: "medium".into(),
            project: project.into(),
            dlc: false,
            state: "waiting".into(),
            vm_id: None,
            volume_id: None,
            failure_reason: None,
            created_at: at,
            assigned_at: None,
            released_at: None,
            docker_client_cert: None,
            docker_client_key: None,
        }
    }

    #[test]
    fn queued_tasks_take_turns_between_projects() {
        let mut q: Vec<TaskRow> = (0..50).map(|i| queued("big", i)).collect();
        q.push(queued("small", 100));
        q.push(queued("small", 101));
        let order: Vec<&str> = fair_queue(&q, "p").iter().take(5).map(|t| t.project.as_str()).collect();
        assert_eq!(order, ["big", "small", "big", "small", "big"]);
        assert!(fair_queue(&q, "other").is_empty());
    }
}
