//! Advertising: each playback session's ad plan (which creatives play in
//! which break), decided once from the title's breaks or VMAP and an ad
//! server (VAST, wrappers followed) or the built-in one; creatives
//! conditioned into mezzanine; beacons fired as edges report viewers
//! fetching ad segments; the report.
//!
//! The viewer never waits on an ad server past `ads_timeout_ms`: a slow,
//! failing or garbled answer leaves the break empty (the title plays on)
//! and is reported to the VAST `Error` URLs in reach with its code.

pub(crate) mod beacons;
pub(crate) mod builtin;
pub(crate) mod creatives;
mod decide;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::repo::ads as repo;
pub(crate) use crate::repo::ads::{Creative, InventoryAd, ReportRow};
use crate::repo::billing;
use crate::service::state::State;
use crate::storage::{clock, Error, Result};

/// A playback session's ads: the same for every edge and every playlist
/// of the session.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct Plan {
    pub(crate) stream: String,
    pub(crate) asset: String,
    /// `server`: edges report segment fetches and the origin sends the
    /// beacons; `client`: the player sends them from the tracking API.
    pub(crate) tracking: String,
    pub(crate) breaks: Vec<PlannedBreak>,
}

/// One break of a plan.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct PlannedBreak {
    /// Its number in the plan (in ad URLs).
    pub(crate) id: u32,
    /// Milliseconds into the title; for a live break, the wall clock
    /// (Unix milliseconds) when it was decided.
    pub(crate) at_ms: u64,
    pub(crate) ads: Vec<PlannedAd>,
    /// A live break's `{event}/{break id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) live: Option<String>,
}

/// One ad of a break.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct PlannedAd {
    /// The conditioned creative's asset id.
    pub(crate) creative: String,
    /// The ad server's id of the ad.
    pub(crate) ad_id: String,
    pub(crate) duration_ms: u64,
    /// Beacon URLs by event: `impression`, `start`, `firstQuartile`,
    /// `midpoint`, `thirdQuartile`, `complete`, `error`.
    #[serde(default)]
    pub(crate) events: BTreeMap<String, Vec<String>>,
}

/// Who is watching what, for targeting and ad tag macros.
#[derive(Debug, Clone, Default)]
pub(crate) struct Targeting {
    /// A hash of the account, never its id.
    pub(crate) viewer: String,
    pub(crate) title: String,
    pub(crate) genres: Vec<String>,
    pub(crate) device: String,
    pub(crate) country: String,
    pub(crate) plan: String,
}

/// A session's plan: the stored one, or decided now (once, however many
/// edges ask at once). A session whose plan has no ads, or that is not a
/// viewer's with an ad plan, gets an empty plan.
pub(crate) async fn session_plan(
    state: &Arc<State>,
    stream: &str,
    country: &str,
) -> Result<Arc<String>> {
    if !cascade_packager::is_safe_id(stream) {
        return Err(Error::not_found("stream"));
    }
    let st = state.clone();
    let (s, c) = (stream.to_string(), country.to_string());
    state
        .ads
        .plans
        .try_get_with(stream.to_string(), async move {
            if let Some(plan) = repo::session_plan(&st.db, &s).await? {
                return Ok(Arc::new(plan));
            }
            let plan = decide_plan(&st, &s, &c).await?;
            let text = serde_json::to_string(&plan).unwrap_or_default();
            let stored =
                repo::store_plan(&st.db, &s, &plan.asset, &text, clock::now_ms() as i64).await?;
            Ok::<_, Error>(Arc::new(stored))
        })
        .await
        .map_err(|e: Arc<Error>| {
            let copy = Error::new(e.kind(), e.code(), e.message());
            match e.details() {
                Some(d) => copy.with(d.clone()),
                None => copy,
            }
        })
}

/// The parsed plan of a session, as stored.
pub(crate) async fn plan_of(state: &Arc<State>, stream: &str) -> Result<Option<Plan>> {
    let text = match state.ads.plans.get(stream).await {
        Some(t) => t,
        None => match repo::session_plan(&state.db, stream).await? {
            Some(t) => {
                let t = Arc::new(t);
                state.ads.plans.insert(stream.to_string(), t.clone()).await;
                t
            }
            None => return Ok(None),
        },
    };
    Ok(serde_json::from_str(&text).ok())
}

/// A session's breaks for its player: where each is and, for a session
/// tracked client-side, the beacons its player sends.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ClientTracking {
    /// `client`: send the `events` beacons; `server`: the origin sends them.
    tracking: String,
    avails: Vec<Avail>,
}

/// One break as the player sees it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Avail {
    /// The `EXT-X-DATERANGE` ID (HLS) and the `EventStream` event's id
    /// (DASH) of the break are `ad-{break}` and `{break}`.
    id: String,
    #[serde(rename = "break")]
    brk: u32,
    /// Milliseconds into the title where it plays.
    at_ms: u64,
    duration_ms: u64,
    ads: Vec<AvailAd>,
}

/// One ad of a break, for the player's tracking.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AvailAd {
    /// Milliseconds from the break's start.
    offset_ms: u64,
    duration_ms: u64,
    ad_id: String,
    creative: String,
    /// Beacon URLs by event (empty when the origin sends them).
    events: BTreeMap<String, Vec<String>>,
}

/// A session's breaks and, tracked client-side, its beacons; `token` is
/// the stream's heartbeat token.
pub(crate) async fn client_tracking(
    state: &Arc<State>,
    stream: &str,
    token: Option<&str>,
) -> Result<ClientTracking> {
    crate::service::playback::stream_claims(state, token, stream)?;
    let text = session_plan(state, stream, "").await?;
    let plan: Plan = serde_json::from_str(&text)
        .map_err(|e| Error::internal("plan", "the ad plan is unreadable", e))?;
    let client = plan.tracking == "client";
    let avails = plan
        .breaks
        .iter()
        .map(|b| {
            let mut offset = 0;
            let ads = b
                .ads
                .iter()
                .map(|a| {
                    let ad = AvailAd {
                        offset_ms: offset,
                        duration_ms: a.duration_ms,
                        ad_id: a.ad_id.clone(),
                        creative: a.creative.clone(),
                        events: if client {
                            a.events.clone()
                        } else {
                            BTreeMap::new()
                        },
                    };
                    offset += a.duration_ms;
                    ad
                })
                .collect();
            Avail {
                id: format!("ad-{}", b.id),
                brk: b.id,
                at_ms: b.at_ms,
                duration_ms: offset,
                ads,
            }
        })
        .collect();
    Ok(ClientTracking {
        tracking: plan.tracking,
        avails,
    })
}

/// A session's ads for one live break, as an edge stitches them.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub(crate) struct LiveBreakAds {
    /// The break's number in the session's plan (in ad URLs and reports).
    pub(crate) id: u32,
    /// `server` or `client`, as for the session's other breaks.
    pub(crate) tracking: String,
    pub(crate) ads: Vec<LiveAdOut>,
    /// The slate's asset, when `ads_live_fill` is `slate` and it is ready:
    /// it fills the break after the ads.
    pub(crate) slate: Option<String>,
}

/// One ad of a live break.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct LiveAdOut {
    pub(crate) creative: String,
    pub(crate) ad_id: String,
    pub(crate) duration_ms: u64,
}

/// The most times a live decision retries appending to a plan that
/// another origin changed meanwhile.
const APPEND_TRIES: usize = 8;

/// A session's ads for live break `brk` of `event` (of `duration_ms`), as
/// JSON ([`LiveBreakAds`]): the stored ones, or decided now, once however many edges ask, and
/// added to the session's plan so beacons and reports work as on demand.
/// A session without ads (a paying plan) gets none.
pub(crate) async fn live_break(
    state: &Arc<State>,
    stream: &str,
    event: &str,
    brk: u32,
    duration_ms: u64,
    country: &str,
) -> Result<Arc<String>> {
    if !cascade_packager::is_safe_id(stream) || !cascade_packager::is_safe_id(event) {
        return Err(Error::not_found("stream"));
    }
    if !(1000..=3_600_000).contains(&duration_ms) {
        return Err(Error::bad_request(
            "bad_duration",
            "duration_ms: 1000 to 3600000",
        ));
    }
    let key = format!("{event}/{brk}");
    let st = state.clone();
    let (s, c, k) = (stream.to_string(), country.to_string(), key.clone());
    state
        .ads
        .live
        .try_get_with(format!("{stream}/{key}"), async move {
            decide_live(&st, &s, &k, duration_ms, &c)
                .await
                .map(|a| Arc::new(serde_json::to_string(&a).unwrap_or_default()))
        })
        .await
        .map_err(|e: Arc<Error>| Error::new(e.kind(), e.code(), e.message()))
}

async fn decide_live(
    state: &Arc<State>,
    stream: &str,
    key: &str,
    duration_ms: u64,
    country: &str,
) -> Result<LiveBreakAds> {
    let mut text = session_plan(state, stream, country).await?;
    let mut plan: Plan = serde_json::from_str(&text)
        .map_err(|e| Error::internal("plan", "the ad plan is unreadable", e))?;
    let slate = if state.cfg.ads_live_fill == "slate" {
        creatives::ready(state, &state.cfg.ads_slate_url).await
    } else {
        None
    };
    let answer = |b: &PlannedBreak, tracking: &str| LiveBreakAds {
        id: b.id,
        tracking: tracking.to_string(),
        ads: b
            .ads
            .iter()
            .map(|a| LiveAdOut {
                creative: a.creative.clone(),
                ad_id: a.ad_id.clone(),
                duration_ms: a.duration_ms,
            })
            .collect(),
        slate: slate.clone(),
    };
    if let Some(b) = plan.breaks.iter().find(|b| b.live.as_deref() == Some(key)) {
        return Ok(answer(b, &plan.tracking));
    }
    let Some(s) = repo::stream_of(&state.db, stream).await? else {
        return Err(Error::not_found("stream"));
    };
    let billing = billing::plan_of(&state.db, &s.user, clock::now()).await?;
    if !billing.ads {
        return Ok(LiveBreakAds {
            tracking: plan.tracking,
            ..LiveBreakAds::default()
        });
    }
    let targeting = Targeting {
        viewer: viewer_hash(&s.user),
        title: s.asset.clone(),
        genres: Vec::new(),
        device: s.device_type.clone(),
        country: country.to_ascii_uppercase(),
        plan: billing.id.clone(),
    };
    let id = plan.breaks.len() as u32;
    let ads = decide::live(state, stream, id, duration_ms, &targeting).await;
    // Appended where the plan still is as read; another origin that
    // appended first wins, and its decision for this break stands.
    for _ in 0..APPEND_TRIES {
        let b = PlannedBreak {
            id: plan.breaks.len() as u32,
            at_ms: clock::now_ms(),
            ads: ads.clone(),
            live: Some(key.to_string()),
        };
        let mut next = plan.clone();
        next.breaks.push(b.clone());
        let next_text = serde_json::to_string(&next).unwrap_or_default();
        if repo::replace_plan(&state.db, stream, &text, &next_text).await? {
            state
                .ads
                .plans
                .insert(stream.to_string(), Arc::new(next_text))
                .await;
            return Ok(answer(&b, &next.tracking));
        }
        let Some(now) = repo::session_plan(&state.db, stream).await? else {
            return Err(Error::not_found("stream"));
        };
        text = Arc::new(now);
        state
            .ads
            .plans
            .insert(stream.to_string(), text.clone())
            .await;
        plan = serde_json::from_str(&text)
            .map_err(|e| Error::internal("plan", "the ad plan is unreadable", e))?;
        if let Some(b) = plan.breaks.iter().find(|b| b.live.as_deref() == Some(key)) {
            return Ok(answer(b, &plan.tracking));
        }
    }
    Err(Error::conflict(
        "busy",
        "the session's ad plan kept changing; try again",
    ))
}

/// Decides a session's plan.
async fn decide_plan(state: &Arc<State>, stream: &str, country: &str) -> Result<Plan> {
    let Some(s) = repo::stream_of(&state.db, stream).await? else {
        return Err(Error::not_found("stream"));
    };
    let empty = Plan {
        stream: stream.to_string(),
        asset: s.asset.clone(),
        // Apps that send their own beacons (a device type of
        // `ads_client_tracking_devices`) track client-side.
        tracking: if state
            .cfg
            .ads_client_tracking_devices
            .contains(&s.device_type)
        {
            "client".into()
        } else {
            "server".into()
        },
        breaks: Vec::new(),
    };
    let plan = billing::plan_of(&state.db, &s.user, clock::now()).await?;
    if !plan.ads {
        return Ok(empty);
    }
    let Some(asset_ads) = repo::asset_ads(&state.db, &s.asset).await? else {
        return Ok(empty);
    };
    if asset_ads.breaks.is_empty() && asset_ads.vmap_url.is_empty() {
        return Ok(empty);
    }
    let duration_ms = crate::repo::assets::get_asset(&state.db, &s.asset)
        .await?
        .and_then(|a| a.duration)
        .map_or(0, |d| (d * 1000.0) as u64);
    let targeting = Targeting {
        viewer: viewer_hash(&s.user),
        title: s.asset.clone(),
        genres: asset_ads
            .genres
            .split(',')
            .filter(|g| !g.is_empty())
            .map(str::to_string)
            .collect(),
        device: s.device_type.clone(),
        country: country.to_ascii_uppercase(),
        plan: plan.id.clone(),
    };
    let breaks = decide::breaks(state, stream, &asset_ads, duration_ms, &targeting).await;
    Ok(Plan { breaks, ..empty })
}

/// A stable, one-way id of an account for ad servers (frequency caps
/// without the account's id).
pub(crate) fn viewer_hash(user: &str) -> String {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("cascade-ad-viewer:{user}").as_bytes(),
    );
    d.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Sets a title's breaks (`[0, 600, 1200]` seconds) or its VMAP.
pub(crate) async fn set_title_breaks(
    state: &State,
    asset: &str,
    breaks: &[f64],
    vmap_url: &str,
) -> Result<serde_json::Value> {
    let text = breaks
        .iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let parsed =
        cascade_ads::parse_breaks(&text).map_err(|e| Error::bad_request("bad_breaks", e))?;
    if !vmap_url.is_empty() && !is_http_url(vmap_url) {
        return Err(Error::bad_request(
            "bad_vmap_url",
            "vmap_url must be an http:// or https:// URL",
        ));
    }
    let stored = parsed
        .iter()
        .map(|ms| format!("{}", *ms as f64 / 1000.0))
        .collect::<Vec<_>>()
        .join(",");
    if !repo::set_asset_ads(&state.db, asset, &stored, vmap_url).await? {
        return Err(Error::not_found("asset"));
    }
    Ok(serde_json::json!({
        "asset": asset,
        "breaks": parsed.iter().map(|ms| *ms as f64 / 1000.0).collect::<Vec<_>>(),
        "vmap_url": vmap_url,
    }))
}

/// Whether `s` is an absolute http(s) URL of sane length.
pub(crate) fn is_http_url(s: &str) -> bool {
    s.len() <= 2048
        && (s.starts_with("http://") || s.starts_with("https://"))
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewer_hashes_are_stable_and_opaque() {
        assert_eq!(viewer_hash("u1"), viewer_hash("u1"));
        assert_ne!(viewer_hash("u1"), viewer_hash("u2"));
        assert!(!viewer_hash("u1").contains("u1"));
        assert_eq!(viewer_hash("u1").len(), 32);
    }
}
