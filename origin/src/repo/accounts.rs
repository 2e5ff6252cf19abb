//! Accounts: users, their viewer profiles, refresh tokens (stored as
//! digests, in families of one login each) and login locks per account and
//! address. Session changes and stream starts of one account serialise on
//! its user row.

use serde::Serialize;
use sqlx::{AnyConnection, Row};
use utoipa::ToSchema;

use crate::storage::db::Db;
use crate::storage::Result;

/// A viewer profile: its own history and continue-watching rail.
#[derive(Serialize, ToSchema, Clone)]
pub(crate) struct Profile {
    pub(crate) id: String,
    pub(crate) name: String,
}

/// A stored refresh token.
pub(crate) struct RefreshToken {
    /// The login it belongs to.
    pub(crate) family: String,
    pub(crate) user: String,
    pub(crate) expires_at: i64,
    pub(crate) rotated_at: Option<i64>,
    pub(crate) revoked_at: Option<i64>,
}

/// A refresh token to store: its digest, its login, until when it lives.
pub(crate) struct NewRefresh<'a> {
    pub(crate) digest: &'a str,
    pub(crate) family: &'a str,
    pub(crate) user: &'a str,
    pub(crate) expires_at: i64,
}

/// What deleting a profile came to.
pub(crate) enum ProfileDeletion {
    /// The account has no such profile.
    NotFound,
    /// It is the account's last profile: kept.
    Last,
    /// Deleted with its history; these streams of it ended.
    Deleted { ended: Vec<String> },
}

/// Creates a user with its first profile, on a connection of the caller's
/// transaction; false, with nothing stored, when the email is taken.
pub(crate) async fn insert_user(
    conn: &mut AnyConnection,
    user: &str,
    email: &str,
    password_hash: &str,
    profile: &Profile,
    now: i64,
) -> Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO users (id, email, password_hash, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (email) DO NOTHING",
    )
    .bind(user)
    .bind(email)
    .bind(password_hash)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query("INSERT INTO profiles (id, user_id, name, created_at) VALUES ($1, $2, $3, $4)")
        .bind(&profile.id)
        .bind(user)
        .bind(&profile.name)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(true)
}

/// The id and password hash of the user with this email.
pub(crate) async fn credentials(db: &Db, email: &str) -> Result<Option<(String, String)>> {
    let row = sqlx::query("SELECT id, password_hash FROM users WHERE email = $1")
        .bind(email)
        .fetch_optional(&db.pool)
        .await?;
    Ok(match row {
        Some(r) => Some((r.try_get("id")?, r.try_get("password_hash")?)),
        None => None,
    })
}

/// A user's email, if the user exists.
pub(crate) async fn email_of(db: &Db, user: &str) -> Result<Option<String>> {
    let row = sqlx::query("SELECT email FROM users WHERE id = $1")
        .bind(user)
        .fetch_optional(&db.pool)
        .await?;
    Ok(match row {
        Some(r) => Some(r.try_get("email")?),
        None => None,
    })
}

// ---- login locks ---------------------------------------------------------------

/// Counts a login attempt on an account from an address, in one statement,
/// so parallel guesses cannot all slip in before the lock: attempt k of a
/// cycle learns k. `None` while the address is locked out (the attempt is
/// not counted).
pub(crate) async fn count_attempt(
    db: &Db,
    user: &str,
    addr: &str,
    now: i64,
) -> Result<Option<i64>> {
    Ok(sqlx::query(
        "INSERT INTO login_locks (user_id, addr, failures, locked_until) VALUES ($1, $2, 1, 0)
         ON CONFLICT (user_id, addr) DO UPDATE SET failures = login_locks.failures + 1
         WHERE login_locks.locked_until <= $3
         RETURNING failures",
    )
    .bind(user)
    .bind(addr)
    .bind(now)
    .fetch_optional(&db.pool)
    .await?
    .map(|r| r.try_get("failures"))
    .transpose()?)
}

/// Locks an address out of an account until `until`, and starts the count anew.
pub(crate) async fn lock_out(db: &Db, user: &str, addr: &str, until: i64) -> Result<()> {
    sqlx::query(
        "UPDATE login_locks SET locked_until = $1, failures = 0
         WHERE user_id = $2 AND addr = $3",
    )
    .bind(until)
    .bind(user)
    .bind(addr)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Until when an address is locked out of an account, if it has a lock row.
pub(crate) async fn locked_until(db: &Db, user: &str, addr: &str) -> Result<Option<i64>> {
    Ok(
        sqlx::query("SELECT locked_until FROM login_locks WHERE user_id = $1 AND addr = $2")
            .bind(user)
            .bind(addr)
            .fetch_optional(&db.pool)
            .await?
            .map(|r| r.try_get("locked_until"))
            .transpose()?,
    )
}

/// Forgets the failed attempts of an address on an account.
pub(crate) async fn clear_attempts(db: &Db, user: &str, addr: &str) -> Result<()> {
    sqlx::query("DELETE FROM login_locks WHERE user_id = $1 AND addr = $2")
        .bind(user)
        .bind(addr)
        .execute(&db.pool)
        .await?;
    Ok(())
}

// ---- refresh tokens ---------------------------------------------------------------

/// The refresh token with this digest.
pub(crate) async fn refresh_token(db: &Db, digest: &str) -> Result<Option<RefreshToken>> {
    let row = sqlx::query(
        "SELECT family, user_id, expires_at, rotated_at, revoked_at FROM refresh_tokens WHERE digest = $1",
    )
    .bind(digest)
    .fetch_optional(&db.pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(RefreshToken {
        family: row.try_get("family")?,
        user: row.try_get("user_id")?,
        expires_at: row.try_get("expires_at")?,
        rotated_at: row.try_get("rotated_at")?,
        revoked_at: row.try_get("revoked_at")?,
    }))
}

/// Stores the first refresh token of a new login.
pub(crate) async fn start_family(db: &Db, next: &NewRefresh<'_>, now: i64) -> Result<()> {
    let mut conn = db.pool.acquire().await?;
    insert_refresh(&mut conn, next, now).await
}

/// Marks a refresh token rotated and stores the next of its family, in one
/// transaction that first locks the user's row, as revocation does: a
/// logout or a reuse revocation either lands before (and this rotation
/// finds the token revoked) or after (and revokes the new token too).
/// False, with nothing stored, when the token was rotated or revoked first.
pub(crate) async fn rotate(db: &Db, digest: &str, next: &NewRefresh<'_>, now: i64) -> Result<bool> {
    let mut tx = db.pool.begin().await?;
    lock_user(&mut tx, next.user).await?;
    let won = sqlx::query(
        "UPDATE refresh_tokens SET rotated_at = $1 WHERE digest = $2 AND rotated_at IS NULL AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(digest)
    .execute(&mut *tx)
    .await?;
    if won.rows_affected() != 1 {
        return Ok(false);
    }
    insert_refresh(&mut tx, next, now).await?;
    tx.commit().await?;
    Ok(true)
}

/// When the refresh token with this digest was revoked, if it was.
pub(crate) async fn revoked_at(db: &Db, digest: &str) -> Result<Option<i64>> {
    Ok(
        sqlx::query("SELECT revoked_at FROM refresh_tokens WHERE digest = $1")
            .bind(digest)
            .fetch_optional(&db.pool)
            .await?
            .map(|r| r.try_get("revoked_at"))
            .transpose()?
            .flatten(),
    )
}

/// The login (family) and user of a refresh token.
pub(crate) async fn family_of(db: &Db, digest: &str) -> Result<Option<(String, String)>> {
    let row = sqlx::query("SELECT family, user_id FROM refresh_tokens WHERE digest = $1")
        .bind(digest)
        .fetch_optional(&db.pool)
        .await?;
    Ok(match row {
        Some(r) => Some((r.try_get("family")?, r.try_get("user_id")?)),
        None => None,
    })
}

/// Revokes every token of a login.
pub(crate) async fn revoke_family(db: &Db, user: &str, family: &str, now: i64) -> Result<()> {
    let mut tx = db.pool.begin().await?;
    lock_user(&mut tx, user).await?;
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = $1 WHERE family = $2 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(family)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

// ---- profiles -----------------------------------------------------------------------

/// The profiles of an account, oldest first.
pub(crate) async fn profiles_of(db: &Db, user: &str) -> Result<Vec<Profile>> {
    let rows =
        sqlx::query("SELECT id, name FROM profiles WHERE user_id = $1 ORDER BY created_at, id")
            .bind(user)
            .fetch_all(&db.pool)
            .await?;
    rows.iter()
        .map(|r| {
            Ok(Profile {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
            })
        })
        .collect()
}

/// Whether a profile belongs to a user.
pub(crate) async fn owns_profile(db: &Db, user: &str, profile: &str) -> Result<bool> {
    Ok(
        sqlx::query("SELECT 1 AS one FROM profiles WHERE id = $1 AND user_id = $2")
            .bind(profile)
            .bind(user)
            .fetch_optional(&db.pool)
            .await?
            .is_some(),
    )
}

/// Adds a profile while the account has fewer than `max`, with the
/// account's row locked so two racing creates cannot both see room for one
/// more; false when none was added (no room, or the name is taken).
pub(crate) async fn create_profile(
    db: &Db,
    user: &str,
    profile: &Profile,
    now: i64,
    max: i64,
) -> Result<bool> {
    let mut tx = db.pool.begin().await?;
    lock_user(&mut tx, user).await?;
    let r = sqlx::query(
        "INSERT INTO profiles (id, user_id, name, created_at)
         SELECT $1, $2, $3, $4 WHERE (SELECT COUNT(*) FROM profiles WHERE user_id = $2) < $5
         ON CONFLICT (user_id, name) DO NOTHING",
    )
    .bind(&profile.id)
    .bind(user)
    .bind(&profile.name)
    .bind(now)
    .bind(max)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(r.rows_affected() > 0)
}

/// Deletes a profile of a user with its history and its streams, unless it
/// is the account's last.
pub(crate) async fn delete_profile(db: &Db, user: &str, id: &str) -> Result<ProfileDeletion> {
    let mut tx = db.pool.begin().await?;
    lock_user(&mut tx, user).await?;
    let ids: Vec<String> = sqlx::query("SELECT id FROM profiles WHERE user_id = $1")
        .bind(user)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get("id"))
        .collect::<Result<_, _>>()?;
    if !ids.iter().any(|p| p == id) {
        return Ok(ProfileDeletion::NotFound);
    }
    if ids.len() == 1 {
        return Ok(ProfileDeletion::Last);
    }
    // Its streams end with it: their heartbeats would name a missing profile.
    let ended: Vec<String> = sqlx::query("DELETE FROM streams WHERE profile_id = $1 RETURNING id")
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .filter_map(|r| r.try_get("id").ok())
        .collect();
    sqlx::query("DELETE FROM watch_history WHERE profile_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM profiles WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(ProfileDeletion::Deleted { ended })
}

// ---- helpers -------------------------------------------------------------------------

/// Takes the user's row lock for the rest of the transaction (on SQLite,
/// the write lock): session changes and stream starts of one account
/// serialise on it.
async fn lock_user(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    user: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET stream_epoch = stream_epoch + 1 WHERE id = $1")
        .bind(user)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Stores the next refresh token of a family. Tokens of the user past their
/// expiry go at the same time (rotated ones are kept until then, to
/// recognise their reuse).
async fn insert_refresh(conn: &mut AnyConnection, next: &NewRefresh<'_>, now: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO refresh_tokens (digest, family, user_id, expires_at, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(next.digest)
    .bind(next.family)
    .bind(next.user)
    .bind(next.expires_at)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM refresh_tokens WHERE user_id = $1 AND expires_at < $2")
        .bind(next.user)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
