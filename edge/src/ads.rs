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
        let mut creatives: HashMap<&str, Option<Arc<AssetManifest>>> = HashMap::new();
        for b in &plan.breaks {
            for a in &b.ads {
                creatives.entry(a.creative.as_str()).or_insert(None);
            }
        }
        let fetched = futures::future::join_all(
            creatives
                .keys()
                .map(|c| async move { (*c, media.manifest(c, request_id).await.ok()) }),
        )
        .await;
        let manifests: HashMap<&str, Arc<AssetManifest>> = fetched
            .into_iter()
            .filter_map(|(c, m)| m.map(|m| (c, m)))
            .collect();
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
        let mut r = Response::new(
            StatusCode::OK,
            output.content_type(Some(&m)),
            Bytes::from(body),
        );
        r.headers.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("private, no-store"),
        );
        cascade_serve::set_cache_status(
            &mut r.headers,
            None,
            &format!("{}; fwd=bypass; detail=personalised", crate::CACHE_NAME),
        );
        Some(r)
    }

    /// What a request for an ad segment reports, if it counts: a video
    /// (or TS) segment of an ad the session's plan has at that place.
    pub(crate) async fn fetch_of(
        &self,
        media: &Media,
        session: &str,
        country: Option<&str>,
        ad: &AdPath,
        request_id: &str,
    ) -> Option<Fetched> {
        let (track, n) = match ad.output.as_ref()? {
            Output::Segment(t, n) => (t.as_str(), *n),
            Output::TsSegment(ids, n) => (ids.split('.').next().unwrap_or(""), *n),
            _ => return None,
        };
        let plan = self.plan(session, country).await;
        if plan.tracking != "server" {
            return None;
        }
        let planned = plan
            .breaks
            .iter()
            .find(|b| b.id == ad.brk)
            .and_then(|b| b.ads.get(ad.ad as usize))?;
        if planned.creative != ad.creative {
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
