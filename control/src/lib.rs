//! Control: runs the fleet. So far it knows the nodes from its config and
//! reports their health; purge, pre-warm and the partner token API come next.

#![warn(unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cascade_serve::config::{check_addr, check_url, Validate};
use cascade_serve::Metrics;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Control's config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// Address to listen on.
    pub listen: String,
    /// The fleet.
    pub nodes: Vec<Node>,
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
        }
    }
}

impl Validate for ControlConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        check_addr("listen", &self.listen, errors);
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
    }
}

struct Ctx {
    nodes: Vec<Node>,
    client: reqwest::Client,
    metrics: Metrics,
}

/// Builds the router; tests call it in-process.
fn app(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/api/v1/nodes", get(nodes))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "not_found", "message": "no such path"})),
            )
        })
        .with_state(ctx)
}

async fn metrics(State(ctx): State<Arc<Ctx>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ctx.metrics.render(),
    )
        .into_response()
}

/// `GET /api/v1/nodes`: every node with a live health check.
async fn nodes(State(ctx): State<Arc<Ctx>>) -> Response {
    let checks = ctx.nodes.iter().map(|n| {
        let client = ctx.client.clone();
        async move {
            let url = format!("{}/healthz", n.url.trim_end_matches('/'));
            let healthy = matches!(client.get(&url).send().await, Ok(r) if r.status().is_success());
            json!({ "name": n.name, "role": n.role, "url": n.url, "health": if healthy { "up" } else { "down" } })
        }
    });
    let list = futures::future::join_all(checks).await;
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({ "nodes": list })),
    )
        .into_response()
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

/// Starts control on `cfg.listen`.
pub async fn start(cfg: &ControlConfig) -> anyhow::Result<Control> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()?;
    let ctx = Arc::new(Ctx {
        nodes: cfg.nodes.clone(),
        client,
        metrics: Metrics::new("control"),
    });
    let listener = tokio::net::TcpListener::bind(&cfg.listen).await?;
    let addr = listener.local_addr()?;
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    let router = app(ctx);
    let task = tokio::spawn(async move {
        let s = axum::serve(listener, router).with_graceful_shutdown(async move {
            let _ = rx.changed().await;
        });
        if let Err(e) = s.await {
            tracing::error!(error = %e, "control listener");
        }
    });
    tracing::info!(%addr, "control listening");
    Ok(Control {
        addr,
        shutdown: tx,
        task,
    })
}
