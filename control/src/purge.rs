//! Purge: drop cached objects by URL, prefix or tag on every edge and shield
//! at once. The request is checked and reduced to rules here; each node
//! applies them to its own cache (`POST {node}/fleet/purge`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts};
use serde::Serialize;

use crate::fleet::Target;
use crate::{error, not_admin, BadField, Ctx, JsonObject};

/// How long a node has to apply a purge.
const NODE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most rules in one purge.
pub(crate) const MAX_RULES: usize = 1000;
/// Rules are shorter than this many bytes.
const MAX_RULE_BYTES: usize = 2048;
/// Most nodes contacted at once.
const FAN_OUT: usize = 256;

/// What every node is asked to drop; the body of `POST {node}/fleet/purge`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Rules {
    /// Exact paths (decoded, without query).
    pub(crate) urls: Vec<String>,
    /// Path prefixes (decoded, without query).
    pub(crate) prefixes: Vec<String>,
    /// Surrogate keys, such as `asset-abc123`.
    pub(crate) tags: Vec<String>,
}

/// A checked purge request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PurgeRequest {
    /// The rules.
    pub(crate) rules: Rules,
    /// Only these nodes, by name.
    pub(crate) nodes: Option<Vec<String>>,
    /// Only these roles (`edge`, `shield`).
    pub(crate) roles: Option<Vec<String>>,
}

/// A node that did not confirm the purge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Failure {
    /// Its name.
    pub(crate) node: String,
    /// Why, without credentials.
    pub(crate) reason: String,
}

/// The answer to a purge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct PurgeReport {
    /// Every target acknowledged and none was down.
    pub(crate) complete: bool,
    /// Nodes that applied the rules.
    pub(crate) acknowledged: Vec<String>,
    /// Nodes that refused, failed or did not answer in time.
    pub(crate) failed: Vec<Failure>,
    /// Registered nodes silent too long, not contacted; they may still hold the objects.
    pub(crate) down: Vec<String>,
    /// Milliseconds from the request to the answer.
    pub(crate) elapsed_ms: u64,
}

/// Purge counters on control's registry.
pub(crate) struct PurgeMetrics {
    purges: IntCounterVec,
    duration: Histogram,
}

impl PurgeRequest {
    /// Checks a request body; full URLs are reduced to their paths.
    pub(crate) fn parse(body: &[u8]) -> Result<PurgeRequest, BadField> {
        let obj = JsonObject::parse(body, &["urls", "prefixes", "tags", "nodes", "roles"])?;
        let urls: Vec<String> = obj.field("urls")?.unwrap_or_default();
        let prefixes: Vec<String> = obj.field("prefixes")?.unwrap_or_default();
        let tags: Vec<String> = obj.field("tags")?.unwrap_or_default();
        let nodes: Option<Vec<String>> = obj.field("nodes")?;
        let roles: Option<Vec<String>> = obj.field("roles")?;
        let count = urls.len() + prefixes.len() + tags.len();
        if count == 0 {
            return Err(BadField::new(
                "urls",
                "give at least one rule in urls, prefixes or tags",
            ));
        }
        if count > MAX_RULES {
            return Err(BadField::new(
                "urls",
                format!("{count} rules; at most {MAX_RULES} in one purge"),
            ));
        }
        let rules = Rules {
            urls: paths("urls", &urls)?,
            prefixes: paths("prefixes", &prefixes)?,
            tags: tags
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let ok = !t.is_empty()
                        && t.len() < MAX_RULE_BYTES
                        && t.bytes().all(|b| {
                            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
                        });
                    ok.then(|| t.clone()).ok_or_else(|| {
                        BadField::new(format!("tags[{i}]"), "tags are [A-Za-z0-9._:-]+")
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        if let Some(list) = &nodes {
            if list.is_empty() {
                return Err(BadField::new("nodes", "leave it out to purge every node"));
            }
        }
        if let Some(list) = &roles {
            if list.is_empty() {
                return Err(BadField::new("roles", "leave it out to purge every role"));
            }
            if let Some(r) = list
                .iter()
                .find(|r| !matches!(r.as_str(), "edge" | "shield"))
            {
                return Err(BadField::new(
                    "roles",
                    format!("{r:?} is not edge or shield"),
                ));
            }
        }
        Ok(PurgeRequest {
            rules,
            nodes,
            roles,
        })
    }

    /// The targets the filters keep; a name in `nodes` that is no edge or shield is an error.
    pub(crate) fn select(&self, fleet: &[Target]) -> Result<Vec<Target>, BadField> {
        if let Some(names) = &self.nodes {
            if let Some(n) = names.iter().find(|n| !fleet.iter().any(|t| t.name == **n)) {
                return Err(BadField::new(
                    "nodes",
                    format!("no edge or shield is named {n:?}"),
                ));
            }
        }
        Ok(fleet
            .iter()
            .filter(|t| self.nodes.as_ref().is_none_or(|n| n.contains(&t.name)))
            .filter(|t| self.roles.as_ref().is_none_or(|r| r.contains(&t.role)))
            .cloned()
            .collect())
    }
}

impl PurgeMetrics {
    pub(crate) fn new(registry: &prometheus::Registry) -> PurgeMetrics {
        let purges = IntCounterVec::new(
            Opts::new(
                "control_purges_total",
                "Purges by outcome: complete, partial (some node failed or down) or refused (a bad request)",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "control_purge_duration_seconds",
                "Time from a purge request to its answer",
            )
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]),
        )
        .expect("static metric definition");
        let _ = registry.register(Box::new(purges.clone()));
        let _ = registry.register(Box::new(duration.clone()));
        PurgeMetrics { purges, duration }
    }
}

/// `POST /api/v1/purge` (admin credential).
pub(crate) async fn purge(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let started = Instant::now();
    if let Some(r) = not_admin(&ctx, &headers) {
        return r;
    }
    let refused = |r: Response| {
        ctx.purge_metrics
            .purges
            .with_label_values(&["refused"])
            .inc();
        r
    };
    let req = match PurgeRequest::parse(&body) {
        Ok(r) => r,
        Err(e) => return refused(e.response()),
    };
    if ctx.cfg.fleet_token.is_empty() {
        return refused(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_fleet_token",
            "control has no fleet_token, so nodes would refuse the purge",
        ));
    }
    let targets = match req.select(&crate::fleet_targets(&ctx)) {
        Ok(t) => t,
        Err(e) => return refused(e.response()),
    };
    if targets.is_empty() {
        return refused(error(
            StatusCode::CONFLICT,
            "no_targets",
            "no edge or shield is configured or registered to purge",
        ));
    }
    let mut report = fan_out(
        &ctx.client,
        &ctx.cfg.fleet_token,
        &req.rules,
        &targets,
        NODE_TIMEOUT,
    )
    .await;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    let result = if report.complete {
        "complete"
    } else {
        "partial"
    };
    ctx.purge_metrics.purges.with_label_values(&[result]).inc();
    ctx.purge_metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    let rules = &req.rules;
    tracing::info!(
        urls = rules.urls.len(),
        prefixes = rules.prefixes.len(),
        tags = rules.tags.len(),
        nodes = targets.len(),
        acknowledged = report.acknowledged.len(),
        failed = report.failed.len(),
        down = report.down.len(),
        elapsed_ms = report.elapsed_ms,
        result,
        "purge"
    );
    for f in &report.failed {
        tracing::warn!(node = %f.node, reason = %f.reason, "purge not confirmed");
    }
    let status = if report.complete {
        StatusCode::OK
    } else {
        StatusCode::MULTI_STATUS
    };
    (status, Json(report)).into_response()
}

/// Sends `rules` to every target that is up, all at once, and gathers the answers.
pub(crate) async fn fan_out(
    client: &reqwest::Client,
    fleet_token: &str,
    rules: &Rules,
    targets: &[Target],
    timeout: Duration,
) -> PurgeReport {
    let mut report = PurgeReport {
        down: targets
            .iter()
            .filter(|t| t.down)
            .map(|t| t.name.clone())
            .collect(),
        ..PurgeReport::default()
    };
    let mut calls = Vec::new();
    for t in targets.iter().filter(|t| !t.down) {
        let (name, url) = (t.name.clone(), format!("{}/fleet/purge", t.url));
        calls.push(async move {
            let sent = client
                .post(url)
                .bearer_auth(fleet_token)
                .timeout(timeout)
                .json(rules)
                .send()
                .await;
            let outcome = match sent {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(refusal(r).await),
                Err(e) => Err(transport_failure(&e, timeout)),
            };
            (name, outcome)
        });
    }
    let answers: Vec<_> = futures::stream::iter(calls)
        .buffer_unordered(FAN_OUT)
        .collect()
        .await;
    for (node, outcome) in answers {
        match outcome {
            Ok(()) => report.acknowledged.push(node),
            Err(reason) => report.failed.push(Failure {
                node,
                reason: scrub(&reason, fleet_token),
            }),
        }
    }
    report.acknowledged.sort();
    report.failed.sort_by(|a, b| a.node.cmp(&b.node));
    report.complete = report.failed.is_empty() && report.down.is_empty();
    report
}

/// Why a node's answer is a refusal: its status and, when it sent one, its
/// JSON error message (short, printable).
pub(crate) async fn refusal(r: reqwest::Response) -> String {
    let status = r.status();
    let what = match status.as_u16() {
        401 | 403 => "refused control's fleet credential",
        400 | 422 => "refused the request",
        404 | 405 => "does not offer this fleet endpoint",
        429 | 503 => "is busy",
        _ => "failed",
    };
    let detail = r
        .json::<serde_json::Value>()
        .await
        .ok()
        .and_then(|v| v["message"].as_str().map(printable));
    match detail {
        Some(d) if !d.is_empty() => format!("{what} (HTTP {}): {d}", status.as_u16()),
        _ => format!("{what} (HTTP {})", status.as_u16()),
    }
}

/// A failed request, described without its URL.
pub(crate) fn transport_failure(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        format!("no answer within {} s", timeout.as_secs_f64())
    } else if e.is_connect() {
        "could not connect".to_string()
    } else if e.is_decode() || e.is_body() {
        "sent an unreadable answer".to_string()
    } else {
        "the request failed".to_string()
    }
}

/// At most 200 printable characters.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// Removes the credential from a reason, should a node ever echo it.
fn scrub(reason: &str, secret: &str) -> String {
    if secret.is_empty() {
        reason.to_string()
    } else {
        reason.replace(secret, "[credential]")
    }
}

/// Checks `urls` or `prefixes`: each reduced to a decoded path without query.
fn paths(field: &str, list: &[String]) -> Result<Vec<String>, BadField> {
    list.iter()
        .enumerate()
        .map(|(i, raw)| {
            if raw.is_empty() || raw.len() >= MAX_RULE_BYTES {
                return Err(BadField::new(
                    format!("{field}[{i}]"),
                    format!("give 1 to {} bytes", MAX_RULE_BYTES - 1),
                ));
            }
            // Edges key their caches by the decoded path, as normalize_path gives it.
            path_of(raw)
                .and_then(|p| cascade_token::normalize_path(&p))
                .ok_or_else(|| {
                    BadField::new(
                        format!("{field}[{i}]"),
                        format!("{raw:?} is not a path starting with / or an http(s) URL"),
                    )
                })
        })
        .collect()
}

/// The path of a URL or path: scheme and host dropped, then query and fragment.
fn path_of(raw: &str) -> Option<String> {
    let lower = raw.get(..8).unwrap_or(raw).to_ascii_lowercase();
    let rest = if lower.starts_with("http://") {
        &raw[7..]
    } else if lower.starts_with("https://") {
        &raw[8..]
    } else {
        raw
    };
    let path = if rest.len() == raw.len() {
        rest
    } else {
        // After the host: the path, or nothing (then `/`).
        match rest.find(['/', '?', '#']) {
            Some(i) if rest[i..].starts_with('/') => &rest[i..],
            _ => "/",
        }
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    path.starts_with('/').then(|| path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<PurgeRequest, BadField> {
        PurgeRequest::parse(body.as_bytes())
    }

    #[test]
    fn urls_are_reduced_to_paths() {
        assert_eq!(
            path_of("http://host:8080/vod/a/master.m3u8?__token__=x").as_deref(),
            Some("/vod/a/master.m3u8")
        );
        assert_eq!(path_of("HTTPS://host/vod/a/").as_deref(), Some("/vod/a/"));
        assert_eq!(path_of("https://host").as_deref(), Some("/"));
        assert_eq!(path_of("https://host?x=1").as_deref(), Some("/"));
        assert_eq!(
            path_of("/vod/a/1.m4s#frag").as_deref(),
            Some("/vod/a/1.m4s")
        );
        assert_eq!(path_of("vod/a"), None);
        assert_eq!(path_of("ftp://host/x"), None);
        let r = parse(r#"{"urls":["http://e/vod/a%5F1/v0/1.m4s?__token__=secret"]}"#).unwrap();
        assert_eq!(r.rules.urls, ["/vod/a_1/v0/1.m4s"]);
    }

    #[test]
    fn bad_requests_name_the_field() {
        for (body, field) in [
            ("{}", "urls"),
            (r#"{"urls":[],"tags":[]}"#, "urls"),
            (r#"{"urls":["vod/a"]}"#, "urls[0]"),
            (r#"{"prefixes":["/ok/", ""]}"#, "prefixes[1]"),
            (r#"{"prefixes":["/a/../b"]}"#, "prefixes[0]"),
            (r#"{"tags":["asset a"]}"#, "tags[0]"),
            (r#"{"tags":["a"],"roles":["origin"]}"#, "roles"),
            (r#"{"tags":["a"],"nodes":[]}"#, "nodes"),
            (r#"{"tags":"a"}"#, "tags"),
            (r#"{"tags":["a"],"colour":1}"#, "colour"),
            ("[]", "body"),
            ("", "body"),
        ] {
            match parse(body) {
                Err(e) => assert_eq!(e.field, field, "{body}: {e:?}"),
                Ok(r) => panic!("{body} was accepted: {r:?}"),
            }
        }
        let long = format!(r#"{{"urls":["/{}"]}}"#, "a".repeat(2047));
        assert_eq!(parse(&long).unwrap_err().field, "urls[0]");
        let many: Vec<String> = (0..=MAX_RULES).map(|i| format!("t{i}")).collect();
        let body = serde_json::json!({ "tags": many }).to_string();
        assert_eq!(parse(&body).unwrap_err().field, "urls");
        let ok = parse(r#"{"tags":["asset-abc","x.y:z_1"],"prefixes":["/vod/abc/"]}"#).unwrap();
        assert_eq!(ok.rules.tags, ["asset-abc", "x.y:z_1"]);
    }

    fn target(name: &str, role: &str, down: bool) -> Target {
        Target {
            name: name.into(),
            role: role.into(),
            region: None,
            url: "http://127.0.0.1:1".into(),
            down,
        }
    }

    #[test]
    fn filters_pick_targets() {
        let fleet = [
            target("e1", "edge", false),
            target("e2", "edge", true),
            target("s1", "shield", false),
        ];
        let all = parse(r#"{"tags":["a"]}"#).unwrap().select(&fleet).unwrap();
        assert_eq!(all.len(), 3);
        let edges = parse(r#"{"tags":["a"],"roles":["edge"]}"#)
            .unwrap()
            .select(&fleet)
            .unwrap();
        assert_eq!(edges.len(), 2);
        let one = parse(r#"{"tags":["a"],"nodes":["s1"],"roles":["edge"]}"#)
            .unwrap()
            .select(&fleet)
            .unwrap();
        assert!(one.is_empty());
        let unknown = parse(r#"{"tags":["a"],"nodes":["nope"]}"#)
            .unwrap()
            .select(&fleet);
        assert_eq!(unknown.unwrap_err().field, "nodes");
    }

    #[tokio::test]
    async fn down_nodes_are_reported_and_dead_ones_fail_fast() {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        // Port 1 on loopback refuses connections.
        let fleet = [target("e1", "edge", false), target("e2", "edge", true)];
        let rules = Rules {
            tags: vec!["a".into()],
            ..Rules::default()
        };
        let started = Instant::now();
        let r = fan_out(&client, "secret-fleet-token", &rules, &fleet, NODE_TIMEOUT).await;
        assert!(started.elapsed() < NODE_TIMEOUT + Duration::from_millis(500));
        assert!(!r.complete);
        assert_eq!(r.down, ["e2"]);
        assert_eq!(r.failed.len(), 1);
        assert_eq!(r.failed[0].node, "e1");
        assert!(!r.failed[0].reason.contains("secret"), "{:?}", r.failed);
    }
}
