//! CMCD prefetch (CTA-5004): a player that sends Common Media Client Data
//! may name its next request in `nor` (a URL-encoded path relative to the
//! current request). The edge fetches that object into its cache at low
//! priority, so the player's next request is a hit. Bounded per viewer and
//! overall; only within the same title, which the viewer's token covers.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use cascade_serve::Request;
use cascade_token::normalize_path;
use percent_encoding::percent_decode_str;
use prometheus::IntCounterVec;
use tokio::sync::Semaphore;

use crate::media::{media_output, Media};

/// Prefetches in flight across all viewers.
const MAX_PREFETCHES: usize = 32;

/// Starts prefetches named by CMCD `nor`.
#[derive(Clone)]
pub(crate) struct Prefetcher {
    media: Media,
    per_viewer: usize,
    inflight: Arc<Mutex<HashMap<IpAddr, usize>>>,
    overall: Arc<Semaphore>,
    counter: IntCounterVec,
}

/// Whether a request's CMCD names a next object (so a prefetch is asked for).
pub(crate) fn has_next_object(req: &Request) -> bool {
    payload(req).as_deref().and_then(next_object).is_some()
}

/// The `nor` of a CMCD payload (`key=value` pairs joined by commas),
/// decoded. The value is a quoted, URL-encoded string; CMCD v2 players
/// (hls.js 1.6+) send it as an inner list, `nor=("…")`, possibly with
/// parameters after it: the first string is taken.
pub(crate) fn next_object(payload: &str) -> Option<String> {
    let raw = payload.split(',').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k.trim() == "nor").then_some(v.trim())
    })?;
    let raw = raw.strip_prefix('(').unwrap_or(raw);
    let quoted = raw.strip_prefix('"')?;
    let inner = &quoted[..quoted.find('"')?];
    percent_decode_str(inner)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// The CMCD payload of a request: the `CMCD` query parameter (itself
/// URL-encoded), else the `CMCD-Request` header, where CTA-5004 puts `nor`.
fn payload(req: &Request) -> Option<String> {
    let from_query = req.uri.query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("CMCD="))
            .and_then(|v| percent_decode_str(v).decode_utf8().ok())
            .map(|s| s.into_owned())
    });
    from_query.or_else(|| {
        req.headers
            .get("cmcd-request")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    })
}

/// The path `nor` names, resolved against the current path and checked:
/// a packager output of the same title, or nothing.
pub(crate) fn resolve(current: &str, nor: &str) -> Option<String> {
    let base = url::Url::parse("http://edge").ok()?.join(current).ok()?;
    let next = base.join(nor).ok()?;
    let path = normalize_path(next.path())?;
    let title = |p: &str| -> Option<String> {
        let rest = p.strip_prefix("/vod/")?;
        rest.split_once('/').map(|(a, _)| a.to_string())
    };
    (title(&path)? == title(current)? && path != current).then_some(path)
}

/// Releases a viewer's prefetch slot when the prefetch ends.
struct Slot {
    inflight: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.inflight.lock() {
            if let Some(n) = m.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.ip);
                }
            }
        }
    }
}

impl Prefetcher {
    pub(crate) fn new(media: Media, per_viewer: usize, counter: IntCounterVec) -> Prefetcher {
        for r in ["started", "done", "cached", "limited", "invalid"] {
            counter.with_label_values(&[r]);
        }
        Prefetcher {
            media,
            per_viewer,
            inflight: Default::default(),
            overall: Arc::new(Semaphore::new(MAX_PREFETCHES)),
            counter,
        }
    }

    /// Starts a prefetch of the object this (authorised) request names in
    /// CMCD `nor`, if any, within the limits. Never delays the request.
    pub(crate) fn consider(&self, req: &Request, current: &str) {
        let Some(nor) = payload(req).as_deref().and_then(next_object) else {
            return;
        };
        let Some((path, output)) =
            resolve(current, &nor).and_then(|p| media_output(&p).map(|o| (p, o)))
        else {
            self.count("invalid");
            return;
        };
        let Some(ip) = req.client.map(|a| a.ip()) else {
            return;
        };
        let slot = {
            let Ok(mut m) = self.inflight.lock() else {
                return;
            };
            let n = m.entry(ip).or_insert(0);
            if *n >= self.per_viewer {
                drop(m);
                self.count("limited");
                return;
            }
            *n += 1;
            Slot {
                inflight: self.inflight.clone(),
                ip,
            }
        };
        let Ok(permit) = self.overall.clone().try_acquire_owned() else {
            self.count("limited");
            return;
        };
        let this = self.clone();
        let request_id = req.request_id.clone();
        // Pre-warm priority upstream: viewers' fetches go first.
        tokio::spawn(cascade_serve::priority::with(
            cascade_serve::priority::Priority::Prewarm,
            async move {
                // Low priority: let the viewer's own request go first.
                tokio::task::yield_now().await;
                let now = cascade_serve::unix_now();
                let cached = matches!(this.media.tier.cache().get(&path).await, Some((o, _)) if o.is_fresh(now));
                if cached {
                    this.count("cached");
                } else {
                    this.count("started");
                    let r = this
                        .media
                        .get(
                            &path,
                            &output,
                            &cascade_packager::View::default(),
                            &request_id,
                        )
                        .await;
                    tracing::debug!(
                        path,
                        status = r.status.as_u16(),
                        request_id,
                        "CMCD prefetch"
                    );
                    this.count("done");
                }
                drop(permit);
                drop(slot);
            },
        ));
    }

    fn count(&self, result: &str) {
        self.counter.with_label_values(&[result]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nor_and_resolves_within_the_title() {
        assert_eq!(
            next_object(r#"bl=21300,br=3200,nor="..%2Fv2%2F4.m4s",sid="x""#).as_deref(),
            Some("../v2/4.m4s")
        );
        assert_eq!(next_object("bl=1,nor=4.m4s"), None, "unquoted");
        assert_eq!(next_object("bl=1"), None);
        assert_eq!(
            next_object(r#"nor=("5.m4s%3F__token__%3Dx";r="0-99"),sid="s""#).as_deref(),
            Some("5.m4s?__token__=x")
        );
        assert_eq!(
            resolve("/vod/a/v1/3.m4s", "4.m4s").as_deref(),
            Some("/vod/a/v1/4.m4s")
        );
        assert_eq!(
            resolve("/vod/a/v1/3.m4s", "4.m4s?__token__=x").as_deref(),
            Some("/vod/a/v1/4.m4s")
        );
        assert_eq!(
            resolve("/vod/a/v1/3.m4s", "../v2/4.m4s").as_deref(),
            Some("/vod/a/v2/4.m4s")
        );
        assert_eq!(
            resolve("/vod/a/v1/3.m4s", "../../b/v1/4.m4s"),
            None,
            "another title"
        );
        assert_eq!(resolve("/vod/a/v1/3.m4s", "/api/v1/x"), None);
        assert_eq!(resolve("/vod/a/v1/3.m4s", "3.m4s"), None, "itself");
        assert_eq!(
            resolve("/vod/a/v1/3.m4s", "http://evil/vod/a/v1/4.m4s").as_deref(),
            Some("/vod/a/v1/4.m4s")
        );
    }
}
