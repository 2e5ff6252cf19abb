//! Playback: the playback API (login, availability, geo, entitlement and
//! the concurrent-stream limit, then signed edge URLs and the resume
//! position), stream heartbeats, and watch history.
//!
//! Heartbeats are batched: each is folded into an in-memory map (one entry
//! per profile and title, one per stream) that a flusher writes every
//! `history_flush_ms` as multi-row upserts in one transaction. Thousands of
//! viewers a second cost a few statements a second. Reads of this origin see
//! the unflushed entries too; other origins of a fleet see them after the
//! next flush.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State as AxState};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row;
use utoipa::{IntoParams, ToSchema};

use crate::service::accounts::{self, Claims, TokenError, TokenKind, Viewer};
use crate::http::error::{ErrorBody, JsonBody};
use crate::storage::{Error, Kind};
use crate::repo::catalog::{self, TitleCard};
use crate::storage::db::{self, Db};
use crate::State;

/// Rows per multi-row statement when flushing.
const FLUSH_CHUNK: usize = 400;

/// `POST /api/v1/playback/{asset}`.
#[derive(Deserialize, ToSchema, Default)]
pub(crate) struct PlaybackRequest {
    /// The profile watching; the account's first if absent.
    #[serde(default)]
    profile_id: Option<String>,
    /// A stable id of the device (1 to 64 of A-Z a-z 0-9 - _). A device
    /// starting again replaces its own stream instead of taking a new slot.
    #[serde(default)]
    device_id: Option<String>,
    /// The kind of device (`web`, `phone`, `tablet`, `tv`, `stb`, `legacy`,
    /// or one the operator configured): it chooses the device profile that
    /// shapes the manifests (renditions, codecs, TS or fMP4). Absent: every
    /// rendition is listed.
    #[serde(default)]
    device_type: Option<String>,
}

/// Where and how a player reports its position.
#[derive(Serialize, ToSchema)]
pub(crate) struct StreamInfo {
    id: String,
    /// Bearer credential for the heartbeat and stop calls of this stream.
    heartbeat_token: String,
    heartbeat_interval_secs: u64,
    /// The slot frees itself when no heartbeat comes for this long.
    slot_secs: u64,
}

/// What the playback API answers.
#[derive(Serialize, ToSchema)]
pub(crate) struct PlaybackAnswer {
    asset: String,
    /// The catalog title it plays.
    title_id: Option<String>,
    title: String,
    /// Signed edge URL of the HLS multivariant playlist.
    hls: String,
    /// Signed edge URL of the DASH MPD.
    dash: String,
    token: String,
    token_name: String,
    /// Unix seconds when the URLs stop working.
    expires: u64,
    /// Seconds into the title to start from (0: the beginning).
    resume_position: f64,
    /// Whether the plan plays ads.
    ads: bool,
    /// The edge's device profile chosen from `device_type`, if any; it is in
    /// the URLs as `profile=`.
    profile: Option<String>,
    stream: StreamInfo,
}

/// A heartbeat or stop.
#[derive(Deserialize, ToSchema)]
pub(crate) struct Beat {
    /// Seconds into the title.
    position: f64,
    /// The title's length in seconds, if the player knows it.
    #[serde(default)]
    duration: Option<f64>,
}

/// One row of watch history.
#[derive(Serialize, ToSchema)]
pub(crate) struct HistoryItem {
    asset: String,
    position: f64,
    duration: Option<f64>,
    updated_at: i64,
    title: Option<TitleCard>,
}

/// A profile's history, newest first.
#[derive(Serialize, ToSchema)]
pub(crate) struct History {
    items: Vec<HistoryItem>,
}

/// `GET /api/v1/history` parameters.
#[derive(Deserialize, IntoParams)]
pub(crate) struct HistoryQuery {
    /// The profile.
    profile: String,
}

// ---- the heartbeat batcher ------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Position {
    position: f64,
    duration: Option<f64>,
    at: i64,
}

#[derive(Default)]
struct Pending {
    positions: Positions,
    /// stream → last heartbeat.
    streams: HashMap<String, i64>,
}

/// Heartbeats waiting for the next flush.
/// profile → asset → latest position.
type Positions = HashMap<String, HashMap<String, Position>>;

pub(crate) struct Heartbeats {
    pending: Mutex<Pending>,
    /// The positions of the flush in progress: readers see them until the
    /// flush has committed, so there is no moment when a position is
    /// neither pending nor in the database.
    flushing: Mutex<Arc<Positions>>,
    /// Streams whose slot is gone (stopped, replaced, timed out, or taken
    /// over): their heartbeats are answered 410 so the player stops.
    ended: moka::sync::Cache<String, ()>,
    entries: AtomicUsize,
    max_entries: usize,
    wake: tokio::sync::Notify,
    pub(crate) beats: IntCounterVec,
    pub(crate) flush_rows: Histogram,
}

impl Heartbeats {
    pub(crate) fn new(max_entries: usize, registry: &prometheus::Registry) -> anyhow::Result<Self> {
        let beats = IntCounterVec::new(
            Opts::new(
                "origin_heartbeats_total",
                "Stream heartbeats, by outcome (accepted, busy, bad_token, ended, flushed, flush_failed)",
            ),
            &["result"],
        )?;
        let flush_rows = Histogram::with_opts(
            HistogramOpts::new(
                "origin_history_flush_rows",
                "Rows written per watch-history flush",
            )
            .buckets(vec![1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0]),
        )?;
        registry.register(Box::new(beats.clone()))?;
        registry.register(Box::new(flush_rows.clone()))?;
        Ok(Heartbeats {
            pending: Mutex::new(Pending::default()),
            flushing: Mutex::new(Arc::new(HashMap::new())),
            ended: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(Duration::from_secs(7 * 24 * 3600))
                .build(),
            entries: AtomicUsize::new(0),
            max_entries: max_entries.max(1),
            wake: tokio::sync::Notify::new(),
            beats,
            flush_rows,
        })
    }

    /// Folds a heartbeat in; false when the buffer is full (the flusher is
    /// behind: the caller answers 503 and the player retries).
    fn record(&self, stream: &str, profile: &str, asset: &str, p: Position) -> bool {
        let Ok(mut pending) = self.pending.lock() else {
            return false;
        };
        let per_profile = pending.positions.entry(profile.to_string()).or_default();
        let new_position = !per_profile.contains_key(asset);
        if new_position && self.entries.load(Ordering::Relaxed) >= self.max_entries {
            return false;
        }
        per_profile.insert(asset.to_string(), p);
        let new_stream = pending.streams.insert(stream.to_string(), p.at).is_none();
        let added = usize::from(new_position) + usize::from(new_stream);
        let n = self.entries.fetch_add(added, Ordering::Relaxed) + added;
        if n >= self.max_entries / 2 {
            self.wake.notify_one();
        }
        true
    }

    /// Marks streams as ended.
    pub(crate) fn end(&self, streams: impl IntoIterator<Item = String>) {
        for id in streams {
            self.ended.insert(id, ());
        }
    }

    fn has_ended(&self, stream: &str) -> bool {
        self.ended.contains_key(stream)
    }

    /// The unflushed position of a profile in a title.
    fn pending_position(&self, profile: &str, asset: &str) -> Option<Position> {
        let waiting = self
            .pending
            .lock()
            .ok()
            .and_then(|p| p.positions.get(profile)?.get(asset).copied());
        waiting.or_else(|| {
            let flushing = self.flushing.lock().ok()?.clone();
            flushing.get(profile)?.get(asset).copied()
        })
    }

    /// The unflushed positions of a profile (being flushed, then newer).
    fn pending_of(&self, profile: &str) -> HashMap<String, Position> {
        let mut out = self
            .flushing
            .lock()
            .ok()
            .and_then(|f| f.get(profile).cloned())
            .unwrap_or_default();
        if let Some(newer) = self
            .pending
            .lock()
            .ok()
            .and_then(|p| p.positions.get(profile).cloned())
        {
            out.extend(newer);
        }
        out
    }

    /// Drops the unflushed positions of a deleted profile (a flush would
    /// otherwise trip on the missing profile).
    pub(crate) fn forget_profile(&self, profile: &str) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.positions.remove(profile);
        }
    }

    /// Takes what is pending for a flush; it stays readable as `flushing`
    /// until [`Heartbeats::flushed`].
    fn take(&self) -> (Arc<Positions>, HashMap<String, i64>) {
        let Ok(mut pending) = self.pending.lock() else {
            return Default::default();
        };
        self.entries.store(0, Ordering::Relaxed);
        let batch = std::mem::take(&mut *pending);
        let positions = Arc::new(batch.positions);
        if let Ok(mut f) = self.flushing.lock() {
            *f = positions.clone();
        }
        (positions, batch.streams)
    }

    fn flushed(&self) {
        if let Ok(mut f) = self.flushing.lock() {
            *f = Arc::new(HashMap::new());
        }
    }

    /// Writes what is pending: positions as multi-row upserts, stream
    /// liveness as `UPDATE … WHERE id IN (…)`, all in one transaction.
    pub(crate) async fn flush(&self, db: &Db) {
        let (positions, streams) = self.take();
        if positions.is_empty() && streams.is_empty() {
            return;
        }
        let rows: Vec<(String, String, Position)> = positions
            .iter()
            .flat_map(|(profile, m)| m.iter().map(move |(a, p)| (profile.clone(), a.clone(), *p)))
            .collect();
        let streams: Vec<(String, i64)> = streams.into_iter().collect();
        let n = rows.len();
        match write_batch(db, &rows, &streams).await {
            Ok(gone) => {
                self.end(gone);
                self.beats.with_label_values(&["flushed"]).inc_by(n as u64);
                self.flush_rows.observe(n as f64);
            }
            Err(e) => {
                // One bad row (a profile deleted on another origin) must not
                // lose the batch: write the rows one by one. What still
                // fails is refreshed by the next heartbeat.
                tracing::warn!(error = %e, rows = n, "flushing watch history; retrying row by row");
                let mut written = 0u64;
                for row in &rows {
                    if write_batch(db, std::slice::from_ref(row), &[])
                        .await
                        .is_ok()
                    {
                        written += 1;
                    }
                }
                match write_batch(db, &[], &streams).await {
                    Ok(gone) => self.end(gone),
                    Err(e) => tracing::error!(error = %e, "recording stream heartbeats"),
                }
                self.beats.with_label_values(&["flushed"]).inc_by(written);
                self.beats
                    .with_label_values(&["flush_failed"])
                    .inc_by(n as u64 - written);
            }
        }
        self.flushed();
    }
}

/// Writes positions and stream liveness; answers the streams that no longer
/// have a row (their slot was freed: stopped, replaced or taken over).
async fn write_batch(
    db: &Db,
    rows: &[(String, String, Position)],
    streams: &[(String, i64)],
) -> Result<Vec<String>, sqlx::Error> {
    let mut tx = db.pool.begin().await?;
    relax_durability(db, &mut tx).await?;
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
            let live: std::collections::HashSet<String> = q
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

/// Stream slots and resume positions are short-lived: on PostgreSQL their
/// transactions commit without waiting for the WAL flush. A crash of the
/// database loses at most its last fraction of a second of them (a slot
/// frees itself, a heartbeat brings the position back); nothing is ever left
/// half-written. SQLite in WAL mode with `synchronous = NORMAL` already
/// behaves this way.
async fn relax_durability(
    db: &Db,
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
) -> Result<(), sqlx::Error> {
    if db.backend == crate::storage::db::Backend::Postgres {
        sqlx::query("SET LOCAL synchronous_commit TO OFF")
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Flushes every `every` until `stop`, then once more.
pub(crate) async fn run_flusher(
    state: Arc<State>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut last_sweep = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = state.heartbeats.wake.notified() => {}
            _ = stop.changed() => break,
        }
        state.heartbeats.flush(&state.db).await;
        if last_sweep.elapsed()
            >= Duration::from_secs(state.cfg.stream_slot_secs.clamp(1, SWEEP_EVERY_SECS))
        {
            last_sweep = std::time::Instant::now();
            if let Err(e) = sweep_quiet_streams(&state).await {
                tracing::warn!(error = %e, "sweeping quiet streams");
            }
        }
    }
    state.heartbeats.flush(&state.db).await;
}

/// At most how often (seconds) streams that stopped sending heartbeats are
/// ended: every slot time, up to this.
const SWEEP_EVERY_SECS: u64 = 10;

/// Ends the streams that have sent no heartbeat for a slot's time (their
/// players are gone, or do not report) and revokes their sessions, so
/// their media tokens stop working at the edges; forgets revocations whose
/// tokens have all expired.
async fn sweep_quiet_streams(state: &State) -> Result<(), sqlx::Error> {
    let now = crate::storage::clock::now() as i64;
    let quiet: Vec<String> = sqlx::query("DELETE FROM streams WHERE last_seen < $1 RETURNING id")
        .bind(now - state.cfg.stream_slot_secs as i64)
        .fetch_all(&state.db.pool)
        .await?
        .iter()
        .map(|r| r.try_get("id"))
        .collect::<Result<_, _>>()?;
    revoke_streams(state, &quiet).await?;
    state.heartbeats.end(quiet);
    sqlx::query("DELETE FROM revoked_streams WHERE expires_at < $1")
        .bind(now)
        .execute(&state.db.pool)
        .await?;
    Ok(())
}

/// Records that these playback sessions ended: edges refuse their media
/// tokens from their next poll of the list.
pub(crate) async fn revoke_streams(state: &State, ids: &[String]) -> Result<(), sqlx::Error> {
    // A session's tokens live at most the playback TTL from now.
    let until = crate::storage::clock::now() as i64 + state.cfg.playback_ttl_secs as i64 + 60;
    for id in ids {
        sqlx::query("INSERT INTO revoked_streams (stream_id, expires_at) VALUES ($1, $2)")
            .bind(id)
            .bind(until)
            .execute(&state.db.pool)
            .await?;
    }
    Ok(())
}

// ---- handlers --------------------------------------------------------------------

/// Start watching: checks the login, the title's availability window, the
/// viewer's country, the plan (premium titles need premium) and the plan's
/// concurrent-stream limit; answers signed edge URLs, the resume position,
/// and a stream to report heartbeats on.
#[utoipa::path(post, path = "/api/v1/playback/{asset}", tag = "playback",
    security(("bearer" = [])), params(("asset" = String, Path, description = "asset id")),
    request_body = PlaybackRequest,
    responses((status = 200, body = PlaybackAnswer),
              (status = 401, description = "unauthorized or token_expired", body = ErrorBody),
              (status = 403, description = "not_available (outside its window) or premium_required", body = ErrorBody),
              (status = 404, body = ErrorBody),
              (status = 409, description = "not_ready", body = ErrorBody),
              (status = 429, description = "too_many_streams: the plan's limit is reached; lists the active streams", body = ErrorBody),
              (status = 451, description = "geo_blocked", body = ErrorBody)))]
pub(crate) async fn playback(
    AxState(state): AxState<Arc<State>>,
    Path(asset_id): Path<String>,
    crate::ClientIp(ip): crate::ClientIp,
    viewer: Viewer,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    // The body is optional: an empty one means the first profile and a new device.
    let req: PlaybackRequest = if body.iter().all(u8::is_ascii_whitespace) {
        PlaybackRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Error::bad_request("bad_json", format!("the body is not valid: {e}")))?
    };
    let refused = |why: &str| state.playback_results.with_label_values(&[why]).inc();
    let device_profile = match req.device_type.as_deref() {
        None => None,
        Some(kind) => Some(
            state
                .cfg
                .device_profiles
                .get(kind)
                .cloned()
                .ok_or_else(|| {
                    let known: Vec<&str> = state
                        .cfg
                        .device_profiles
                        .keys()
                        .map(String::as_str)
                        .collect();
                    Error::bad_request(
                        "bad_device_type",
                        format!("device_type must be one of: {}", known.join(", ")),
                    )
                })?,
        ),
    };
    if !cascade_packager::is_safe_id(&asset_id) {
        return Err(Error::not_found("asset"));
    }
    let asset = match db::get_asset(&state.db, &asset_id).await? {
        Some(a) if a.status == "ready" => a,
        Some(_) => {
            return Err(Error::new(
                Kind::Conflict,
                "not_ready",
                "the title is not playable yet",
            ))
        }
        None => return Err(Error::not_found("asset")),
    };
    // Only what the catalog lists plays: an asset whose title was deleted
    // or detached is not a back door around premium and windows.
    let Some(title) = catalog::playable(&state.db, &asset_id).await? else {
        return Err(Error::not_found("title"));
    };
    let title = Some(title);
    let profiles = accounts::profiles_of(&state.db, &viewer.user).await?;
    let profile = match &req.profile_id {
        Some(p) if profiles.iter().any(|x| &x.id == p) => p.clone(),
        Some(_) => return Err(Error::not_found("profile")),
        None => profiles
            .first()
            .map(|p| p.id.clone())
            .ok_or_else(|| Error::not_found("profile"))?,
    };
    let device = match req.device_id.as_deref() {
        Some(d) if valid_device(d) => d.to_string(),
        Some(_) => {
            return Err(Error::bad_request(
                "bad_device",
                "device_id must be 1 to 64 of A-Z a-z 0-9 - _",
            ))
        }
        None => crate::storage::ids::new_id(),
    };
    let now = crate::storage::clock::now();
    // Availability window.
    if let Some(t) = &title {
        if let Some(from) = t.available_from.filter(|f| *f > now as i64) {
            refused("not_available");
            return Err(
                Error::forbidden("not_available", "this title is not available yet")
                    .with(json!({ "available_from": from })),
            );
        }
        if let Some(until) = t.available_until.filter(|u| *u <= now as i64) {
            refused("not_available");
            return Err(
                Error::forbidden("not_available", "this title is no longer available")
                    .with(json!({ "available_until": until })),
            );
        }
    }
    // Geo: the same verdict the edges give.
    let country = state.geo.lookup(ip).country;
    let verdict = cascade_geo::decide(
        country.as_deref(),
        &format!("/vod/{asset_id}/"),
        &state.cfg.geo_rules,
        Some(&asset.geo),
        state.cfg.geo_unknown,
    );
    if let cascade_geo::Verdict::Block { country, rule } = verdict {
        refused("geo_blocked");
        return Err(Error::new(
            Kind::Blocked,
            "geo_blocked",
            "this title is not available in your country",
        )
        .with(json!({ "country": country, "rule": rule })));
    }
    // Entitlement.
    let plan = crate::service::billing::plan_of(&state.db, &viewer.user, now).await?;
    if title.as_ref().is_some_and(|t| t.premium) && !plan.premium {
        refused("premium_required");
        return Err(
            Error::forbidden("premium_required", "this title needs the premium plan")
                .with(json!({ "plan": plan.id, "needs": "premium" })),
        );
    }
    let Some(key) = &state.signer else {
        return Err(Error::new(
            Kind::Unavailable { retry_after: None },
            "no_keys",
            "playback signing is not configured",
        ));
    };
    // The stream slot.
    let stream = crate::storage::ids::new_id();
    let slot_secs = state.cfg.stream_slot_secs;
    let replaced = take_slot(
        &state.db,
        Slot {
            stream: &stream,
            user: &viewer.user,
            profile: &profile,
            asset: &asset_id,
            device: &device,
        },
        plan.max_streams,
        now as i64,
        slot_secs as i64,
    )
    .await
    .inspect_err(|e| {
        if e.code() == "too_many_streams" {
            refused("too_many_streams");
        }
    })?;
    revoke_streams(&state, &replaced).await?;
    state.heartbeats.end(replaced);
    let expires = now + state.cfg.playback_ttl_secs;
    // The token names its stream: when the stream ends (stopped, replaced,
    // quiet), the edges refuse it.
    let token = cascade_token::sign(
        key,
        &cascade_token::Claims {
            start: Some(now.saturating_sub(1)),
            expires,
            acl: vec![format!("/vod/{asset_id}/*")],
            id: Some(stream.clone()),
            ..Default::default()
        },
    );
    let heartbeat_token = state.accounts.sign(&Claims {
        sub: viewer.user.clone(),
        typ: TokenKind::Stream,
        iat: now,
        exp: expires,
        sid: Some(stream.clone()),
        pid: Some(profile.clone()),
        aid: Some(asset_id.clone()),
    });
    let resume = resume_position(&state, &profile, &asset_id, asset.duration).await?;
    refused("started");
    let edge = state.cfg.public_edge_url.trim_end_matches('/');
    // The profile shapes what the edge lists; it is a hint, not an
    // entitlement, so it sits beside the token rather than under it.
    let q = match &device_profile {
        Some(p) => format!("profile={p}&{}={token}", state.cfg.token_name),
        None => format!("{}={token}", state.cfg.token_name),
    };
    let answer = PlaybackAnswer {
        hls: format!("{edge}/vod/{asset_id}/master.m3u8?{q}"),
        dash: format!("{edge}/vod/{asset_id}/manifest.mpd?{q}"),
        asset: asset_id,
        title_id: title.as_ref().map(|t| t.title_id.clone()),
        title: title.map_or(asset.title, |t| t.name),
        token,
        token_name: state.cfg.token_name.clone(),
        expires,
        resume_position: resume,
        ads: plan.ads,
        profile: device_profile,
        stream: StreamInfo {
            id: stream,
            heartbeat_token,
            heartbeat_interval_secs: state.cfg.heartbeat_interval_secs,
            slot_secs,
        },
    };
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(answer)).into_response())
}

fn valid_device(d: &str) -> bool {
    (1..=64).contains(&d.len())
        && d.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

struct Slot<'a> {
    stream: &'a str,
    user: &'a str,
    profile: &'a str,
    asset: &'a str,
    device: &'a str,
}

/// Takes a stream slot under the account's limit; answers the streams it
/// freed (timed out, or this device's earlier one). Starts of one account
/// serialise on its user row, so two racing starts cannot both take the
/// last slot; slots without a heartbeat for `slot_secs` are freed first,
/// and a device starting again gives up its old slot.
async fn take_slot(
    db: &Db,
    s: Slot<'_>,
    limit: i64,
    now: i64,
    slot_secs: i64,
) -> Result<Vec<String>, Error> {
    let mut tx = db.pool.begin().await?;
    relax_durability(db, &mut tx).await?;
    sqlx::query("UPDATE users SET stream_epoch = stream_epoch + 1 WHERE id = $1")
        .bind(s.user)
        .execute(&mut *tx)
        .await?;
    let replaced: Vec<String> = sqlx::query(
        "DELETE FROM streams WHERE user_id = $1 AND (last_seen < $2 OR device = $3) RETURNING id",
    )
    .bind(s.user)
    .bind(now - slot_secs)
    .bind(s.device)
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .filter_map(|r| r.try_get::<String, _>("id").ok())
    .collect();
    let active = sqlx::query(
        "SELECT device, asset_id, started_at FROM streams WHERE user_id = $1 ORDER BY started_at",
    )
    .bind(s.user)
    .fetch_all(&mut *tx)
    .await?;
    if active.len() as i64 >= limit {
        let list: Vec<_> = active
            .iter()
            .map(|r| {
                json!({
                    "device": r.try_get::<String, _>("device").unwrap_or_default(),
                    "asset": r.try_get::<String, _>("asset_id").unwrap_or_default(),
                    "since": r.try_get::<i64, _>("started_at").unwrap_or_default(),
                })
            })
            .collect();
        return Err(Error::new(
            Kind::RateLimited { retry_after: None },
            "too_many_streams",
            format!("your plan allows {limit} stream(s) at once; stop one to start another"),
        )
        .with(json!({ "limit": limit, "active": list })));
    }
    sqlx::query(
        "INSERT INTO streams (id, user_id, profile_id, asset_id, device, started_at, last_seen)
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
    )
    .bind(s.stream)
    .bind(s.user)
    .bind(s.profile)
    .bind(s.asset)
    .bind(s.device)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(replaced)
}

/// Where to start: the last position, unless the title was finished (the
/// last 5 %, or the last 30 s) or barely begun.
async fn resume_position(
    state: &State,
    profile: &str,
    asset: &str,
    duration: Option<f64>,
) -> Result<f64, Error> {
    let p = match state.heartbeats.pending_position(profile, asset) {
        Some(p) => Some((p.position, p.duration)),
        None => sqlx::query(
            "SELECT position, duration FROM watch_history WHERE profile_id = $1 AND asset_id = $2",
        )
        .bind(profile)
        .bind(asset)
        .fetch_optional(&state.db.pool)
        .await?
        .map(|r| -> Result<_, sqlx::Error> { Ok((r.try_get("position")?, r.try_get("duration")?)) })
        .transpose()?,
    };
    let Some((position, reported)) = p else {
        return Ok(0.0);
    };
    let length = duration.or(reported);
    Ok(if unfinished(position, length) {
        position
    } else {
        0.0
    })
}

fn unfinished(position: f64, length: Option<f64>) -> bool {
    position >= 5.0 && length.is_none_or(|d| position < (d * 0.95).min(d - 30.0).max(d * 0.8))
}

/// The claims of a stream's own token.
fn stream_claims(
    state: &State,
    headers: &axum::http::HeaderMap,
    id: &str,
) -> Result<Claims, Error> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(Error::unauthorized)?;
    match state.accounts.verify(token, TokenKind::Stream) {
        Ok(c) if c.sid.as_deref() == Some(id) => Ok(c),
        Err(TokenError::Expired) => Err(Error::new(
            Kind::Unauthorized,
            "token_expired",
            "the stream has expired; start playback again",
        )),
        _ => Err(Error::new(
            Kind::Unauthorized,
            "bad_stream_token",
            "the heartbeat token does not belong to this stream",
        )),
    }
}

fn check_beat(b: &Beat) -> Result<Position, Error> {
    let ok = |v: f64| v.is_finite() && (0.0..=1.0e7).contains(&v);
    if !ok(b.position) || b.duration.is_some_and(|d| !ok(d)) {
        return Err(Error::bad_request(
            "bad_position",
            "position and duration are seconds, 0 to 10^7",
        ));
    }
    Ok(Position {
        position: b.position,
        duration: b.duration,
        at: crate::storage::clock::now() as i64,
    })
}

/// Report the position of a stream; keeps its slot.
#[utoipa::path(post, path = "/api/v1/streams/{id}/heartbeat", tag = "playback",
    security(("stream" = [])), params(("id" = String, Path, description = "stream id")),
    request_body = Beat,
    responses((status = 204), (status = 400, body = ErrorBody),
              (status = 401, description = "bad_stream_token or token_expired", body = ErrorBody),
              (status = 503, description = "busy: retry", body = ErrorBody)))]
pub(crate) async fn heartbeat(
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    JsonBody(beat): JsonBody<Beat>,
) -> Result<StatusCode, Error> {
    let claims = stream_claims(&state, &headers, &id).inspect_err(|_| {
        state
            .heartbeats
            .beats
            .with_label_values(&["bad_token"])
            .inc();
    })?;
    let p = check_beat(&beat)?;
    let (Some(profile), Some(asset)) = (&claims.pid, &claims.aid) else {
        return Err(Error::unauthorized());
    };
    if state.heartbeats.has_ended(&id) {
        state.heartbeats.beats.with_label_values(&["ended"]).inc();
        return Err(stream_ended());
    }
    if !state.heartbeats.record(&id, profile, asset, p) {
        state.heartbeats.beats.with_label_values(&["busy"]).inc();
        return Err(Error::new(
            Kind::Unavailable {
                retry_after: Some(1),
            },
            "busy",
            "too many heartbeats waiting; retry shortly",
        ));
    }
    state
        .heartbeats
        .beats
        .with_label_values(&["accepted"])
        .inc();
    Ok(StatusCode::NO_CONTENT)
}

fn stream_ended() -> Error {
    Error::new(
        Kind::Gone,
        "stream_ended",
        "this stream has ended: it was stopped, or another device took its slot",
    )
}

/// Stop a stream: records the position and frees the slot at once.
#[utoipa::path(post, path = "/api/v1/streams/{id}/stop", tag = "playback",
    security(("stream" = [])), params(("id" = String, Path, description = "stream id")),
    request_body = Beat,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(crate) async fn stop(
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    JsonBody(beat): JsonBody<Beat>,
) -> Result<StatusCode, Error> {
    let claims = stream_claims(&state, &headers, &id)?;
    let p = check_beat(&beat)?;
    if let (Some(profile), Some(asset)) = (&claims.pid, &claims.aid) {
        state.heartbeats.record(&id, profile, asset, p);
    }
    sqlx::query("DELETE FROM streams WHERE id = $1 AND user_id = $2")
        .bind(&id)
        .bind(&claims.sub)
        .execute(&state.db.pool)
        .await?;
    revoke_streams(&state, std::slice::from_ref(&id)).await?;
    state.heartbeats.end([id]);
    Ok(StatusCode::NO_CONTENT)
}

/// Most revocations in one answer of the fleet list.
const REVOCATIONS_PAGE: i64 = 10_000;

/// The query of `GET /api/v1/fleet/revocations`.
#[derive(Debug, Deserialize)]
pub(crate) struct RevocationsQuery {
    /// The last `next` seen; 0 (or absent) for every current revocation.
    #[serde(default)]
    after: i64,
}

/// `GET /api/v1/fleet/revocations?after=N` (fleet credential): the ended
/// playback sessions since `N`, oldest first, with the `next` to ask from.
pub(crate) async fn revocations(
    AxState(state): AxState<Arc<State>>,
    headers: axum::http::HeaderMap,
    Query(q): Query<RevocationsQuery>,
) -> Result<Response, Error> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !cascade_common::bearer_matches(auth, &state.cfg.fleet_token) {
        return Err(Error::new(
            Kind::Unauthorized,
            "unauthorized",
            "the fleet credential is required",
        ));
    }
    let rows = sqlx::query(
        "SELECT seq, stream_id, expires_at FROM revoked_streams WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(q.after.max(0))
    .bind(REVOCATIONS_PAGE)
    .fetch_all(&state.db.pool)
    .await?;
    let mut next = q.after.max(0);
    let mut revoked = Vec::with_capacity(rows.len());
    for r in &rows {
        next = next.max(r.try_get::<i64, _>("seq")?);
        revoked.push(json!({
            "id": r.try_get::<String, _>("stream_id")?,
            "expires": r.try_get::<i64, _>("expires_at")?,
        }));
    }
    let more = rows.len() as i64 == REVOCATIONS_PAGE;
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({ "next": next, "more": more, "revoked": revoked })),
    )
        .into_response())
}

/// A profile's watch history, newest first.
#[utoipa::path(get, path = "/api/v1/history", tag = "playback", params(HistoryQuery),
    security(("bearer" = [])),
    responses((status = 200, body = History), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn history(
    AxState(state): AxState<Arc<State>>,
    viewer: Viewer,
    Query(q): Query<HistoryQuery>,
) -> Result<Response, Error> {
    if !accounts::owns_profile(&state.db, &viewer.user, &q.profile).await? {
        return Err(Error::not_found("profile"));
    }
    let mut rows = positions_of(&state, &q.profile, 100).await?;
    rows.truncate(100);
    let assets: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let cards = catalog::cards_for_assets(&state.db, &assets).await?;
    let items = rows
        .into_iter()
        .map(|(asset, p)| HistoryItem {
            title: cards.get(&asset).cloned(),
            asset,
            position: p.position,
            duration: p.duration,
            updated_at: p.at,
        })
        .collect();
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(History { items }),
    )
        .into_response())
}

/// A profile's positions, stored and pending, newest first.
async fn positions_of(
    state: &State,
    profile: &str,
    limit: i64,
) -> Result<Vec<(String, Position)>, Error> {
    let rows = sqlx::query(
        "SELECT asset_id, position, duration, updated_at FROM watch_history
         WHERE profile_id = $1 ORDER BY updated_at DESC LIMIT $2",
    )
    .bind(profile)
    .bind(limit)
    .fetch_all(&state.db.pool)
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
    out.extend(state.heartbeats.pending_of(profile));
    let mut v: Vec<_> = out.into_iter().collect();
    v.sort_by(|a, b| b.1.at.cmp(&a.1.at).then(a.0.cmp(&b.0)));
    Ok(v)
}

/// The continue-watching rail: titles begun and not finished.
pub(crate) async fn continue_watching(
    state: &State,
    profile: &str,
    limit: i64,
) -> Result<Vec<TitleCard>, Error> {
    let rows = positions_of(state, profile, limit * 2).await?;
    let assets: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let cards = catalog::cards_for_assets(&state.db, &assets).await?;
    Ok(rows
        .into_iter()
        .filter_map(|(asset, p)| {
            let mut card = cards.get(&asset)?.clone();
            let length = card.duration.or(p.duration);
            unfinished(p.position, length).then(|| {
                card.position = Some(p.position);
                card
            })
        })
        .take(limit as usize)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_and_barely_begun_titles_start_over() {
        assert!(!unfinished(2.0, Some(600.0)));
        assert!(unfinished(300.0, Some(600.0)));
        assert!(!unfinished(590.0, Some(600.0)));
        assert!(
            unfinished(20.0, Some(30.0)),
            "short titles resume until 80 %"
        );
        assert!(!unfinished(25.0, Some(30.0)));
        assert!(unfinished(100.0, None));
    }

    #[test]
    fn device_ids() {
        assert!(valid_device("tv-1_A"));
        assert!(!valid_device(""));
        assert!(!valid_device("a b"));
        assert!(!valid_device(&"a".repeat(65)));
    }

    #[test]
    fn the_batcher_keeps_the_latest_position_and_bounds_itself() {
        let reg = prometheus::Registry::new();
        let h = Heartbeats::new(4, &reg).unwrap();
        let at = |position| Position {
            position,
            duration: None,
            at: 1,
        };
        assert!(h.record("s1", "p1", "a1", at(10.0)));
        assert!(h.record("s1", "p1", "a1", at(20.0)));
        assert_eq!(h.pending_position("p1", "a1").unwrap().position, 20.0);
        assert!(h.record("s2", "p1", "a2", at(5.0)));
        // Four entries (two positions, two streams): a new title is refused,
        // an update of a known one is not.
        assert!(!h.record("s3", "p2", "a3", at(1.0)));
        assert!(h.record("s1", "p1", "a1", at(30.0)));
        let (taken, _) = h.take();
        assert_eq!(taken["p1"]["a1"].position, 30.0);
        // While the flush runs, readers still see the position...
        assert_eq!(h.pending_position("p1", "a1").unwrap().position, 30.0);
        assert!(h.record("s1", "p1", "a1", at(31.0)));
        assert_eq!(h.pending_position("p1", "a1").unwrap().position, 31.0);
        assert_eq!(
            h.pending_of("p1")["a1"].position,
            31.0,
            "the newer one wins"
        );
        // ...and after it, the database has it.
        h.flushed();
        assert!(h.pending_position("p1", "a2").is_none());
        assert!(h.record("s3", "p2", "a3", at(1.0)));
    }
}
