//! Content keys (wrapped) and which assets are protected.

use sqlx::Row;

use crate::storage::db::Db;
use crate::storage::Result;

/// A content key as stored: still wrapped under the key-encryption key.
#[derive(Debug, Clone)]
pub(crate) struct StoredKey {
    pub(crate) kid: String,
    pub(crate) asset: String,
    pub(crate) group: String,
    pub(crate) period: i64,
    pub(crate) wrapped: String,
}

/// Marks an asset protected or clear.
pub(crate) async fn set_protected(db: &Db, asset: &str, protected: bool) -> Result<bool> {
    let r = sqlx::query("UPDATE assets SET protected = $1 WHERE id = $2")
        .bind(i64::from(protected))
        .bind(asset)
        .execute(&db.pool)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Whether an asset is protected; `None` when there is no such asset.
pub(crate) async fn is_protected(db: &Db, asset: &str) -> Result<Option<bool>> {
    let row = sqlx::query("SELECT protected FROM assets WHERE id = $1")
        .bind(asset)
        .fetch_optional(&db.pool)
        .await?;
    Ok(match row {
        Some(r) => Some(r.try_get::<i64, _>("protected")? != 0),
        None => None,
    })
}

/// Stores a key unless the asset already has one for that group and
/// period (another origin made it first); either way answers the one kept.
pub(crate) async fn insert_or_get(db: &Db, key: &StoredKey, now: i64) -> Result<StoredKey> {
    sqlx::query(
        "INSERT INTO content_keys (kid, asset_id, grp, period, wrapped, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(&key.kid)
    .bind(&key.asset)
    .bind(&key.group)
    .bind(key.period)
    .bind(&key.wrapped)
    .bind(now)
    .execute(&db.pool)
    .await?;
    let row = sqlx::query(
        "SELECT kid, asset_id, grp, period, wrapped FROM content_keys \
         WHERE asset_id = $1 AND grp = $2 AND period = $3",
    )
    .bind(&key.asset)
    .bind(&key.group)
    .bind(key.period)
    .fetch_one(&db.pool)
    .await?;
    from_row(&row)
}

/// Replaces (or adds) the key of an asset's group and period: a CPIX import.
pub(crate) async fn replace(db: &Db, key: &StoredKey, now: i64) -> Result<()> {
    let mut tx = db.pool.begin().await?;
    sqlx::query(
        "DELETE FROM content_keys WHERE (asset_id = $1 AND grp = $2 AND period = $3) OR kid = $4",
    )
    .bind(&key.asset)
    .bind(&key.group)
    .bind(key.period)
    .bind(&key.kid)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO content_keys (kid, asset_id, grp, period, wrapped, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&key.kid)
    .bind(&key.asset)
    .bind(&key.group)
    .bind(key.period)
    .bind(&key.wrapped)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(tx.commit().await?)
}

/// Every key of an asset, by group then period.
pub(crate) async fn keys_of(db: &Db, asset: &str) -> Result<Vec<StoredKey>> {
    let rows = sqlx::query(
        "SELECT kid, asset_id, grp, period, wrapped FROM content_keys \
         WHERE asset_id = $1 ORDER BY grp, period",
    )
    .bind(asset)
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(from_row).collect()
}

/// An asset's (or channel's) keys of the given periods.
pub(crate) async fn keys_of_periods(
    db: &Db,
    asset: &str,
    from: i64,
    to: i64,
) -> Result<Vec<StoredKey>> {
    let rows = sqlx::query(
        "SELECT kid, asset_id, grp, period, wrapped FROM content_keys \
         WHERE asset_id = $1 AND period >= $2 AND period <= $3 ORDER BY period",
    )
    .bind(asset)
    .bind(from)
    .bind(to)
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(from_row).collect()
}

fn from_row(r: &sqlx::any::AnyRow) -> Result<StoredKey> {
    Ok(StoredKey {
        kid: r.try_get("kid")?,
        asset: r.try_get("asset_id")?,
        group: r.try_get("grp")?,
        period: r.try_get("period")?,
        wrapped: r.try_get("wrapped")?,
    })
}
