-- Advertising: where each title's breaks go, the built-in ad decision
-- service's inventory and frequency caps, creatives conditioned into
-- mezzanine, each playback session's ad plan, and the beacons it owes.

-- Seconds into the title, comma-separated ("0,600,1200"); or a VMAP.
ALTER TABLE assets ADD COLUMN ad_breaks TEXT NOT NULL DEFAULT '';
ALTER TABLE assets ADD COLUMN vmap_url TEXT NOT NULL DEFAULT '';
-- 'title', or 'ad' for a conditioned creative (never in the catalog).
ALTER TABLE assets ADD COLUMN kind TEXT NOT NULL DEFAULT 'title';
-- A creative is made at every rung of the ladder, whatever its own size,
-- so it can stand in for any rendition of any title.
-- The device type a session started on (`tv`, `phone`, …), for targeting.
ALTER TABLE streams ADD COLUMN device_type TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN fill_ladder BIGINT NOT NULL DEFAULT 0;

CREATE TABLE ad_inventory (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    media_url    TEXT NOT NULL,
    duration_ms  BIGINT NOT NULL,
    countries    TEXT NOT NULL DEFAULT '',   -- empty: anywhere
    genres       TEXT NOT NULL DEFAULT '',
    devices      TEXT NOT NULL DEFAULT '',
    plans        TEXT NOT NULL DEFAULT '',
    cap_per_day  BIGINT NOT NULL DEFAULT 0, -- 0: no cap
    weight       BIGINT NOT NULL DEFAULT 1,
    click_url    TEXT NOT NULL DEFAULT '',
    created_ms   BIGINT NOT NULL
);

-- Ads the built-in service gave a viewer (a hashed id) on a day.
CREATE TABLE ad_served (
    viewer  TEXT NOT NULL,
    ad_id   TEXT NOT NULL,
    day     BIGINT NOT NULL,
    count   BIGINT NOT NULL,
    PRIMARY KEY (viewer, ad_id, day)
);

-- A creative (a VAST MediaFile URL) and the asset it is conditioned into.
CREATE TABLE creatives (
    id          TEXT PRIMARY KEY,            -- a hash of the URL
    url         TEXT NOT NULL,
    asset_id    TEXT,
    status      TEXT NOT NULL CHECK (status IN ('fetching', 'conditioning', 'ready', 'failed')),
    error       TEXT,
    created_ms  BIGINT NOT NULL,
    updated_ms  BIGINT NOT NULL
);

-- The ads of a playback session, decided once so every edge and every
-- playlist of the session agrees.
CREATE TABLE ad_sessions (
    stream_id   TEXT PRIMARY KEY,
    asset_id    TEXT NOT NULL,
    plan        TEXT NOT NULL,
    created_ms  BIGINT NOT NULL
);

-- Beacons owed, once each: a row per event of an ad of a session.
CREATE TABLE ad_beacons (
    id          BIGSERIAL PRIMARY KEY,
    stream_id   TEXT NOT NULL,
    brk         BIGINT NOT NULL,
    ad          BIGINT NOT NULL,
    event       TEXT NOT NULL,
    creative    TEXT NOT NULL,
    asset_id    TEXT NOT NULL,
    day         BIGINT NOT NULL,
    urls        TEXT NOT NULL,               -- a JSON array
    state       TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'sent', 'failed')),
    attempts    BIGINT NOT NULL DEFAULT 0,
    next_ms     BIGINT NOT NULL,
    sent_ms     BIGINT,
    UNIQUE (stream_id, brk, ad, event)
);
CREATE INDEX ad_beacons_due ON ad_beacons(state, next_ms);
CREATE INDEX ad_beacons_by_day ON ad_beacons(day, creative);
