//! Content steering: the steering server players ask which edge to use
//! (`/steer/hls`, `/steer/dash`), the pathways each edge offers, and the
//! first edge the origin's playback API names (`/api/v1/fleet/edge`). All
//! rank the fleet the same way (`cascade_common::steering::rank`): the
//! viewer's region, health, drain and load from heartbeats.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cascade_common::steering::{rank, EdgeStatus, Ticket};
use cascade_common::Pathway;
use prometheus::{IntCounterVec, Opts};
use serde_json::json;

use crate::{credential_ok, error, Ctx};

/// Most pathways a steering answer lists.
const MAX_PRIORITY: usize = 16;

/// Steering's metrics.
pub(crate) struct SteeringMetrics {
    requests: IntCounterVec,
}

impl SteeringMetrics {
    pub(crate) fn new(registry: &prometheus::Registry) -> SteeringMetrics {
        let requests = IntCounterVec::new(
            Opts::new(
                "control_steering_requests_total",
                "Steering manifests asked for, by format and result (ok, refused)",
            ),
            &["format", "result"],
        )
        .expect("static metric definition");
        let _ = registry.register(Box::new(requests.clone()));
        SteeringMetrics { requests }
    }
}

/// Every edge with its health, drain and load now.
pub(crate) fn edge_statuses(ctx: &Ctx) -> Vec<EdgeStatus> {
    let drained = crate::degrade::snapshot(ctx).drained;
    let down_after = Duration::from_secs(ctx.cfg.node_down_after_secs);
    let mut out = Vec::new();
    if let Ok(reg) = ctx.registry.lock() {
        for r in reg.values().filter(|r| r.beat.role == "edge") {
            let load = r.beat.load.clone().unwrap_or_default();
            out.push(EdgeStatus {
                name: r.beat.name.clone(),
                url: r.beat.url.trim_end_matches('/').to_string(),
                region: r.beat.region.clone(),
                up: r.last_seen.elapsed() <= down_after,
                draining: drained.contains(&r.beat.name) || load.draining,
                utilisation: load.utilisation,
                shed_level: load.shed_level,
            });
        }
    }
    // Configured edges without heartbeats: up, unloaded, region unknown.
    for n in ctx.cfg.nodes.iter().filter(|n| n.role == "edge") {
        if !out.iter().any(|e| e.name == n.name) {
            out.push(EdgeStatus {
                name: n.name.clone(),
                url: n.url.trim_end_matches('/').to_string(),
                region: String::new(),
                up: true,
                draining: drained.contains(&n.name),
                utilisation: 0.0,
                shed_level: 0,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The pathways edge `node` (in `region`) offers its players: itself,
/// then the best others for its region that take new sessions.
pub(crate) fn pathways_for(ctx: &Ctx, node: &str, region: &str) -> Vec<Pathway> {
    if ctx.cfg.steering_pathways < 2 {
        return Vec::new();
    }
    let edges = edge_statuses(ctx);
    let Some(me) = edges.iter().find(|e| e.name == node) else {
        return Vec::new();
    };
    let mut out = vec![Pathway {
        name: me.name.clone(),
        url: me.url.clone(),
    }];
    out.extend(
        rank(&edges, Some(region), None)
            .into_iter()
            .filter(|e| e.name != node && e.up && e.takes_new_sessions())
            .take(ctx.cfg.steering_pathways - 1)
            .map(|e| Pathway {
                name: e.name.clone(),
                url: e.url.clone(),
            }),
    );
    out
}

/// `GET /steer/hls` and `/steer/dash` with `t` (the edge's ticket) and the
/// player's current pathway (`_HLS_pathway`, `_DASH_pathway`): the order
/// of edges to use now (`PATHWAY-PRIORITY`), and when to ask again. Open to players (the
/// ticket is the credential), with CORS.
pub(crate) async fn steer(
    State(ctx): State<Arc<Ctx>>,
    axum::extract::Path(format): axum::extract::Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    // Both formats answer `PATHWAY-PRIORITY` (HLS Content Steering, and
    // DASH-IF content steering as dash.js reads it).
    let current_key = match format.as_str() {
        "hls" => "_HLS_pathway",
        "dash" => "_DASH_pathway",
        _ => return error(StatusCode::NOT_FOUND, "not_found", "hls or dash"),
    };
    let now = cascade_common::unix_now();
    let ticket = q
        .get("t")
        .and_then(|t| Ticket::check(t, &ctx.cfg.fleet_token, now));
    let Some(ticket) = ticket else {
        ctx.steering_metrics
            .requests
            .with_label_values(&[&format, "refused"])
            .inc();
        let mut r = error(
            StatusCode::FORBIDDEN,
            "bad_ticket",
            "steering needs the ticket of a valid playback session (from the edge's playlist)",
        );
        cors(&mut r);
        return r;
    };
    let edges = edge_statuses(&ctx);
    // dash.js sends the service locations it used since its last request,
    // quoted and comma-separated, the one in use first.
    let current = q
        .get(current_key)
        .and_then(|p| p.trim_matches('"').split(',').next())
        .filter(|p| !p.is_empty());
    let order: Vec<&str> = rank(&edges, Some(&ticket.region), current)
        .into_iter()
        .take(MAX_PRIORITY)
        .map(|e| e.name.as_str())
        .collect();
    ctx.steering_metrics
        .requests
        .with_label_values(&[&format, "ok"])
        .inc();
    let reload = format!("/steer/{format}?t={}", ticket.sign(&ctx.cfg.fleet_token));
    let mut r = (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "VERSION": 1,
            "TTL": ctx.cfg.steering_ttl_secs,
            "RELOAD-URI": reload,
            "PATHWAY-PRIORITY": order,
        })),
    )
        .into_response();
    cors(&mut r);
    r
}

/// `GET /api/v1/fleet/edge?country=XX` (fleet credential): the edge a new
/// session should start on, for the origin's playback API.
pub(crate) async fn first_edge(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !credential_ok(&headers, &ctx.cfg.fleet_token) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "fleet credential required",
        );
    }
    let region = q.get("country").and_then(|c| region_of(&ctx, c));
    let edges = edge_statuses(&ctx);
    match rank(&edges, region.as_deref(), None).first() {
        Some(e) => {
            Json(json!({ "name": e.name, "url": e.url, "region": e.region })).into_response()
        }
        None => error(
            StatusCode::NOT_FOUND,
            "no_edge",
            "no edge has registered with control",
        ),
    }
}

/// The region a viewer's country belongs to (`region_countries`), or a
/// region named like the country.
fn region_of(ctx: &Ctx, country: &str) -> Option<String> {
    let country = country.to_ascii_uppercase();
    ctx.cfg
        .region_countries
        .iter()
        .find(|(_, cs)| cs.iter().any(|c| c.eq_ignore_ascii_case(&country)))
        .map(|(r, _)| r.clone())
        .or(Some(country))
}

fn cors(r: &mut Response) {
    r.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::HeaderValue::from_static("*"),
    );
}
