-- Viewers together: comments and their moderation, reaction totals, polls
-- and news flashes. The origin owns these; edges push them to viewers.

-- Moderators are viewers with a role: they delete comments and mute.
ALTER TABLE users ADD COLUMN role TEXT NOT NULL DEFAULT 'viewer';

CREATE TABLE comments (
    id          TEXT PRIMARY KEY,
    scope       TEXT NOT NULL,               -- live/{channel} or vod/{asset}
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    author      TEXT NOT NULL,               -- the profile name shown
    body        TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    deleted_ms  INTEGER,
    deleted_by  TEXT
);
CREATE INDEX comments_by_scope ON comments(scope, created_ms);
CREATE INDEX comments_by_user ON comments(user_id, created_ms);

CREATE TABLE comment_reports (
    comment_id  TEXT NOT NULL REFERENCES comments(id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    reason      TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    PRIMARY KEY (comment_id, user_id)
);

CREATE TABLE mutes (
    user_id     TEXT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    until_ms    INTEGER NOT NULL,
    muted_by    TEXT NOT NULL,
    created_ms  INTEGER NOT NULL
);

-- Totals per scope and reaction; batches from edges are counted once.
CREATE TABLE reaction_totals (
    scope     TEXT NOT NULL,
    reaction  TEXT NOT NULL,
    total     INTEGER NOT NULL,
    PRIMARY KEY (scope, reaction)
);
CREATE TABLE reaction_batches (
    id           TEXT PRIMARY KEY,            -- {edge}:{scope}:{window}
    received_ms  INTEGER NOT NULL
);
CREATE INDEX reaction_batches_by_time ON reaction_batches(received_ms);

CREATE TABLE polls (
    id          TEXT PRIMARY KEY,
    scope       TEXT NOT NULL,
    question    TEXT NOT NULL,
    options     TEXT NOT NULL,                -- JSON array of strings
    state       TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'closed')),
    created_ms  INTEGER NOT NULL,
    closes_ms   INTEGER NOT NULL
);
CREATE INDEX polls_by_scope ON polls(scope, created_ms);
CREATE TABLE poll_votes (
    poll_id     TEXT NOT NULL REFERENCES polls(id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    choice      INTEGER NOT NULL,
    created_ms  INTEGER NOT NULL,
    PRIMARY KEY (poll_id, user_id)
);

CREATE TABLE flashes (
    id          TEXT PRIMARY KEY,
    body        TEXT NOT NULL,
    priority    TEXT NOT NULL CHECK (priority IN ('normal', 'high', 'critical')),
    title_id    TEXT,
    target      TEXT NOT NULL,                -- all, region/{CC} or live/{channel}
    created_ms  INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL
);
CREATE INDEX flashes_by_expiry ON flashes(expires_ms);
