//! The catalog and job tables (SQLite through sqlx).

use std::str::FromStr;

use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};

/// Opens (creating if needed) the database and runs the migrations.
pub(crate) async fn open(url: &str) -> anyhow::Result<SqlitePool> {
    let opts = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(std::time::Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(opts)
        .await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
}

/// A title, as the API shows it.
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

/// A transcode job.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Job {
    /// Id.
    pub(crate) id: String,
    /// The asset it makes.
    pub(crate) asset: String,
    /// `file` or `lavfi`.
    #[serde(skip)]
    pub(crate) source_kind: String,
    /// Upload path or filter graph.
    #[serde(skip)]
    pub(crate) source: String,
    /// `queued`, `running`, `done` or `failed`.
    pub(crate) state: String,
    /// 0 to 1.
    pub(crate) progress: f64,
    /// Why it failed.
    pub(crate) error: Option<String>,
    /// Attempts so far.
    pub(crate) attempts: i64,
    /// Seconds of media made, when done.
    pub(crate) media_secs: Option<f64>,
    /// Wall seconds the transcode took, when done.
    pub(crate) wall_secs: Option<f64>,
}

fn now() -> i64 {
    cascade_serve::unix_now() as i64
}

/// Creates an asset and its job in one transaction.
pub(crate) async fn create_asset_and_job(
    pool: &SqlitePool,
    asset: &str,
    job: &str,
    title: &str,
    source_kind: &str,
    source: &str,
) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    let t = now();
    sqlx::query("INSERT INTO assets (id, title, status, created_at, updated_at) VALUES (?, ?, 'processing', ?, ?)")
        .bind(asset)
        .bind(title)
        .bind(t)
        .bind(t)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO jobs (id, asset_id, source_kind, source, state, created_at, updated_at) VALUES (?, ?, ?, ?, 'queued', ?, ?)")
        .bind(job)
        .bind(asset)
        .bind(source_kind)
        .bind(source)
        .bind(t)
        .bind(t)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

fn asset_from_row(r: &sqlx::sqlite::SqliteRow) -> Asset {
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
pub(crate) async fn set_geo(
    pool: &SqlitePool,
    id: &str,
    rule: &cascade_geo::CountryRule,
) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "UPDATE assets SET allow_countries = ?, deny_countries = ?, updated_at = ? WHERE id = ?",
    )
    .bind(rule.allow.join(","))
    .bind(rule.deny.join(","))
    .bind(now())
    .bind(id)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() > 0)
}

fn job_from_row(r: &sqlx::sqlite::SqliteRow) -> Job {
    Job {
        id: r.get("id"),
        asset: r.get("asset_id"),
        source_kind: r.get("source_kind"),
        source: r.get("source"),
        state: r.get("state"),
        progress: r.get("progress"),
        error: r.get("error"),
        attempts: r.get("attempts"),
        media_secs: r.get("media_secs"),
        wall_secs: r.get("wall_secs"),
    }
}

/// All assets, newest first.
pub(crate) async fn list_assets(pool: &SqlitePool) -> sqlx::Result<Vec<Asset>> {
    let rows = sqlx::query("SELECT * FROM assets ORDER BY created_at DESC, id LIMIT 1000")
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().map(asset_from_row).collect())
}

/// One asset.
pub(crate) async fn get_asset(pool: &SqlitePool, id: &str) -> sqlx::Result<Option<Asset>> {
    let row = sqlx::query("SELECT * FROM assets WHERE id = ?")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(row.as_ref().map(asset_from_row))
}

/// One job.
pub(crate) async fn get_job(pool: &SqlitePool, id: &str) -> sqlx::Result<Option<Job>> {
    let row = sqlx::query("SELECT * FROM jobs WHERE id = ?")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(row.as_ref().map(job_from_row))
}

/// The newest job of an asset.
pub(crate) async fn job_of_asset(pool: &SqlitePool, asset: &str) -> sqlx::Result<Option<Job>> {
    let row = sqlx::query("SELECT * FROM jobs WHERE asset_id = ? ORDER BY created_at DESC LIMIT 1")
        .bind(asset)
        .fetch_optional(pool)
        .await?;
    Ok(row.as_ref().map(job_from_row))
}

/// Jobs waiting to run.
pub(crate) async fn queued_jobs(pool: &SqlitePool) -> sqlx::Result<i64> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM jobs WHERE state = 'queued'")
        .fetch_one(pool)
        .await?;
    Ok(row.get("n"))
}

/// Puts jobs left running by a crash or restart back in the queue.
pub(crate) async fn requeue_interrupted(pool: &SqlitePool) -> sqlx::Result<u64> {
    let r = sqlx::query(
        "UPDATE jobs SET state = 'queued', progress = 0, updated_at = ? WHERE state = 'running'",
    )
    .bind(now())
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// Takes the oldest queued job and marks it running.
pub(crate) async fn claim_next(pool: &SqlitePool) -> sqlx::Result<Option<Job>> {
    let row = sqlx::query(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, updated_at = ?
         WHERE id = (SELECT id FROM jobs WHERE state = 'queued' ORDER BY created_at, id LIMIT 1)
         RETURNING *",
    )
    .bind(now())
    .fetch_optional(pool)
    .await?;
    Ok(row.as_ref().map(job_from_row))
}

/// Records progress.
pub(crate) async fn set_progress(pool: &SqlitePool, job: &str, progress: f64) -> sqlx::Result<()> {
    sqlx::query("UPDATE jobs SET progress = ?, updated_at = ? WHERE id = ? AND state = 'running'")
        .bind(progress)
        .bind(now())
        .bind(job)
        .execute(pool)
        .await?;
    Ok(())
}

/// Marks a job done and its asset ready, together.
pub(crate) async fn finish(
    pool: &SqlitePool,
    job: &Job,
    duration: f64,
    media_secs: f64,
    wall_secs: f64,
) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    let t = now();
    sqlx::query("UPDATE jobs SET state = 'done', progress = 1, media_secs = ?, wall_secs = ?, updated_at = ? WHERE id = ?")
        .bind(media_secs)
        .bind(wall_secs)
        .bind(t)
        .bind(&job.id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE assets SET status = 'ready', duration = ?, error = NULL, updated_at = ? WHERE id = ?")
        .bind(duration)
        .bind(t)
        .bind(&job.asset)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Marks a job and its asset failed, together.
pub(crate) async fn fail(
    pool: &SqlitePool,
    job: &str,
    asset: &str,
    reason: &str,
) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    let t = now();
    sqlx::query("UPDATE jobs SET state = 'failed', error = ?, updated_at = ? WHERE id = ?")
        .bind(reason)
        .bind(t)
        .bind(job)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE assets SET status = 'failed', error = ?, updated_at = ? WHERE id = ?")
        .bind(reason)
        .bind(t)
        .bind(asset)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Reads a setting.
pub(crate) async fn setting(pool: &SqlitePool, key: &str) -> sqlx::Result<Option<String>> {
    let row = sqlx::query("SELECT value FROM settings WHERE key = ?")
        .bind(key)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|r| r.get("value")))
}

/// Writes a setting.
pub(crate) async fn set_setting(pool: &SqlitePool, key: &str, value: &str) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
        .bind(key)
        .bind(value)
        .execute(pool)
        .await?;
    Ok(())
}
