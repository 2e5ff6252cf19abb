//! Comments, reports, mutes and moderators; reaction totals; polls and
//! votes; news flashes. Times are Unix milliseconds.

use sqlx::any::AnyRow;
use sqlx::Row;

use crate::storage::db::Db;
use crate::storage::Result;

// ---- comments -------------------------------------------------------------

/// A comment as stored.
#[derive(Debug, Clone)]
pub(crate) struct CommentRow {
    pub(crate) id: String,
    pub(crate) scope: String,
    pub(crate) user_id: String,
    pub(crate) author: String,
    pub(crate) body: String,
    pub(crate) created_ms: i64,
    pub(crate) deleted_ms: Option<i64>,
}

const COMMENT_COLUMNS: &str = "id, scope, user_id, author, body, created_ms, deleted_ms";

fn comment(r: &AnyRow) -> Result<CommentRow> {
    Ok(CommentRow {
        id: r.try_get("id")?,
        scope: r.try_get("scope")?,
        user_id: r.try_get("user_id")?,
        author: r.try_get("author")?,
        body: r.try_get("body")?,
        created_ms: r.try_get("created_ms")?,
        deleted_ms: r.try_get("deleted_ms")?,
    })
}

/// Stores a comment.
pub(crate) async fn insert_comment(db: &Db, c: &CommentRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO comments (id, scope, user_id, author, body, created_ms)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&c.id)
    .bind(&c.scope)
    .bind(&c.user_id)
    .bind(&c.author)
    .bind(&c.body)
    .bind(c.created_ms)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// A comment by id.
pub(crate) async fn comment_by_id(db: &Db, id: &str) -> Result<Option<CommentRow>> {
    let row = sqlx::query(&format!(
        "SELECT {COMMENT_COLUMNS} FROM comments WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&db.pool)
    .await?;
    row.as_ref().map(comment).transpose()
}

/// Comments of a scope not deleted, newest first, older than the cursor
/// `(created_ms, id)` when given.
pub(crate) async fn list_comments(
    db: &Db,
    scope: &str,
    before: Option<(i64, &str)>,
    limit: i64,
) -> Result<Vec<CommentRow>> {
    let (ms, id) = before.unwrap_or((i64::MAX, ""));
    let rows = sqlx::query(&format!(
        "SELECT {COMMENT_COLUMNS} FROM comments
         WHERE scope = $1 AND deleted_ms IS NULL
           AND (created_ms < $2 OR (created_ms = $2 AND id < $3))
         ORDER BY created_ms DESC, id DESC LIMIT $4"
    ))
    .bind(scope)
    .bind(ms)
    .bind(id)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(comment).collect()
}

/// Comments a viewer posted since `since_ms` (for the rate limit).
pub(crate) async fn comments_since(db: &Db, user: &str, since_ms: i64) -> Result<i64> {
    Ok(
        sqlx::query("SELECT COUNT(*) AS n FROM comments WHERE user_id = $1 AND created_ms >= $2")
            .bind(user)
            .bind(since_ms)
            .fetch_one(&db.pool)
            .await?
            .try_get("n")?,
    )
}

/// Marks a comment deleted; false when it was not there or already gone.
pub(crate) async fn delete_comment(db: &Db, id: &str, by: &str, now_ms: i64) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE comments SET deleted_ms = $2, deleted_by = $3
         WHERE id = $1 AND deleted_ms IS NULL",
    )
    .bind(id)
    .bind(now_ms)
    .bind(by)
    .execute(&db.pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Records a viewer's report of a comment; false when they had reported it.
pub(crate) async fn report_comment(
    db: &Db,
    comment: &str,
    user: &str,
    reason: &str,
    now_ms: i64,
) -> Result<bool> {
    let r = sqlx::query(
        "INSERT INTO comment_reports (comment_id, user_id, reason, created_ms)
         VALUES ($1, $2, $3, $4) ON CONFLICT (comment_id, user_id) DO NOTHING",
    )
    .bind(comment)
    .bind(user)
    .bind(reason)
    .bind(now_ms)
    .execute(&db.pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// A reported comment, with how many reported it.
#[derive(Debug, Clone)]
pub(crate) struct Reported {
    pub(crate) comment: CommentRow,
    pub(crate) reports: i64,
    pub(crate) last_reason: String,
}

/// Reported comments not deleted, most reported first.
pub(crate) async fn reported(db: &Db, limit: i64) -> Result<Vec<Reported>> {
    let rows = sqlx::query(
        "SELECT c.id, c.scope, c.user_id, c.author, c.body, c.created_ms, c.deleted_ms,
                COUNT(*) AS reports, MAX(r.reason) AS last_reason
         FROM comment_reports r JOIN comments c ON c.id = r.comment_id
         WHERE c.deleted_ms IS NULL
         GROUP BY c.id, c.scope, c.user_id, c.author, c.body, c.created_ms, c.deleted_ms
         ORDER BY reports DESC, c.created_ms DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Reported {
                comment: comment(r)?,
                reports: r.try_get("reports")?,
                last_reason: r.try_get("last_reason")?,
            })
        })
        .collect()
}

// ---- mutes and moderators -------------------------------------------------

/// Mutes a viewer until `until_ms`.
pub(crate) async fn mute(db: &Db, user: &str, until_ms: i64, by: &str, now_ms: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO mutes (user_id, until_ms, muted_by, created_ms) VALUES ($1, $2, $3, $4)
         ON CONFLICT (user_id) DO UPDATE SET until_ms = $2, muted_by = $3, created_ms = $4",
    )
    .bind(user)
    .bind(until_ms)
    .bind(by)
    .bind(now_ms)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Lifts a mute; false when there was none.
pub(crate) async fn unmute(db: &Db, user: &str) -> Result<bool> {
    let r = sqlx::query("DELETE FROM mutes WHERE user_id = $1")
        .bind(user)
        .execute(&db.pool)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Until when a viewer is muted, if they are.
pub(crate) async fn muted_until(db: &Db, user: &str, now_ms: i64) -> Result<Option<i64>> {
    let row = sqlx::query("SELECT until_ms FROM mutes WHERE user_id = $1 AND until_ms > $2")
        .bind(user)
        .bind(now_ms)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.map(|r| r.try_get("until_ms")).transpose()?)
}

/// A user's role (`viewer` or `moderator`), if the user exists.
pub(crate) async fn role_of(db: &Db, user: &str) -> Result<Option<String>> {
    let row = sqlx::query("SELECT role FROM users WHERE id = $1")
        .bind(user)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.map(|r| r.try_get("role")).transpose()?)
}

/// Sets the role of the user with this e-mail; their id, or none when no
/// such user.
pub(crate) async fn set_role(db: &Db, email: &str, role: &str) -> Result<Option<String>> {
    let row = sqlx::query("UPDATE users SET role = $2 WHERE email = $1 RETURNING id")
        .bind(email.to_lowercase())
        .bind(role)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.map(|r| r.try_get("id")).transpose()?)
}

/// The id of the user with this e-mail.
pub(crate) async fn user_by_email(db: &Db, email: &str) -> Result<Option<String>> {
    let row = sqlx::query("SELECT id FROM users WHERE email = $1")
        .bind(email.to_lowercase())
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.map(|r| r.try_get("id")).transpose()?)
}

// ---- reactions ------------------------------------------------------------

/// Counts one edge sent for one scope and window.
#[derive(Debug, Clone)]
pub(crate) struct ReactionBatch {
    pub(crate) id: String,
    pub(crate) scope: String,
    /// `(reaction, count)`, counts above zero.
    pub(crate) counts: Vec<(String, i64)>,
}

/// Adds batches to the totals, each once however often it is sent, in
/// one transaction; answers which of them were new.
pub(crate) async fn add_reaction_batches(
    db: &Db,
    batches: &[ReactionBatch],
    now_ms: i64,
) -> Result<Vec<bool>> {
    let mut tx = db.pool.begin().await?;
    let mut new = Vec::with_capacity(batches.len());
    for b in batches {
        let r = sqlx::query(
            "INSERT INTO reaction_batches (id, received_ms) VALUES ($1, $2)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&b.id)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        let fresh = r.rows_affected() == 1;
        if fresh {
            for (reaction, n) in &b.counts {
                sqlx::query(
                    "INSERT INTO reaction_totals (scope, reaction, total) VALUES ($1, $2, $3)
                     ON CONFLICT (scope, reaction)
                     DO UPDATE SET total = reaction_totals.total + $3",
                )
                .bind(&b.scope)
                .bind(reaction)
                .bind(*n)
                .execute(&mut *tx)
                .await?;
            }
        }
        new.push(fresh);
    }
    tx.commit().await?;
    Ok(new)
}

/// Forgets batch ids older than `before_ms` (edges retry for seconds, not
/// hours).
pub(crate) async fn prune_reaction_batches(db: &Db, before_ms: i64) -> Result<u64> {
    let r = sqlx::query("DELETE FROM reaction_batches WHERE received_ms < $1")
        .bind(before_ms)
        .execute(&db.pool)
        .await?;
    Ok(r.rows_affected())
}

/// Totals of a scope, by reaction.
pub(crate) async fn reaction_totals(db: &Db, scope: &str) -> Result<Vec<(String, i64)>> {
    let rows = sqlx::query(
        "SELECT reaction, total FROM reaction_totals WHERE scope = $1 ORDER BY reaction",
    )
    .bind(scope)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("reaction")?, r.try_get("total")?)))
        .collect()
}

// ---- polls ----------------------------------------------------------------

/// A poll as stored.
#[derive(Debug, Clone)]
pub(crate) struct PollRow {
    pub(crate) id: String,
    pub(crate) scope: String,
    pub(crate) question: String,
    pub(crate) options: Vec<String>,
    pub(crate) state: String,
    pub(crate) created_ms: i64,
    pub(crate) closes_ms: i64,
}

const POLL_COLUMNS: &str = "id, scope, question, options, state, created_ms, closes_ms";

fn poll(r: &AnyRow) -> Result<PollRow> {
    let options: String = r.try_get("options")?;
    Ok(PollRow {
        id: r.try_get("id")?,
        scope: r.try_get("scope")?,
        question: r.try_get("question")?,
        // Written by us from a Vec<String>; unreadable means none.
        options: serde_json::from_str(&options).unwrap_or_default(),
        state: r.try_get("state")?,
        created_ms: r.try_get("created_ms")?,
        closes_ms: r.try_get("closes_ms")?,
    })
}

/// Stores a new poll.
pub(crate) async fn insert_poll(db: &Db, p: &PollRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO polls (id, scope, question, options, state, created_ms, closes_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&p.id)
    .bind(&p.scope)
    .bind(&p.question)
    .bind(serde_json::to_string(&p.options).unwrap_or_else(|_| "[]".into()))
    .bind(&p.state)
    .bind(p.created_ms)
    .bind(p.closes_ms)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// A poll by id.
pub(crate) async fn poll_by_id(db: &Db, id: &str) -> Result<Option<PollRow>> {
    let row = sqlx::query(&format!("SELECT {POLL_COLUMNS} FROM polls WHERE id = $1"))
        .bind(id)
        .fetch_optional(&db.pool)
        .await?;
    row.as_ref().map(poll).transpose()
}

/// The newest polls of a scope.
pub(crate) async fn polls_of(db: &Db, scope: &str, limit: i64) -> Result<Vec<PollRow>> {
    let rows = sqlx::query(&format!(
        "SELECT {POLL_COLUMNS} FROM polls WHERE scope = $1
         ORDER BY created_ms DESC, id DESC LIMIT $2"
    ))
    .bind(scope)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(poll).collect()
}

/// Votes per option of a poll with `options` options.
pub(crate) async fn poll_counts(db: &Db, poll: &str, options: usize) -> Result<Vec<i64>> {
    let rows = sqlx::query(
        "SELECT choice, COUNT(*) AS n FROM poll_votes WHERE poll_id = $1 GROUP BY choice",
    )
    .bind(poll)
    .fetch_all(&db.pool)
    .await?;
    let mut counts = vec![0; options];
    for r in &rows {
        let choice: i64 = r.try_get("choice")?;
        if let Some(c) = usize::try_from(choice).ok().and_then(|i| counts.get_mut(i)) {
            *c = r.try_get("n")?;
        }
    }
    Ok(counts)
}

/// Records a vote; false when this viewer had voted in this poll.
pub(crate) async fn vote(
    db: &Db,
    poll: &str,
    user: &str,
    choice: i64,
    now_ms: i64,
) -> Result<bool> {
    let r = sqlx::query(
        "INSERT INTO poll_votes (poll_id, user_id, choice, created_ms) VALUES ($1, $2, $3, $4)
         ON CONFLICT (poll_id, user_id) DO NOTHING",
    )
    .bind(poll)
    .bind(user)
    .bind(choice)
    .bind(now_ms)
    .execute(&db.pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Closes a poll; true for the one caller that closed it (several origins
/// may race to).
pub(crate) async fn close_poll(db: &Db, id: &str, now_ms: i64) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE polls SET state = 'closed',
             closes_ms = CASE WHEN closes_ms > $2 THEN $2 ELSE closes_ms END
         WHERE id = $1 AND state = 'open'",
    )
    .bind(id)
    .bind(now_ms)
    .execute(&db.pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Open polls whose closing time has come.
pub(crate) async fn polls_due(db: &Db, now_ms: i64) -> Result<Vec<String>> {
    let rows = sqlx::query("SELECT id FROM polls WHERE state = 'open' AND closes_ms <= $1")
        .bind(now_ms)
        .fetch_all(&db.pool)
        .await?;
    rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
}

// ---- flashes --------------------------------------------------------------

/// A news flash as stored.
#[derive(Debug, Clone)]
pub(crate) struct FlashRow {
    pub(crate) id: String,
    pub(crate) body: String,
    pub(crate) priority: String,
    pub(crate) title_id: Option<String>,
    pub(crate) target: String,
    pub(crate) created_ms: i64,
    pub(crate) expires_ms: i64,
}

const FLASH_COLUMNS: &str = "id, body, priority, title_id, target, created_ms, expires_ms";

fn flash(r: &AnyRow) -> Result<FlashRow> {
    Ok(FlashRow {
        id: r.try_get("id")?,
        body: r.try_get("body")?,
        priority: r.try_get("priority")?,
        title_id: r.try_get("title_id")?,
        target: r.try_get("target")?,
        created_ms: r.try_get("created_ms")?,
        expires_ms: r.try_get("expires_ms")?,
    })
}

/// Stores a flash.
pub(crate) async fn insert_flash(db: &Db, f: &FlashRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO flashes (id, body, priority, title_id, target, created_ms, expires_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&f.id)
    .bind(&f.body)
    .bind(&f.priority)
    .bind(&f.title_id)
    .bind(&f.target)
    .bind(f.created_ms)
    .bind(f.expires_ms)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Flashes not expired at `now_ms`, newest first.
pub(crate) async fn active_flashes(db: &Db, now_ms: i64) -> Result<Vec<FlashRow>> {
    let rows = sqlx::query(&format!(
        "SELECT {FLASH_COLUMNS} FROM flashes WHERE expires_ms > $1
         ORDER BY created_ms DESC, id DESC LIMIT 100"
    ))
    .bind(now_ms)
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(flash).collect()
}

/// Ends a flash now; the flash, or none when it was not active.
pub(crate) async fn end_flash(db: &Db, id: &str, now_ms: i64) -> Result<Option<FlashRow>> {
    let row = sqlx::query(&format!(
        "UPDATE flashes SET expires_ms = $2 WHERE id = $1 AND expires_ms > $2
         RETURNING {FLASH_COLUMNS}"
    ))
    .bind(id)
    .bind(now_ms)
    .fetch_optional(&db.pool)
    .await?;
    row.as_ref().map(flash).transpose()
}
