-- Sign-ups waiting for their emailed link: an account is made only when
-- the link's code comes back, so sign-up answers the same whether or not
-- the email has an account. One row per email (a new sign-up replaces the
-- old one); the code is stored as its SHA-256 digest.
CREATE TABLE pending_signups (
    email          TEXT PRIMARY KEY,          -- lower-cased
    code_digest    TEXT NOT NULL UNIQUE,      -- SHA-256 of the code, hex
    password_hash  TEXT NOT NULL,             -- argon2id, PHC string
    profile_name   TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL
);
CREATE INDEX pending_signups_expiry ON pending_signups (expires_at);
