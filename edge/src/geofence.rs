//! The admit phase's geo-fence: the viewer's country (from the peer, or
//! what a trusted proxy says) against the path rules and the title's own
//! rules, answered with 451 and the country and rule that refused.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use cascade_serve::{Request, Response};
use http::StatusCode;
use prometheus::IntCounterVec;

use crate::media::Media;

/// Titles' country rules kept in RAM.
const TITLE_RULES: u64 = 10_000;
/// How long a title's rules are kept before they are fetched again.
const TITLE_RULE_TTL: Duration = Duration::from_secs(30);
/// How long the last rules seen for a title stand in while they cannot be
/// fetched (every upstream down): as long as a playlist may be served
/// stale, so cached media never outlives its rules.
const LAST_KNOWN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Why a title's rules are not to hand.
enum Unknown {
    /// The title has no metadata: it is not published (its media is not
    /// found either).
    NoTitle,
    /// Every upstream failed.
    Unavailable,
}

/// What the edge needs to know of a title on every request: its country
/// rules, and whether it is served encrypted only.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct TitleMeta {
    pub(crate) geo: cascade_geo::CountryRule,
    #[serde(default)]
    pub(crate) protected: bool,
    /// Made in two watermarked copies: segments are served by the
    /// session's mark.
    #[serde(default)]
    pub(crate) watermarked: bool,
}

/// What a request's handling needs of its title's metadata.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TitleFlags {
    pub(crate) protected: bool,
    pub(crate) watermarked: bool,
}

/// Country lookups and rules.
pub(crate) struct Geofence {
    pub(crate) geo: Arc<cascade_geo::Geo>,
    pub(crate) rules: Vec<cascade_geo::PathRule>,
    pub(crate) unknown: cascade_geo::UnknownPolicy,
    pub(crate) trusted: Vec<ipnet::IpNet>,
    /// Titles' country rules and protection, fetched with their metadata.
    title_meta: moka::future::Cache<String, Arc<TitleMeta>>,
    /// The last seen per title, for when they cannot be fetched.
    last_known: moka::future::Cache<String, Arc<TitleMeta>>,
    pub(crate) lookups: IntCounterVec,
    pub(crate) blocked: IntCounterVec,
}

impl Geofence {
    pub(crate) fn new(
        geo: Arc<cascade_geo::Geo>,
        rules: Vec<cascade_geo::PathRule>,
        unknown: cascade_geo::UnknownPolicy,
        trusted: Vec<ipnet::IpNet>,
        lookups: IntCounterVec,
        blocked: IntCounterVec,
    ) -> Geofence {
        Geofence {
            geo,
            rules,
            unknown,
            trusted,
            title_meta: moka::future::Cache::builder()
                .max_capacity(TITLE_RULES)
                .time_to_live(TITLE_RULE_TTL)
                .build(),
            last_known: moka::future::Cache::builder()
                .max_capacity(TITLE_RULES * 10)
                .time_to_live(LAST_KNOWN_TTL)
                .build(),
            lookups,
            blocked,
        }
    }

    /// The viewer's address: the peer, or what a trusted proxy says.
    pub(crate) fn client_ip(&self, req: &Request) -> Option<IpAddr> {
        let peer = req.client?.ip();
        let get = |name: &str| -> Vec<&str> {
            req.headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect()
        };
        Some(cascade_geo::client_ip(
            peer,
            &get("x-forwarded-for"),
            &get("forwarded"),
            &self.trusted,
        ))
    }

    /// The viewer's country, counted as found or unknown.
    pub(crate) fn country(&self, req: &Request) -> Option<String> {
        let country = self
            .client_ip(req)
            .and_then(|ip| self.geo.lookup(ip).country);
        self.lookups
            .with_label_values(&[if country.is_some() {
                "found"
            } else {
                "unknown"
            }])
            .inc();
        country
    }

    /// 451 when a viewer from `country` may not watch `path` of `asset`
    /// (a title's asset id, or `live:{channel}`), whose metadata with its
    /// country rules is at `meta` upstream; else whether the title is
    /// protected and watermarked.
    pub(crate) async fn check(
        &self,
        country: Option<&str>,
        path: &str,
        (asset, meta): (&str, &str),
        media: &Media,
        request_id: &str,
    ) -> Result<TitleFlags, Response> {
        // Fail closed: a title whose rules cannot be had (and were never
        // seen) is not served, since its media may be in a cache.
        let title = match self.title_rule(asset, meta, media, request_id).await {
            Ok(rule) => Some(rule),
            Err(Unknown::NoTitle) => None,
            Err(Unknown::Unavailable) => match self.last_known.get(asset).await {
                Some(rule) => Some(rule),
                None => {
                    tracing::warn!(request_id, asset, "title rules unavailable; refusing");
                    return Err(Response::error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "geo_unavailable",
                        "this title's country rules cannot be checked now; try again shortly",
                    )
                    .header("retry-after", "5"));
                }
            },
        };
        let flags = TitleFlags {
            protected: title.as_ref().is_some_and(|t| t.protected),
            watermarked: title.as_ref().is_some_and(|t| t.watermarked),
        };
        let verdict = cascade_geo::decide(
            country,
            path,
            &self.rules,
            title.as_ref().map(|t| &t.geo),
            self.unknown,
        );
        match verdict {
            cascade_geo::Verdict::Allow => Ok(flags),
            cascade_geo::Verdict::Block { country, rule } => {
                self.blocked.with_label_values(&[&country, &rule]).inc();
                let body = serde_json::json!({ "error": "geo_blocked", "message": "this title is not available in your country", "country": country, "rule": rule });
                Err(Response::new(
                    StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS,
                    "application/json",
                    format!("{body}\n"),
                ))
            }
        }
    }

    /// Whether a title is protected, from its metadata (fresh, else last
    /// known); false when neither can be had.
    pub(crate) async fn title_protected(
        &self,
        asset: &str,
        media: &Media,
        request_id: &str,
    ) -> bool {
        let meta = format!("/mezz/{asset}/meta.json");
        match self.title_rule(asset, &meta, media, request_id).await {
            Ok(t) => t.protected,
            Err(_) => self
                .last_known
                .get(asset)
                .await
                .is_some_and(|t| t.protected),
        }
    }

    /// Forgets the titles' fresh rules (after a purge: a title may have
    /// changed); the last known stay for when they cannot be fetched.
    pub(crate) fn forget_titles(&self) {
        self.title_meta.invalidate_all();
    }

    /// A title's country rules, from its metadata (through the shields,
    /// kept in RAM briefly, and as last known for a day).
    async fn title_rule(
        &self,
        asset: &str,
        meta: &str,
        media: &Media,
        request_id: &str,
    ) -> Result<Arc<TitleMeta>, Unknown> {
        // Concurrent misses for one title share one fetch (moka coalesces);
        // only rules are kept, never a failure. A fetched rule is also kept
        // as the last known, here and not on every hit (an insert costs).
        let fetch = async {
            let r = media
                .fetch_media(meta, None, request_id)
                .await
                .map_err(|_| Unknown::Unavailable)?;
            if r.status == StatusCode::NOT_FOUND {
                return Err(Unknown::NoTitle);
            }
            if r.status != StatusCode::OK {
                return Err(Unknown::Unavailable);
            }
            let meta: TitleMeta =
                serde_json::from_slice(&r.body).map_err(|_| Unknown::Unavailable)?;
            let rule = Arc::new(meta);
            self.last_known
                .insert(asset.to_string(), rule.clone())
                .await;
            Ok(rule)
        };
        self.title_meta
            .try_get_with(asset.to_string(), fetch)
            .await
            .map_err(|e| match *e {
                Unknown::NoTitle => Unknown::NoTitle,
                Unknown::Unavailable => Unknown::Unavailable,
            })
    }
}

pub(crate) async fn watch_geo(geo: Arc<cascade_geo::Geo>, every: Duration, reloads: IntCounterVec) {
    use std::os::unix::fs::MetadataExt;
    let Some(path) = geo.path().map(|p| p.to_path_buf()) else {
        return;
    };
    let stamp = |p: &std::path::Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
    };
    let mut last = stamp(&path);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let by_signal = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        let now = stamp(&path);
        if now == last && !by_signal {
            continue;
        }
        last = now;
        let g = geo.clone();
        match tokio::task::spawn_blocking(move || g.reload()).await {
            Ok(Ok(())) => {
                reloads.with_label_values(&["ok"]).inc();
                tracing::info!(path = %path.display(), "geo database reloaded");
            }
            Ok(Err(e)) => {
                reloads.with_label_values(&["refused"]).inc();
                tracing::error!(error = %e, "new geo database refused; keeping the one in use");
            }
            Err(e) => tracing::error!(error = %e, "geo reload crashed"),
        }
    }
}
