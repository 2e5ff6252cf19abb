//! The authorize phase: the viewer's EdgeAuth token, from the query, a
//! cookie or a header, checked against the CDN's keys and the partners'
//! keys that control hands out (refreshed in the background).

use std::sync::Arc;
use std::time::Duration;

use cascade_serve::{unix_now, Request, Response};
use cascade_token::{acl_matches, Rejection, Verifier};
use http::StatusCode;
use prometheus::IntCounterVec;

/// Where a viewer's token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenSource {
    /// The token's query parameter: players do not resend it, so it is
    /// written into every child URL of a playlist.
    Query,
    /// A cookie of the token's name.
    Cookie,
    /// A header of the token's name.
    Header,
}

/// A token that verified.
#[derive(Debug, Clone)]
pub(crate) struct Authorized {
    /// Where it came from.
    pub(crate) source: TokenSource,
    /// `name=token` as received in the query, for child URLs; only for
    /// [`TokenSource::Query`].
    pub(crate) child_query: Option<String>,
    /// The playback session the token is bound to, if any.
    pub(crate) session: Option<String>,
    /// Whether the session's plan has ads (the token's signed `data`).
    pub(crate) ads: bool,
    /// The session's forensic watermark mark (`wm=` in the token's signed
    /// `data`, four hex digits): which copy of each segment of a
    /// watermarked title it is served.
    pub(crate) watermark: Option<u16>,
}

/// The `wm=` flag of a token's `data` (`ads,wm=2b7e`).
fn watermark_of(data: &str) -> Option<u16> {
    data.split(',')
        .find_map(|f| f.strip_prefix("wm="))
        .filter(|h| h.len() == 4)
        .and_then(|h| u16::from_str_radix(h, 16).ok())
}

/// Ended playback sessions (token `id`s) and when their tokens expire at
/// the latest; filled by [`poll_revocations`].
pub(crate) type Revoked = moka::sync::Cache<String, ()>;

/// Longest a revocation is kept: past the playback API's token lifetime.
const REVOCATION_TTL: Duration = Duration::from_secs(7 * 3600);
/// Most revocations kept.
const MAX_REVOCATIONS: u64 = 1_000_000;

/// An empty revocation list.
pub(crate) fn revoked_sessions() -> Revoked {
    moka::sync::Cache::builder()
        .max_capacity(MAX_REVOCATIONS)
        .time_to_live(REVOCATION_TTL)
        .build()
}

/// The token check.
pub(crate) struct Auth {
    pub(crate) verifier: Arc<arc_swap::ArcSwap<Verifier>>,
    pub(crate) revoked: Revoked,
    pub(crate) token_name: String,
    pub(crate) open_paths: Vec<String>,
    pub(crate) rejections: IntCounterVec,
    pub(crate) accepted: IntCounterVec,
}

impl Auth {
    /// Whether `path` is served without a token.
    pub(crate) fn is_open(&self, path: &str) -> bool {
        self.open_paths.iter().any(|p| acl_matches(p, path))
    }

    /// Finds and verifies the viewer's token: query parameter, else cookie,
    /// else header.
    pub(crate) fn check(&self, req: &Request, path: &str) -> Result<Authorized, Rejection> {
        let name = self.token_name.as_str();
        let from_query = req.uri.query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
        });
        let from_cookie = || {
            req.headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|c| {
                    c.trim()
                        .strip_prefix(name)
                        .and_then(|r| r.strip_prefix('='))
                })
        };
        let from_header = || req.headers.get(name).and_then(|v| v.to_str().ok());
        let (token, source) = match from_query {
            Some(t) => (Some(t), TokenSource::Query),
            None => match from_cookie() {
                Some(t) => (Some(t), TokenSource::Cookie),
                None => (from_header(), TokenSource::Header),
            },
        };
        let verify = |t: &str| {
            self.verifier
                .load()
                .verify(t, path, req.client.map(|a| a.ip()), unix_now())
        };
        let verdict = match token {
            None | Some("") => Err(Rejection::Missing),
            Some(t) => match verify(t) {
                // Players that rebuild URLs (hls.js and dash.js adding CMCD)
                // percent-encode the token's `~`, `=`, `/` and `*`. Tried
                // as received first: escape-early tokens carry `%xx` of
                // their own.
                Err(first) if t.contains('%') => {
                    match percent_encoding::percent_decode_str(t).decode_utf8() {
                        Ok(decoded) if decoded != t => verify(&decoded).map_err(|_| first),
                        _ => Err(first),
                    }
                }
                v => v,
            },
        };
        // A token of a playback session that has ended is refused, however
        // long it has left to live.
        let verdict = verdict.and_then(|grant| match &grant.session {
            Some(s) if self.revoked.contains_key(s) => Err(Rejection::Revoked),
            _ => Ok(grant),
        });
        match verdict {
            Ok(grant) => {
                self.accepted.with_label_values(&[&grant.kid]).inc();
                Ok(Authorized {
                    source,
                    child_query: from_query.map(|t| format!("{name}={t}")),
                    session: grant.session.clone(),
                    ads: grant
                        .data
                        .as_deref()
                        .is_some_and(|d| d.split(',').any(|f| f == "ads")),
                    watermark: grant.data.as_deref().and_then(watermark_of),
                })
            }
            Err(why) => {
                self.rejections.with_label_values(&[why.code()]).inc();
                Err(why)
            }
        }
    }
}

/// The answer to a refused token: the reason only, never the token, the
/// key or the expected MAC.
pub(crate) fn refusal(why: Rejection) -> Response {
    let body = serde_json::json!({ "error": "token", "reason": why.code() });
    Response::new(
        StatusCode::FORBIDDEN,
        "application/json",
        format!("{body}\n"),
    )
}

#[derive(serde::Deserialize)]
struct FleetPartners {
    partners: Vec<FleetPartner>,
}

#[derive(serde::Deserialize)]
struct FleetPartner {
    name: String,
    scope: Vec<String>,
    keys: Vec<FleetKey>,
}

#[derive(serde::Deserialize)]
struct FleetKey {
    kid: String,
    key: String,
}

/// Polls control for partners' scopes and signing keys and swaps them into
/// the verifier. On failure the last good set stays in use.
pub(crate) async fn refresh_partners(
    verifier: Arc<arc_swap::ArcSwap<Verifier>>,
    control: String,
    fleet_token: String,
    every: Duration,
) {
    let Some(client) = cascade_common::fleet_client("partner refresh") else {
        return;
    };
    let url = format!("{control}/api/v1/fleet/partners");
    loop {
        let fetched = async {
            let r = client.get(&url).bearer_auth(&fleet_token).send().await?;
            r.error_for_status()?.json::<FleetPartners>().await
        }
        .await;
        match fetched {
            Ok(list) => {
                let mut partners = std::collections::HashMap::new();
                for p in list.partners {
                    let keys = p
                        .keys
                        .iter()
                        .filter_map(|k| cascade_token::Key::from_hex(&k.kid, &k.key).ok())
                        .collect();
                    partners.insert(
                        p.name,
                        cascade_token::Partner {
                            keys,
                            scope: p.scope,
                        },
                    );
                }
                let current = verifier.load();
                verifier.store(Arc::new(Verifier {
                    cdn_keys: current.cdn_keys.clone(),
                    partners,
                    skew_secs: current.skew_secs,
                }));
            }
            // Without the URL: none of it is secret, but keep logs uniform.
            Err(e) => {
                tracing::warn!(error = %e.without_url(), "partner key refresh failed; keeping the last set")
            }
        }
        tokio::time::sleep(every).await;
    }
}

#[derive(serde::Deserialize)]
struct Revocations {
    next: i64,
    #[serde(default)]
    more: bool,
    revoked: Vec<Revocation>,
}

#[derive(serde::Deserialize)]
struct Revocation {
    id: String,
}

/// Polls the origin's list of ended playback sessions every `every` and
/// adds them to `revoked`. On failure the list stays as it was (sessions
/// already revoked stay refused) and the next poll asks again from where
/// it left off.
pub(crate) async fn poll_revocations(
    revoked: Revoked,
    origin: String,
    fleet_token: String,
    every: Duration,
) {
    let Some(client) = cascade_common::fleet_client("revocation") else {
        return;
    };
    let url = format!("{origin}/api/v1/fleet/revocations");
    let mut after = 0i64;
    loop {
        let fetched = async {
            let r = client
                .get(&url)
                .query(&[("after", after)])
                .bearer_auth(&fleet_token)
                .send()
                .await?;
            r.error_for_status()?.json::<Revocations>().await
        }
        .await;
        match fetched {
            Ok(page) => {
                for r in page.revoked {
                    revoked.insert(r.id, ());
                }
                after = page.next.max(after);
                if page.more {
                    continue;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e.without_url(), "revocation poll failed; keeping the list")
            }
        }
        tokio::time::sleep(every).await;
    }
}
