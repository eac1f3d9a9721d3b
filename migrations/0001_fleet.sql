-- vmfleet schema, for SQLite and PostgreSQL alike. Times are milliseconds since the Unix epoch.
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE vms (
    id TEXT PRIMARY KEY,
    pool TEXT NOT NULL,
    executor TEXT NOT NULL,
    image TEXT NOT NULL,
    resource_class TEXT NOT NULL,
    preallocated BOOLEAN NOT NULL,
    state TEXT NOT NULL,
    task_id TEXT,
    instance_id TEXT,
    image_id TEXT NOT NULL,
    instance_type TEXT NOT NULL,
    platform TEXT NOT NULL,
    zone TEXT,
    host TEXT,
    ssh_port BIGINT,
    ssh_user TEXT NOT NULL,
    ssh_private_key TEXT NOT NULL,
    ssh_public_key TEXT NOT NULL,
    host_key TEXT,
    draining BOOLEAN NOT NULL DEFAULT FALSE,
    failure_reason TEXT,
    requested_at BIGINT NOT NULL,
    provisioning_at BIGINT,
    booting_at BIGINT,
    ready_at BIGINT,
    assigned_at BIGINT,
    releasing_at BIGINT,
    terminating_at BIGINT,
    terminated_at BIGINT,
    failed_at BIGINT,
    state_since BIGINT NOT NULL
);
CREATE INDEX vms_pool_state ON vms (pool, state, ready_at, id);
CREATE INDEX vms_state ON vms (state);
CREATE UNIQUE INDEX vms_one_per_task ON vms (task_id) WHERE task_id IS NOT NULL;

CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    pool TEXT NOT NULL,
    executor TEXT NOT NULL,
    image TEXT NOT NULL,
    resource_class TEXT NOT NULL,
    project TEXT NOT NULL,
    dlc BOOLEAN NOT NULL,
    state TEXT NOT NULL,
    vm_id TEXT,
    volume_id TEXT,
    failure_reason TEXT,
    created_at BIGINT NOT NULL,
    assigned_at BIGINT,
    released_at BIGINT
);
CREATE INDEX tasks_state ON tasks (state, created_at);

CREATE TABLE volumes (
    id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    provider_id TEXT,
    zone TEXT NOT NULL,
    size_gb BIGINT NOT NULL,
    state TEXT NOT NULL,
    task_id TEXT,
    vm_id TEXT,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL,
    state_since BIGINT NOT NULL
);
CREATE INDEX volumes_project ON volumes (project, state, zone);
CREATE UNIQUE INDEX volumes_one_per_task ON volumes (task_id) WHERE task_id IS NOT NULL;

CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE audit_events (
    id TEXT PRIMARY KEY,
    version BIGINT NOT NULL,
    action TEXT NOT NULL,
    actor TEXT NOT NULL,
    target TEXT NOT NULL,
    payload TEXT NOT NULL,
    occurred_at BIGINT NOT NULL,
    scope TEXT NOT NULL,
    success BOOLEAN NOT NULL,
    request TEXT
);
CREATE INDEX audit_events_time ON audit_events (occurred_at);
