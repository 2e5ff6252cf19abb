//! Pending sign-ups: an email, its password hash and first profile's name,
//! waiting for the single-use code mailed to it (stored as a digest). One
//! per email; the account is made only when the code comes back.

use sqlx::Row;

use crate::repo::accounts::{self, Profile};
use crate::storage::db::Db;
use crate::storage::Result;

/// A sign-up to keep until its code comes back or it expires.
pub(crate) struct NewPending<'a> {
    /// Lower-cased.
    pub(crate) email: &'a str,
    /// The SHA-256 of the code, hex.
    pub(crate) code_digest: &'a str,
    pub(crate) password_hash: &'a str,
    pub(crate) profile_name: &'a str,
    pub(crate) created_at: i64,
    pub(crate) expires_at: i64,
}

/// Keeps a pending sign-up unless its email has an account; one pending
/// earlier for the same email is replaced, and its code stops working.
/// True when kept, false when the email has an account. One statement in
/// both cases, so that they cost the same.
pub(crate) async fn offer(db: &Db, p: &NewPending<'_>) -> Result<bool> {
    let r = sqlx::query(
        "INSERT INTO pending_signups
             (email, code_digest, password_hash, profile_name, created_at, expires_at)
         SELECT $1, $2, $3, $4, $5, $6
         WHERE NOT EXISTS (SELECT 1 FROM users WHERE email = $1)
         ON CONFLICT (email) DO UPDATE SET
             code_digest = excluded.code_digest,
             password_hash = excluded.password_hash,
             profile_name = excluded.profile_name,
             created_at = excluded.created_at,
             expires_at = excluded.expires_at",
    )
    .bind(p.email)
    .bind(p.code_digest)
    .bind(p.password_hash)
    .bind(p.profile_name)
    .bind(p.created_at)
    .bind(p.expires_at)
    .execute(&db.pool)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Redeems a code, in one transaction: takes the pending sign-up with this
/// digest (single use: it is gone afterwards, valid or not) and, when it
/// had not expired at `now` and its email still has no account, creates
/// the user `user` with its first profile `profile_id`. False when nothing
/// was created.
pub(crate) async fn redeem(
    db: &Db,
    code_digest: &str,
    now: i64,
    user: &str,
    profile_id: &str,
) -> Result<bool> {
    let mut tx = db.pool.begin().await?;
    let row = sqlx::query(
        "DELETE FROM pending_signups WHERE code_digest = $1
         RETURNING email, password_hash, profile_name, expires_at",
    )
    .bind(code_digest)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(false);
    };
    let expires_at: i64 = row.try_get("expires_at")?;
    let created = expires_at > now && {
        let email: String = row.try_get("email")?;
        let hash: String = row.try_get("password_hash")?;
        let profile = Profile {
            id: profile_id.to_string(),
            name: row.try_get("profile_name")?,
        };
        accounts::insert_user(&mut tx, user, &email, &hash, &profile, now).await?
    };
    tx.commit().await?;
    Ok(created)
}

/// Forgets the pending sign-ups past their expiry; answers how many.
pub(crate) async fn sweep(db: &Db, now: i64) -> Result<u64> {
    let r = sqlx::query("DELETE FROM pending_signups WHERE expires_at <= $1")
        .bind(now)
        .execute(&db.pool)
        .await?;
    Ok(r.rows_affected())
}
