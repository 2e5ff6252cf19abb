//! Playback: starting a stream (login, availability, geo, entitlement and
//! the concurrent-stream limit, then signed edge URLs and the resume
//! position), its heartbeats and stop, and ending the streams that fell
//! silent so that edges refuse their tokens.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::repo::history::Position;
use crate::repo::streams::{self, Slot, Taken};
use crate::repo::{accounts, assets, billing};
use crate::service::auth::{Claims, TokenError, TokenKind};
use crate::service::history;
use crate::service::state::State;
use crate::service::titles;
use crate::storage::{clock, ids, Error, Kind, Result};

/// Most revocations in one answer of the fleet list.
const REVOCATIONS_PAGE: i64 = 10_000;

/// At most how often (seconds) streams that stopped sending heartbeats are
/// ended: every slot time, up to this.
const SWEEP_EVERY_SECS: u64 = 10;

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
    /// The real-time connection to the edge for comments, reactions,
    /// polls and flashes (signed with the same token).
    events: EventsUrls,
    /// For a protected title: where licenses come from. Absent for a
    /// title served in the clear.
    #[serde(skip_serializing_if = "Option::is_none")]
    drm: Option<DrmInfo>,
}

/// Licenses of a protected title. `hls` and `dash` play `cbcs`; TS
/// variants (`format=ts`) use HLS AES-128, whose key URLs are in the
/// playlists and signed like them.
#[derive(Serialize, ToSchema)]
pub(crate) struct DrmInfo {
    /// The EME ClearKey license server (`org.w3.clearkey`): POST the W3C
    /// JSON license request (`{"kids": [...]}`), get a JWK set. Signed like
    /// the media URLs; granted while this stream may play.
    clearkey: String,
    /// The DASH MPD in `cenc` (AES-CTR), for clients without `cbcs`
    /// (titles; a live channel is `cbcs` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    dash_cenc: Option<String>,
    /// Commercial license services, as configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    widevine: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    playready: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fairplay: Option<String>,
}

/// Where a viewer's real-time connection goes, by transport.
#[derive(Serialize, ToSchema)]
pub(crate) struct EventsUrls {
    /// Server-Sent Events; `POST {sse}/react` (with the same query) sends
    /// a reaction.
    sse: String,
    /// WebSocket; reactions go up the same connection.
    websocket: String,
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

/// Starts watching: checks the title's availability window, the viewer's
/// country, the plan (premium titles need premium) and the plan's
/// concurrent-stream limit; answers signed edge URLs, the resume position,
/// and a stream to report heartbeats on.
pub(crate) async fn start(
    state: &State,
    asset_id: String,
    ip: IpAddr,
    user: &str,
    req: PlaybackRequest,
) -> Result<PlaybackAnswer> {
    let device_profile = device_profile(state, req.device_type.as_deref())?;
    if !cascade_packager::is_safe_id(&asset_id) {
        return Err(Error::not_found("asset"));
    }
    let asset = match assets::get_asset(&state.db, &asset_id).await? {
        Some(a) if a.status == "ready" => a,
        Some(_) => {
            return Err(Error::conflict(
                "not_ready",
                "the title is not playable yet",
            ))
        }
        None => return Err(Error::not_found("asset")),
    };
    // Only what the catalog lists plays: an asset whose title was deleted
    // or detached is not a back door around premium and windows.
    let Some(title) = titles::playable(&state.db, &asset_id).await? else {
        return Err(Error::not_found("title"));
    };
    let protected = crate::repo::keys::is_protected(&state.db, &asset_id)
        .await?
        .unwrap_or(false);
    let watermarked = crate::repo::watermarks::is_watermarked(&state.db, &asset_id).await?;
    let subject = Subject {
        path: format!("/vod/{asset_id}"),
        id: asset_id,
        title_id: Some(title.title_id.clone()),
        title: title.name.clone(),
        premium: title.premium,
        available_from: title.available_from,
        available_until: title.available_until,
        geo: asset.geo.clone(),
        duration: asset.duration,
        live: false,
        protected,
        watermarked,
    };
    start_subject(state, subject, device_profile, ip, user, req).await
}

/// What a playback start is for: an on-demand title or a live channel.
pub(crate) struct Subject {
    /// The asset id, or the channel's name.
    id: String,
    /// The edge path its URLs and token cover (`/vod/{id}`, `/live/{name}`).
    path: String,
    title_id: Option<String>,
    title: String,
    premium: bool,
    available_from: Option<i64>,
    available_until: Option<i64>,
    geo: cascade_geo::CountryRule,
    duration: Option<f64>,
    live: bool,
    /// Served encrypted: the answer says where licenses come from.
    protected: bool,
    /// Made in two watermarked copies: the session gets a mark of its own.
    watermarked: bool,
}

/// Starts watching live channel `name`: the same checks as a title (its
/// schedule, countries and premium flag), a stream slot, and URLs signed
/// for `/live/{name}/*`.
pub(crate) async fn start_live(
    state: &State,
    name: &str,
    ip: IpAddr,
    user: &str,
    req: PlaybackRequest,
) -> Result<PlaybackAnswer> {
    let device_profile = device_profile(state, req.device_type.as_deref())?;
    let Some(channel) = crate::repo::channels::by_name(&state.db, name).await? else {
        return Err(Error::not_found("channel"));
    };
    if channel.state == "stopped" {
        return Err(Error::not_found("channel"));
    }
    let subject = Subject {
        path: format!("/live/{}", channel.name),
        id: channel.name.clone(),
        title_id: Some(channel.id.clone()),
        title: channel.title.clone(),
        premium: channel.premium,
        // A channel plays whenever its encoder publishes; its schedule is
        // what viewers are told, not a gate.
        available_from: None,
        available_until: None,
        geo: crate::service::channels::country_rule(state, &channel.name).await?,
        duration: None,
        live: true,
        protected: channel.protected,
        watermarked: false,
    };
    start_subject(state, subject, device_profile, ip, user, req).await
}

/// The device profile a `device_type` names, or a clear refusal.
fn device_profile(state: &State, kind: Option<&str>) -> Result<Option<String>> {
    let Some(kind) = kind else { return Ok(None) };
    if let Some(profile) = state.cfg.device_profiles.get(kind) {
        return Ok(Some(profile.clone()));
    }
    let known: Vec<&str> = state
        .cfg
        .device_profiles
        .keys()
        .map(String::as_str)
        .collect();
    Err(Error::bad_request(
        "bad_device_type",
        format!("device_type must be one of: {}", known.join(", ")),
    ))
}

async fn start_subject(
    state: &State,
    subject: Subject,
    device_profile: Option<String>,
    ip: IpAddr,
    user: &str,
    req: PlaybackRequest,
) -> Result<PlaybackAnswer> {
    let refused = |why: &str| state.playback_results.with_label_values(&[why]).inc();
    let asset_id = subject.id.clone();
    let profiles = accounts::profiles_of(&state.db, user).await?;
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
        None => ids::new_id(),
    };
    let now = clock::now();
    // Availability window.
    if let Some(from) = subject.available_from.filter(|f| *f > now as i64) {
        refused("not_available");
        return Err(
            Error::forbidden("not_available", "this title is not available yet")
                .with(json!({ "available_from": from })),
        );
    }
    if let Some(until) = subject.available_until.filter(|u| *u <= now as i64) {
        refused("not_available");
        return Err(
            Error::forbidden("not_available", "this title is no longer available")
                .with(json!({ "available_until": until })),
        );
    }
    // Geo: the same verdict the edges give.
    let country = state.geo.lookup(ip).country;
    let verdict = cascade_geo::decide(
        country.as_deref(),
        &format!("{}/", subject.path),
        &state.cfg.geo_rules,
        Some(&subject.geo),
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
    let plan = billing::plan_of(&state.db, user, now).await?;
    if subject.premium && !plan.premium {
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
    let stream = ids::new_id();
    let slot_secs = state.cfg.stream_slot_secs;
    let taken = streams::take_slot(
        &state.db,
        Slot {
            stream: &stream,
            user,
            profile: &profile,
            asset: &asset_id,
            device: &device,
            device_type: req.device_type.as_deref().unwrap_or(""),
        },
        plan.max_streams,
        now as i64,
        slot_secs as i64,
    )
    .await?;
    let replaced = match taken {
        Taken::Slot { replaced } => replaced,
        Taken::Full { active } => {
            refused("too_many_streams");
            let limit = plan.max_streams;
            return Err(Error::new(
                Kind::RateLimited { retry_after: None },
                "too_many_streams",
                format!("your plan allows {limit} stream(s) at once; stop one to start another"),
            )
            .with(json!({ "limit": limit, "active": active })));
        }
    };
    revoke_streams(state, &replaced).await?;
    state.heartbeats.end(replaced);
    // A watermarked title's stream spells the session's mark, segment by
    // segment: the edges read it from the signed token.
    let mark = if subject.watermarked {
        let m = crate::repo::watermarks::NewMark {
            stream: &stream,
            user,
            profile: &profile,
            asset: &asset_id,
        };
        Some(crate::repo::watermarks::allocate(&state.db, m, now as i64).await?)
    } else {
        None
    };
    let mut flags = Vec::new();
    if plan.ads {
        flags.push("ads".to_string());
    }
    if let Some(m) = mark {
        flags.push(format!("wm={m:04x}"));
    }
    let expires = now + state.cfg.playback_ttl_secs;
    // The token names its stream: when the stream ends (stopped, replaced,
    // quiet), the edges refuse it.
    let token = cascade_token::sign(
        key,
        &cascade_token::Claims {
            start: Some(now.saturating_sub(1)),
            expires,
            acl: vec![format!("{}/*", subject.path)],
            id: Some(stream.clone()),
            // Signed, so a viewer can neither take the ads out of the
            // session nor choose another's watermark.
            data: (!flags.is_empty()).then(|| flags.join(",")),
            ..Default::default()
        },
    );
    let heartbeat_token = state.accounts.sign(&Claims {
        sub: user.to_string(),
        typ: TokenKind::Stream,
        iat: now,
        exp: expires,
        sid: Some(stream.clone()),
        pid: Some(profile.clone()),
        aid: Some(asset_id.clone()),
    });
    let resume = if subject.live {
        0.0
    } else {
        history::resume_position(state, &profile, &asset_id, subject.duration).await?
    };
    refused("started");
    let first = state.edges.first(country.as_deref()).await;
    let edge = first.as_str();
    // The profile shapes what the edge lists; it is a hint, not an
    // entitlement, so it sits beside the token rather than under it.
    let q = match &device_profile {
        Some(p) => format!("profile={p}&{}={token}", state.cfg.token_name),
        None => format!("{}={token}", state.cfg.token_name),
    };
    let events = state.cfg.public_events_url.trim_end_matches('/');
    let sse = format!("{events}/events{}", subject.path);
    let websocket = match sse.split_once("://") {
        Some(("https", rest)) => format!("wss://{rest}"),
        Some((_, rest)) => format!("ws://{rest}"),
        None => sse.clone(),
    };
    let token_q = format!("{}={token}", state.cfg.token_name);
    let opt = |s: &String| (!s.is_empty()).then(|| s.clone());
    let drm = subject.protected.then(|| DrmInfo {
        clearkey: format!("{edge}{}/license/clearkey?{token_q}", subject.path),
        dash_cenc: (!subject.live).then(|| format!("{edge}{}/cenc/manifest.mpd?{q}", subject.path)),
        widevine: opt(&state.cfg.drm_widevine_license_url),
        playready: opt(&state.cfg.drm_playready_license_url),
        fairplay: opt(&state.cfg.drm_fairplay_license_url),
    });
    Ok(PlaybackAnswer {
        drm,
        events: EventsUrls {
            sse: format!("{sse}?{token_q}"),
            websocket: format!("{websocket}?{token_q}"),
        },
        hls: format!("{edge}{}/master.m3u8?{q}", subject.path),
        dash: format!("{edge}{}/manifest.mpd?{q}", subject.path),
        asset: asset_id,
        title_id: subject.title_id,
        title: subject.title,
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
    })
}

/// Records a stream's position (`token`: its heartbeat token); keeps its slot.
pub(crate) async fn heartbeat(
    state: &State,
    id: &str,
    token: Option<&str>,
    beat: &Beat,
) -> Result<()> {
    let claims = stream_claims(state, token, id).inspect_err(|_| {
        state
            .heartbeats
            .beats
            .with_label_values(&["bad_token"])
            .inc();
    })?;
    let p = check_beat(beat)?;
    let (Some(profile), Some(asset)) = (&claims.pid, &claims.aid) else {
        return Err(Error::unauthorized());
    };
    if state.heartbeats.has_ended(id) {
        state.heartbeats.beats.with_label_values(&["ended"]).inc();
        return Err(stream_ended());
    }
    if !state.heartbeats.record(id, profile, asset, p) {
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
    Ok(())
}

/// Stops a stream (`token`: its heartbeat token): records the position and
/// frees the slot at once.
pub(crate) async fn stop(
    state: &State,
    id: String,
    token: Option<&str>,
    beat: &Beat,
) -> Result<()> {
    let claims = stream_claims(state, token, &id)?;
    let p = check_beat(beat)?;
    if let (Some(profile), Some(asset)) = (&claims.pid, &claims.aid) {
        state.heartbeats.record(&id, profile, asset, p);
    }
    streams::free(&state.db, &id, &claims.sub).await?;
    revoke_streams(state, std::slice::from_ref(&id)).await?;
    state.heartbeats.end([id]);
    Ok(())
}

/// The ended playback sessions since `after`, oldest first, with the `next`
/// to ask from: `{next, more, revoked: [{id, expires}]}`.
pub(crate) async fn revocations(state: &State, after: i64) -> Result<Value> {
    let rows = streams::revocations(&state.db, after.max(0), REVOCATIONS_PAGE).await?;
    let mut next = after.max(0);
    let mut revoked = Vec::with_capacity(rows.len());
    for r in &rows {
        next = next.max(r.seq);
        revoked.push(json!({
            "id": r.stream,
            "expires": r.expires,
        }));
    }
    let more = rows.len() as i64 == REVOCATIONS_PAGE;
    Ok(json!({ "next": next, "more": more, "revoked": revoked }))
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

/// Records that these playback sessions ended: edges refuse their media
/// tokens from their next poll of the list.
pub(crate) async fn revoke_streams(state: &State, ids: &[String]) -> Result<()> {
    // A session's tokens live at most the playback TTL from now.
    let until = clock::now() as i64 + state.cfg.playback_ttl_secs as i64 + 60;
    streams::revoke(&state.db, ids, until).await
}

/// Ends the streams that have sent no heartbeat for a slot's time (their
/// players are gone, or do not report) and revokes their sessions, so
/// their media tokens stop working at the edges; forgets revocations whose
/// tokens have all expired.
async fn sweep_quiet_streams(state: &State) -> Result<()> {
    let now = clock::now() as i64;
    let quiet = streams::free_quiet(&state.db, now - state.cfg.stream_slot_secs as i64).await?;
    revoke_streams(state, &quiet).await?;
    state.heartbeats.end(quiet);
    streams::forget_revocations(&state.db, now).await
}

fn valid_device(d: &str) -> bool {
    (1..=64).contains(&d.len())
        && d.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The claims of a stream's own token.
pub(crate) fn stream_claims(state: &State, token: Option<&str>, id: &str) -> Result<Claims> {
    let token = token.ok_or_else(Error::unauthorized)?;
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

fn check_beat(b: &Beat) -> Result<Position> {
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
        at: clock::now() as i64,
    })
}

fn stream_ended() -> Error {
    Error::new(
        Kind::Gone,
        "stream_ended",
        "this stream has ended: it was stopped, or another device took its slot",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids() {
        assert!(valid_device("tv-1_A"));
        assert!(!valid_device(""));
        assert!(!valid_device("a b"));
        assert!(!valid_device(&"a".repeat(65)));
    }
}
