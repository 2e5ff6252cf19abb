-- Content protection: whether a title is served encrypted, and its keys.
-- A key is stored wrapped (AES-256-GCM) under the key-encryption key,
-- which lives in a file or the environment, never in the database.
ALTER TABLE assets ADD COLUMN protected BIGINT NOT NULL DEFAULT 0;

CREATE TABLE content_keys (
    kid         TEXT PRIMARY KEY,            -- 32 hex digits
    asset_id    TEXT NOT NULL,               -- a title's asset or a channel's name
    grp         TEXT NOT NULL,               -- sd, hd, uhd, audio, or all
    period      BIGINT NOT NULL DEFAULT 0,       -- a live channel's rotation period
    wrapped     TEXT NOT NULL,               -- hex: nonce, then key and IV sealed
    created_at  BIGINT NOT NULL,
    UNIQUE (asset_id, grp, period)
);
