//! Assets: the media a title plays, their state and their country rules.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::repo::catalog::{self, UploadMeta};
use crate::storage::clock;
use crate::storage::db::Db;
use crate::storage::Result;

/// An asset, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Asset {
    /// Id, used in URLs.
    pub(crate) id: String,
    /// Display title.
    pub(crate) title: String,
    /// `processing`, `ready` or `failed`.
    pub(crate) status: String,
    /// Seconds, once ready.
    pub(crate) duration: Option<f64>,
    /// Why it failed.
    pub(crate) error: Option<String>,
    /// Unix seconds.
    pub(crate) created_at: i64,
    /// Country rules.
    pub(crate) geo: cascade_geo::CountryRule,
}

/// Creates an asset, its job and its movie title in one transaction.
pub(crate) async fn create_asset_and_job(
    db: &Db,
    asset: &str,
    job: &str,
    title: &str,
    source_kind: &str,
    source: &str,
    meta: &UploadMeta,
) -> Result<()> {
    let mut tx = db.pool.begin().await?;
    let t = clock::now() as i64;
    sqlx::query("INSERT INTO assets (id, title, status, created_at, updated_at) VALUES ($1, $2, 'processing', $3, $4)")
        .bind(asset)
        .bind(title)
        .bind(t)
        .bind(t)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO jobs (id, asset_id, source_kind, source, state, created_at, updated_at) VALUES ($1, $2, $3, $4, 'queued', $5, $6)")
        .bind(job)
        .bind(asset)
        .bind(source_kind)
        .bind(source)
        .bind(t)
        .bind(t)
        .execute(&mut *tx)
        .await?;
    catalog::insert_movie(&mut tx, db.backend, asset, meta, t).await?;
    Ok(tx.commit().await?)
}

/// Creates the asset and job of an ad creative: no catalog title, every
/// rung of the ladder.
pub(crate) async fn create_ad_asset_and_job(
    db: &Db,
    asset: &str,
    job: &str,
    name: &str,
    source: &str,
) -> Result<()> {
    let mut tx = db.pool.begin().await?;
    let t = clock::now() as i64;
    sqlx::query("INSERT INTO assets (id, title, status, kind, created_at, updated_at) VALUES ($1, $2, 'processing', 'ad', $3, $4)")
        .bind(asset)
        .bind(name)
        .bind(t)
        .bind(t)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO jobs (id, asset_id, source_kind, source, state, fill_ladder, created_at, updated_at) VALUES ($1, $2, 'file', $3, 'queued', 1, $4, $5)")
        .bind(job)
        .bind(asset)
        .bind(source)
        .bind(t)
        .bind(t)
        .execute(&mut *tx)
        .await?;
    Ok(tx.commit().await?)
}

/// Creates an asset whose media is made already (a recorded live event),
/// with its movie title and country rules; no job.
pub(crate) async fn create_recording(
    db: &Db,
    asset: &str,
    meta: &UploadMeta,
    geo: &cascade_geo::CountryRule,
) -> Result<()> {
    let mut tx = db.pool.begin().await?;
    let t = clock::now() as i64;
    sqlx::query("INSERT INTO assets (id, title, status, allow_countries, deny_countries, created_at, updated_at) VALUES ($1, $2, 'processing', $3, $4, $5, $6)")
        .bind(asset)
        .bind(&meta.name)
        .bind(geo.allow.join(","))
        .bind(geo.deny.join(","))
        .bind(t)
        .bind(t)
        .execute(&mut *tx)
        .await?;
    catalog::insert_movie(&mut tx, db.backend, asset, meta, t).await?;
    Ok(tx.commit().await?)
}

/// Marks an asset whose files are stored ready to play.
pub(crate) async fn set_ready(db: &Db, asset: &str, duration: f64) -> Result<()> {
    sqlx::query("UPDATE assets SET status = 'ready', duration = $1, error = NULL, updated_at = $2 WHERE id = $3")
        .bind(duration)
        .bind(clock::now() as i64)
        .bind(asset)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Marks an asset failed, with the reason.
pub(crate) async fn set_failed(db: &Db, asset: &str, reason: &str) -> Result<()> {
    sqlx::query("UPDATE assets SET status = 'failed', error = $1, updated_at = $2 WHERE id = $3")
        .bind(reason)
        .bind(clock::now() as i64)
        .bind(asset)
        .execute(&db.pool)
        .await?;
    Ok(())
}

fn asset_from_row(r: &AnyRow) -> Asset {
    Asset {
        id: r.get("id"),
        title: r.get("title"),
        status: r.get("status"),
        duration: r.get("duration"),
        error: r.get("error"),
        created_at: r.get("created_at"),
        geo: cascade_geo::CountryRule {
            allow: split_codes(r.get("allow_countries")),
            deny: split_codes(r.get("deny_countries")),
        },
    }
}

fn split_codes(s: String) -> Vec<String> {
    s.split(',')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

/// Sets a title's country rules.
pub(crate) async fn set_geo(db: &Db, id: &str, rule: &cascade_geo::CountryRule) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE assets SET allow_countries = $1, deny_countries = $2, updated_at = $3 WHERE id = $4",
    )
    .bind(rule.allow.join(","))
    .bind(rule.deny.join(","))
    .bind(clock::now() as i64)
    .bind(id)
    .execute(&db.pool)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// All assets, newest first.
pub(crate) async fn list_assets(db: &Db) -> Result<Vec<Asset>> {
    let rows = sqlx::query(
        "SELECT * FROM assets WHERE kind = 'title' ORDER BY created_at DESC, id LIMIT 1000",
    )
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.iter().map(asset_from_row).collect())
}

/// One asset.
pub(crate) async fn get_asset(db: &Db, id: &str) -> Result<Option<Asset>> {
    let row = sqlx::query("SELECT * FROM assets WHERE id = $1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.as_ref().map(asset_from_row))
}
