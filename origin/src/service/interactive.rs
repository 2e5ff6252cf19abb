//! Viewers together: comments and their moderation, reaction totals and
//! swarms, polls and news flashes. The origin stores them and publishes
//! them to the bus; edges push them to viewers (see `cascade-bus` for the
//! subjects).
//!
//! Reactions arrive from edges already counted per scope and window (a
//! batch); the origin adds each batch to the durable totals once, and
//! every `reaction_interval_ms` publishes what arrived as one swarm notice
//! per scope. Poll results are published the same way, at most once per
//! interval per poll that got votes.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use cascade_bus::{reaction_index, FlashTarget, Scope, REACTIONS};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::repo::interactive::{self as repo, CommentRow, FlashRow, PollRow, ReactionBatch};
use crate::service::realtime::Outgoing;
use crate::service::state::State;
use crate::storage::{clock, ids, Error, Kind, Result};

/// Longest reason for a report.
const MAX_REASON_CHARS: usize = 200;
/// Most options in a poll.
const MAX_POLL_OPTIONS: usize = 6;
/// Longest poll question or option, and longest flash.
const MAX_POLL_TEXT: usize = 200;
const MAX_FLASH_CHARS: usize = 280;
/// Most batches in one call from an edge.
const MAX_BATCHES: usize = 1000;
/// Largest count one batch may claim for one reaction: an edge's
/// per-viewer limit times its viewers in one window, with room to spare.
const MAX_BATCH_COUNT: i64 = 100_000_000;
/// How long batch ids are remembered against replays.
const BATCH_MEMORY_MS: i64 = 3600 * 1000;

// ---- what the API takes and answers ----------------------------------------

/// A comment as viewers see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Comment {
    id: String,
    /// `live/{channel}` or `vod/{asset}`.
    scope: String,
    author: String,
    text: String,
    /// Unix milliseconds.
    at: i64,
}

/// A page of comments, newest first.
#[derive(Serialize, ToSchema)]
pub(crate) struct CommentPage {
    comments: Vec<Comment>,
    /// Pass as `before` for the next (older) page; none at the end.
    next: Option<String>,
}

/// A new comment.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewComment {
    text: String,
    /// The profile to show as author (default: the account's first).
    #[serde(default)]
    profile_id: Option<String>,
}

/// A report of a comment.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewReport {
    #[serde(default)]
    reason: String,
}

/// A reported comment for moderators.
#[derive(Serialize, ToSchema)]
pub(crate) struct ReportedComment {
    comment: Comment,
    user_id: String,
    reports: i64,
    reason: String,
}

/// Mute a viewer (by e-mail) for some minutes.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewMute {
    email: String,
    /// 1 to 525600 (a year).
    minutes: i64,
}

/// Batches of reactions from an edge.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EdgeReactions {
    batches: Vec<EdgeBatch>,
}

/// One scope's counts for one window at one edge.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EdgeBatch {
    /// Unique per edge, scope and window; a batch sent twice counts once.
    id: String,
    scope: String,
    counts: BTreeMap<String, i64>,
}

/// Totals of a scope.
#[derive(Serialize, ToSchema)]
pub(crate) struct Totals {
    scope: String,
    totals: BTreeMap<String, i64>,
}

/// A new poll.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewPoll {
    /// The live channel it is on.
    channel: String,
    question: String,
    options: Vec<String>,
    /// Seconds until it closes (10 to 86400).
    duration_secs: u64,
}

/// A poll and its results.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Poll {
    id: String,
    scope: String,
    question: String,
    options: Vec<String>,
    /// `open` or `closed`.
    state: String,
    /// Unix milliseconds.
    closes_at: i64,
    counts: Vec<i64>,
    total: i64,
}

/// Polls of a scope, newest first.
#[derive(Serialize, ToSchema)]
pub(crate) struct Polls {
    polls: Vec<Poll>,
}

/// A vote.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewVote {
    /// The option's index, from 0.
    option: i64,
}

/// A new flash.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewFlash {
    text: String,
    /// `normal` (default), `high` or `critical`.
    #[serde(default)]
    priority: Option<String>,
    /// A title to link to.
    #[serde(default)]
    title_id: Option<String>,
    /// Only viewers in this country (ISO 3166-1 alpha-2).
    #[serde(default)]
    region: Option<String>,
    /// Only viewers of this live channel.
    #[serde(default)]
    channel: Option<String>,
    /// Seconds until it expires (10 to 86400; default 600).
    #[serde(default)]
    expires_in_secs: Option<u64>,
}

/// A news flash.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Flash {
    id: String,
    text: String,
    priority: String,
    title_id: Option<String>,
    /// `all`, `region/{CC}` or `live/{channel}`.
    target: String,
    /// Unix milliseconds: published, and expires.
    at: i64,
    expires_at: i64,
}

/// Flashes not expired.
#[derive(Serialize, ToSchema)]
pub(crate) struct Flashes {
    flashes: Vec<Flash>,
}

// ---- comments ---------------------------------------------------------------

/// Posts a comment as `user` on `scope`: the scope must exist, the viewer
/// must not be muted, the text must be within the limits and free of
/// blocked words, and the viewer within the rate limit.
pub(crate) async fn post_comment(
    state: &State,
    user: &str,
    scope: &Scope,
    new: NewComment,
) -> Result<Comment> {
    let refused = |why: &str| state.interactive.refused.with_label_values(&[why]).inc();
    ensure_scope(state, scope).await?;
    let text = new.text.trim();
    let chars = text.chars().count();
    if chars == 0 || chars > state.cfg.comment_max_chars {
        refused("length");
        return Err(Error::bad_request(
            "bad_length",
            format!(
                "a comment is 1 to {} characters",
                state.cfg.comment_max_chars
            ),
        ));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        refused("control");
        return Err(Error::bad_request(
            "bad_text",
            "a comment may not hold control characters",
        ));
    }
    if let Some(word) = blocked_word(text, &state.cfg.comment_blocklist) {
        refused("blocklist");
        return Err(Error::new(
            Kind::Unprocessable,
            "blocked_word",
            "the comment holds a word that is not allowed here",
        )
        .with(json!({ "word": word })));
    }
    let now = clock::now_ms() as i64;
    if let Some(until) = repo::muted_until(&state.db, user, now).await? {
        refused("muted");
        return Err(
            Error::forbidden("muted", "a moderator has muted you for now")
                .with(json!({ "until": until })),
        );
    }
    let recent = repo::comments_since(&state.db, user, now - 60_000).await?;
    if recent >= i64::from(state.cfg.comments_per_minute) {
        refused("rate");
        return Err(Error::new(
            Kind::RateLimited {
                retry_after: Some(60),
            },
            "too_many_comments",
            format!(
                "at most {} comments a minute",
                state.cfg.comments_per_minute
            ),
        ));
    }
    let profiles = crate::repo::accounts::profiles_of(&state.db, user).await?;
    let author = match &new.profile_id {
        Some(p) => profiles
            .iter()
            .find(|x| &x.id == p)
            .map(|x| x.name.clone())
            .ok_or_else(|| Error::not_found("profile"))?,
        None => profiles
            .first()
            .map_or_else(|| "viewer".to_string(), |p| p.name.clone()),
    };
    let row = CommentRow {
        id: ids::new_id(),
        scope: scope.key(),
        user_id: user.to_string(),
        author,
        body: text.to_string(),
        created_ms: now,
        deleted_ms: None,
    };
    repo::insert_comment(&state.db, &row).await?;
    let comment = comment_view(&row);
    publish(
        state,
        &scope.stored_subject(),
        json!({ "type": "comment", "comment": comment }),
        &format!("comment-{}", row.id),
        "comment",
    )
    .await;
    Ok(comment)
}

/// A page of a scope's comments, newest first; `before` is a page's `next`.
pub(crate) async fn list_comments(
    state: &State,
    scope: &Scope,
    before: Option<&str>,
    limit: Option<i64>,
) -> Result<CommentPage> {
    let limit = limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(Error::bad_request("bad_limit", "limit is 1 to 200"));
    }
    let cursor = match before {
        None => None,
        Some(b) => Some(
            b.split_once('.')
                .and_then(|(ms, id)| Some((ms.parse::<i64>().ok()?, id)))
                .filter(|(_, id)| cascade_packager::is_safe_id(id))
                .ok_or_else(|| Error::bad_request("bad_cursor", "before is not a page cursor"))?,
        ),
    };
    let rows = repo::list_comments(&state.db, &scope.key(), cursor, limit).await?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| format!("{}.{}", r.created_ms, r.id)))
        .flatten();
    Ok(CommentPage {
        comments: rows.iter().map(comment_view).collect(),
        next,
    })
}

/// Deletes a comment (a moderator or the admin credential) and retracts it
/// from every viewer.
pub(crate) async fn delete_comment(state: &State, actor: &str, id: &str) -> Result<()> {
    let Some(row) = repo::comment_by_id(&state.db, id).await? else {
        return Err(Error::not_found("comment"));
    };
    if !repo::delete_comment(&state.db, id, actor, clock::now_ms() as i64).await? {
        return Err(Error::not_found("comment"));
    }
    tracing::info!(comment = %id, by = %actor, scope = %row.scope, "comment deleted");
    if let Some(scope) = Scope::parse(&row.scope) {
        publish(
            state,
            &scope.stored_subject(),
            json!({ "type": "retract", "id": id }),
            &format!("retract-{id}"),
            "retract",
        )
        .await;
    }
    Ok(())
}

/// A viewer reports a comment (once each).
pub(crate) async fn report(state: &State, user: &str, id: &str, new: NewReport) -> Result<bool> {
    if new.reason.chars().count() > MAX_REASON_CHARS {
        return Err(Error::bad_request(
            "bad_reason",
            format!("a reason is at most {MAX_REASON_CHARS} characters"),
        ));
    }
    match repo::comment_by_id(&state.db, id).await? {
        Some(c) if c.deleted_ms.is_none() => {}
        _ => return Err(Error::not_found("comment")),
    }
    repo::report_comment(
        &state.db,
        id,
        user,
        new.reason.trim(),
        clock::now_ms() as i64,
    )
    .await
}

/// Reported comments, most reported first.
pub(crate) async fn reported(state: &State) -> Result<Vec<ReportedComment>> {
    Ok(repo::reported(&state.db, 100)
        .await?
        .into_iter()
        .map(|r| ReportedComment {
            comment: comment_view(&r.comment),
            user_id: r.comment.user_id.clone(),
            reports: r.reports,
            reason: r.last_reason,
        })
        .collect())
}

/// Mutes a viewer.
pub(crate) async fn mute(state: &State, actor: &str, new: NewMute) -> Result<()> {
    if !(1..=525_600).contains(&new.minutes) {
        return Err(Error::bad_request("bad_minutes", "minutes is 1 to 525600"));
    }
    let Some(user) = repo::user_by_email(&state.db, &new.email).await? else {
        return Err(Error::not_found("user"));
    };
    let now = clock::now_ms() as i64;
    repo::mute(&state.db, &user, now + new.minutes * 60_000, actor, now).await?;
    tracing::info!(%user, by = %actor, minutes = new.minutes, "viewer muted");
    Ok(())
}

/// Lifts a viewer's mute.
pub(crate) async fn unmute(state: &State, email: &str) -> Result<()> {
    let Some(user) = repo::user_by_email(&state.db, email).await? else {
        return Err(Error::not_found("user"));
    };
    if !repo::unmute(&state.db, &user).await? {
        return Err(Error::not_found("mute"));
    }
    Ok(())
}

/// Makes a viewer a moderator, or a viewer again.
pub(crate) async fn set_moderator(state: &State, email: &str, on: bool) -> Result<()> {
    let role = if on { "moderator" } else { "viewer" };
    match repo::set_role(&state.db, email, role).await? {
        Some(user) => {
            tracing::info!(%user, role, "role set");
            Ok(())
        }
        None => Err(Error::not_found("user")),
    }
}

/// Who may moderate: the admin credential (`admin`), or a logged-in
/// moderator (their user id).
pub(crate) async fn moderator(state: &State, admin: bool, bearer: Option<&str>) -> Result<String> {
    if admin {
        return Ok("admin".into());
    }
    let user = crate::service::accounts::viewer(state, bearer)?;
    match repo::role_of(&state.db, &user).await?.as_deref() {
        Some("moderator") => Ok(user),
        _ => Err(Error::forbidden(
            "not_moderator",
            "only moderators may do this",
        )),
    }
}

// ---- reactions --------------------------------------------------------------

/// Adds an edge's batches to the totals (each once) and to the next swarm.
pub(crate) async fn add_reactions(state: &State, body: EdgeReactions) -> Result<usize> {
    if body.batches.len() > MAX_BATCHES {
        return Err(Error::bad_request(
            "too_many_batches",
            format!("at most {MAX_BATCHES} batches a call"),
        ));
    }
    let mut batches = Vec::with_capacity(body.batches.len());
    for b in body.batches {
        if b.id.is_empty() || b.id.len() > 200 || Scope::parse(&b.scope).is_none() {
            return Err(Error::bad_request(
                "bad_batch",
                "a batch needs an id and a scope",
            ));
        }
        let mut counts = Vec::new();
        for (reaction, n) in b.counts {
            if reaction_index(&reaction).is_none() {
                return Err(Error::bad_request(
                    "bad_reaction",
                    format!("reactions are {}", REACTIONS.join(", ")),
                ));
            }
            if !(0..=MAX_BATCH_COUNT).contains(&n) {
                return Err(Error::bad_request("bad_count", "a count is 0 to 100000000"));
            }
            if n > 0 {
                counts.push((reaction, n));
            }
        }
        batches.push(ReactionBatch {
            id: b.id,
            scope: b.scope,
            counts,
        });
    }
    let fresh = repo::add_reaction_batches(&state.db, &batches, clock::now_ms() as i64).await?;
    let mut swarm = lock(&state.interactive.swarm);
    let mut added = 0;
    for (b, fresh) in batches.iter().zip(fresh) {
        if !fresh {
            continue;
        }
        added += 1;
        let entry = swarm.entry(b.scope.clone()).or_insert([0; REACTIONS.len()]);
        for (reaction, n) in &b.counts {
            if let Some(i) = reaction_index(reaction) {
                entry[i] += *n as u64;
            }
        }
    }
    Ok(added)
}

/// A scope's totals.
pub(crate) async fn totals(state: &State, scope: &Scope) -> Result<Totals> {
    Ok(Totals {
        scope: scope.key(),
        totals: repo::reaction_totals(&state.db, &scope.key())
            .await?
            .into_iter()
            .collect(),
    })
}

// ---- polls ------------------------------------------------------------------

/// Opens a poll on a live channel.
pub(crate) async fn create_poll(state: &State, new: NewPoll) -> Result<Poll> {
    let scope = Scope::new("live", &new.channel).ok_or_else(|| Error::not_found("channel"))?;
    ensure_scope(state, &scope).await?;
    let question = new.question.trim();
    if question.is_empty() || question.chars().count() > MAX_POLL_TEXT {
        return Err(Error::bad_request(
            "bad_question",
            format!("a question is 1 to {MAX_POLL_TEXT} characters"),
        ));
    }
    let options: Vec<String> = new.options.iter().map(|o| o.trim().to_string()).collect();
    if !(2..=MAX_POLL_OPTIONS).contains(&options.len())
        || options
            .iter()
            .any(|o| o.is_empty() || o.chars().count() > MAX_POLL_TEXT)
    {
        return Err(Error::bad_request(
            "bad_options",
            format!("2 to {MAX_POLL_OPTIONS} options, each 1 to {MAX_POLL_TEXT} characters"),
        ));
    }
    if !(10..=86_400).contains(&new.duration_secs) {
        return Err(Error::bad_request(
            "bad_duration",
            "duration_secs is 10 to 86400",
        ));
    }
    let now = clock::now_ms() as i64;
    let row = PollRow {
        id: ids::new_id(),
        scope: scope.key(),
        question: question.to_string(),
        options,
        state: "open".into(),
        created_ms: now,
        closes_ms: now + new.duration_secs as i64 * 1000,
    };
    repo::insert_poll(&state.db, &row).await?;
    let poll = poll_view(&row, vec![0; row.options.len()]);
    publish(
        state,
        &scope.stored_subject(),
        json!({ "type": "poll", "poll": poll }),
        &format!("poll-{}", row.id),
        "poll",
    )
    .await;
    Ok(poll)
}

/// A viewer's vote: once per poll, while it is open.
pub(crate) async fn vote(state: &State, user: &str, poll_id: &str, v: NewVote) -> Result<Poll> {
    let refused = |why: &str| state.interactive.refused.with_label_values(&[why]).inc();
    let Some(row) = repo::poll_by_id(&state.db, poll_id).await? else {
        return Err(Error::not_found("poll"));
    };
    let now = clock::now_ms() as i64;
    if row.state != "open" || row.closes_ms <= now {
        refused("poll_closed");
        return Err(Error::conflict("poll_closed", "the poll has closed"));
    }
    if !usize::try_from(v.option).is_ok_and(|i| i < row.options.len()) {
        return Err(Error::bad_request(
            "bad_option",
            format!("option is 0 to {}", row.options.len().saturating_sub(1)),
        ));
    }
    if !repo::vote(&state.db, poll_id, user, v.option, now).await? {
        refused("double_vote");
        return Err(Error::conflict(
            "already_voted",
            "you have voted in this poll",
        ));
    }
    lock(&state.interactive.dirty_polls).insert(poll_id.to_string());
    let counts = repo::poll_counts(&state.db, poll_id, row.options.len()).await?;
    Ok(poll_view(&row, counts))
}

/// Closes a poll now.
pub(crate) async fn close_poll(state: &State, poll_id: &str) -> Result<Poll> {
    if repo::poll_by_id(&state.db, poll_id).await?.is_none() {
        return Err(Error::not_found("poll"));
    }
    if !repo::close_poll(&state.db, poll_id, clock::now_ms() as i64).await? {
        return Err(Error::conflict("poll_closed", "the poll has closed"));
    }
    announce_closed(state, poll_id).await
}

/// The newest polls of a scope, with results.
pub(crate) async fn polls(state: &State, scope: &Scope) -> Result<Polls> {
    let mut polls = Vec::new();
    for row in repo::polls_of(&state.db, &scope.key(), 10).await? {
        let counts = repo::poll_counts(&state.db, &row.id, row.options.len()).await?;
        polls.push(poll_view(&row, counts));
    }
    Ok(Polls { polls })
}

async fn announce_closed(state: &State, poll_id: &str) -> Result<Poll> {
    let Some(row) = repo::poll_by_id(&state.db, poll_id).await? else {
        return Err(Error::not_found("poll"));
    };
    let counts = repo::poll_counts(&state.db, poll_id, row.options.len()).await?;
    let poll = poll_view(&row, counts);
    if let Some(scope) = Scope::parse(&row.scope) {
        publish(
            state,
            &scope.stored_subject(),
            json!({ "type": "poll", "poll": poll }),
            &format!("poll-closed-{poll_id}"),
            "poll",
        )
        .await;
    }
    Ok(poll)
}

// ---- flashes ----------------------------------------------------------------

/// Publishes a news flash to everyone, a region or a channel.
pub(crate) async fn create_flash(state: &State, new: NewFlash) -> Result<Flash> {
    let text = new.text.trim();
    if text.is_empty() || text.chars().count() > MAX_FLASH_CHARS {
        return Err(Error::bad_request(
            "bad_text",
            format!("a flash is 1 to {MAX_FLASH_CHARS} characters"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(Error::bad_request(
            "bad_text",
            "a flash may not hold control characters",
        ));
    }
    let priority = new.priority.as_deref().unwrap_or("normal");
    if !["normal", "high", "critical"].contains(&priority) {
        return Err(Error::bad_request(
            "bad_priority",
            "priority is normal, high or critical",
        ));
    }
    let target = match (&new.region, &new.channel) {
        (Some(_), Some(_)) => {
            return Err(Error::bad_request(
                "bad_target",
                "a flash goes to a region or a channel, not both",
            ))
        }
        (Some(cc), None) => FlashTarget::parse(&format!("region/{}", cc.to_uppercase()))
            .ok_or_else(|| {
                Error::bad_request("bad_region", "region is an ISO 3166-1 alpha-2 code")
            })?,
        (None, Some(name)) => {
            let scope = Scope::new("live", name).ok_or_else(|| Error::not_found("channel"))?;
            ensure_scope(state, &scope).await?;
            FlashTarget::Channel(name.clone())
        }
        (None, None) => FlashTarget::All,
    };
    if let Some(t) = &new.title_id {
        if crate::repo::catalog::load(&state.db, t).await?.is_none() {
            return Err(Error::not_found("title"));
        }
    }
    let secs = new.expires_in_secs.unwrap_or(600);
    if !(10..=86_400).contains(&secs) {
        return Err(Error::bad_request(
            "bad_expiry",
            "expires_in_secs is 10 to 86400",
        ));
    }
    let now = clock::now_ms() as i64;
    let row = FlashRow {
        id: ids::new_id(),
        body: text.to_string(),
        priority: priority.to_string(),
        title_id: new.title_id.clone(),
        target: target.key(),
        created_ms: now,
        expires_ms: now + secs as i64 * 1000,
    };
    repo::insert_flash(&state.db, &row).await?;
    let flash = flash_view(&row);
    tracing::info!(flash = %row.id, target = %row.target, priority, "flash published");
    publish(
        state,
        &target.subject(),
        json!({ "type": "flash", "flash": flash }),
        &format!("flash-{}", row.id),
        "flash",
    )
    .await;
    Ok(flash)
}

/// Flashes not expired.
pub(crate) async fn active_flashes(state: &State) -> Result<Flashes> {
    Ok(Flashes {
        flashes: repo::active_flashes(&state.db, clock::now_ms() as i64)
            .await?
            .iter()
            .map(flash_view)
            .collect(),
    })
}

/// Ends a flash now, everywhere.
pub(crate) async fn end_flash(state: &State, id: &str) -> Result<()> {
    let Some(row) = repo::end_flash(&state.db, id, clock::now_ms() as i64).await? else {
        return Err(Error::not_found("flash"));
    };
    let target = FlashTarget::parse(&row.target).unwrap_or(FlashTarget::All);
    publish(
        state,
        &target.subject(),
        json!({ "type": "flash", "flash": flash_view(&row) }),
        &format!("flash-end-{id}"),
        "flash",
    )
    .await;
    Ok(())
}

// ---- the ticker ---------------------------------------------------------------

/// Every interval: one swarm notice per scope that got reactions, results
/// of polls that got votes, polls whose time is up closed; now and then,
/// old batch ids forgotten.
pub(crate) async fn run(state: Arc<State>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let interval = Duration::from_millis(state.cfg.reaction_interval_ms);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        ticks += 1;
        let swarm: Vec<(String, [u64; REACTIONS.len()])> =
            lock(&state.interactive.swarm).drain().collect();
        for (scope, counts) in swarm {
            let Some(scope) = Scope::parse(&scope) else {
                continue;
            };
            let by_name: BTreeMap<&str, u64> = REACTIONS
                .iter()
                .zip(counts)
                .filter(|(_, n)| *n > 0)
                .map(|(r, n)| (*r, n))
                .collect();
            let payload = json!({
                "type": "swarm",
                "scope": scope.key(),
                "interval_ms": state.cfg.reaction_interval_ms,
                "counts": by_name,
                "total": counts.iter().sum::<u64>(),
            });
            notify(&state, &scope.notice_subject(), payload, "swarm").await;
        }
        let dirty: Vec<String> = lock(&state.interactive.dirty_polls).drain().collect();
        for id in dirty {
            if let Err(e) = poll_results(&state, &id).await {
                tracing::warn!(poll = %id, error = %e, "poll results not published");
            }
        }
        match repo::polls_due(&state.db, clock::now_ms() as i64).await {
            Ok(due) => {
                for id in due {
                    match repo::close_poll(&state.db, &id, clock::now_ms() as i64).await {
                        Ok(true) => {
                            let _ = announce_closed(&state, &id).await;
                        }
                        Ok(false) => {}
                        Err(e) => tracing::warn!(poll = %id, error = %e, "poll not closed"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "polls due not read"),
        }
        if ticks.is_multiple_of(600) {
            let before = clock::now_ms() as i64 - BATCH_MEMORY_MS;
            if let Err(e) = repo::prune_reaction_batches(&state.db, before).await {
                tracing::warn!(error = %e, "old reaction batches not pruned");
            }
        }
    }
}

async fn poll_results(state: &State, id: &str) -> Result<()> {
    let Some(row) = repo::poll_by_id(&state.db, id).await? else {
        return Ok(());
    };
    let counts = repo::poll_counts(&state.db, id, row.options.len()).await?;
    let Some(scope) = Scope::parse(&row.scope) else {
        return Ok(());
    };
    let total: i64 = counts.iter().sum();
    notify(
        state,
        &scope.notice_subject(),
        json!({ "type": "poll_results", "poll": id, "counts": counts, "total": total }),
        "poll_results",
    )
    .await;
    Ok(())
}

// ---- helpers ----------------------------------------------------------------

/// Queues a stored event for the bus. Events go out in the order they
/// were queued, from one task that retries while the bus is away, so a
/// comment posted while NATS restarts is pushed once it is back (the
/// dedupe id keeps a retried publish from being stored twice).
async fn publish(
    state: &State,
    subject: &str,
    payload: serde_json::Value,
    id: &str,
    kind: &'static str,
) {
    let item = Outgoing::new(subject, Bytes::from(payload.to_string()), id, kind);
    if state.interactive.outbox.try_send(item).is_err() {
        state
            .interactive
            .refused
            .with_label_values(&["outbox_full"])
            .inc();
        tracing::error!(%subject, "bus outbox full; the event is stored but not pushed");
    }
}

async fn notify(state: &State, subject: &str, payload: serde_json::Value, kind: &str) {
    match state
        .interactive
        .bus
        .notify(subject, Bytes::from(payload.to_string()))
        .await
    {
        Ok(()) => state.interactive.published.with_label_values(&[kind]).inc(),
        Err(e) => tracing::warn!(%subject, error = %e, "notice not sent"),
    }
}

/// The scope must name a live channel or a playable asset.
async fn ensure_scope(state: &State, scope: &Scope) -> Result<()> {
    let found = match scope {
        Scope::Live(name) => crate::repo::channels::by_name(&state.db, name)
            .await?
            .is_some(),
        Scope::Vod(asset) => crate::repo::assets::get_asset(&state.db, asset)
            .await?
            .is_some(),
    };
    if found {
        Ok(())
    } else {
        Err(Error::not_found(scope.kind_name()))
    }
}

trait KindName {
    fn kind_name(&self) -> &'static str;
}

impl KindName for Scope {
    fn kind_name(&self) -> &'static str {
        match self {
            Scope::Live(_) => "channel",
            Scope::Vod(_) => "asset",
        }
    }
}

/// The first word of `text` on the blocklist, compared without case.
fn blocked_word<'a>(text: &str, blocklist: &'a [String]) -> Option<&'a str> {
    if blocklist.is_empty() {
        return None;
    }
    let lower = text.to_lowercase();
    let words: HashSet<&str> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    blocklist
        .iter()
        .find(|b| words.contains(b.to_lowercase().as_str()))
        .map(String::as_str)
}

fn comment_view(r: &CommentRow) -> Comment {
    Comment {
        id: r.id.clone(),
        scope: r.scope.clone(),
        author: r.author.clone(),
        text: r.body.clone(),
        at: r.created_ms,
    }
}

fn poll_view(r: &PollRow, counts: Vec<i64>) -> Poll {
    Poll {
        id: r.id.clone(),
        scope: r.scope.clone(),
        question: r.question.clone(),
        options: r.options.clone(),
        state: r.state.clone(),
        closes_at: r.closes_ms,
        total: counts.iter().sum(),
        counts,
    }
}

fn flash_view(r: &FlashRow) -> Flash {
    Flash {
        id: r.id.clone(),
        text: r.body.clone(),
        priority: r.priority.clone(),
        title_id: r.title_id.clone(),
        target: r.target.clone(),
        at: r.created_ms,
        expires_at: r.expires_ms,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_words_are_whole_words_without_case() {
        let list = vec!["Spoiler".to_string()];
        assert_eq!(blocked_word("no SPOILER, please", &list), Some("Spoiler"));
        assert_eq!(blocked_word("spoilers are fine", &list), None);
        assert_eq!(blocked_word("anything", &[]), None);
    }
}
