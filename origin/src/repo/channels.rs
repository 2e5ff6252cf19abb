//! Live channels: their catalog fields, stream-key digest and state.

use sqlx::any::AnyRow;
use sqlx::Row;

use crate::storage::db::Db;
use crate::storage::Result;

/// A channel as stored (the key only as its digest).
#[derive(Debug, Clone)]
pub(crate) struct ChannelRow {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) title: String,
    pub(crate) synopsis: String,
    pub(crate) premium: bool,
    pub(crate) starts_at: Option<i64>,
    pub(crate) ends_at: Option<i64>,
    pub(crate) allow_countries: String,
    pub(crate) deny_countries: String,
    pub(crate) dvr_minutes: i64,
    pub(crate) key_digest: String,
    pub(crate) key_version: i64,
    pub(crate) state: String,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    /// The SRT passphrase; empty for none.
    pub(crate) srt_passphrase: String,
    /// Served encrypted only, with keys that rotate.
    pub(crate) protected: bool,
}

const COLUMNS: &str = "id, name, title, synopsis, premium, starts_at, ends_at, allow_countries, \
     deny_countries, dvr_minutes, key_digest, key_version, state, created_at, updated_at, \
     srt_passphrase, protected";

fn from_row(r: &AnyRow) -> Result<ChannelRow> {
    Ok(ChannelRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        title: r.try_get("title")?,
        synopsis: r.try_get("synopsis")?,
        premium: r.try_get::<i64, _>("premium")? != 0,
        starts_at: r.try_get("starts_at")?,
        ends_at: r.try_get("ends_at")?,
        allow_countries: r.try_get("allow_countries")?,
        deny_countries: r.try_get("deny_countries")?,
        dvr_minutes: r.try_get("dvr_minutes")?,
        key_digest: r.try_get("key_digest")?,
        key_version: r.try_get("key_version")?,
        state: r.try_get("state")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        srt_passphrase: r.try_get("srt_passphrase")?,
        protected: r.try_get::<i64, _>("protected")? != 0,
    })
}

/// Stores a new channel; false when its name is taken.
pub(crate) async fn insert(db: &Db, c: &ChannelRow) -> Result<bool> {
    let r = sqlx::query(
        "INSERT INTO channels (id, name, title, synopsis, premium, starts_at, ends_at,
             allow_countries, deny_countries, dvr_minutes, key_digest, key_version, state,
             created_at, updated_at, srt_passphrase, protected)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(&c.id)
    .bind(&c.name)
    .bind(&c.title)
    .bind(&c.synopsis)
    .bind(i64::from(c.premium))
    .bind(c.starts_at)
    .bind(c.ends_at)
    .bind(&c.allow_countries)
    .bind(&c.deny_countries)
    .bind(c.dvr_minutes)
    .bind(&c.key_digest)
    .bind(c.key_version)
    .bind(&c.state)
    .bind(c.created_at)
    .bind(c.updated_at)
    .bind(&c.srt_passphrase)
    .bind(i64::from(c.protected))
    .execute(&db.pool)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Every channel, by name.
pub(crate) async fn list(db: &Db) -> Result<Vec<ChannelRow>> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM channels ORDER BY name"))
        .fetch_all(&db.pool)
        .await?;
    rows.iter().map(from_row).collect()
}

/// The channel named `name`.
pub(crate) async fn by_name(db: &Db, name: &str) -> Result<Option<ChannelRow>> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM channels WHERE name = $1"))
        .bind(name)
        .fetch_optional(&db.pool)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Replaces a channel's key; the new version, or `None` if no such channel.
pub(crate) async fn set_key(db: &Db, name: &str, digest: &str, now: i64) -> Result<Option<i64>> {
    let row = sqlx::query(
        "UPDATE channels SET key_digest = $1, key_version = key_version + 1, updated_at = $2
         WHERE name = $3 RETURNING key_version",
    )
    .bind(digest)
    .bind(now)
    .bind(name)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.map(|r| r.try_get("key_version")).transpose()?)
}

/// Sets a channel's state; false if no such channel.
pub(crate) async fn set_state(db: &Db, name: &str, state: &str, now: i64) -> Result<bool> {
    let r = sqlx::query("UPDATE channels SET state = $1, updated_at = $2 WHERE name = $3")
        .bind(state)
        .bind(now)
        .bind(name)
        .execute(&db.pool)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Marks a channel live (an encoder publishes) or idle again; a stopped
/// channel stays stopped.
pub(crate) async fn set_live(db: &Db, name: &str, live: bool, now: i64) -> Result<()> {
    let (to, from) = if live {
        ("live", "idle")
    } else {
        ("idle", "live")
    };
    sqlx::query("UPDATE channels SET state = $1, updated_at = $2 WHERE name = $3 AND state = $4")
        .bind(to)
        .bind(now)
        .bind(name)
        .bind(from)
        .execute(&db.pool)
        .await?;
    Ok(())
}
