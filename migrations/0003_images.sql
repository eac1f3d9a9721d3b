-- Registered image versions, and the history of where each alias pointed (the newest row of an
-- alias is where it points now).
CREATE TABLE images (
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    kind TEXT NOT NULL,
    arch TEXT NOT NULL,
    amis TEXT NOT NULL,
    registered_at BIGINT NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE image_aliases (
    id TEXT PRIMARY KEY,
    alias TEXT NOT NULL,
    target TEXT NOT NULL,
    set_at BIGINT NOT NULL,
    actor TEXT NOT NULL
);
CREATE INDEX image_aliases_alias ON image_aliases (alias, set_at);
