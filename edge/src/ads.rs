//! Ad insertion at the edge (produce phase for a session's playlists):
//! the session's ad plan, asked of the origin once and kept for the
//! session; its playlists and MPD stitched per request from cached title
//! and creative manifests; ad segments served under the title's path from
//! the creative's cache key, shared by every title and viewer; the ad
//! segments a session fetches reported to the origin in batches, which
//! sends the beacons.
//!
//! The session is the playback token's `id`, and the token's signed
//! `data` says whether the plan has ads: no query parameter changes
//! either. When the origin cannot give a plan in time the session plays
//! without ads, the same way in every playlist.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cascade_packager::live::{self, Blocking, LiveAd, LiveFill, LiveManifest, LiveOutput, Slots};
use cascade_packager::{stitch, AssetManifest, Output, StitchAd, StitchBreak, TrackKind, View};
use cascade_serve::Response;
use http::StatusCode;
use prometheus::IntCounterVec;
use serde::{Deserialize, Serialize};

use crate::media::Media;

/// Sessions whose plans are kept.
const PLAN_ENTRIES: u64 = 1_000_000;
/// Ad segment fetches queued for the origin before more are dropped.
const MAX_QUEUED: usize = 100_000;

/// A session's ads, as the edge needs them.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct SessionAds {
    /// `server`: the edge reports ad segment fetches.
    #[serde(default)]
    tracking: String,
    #[serde(default)]
    breaks: Vec<PlanBreak>,
}

#[derive(Debug, Deserialize)]
struct PlanBreak {
    id: u32,
    at_ms: u64,
    ads: Vec<PlanAd>,
}

#[derive(Debug, Deserialize)]
struct PlanAd {
    creative: String,
}

/// A session's ads for one live break, as the origin decided them.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct LiveAds {
    /// The break's number in the session's plan.
    id: u32,
    #[serde(default)]
    tracking: String,
    #[serde(default)]
    ads: Vec<PlanAd>,
    /// What fills the break after the ads; none: the content.
    #[serde(default)]
    slate: Option<String>,
}

/// A live media playlist a session with ads asks for.
pub(crate) struct LiveWanted<'a> {
    pub(crate) channel: &'a str,
    pub(crate) output: &'a LiveOutput,
    pub(crate) blocking: Blocking,
    pub(crate) session: &'a str,
    pub(crate) country: Option<&'a str>,
    pub(crate) request_id: &'a str,
}

/// A break seen first this long after it ended is not filled for the
/// session: it joined after it (a player at the live edge never plays
/// it), and ads nobody will see are not asked for.
const LATE_BREAK_MS: u64 = 30_000;

/// One ad segment a session's player fetched.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Fetched {
    stream: String,
    #[serde(rename = "break")]
    brk: u32,
    ad: u32,
    segment: u32,
    segments: u32,
}

/// An ad segment path under a title: `ad/{break}.{n}/{creative}/{rest}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AdPath {
    pub(crate) brk: u32,
    pub(crate) ad: u32,
    pub(crate) creative: String,
    /// The creative's own path, `/vod/{creative}/{rest}`: its cache key.
    pub(crate) media_path: String,
    pub(crate) output: Option<Output>,
}

impl AdPath {
    /// Reads the part of a `/vod/{asset}/` path after the asset; `None`
    /// when it is not an ad path.
    pub(crate) fn parse(rest: &str) -> Option<AdPath> {
        let rest = rest.strip_prefix("ad/")?;
        let (slot, rest) = rest.split_once('/')?;
        let (creative, tail) = rest.split_once('/')?;
        let (b, n) = slot.split_once('.')?;
        let plain =
            |s: &str| !s.is_empty() && s.len() <= 4 && s.bytes().all(|c| c.is_ascii_digit());
        if !plain(b) || !plain(n) || !cascade_packager::is_safe_id(creative) {
            return None;
        }
        // Media only: an ad's own playlists are never asked for.
        let output = Output::parse(tail).filter(|o| {
            matches!(
                o,
                Output::Init(_) | Output::Segment(..) | Output::TsSegment(..)
            )
        });
        Some(AdPath {
            brk: b.parse().ok()?,
            ad: n.parse().ok()?,
            creative: creative.to_string(),
            media_path: format!("/vod/{creative}/{tail}"),
            output,
        })
    }
}

/// What a personalised request asks for.
pub(crate) struct Wanted<'a> {
    pub(crate) asset: &'a str,
    pub(crate) output: &'a Output,
    pub(crate) view: &'a View,
    /// The viewer's token query, for child URLs (or empty).
    pub(crate) query: &'a str,
    pub(crate) request_id: &'a str,
}

/// The edge's part of ad insertion.
pub(crate) struct Ads {
    client: Option<reqwest::Client>,
    origin: String,
    fleet_token: String,
    plans: moka::future::Cache<String, Arc<SessionAds>>,
    queue: Mutex<Vec<Fetched>>,
    /// Sessions' live breaks (`{session}/{event}/{break}`), and the same
    /// by the break's number in the plan (`{session}/{id}`), for reports.
    live: moka::future::Cache<String, Arc<LiveAds>>,
    live_ids: moka::sync::Cache<String, Arc<LiveAds>>,
    /// Live manifests read for personalised playlists, by upstream path
    /// and blocking query: one fetch however many sessions ask at once.
    /// Blocking answers may be kept a while (any later request for the
    /// same part may get one as new); the live edge only briefly.
    manifests_blocking: moka::future::Cache<String, Arc<LiveManifest>>,
    manifests_edge: moka::future::Cache<String, Arc<LiveManifest>>,
    /// Personalised playlists made, plan fetches, dropped reports.
    events: IntCounterVec,
}

impl Ads {
    pub(crate) fn new(
        origin: &str,
        fleet_token: &str,
        plan_timeout: Duration,
        events: IntCounterVec,
    ) -> Ads {
        let client = reqwest::Client::builder()
            .timeout(plan_timeout)
            .no_proxy()
            .build()
            .inspect_err(|e| tracing::error!(error = %e, "ad plan client"))
            .ok();
        Ads {
            client,
            origin: origin.trim_end_matches('/').to_string(),
            fleet_token: fleet_token.to_string(),
            plans: moka::future::Cache::builder()
                .max_capacity(PLAN_ENTRIES)
                .time_to_idle(Duration::from_secs(6 * 3600))
                .build(),
            queue: Mutex::new(Vec::new()),
            live: moka::future::Cache::builder()
                .max_capacity(PLAN_ENTRIES)
                .time_to_idle(Duration::from_secs(6 * 3600))
                .build(),
            live_ids: moka::sync::Cache::builder()
                .max_capacity(PLAN_ENTRIES)
                .time_to_idle(Duration::from_secs(6 * 3600))
                .build(),
            manifests_blocking: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(10))
                .build(),
            manifests_edge: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_millis(250))
                .build(),
            events,
        }
    }

    /// The session's plan: kept, or asked of the origin once however many
    /// playlists of the session ask at once. A failure is an empty plan,
    /// kept too, so every playlist of the session agrees.
    pub(crate) async fn plan(&self, session: &str, country: Option<&str>) -> Arc<SessionAds> {
        self.plans
            .get_with(session.to_string(), async {
                match self.fetch_plan(session, country).await {
                    Ok(p) => {
                        self.events.with_label_values(&["plan_fetched"]).inc();
                        Arc::new(p)
                    }
                    Err(e) => {
                        self.events.with_label_values(&["plan_failed"]).inc();
                        tracing::warn!(error = %e, "no ad plan for a session; it plays without ads");
                        Arc::new(SessionAds::default())
                    }
                }
            })
            .await
    }

    async fn fetch_plan(&self, session: &str, country: Option<&str>) -> anyhow::Result<SessionAds> {
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no client"))?;
        let url = format!("{}/api/v1/fleet/ads/sessions/{session}", self.origin);
        let r = client
            .get(&url)
            .query(&[("country", country.unwrap_or(""))])
            .bearer_auth(&self.fleet_token)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.without_url()))?;
        let r = r
            .error_for_status()
            .map_err(|e| anyhow::anyhow!("{}", e.without_url()))?;
        r.json()
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.without_url()))
    }

    /// A personalised playlist or MPD: `output` of `asset` as `view`
    /// shows it, with the session's breaks; `None` when the session has
    /// no ads (the shared output serves it).
    pub(crate) async fn stitched(
        &self,
        media: &Media,
        plan: &SessionAds,
        want: Wanted<'_>,
    ) -> Option<Response> {
        let Wanted {
            asset,
            output,
            view,
            query,
            request_id,
        } = want;
        if plan.breaks.is_empty() {
            return None;
        }
        let m = match media.manifest(asset, request_id).await {
            Ok(m) => m,
            Err(r) => return Some(r),
        };
        // Each creative's manifest once; one that cannot be had is left
        // out (the same for every playlist while it stays so).
        let wanted = plan
            .breaks
            .iter()
            .flat_map(|b| b.ads.iter().map(|a| a.creative.as_str()))
            .collect();
        let manifests = creative_manifests(media, wanted, request_id).await;
        let breaks: Vec<StitchBreak<'_>> = plan
            .breaks
            .iter()
            .map(|b| StitchBreak {
                id: b.id,
                at_ms: b.at_ms,
                ads: b
                    .ads
                    .iter()
                    .filter_map(|a| {
                        manifests.get(a.creative.as_str()).map(|m| StitchAd {
                            creative: &a.creative,
                            manifest: m,
                        })
                    })
                    .collect(),
            })
            .collect();
        let body = match stitch(&m, output, view, &breaks, query) {
            Ok(b) => b,
            Err(cascade_packager::Error::NotFound) => return Some(crate::media::not_found()),
            Err(e @ cascade_packager::Error::EmptyView(_)) => {
                return Some(Response::error(
                    StatusCode::NOT_FOUND,
                    "no_rendition",
                    &e.to_string(),
                ))
            }
            Err(e) => {
                tracing::error!(request_id, error = %e, "stitching failed");
                return None;
            }
        };
        self.events.with_label_values(&["personalised"]).inc();
        Some(personal(output.content_type(Some(&m)), Bytes::from(body)))
    }

    /// The session's ads for live break `b` of `m`: kept, or asked of the
    /// origin once. A failure is no ads for the break, kept too.
    async fn live_break(
        &self,
        session: &str,
        m: &LiveManifest,
        b: &live::LiveBreak,
        country: Option<&str>,
    ) -> Arc<LiveAds> {
        let key = format!("{session}/{}/{}", m.event, b.id);
        // Begun before the window: long over for a player at the live edge.
        let started_ms = m.segment(b.start_msn).map_or(0, |s| s.pdt_ms);
        let ads = self
            .live
            .get_with(key, async {
                let late = cascade_serve::unix_now_ms()
                    > started_ms + b.duration_ms + LATE_BREAK_MS;
                if late {
                    return Arc::new(LiveAds::default());
                }
                match self.fetch_live(session, &m.event, b, country).await {
                    Ok(a) => {
                        self.events.with_label_values(&["live_break_fetched"]).inc();
                        Arc::new(a)
                    }
                    Err(e) => {
                        self.events.with_label_values(&["plan_failed"]).inc();
                        tracing::warn!(error = %e, "no ads for a live break; the session plays the break");
                        Arc::new(LiveAds::default())
                    }
                }
            })
            .await;
        if !ads.ads.is_empty() {
            self.live_ids
                .insert(format!("{session}/{}", ads.id), ads.clone());
        }
        ads
    }

    async fn fetch_live(
        &self,
        session: &str,
        event: &str,
        b: &live::LiveBreak,
        country: Option<&str>,
    ) -> anyhow::Result<LiveAds> {
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no client"))?;
        if !cascade_packager::is_safe_id(event) {
            anyhow::bail!("the event's name is not an id");
        }
        let url = format!(
            "{}/api/v1/fleet/ads/sessions/{session}/live/{event}/{}",
            self.origin, b.id
        );
        let r = client
            .get(&url)
            .query(&[
                ("country", country.unwrap_or("")),
                ("duration_ms", &b.duration_ms.to_string()),
            ])
            .bearer_auth(&self.fleet_token)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.without_url()))?
            .error_for_status()
            .map_err(|e| anyhow::anyhow!("{}", e.without_url()))?;
        r.json()
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.without_url()))
    }

    /// A channel's live manifest as a blocking request wants it, shared by
    /// every session asking at once.
    async fn live_manifest(
        &self,
        media: &Media,
        channel: &str,
        b: Blocking,
        request_id: &str,
    ) -> Result<Arc<LiveManifest>, Response> {
        let query = Blocking { skip: false, ..b }.canonical();
        let mut path = format!("/live-mezz/{channel}/manifest.json");
        if !query.is_empty() {
            path = format!("{path}?{query}");
        }
        let cache = if query.is_empty() {
            &self.manifests_edge
        } else {
            &self.manifests_blocking
        };
        cache
            .try_get_with(path.clone(), async {
                let r = media.fetch_media(&path, None, request_id).await?;
                if r.status != StatusCode::OK {
                    return Err(crate::live::passthrough_error(
                        r.status,
                        r.headers.get(http::header::RETRY_AFTER),
                    ));
                }
                LiveManifest::from_json(&r.body).map(Arc::new).map_err(|e| {
                    tracing::error!(request_id, channel, error = %e, "bad live manifest");
                    Response::error(
                        StatusCode::BAD_GATEWAY,
                        "bad_manifest",
                        "the live manifest is unreadable",
                    )
                })
            })
            .await
            .map_err(|r: Arc<Response>| r.as_ref().clone())
    }

    /// A session's live media playlist with its ads in the breaks' slots;
    /// `None` when no break of the session is in the window (the shared
    /// playlist serves it). Child URLs get the token later, as in shared
    /// live playlists.
    pub(crate) async fn live_stitched(
        &self,
        media: &Media,
        want: LiveWanted<'_>,
    ) -> Option<Response> {
        let LiveWanted {
            channel,
            output,
            blocking,
            session,
            country,
            request_id,
        } = want;
        // A break's slot is listed once its segment is complete, and in a
        // break the playlist has no parts, so players block on `_HLS_msn`
        // alone: the manifest that answers it is the one where the next
        // segment has begun.
        let upstream = match blocking {
            Blocking {
                msn: Some(n),
                part: None,
                ..
            } => Blocking {
                msn: Some(n.saturating_add(1)),
                ..blocking
            },
            b => b,
        };
        let m = match self
            .live_manifest(media, channel, upstream, request_id)
            .await
        {
            Ok(m) => m,
            Err(r) => return Some(r),
        };
        if m.breaks.is_empty() {
            return None;
        }
        // A break is decided once it has begun, while it is in the window.
        let (first, last) = match (m.segments.first(), m.segments.last()) {
            (Some(f), Some(l)) => (f.msn, l.msn),
            _ => return None,
        };
        let decided = futures::future::join_all(
            m.breaks
                .iter()
                .filter(|b| b.start_msn <= last && b.end_msn.is_none_or(|e| e > first))
                .map(|b| async { (b.id, self.live_break(session, &m, b, country).await) }),
        )
        .await;
        // Every creative (and slate) once.
        let mut wanted: Vec<&str> = Vec::new();
        for (_, d) in &decided {
            wanted.extend(d.ads.iter().map(|a| a.creative.as_str()));
            wanted.extend(d.slate.as_deref());
        }
        if wanted.is_empty() {
            return None;
        }
        let manifests = creative_manifests(media, wanted, request_id).await;
        let fills: Vec<LiveFill<'_>> = decided
            .iter()
            .map(|(brk, d)| LiveFill {
                break_id: *brk,
                plan_id: d.id,
                ads: d
                    .ads
                    .iter()
                    .filter_map(|a| {
                        manifests.get(a.creative.as_str()).map(|m| LiveAd {
                            creative: &a.creative,
                            manifest: m,
                        })
                    })
                    .collect(),
                slate: d.slate.as_deref().and_then(|c| {
                    manifests.get(c).map(|m| LiveAd {
                        creative: c,
                        manifest: m,
                    })
                }),
            })
            .collect();
        let slots = Slots::new(&m, &fills);
        if slots.is_empty() {
            return None;
        }
        let made = match output {
            LiveOutput::Media(track) => live::stitched_media_playlist(&m, track, blocking, &slots),
            LiveOutput::TsPlaylist(v, a) => live::stitched_ts_playlist(&m, v, a, &slots),
            LiveOutput::Mpd => {
                let window = m
                    .segments
                    .first()
                    .zip(m.segments.last())
                    .map_or(0, |(f, l)| {
                        (l.start + live::segment_duration(l) - f.start) / 90_000
                    });
                live::stitched_mpd(
                    &m,
                    cascade_serve::unix_now_ms(),
                    window,
                    "/live/time",
                    &slots,
                )
            }
            _ => return None,
        };
        let body = match made {
            Ok(text) => Bytes::from(text),
            Err(cascade_packager::Error::NotFound) => return Some(crate::media::not_found()),
            Err(e) => {
                return Some(Response::error(
                    StatusCode::NOT_FOUND,
                    "not_live",
                    &e.to_string(),
                ))
            }
        };
        self.events.with_label_values(&["personalised_live"]).inc();
        Some(personal(output.content_type(Some(&m)), body))
    }

    /// What a request for an ad segment reports, if it counts: a video
    /// (or TS) segment of an ad the session's plan has at that place.
    pub(crate) async fn fetch_of(
        &self,
        media: &Media,
        session: &str,
        country: Option<&str>,
        ad: &AdPath,
        live: bool,
        request_id: &str,
    ) -> Option<Fetched> {
        let (track, n) = match ad.output.as_ref()? {
            Output::Segment(t, n) => (t.as_str(), *n),
            Output::TsSegment(ids, n) => (ids.split('.').next().unwrap_or(""), *n),
            _ => return None,
        };
        let creative = if live {
            let d = self.live_ids.get(&format!("{session}/{}", ad.brk))?;
            if d.tracking != "server" {
                return None;
            }
            d.ads.get(ad.ad as usize)?.creative.clone()
        } else {
            let plan = self.plan(session, country).await;
            if plan.tracking != "server" {
                return None;
            }
            plan.breaks
                .iter()
                .find(|b| b.id == ad.brk)
                .and_then(|b| b.ads.get(ad.ad as usize))?
                .creative
                .clone()
        };
        if creative != ad.creative {
            return None;
        }
        let m = media.manifest(&ad.creative, request_id).await.ok()?;
        let t = m.track(track)?;
        if t.kind != TrackKind::Video && m.videos().next().is_some() {
            return None;
        }
        let segments = u32::try_from(t.fragments.len()).ok()?;
        let segment = u32::try_from(n).ok().filter(|n| *n <= segments)?;
        Some(Fetched {
            stream: session.to_string(),
            brk: ad.brk,
            ad: ad.ad,
            segment,
            segments,
        })
    }

    /// Queues a fetch for the origin.
    pub(crate) fn note(&self, f: Fetched) {
        let Ok(mut q) = self.queue.lock() else {
            return;
        };
        if q.len() >= MAX_QUEUED {
            self.events.with_label_values(&["report_dropped"]).inc();
            return;
        }
        q.push(f);
    }

    /// Sends queued fetches to the origin every `every` until `stop`.
    /// A batch that fails is put back (up to the queue's limit) and sent
    /// with the next; the origin records each beacon once, so a batch
    /// sent twice does no harm.
    pub(crate) async fn run_flusher(
        self: Arc<Self>,
        every: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => {
                    self.flush().await;
                    return;
                }
            }
            self.flush().await;
        }
    }

    async fn flush(&self) {
        let batch = match self.queue.lock() {
            Ok(mut q) if !q.is_empty() => std::mem::take(&mut *q),
            _ => return,
        };
        let Some(client) = &self.client else {
            return;
        };
        let url = format!("{}/api/v1/fleet/ads/progress", self.origin);
        let sent = client
            .post(&url)
            .bearer_auth(&self.fleet_token)
            .json(&serde_json::json!({ "reports": batch }))
            .send()
            .await
            .and_then(|r| r.error_for_status());
        match sent {
            Ok(_) => self.events.with_label_values(&["report_sent"]).inc(),
            Err(e) => {
                tracing::warn!(error = %e.without_url(), "ad segment reports not sent; retrying");
                if let Ok(mut q) = self.queue.lock() {
                    let room = MAX_QUEUED.saturating_sub(q.len());
                    let mut back: Vec<Fetched> = batch.into_iter().take(room).collect();
                    back.append(&mut q);
                    *q = back;
                }
            }
        }
    }
}

/// The manifests of the creatives `wanted` (each fetched once); one that
/// cannot be had is left out (the same for every playlist while it stays
/// so).
async fn creative_manifests<'a>(
    media: &Media,
    mut wanted: Vec<&'a str>,
    request_id: &str,
) -> HashMap<&'a str, Arc<AssetManifest>> {
    wanted.sort_unstable();
    wanted.dedup();
    futures::future::join_all(
        wanted
            .iter()
            .map(|c| async move { (*c, media.manifest(c, request_id).await.ok()) }),
    )
    .await
    .into_iter()
    .filter_map(|(c, m)| m.map(|m| (c, m)))
    .collect()
}

/// A session's own playlist or MPD: never stored by any cache.
fn personal(content_type: &'static str, body: Bytes) -> Response {
    let mut r = Response::new(StatusCode::OK, content_type, body);
    r.headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("private, no-store"),
    );
    cascade_serve::set_cache_status(
        &mut r.headers,
        None,
        &format!("{}; fwd=bypass; detail=personalised", crate::CACHE_NAME),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ad_paths_read_and_name_the_creatives_own_path() {
        let p = AdPath::parse("ad/1.0/abc123/v0/3.m4s").unwrap();
        assert_eq!((p.brk, p.ad, p.creative.as_str()), (1, 0, "abc123"));
        assert_eq!(p.media_path, "/vod/abc123/v0/3.m4s");
        assert_eq!(p.output, Some(Output::Segment("v0".into(), 3)));
        let ts = AdPath::parse("ad/0.2/abc/ts/v1.a0/2.ts").unwrap();
        assert_eq!(ts.output, Some(Output::TsSegment("v1.a0".into(), 2)));
        // Playlists of an ad are not served; nonsense is not an ad path.
        assert_eq!(AdPath::parse("ad/0.0/abc/v0.m3u8").unwrap().output, None);
        assert!(AdPath::parse("ad/x.0/abc/v0/1.m4s").is_none());
        assert!(AdPath::parse("ad/0/abc/v0/1.m4s").is_none());
        assert!(AdPath::parse("v0/1.m4s").is_none());
        assert!(AdPath::parse("ad/0.0/../v0/1.m4s").is_none());
    }
}
