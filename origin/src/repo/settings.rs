//! Settings the origins of a fleet share: the token secret, whether the
//! samples were queued.

use sqlx::Row;

use crate::storage::db::Db;
use crate::storage::Result;

/// Reads a setting.
pub(crate) async fn setting(db: &Db, key: &str) -> Result<Option<String>> {
    let row = sqlx::query("SELECT value FROM settings WHERE key = $1")
        .bind(key)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.map(|r| r.get("value")))
}

/// Writes a setting.
pub(crate) async fn set_setting(db: &Db, key: &str, value: &str) -> Result<()> {
    sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
        .bind(key)
        .bind(value)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Keeps `secret` as the token secret unless one is kept already.
pub(crate) async fn offer_jwt_secret(db: &Db, secret: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO settings (key, value) VALUES ('jwt_secret', $1) ON CONFLICT (key) DO NOTHING",
    )
    .bind(secret)
    .execute(&db.pool)
    .await?;
    Ok(())
}
