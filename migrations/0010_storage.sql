-- What jobs store: caches (per project, immutable once saved), workspace layers (per job task
-- of a workflow), artifacts and parsed test results (per job task). Each names its object in
-- the object store; the object is written before its row.
CREATE TABLE caches (
    project TEXT NOT NULL,
    cache_key TEXT NOT NULL,
    object_key TEXT NOT NULL,
    size BIGINT NOT NULL,
    job_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL,
    PRIMARY KEY (project, cache_key)
);
CREATE INDEX caches_created ON caches (created_at);

CREATE TABLE workspace_layers (
    id TEXT PRIMARY KEY,
    workflow_id TEXT NOT NULL,
    job_id TEXT NOT NULL,
    node_index BIGINT NOT NULL,
    object_key TEXT NOT NULL,
    size BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX workspace_layers_job ON workspace_layers (job_id);

CREATE TABLE artifacts (
    job_id TEXT NOT NULL,
    node_index BIGINT NOT NULL,
    path TEXT NOT NULL,
    object_key TEXT NOT NULL,
    size BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (job_id, node_index, path)
);
CREATE INDEX artifacts_created ON artifacts (created_at);

CREATE TABLE test_results (
    job_id TEXT NOT NULL,
    node_index BIGINT NOT NULL,
    idx BIGINT NOT NULL,
    project TEXT NOT NULL,
    job_name TEXT NOT NULL,
    file TEXT,
    classname TEXT NOT NULL,
    name TEXT NOT NULL,
    result TEXT NOT NULL,
    message TEXT,
    run_time DOUBLE PRECISION NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (job_id, node_index, idx)
);
CREATE INDEX test_results_job_name ON test_results (project, job_name, created_at);
