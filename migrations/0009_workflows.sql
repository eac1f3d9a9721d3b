-- Pipelines and their workflows. A workflow is a DAG of jobs: each job of a workflow is a
-- `jobs` row from the start, `blocked` (no tasks) until every job it requires has succeeded;
-- approval jobs exist only here. A node's job may be a job of an earlier workflow (a job a
-- rerun from failed carries over).
CREATE TABLE pipelines (
    id TEXT PRIMARY KEY,
    number BIGINT NOT NULL UNIQUE,
    project TEXT NOT NULL,
    config_file TEXT NOT NULL,
    repo TEXT,
    revision TEXT,
    branch TEXT,
    tag TEXT,
    parameters TEXT NOT NULL,
    actor TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE workflows (
    id TEXT PRIMARY KEY,
    pipeline_id TEXT NOT NULL,
    name TEXT NOT NULL,
    idx BIGINT NOT NULL DEFAULT 0,
    project TEXT NOT NULL,
    state TEXT NOT NULL,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    rerun_of TEXT,
    created_at BIGINT NOT NULL,
    stopped_at BIGINT
);
CREATE INDEX workflows_pipeline ON workflows (pipeline_id);
CREATE INDEX workflows_state ON workflows (state);

CREATE TABLE workflow_jobs (
    workflow_id TEXT NOT NULL,
    name TEXT NOT NULL,
    idx BIGINT NOT NULL,
    requires TEXT NOT NULL,
    approval BOOLEAN NOT NULL,
    job_id TEXT,
    state TEXT NOT NULL,
    approved_by TEXT,
    finished_at BIGINT,
    PRIMARY KEY (workflow_id, name)
);

ALTER TABLE jobs ADD COLUMN workflow_id TEXT;
ALTER TABLE jobs ADD COLUMN tag TEXT;
CREATE INDEX jobs_workflow ON jobs (workflow_id);
