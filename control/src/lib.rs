//! Control: runs the fleet. It knows the nodes from its config and from
//! their heartbeats and reports their health; it runs the partner token API;
//! and it purges caches and pre-warms edges across the fleet.
//!
//! Three kinds of caller, three credentials (all `Authorization: Bearer`):
//! operators (`admin_token`: partner management, purge, pre-warm), edges and
//! shields (`fleet_token`: heartbeats, partner signing keys), partners (their
//! API key: minting tokens). Control calls edges and shields with the
//! `fleet_token` too (`/fleet/purge`, `/fleet/warm`).

#![warn(unreachable_pub)]

mod degrade;
mod fleet;
mod partners;
mod prewarm;
mod purge;
mod steering;
#[cfg(test)]
mod tests;

use cascade_common::bearer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cascade_common::config::{check_addr, check_url, Validate};
use cascade_common::Metrics;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::SqlitePool;
use utoipa::OpenApi;

pub use degrade::AutoDegrade;
pub use partners::{FleetPartner, PartnerInfo, SigningKey};

/// Control's config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// Address to listen on.
    pub listen: String,
    /// The fleet.
    pub nodes: Vec<Node>,
    /// Directory of control's database.
    pub data_dir: String,
    /// Bearer token of operators (partner management). Empty disables those endpoints.
    pub admin_token: String,
    /// Bearer token edges use to fetch partner keys. Empty disables that endpoint.
    pub fleet_token: String,
    /// The edge URL partners' viewers use, for ready-to-play URLs.
    pub public_edge_url: String,
    /// Name of the token's query parameter at the edges.
    pub token_name: String,
    /// Seconds without a heartbeat after which a registered node is down.
    pub node_down_after_secs: u64,
    /// The origin's base URL, for titles' asset manifests when pre-warming.
    pub origin_url: String,
    /// Networks (CIDRs) that may read `/metrics` without a credential;
    /// anyone else needs the admin or fleet credential. Loopback by default.
    pub metrics_networks: Vec<String>,
    /// File with the key-encryption key (32 bytes, hex) that seals
    /// partners' signing keys at rest; empty: `{data_dir}/control-kek`,
    /// made on first start.
    pub key_encryption_key_file: String,
    /// Regions a quality cap may name besides those edges report.
    pub regions: Vec<String>,
    /// The lowest cap `cascade ctl degrade` takes, in lines: the ladder's
    /// shortest rung (a lower cap would remove every rung).
    pub min_cap_height: u32,
    /// Regions capped automatically when their edges' egress passes a threshold.
    pub auto_degrade: Vec<AutoDegrade>,
    /// Seconds players wait between steering requests (`TTL`): how soon a
    /// drained or overloaded edge loses its viewers.
    pub steering_ttl_secs: u64,
    /// Edges each playlist offers as pathways (the answering edge and the
    /// best others for its region); below 2, no steering.
    pub steering_pathways: usize,
    /// Which countries each region serves, for the playback API's first
    /// edge (`IN = ["IN", "LK"]`); a country not listed goes to a region of
    /// its own name if there is one.
    pub region_countries: std::collections::BTreeMap<String, Vec<String>>,
}

/// One node of the fleet.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// A unique name.
    pub name: String,
    /// `edge`, `shield` or `origin`.
    pub role: String,
    /// Its base URL.
    pub url: String,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            listen: "127.0.0.1:8083".into(),
            nodes: Vec::new(),
            data_dir: "data".into(),
            admin_token: String::new(),
            fleet_token: String::new(),
            public_edge_url: "http://127.0.0.1:8080".into(),
            token_name: "__token__".into(),
            node_down_after_secs: 15,
            origin_url: "http://127.0.0.1:8082".into(),
            metrics_networks: cascade_common::default_operator_networks(),
            key_encryption_key_file: String::new(),
            regions: Vec::new(),
            min_cap_height: 144,
            auto_degrade: Vec::new(),
            steering_ttl_secs: 10,
            steering_pathways: 3,
            region_countries: Default::default(),
        }
    }
}

impl Validate for ControlConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        check_addr("listen", &self.listen, errors);
        check_url("public_edge_url", &self.public_edge_url, errors);
        check_url("origin_url", &self.origin_url, errors);
        cascade_common::check_networks("metrics_networks", &self.metrics_networks, errors);
        for (i, n) in self.nodes.iter().enumerate() {
            check_url(&format!("nodes[{i}].url"), &n.url, errors);
            if !matches!(n.role.as_str(), "edge" | "shield" | "origin") {
                errors.push(format!(
                    "nodes[{i}].role: {:?} is not edge, shield or origin",
                    n.role
                ));
            }
            if self.nodes[..i].iter().any(|o| o.name == n.name) {
                errors.push(format!("nodes[{i}].name: {:?} is used twice", n.name));
            }
        }
        if !(1..=3600).contains(&self.steering_ttl_secs) {
            errors.push("steering_ttl_secs: 1 to 3600".into());
        }
        if self.steering_pathways > 16 {
            errors.push("steering_pathways: 0 (no steering) to 16".into());
        }
        if !(1..=16_384).contains(&self.min_cap_height) {
            errors.push("min_cap_height: 1 to 16384 lines".into());
        }
        for (i, a) in self.auto_degrade.iter().enumerate() {
            if !(a.egress_mbps > 0.0 && a.egress_mbps.is_finite()) {
                errors.push(format!("auto_degrade[{i}].egress_mbps: more than 0"));
            }
            if a.max_height < self.min_cap_height || a.max_height > 16_384 {
                errors.push(format!(
                    "auto_degrade[{i}].max_height: min_cap_height to 16384 lines"
                ));
            }
            if a.region.is_empty() {
                errors.push(format!("auto_degrade[{i}].region: required"));
            }
        }
        for (key, value) in [
            ("admin_token", &self.admin_token),
            ("fleet_token", &self.fleet_token),
        ] {
            if !value.is_empty() && value.len() < 16 {
                errors.push(format!("{key}: use at least 16 characters"));
            }
        }
    }
}

/// A node that registered itself, with its last heartbeat.
struct Registered {
    beat: cascade_common::Heartbeat,
    last_seen: std::time::Instant,
}

struct Ctx {
    cfg: ControlConfig,
    registry: std::sync::Mutex<std::collections::HashMap<String, Registered>>,
    db: SqlitePool,
    sealer: partners::Sealer,
    client: reqwest::Client,
    metrics: Metrics,
    limits: partners::Limits,
    purge_metrics: purge::PurgeMetrics,
    warm_metrics: prewarm::WarmMetrics,
    jobs: prewarm::Jobs,
    /// Quality caps and drained edges.
    fleet_state: std::sync::Mutex<degrade::FleetState>,
    steering_metrics: steering::SteeringMetrics,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Cascade partner token API", description = "Mint playback tokens for Cascade edges."),
    paths(create_token),
    components(schemas(TokenRequest, TokenResponse, ApiError)),
    modifiers(&BearerAuth)
)]
struct PartnerApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "partner_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The partner API's OpenAPI document, generated from the handlers below.
pub fn openapi_json() -> String {
    PartnerApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_default()
}

/// Builds the router.
fn app(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/tokens", post(create_token))
        .route(
            "/api/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], openapi_json()) }),
        )
        .route("/api/v1/partners", get(list_partners).post(add_partner))
        .route("/api/v1/partners/{name}/rotate", post(rotate_partner))
        .route("/api/v1/partners/{name}/revoke", post(revoke_partner))
        .route("/api/v1/fleet/partners", get(fleet_partners))
        .route("/api/v1/fleet/heartbeat", post(heartbeat))
        .route(
            "/api/v1/degrade",
            get(degrade::list).post(degrade::set).delete(degrade::clear),
        )
        .route("/api/v1/fleet/edge", get(steering::first_edge))
        .route("/steer/{format}", get(steering::steer))
        .route(
            "/api/v1/nodes/{name}/drain",
            post(degrade::drain).delete(degrade::drain),
        )
        .route("/api/v1/purge", post(purge::purge))
        .route("/api/v1/prewarm", post(prewarm::start_job))
        .route("/api/v1/prewarm/{id}", get(prewarm::status))
        .route("/api/v1/prewarm/{id}/events", get(prewarm::events))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such path") })
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .layer(axum::middleware::from_fn(cascade_common::json_errors))
        .with_state(ctx)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(ApiError {
            error: code.into(),
            message: message.into(),
        }),
    )
        .into_response()
}

/// An error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ApiError {
    /// Short code, such as `outside_scope`.
    error: String,
    /// What went wrong.
    message: String,
}

/// A request field that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BadField {
    /// The field, such as `titles[2]`, or `body` for the body as a whole.
    field: String,
    /// What is wrong with it.
    reason: String,
}

impl BadField {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> BadField {
        BadField {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The `400` answer naming the field.
    fn response(&self) -> Response {
        error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("{}: {}", self.field, self.reason),
        )
    }
}

/// A JSON object body read field by field, so that an error names its field.
struct JsonObject(serde_json::Map<String, serde_json::Value>);

impl JsonObject {
    /// Parses `body`; a field not in `known` is an error.
    fn parse(body: &[u8], known: &[&str]) -> Result<JsonObject, BadField> {
        let value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| BadField::new("body", format!("not JSON: {e}")))?;
        let serde_json::Value::Object(map) = value else {
            return Err(BadField::new("body", "expected a JSON object"));
        };
        if let Some(k) = map.keys().find(|k| !known.contains(&k.as_str())) {
            let name: String = k.chars().filter(|c| !c.is_control()).take(64).collect();
            return Err(BadField::new(
                name,
                format!("unknown field; the fields are {}", known.join(", ")),
            ));
        }
        Ok(JsonObject(map))
    }

    /// A field's value; `None` when absent or `null`.
    fn field<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>, BadField> {
        match self.0.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => T::deserialize(v)
                .map(Some)
                .map_err(|e| BadField::new(name, e.to_string())),
        }
    }
}

/// Every edge and shield now, configured and registered.
fn fleet_targets(ctx: &Ctx) -> Vec<fleet::Target> {
    let registered: Vec<(cascade_common::Heartbeat, Duration)> = match ctx.registry.lock() {
        Ok(reg) => reg
            .values()
            .map(|r| (r.beat.clone(), r.last_seen.elapsed()))
            .collect(),
        Err(_) => Vec::new(),
    };
    fleet::targets(
        &ctx.cfg.nodes,
        &registered,
        Duration::from_secs(ctx.cfg.node_down_after_secs),
    )
}

/// Whether the request carries the configured credential.
fn credential_ok(headers: &HeaderMap, configured: &str) -> bool {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    cascade_common::bearer_matches(auth, configured)
}

async fn metrics(State(ctx): State<Arc<Ctx>>, req: axum::extract::Request) -> Response {
    let access = cascade_common::MetricsAccess::new(
        &ctx.cfg.metrics_networks,
        &[&ctx.cfg.admin_token, &ctx.cfg.fleet_token],
    )
    .unwrap_or_default();
    cascade_common::metrics_answer(&access, &ctx.metrics, &req)
}

/// Most registered nodes kept; a heartbeat from one more is refused.
const MAX_REGISTERED: usize = 10_000;

/// `POST /api/v1/fleet/heartbeat` (fleet credential): a node registers or
/// says it is alive, with its cache figures.
async fn heartbeat(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Json(beat): Json<cascade_common::Heartbeat>,
) -> Response {
    if !credential_ok(&headers, &ctx.cfg.fleet_token) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "fleet credential required",
        );
    }
    if !cascade_packager_id(&beat.name) || !matches!(beat.role.as_str(), "edge" | "shield") {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_node",
            "name: letters, digits, - and _; role: edge or shield",
        );
    }
    let Ok(mut reg) = ctx.registry.lock() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "registry",
            "registry unavailable",
        );
    };
    if reg.len() >= MAX_REGISTERED && !reg.contains_key(&beat.name) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "registry_full",
            "too many nodes",
        );
    }
    let (name, region) = (beat.name.clone(), beat.region.clone());
    let is_edge = beat.role == "edge";
    reg.insert(
        beat.name.clone(),
        Registered {
            beat,
            last_seen: std::time::Instant::now(),
        },
    );
    drop(reg);
    degrade::after_heartbeat(&ctx);
    // The node's answer: the caps in force, whether it is drained, and
    // (an edge) the pathways to offer its players.
    let mut reply = degrade::snapshot(&ctx).reply_for(&name, cascade_common::unix_now());
    if is_edge {
        reply.pathways = steering::pathways_for(&ctx, &name, &region);
    }
    Json(reply).into_response()
}

/// `GET /api/v1/nodes`: configured nodes with a live health check, and
/// registered nodes by their heartbeats (down when quiet too long).
/// Internal URLs and live checks: for operators (admin credential) and the
/// fleet's own tools (fleet credential) only.
async fn nodes(State(ctx): State<Arc<Ctx>>, headers: HeaderMap) -> Response {
    if !credential_ok(&headers, &ctx.cfg.admin_token)
        && !credential_ok(&headers, &ctx.cfg.fleet_token)
    {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "admin or fleet credential required",
        );
    }
    let registered: Vec<serde_json::Value> = match ctx.registry.lock() {
        Ok(reg) => {
            let down_after = Duration::from_secs(ctx.cfg.node_down_after_secs);
            let mut list: Vec<_> = reg
                .values()
                .map(|r| {
                    let b = &r.beat;
                    let ratio = (b.requests_total > 0)
                        .then(|| b.requests_hit as f64 / b.requests_total as f64);
                    json!({
                        "name": b.name, "role": b.role, "region": b.region, "url": b.url,
                        "health": if r.last_seen.elapsed() <= down_after { "up" } else { "down" },
                        "last_seen_secs": r.last_seen.elapsed().as_secs(),
                        "cache_memory_bytes": b.cache_memory_bytes,
                        "cache_entries": b.cache_entries,
                        "hit_ratio": ratio,
                        "load": b.load,
                        "registered": true,
                    })
                })
                .collect();
            list.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
            list
        }
        Err(_) => Vec::new(),
    };
    let checks = ctx.cfg.nodes.iter().map(|n| {
        let client = ctx.client.clone();
        async move {
            let url = format!("{}/healthz", n.url.trim_end_matches('/'));
            let healthy = matches!(client.get(&url).send().await, Ok(r) if r.status().is_success());
            json!({ "name": n.name, "role": n.role, "url": n.url, "health": if healthy { "up" } else { "down" } })
        }
    });
    let mut list = futures::future::join_all(checks).await;
    // A registered node replaces a configured one of the same name.
    list.retain(|n| !registered.iter().any(|r| r["name"] == n["name"]));
    list.extend(registered);
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({ "nodes": list })),
    )
        .into_response()
}

/// A token request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    /// ACL patterns the token grants (`*` matches any run of characters), such as `/vod/abc123/*`.
    #[serde(default)]
    acl: Vec<String>,
    /// Or: the one path of a URL token.
    url: Option<String>,
    /// Lifetime in seconds; capped at the partner's maximum. Default 3600.
    ttl_secs: Option<u64>,
    /// Bind the token to one viewer address.
    ip: Option<String>,
    /// A session id carried in the token.
    session_id: Option<String>,
    /// An opaque payload carried in the token.
    payload: Option<String>,
}

/// A minted token.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct TokenResponse {
    /// The token.
    token: String,
    /// The query parameter to carry it in.
    token_name: String,
    /// Unix seconds at which it expires.
    expires: u64,
    /// Ready-to-play URLs, when the grant covers a whole title (`/vod/{asset}/*`).
    #[schema(nullable)]
    hls: Option<String>,
    /// See `hls`.
    #[schema(nullable)]
    dash: Option<String>,
    /// For a URL token: that URL, signed.
    #[schema(nullable)]
    url: Option<String>,
}

/// Mint a playback token for the calling partner.
#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    request_body = TokenRequest,
    security(("partner_key" = [])),
    responses(
        (status = 200, description = "The token and ready-to-play URLs", body = TokenResponse),
        (status = 400, description = "A malformed request", body = ApiError),
        (status = 401, description = "A missing, wrong or revoked API key", body = ApiError),
        (status = 403, description = "The grant lies outside the partner's scope", body = ApiError),
        (status = 429, description = "Over the partner's rate limit; see Retry-After", body = ApiError),
    )
)]
async fn create_token(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(key) = bearer(&headers) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <api key>",
        );
    };
    let partner = match partners::by_api_key(&ctx.db, key).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "unknown or revoked API key",
            )
        }
        Err(e) => return db_error(e),
    };
    if let Err(wait) = ctx.limits.check(&partner.name, partner.rate_per_minute) {
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many token requests",
        );
        if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let req: TokenRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    if req.acl.is_empty() == req.url.is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "give either acl or url",
        );
    }
    let clean = |s: &str| {
        !s.is_empty()
            && s.len() <= 512
            && s.starts_with('/')
            && !s.contains(['~', '!', '?', '#'])
            && !s.chars().any(char::is_control)
    };
    if !req.acl.iter().all(|a| clean(a)) || req.url.as_deref().is_some_and(|u| !clean(u)) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "acl and url are absolute paths without ~ ! ? #",
        );
    }
    for field in [&req.session_id, &req.payload].into_iter().flatten() {
        if field.len() > 256 || field.contains('~') {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "session_id and payload: at most 256 characters, no ~",
            );
        }
    }
    if let Some(ip) = &req.ip {
        if ip.parse::<std::net::IpAddr>().is_err() {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "ip is not an IP address",
            );
        }
    }
    let inside = match &req.url {
        Some(u) => partner
            .scope
            .iter()
            .any(|s| cascade_token::acl_matches(s, u)),
        None => req.acl.iter().all(|a| {
            partner
                .scope
                .iter()
                .any(|s| cascade_token::scope_contains(s, a))
        }),
    };
    if !inside {
        return error(
            StatusCode::FORBIDDEN,
            "outside_scope",
            "the grant lies outside your scope",
        );
    }
    let signing = match partners::current_key(&ctx.db, &ctx.sealer, &partner.name).await {
        Ok(Some(k)) => k,
        Ok(None) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the partner has no signing key",
            )
        }
        Err(e) => return db_error(e),
    };
    let Ok(key) = cascade_token::Key::from_hex(&signing.kid, &signing.key) else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "key",
            "the partner's signing key is unusable",
        );
    };
    let now = cascade_common::unix_now();
    let ttl = req.ttl_secs.unwrap_or(3600).clamp(1, partner.max_ttl_secs);
    let expires = now + ttl;
    let mut data = format!("kid={}", partner.name);
    if let Some(p) = &req.payload {
        data.push(',');
        data.push_str(p);
    }
    let token = cascade_token::sign(
        &key,
        &cascade_token::Claims {
            ip: req.ip.clone(),
            start: Some(now.saturating_sub(1)),
            expires,
            acl: req.acl.clone(),
            url: req.url.clone(),
            id: req.session_id.clone(),
            data: Some(data),
        },
    );
    let edge = ctx.cfg.public_edge_url.trim_end_matches('/');
    let q = format!("{}={token}", ctx.cfg.token_name);
    // A grant of one whole title gets its HLS and DASH URLs.
    let title = req
        .acl
        .first()
        .filter(|_| req.acl.len() == 1)
        .and_then(|a| {
            let asset = a.strip_prefix("/vod/")?.strip_suffix("/*")?;
            cascade_packager_id(asset).then(|| asset.to_string())
        });
    Json(TokenResponse {
        hls: title
            .as_ref()
            .map(|a| format!("{edge}/vod/{a}/master.m3u8?{q}")),
        dash: title
            .as_ref()
            .map(|a| format!("{edge}/vod/{a}/manifest.mpd?{q}")),
        url: req.url.as_ref().map(|u| format!("{edge}{u}?{q}")),
        token,
        token_name: ctx.cfg.token_name.clone(),
        expires,
    })
    .into_response()
}

fn cascade_packager_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn db_error(e: sqlx::Error) -> Response {
    tracing::error!(error = %e, "control database");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "database",
        "database error",
    )
}

/// A new partner (admin).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPartner {
    name: String,
    scope: Vec<String>,
    #[serde(default = "default_max_ttl")]
    max_ttl_secs: u64,
    #[serde(default = "default_rate")]
    rate_per_minute: u32,
    /// Whether to return the signing key (for partners who sign themselves).
    #[serde(default)]
    include_signing_key: bool,
}

fn default_max_ttl() -> u64 {
    6 * 3600
}

fn default_rate() -> u32 {
    600
}

/// The refusal for a caller without the admin credential, if it lacks it.
fn not_admin(ctx: &Ctx, headers: &HeaderMap) -> Option<Response> {
    (!credential_ok(headers, &ctx.cfg.admin_token)).then(|| {
        error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "admin credential required",
        )
    })
}

async fn add_partner(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Json(p): Json<NewPartner>,
) -> Response {
    if let Some(r) = not_admin(&ctx, &headers) {
        return r;
    }
    if !cascade_packager_id(&p.name) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_name",
            "names use letters, digits, - and _",
        );
    }
    if p.scope.is_empty()
        || !p.scope.iter().all(|s| {
            s.starts_with('/') && !s.contains(['~', '!']) && !s.trim_end_matches('*').contains('*')
        })
    {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_scope",
            "scopes are paths, optionally ending in *",
        );
    }
    if !(60..=30 * 24 * 3600).contains(&p.max_ttl_secs) || p.rate_per_minute == 0 {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_limits",
            "max_ttl_secs 60 to 2592000, rate_per_minute at least 1",
        );
    }
    let info = PartnerInfo {
        name: p.name.clone(),
        scope: p.scope,
        max_ttl_secs: p.max_ttl_secs,
        rate_per_minute: p.rate_per_minute,
        revoked: false,
    };
    match partners::get(&ctx.db, &p.name).await {
        Ok(Some(_)) => {
            return error(
                StatusCode::CONFLICT,
                "exists",
                "a partner of that name exists",
            )
        }
        Ok(None) => {}
        Err(e) => return db_error(e),
    }
    match partners::create(&ctx.db, &ctx.sealer, &info).await {
        Ok((api_key, signing)) => {
            tracing::info!(partner = %info.name, "partner created");
            (
                StatusCode::CREATED,
                Json(json!({
                    "partner": info,
                    "api_key": api_key,
                    "signing_key": if p.include_signing_key { Some(signing) } else { None },
                })),
            )
                .into_response()
        }
        Err(e) => db_error(e),
    }
}

async fn list_partners(State(ctx): State<Arc<Ctx>>, headers: HeaderMap) -> Response {
    if let Some(r) = not_admin(&ctx, &headers) {
        return r;
    }
    match partners::list(&ctx.db).await {
        Ok(list) => Json(json!({ "partners": list })).into_response(),
        Err(e) => db_error(e),
    }
}

#[derive(Debug, Default, Deserialize)]
struct RotateQuery {
    #[serde(default)]
    include_signing_key: bool,
}

async fn rotate_partner(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<RotateQuery>,
) -> Response {
    if let Some(r) = not_admin(&ctx, &headers) {
        return r;
    }
    let include = q.include_signing_key;
    match partners::rotate(&ctx.db, &ctx.sealer, &name).await {
        Ok(Some((api_key, signing))) => {
            tracing::info!(partner = %name, "partner keys rotated");
            Json(json!({ "api_key": api_key, "signing_key": if include { Some(signing) } else { None } })).into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, "not_found", "no such partner"),
        Err(e) => db_error(e),
    }
}

async fn revoke_partner(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Some(r) = not_admin(&ctx, &headers) {
        return r;
    }
    match partners::revoke(&ctx.db, &name).await {
        Ok(true) => {
            tracing::info!(partner = %name, "partner revoked");
            Json(json!({ "revoked": name })).into_response()
        }
        Ok(false) => error(StatusCode::NOT_FOUND, "not_found", "no such partner"),
        Err(e) => db_error(e),
    }
}

/// `GET /api/v1/fleet/partners` (fleet credential): partners' scopes and keys, for edges.
async fn fleet_partners(State(ctx): State<Arc<Ctx>>, headers: HeaderMap) -> Response {
    if !credential_ok(&headers, &ctx.cfg.fleet_token) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "fleet credential required",
        );
    }
    match partners::fleet(&ctx.db, &ctx.sealer).await {
        Ok(list) => (
            [(header::CACHE_CONTROL, "no-store")],
            Json(json!({ "partners": list })),
        )
            .into_response(),
        Err(e) => db_error(e),
    }
}

/// A running control service.
pub struct Control {
    /// Where it listens.
    pub addr: SocketAddr,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Control {
    /// Stops it.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// The key-encryption key: 32 bytes, hex, from `key_encryption_key_file`,
/// else from `{data_dir}/control-kek`, made (0600) on first start. In a
/// fleet, point the config at a secret kept apart from the database (its
/// backups then hold no usable partner key).
fn key_encryption_key(cfg: &ControlConfig) -> anyhow::Result<[u8; 32]> {
    use std::io::Write;
    let path = if cfg.key_encryption_key_file.is_empty() {
        std::path::Path::new(&cfg.data_dir).join("control-kek")
    } else {
        std::path::PathBuf::from(&cfg.key_encryption_key_file)
    };
    if !path.exists() && cfg.key_encryption_key_file.is_empty() {
        cascade_common::private_file(&path)?;
        let mut f = std::fs::OpenOptions::new().write(true).open(&path)?;
        f.write_all(partners::random_hex(32).as_bytes())?;
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("key_encryption_key_file: {}: {e}", path.display()))?;
    let mut kek = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut kek).map_err(|_| {
        anyhow::anyhow!(
            "key_encryption_key_file: {}: not 32 bytes of hex",
            path.display()
        )
    })?;
    Ok(kek)
}

/// Starts control on `cfg.listen`.
pub async fn start(cfg: &ControlConfig) -> anyhow::Result<Control> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        // Below the origin's 30 s idle limit: never reuse a connection as
        // the server closes it.
        .pool_idle_timeout(Duration::from_secs(20))
        .no_proxy()
        .build()?;
    // The database holds partners' signing keys: owner-only, like its
    // directory, and sealed under the key-encryption key.
    let data_dir = std::path::Path::new(&cfg.data_dir);
    cascade_common::private_dir(data_dir)?;
    let db_path = data_dir.join("control.db");
    cascade_common::private_sqlite(&format!("sqlite://{}", db_path.display()))?;
    let sealer = partners::Sealer::new(&key_encryption_key(cfg)?);
    let opts = SqliteConnectOptions::new()
        .filename(&db_path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        // Deleted rows (a revoked partner's keys) are overwritten, not
        // left in free pages.
        .pragma("secure_delete", "ON");
    let db = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(opts)
        .await?;
    partners::migrate(&db, &sealer).await?;
    let fleet_state = degrade::load(&db).await?;
    let metrics = Metrics::new("control");
    let ctx = Arc::new(Ctx {
        cfg: cfg.clone(),
        db,
        sealer,
        client,
        purge_metrics: purge::PurgeMetrics::new(metrics.registry()),
        warm_metrics: prewarm::WarmMetrics::new(metrics.registry()),
        steering_metrics: steering::SteeringMetrics::new(metrics.registry()),
        metrics,
        limits: partners::Limits::default(),
        registry: Default::default(),
        jobs: prewarm::Jobs::default(),
        fleet_state: std::sync::Mutex::new(fleet_state),
    });
    let listener = tokio::net::TcpListener::bind(&cfg.listen).await?;
    let addr = listener.local_addr()?;
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    let router = app(ctx.clone());
    let task = tokio::spawn(cascade_common::serve_router(
        listener,
        router,
        cascade_common::HttpLimits::default(),
        async move {
            let _ = rx.changed().await;
            // Pre-warm jobs end with control, and so do their event streams.
            ctx.jobs.abort_all();
        },
    ));
    tracing::info!(%addr, "control listening");
    Ok(Control {
        addr,
        shutdown: tx,
        task,
    })
}
