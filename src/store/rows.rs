//! Rows as stored. API responses are separate types (`crate::api::views`).

use serde::Serialize;

/// Lifecycle of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// Recorded; the provider has not been asked yet.
    Requested,
    /// The provider accepted the launch.
    Provisioning,
    /// The instance runs; waiting for SSH.
    Booting,
    /// Idle and reachable.
    Ready,
    /// Handed to a task.
    Assigned,
    /// Stopped tier: booted once, being stopped.
    Stopping,
    /// Stopped tier: stopped, paying for its volume only; never ran a job.
    Stopped,
    /// Stopped tier: being started again (for a task, or the running warm target).
    Starting,
    /// The task is done; detaching volumes.
    Releasing,
    /// The provider is terminating it.
    Terminating,
    /// Gone.
    Terminated,
    /// Failed; see `failure_reason`.
    Failed,
}

impl VmState {
    /// All states, in lifecycle order.
    pub const ALL: [VmState; 12] = [
        VmState::Requested,
        VmState::Provisioning,
        VmState::Booting,
        VmState::Ready,
        VmState::Assigned,
        VmState::Stopping,
        VmState::Stopped,
        VmState::Starting,
        VmState::Releasing,
        VmState::Terminating,
        VmState::Terminated,
        VmState::Failed,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Requested => "requested",
            VmState::Provisioning => "provisioning",
            VmState::Booting => "booting",
            VmState::Ready => "ready",
            VmState::Assigned => "assigned",
            VmState::Stopping => "stopping",
            VmState::Stopped => "stopped",
            VmState::Starting => "starting",
            VmState::Releasing => "releasing",
            VmState::Terminating => "terminating",
            VmState::Terminated => "terminated",
            VmState::Failed => "failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The column stamped when a VM enters this state.
    pub fn time_column(self) -> &'static str {
        match self {
            VmState::Requested => "requested_at",
            VmState::Provisioning => "provisioning_at",
            VmState::Booting => "booting_at",
            VmState::Ready => "ready_at",
            VmState::Assigned => "assigned_at",
            VmState::Stopping => "stopping_at",
            VmState::Stopped => "stopped_at",
            VmState::Starting => "starting_at",
            VmState::Releasing => "releasing_at",
            VmState::Terminating => "terminating_at",
            VmState::Terminated => "terminated_at",
            VmState::Failed => "failed_at",
        }
    }
}

/// A VM row. `ssh_private_key` is secret: never log a `VmRow`.
#[derive(Clone, sqlx::FromRow)]
pub struct VmRow {
    pub id: String,
    pub pool: String,
    pub executor: String,
    pub image: String,
    pub resource_class: String,
    pub preallocated: bool,
    pub state: String,
    pub task_id: Option<String>,
    pub instance_id: Option<String>,
    pub image_id: String,
    pub instance_type: String,
    pub platform: String,
    pub zone: Option<String>,
    pub host: Option<String>,
    pub ssh_port: Option<i64>,
    pub ssh_user: String,
    pub ssh_private_key: String,
    pub ssh_public_key: String,
    pub host_key: Option<String>,
    pub draining: bool,
    pub failure_reason: Option<String>,
    pub requested_at: i64,
    pub provisioning_at: Option<i64>,
    pub booting_at: Option<i64>,
    pub ready_at: Option<i64>,
    pub assigned_at: Option<i64>,
    pub releasing_at: Option<i64>,
    pub terminating_at: Option<i64>,
    pub terminated_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub state_since: i64,
    pub docker_host: Option<String>,
    /// Launched for the stopped tier: stopped once it first answers, unless a task took it.
    pub stop_after_boot: bool,
    pub stopping_at: Option<i64>,
    pub stopped_at: Option<i64>,
    pub starting_at: Option<i64>,
}

impl std::fmt::Debug for VmRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmRow")
            .field("id", &self.id)
            .field("pool", &self.pool)
            .field("state", &self.state)
            .field("task_id", &self.task_id)
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

/// What a new VM needs to be known to the store before the cloud hears of it.
#[derive(Clone)]
pub struct NewVm {
    pub id: String,
    pub executor: String,
    pub image: String,
    pub resource_class: String,
    /// The task it is launched for; `None` for a warm (preallocated) VM.
    pub task_id: Option<String>,
    pub image_id: String,
    pub instance_type: String,
    pub platform: String,
    pub ssh_private_key: String,
    pub ssh_public_key: String,
}

impl VmRow {
    /// A VM in `requested` at `now`: the one way a VM row is made.
    pub fn requested(new: NewVm, now: i64) -> Self {
        VmRow {
            pool: vmfleet_scaler::pool_key(&new.executor, &new.image, &new.resource_class),
            id: new.id,
            executor: new.executor,
            image: new.image,
            resource_class: new.resource_class,
            preallocated: new.task_id.is_none(),
            state: VmState::Requested.as_str().into(),
            task_id: new.task_id,
            instance_id: None,
            image_id: new.image_id,
            instance_type: new.instance_type,
            platform: new.platform,
            zone: None,
            host: None,
            ssh_port: None,
            ssh_user: "circleci".into(),
            ssh_private_key: new.ssh_private_key,
            ssh_public_key: new.ssh_public_key,
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
            stop_after_boot: false,
            stopping_at: None,
            stopped_at: None,
            starting_at: None,
        }
    }

    /// The parsed state.
    pub fn vm_state(&self) -> Option<VmState> {
        VmState::parse(&self.state)
    }

    /// When the VM's current start began: its request, or its last start from stopped. The VM
    /// start timeout counts from here.
    pub fn start_clock(&self) -> i64 {
        self.starting_at.unwrap_or(self.requested_at)
    }
}

/// A task row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TaskRow {
    pub id: String,
    pub pool: String,
    pub executor: String,
    pub image: String,
    pub resource_class: String,
    pub project: String,
    pub dlc: bool,
    pub state: String,
    pub vm_id: Option<String>,
    pub volume_id: Option<String>,
    pub failure_reason: Option<String>,
    pub created_at: i64,
    pub assigned_at: Option<i64>,
    pub released_at: Option<i64>,
    pub docker_client_cert: Option<String>,
    pub docker_client_key: Option<String>,
}

/// A DLC volume row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct VolumeRow {
    pub id: String,
    pub project: String,
    pub provider_id: Option<String>,
    pub zone: String,
    pub size_gb: i64,
    pub state: String,
    pub task_id: Option<String>,
    pub vm_id: Option<String>,
    pub created_at: i64,
    pub last_used_at: i64,
    pub state_since: i64,
}

/// An audit event, in the operations guide's event schema.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AuditEvent {
    pub id: String,
    pub version: i64,
    pub action: String,
    pub actor: String,
    pub target: String,
    pub payload: String,
    pub occurred_at: i64,
    pub scope: String,
    pub success: bool,
    pub request: Option<String>,
}

impl AuditEvent {
    /// A successful event of `scope` (the installation) at `occurred_at`, with a fresh id.
    pub fn new(action: &str, actor: &str, target: &str, payload: &str, scope: &str, occurred_at: i64) -> Self {
        Self {
            id: super::short_id(),
            version: 1,
            action: action.into(),
            actor: actor.into(),
            target: target.into(),
            payload: payload.into(),
            occurred_at,
            scope: scope.into(),
            success: true,
            request: None,
        }
    }
}

/// What [`super::Store::request_task`] did.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// The VM the task got or will get; `None` when a bound held it back and the task is
    /// queued until there is room.
    pub vm: Option<VmRow>,
    /// Whether it came from the warm pool.
    pub warm: bool,
    /// Whether the task was handed its VM at once.
    pub handed_over: bool,
    /// Whether the VM is a stopped one, now starting for the task (the provider has not been
    /// asked yet).
    pub started: bool,
}

/// Bounds an insert of a VM must respect: instances in every state count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bounds {
    /// The pool's `max_instances`.
    pub pool_max: Option<u32>,
    /// The fleet's `max_instances`.
    pub fleet_max: Option<u32>,
}

/// Counts for status and metrics.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// (pool, state, count) of live VMs.
    pub vms: Vec<(String, String, i64)>,
    /// (pool, state, count) of waiting and assigned tasks.
    pub tasks: Vec<(String, String, i64)>,
    /// (state, count) of volumes.
    pub volumes: Vec<(String, i64)>,
}

/// A registered image version.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ImageRow {
    pub name: String,
    pub version: String,
    pub kind: String,
    pub arch: String,
    /// JSON object: region → AMI.
    pub amis: String,
    pub registered_at: i64,
}

/// Where an alias pointed, and since when.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AliasRow {
    pub id: String,
    pub alias: String,
    pub target: String,
    pub set_at: i64,
    pub actor: String,
}

/// What a secret row holds: a project's variable.
pub const PROJECT_ENV: &str = "project_env";
/// A context's variable.
pub const CONTEXT_ENV: &str = "context_env";
/// A project's SSH private key (named by its SHA-256 fingerprint).
pub const SSH_KEY: &str = "ssh_key";
/// A job's checkout deploy key (owner: the job id).
pub const DEPLOY_KEY: &str = "deploy_key";

/// A sealed secret: a project's or context's variable, or a project's SSH key (`name` its
/// SHA-256 fingerprint, `alias` its MD5 one, `host` the host it is for).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SecretRow {
    pub kind: String,
    pub owner: String,
    pub name: String,
    pub host: Option<String>,
    pub alias: Option<String>,
    pub sealed: String,
    pub key_id: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A context: a named set of variables, usable by every project or only by those listed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ContextRow {
    pub name: String,
    /// JSON list of projects; empty for all.
    pub projects: String,
    pub created_at: i64,
}

impl ContextRow {
    /// The projects it is restricted to (none: every project).
    pub fn project_list(&self) -> Vec<String> {
        serde_json::from_str(&self.projects).unwrap_or_default()
    }

    /// Whether `project` may use it.
    pub fn allows(&self, project: &str) -> bool {
        let list = self.project_list();
        list.is_empty() || list.iter().any(|p| p == project)
    }
}

/// A job row. `deploy_key` is sealed, but never log a `JobRow`.
#[derive(Clone, sqlx::FromRow)]
pub struct JobRow {
    pub id: String,
    pub number: i64,
    pub name: String,
    pub project: String,
    pub config_file: String,
    /// JSON of the resolved `JobSpec`.
    pub spec: String,
    pub pool: String,
    pub repo: Option<String>,
    pub revision: Option<String>,
    pub branch: Option<String>,
    pub deploy_key: Option<String>,
    pub parallelism: i64,
    pub state: String,
    pub cancel_requested: bool,
    pub failure_reason: Option<String>,
    pub queued_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// The workflow it belongs to (none for a job submitted alone).
    pub workflow_id: Option<String>,
    /// The pipeline's tag (`CIRCLE_TAG`).
    pub tag: Option<String>,
}

impl JobRow {
    /// The job as recorded for a workflow before it may run: blocked, never queued or started.
    pub fn into_blocked(self, workflow_id: &str, now: i64) -> Self {
        Self {
            state: "blocked".into(),
            cancel_requested: false,
            failure_reason: None,
            queued_at: now,
            started_at: None,
            finished_at: None,
            workflow_id: Some(workflow_id.to_string()),
            ..self
        }
    }

    /// Whether the job has ended (`success`, `failed`, `canceled`, `infrastructure_fail`,
    /// `not_run`).
    pub fn ended(&self) -> bool {
        job_ended(&self.state)
    }
}

/// Whether a job in `state` has ended (`blocked`: a workflow's job waiting for the jobs it
/// requires, has not).
pub fn job_ended(state: &str) -> bool {
    !matches!(state, "queued" | "running" | "blocked")
}

impl std::fmt::Debug for JobRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobRow")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("project", &self.project)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// One parallel task of a job.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobTaskRow {
    pub id: String,
    pub job_id: String,
    pub node_index: i64,
    pub project: String,
    pub state: String,
    pub owner: Option<String>,
    pub lease_until: Option<i64>,
    pub attempt: i64,
    pub fleet_task_id: Option<String>,
    pub remote_task_id: Option<String>,
    pub exit_code: Option<i64>,
    pub failure_reason: Option<String>,
    pub queued_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl JobTaskRow {
    /// Node `node_index` of job `job_id`, queued at `now`, never started.
    pub fn queued(job_id: &str, node_index: i64, project: &str, now: i64) -> Self {
        Self {
            id: format!("jt-{}", super::short_id()),
            job_id: job_id.to_string(),
            node_index,
            project: project.to_string(),
            state: "queued".into(),
            owner: None,
            lease_until: None,
            attempt: 0,
            fleet_task_id: None,
            remote_task_id: None,
            exit_code: None,
            failure_reason: None,
            queued_at: now,
            started_at: None,
            finished_at: None,
        }
    }
}

/// One step of one attempt of a job task.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobStepRow {
    pub job_task_id: String,
    pub attempt: i64,
    pub idx: i64,
    pub name: String,
    pub state: String,
    pub exit_code: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// A chunk of a job task's output. `stream` is `out`, `err` or `sys` (the runner's own lines).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutputChunk {
    pub job_task_id: String,
    pub attempt: i64,
    pub seq: i64,
    pub job_id: String,
    pub step: i64,
    pub stream: String,
    pub data: String,
    pub at: i64,
}
