-- Titles and the jobs that make their mezzanine (PostgreSQL twin of the
-- SQLite migration: BIGINT and DOUBLE PRECISION, which the Any driver maps
-- to i64 and f64 on both databases).
CREATE TABLE assets (
    id          TEXT PRIMARY KEY,
    title       TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('processing', 'ready', 'failed')),
    duration    DOUBLE PRECISION,
    error       TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,
    asset_id     TEXT NOT NULL REFERENCES assets(id),
    source_kind  TEXT NOT NULL CHECK (source_kind IN ('file', 'lavfi')),
    source       TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
    progress     DOUBLE PRECISION NOT NULL DEFAULT 0,
    error        TEXT,
    attempts     BIGINT NOT NULL DEFAULT 0,
    media_secs   DOUBLE PRECISION,
    wall_secs    DOUBLE PRECISION,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);

CREATE INDEX jobs_by_state ON jobs(state, created_at);

-- One-off facts, such as whether the sample titles were made.
CREATE TABLE settings (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
