//! Stream slots (the playback sessions an account holds at once) and the
//! revocations of ended sessions that edges poll.

use serde::Serialize;
use sqlx::Row;

use crate::storage::db::Db;
use crate::storage::Result;

/// A slot to take.
pub(crate) struct Slot<'a> {
    pub(crate) stream: &'a str,
    pub(crate) user: &'a str,
    pub(crate) profile: &'a str,
    pub(crate) asset: &'a str,
    pub(crate) device: &'a str,
    /// The device type given at start (`tv`, `phone`, …), or empty.
    pub(crate) device_type: &'a str,
}

/// What taking a slot came to.
pub(crate) enum Taken {
    /// The slot is taken; these streams were freed on the way.
    Slot { replaced: Vec<String> },
    /// The account holds its limit of slots already: these.
    Full { active: Vec<ActiveStream> },
}

/// A stream holding a slot.
#[derive(Debug, Serialize)]
pub(crate) struct ActiveStream {
    device: String,
    asset: String,
    /// Unix seconds.
    since: i64,
}

/// A revoked playback session, by its sequence number.
pub(crate) struct Revocation {
    pub(crate) seq: i64,
    pub(crate) stream: String,
    /// Unix seconds when its tokens have all expired.
    pub(crate) expires: i64,
}

/// Takes a stream slot under the account's limit. Starts of one account
/// serialise on its user row, so two racing starts cannot both take the
/// last slot; slots without a heartbeat for `slot_secs` are freed first,
/// and a device starting again gives up its old slot.
pub(crate) async fn take_slot(
    db: &Db,
    s: Slot<'_>,
    limit: i64,
    now: i64,
    slot_secs: i64,
) -> Result<Taken> {
    let mut tx = db.pool.begin().await?;
    db.relax_durability(&mut tx).await?;
    sqlx::query("UPDATE users SET stream_epoch = stream_epoch + 1 WHERE id = $1")
        .bind(s.user)
        .execute(&mut *tx)
        .await?;
    let replaced: Vec<String> = sqlx::query(
        "DELETE FROM streams WHERE user_id = $1 AND (last_seen < $2 OR device = $3) RETURNING id",
    )
    .bind(s.user)
    .bind(now - slot_secs)
    .bind(s.device)
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .filter_map(|r| r.try_get::<String, _>("id").ok())
    .collect();
    let active = sqlx::query(
        "SELECT device, asset_id, started_at FROM streams WHERE user_id = $1 ORDER BY started_at",
    )
    .bind(s.user)
    .fetch_all(&mut *tx)
    .await?;
    if active.len() as i64 >= limit {
        let active = active
            .iter()
            .map(|r| ActiveStream {
                device: r.try_get::<String, _>("device").unwrap_or_default(),
                asset: r.try_get::<String, _>("asset_id").unwrap_or_default(),
                since: r.try_get::<i64, _>("started_at").unwrap_or_default(),
            })
            .collect();
        return Ok(Taken::Full { active });
    }
    sqlx::query(
        "INSERT INTO streams (id, user_id, profile_id, asset_id, device, device_type, started_at, last_seen)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
    )
    .bind(s.stream)
    .bind(s.user)
    .bind(s.profile)
    .bind(s.asset)
    .bind(s.device)
    .bind(s.device_type)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Taken::Slot { replaced })
}

/// Frees a user's stream slot.
pub(crate) async fn free(db: &Db, stream: &str, user: &str) -> Result<()> {
    sqlx::query("DELETE FROM streams WHERE id = $1 AND user_id = $2")
        .bind(stream)
        .bind(user)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Frees the slots with no heartbeat since `before`; answers their streams.
pub(crate) async fn free_quiet(db: &Db, before: i64) -> Result<Vec<String>> {
    Ok(
        sqlx::query("DELETE FROM streams WHERE last_seen < $1 RETURNING id")
            .bind(before)
            .fetch_all(&db.pool)
            .await?
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()?,
    )
}

/// Records ended sessions, kept until `until`.
pub(crate) async fn revoke(db: &Db, streams: &[String], until: i64) -> Result<()> {
    for id in streams {
        sqlx::query("INSERT INTO revoked_streams (stream_id, expires_at) VALUES ($1, $2)")
            .bind(id)
            .bind(until)
            .execute(&db.pool)
            .await?;
    }
    Ok(())
}

/// Forgets revocations whose tokens have all expired.
pub(crate) async fn forget_revocations(db: &Db, now: i64) -> Result<()> {
    sqlx::query("DELETE FROM revoked_streams WHERE expires_at < $1")
        .bind(now)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Revocations after sequence number `after`, oldest first.
pub(crate) async fn revocations(db: &Db, after: i64, limit: i64) -> Result<Vec<Revocation>> {
    let rows = sqlx::query(
        "SELECT seq, stream_id, expires_at FROM revoked_streams WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Revocation {
                seq: r.try_get::<i64, _>("seq")?,
                stream: r.try_get::<String, _>("stream_id")?,
                expires: r.try_get::<i64, _>("expires_at")?,
            })
        })
        .collect()
}

/// The account and asset of a stream that holds a slot; `None` once it
/// has ended (stopped, replaced, or gone quiet).
pub(crate) async fn holder(db: &Db, stream: &str) -> Result<Option<(String, String)>> {
    let row = sqlx::query("SELECT user_id, asset_id FROM streams WHERE id = $1")
        .bind(stream)
        .fetch_optional(&db.pool)
        .await?;
    Ok(match row {
        Some(r) => Some((r.try_get("user_id")?, r.try_get("asset_id")?)),
        None => None,
    })
}

/// Where a stream stands among its account's streams, oldest first (0 for
/// the oldest): a stream at or past the plan's limit is one too many.
pub(crate) async fn rank(db: &Db, user: &str, stream: &str) -> Result<usize> {
    let rows = sqlx::query("SELECT id FROM streams WHERE user_id = $1 ORDER BY started_at, id")
        .bind(user)
        .fetch_all(&db.pool)
        .await?;
    let mut ids = Vec::with_capacity(rows.len());
    for r in &rows {
        ids.push(r.try_get::<String, _>("id")?);
    }
    Ok(ids.iter().position(|i| i == stream).unwrap_or(ids.len()))
}
