//! Watch history: each profile's latest position in each title, written in
//! batches together with the liveness of the streams that reported them.

use std::collections::{HashMap, HashSet};

use sqlx::Row;

use crate::storage::db::Db;
use crate::storage::Result;

/// Rows per multi-row statement when writing a batch.
const FLUSH_CHUNK: usize = 400;

/// A position in a title, and when it was reported.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Position {
    /// Seconds into the title.
    pub(crate) position: f64,
    /// The title's length, if the player knew it.
    pub(crate) duration: Option<f64>,
    /// Unix seconds.
    pub(crate) at: i64,
}

/// Writes positions and stream liveness; answers the streams that no longer
/// have a row (their slot was freed: stopped, replaced or taken over).
pub(crate) async fn write_batch(
    db: &Db,
    rows: &[(String, String, Position)],
    streams: &[(String, i64)],
) -> Result<Vec<String>> {
    let mut tx = db.pool.begin().await?;
    db.relax_durability(&mut tx).await?;
    for chunk in rows.chunks(FLUSH_CHUNK) {
        let mut sql = String::from(
            "INSERT INTO watch_history (profile_id, asset_id, position, duration, updated_at) VALUES ",
        );
        for i in 0..chunk.len() {
            let b = i * 5;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5
            ));
        }
        sql.push_str(
            " ON CONFLICT (profile_id, asset_id) DO UPDATE SET position = excluded.position,
               duration = COALESCE(excluded.duration, watch_history.duration),
               updated_at = excluded.updated_at
             WHERE watch_history.updated_at <= excluded.updated_at",
        );
        let mut q = sqlx::query(&sql);
        for (profile, asset, p) in chunk {
            q = q
                .bind(profile.as_str())
                .bind(asset.as_str())
                .bind(p.position)
                .bind(p.duration)
                .bind(p.at);
        }
        q.execute(&mut *tx).await?;
    }
    // Streams, grouped by the time of their last heartbeat (one per second
    // of the flush window).
    let mut gone = Vec::new();
    let mut by_time: HashMap<i64, Vec<&str>> = HashMap::new();
    for (id, at) in streams {
        by_time.entry(*at).or_default().push(id);
    }
    for (at, ids) in by_time {
        for chunk in ids.chunks(FLUSH_CHUNK) {
            let list = (0..chunk.len())
                .map(|i| format!("${}", i + 2))
                .collect::<Vec<_>>()
                .join(",");
            let sql = format!(
                "UPDATE streams SET last_seen = CASE WHEN last_seen < $1 THEN $1 ELSE last_seen END
                 WHERE id IN ({list}) RETURNING id"
            );
            let mut q = sqlx::query(&sql).bind(at);
            for id in chunk {
                q = q.bind(*id);
            }
            let live: HashSet<String> = q
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .filter_map(|r| r.try_get::<String, _>("id").ok())
                .collect();
            gone.extend(
                chunk
                    .iter()
                    .filter(|id| !live.contains(**id))
                    .map(|id| id.to_string()),
            );
        }
    }
    tx.commit().await?;
    Ok(gone)
}

/// The stored position of a profile in a title, and the length reported with it.
pub(crate) async fn position(
    db: &Db,
    profile: &str,
    asset: &str,
) -> Result<Option<(f64, Option<f64>)>> {
    Ok(sqlx::query(
        "SELECT position, duration FROM watch_history WHERE profile_id = $1 AND asset_id = $2",
    )
    .bind(profile)
    .bind(asset)
    .fetch_optional(&db.pool)
    .await?
    .map(|r| -> Result<_, sqlx::Error> { Ok((r.try_get("position")?, r.try_get("duration")?)) })
    .transpose()?)
}

/// A profile's stored positions, newest first, by asset.
pub(crate) async fn positions(
    db: &Db,
    profile: &str,
    limit: i64,
) -> Result<HashMap<String, Position>> {
    let rows = sqlx::query(
        "SELECT asset_id, position, duration, updated_at FROM watch_history
         WHERE profile_id = $1 ORDER BY updated_at DESC LIMIT $2",
    )
    .bind(profile)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    let mut out: HashMap<String, Position> = HashMap::new();
    for r in rows {
        out.insert(
            r.try_get("asset_id")?,
            Position {
                position: r.try_get("position")?,
                duration: r.try_get("duration")?,
                at: r.try_get("updated_at")?,
            },
        );
    }
    Ok(out)
}
