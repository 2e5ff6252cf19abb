//! Forensic watermarking: which titles are marked, and which playback
//! session holds which 16-bit mark.

use sqlx::Row;

use crate::storage::db::Db;
use crate::storage::Result;

/// Marks a title to be made in two watermarked copies (at upload, before
/// its transcode).
pub(crate) async fn set_watermarked(db: &Db, asset: &str, on: bool) -> Result<bool> {
    let r = sqlx::query("UPDATE assets SET watermarked = $1 WHERE id = $2")
        .bind(i64::from(on))
        .bind(asset)
        .execute(&db.pool)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Whether a title is watermarked (false for no such title).
pub(crate) async fn is_watermarked(db: &Db, asset: &str) -> Result<bool> {
    let row = sqlx::query("SELECT watermarked FROM assets WHERE id = $1")
        .bind(asset)
        .fetch_optional(&db.pool)
        .await?;
    Ok(match row {
        Some(r) => r.try_get::<i64, _>("watermarked")? != 0,
        None => false,
    })
}

/// Who a mark was given to.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Holder {
    pub(crate) mark: u16,
    pub(crate) stream: String,
    pub(crate) user: String,
    pub(crate) email: Option<String>,
    pub(crate) profile: String,
    pub(crate) asset: String,
    pub(crate) issued_at: i64,
}

/// The session the stream is being given.
pub(crate) struct NewMark<'a> {
    pub(crate) stream: &'a str,
    pub(crate) user: &'a str,
    pub(crate) profile: &'a str,
    pub(crate) asset: &'a str,
}

/// Gives a playback session the next mark: the record's sequence number
/// modulo 65,536, so the last 65,536 sessions hold different marks.
pub(crate) async fn allocate(db: &Db, m: NewMark<'_>, now: i64) -> Result<u16> {
    let mut tx = db.pool.begin().await?;
    let seq: i64 = sqlx::query(
        "INSERT INTO watermark_marks (stream_id, user_id, profile_id, asset_id, issued_at) \
         VALUES ($1, $2, $3, $4, $5) RETURNING seq",
    )
    .bind(m.stream)
    .bind(m.user)
    .bind(m.profile)
    .bind(m.asset)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?
    .try_get("seq")?;
    let mark = seq.rem_euclid(1 << 16);
    sqlx::query("UPDATE watermark_marks SET mark = $1 WHERE seq = $2")
        .bind(mark)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(u16::try_from(mark).unwrap_or(0))
}

/// The sessions that held `mark`, newest first (at most `limit`), with
/// their accounts' e-mail addresses where the account still exists.
pub(crate) async fn holders(db: &Db, mark: u16, limit: i64) -> Result<Vec<Holder>> {
    let rows = sqlx::query(
        "SELECT w.mark, w.stream_id, w.user_id, u.email, w.profile_id, w.asset_id, w.issued_at \
         FROM watermark_marks w LEFT JOIN users u ON u.id = w.user_id \
         WHERE w.mark = $1 ORDER BY w.seq DESC LIMIT $2",
    )
    .bind(i64::from(mark))
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Holder {
                mark: u16::try_from(r.try_get::<i64, _>("mark")?).unwrap_or(0),
                stream: r.try_get("stream_id")?,
                user: r.try_get("user_id")?,
                email: r.try_get("email")?,
                profile: r.try_get("profile_id")?,
                asset: r.try_get("asset_id")?,
                issued_at: r.try_get("issued_at")?,
            })
        })
        .collect()
}
