-- Live channels: a catalog entry (title, schedule, premium, country rules,
-- like a title) with a stream key for its encoders. The key is stored as
-- its SHA-256 digest; rotating it makes the old one stop working.
CREATE TABLE channels (
    id               TEXT PRIMARY KEY,            -- in playback URLs: /live/{id}/…
    name             TEXT NOT NULL UNIQUE,        -- the operator's handle: a-z, 0-9, -
    title            TEXT NOT NULL,
    synopsis         TEXT NOT NULL DEFAULT '',
    premium          BIGINT NOT NULL DEFAULT 0,
    starts_at        BIGINT,                          -- the schedule (Unix seconds)
    ends_at          BIGINT,
    allow_countries  TEXT NOT NULL DEFAULT '',    -- ISO 3166-1 alpha-2, comma-separated
    deny_countries   TEXT NOT NULL DEFAULT '',
    dvr_minutes      BIGINT NOT NULL,
    key_digest       TEXT NOT NULL UNIQUE,        -- SHA-256 of the stream key, hex
    key_version      BIGINT NOT NULL DEFAULT 1,
    state            TEXT NOT NULL DEFAULT 'idle' CHECK (state IN ('idle', 'live', 'stopped')),
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
