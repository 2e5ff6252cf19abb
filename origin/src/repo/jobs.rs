//! Transcode jobs: the queue the worker takes from, and the end of each job
//! recorded with its asset's state in one transaction.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::storage::clock;
use crate::storage::db::Db;
use crate::storage::Result;

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
    /// An ad creative: every rung of the ladder is made.
    #[serde(skip)]
    pub(crate) fill_ladder: bool,
}

/// One job.
pub(crate) async fn get_job(db: &Db, id: &str) -> Result<Option<Job>> {
    let row = sqlx::query("SELECT * FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.as_ref().map(job_from_row))
}

/// The newest job of an asset.
pub(crate) async fn job_of_asset(db: &Db, asset: &str) -> Result<Option<Job>> {
    let row =
        sqlx::query("SELECT * FROM jobs WHERE asset_id = $1 ORDER BY created_at DESC LIMIT 1")
            .bind(asset)
            .fetch_optional(&db.pool)
            .await?;
    Ok(row.as_ref().map(job_from_row))
}

/// Jobs waiting to run.
pub(crate) async fn queued_jobs(db: &Db) -> Result<i64> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM jobs WHERE state = 'queued'")
        .fetch_one(&db.pool)
        .await?;
    Ok(row.get("n"))
}

/// Puts jobs left running by a crash or restart back in the queue.
pub(crate) async fn requeue_interrupted(db: &Db) -> Result<u64> {
    let r = sqlx::query(
        "UPDATE jobs SET state = 'queued', progress = 0, updated_at = $1 WHERE state = 'running'",
    )
    .bind(clock::now() as i64)
    .execute(&db.pool)
    .await?;
    Ok(r.rows_affected())
}

/// Takes the oldest queued job and marks it running.
pub(crate) async fn claim_next(db: &Db) -> Result<Option<Job>> {
    let row = sqlx::query(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, updated_at = $1
         WHERE id = (SELECT id FROM jobs WHERE state = 'queued' ORDER BY created_at, id LIMIT 1)
         RETURNING *",
    )
    .bind(clock::now() as i64)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.as_ref().map(job_from_row))
}

/// Records progress.
pub(crate) async fn set_progress(db: &Db, job: &str, progress: f64) -> Result<()> {
    sqlx::query(
        "UPDATE jobs SET progress = $1, updated_at = $2 WHERE id = $3 AND state = 'running'",
    )
    .bind(progress)
    .bind(clock::now() as i64)
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
) -> Result<()> {
    let mut tx = db.pool.begin().await?;
    let t = clock::now() as i64;
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
    Ok(tx.commit().await?)
}

/// Marks a job and its asset failed, together.
pub(crate) async fn fail(db: &Db, job: &str, asset: &str, reason: &str) -> Result<()> {
    let mut tx = db.pool.begin().await?;
    let t = clock::now() as i64;
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
    Ok(tx.commit().await?)
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
        fill_ladder: r.try_get::<i64, _>("fill_ladder").unwrap_or(0) != 0,
    }
}
