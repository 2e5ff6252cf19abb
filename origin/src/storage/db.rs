//! The database: one code path for SQLite (one machine) and PostgreSQL (a
//! fleet of origins), through sqlx's Any driver.
//!
//! Queries are written once, in the SQL both databases share: `$1`-style
//! parameters (SQLite reads them too), `ON CONFLICT … DO UPDATE`,
//! `RETURNING`, integers as i64 and reals as f64. Where the two differ
//! (full-text search) the caller branches on [`Backend`]. Each database has
//! its own migrations, kept in step by number.

use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor, Row};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// One machine: a file, WAL journal.
    Sqlite,
    /// A fleet: several origins share it.
    Postgres,
}

impl Backend {
    /// The backend a URL names, if it is one we run on.
    pub(crate) fn of_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

/// The pool and what is behind it.
#[derive(Clone)]
pub(crate) struct Db {
    pub(crate) pool: AnyPool,
    pub(crate) backend: Backend,
}

impl Db {
    /// Closes the pool.
    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }
}

/// Opens (creating a SQLite file if needed) the database and runs the migrations.
pub(crate) async fn open(url: &str, max_connections: u32) -> anyhow::Result<Db> {
    sqlx::any::install_default_drivers();
    let Some(backend) = Backend::of_url(url) else {
        anyhow::bail!("database_url: not a sqlite: or postgres:// URL");
    };
    let url = match backend {
        Backend::Sqlite if !url.contains("mode=") => {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}mode=rwc")
        }
        _ => url.to_string(),
    };
    let pool = AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if backend == Backend::Sqlite {
                    // WAL lets readers run beside the writer; NORMAL sync is
                    // durable across process crashes, which is what WAL needs.
                    for pragma in [
                        "PRAGMA journal_mode = WAL",
                        "PRAGMA synchronous = NORMAL",
                        "PRAGMA foreign_keys = ON",
                        "PRAGMA busy_timeout = 5000",
                    ] {
                        conn.execute(pragma).await?;
                    }
                }
                Ok(())
            })
        })
        .connect(&url)
        .await
        .map_err(|e| anyhow::anyhow!("database: cannot connect ({})", redact_db_error(&e)))?;
    let migrator = match backend {
        Backend::Sqlite => &SQLITE_MIGRATIONS,
        Backend::Postgres => &POSTGRES_MIGRATIONS,
    };
    migrator.run(&pool).await?;
    Ok(Db { pool, backend })
}

/// A connection error without the URL (which may hold a password).
fn redact_db_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Configuration(_) => "the URL is not valid".into(),
        other => other.to_string(),
    }
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
    crate::storage::clock::now() as i64
}

/// Creates an asset, its job and its movie title in one transaction.
pub(crate) async fn create_asset_and_job(
    db: &Db,
    asset: &str,
    job: &str,
    title: &str,
    source_kind: &str,
    source: &str,
    meta: &crate::repo::catalog::UploadMeta,
) -> sqlx::Result<()> {
    let mut tx = db.pool.begin().await?;
    let t = now();
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
    crate::repo::catalog::insert_movie(&mut tx, db.backend, asset, meta, t).await?;
    tx.commit().await
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
pub(crate) async fn set_geo(
    db: &Db,
    id: &str,
    rule: &cascade_geo::CountryRule,
) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "UPDATE assets SET allow_countries = $1, deny_countries = $2, updated_at = $3 WHERE id = $4",
    )
    .bind(rule.allow.join(","))
    .bind(rule.deny.join(","))
    .bind(now())
    .bind(id)
    .execute(&db.pool)
    .await?;
    Ok(r.rows_affected() > 0)
}

fn job_from_row(r: &AnyRow) -> Job {
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
pub(crate) async fn list_assets(db: &Db) -> sqlx::Result<Vec<Asset>> {
    let rows = sqlx::query("SELECT * FROM assets ORDER BY created_at DESC, id LIMIT 1000")
        .fetch_all(&db.pool)
        .await?;
    Ok(rows.iter().map(asset_from_row).collect())
}

/// One asset.
pub(crate) async fn get_asset(db: &Db, id: &str) -> sqlx::Result<Option<Asset>> {
    let row = sqlx::query("SELECT * FROM assets WHERE id = $1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.as_ref().map(asset_from_row))
}

/// One job.
pub(crate) async fn get_job(db: &Db, id: &str) -> sqlx::Result<Option<Job>> {
    let row = sqlx::query("SELECT * FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.as_ref().map(job_from_row))
}

/// The newest job of an asset.
pub(crate) async fn job_of_asset(db: &Db, asset: &str) -> sqlx::Result<Option<Job>> {
    let row =
        sqlx::query("SELECT * FROM jobs WHERE asset_id = $1 ORDER BY created_at DESC LIMIT 1")
            .bind(asset)
            .fetch_optional(&db.pool)
            .await?;
    Ok(row.as_ref().map(job_from_row))
}

/// Jobs waiting to run.
pub(crate) async fn queued_jobs(db: &Db) -> sqlx::Result<i64> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM jobs WHERE state = 'queued'")
        .fetch_one(&db.pool)
        .await?;
    Ok(row.get("n"))
}

/// Puts jobs left running by a crash or restart back in the queue.
pub(crate) async fn requeue_interrupted(db: &Db) -> sqlx::Result<u64> {
    let r = sqlx::query(
        "UPDATE jobs SET state = 'queued', progress = 0, updated_at = $1 WHERE state = 'running'",
    )
    .bind(now())
    .execute(&db.pool)
    .await?;
    Ok(r.rows_affected())
}

/// Takes the oldest queued job and marks it running.
pub(crate) async fn claim_next(db: &Db) -> sqlx::Result<Option<Job>> {
    let row = sqlx::query(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, updated_at = $1
         WHERE id = (SELECT id FROM jobs WHERE state = 'queued' ORDER BY created_at, id LIMIT 1)
         RETURNING *",
    )
    .bind(now())
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.as_ref().map(job_from_row))
}

/// Records progress.
pub(crate) async fn set_progress(db: &Db, job: &str, progress: f64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE jobs SET progress = $1, updated_at = $2 WHERE id = $3 AND state = 'running'",
    )
    .bind(progress)
    .bind(now())
    .bind(job)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Marks a job done and its asset ready, together.
pub(crate) async fn finish(
    db: &Db,
    job: &Job,
    duration: f64,
    media_secs: f64,
    wall_secs: f64,
) -> sqlx::Result<()> {
    let mut tx = db.pool.begin().await?;
    let t = now();
    sqlx::query("UPDATE jobs SET state = 'done', progress = 1, media_secs = $1, wall_secs = $2, updated_at = $3 WHERE id = $4")
        .bind(media_secs)
        .bind(wall_secs)
        .bind(t)
        .bind(&job.id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE assets SET status = 'ready', duration = $1, error = NULL, updated_at = $2 WHERE id = $3")
        .bind(duration)
        .bind(t)
        .bind(&job.asset)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Marks a job and its asset failed, together.
pub(crate) async fn fail(db: &Db, job: &str, asset: &str, reason: &str) -> sqlx::Result<()> {
    let mut tx = db.pool.begin().await?;
    let t = now();
    sqlx::query("UPDATE jobs SET state = 'failed', error = $1, updated_at = $2 WHERE id = $3")
        .bind(reason)
        .bind(t)
        .bind(job)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE assets SET status = 'failed', error = $1, updated_at = $2 WHERE id = $3")
        .bind(reason)
        .bind(t)
        .bind(asset)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Reads a setting.
pub(crate) async fn setting(db: &Db, key: &str) -> sqlx::Result<Option<String>> {
    let row = sqlx::query("SELECT value FROM settings WHERE key = $1")
        .bind(key)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.map(|r| r.get("value")))
}

/// Writes a setting.
pub(crate) async fn set_setting(db: &Db, key: &str, value: &str) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
        .bind(key)
        .bind(value)
        .execute(&db.pool)
        .await?;
    Ok(())
}
