-- Forensic watermarking: which titles are made in two marked copies, and
-- which playback session was given which mark (16 bits, reused after
-- 65,536 sessions: a lookup lists the holders, newest first, with times).
ALTER TABLE assets ADD COLUMN watermarked BIGINT NOT NULL DEFAULT 0;

CREATE TABLE watermark_marks (
    seq         BIGSERIAL PRIMARY KEY,
    mark        BIGINT NOT NULL DEFAULT -1,      -- seq modulo 65,536
    stream_id   TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    profile_id  TEXT NOT NULL,
    asset_id    TEXT NOT NULL,
    issued_at   BIGINT NOT NULL
);
CREATE INDEX watermark_marks_mark ON watermark_marks (mark, seq);

-- A live channel served encrypted only, its keys rotating by period
-- (content_keys.period).
ALTER TABLE channels ADD COLUMN protected BIGINT NOT NULL DEFAULT 0;
