-- Secrets for jobs: project environment variables, contexts and their variables, project SSH
-- keys. Values are sealed (AES-256-GCM) by the service; the database never holds them readable.
-- `secrets_key` has one row: the id (a hash) of the key every value is sealed under now.
CREATE TABLE secrets_key (
    id BIGINT PRIMARY KEY,
    key_id TEXT NOT NULL,
    set_at BIGINT NOT NULL
);

CREATE TABLE contexts (
    name TEXT PRIMARY KEY,
    -- JSON list of the projects that may use it; empty: every project.
    projects TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE secrets (
    kind TEXT NOT NULL,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    host TEXT,
    alias TEXT,
    sealed TEXT NOT NULL,
    key_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (kind, owner, name)
);
