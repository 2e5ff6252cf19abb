-- Wrong passwords count per account *and* address: an attacker who guesses
-- from one address locks out that address for that account, never the
-- account's owner elsewhere. (users.failed_logins and locked_until are no
-- longer used.)
CREATE TABLE login_locks (
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    addr          TEXT NOT NULL,              -- an IPv4 address, or an IPv6 /64
    failures      INTEGER NOT NULL DEFAULT 0,
    locked_until  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, addr)
);
