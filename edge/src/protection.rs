//! Content protection at the edge (the produce phase of protected
//! titles): a title's keys, fetched from the origin with the fleet
//! credential and kept in RAM only (never in a cache tier, never logged),
//! and viewers' license requests, passed to the origin's license server
//! with the playback session of their token.
//!
//! - `POST /vod/{asset}/license/clearkey`: an EME ClearKey license request
//!   (W3C JSON: `{"kids": ["base64url", …]}`) answered with a JWK set.
//! - `GET /vod/{asset}/license/aes128/{kid}`: the 16 bytes of an HLS
//!   AES-128 key, the URL the TS playlists name.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use cascade_packager::live_protect::LiveKeys;
use cascade_packager::{ContentKey, Drm, Systems};
use cascade_serve::Response;
use http::StatusCode;
use prometheus::IntCounterVec;

/// Protected titles whose keys are kept in RAM.
const DRM_ENTRIES: u64 = 10_000;
/// How long a title's keys are kept before they are asked for again.
const DRM_TTL: Duration = Duration::from_secs(300);
/// How long the last keys seen for a title stand in while the origin
/// cannot be reached: as long as a playlist may be served stale, so
/// viewers keep playing a protected title through an origin outage.
const LAST_KNOWN_TTL: Duration = Duration::from_secs(24 * 3600);

/// What a license request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LicenseKind {
    /// `license/clearkey`: EME ClearKey, W3C JSON.
    ClearKey,
    /// `license/aes128/{kid}`: an HLS AES-128 key.
    Aes128([u8; 16]),
}

impl LicenseKind {
    /// The license request a path after `/vod/{asset}/` names.
    pub(crate) fn parse(rest: &str) -> Option<LicenseKind> {
        let rest = rest.strip_prefix("license/")?;
        if rest == "clearkey" {
            return Some(LicenseKind::ClearKey);
        }
        let kid = rest.strip_prefix("aes128/")?;
        let bytes = hex_16(kid)?;
        Some(LicenseKind::Aes128(bytes))
    }
}

/// Keys of protected titles and the license proxy.
pub(crate) struct Protection {
    client: Option<reqwest::Client>,
    origin: String,
    fleet_token: String,
    drms: moka::future::Cache<String, Arc<Drm>>,
    /// The last keys fetched per title, for when the origin is unreachable
    /// (RAM only, like the fresh ones).
    last_known: moka::future::Cache<String, Arc<Drm>>,
    /// Live channels' keys by (channel, key period): a period's key never
    /// changes, so it is kept a day (RAM only).
    live_keys: moka::future::Cache<(String, u64), ContentKey>,
    /// Live channels' key period and systems.
    live_setup: moka::future::Cache<String, Arc<LiveSetup>>,
    results: IntCounterVec,
}

impl Protection {
    pub(crate) fn new(
        origin: &str,
        fleet_token: &str,
        timeout: Duration,
        results: IntCounterVec,
    ) -> Protection {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .no_proxy()
            .build()
            .inspect_err(|e| tracing::error!(error = %e, "protection client"))
            .ok();
        Protection {
            client,
            origin: origin.trim_end_matches('/').to_string(),
            fleet_token: fleet_token.to_string(),
            drms: moka::future::Cache::builder()
                .max_capacity(DRM_ENTRIES)
                .time_to_live(DRM_TTL)
                .build(),
            last_known: moka::future::Cache::builder()
                .max_capacity(DRM_ENTRIES)
                .time_to_live(LAST_KNOWN_TTL)
                .build(),
            live_keys: moka::future::Cache::builder()
                .max_capacity(DRM_ENTRIES)
                .time_to_live(LAST_KNOWN_TTL)
                .build(),
            live_setup: moka::future::Cache::builder()
                .max_capacity(DRM_ENTRIES)
                .time_to_live(LAST_KNOWN_TTL)
                .build(),
            results,
        }
    }

    /// A protected title's keys and signalling: from RAM, or asked of the
    /// origin once however many requests want them at once.
    pub(crate) async fn drm(&self, asset: &str, request_id: &str) -> Result<Arc<Drm>, Response> {
        let fetch = async {
            let r = self
                .fleet_call(
                    reqwest::Method::GET,
                    &format!("/api/v1/fleet/protection/{asset}"),
                    None,
                    request_id,
                )
                .await?;
            if r.0 != StatusCode::OK {
                tracing::warn!(
                    request_id,
                    asset,
                    status = r.0.as_u16(),
                    "protection keys refused"
                );
                return Err(r.0);
            }
            let drm = parse_drm(&r.1).ok_or(StatusCode::BAD_GATEWAY)?;
            self.last_known.insert(asset.to_string(), drm.clone()).await;
            Ok(drm)
        };
        match self.drms.try_get_with(asset.to_string(), fetch).await {
            Ok(d) => Ok(d),
            Err(status) if *status != StatusCode::NOT_FOUND => {
                if let Some(d) = self.last_known.get(asset).await {
                    self.results.with_label_values(&["keys_last_known"]).inc();
                    return Ok(d);
                }
                self.results.with_label_values(&["keys_unavailable"]).inc();
                Err(Response::error(
                    StatusCode::BAD_GATEWAY,
                    "keys_unavailable",
                    "the title's keys cannot be had now; try again shortly",
                )
                .header("retry-after", "5"))
            }
            // No such protected title at the origin.
            Err(_) => Err(crate::media::not_found()),
        }
    }

    /// A protected channel's key period in seconds and its systems (kept
    /// a day: they change only with the origin's configuration).
    pub(crate) async fn live_setup(
        &self,
        channel: &str,
        request_id: &str,
    ) -> Result<Arc<LiveSetup>, Response> {
        if let Some(s) = self.live_setup.get(channel).await {
            return Ok(s);
        }
        let answer = self.live_call(channel, &[], request_id).await?;
        let setup = Arc::new(answer.setup);
        self.live_setup
            .insert(channel.to_string(), setup.clone())
            .await;
        Ok(setup)
    }

    /// A protected channel's keys of `periods` (made by the origin on first
    /// use): from RAM, the missing ones asked of the origin in one call.
    pub(crate) async fn live_keys(
        &self,
        channel: &str,
        periods: &[u64],
        request_id: &str,
    ) -> Result<LiveKeys, Response> {
        let setup = self.live_setup(channel, request_id).await?;
        let mut keys = std::collections::BTreeMap::new();
        let mut missing = Vec::new();
        for p in periods {
            match self.live_keys.get(&(channel.to_string(), *p)).await {
                Some(k) => {
                    keys.insert(*p, k);
                }
                None => missing.push(*p),
            }
        }
        if !missing.is_empty() {
            let answer = self.live_call(channel, &missing, request_id).await?;
            for (p, k) in answer.keys {
                self.live_keys
                    .insert((channel.to_string(), p), k.clone())
                    .await;
                keys.insert(p, k);
            }
            if missing.iter().any(|p| !keys.contains_key(p)) {
                return Err(keys_unavailable());
            }
        }
        Ok(LiveKeys {
            period_secs: setup.period_secs,
            keys,
            drm: Drm {
                keys: Default::default(),
                clear_segments: 0,
                systems: setup.systems.clone(),
            },
        })
    }

    async fn live_call(
        &self,
        channel: &str,
        periods: &[u64],
        request_id: &str,
    ) -> Result<LiveAnswer, Response> {
        let list: Vec<String> = periods.iter().map(u64::to_string).collect();
        let path = format!(
            "/api/v1/fleet/protection/live/{channel}?periods={}",
            list.join(",")
        );
        let r = match self
            .fleet_call(reqwest::Method::GET, &path, None, request_id)
            .await
        {
            Ok(r) if r.0 == StatusCode::OK => r,
            Ok(r) if r.0 == StatusCode::NOT_FOUND => return Err(crate::media::not_found()),
            other => {
                tracing::warn!(
                    request_id,
                    channel,
                    status = other.as_ref().map_or(502, |r| r.0.as_u16()),
                    "live keys refused"
                );
                self.results.with_label_values(&["keys_unavailable"]).inc();
                return Err(keys_unavailable());
            }
        };
        parse_live(&r.1).ok_or_else(|| {
            self.results.with_label_values(&["keys_unavailable"]).inc();
            keys_unavailable()
        })
    }

    /// Forgets every title's fresh keys (after a purge: keys may have
    /// changed); the last known stay for when the origin is unreachable.
    pub(crate) fn forget(&self) {
        self.drms.invalidate_all();
    }

    /// Answers a viewer's license request for `asset` under the playback
    /// session of its token.
    pub(crate) async fn license(
        &self,
        asset: &str,
        kind: &LicenseKind,
        body: &[u8],
        session: Option<&str>,
        ip: Option<IpAddr>,
        request_id: &str,
    ) -> Response {
        let r = self
            .license_inner(asset, kind, body, session, ip, request_id)
            .await;
        let label = if r.status == StatusCode::OK {
            "granted".to_string()
        } else {
            error_code(&r.body).unwrap_or_else(|| r.status.as_u16().to_string())
        };
        self.results.with_label_values(&[&label]).inc();
        let mut r = r;
        // A license is the viewer's own and short-lived.
        r.headers.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        r
    }

    async fn license_inner(
        &self,
        asset: &str,
        kind: &LicenseKind,
        body: &[u8],
        session: Option<&str>,
        ip: Option<IpAddr>,
        request_id: &str,
    ) -> Response {
        let Some(session) = session else {
            return Response::error(
                StatusCode::FORBIDDEN,
                "no_session",
                "a license needs the token of a playback session (from the playback API)",
            );
        };
        let kids: Vec<[u8; 16]> = match kind {
            LicenseKind::Aes128(kid) => vec![*kid],
            LicenseKind::ClearKey => match cascade_packager::drm::clearkey_kids(body) {
                Ok(k) => k,
                Err(why) => {
                    return Response::error(StatusCode::BAD_REQUEST, "bad_license_request", why)
                }
            },
        };
        let Some(ip) = ip else {
            return Response::error(
                StatusCode::FORBIDDEN,
                "no_address",
                "the viewer's address is unknown",
            );
        };
        let req = serde_json::json!({
            "stream": session,
            "asset": asset,
            "kids": kids.iter().map(|k| cascade_packager::cenc::hex(k)).collect::<Vec<_>>(),
            "ip": ip.to_string(),
        });
        let (status, answer) = match self
            .fleet_call(
                reqwest::Method::POST,
                "/api/v1/fleet/license",
                Some(req),
                request_id,
            )
            .await
        {
            Ok(a) => a,
            Err(_) => {
                return Response::error(
                    StatusCode::BAD_GATEWAY,
                    "license_unavailable",
                    "the license server cannot be reached; try again shortly",
                )
                .header("retry-after", "5")
            }
        };
        if status == StatusCode::UNAUTHORIZED || status.is_server_error() {
            // The edge's own credential or the origin failed: not the
            // viewer's business which.
            tracing::warn!(
                request_id,
                status = status.as_u16(),
                "the license server failed"
            );
            return Response::error(
                StatusCode::BAD_GATEWAY,
                "license_unavailable",
                "the license server cannot answer now; try again shortly",
            )
            .header("retry-after", "5");
        }
        if status != StatusCode::OK {
            // The origin's refusal says why (its code and message); its
            // status is kept so players can tell a refusal from an outage.
            let mut r = Response::new(status, "application/json", answer.clone());
            if status == StatusCode::TOO_MANY_REQUESTS {
                r = r.header("retry-after", "60");
            }
            return r;
        }
        #[derive(serde::Deserialize)]
        struct Granted {
            keys: Vec<GrantedKey>,
        }
        #[derive(serde::Deserialize)]
        struct GrantedKey {
            kid: String,
            key: String,
        }
        let Ok(granted) = serde_json::from_slice::<Granted>(&answer) else {
            return Response::error(
                StatusCode::BAD_GATEWAY,
                "license_unavailable",
                "the license server's answer is unreadable",
            );
        };
        match kind {
            LicenseKind::Aes128(_) => match granted.keys.first().and_then(|k| hex_16(&k.key)) {
                Some(key) => Response::new(
                    StatusCode::OK,
                    "application/octet-stream",
                    Bytes::copy_from_slice(&key),
                ),
                None => Response::error(
                    StatusCode::BAD_GATEWAY,
                    "license_unavailable",
                    "the license server's answer is unreadable",
                ),
            },
            LicenseKind::ClearKey => {
                let mut keys = Vec::with_capacity(granted.keys.len());
                for k in &granted.keys {
                    let (Some(kid), Some(key)) = (hex_16(&k.kid), hex_16(&k.key)) else {
                        return Response::error(
                            StatusCode::BAD_GATEWAY,
                            "license_unavailable",
                            "the license server's answer is unreadable",
                        );
                    };
                    keys.push(serde_json::json!({
                        "kty": "oct",
                        "kid": URL_SAFE_NO_PAD.encode(kid),
                        "k": URL_SAFE_NO_PAD.encode(key),
                    }));
                }
                let body = serde_json::json!({ "keys": keys, "type": "temporary" });
                Response::new(StatusCode::OK, "application/json", body.to_string())
            }
        }
    }

    /// A call to the origin with the fleet credential: its status and body.
    async fn fleet_call(
        &self,
        method: reqwest::Method,
        path: &str,
        json: Option<serde_json::Value>,
        request_id: &str,
    ) -> Result<(StatusCode, Bytes), StatusCode> {
        let client = self.client.as_ref().ok_or(StatusCode::BAD_GATEWAY)?;
        let mut rb = client
            .request(method, format!("{}{path}", self.origin))
            .bearer_auth(&self.fleet_token)
            .header("x-request-id", request_id);
        if let Some(j) = json {
            rb = rb.json(&j);
        }
        let r = rb.send().await.map_err(|e| {
            tracing::warn!(request_id, error = %e, "origin unreachable for keys or a license");
            StatusCode::BAD_GATEWAY
        })?;
        let status = StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let body = r.bytes().await.map_err(|_| StatusCode::BAD_GATEWAY)?;
        Ok((status, body))
    }
}

/// The commercial systems in the origin's answers and their license URLs.
#[derive(serde::Deserialize, Default)]
struct Sys {
    widevine: Option<String>,
    playready: Option<String>,
    fairplay: Option<String>,
}

impl From<Sys> for Systems {
    fn from(s: Sys) -> Systems {
        Systems {
            widevine: s.widevine,
            playready: s.playready,
            fairplay: s.fairplay,
        }
    }
}

/// The keys and systems of the origin's protection answer.
fn parse_drm(body: &[u8]) -> Option<Arc<Drm>> {
    #[derive(serde::Deserialize)]
    struct Answer {
        protected: bool,
        #[serde(default)]
        clear_segments: u64,
        #[serde(default)]
        keys: Vec<TrackKey>,
        #[serde(default)]
        systems: Sys,
    }
    #[derive(serde::Deserialize)]
    struct TrackKey {
        track: String,
        kid: String,
        key: String,
        iv: String,
    }
    let a: Answer = serde_json::from_slice(body).ok()?;
    if !a.protected || a.keys.is_empty() {
        return None;
    }
    let mut keys = std::collections::BTreeMap::new();
    for k in a.keys {
        keys.insert(
            k.track,
            ContentKey {
                kid: hex_16(&k.kid)?,
                key: hex_16(&k.key)?,
                iv: hex_16(&k.iv)?,
            },
        );
    }
    Some(Arc::new(Drm {
        keys,
        clear_segments: a.clear_segments,
        systems: a.systems.into(),
    }))
}

/// A live channel's key period and the systems it is signalled for.
#[derive(Debug)]
pub(crate) struct LiveSetup {
    pub(crate) period_secs: u64,
    pub(crate) systems: Systems,
}

struct LiveAnswer {
    setup: LiveSetup,
    keys: Vec<(u64, ContentKey)>,
}

fn keys_unavailable() -> Response {
    Response::error(
        StatusCode::BAD_GATEWAY,
        "keys_unavailable",
        "the channel's keys cannot be had now; try again shortly",
    )
    .header("retry-after", "2")
}

/// The origin's answer for a live channel's keys.
fn parse_live(body: &[u8]) -> Option<LiveAnswer> {
    #[derive(serde::Deserialize)]
    struct Answer {
        protected: bool,
        #[serde(default)]
        period_secs: u64,
        #[serde(default)]
        keys: Vec<PeriodKey>,
        #[serde(default)]
        systems: Sys,
    }
    #[derive(serde::Deserialize)]
    struct PeriodKey {
        period: u64,
        kid: String,
        key: String,
        iv: String,
    }
    let a: Answer = serde_json::from_slice(body).ok()?;
    if !a.protected || a.period_secs == 0 {
        return None;
    }
    let mut keys = Vec::with_capacity(a.keys.len());
    for k in a.keys {
        keys.push((
            k.period,
            ContentKey {
                kid: hex_16(&k.kid)?,
                key: hex_16(&k.key)?,
                iv: hex_16(&k.iv)?,
            },
        ));
    }
    Some(LiveAnswer {
        setup: LiveSetup {
            period_secs: a.period_secs,
            systems: a.systems.into(),
        },
        keys,
    })
}

/// A short mark of a title's keys for cache keys: new keys (a CPIX
/// import) make new cache entries instead of serving old ciphertext.
pub(crate) fn fingerprint(drm: &Drm) -> String {
    let mut x = [0u8; 4];
    for k in drm.keys.values() {
        for (i, b) in k.kid.iter().enumerate() {
            x[i % 4] ^= b.rotate_left((i / 4) as u32);
        }
    }
    cascade_packager::cenc::hex(&x)
}

fn hex_16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

fn error_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let code = v.get("error")?.as_str()?;
    (code.len() <= 32 && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .then(|| code.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn license_paths() {
        assert_eq!(
            LicenseKind::parse("license/clearkey"),
            Some(LicenseKind::ClearKey)
        );
        assert_eq!(
            LicenseKind::parse("license/aes128/00112233445566778899aabbccddeeff"),
            Some(LicenseKind::Aes128([
                0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
                0xee, 0xff
            ]))
        );
        assert_eq!(LicenseKind::parse("license/aes128/0011"), None);
        assert_eq!(LicenseKind::parse("license/widevine"), None);
        assert_eq!(LicenseKind::parse("v0/1.m4s"), None);
    }
}
