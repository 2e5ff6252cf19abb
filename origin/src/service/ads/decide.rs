//! Filling a session's breaks: the title's breaks (or its VMAP schedule)
//! asked of the ad server, or of the built-in one, every break at once
//! within one time budget; wrappers followed to a depth limit; errors
//! reported to the `Error` URLs of the chain with their VAST codes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cascade_ads::{codes, expand, parse_vast, parse_vmap, AdBody, BreakSource, Macros, Vast};

use super::{builtin, creatives, PlannedAd, PlannedBreak, Targeting};
use crate::repo::ads::{self as repo, AssetAds, NewBeacon};
use crate::service::state::State;
use crate::storage::clock;

/// Where one break's ads come from.
enum Source {
    /// The built-in ad decision service.
    Builtin,
    /// An ad tag URL, macros expanded.
    Tag(String),
    /// VAST carried in a VMAP.
    Inline(Vast),
}

/// What asking for ads came to.
#[derive(Default)]
struct Filled {
    ads: Vec<PlannedAd>,
    /// Error URLs with their code in, to send.
    errors: Vec<String>,
}

/// What an inline ad inherits from the wrappers above it.
#[derive(Clone, Default)]
struct Chain {
    impressions: Vec<String>,
    errors: Vec<String>,
    tracking: BTreeMap<String, Vec<String>>,
}

/// Why an ad server's answer could not be had.
enum Failure {
    /// Past the budget, or no connection (VAST 301).
    Timeout,
    /// An HTTP error status or a transport failure (VAST 301 too: "URI
    /// unavailable").
    Unavailable,
    /// Larger than a VAST document may be (VAST 100).
    TooLarge,
}

/// The breaks of a session's plan, filled; breaks no ad filled are left out.
pub(super) async fn breaks(
    state: &Arc<State>,
    stream: &str,
    asset: &AssetAds,
    duration_ms: u64,
    t: &Targeting,
) -> Vec<PlannedBreak> {
    let deadline = Instant::now() + Duration::from_millis(state.cfg.ads_timeout_ms);
    let mut sources: Vec<(u64, Source)> = Vec::new();
    if !asset.vmap_url.is_empty() {
        let url = expand(&asset.vmap_url, &macros(t, 0, 0));
        match fetch(state, &url, deadline).await {
            Ok(doc) => match parse_vmap(&doc) {
                Ok(vmap) => {
                    state.ads.server_answers.with_label_values(&["ok"]).inc();
                    for b in vmap.breaks {
                        let at = b.offset.at(duration_ms);
                        sources.push(match b.source {
                            BreakSource::Tag(tag) => {
                                (at, Source::Tag(expand(&tag, &macros(t, at, 0))))
                            }
                            BreakSource::Inline(v) => (at, Source::Inline(v)),
                        });
                    }
                }
                Err(e) => {
                    state
                        .ads
                        .server_answers
                        .with_label_values(&["garbage"])
                        .inc();
                    tracing::warn!(error = %e, "a VMAP schedule could not be read; no ads");
                }
            },
            Err(f) => {
                count_failure(state, &f);
                tracing::warn!("a VMAP schedule did not come in time; no ads");
            }
        }
    } else {
        let at = cascade_ads::parse_breaks(&asset.breaks).unwrap_or_default();
        for at in at {
            let src = if state.cfg.ads_vast_url.is_empty() {
                Source::Builtin
            } else {
                Source::Tag(expand(&state.cfg.ads_vast_url, &macros(t, at, 0)))
            };
            sources.push((at, src));
        }
    }
    sources.sort_by_key(|(at, _)| *at);
    // Ad servers are asked for every break at once; the built-in service
    // break by break, so its frequency caps count each break before the next.
    let builtin = matches!(sources.first(), Some((_, Source::Builtin)));
    let filled = if builtin {
        let mut out = Vec::with_capacity(sources.len());
        for (at, src) in sources {
            out.push((at, fill(state, at, 0, src, t, deadline).await));
        }
        out
    } else {
        futures::future::join_all(
            sources
                .into_iter()
                .map(|(at, src)| async move { (at, fill(state, at, 0, src, t, deadline).await) }),
        )
        .await
    };
    let mut out = Vec::new();
    let mut errors: Vec<NewBeaconOwned> = Vec::new();
    for (id, (at, f)) in filled.into_iter().enumerate() {
        let id = id as u32;
        state.ads.avails.inc();
        if !f.ads.is_empty() {
            state.ads.avails_filled.inc();
            state.ads.ads_placed.inc_by(f.ads.len() as u64);
        }
        if !f.errors.is_empty() {
            errors.push(NewBeaconOwned {
                brk: i64::from(id),
                urls: f.errors,
            });
        }
        if !f.ads.is_empty() {
            out.push(PlannedBreak {
                id,
                at_ms: at,
                ads: f.ads,
                live: None,
            });
        }
    }
    if !errors.is_empty() {
        let rows: Vec<NewBeacon<'_>> = errors
            .iter()
            .map(|e| NewBeacon {
                stream,
                brk: e.brk,
                ad: -1,
                event: "error",
                creative: "",
                asset: &t.title,
                urls: &e.urls,
            })
            .collect();
        match repo::record_beacons(&state.db, &rows, clock::now_ms() as i64).await {
            Ok(_) => state.ads.beacons_due.notify_one(),
            Err(e) => tracing::error!(error = %e, "recording error beacons"),
        }
    }
    out
}

/// The ads of a live break of `duration_ms` for a session, as its break
/// `id` in the plan: asked of the ad server (or the built-in one) with the
/// break's length, within the time budget; trimmed to what the break holds.
pub(super) async fn live(
    state: &Arc<State>,
    stream: &str,
    id: u32,
    duration_ms: u64,
    t: &Targeting,
) -> Vec<PlannedAd> {
    let deadline = Instant::now() + Duration::from_millis(state.cfg.ads_timeout_ms);
    let src = if state.cfg.ads_vast_url.is_empty() {
        Source::Builtin
    } else {
        Source::Tag(expand(&state.cfg.ads_vast_url, &macros(t, 0, duration_ms)))
    };
    let f = fill(state, 0, duration_ms, src, t, deadline).await;
    state.ads.avails.inc();
    // The pod plays in order until the break is full; an ad that would
    // run past the break's end is not started (half a second of slack for
    // rounding).
    let mut ads = Vec::new();
    let mut used = 0u64;
    for ad in f.ads {
        if used + ad.duration_ms > duration_ms + 500 {
            break;
        }
        used += ad.duration_ms;
        ads.push(ad);
    }
    if !ads.is_empty() {
        state.ads.avails_filled.inc();
        state.ads.ads_placed.inc_by(ads.len() as u64);
    }
    if !f.errors.is_empty() {
        let row = NewBeacon {
            stream,
            brk: i64::from(id),
            ad: -1,
            event: "error",
            creative: "",
            asset: &t.title,
            urls: &f.errors,
        };
        match repo::record_beacons(&state.db, &[row], clock::now_ms() as i64).await {
            Ok(_) => state.ads.beacons_due.notify_one(),
            Err(e) => tracing::error!(error = %e, "recording error beacons"),
        }
    }
    ads
}

struct NewBeaconOwned {
    brk: i64,
    urls: Vec<String>,
}

/// The ads of one break.
async fn fill(
    state: &Arc<State>,
    at_ms: u64,
    max_ms: u64,
    src: Source,
    t: &Targeting,
    deadline: Instant,
) -> Filled {
    let vast = match src {
        Source::Inline(v) => v,
        Source::Builtin => {
            let doc = match builtin::vast(state, t, at_ms, max_ms).await {
                Ok(doc) => doc,
                Err(e) => {
                    tracing::error!(error = %e, "the built-in ad service failed");
                    return Filled::default();
                }
            };
            match parse_vast(doc.as_bytes()) {
                Ok(v) => v,
                Err(_) => return Filled::default(),
            }
        }
        Source::Tag(url) => match fetch(state, &url, deadline).await {
            Ok(doc) => match parse_vast(&doc) {
                Ok(v) => {
                    state.ads.server_answers.with_label_values(&["ok"]).inc();
                    v
                }
                Err(e) => {
                    state
                        .ads
                        .server_answers
                        .with_label_values(&["garbage"])
                        .inc();
                    tracing::info!(error = %e, "an ad server's answer could not be read");
                    return Filled::default();
                }
            },
            Err(f) => {
                count_failure(state, &f);
                return Filled::default();
            }
        },
    };
    resolve(state, vast, 0, Chain::default(), deadline).await
}

/// The ads of a VAST document, its wrappers followed.
fn resolve<'a>(
    state: &'a Arc<State>,
    vast: Vast,
    depth: u32,
    chain: Chain,
    deadline: Instant,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Filled> + Send + 'a>> {
    Box::pin(async move {
        let mut out = Filled::default();
        let mut root_chain = chain.clone();
        root_chain.errors.extend(vast.errors.iter().cloned());
        if vast.ads.is_empty() {
            if depth > 0 {
                out.errors
                    .extend(error_urls(&root_chain.errors, codes::NO_ADS_AFTER_WRAPPER));
            }
            return out;
        }
        // A pod (ads with a sequence) plays in order; else the first ad.
        let mut ads: Vec<_> = vast.ads.iter().filter(|a| a.sequence.is_some()).collect();
        if ads.is_empty() {
            ads = vast.ads.iter().take(1).collect();
        } else {
            ads.sort_by_key(|a| a.sequence);
        }
        ads.truncate(state.cfg.ads_max_per_break);
        for ad in ads {
            match &ad.body {
                AdBody::InLine(il) => {
                    let mut c = root_chain.clone();
                    c.impressions.extend(il.impressions.iter().cloned());
                    c.errors.extend(il.errors.iter().cloned());
                    let Some(linear) = il.linears.first() else {
                        continue;
                    };
                    let Some(media) = cascade_ads::pick_media_file(&linear.media_files, 8000)
                    else {
                        out.errors
                            .extend(error_urls(&c.errors, codes::NO_SUPPORTED_MEDIA));
                        continue;
                    };
                    // Not conditioned yet: this viewer goes without it.
                    let Some(creative) = creatives::ready(state, &media.url).await else {
                        continue;
                    };
                    let mut events = c.tracking.clone();
                    for tr in &linear.tracking {
                        events
                            .entry(event_name(&tr.event))
                            .or_default()
                            .push(tr.url.clone());
                    }
                    events.insert("impression".into(), c.impressions.clone());
                    events.insert("error".into(), c.errors.clone());
                    out.ads.push(PlannedAd {
                        creative,
                        ad_id: ad.id.clone(),
                        duration_ms: linear.duration_ms,
                        events,
                    });
                }
                AdBody::Wrapper(w) => {
                    let mut c = root_chain.clone();
                    c.impressions.extend(w.impressions.iter().cloned());
                    c.errors.extend(w.errors.iter().cloned());
                    for tr in &w.tracking {
                        c.tracking
                            .entry(event_name(&tr.event))
                            .or_default()
                            .push(tr.url.clone());
                    }
                    if depth + 1 > state.cfg.ads_wrapper_depth {
                        state
                            .ads
                            .server_answers
                            .with_label_values(&["wrapper_limit"])
                            .inc();
                        out.errors
                            .extend(error_urls(&c.errors, codes::WRAPPER_LIMIT));
                        continue;
                    }
                    let next = match fetch(state, &w.ad_tag_uri, deadline).await {
                        Ok(doc) => doc,
                        Err(f) => {
                            count_failure(state, &f);
                            let code = match f {
                                Failure::TooLarge => 100,
                                _ => codes::TIMEOUT,
                            };
                            out.errors.extend(error_urls(&c.errors, code));
                            continue;
                        }
                    };
                    match parse_vast(&next) {
                        Ok(v) => {
                            state.ads.server_answers.with_label_values(&["ok"]).inc();
                            let inner = resolve(state, v, depth + 1, c, deadline).await;
                            out.ads.extend(inner.ads);
                            out.errors.extend(inner.errors);
                        }
                        Err(e) => {
                            state
                                .ads
                                .server_answers
                                .with_label_values(&["garbage"])
                                .inc();
                            out.errors.extend(error_urls(&c.errors, e.code()));
                        }
                    }
                }
            }
            if out.ads.len() >= state.cfg.ads_max_per_break {
                break;
            }
        }
        out
    })
}

/// The name a beacon event is stored under.
fn event_name(e: &cascade_ads::TrackingEvent) -> String {
    use cascade_ads::TrackingEvent as E;
    match e {
        E::Start => "start".into(),
        E::FirstQuartile => "firstQuartile".into(),
        E::Midpoint => "midpoint".into(),
        E::ThirdQuartile => "thirdQuartile".into(),
        E::Complete => "complete".into(),
        E::Other(name) => name.clone(),
    }
}

/// `Error` URLs with `[ERRORCODE]` filled in (other macros wait for sending).
fn error_urls(urls: &[String], code: u16) -> Vec<String> {
    let m = Macros::new().set("ERRORCODE", code.to_string());
    urls.iter().map(|u| expand(u, &m)).collect()
}

/// An ad tag's macros for a viewer and a break.
fn macros(t: &Targeting, at_ms: u64, duration_ms: u64) -> Macros {
    Macros::new()
        .set("VIEWER", t.viewer.clone())
        .set("TITLE", t.title.clone())
        .set("GENRE", t.genres.join(","))
        .set("DEVICE", t.device.clone())
        .set("COUNTRY", t.country.clone())
        .set("PLAN", t.plan.clone())
        .set("BREAKPOSITION", format!("{:.3}", at_ms as f64 / 1000.0))
        .set(
            "BREAKDURATION",
            format!("{:.3}", duration_ms as f64 / 1000.0),
        )
        .set("CACHEBUSTING", format!("{:08}", rand_u32() % 100_000_000))
        .set(
            "TIMESTAMP",
            cascade_packager::live::iso_time(clock::now_ms()),
        )
}

/// A random number for cache busters.
pub(super) fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u32::from_le_bytes(b)
}

fn count_failure(state: &State, f: &Failure) {
    let label = match f {
        Failure::Timeout => "timeout",
        Failure::Unavailable => "http_error",
        Failure::TooLarge => "garbage",
    };
    state.ads.server_answers.with_label_values(&[label]).inc();
}

/// An ad server's answer, whole, by `deadline`.
async fn fetch(state: &State, url: &str, deadline: Instant) -> Result<Bytes, Failure> {
    if !super::is_http_url(url) {
        return Err(Failure::Unavailable);
    }
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Failure::Timeout);
    }
    let started = Instant::now();
    let got = tokio::time::timeout(left, async {
        let mut resp = state
            .ads
            .http
            .get(url)
            .send()
            .await
            .map_err(|_| Failure::Unavailable)?;
        if !resp.status().is_success() {
            return Err(Failure::Unavailable);
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|_| Failure::Unavailable)? {
            if body.len() + chunk.len() > cascade_ads::MAX_DOCUMENT {
                return Err(Failure::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(body))
    })
    .await;
    state
        .ads
        .server_seconds
        .observe(started.elapsed().as_secs_f64());
    match got {
        Ok(r) => r,
        Err(_) => Err(Failure::Timeout),
    }
}
