-- Viewers: accounts, profiles, sessions, plans, subscriptions, streams,
-- watch history, and the catalog above the assets.

CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    email          TEXT NOT NULL UNIQUE,      -- lower-cased
    password_hash  TEXT NOT NULL,             -- argon2id, PHC string
    failed_logins  BIGINT NOT NULL DEFAULT 0,
    locked_until   BIGINT NOT NULL DEFAULT 0,
    -- Bumped by every playback start so that concurrent starts of one
    -- account serialise on this row (a row lock on PostgreSQL, the write
    -- lock on SQLite) and the stream limit cannot be overrun by a race.
    stream_epoch   BIGINT NOT NULL DEFAULT 0,
    created_at     BIGINT NOT NULL
);

CREATE TABLE profiles (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (user_id, name)
);

-- Refresh tokens are stored as SHA-256 digests. Each login starts a family;
-- a refresh rotates within it; presenting a rotated token again revokes the
-- whole family (it was stolen or replayed).
CREATE TABLE refresh_tokens (
    digest      TEXT PRIMARY KEY,
    family      TEXT NOT NULL,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    expires_at  BIGINT NOT NULL,
    rotated_at  BIGINT,
    revoked_at  BIGINT,
    created_at  BIGINT NOT NULL
);
CREATE INDEX refresh_by_family ON refresh_tokens(family);

CREATE TABLE plans (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    premium      BIGINT NOT NULL,
    ads          BIGINT NOT NULL,
    max_streams  BIGINT NOT NULL,
    price_cents  BIGINT NOT NULL
);
INSERT INTO plans (id, name, premium, ads, max_streams, price_cents) VALUES
    ('free', 'Free with ads', 0, 1, 1, 0),
    ('premium', 'Premium', 1, 0, 4, 999);

CREATE TABLE subscriptions (
    user_id                TEXT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    plan_id                TEXT NOT NULL REFERENCES plans(id),
    status                 TEXT NOT NULL,     -- active, trialing, past_due, canceled
    current_period_end     BIGINT NOT NULL,
    provider_subscription  TEXT,
    last_event_at          BIGINT NOT NULL,  -- the provider's event time, to ignore stale events
    updated_at             BIGINT NOT NULL
);

-- Payment events already applied: the webhook is idempotent on the event id.
CREATE TABLE billing_events (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    received_at  BIGINT NOT NULL
);

CREATE TABLE streams (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    profile_id  TEXT NOT NULL,
    asset_id    TEXT NOT NULL,
    device      TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    last_seen   BIGINT NOT NULL
);
CREATE INDEX streams_by_user ON streams(user_id, last_seen);

-- One row per profile and title, upserted by batched heartbeats.
CREATE TABLE watch_history (
    profile_id  TEXT NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
    asset_id    TEXT NOT NULL,
    position    DOUBLE PRECISION NOT NULL,
    duration    DOUBLE PRECISION,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (profile_id, asset_id)
);
CREATE INDEX history_recent ON watch_history(profile_id, updated_at);

-- The catalog: movies, and series -> seasons -> episodes. Movies and
-- episodes point at the asset that plays them.
CREATE TABLE titles (
    id               TEXT PRIMARY KEY,
    kind             TEXT NOT NULL CHECK (kind IN ('movie', 'series', 'season', 'episode')),
    parent_id        TEXT REFERENCES titles(id) ON DELETE CASCADE,
    number           BIGINT,
    name             TEXT NOT NULL,
    synopsis         TEXT NOT NULL DEFAULT '',
    year             BIGINT,
    genres           TEXT NOT NULL DEFAULT '',   -- ",drama,thriller," (lower case)
    languages        TEXT NOT NULL DEFAULT '',   -- ",en,hi,"
    cast_json        TEXT NOT NULL DEFAULT '[]', -- [{"name": …, "role": …}]
    premium          BIGINT NOT NULL DEFAULT 0,
    available_from   BIGINT,
    available_until  BIGINT,
    artwork          TEXT,                       -- object-store key
    asset_id         TEXT UNIQUE REFERENCES assets(id),
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX titles_by_parent ON titles(parent_id, number);
CREATE INDEX titles_new ON titles(created_at);

-- Full-text search: the application writes `search` with each title change
-- (weights: name A, people and genres B, synopsis C).
ALTER TABLE titles ADD COLUMN search tsvector NOT NULL DEFAULT ''::tsvector;
CREATE INDEX titles_search ON titles USING GIN (search);

-- Every existing asset becomes a movie of the same name and id.
INSERT INTO titles (id, kind, name, asset_id, created_at, updated_at, search)
    SELECT id, 'movie', title, id, created_at, updated_at,
           setweight(to_tsvector('simple', title), 'A') FROM assets;
