-- Partners of the token API.
CREATE TABLE partners (
    name             TEXT PRIMARY KEY,
    scope            TEXT NOT NULL,
    max_ttl          INTEGER NOT NULL,
    rate_per_minute  INTEGER NOT NULL,
    api_key_hash     TEXT NOT NULL UNIQUE,
    revoked          INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL
);

-- Signing keys; a rotated key lives on until retire_at.
CREATE TABLE partner_keys (
    partner     TEXT NOT NULL REFERENCES partners(name),
    kid         TEXT NOT NULL PRIMARY KEY,
    secret      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    retire_at   INTEGER
);
