//! API response types, separate from the store's rows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::fleet::{Fleet, FleetError};
use crate::store::{Counts, TaskRow, VmRow, VolumeRow};

fn ts(ms: i64) -> String {
    crate::store::rfc3339(ms)
}

fn ts_opt(ms: Option<i64>) -> Option<String> {
    ms.map(ts)
}

/// How to reach a task's VM. Contains the VM's private key: shown only to the task's holder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SshView {
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// User.
    pub user: String,
    /// OpenSSH private key.
    pub private_key: String,
    /// The VM's host key, for known_hosts.
    pub host_key: Option<String>,
}

/// How a remote-docker task reaches its Docker daemon. Contains the task's client key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DockerView {
    /// `DOCKER_HOST`, when the VM's image runs a Docker daemon (the local provider runs none).
    pub docker_host: Option<String>,
    /// `DOCKER_TLS_VERIFY`.
    pub docker_tls_verify: String,
    /// `ca.pem`.
    pub ca_cert: String,
    /// `cert.pem`: this task's client certificate.
    pub client_cert: String,
    /// `key.pem`.
    pub client_key: String,
}

/// A task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskView {
    /// Id.
    pub id: String,
    /// `waiting`, `assigned`, `released`, `failed`.
    pub state: String,
    /// Executor.
    pub executor: String,
    /// Image alias.
    pub image: String,
    /// Resource class.
    pub resource_class: String,
    /// Project.
    pub project: String,
    /// DLC asked for.
    pub docker_layer_caching: bool,
    /// VM, once chosen.
    pub vm_id: Option<String>,
    /// DLC volume, once chosen.
    pub volume_id: Option<String>,
    /// Why it failed.
    pub failure_reason: Option<String>,
    /// When requested.
    pub created_at: String,
    /// When its VM was handed over.
    pub assigned_at: Option<String>,
    /// When released.
    pub released_at: Option<String>,
    /// How to reach the VM, while assigned.
    pub ssh: Option<SshView>,
    /// Remote-Docker endpoint and TLS files, while assigned.
    pub docker: Option<DockerView>,
}

impl TaskView {
    /// Without connection details.
    pub fn summary(t: TaskRow) -> Self {
        Self {
            id: t.id,
            state: t.state,
            executor: t.executor,
            image: t.image,
            resource_class: t.resource_class,
            project: t.project,
            docker_layer_caching: t.dlc,
            vm_id: t.vm_id,
            volume_id: t.volume_id,
            failure_reason: t.failure_reason,
            created_at: ts(t.created_at),
            assigned_at: ts_opt(t.assigned_at),
            released_at: ts_opt(t.released_at),
            ssh: None,
            docker: None,
        }
    }

    /// With connection details when the task holds its VM.
    ///
    /// # Errors
    /// Store errors.
    pub async fn load(fleet: &Fleet, t: TaskRow) -> Result<Self, FleetError> {
        let mut docker = None;
        let ssh = match (&t.vm_id, t.state.as_str()) {
            (Some(vm_id), "assigned") => {
                let vm = fleet.store.vm(vm_id).await?;
                if let (Some(client_cert), Some(client_key), Some(ca_cert)) = (
                    t.docker_client_cert.clone(),
                    t.docker_client_key.clone(),
                    fleet.store.docker_ca_stored().await?.map(|ca| ca.cert),
                ) {
                    docker = Some(DockerView {
                        docker_host: vm.docker_host.clone(),
                        docker_tls_verify: "1".into(),
                        ca_cert,
                        client_cert,
                        client_key,
                    });
                }
                match (vm.host, vm.ssh_port) {
                    (Some(host), Some(port)) => Some(SshView {
                        host,
                        port: u16::try_from(port).unwrap_or(22),
                        user: vm.ssh_user,
                        private_key: vm.ssh_private_key,
                        host_key: vm.host_key,
                    }),
                    _ => None,
                }
            }
            _ => None,
        };
        Ok(Self { ssh, docker, ..Self::summary(t) })
    }
}

/// A VM (never with its private key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmView {
    /// Id.
    pub id: String,
    /// Pool key.
    pub pool: String,
    /// Lifecycle state.
    pub state: String,
    /// Warm (preallocated) or on-demand.
    pub preallocated: bool,
    /// Task holding it.
    pub task_id: Option<String>,
    /// Provider id.
    pub instance_id: Option<String>,
    /// Instance type.
    pub instance_type: String,
    /// Image (`name:version`).
    pub image_id: String,
    /// Zone.
    pub zone: Option<String>,
    /// Address.
    pub host: Option<String>,
    /// SSH port.
    pub ssh_port: Option<i64>,
    /// No new work.
    pub draining: bool,
    /// Why it failed.
    pub failure_reason: Option<String>,
    /// When requested.
    pub requested_at: String,
    /// When ready.
    pub ready_at: Option<String>,
    /// When assigned.
    pub assigned_at: Option<String>,
    /// When terminated.
    pub terminated_at: Option<String>,
}

impl From<&VmRow> for VmView {
    fn from(v: &VmRow) -> Self {
        Self {
            id: v.id.clone(),
            pool: v.pool.clone(),
            state: v.state.clone(),
            preallocated: v.preallocated,
            task_id: v.task_id.clone(),
            instance_id: v.instance_id.clone(),
            instance_type: v.instance_type.clone(),
            image_id: v.image_id.clone(),
            zone: v.zone.clone(),
            host: v.host.clone(),
            ssh_port: v.ssh_port,
            draining: v.draining,
            failure_reason: v.failure_reason.clone(),
            requested_at: ts(v.requested_at),
            ready_at: ts_opt(v.ready_at),
            assigned_at: ts_opt(v.assigned_at),
            terminated_at: ts_opt(v.terminated_at),
        }
    }
}

/// A DLC volume.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeView {
    /// Id.
    pub id: String,
    /// Owning project.
    pub project: String,
    /// Provider id.
    pub provider_id: Option<String>,
    /// Zone.
    pub zone: String,
    /// Size, GiB.
    pub size_gb: i64,
    /// State.
    pub state: String,
    /// Task using it.
    pub task_id: Option<String>,
    /// VM it is attached to.
    pub vm_id: Option<String>,
    /// Created.
    pub created_at: String,
    /// Last used.
    pub last_used_at: String,
}

impl From<&VolumeRow> for VolumeView {
    fn from(v: &VolumeRow) -> Self {
        Self {
            id: v.id.clone(),
            project: v.project.clone(),
            provider_id: v.provider_id.clone(),
            zone: v.zone.clone(),
            size_gb: v.size_gb,
            state: v.state.clone(),
            task_id: v.task_id.clone(),
            vm_id: v.vm_id.clone(),
            created_at: ts(v.created_at),
            last_used_at: ts(v.last_used_at),
        }
    }
}

/// The installation at a glance (`vmfleet status`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Installation id.
    pub install_id: String,
    /// Provider kind.
    pub provider: String,
    /// Database backend.
    pub database: String,
    /// Live VMs: pool → state → count.
    pub pools: BTreeMap<String, BTreeMap<String, i64>>,
    /// Tasks waiting.
    pub tasks_waiting: i64,
    /// Tasks holding a VM.
    pub tasks_running: i64,
    /// Volumes by state.
    pub volumes: BTreeMap<String, i64>,
}

impl Summary {
    /// From counts.
    pub fn new(fleet: &Fleet, c: &Counts) -> Self {
        let mut pools: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        for (pool, state, n) in &c.vms {
            pools.entry(pool.clone()).or_default().insert(state.clone(), *n);
        }
        let sum = |want: &str| c.tasks.iter().filter(|(_, s, _)| s == want).map(|(_, _, n)| n).sum();
        Self {
            install_id: fleet.install_id.clone(),
            provider: fleet.provider.kind().into(),
            database: fleet.store.backend().into(),
            pools,
            tasks_waiting: sum("waiting"),
            tasks_running: sum("assigned"),
            volumes: c.volumes.iter().cloned().collect(),
        }
    }
}

/// The catalog: every image version and where every alias points.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImagesView {
    /// Image versions.
    pub images: Vec<vmfleet_images::Image>,
    /// Alias → `name:version`.
    pub aliases: BTreeMap<String, String>,
}

impl From<&vmfleet_images::Catalog> for ImagesView {
    fn from(c: &vmfleet_images::Catalog) -> Self {
        Self { images: c.images().to_vec(), aliases: c.aliases().clone() }
    }
}

/// One alias change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AliasChange {
    /// Alias.
    pub alias: String,
    /// `name:version` it pointed to from then on.
    pub target: String,
    /// When.
    pub set_at: String,
    /// Token name that did it.
    pub actor: String,
}

/// An image name: its versions, the aliases pointing at them now, and the history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageDetail {
    /// Name.
    pub name: String,
    /// Its versions.
    pub versions: Vec<vmfleet_images::Image>,
    /// Aliases pointing at one of its versions now.
    pub aliases: BTreeMap<String, String>,
    /// Changes of those aliases and of the alias named like the image, oldest first.
    pub history: Vec<AliasChange>,
}

impl ImageDetail {
    /// Loads one image name.
    ///
    /// # Errors
    /// [`FleetError::NotFound`] when neither a version nor an alias has that name.
    pub async fn load(fleet: &Fleet, name: &str) -> Result<Self, FleetError> {
        let catalog = fleet.catalog();
        let prefix = format!("{name}:");
        let versions: Vec<_> = catalog.images().iter().filter(|i| i.name == name).cloned().collect();
        let aliases: BTreeMap<String, String> = catalog
            .aliases()
            .iter()
            .filter(|(a, t)| t.starts_with(&prefix) || a.as_str() == name)
            .map(|(a, t)| (a.clone(), t.clone()))
            .collect();
        if versions.is_empty() && aliases.is_empty() {
            return Err(FleetError::NotFound(format!("image {name}")));
        }
        let history = fleet
            .store
            .alias_history(None)
            .await?
            .into_iter()
            .filter(|a| a.target.starts_with(&prefix) || a.alias == name || aliases.contains_key(&a.alias))
            .map(|a| AliasChange { alias: a.alias, target: a.target, set_at: ts(a.set_at), actor: a.actor })
            .collect();
        Ok(Self { name: name.into(), versions, aliases, history })
    }
}

/// One step of a job task's attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepView {
    /// 1-based position.
    pub index: i64,
    /// What it is (`checkout`, `run: NAME`, …).
    pub name: String,
    /// `running`, `success`, `failed`, `timedout`, `canceled`, `skipped`, `background`.
    pub state: String,
    /// Exit code, when it exited.
    pub exit_code: Option<i64>,
    /// Seconds it ran, once it ended.
    pub duration_s: Option<f64>,
}

/// One parallel task of a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobTaskView {
    /// Id.
    pub id: String,
    /// `CIRCLE_NODE_INDEX`.
    pub node_index: i64,
    /// `queued`, `running`, `success`, `failed`, `canceled`, `infrastructure_fail`.
    pub state: String,
    /// Starts so far (a requeue after a lost claim starts again).
    pub attempt: i64,
    /// The process running it.
    pub owner: Option<String>,
    /// The fleet task holding its VM.
    pub fleet_task_id: Option<String>,
    /// The fleet task holding its remote-Docker VM.
    pub remote_task_id: Option<String>,
    /// Exit code of the step that failed it (0 on success).
    pub exit_code: Option<i64>,
    /// Why it failed.
    pub failure_reason: Option<String>,
    /// When it started.
    pub started_at: Option<String>,
    /// When it ended.
    pub finished_at: Option<String>,
    /// Steps of the latest attempt.
    pub steps: Vec<StepView>,
}

/// A job (never with its deploy key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobView {
    /// Id.
    pub id: String,
    /// `CIRCLE_BUILD_NUM`.
    pub number: i64,
    /// Job name.
    pub name: String,
    /// Project.
    pub project: String,
    /// The config file it came from.
    pub config_file: String,
    /// `blocked` (a workflow's job waiting for the jobs it requires), `queued`, `running`,
    /// `success`, `failed`, `canceled`, `infrastructure_fail`, `not_run`.
    pub state: String,
    /// The workflow it belongs to.
    #[serde(default)]
    pub workflow_id: Option<String>,
    /// Pool of its VMs.
    pub pool: String,
    /// Parallel tasks.
    pub parallelism: i64,
    /// Repository `checkout` clones.
    pub repo: Option<String>,
    /// Revision.
    pub revision: Option<String>,
    /// Cancel asked for.
    pub cancel_requested: bool,
    /// Why it failed.
    pub failure_reason: Option<String>,
    /// Exit code of the first failed task (0 on success).
    pub exit_code: Option<i64>,
    /// When queued.
    pub queued_at: String,
    /// When its first task started.
    pub started_at: Option<String>,
    /// When its last task ended.
    pub finished_at: Option<String>,
    /// Its tasks (empty in listings).
    pub tasks: Vec<JobTaskView>,
}

impl JobView {
    /// Without tasks.
    pub fn summary(j: &crate::store::JobRow) -> Self {
        Self {
            id: j.id.clone(),
            number: j.number,
            name: j.name.clone(),
            project: j.project.clone(),
            config_file: j.config_file.clone(),
            state: j.state.clone(),
            workflow_id: j.workflow_id.clone(),
            pool: j.pool.clone(),
            parallelism: j.parallelism,
            repo: j.repo.clone(),
            revision: j.revision.clone(),
            cancel_requested: j.cancel_requested,
            failure_reason: j.failure_reason.clone(),
            exit_code: None,
            queued_at: ts(j.queued_at),
            started_at: ts_opt(j.started_at),
            finished_at: ts_opt(j.finished_at),
            tasks: Vec::new(),
        }
    }

    /// With tasks and their steps.
    ///
    /// # Errors
    /// Store errors.
    pub async fn load(store: &crate::store::Store, j: &crate::store::JobRow) -> Result<Self, FleetError> {
        let mut v = Self::summary(j);
        for t in store.job_tasks(&j.id).await? {
            let steps = store
                .job_steps(&t.id, t.attempt)
                .await?
                .into_iter()
                .map(|s| StepView {
                    index: s.idx,
                    name: s.name,
                    state: s.state,
                    exit_code: s.exit_code,
                    duration_s: s.started_at.zip(s.finished_at).map(|(a, b)| (b - a) as f64 / 1000.0),
                })
                .collect();
            v.tasks.push(JobTaskView {
                id: t.id,
                node_index: t.node_index,
                state: t.state,
                attempt: t.attempt,
                owner: t.owner,
                fleet_task_id: t.fleet_task_id,
                remote_task_id: t.remote_task_id,
                exit_code: t.exit_code,
                failure_reason: t.failure_reason,
                started_at: ts_opt(t.started_at),
                finished_at: ts_opt(t.finished_at),
                steps,
            });
        }
        v.exit_code = match v.state.as_str() {
            "success" => Some(0),
            "failed" => v.tasks.iter().filter(|t| t.state == "failed").find_map(|t| t.exit_code).or(Some(1)),
            _ => None,
        };
        Ok(v)
    }

    /// Whether the job has ended.
    pub fn ended(&self) -> bool {
        crate::store::job_ended(&self.state)
    }
}

/// One chunk of job output as the stream sends it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputView {
    /// Node index of the task.
    pub node: i64,
    /// Attempt.
    pub attempt: i64,
    /// Step (1-based; 0 before the first, -1 after the last).
    pub step: i64,
    /// `out`, `err` or `sys`.
    pub stream: String,
    /// Text.
    pub data: String,
}
