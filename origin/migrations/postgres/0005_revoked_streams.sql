-- Playback sessions that ended (stopped, replaced, gone quiet): the edges
-- poll this list and refuse the media tokens bound to them. A row is kept
-- until every token of its session has expired.
CREATE TABLE revoked_streams (
    seq         BIGSERIAL PRIMARY KEY,
    stream_id   TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX revoked_streams_expiry ON revoked_streams (expires_at);
