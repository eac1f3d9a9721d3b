-- The job pipeline: a job (one CircleCI job, resolved), its parallel tasks (claimed with a
-- lease by one process at a time), their steps, and their output in chunks.
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    number BIGINT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    project TEXT NOT NULL,
    config_file TEXT NOT NULL,
    spec TEXT NOT NULL,
    pool TEXT NOT NULL,
    repo TEXT,
    revision TEXT,
    branch TEXT,
    deploy_key TEXT,
    parallelism BIGINT NOT NULL,
    state TEXT NOT NULL,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    failure_reason TEXT,
    queued_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT
);
CREATE INDEX jobs_queued ON jobs (queued_at);

CREATE TABLE job_tasks (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    node_index BIGINT NOT NULL,
    project TEXT NOT NULL,
    state TEXT NOT NULL,
    owner TEXT,
    lease_until BIGINT,
    attempt BIGINT NOT NULL,
    fleet_task_id TEXT,
    remote_task_id TEXT,
    exit_code BIGINT,
    failure_reason TEXT,
    queued_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT
);
CREATE INDEX job_tasks_state ON job_tasks (state, queued_at);
CREATE INDEX job_tasks_job ON job_tasks (job_id, node_index);

CREATE TABLE job_steps (
    job_task_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    idx BIGINT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    exit_code BIGINT,
    started_at BIGINT,
    finished_at BIGINT,
    PRIMARY KEY (job_task_id, attempt, idx)
);

CREATE TABLE job_output (
    job_task_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    job_id TEXT NOT NULL,
    step BIGINT NOT NULL,
    stream TEXT NOT NULL,
    data TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (job_task_id, attempt, seq)
);
