//! The events listener: viewers' real-time connections to their edge.
//!
//! ```text
//! GET  /events/live/{channel}        Server-Sent Events, or WebSocket with `Upgrade: websocket`
//! GET  /events/vod/{asset}           the same for an on-demand title
//! POST /events/{kind}/{id}/react     a reaction, for SSE viewers ({"react":"clap","count":1})
//! ```
//!
//! A connection is let in like media: the playback token for the scope's
//! media path (query, cookie or header) and its geo fence. It gets the
//! scope's stored events (comments, retractions, polls) with an id, its
//! notices (reaction swarms, poll results) without one, and the news
//! flashes meant for the viewer's country and channel. A viewer that
//! reconnects with `Last-Event-ID` (or `?last_event_id=` on a WebSocket)
//! gets what it missed, from this edge's memory or else from the bus.
//!
//! Written on a bare TCP stream, with `httparse` for the request head and
//! tungstenite for WebSocket frames, rather than on the media listener's
//! HTTP stack: a connection here is held for hours, mostly idle, and what
//! it costs at rest is what limits how many an edge holds; and a viewer
//! who stops reading must be dropped by a write timeout we control.

mod hub;
mod reactions;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cascade_bus::{reaction_index, Scope};
use cascade_serve::Request;
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub(crate) use hub::{Fanout, FlashBoard, Hub};
pub(crate) use reactions::{run_flusher, Reactions};

use crate::pipeline::EdgePipeline;
use hub::{Msg, Topic};

/// Largest request head.
const MAX_HEAD: usize = 8 * 1024;
/// Most header fields in a request head.
const MAX_HEADERS: usize = 48;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest reaction body, and largest WebSocket message from a viewer.
const MAX_INBOUND: usize = 1024;
/// Most reactions in one message.
const MAX_COUNT: u32 = 50;
/// How long a new topic may take to subscribe before the viewer is told
/// to retry.
const READY_WAIT: Duration = Duration::from_secs(5);

/// What the events listener is made of.
pub(crate) struct Events {
    pub(crate) hub: Arc<Hub>,
    pub(crate) reactions: Arc<Reactions>,
    pub(crate) pipeline: Arc<EdgePipeline>,
    pub(crate) limits: Limits,
    pub(crate) metrics: EventsMetrics,
    per_address: Mutex<HashMap<IpAddr, usize>>,
    connections: AtomicUsize,
}

/// The listener's limits.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) max_connections: usize,
    pub(crate) max_per_address: usize,
    pub(crate) keepalive: Duration,
    pub(crate) send_timeout: Duration,
    pub(crate) replay_limit: usize,
}

/// The listener's counters.
pub(crate) struct EventsMetrics {
    connections: IntGaugeVec,
    sent: IntCounter,
    dropped: IntCounterVec,
    refused: IntCounterVec,
}

impl EventsMetrics {
    pub(crate) fn register(metrics: &cascade_serve::Metrics) -> anyhow::Result<EventsMetrics> {
        let r = metrics.registry();
        let connections = IntGaugeVec::new(
            Opts::new(
                "edge_events_connections",
                "Real-time connections held, by transport",
            ),
            &["transport"],
        )?;
        let sent = IntCounter::new(
            "edge_events_sent_total",
            "Messages written to viewers' real-time connections",
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "edge_events_dropped_total",
                "Real-time connections the edge closed, by reason",
            ),
            &["reason"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "edge_events_refused_total",
                "Real-time connections and reactions refused, by reason",
            ),
            &["reason"],
        )?;
        r.register(Box::new(connections.clone()))?;
        r.register(Box::new(sent.clone()))?;
        r.register(Box::new(dropped.clone()))?;
        r.register(Box::new(refused.clone()))?;
        Ok(EventsMetrics {
            connections,
            sent,
            dropped,
            refused,
        })
    }
}

impl Events {
    pub(crate) fn new(
        hub: Arc<Hub>,
        reactions: Arc<Reactions>,
        pipeline: Arc<EdgePipeline>,
        limits: Limits,
        metrics: EventsMetrics,
    ) -> Events {
        Events {
            hub,
            reactions,
            pipeline,
            limits,
            metrics,
            per_address: Mutex::new(HashMap::new()),
            connections: AtomicUsize::new(0),
        }
    }

    /// Real-time connections held now.
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }
}

/// Accepts connections until `stop` turns true; then closes every held
/// connection.
pub(crate) fn serve(
    listener: TcpListener,
    events: Arc<Events>,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut stop_accept = stop.clone();
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors, most likely: wait, do not spin.
                        tracing::warn!(error = %e, "events accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop_accept.changed() => return,
            };
            let events = events.clone();
            let stop = stop.clone();
            tokio::spawn(async move { connection(events, tcp, peer, stop).await });
        }
    })
}

/// A held connection's place in the counts, given back when it ends.
struct Slot {
    events: Arc<Events>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.events.connections.fetch_sub(1, Ordering::AcqRel);
        let mut per = self
            .events
            .per_address
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.ip);
            }
        }
    }
}

fn take_slot(events: &Arc<Events>, ip: IpAddr) -> Result<Slot, &'static str> {
    let mut per = events.per_address.lock().unwrap_or_else(|e| e.into_inner());
    if events.connections.load(Ordering::Acquire) >= events.limits.max_connections {
        return Err("full");
    }
    let n = per.entry(ip).or_insert(0);
    if *n >= events.limits.max_per_address {
        return Err("per_address");
    }
    *n += 1;
    events.connections.fetch_add(1, Ordering::AcqRel);
    Ok(Slot {
        events: events.clone(),
        ip,
    })
}

/// A parsed request head.
struct Head {
    method: Method,
    path: String,
    query: String,
    headers: HeaderMap,
    /// Bytes read past the head (the start of a body).
    rest: Vec<u8>,
}

async fn connection(
    events: Arc<Events>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let slot = match take_slot(&events, peer.ip()) {
        Ok(s) => s,
        Err(why) => {
            events.metrics.refused.with_label_values(&[why]).inc();
            // The request is read (for a second at most) before the answer,
            // so that a client still sending it gets the 503, not a reset.
            let _ = tokio::time::timeout(Duration::from_secs(1), read_head(&mut tcp)).await;
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                write_answer(
                    &mut tcp,
                    StatusCode::SERVICE_UNAVAILABLE,
                    &[("retry-after", "5")],
                    error_json("busy", "too many real-time connections; retry shortly"),
                ),
            )
            .await;
            return;
        }
    };
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut tcp)).await {
        Ok(Ok(h)) => h,
        Ok(Err(status)) => {
            let _ = write_answer(
                &mut tcp,
                status,
                &[],
                error_json("bad_request", "not a request this listener takes"),
            )
            .await;
            return;
        }
        Err(_) => return,
    };
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    if head.method == Method::GET && head.path == "/healthz" {
        let _ = write_answer(&mut tcp, StatusCode::OK, &[], Bytes::from_static(b"ok\n")).await;
        return;
    }
    let Some((scope, react)) = route(&head.path) else {
        let _ = write_answer(
            &mut tcp,
            StatusCode::NOT_FOUND,
            &[],
            error_json("not_found", "no such path"),
        )
        .await;
        return;
    };
    if head.method == Method::OPTIONS {
        let _ = write_answer(
            &mut tcp,
            StatusCode::NO_CONTENT,
            &[
                ("access-control-allow-methods", "GET, POST, OPTIONS"),
                (
                    "access-control-allow-headers",
                    "content-type, last-event-id, __token__",
                ),
                ("access-control-max-age", "600"),
            ],
            Bytes::new(),
        )
        .await;
        return;
    }
    let req = Request {
        method: head.method.clone(),
        uri: format!("{}?{}", head.path, head.query)
            .parse()
            .unwrap_or_else(|_| http::Uri::from_static("/")),
        headers: head.headers.clone(),
        body: Bytes::new(),
        client: Some(peer),
        request_id: request_id.clone(),
        protocol: "http/1.1",
        secure: false,
    };
    let viewer = match admit(&events.pipeline, &req, &scope).await {
        Ok(v) => v,
        Err(resp) => {
            events
                .metrics
                .refused
                .with_label_values(&[refusal_label(resp.status)])
                .inc();
            let _ = write_answer(&mut tcp, resp.status, &[], resp.body).await;
            return;
        }
    };
    match (react, &head.method) {
        (true, &Method::POST) => {
            let (status, body) = react_post(&events, &mut tcp, &head, &scope, &viewer).await;
            let _ = write_answer(&mut tcp, status, &[], body).await;
        }
        (false, &Method::GET) => {
            let cursor = cursor_of(&head);
            let websocket = head
                .headers
                .get(http::header::UPGRADE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
            if websocket {
                websocket_session(events.clone(), tcp, head, scope, viewer, cursor, stop).await;
            } else {
                sse_session(events.clone(), tcp, scope, viewer, cursor, stop).await;
            }
        }
        _ => {
            let _ = write_answer(
                &mut tcp,
                StatusCode::METHOD_NOT_ALLOWED,
                &[],
                error_json("method", "GET to listen, POST …/react to react"),
            )
            .await;
        }
    }
    drop(slot);
}

/// `/events/{kind}/{id}` or `/events/{kind}/{id}/react`.
fn route(path: &str) -> Option<(Scope, bool)> {
    let rest = path.strip_prefix("/events/")?;
    let mut parts = rest.split('/');
    let kind = parts.next()?;
    let id = parts.next()?;
    let react = match parts.next() {
        None => false,
        Some("react") => true,
        Some(_) => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some((Scope::new(kind, id)?, react))
}

/// Who a let-in viewer is.
struct Viewer {
    /// Whose allowance reactions come from: the playback session, else
    /// the address.
    key: String,
    country: Option<String>,
}

/// The media rules: the scope's token, then its geo fence.
async fn admit(
    pipeline: &EdgePipeline,
    req: &Request,
    scope: &Scope,
) -> Result<Viewer, cascade_serve::Response> {
    let path = format!("{}events", scope.media_path());
    let grant = pipeline
        .auth
        .check(req, &path)
        .map_err(crate::auth::refusal)?;
    let country = pipeline.geofence.country(req);
    let (key, meta) = match scope {
        Scope::Live(ch) => (format!("live:{ch}"), format!("/live-mezz/{ch}/meta.json")),
        Scope::Vod(asset) => (asset.clone(), format!("/mezz/{asset}/meta.json")),
    };
    pipeline
        .geofence
        .check(
            country.as_deref(),
            &path,
            (&key, &meta),
            &pipeline.media,
            &req.request_id,
        )
        .await?;
    let key = grant.session.clone().unwrap_or_else(|| {
        req.client
            .map_or_else(|| "unknown".into(), |a| a.ip().to_string())
    });
    Ok(Viewer { key, country })
}

fn refusal_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 | 403 => "token",
        451 => "geo",
        503 => "unavailable",
        _ => "other",
    }
}

/// Where a reconnecting viewer was: `{scope sequence}-{flash sequence}`.
fn cursor_of(head: &Head) -> Option<(u64, u64)> {
    let from_query = head
        .query
        .split('&')
        .find_map(|kv| kv.strip_prefix("last_event_id="));
    let raw = head
        .headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(from_query)?;
    let (s, f) = raw.split_once('-')?;
    Some((s.parse().ok()?, f.parse().ok()?))
}

async fn read_head(tcp: &mut TcpStream) -> Result<Head, StatusCode> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = tcp
            .read(&mut chunk)
            .await
            .map_err(|_| StatusCode::BAD_REQUEST)?;
        if n == 0 {
            return Err(StatusCode::BAD_REQUEST);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut fields);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let method = parsed
                    .method
                    .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
                    .ok_or(StatusCode::BAD_REQUEST)?;
                let target = parsed.path.ok_or(StatusCode::BAD_REQUEST)?;
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let mut headers = HeaderMap::new();
                for f in parsed.headers.iter() {
                    let name = HeaderName::from_bytes(f.name.as_bytes())
                        .map_err(|_| StatusCode::BAD_REQUEST)?;
                    let value =
                        HeaderValue::from_bytes(f.value).map_err(|_| StatusCode::BAD_REQUEST)?;
                    headers.append(name, value);
                }
                return Ok(Head {
                    method,
                    path: path.to_string(),
                    query: query.to_string(),
                    headers,
                    rest: buf[len..].to_vec(),
                });
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
            }
            Err(_) => return Err(StatusCode::BAD_REQUEST),
        }
    }
}

fn error_json(code: &str, message: &str) -> Bytes {
    Bytes::from(format!(
        "{}\n",
        serde_json::json!({ "error": code, "message": message })
    ))
}

/// Writes a whole answer and ends the exchange (the connection closes).
async fn write_answer(
    tcp: &mut TcpStream,
    status: StatusCode,
    extra: &[(&str, &str)],
    body: Bytes,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ncontent-length: {}\r\naccess-control-allow-origin: *\r\ncache-control: no-store\r\nconnection: close\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    if !body.is_empty() && !body.starts_with(b"ok") {
        head.push_str("content-type: application/json\r\n");
    }
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(&body).await?;
    tcp.shutdown().await
}

/// A reaction as viewers send it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct React {
    react: String,
    #[serde(default = "one")]
    count: u32,
}

fn one() -> u32 {
    1
}

/// Counts a reaction; the status and body for the viewer.
fn take_reaction(
    events: &Events,
    scope: &Scope,
    bucket: &Mutex<reactions::Bucket>,
    body: &[u8],
) -> Result<(), (StatusCode, &'static str, String)> {
    let r: React = serde_json::from_slice(body).map_err(|_| {
        (
            StatusCode::BAD_REQUEST,
            "bad_reaction",
            "a reaction is {\"react\": name, \"count\": 1 to 50}".to_string(),
        )
    })?;
    let Some(i) = reaction_index(&r.react) else {
        events
            .metrics
            .refused
            .with_label_values(&["bad_reaction"])
            .inc();
        return Err((
            StatusCode::BAD_REQUEST,
            "bad_reaction",
            format!("reactions are {}", cascade_bus::REACTIONS.join(", ")),
        ));
    };
    if !(1..=MAX_COUNT).contains(&r.count) {
        return Err((
            StatusCode::BAD_REQUEST,
            "bad_count",
            format!("count is 1 to {MAX_COUNT}"),
        ));
    }
    if !events.reactions.allow(bucket, r.count, Instant::now()) {
        events
            .reactions
            .refused
            .with_label_values(&["rate_limited"])
            .inc();
        return Err((
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many reactions; slow down".to_string(),
        ));
    }
    events.reactions.counts(scope).add(i, u64::from(r.count));
    events.reactions.accepted.inc_by(u64::from(r.count));
    Ok(())
}

async fn react_post(
    events: &Events,
    tcp: &mut TcpStream,
    head: &Head,
    scope: &Scope,
    viewer: &Viewer,
) -> (StatusCode, Bytes) {
    let len = head
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let Some(len) = len else {
        return (
            StatusCode::LENGTH_REQUIRED,
            error_json("length_required", "send a content-length"),
        );
    };
    if len > MAX_INBOUND {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            error_json("too_large", "a reaction is small"),
        );
    }
    let mut body = head.rest.clone();
    body.truncate(len);
    if body.len() < len {
        let mut more = vec![0; len - body.len()];
        if tokio::time::timeout(HEAD_TIMEOUT, tcp.read_exact(&mut more))
            .await
            .is_err()
        {
            return (
                StatusCode::REQUEST_TIMEOUT,
                error_json("timeout", "the body did not come"),
            );
        }
        body.extend_from_slice(&more);
    }
    let bucket = events.reactions.bucket(&viewer.key);
    match take_reaction(events, scope, &bucket, &body) {
        Ok(()) => (StatusCode::NO_CONTENT, Bytes::new()),
        Err((status, code, message)) => (status, error_json(code, &message)),
    }
}

/// What a new or returning viewer is sent first, and where its cursor
/// starts. Subscribes before reading what is kept, so that nothing falls
/// between the two (duplicates are skipped by sequence instead).
struct Start {
    backlog: Vec<Arc<Msg>>,
    scope_seq: u64,
    flash_seq: u64,
    topic_rx: broadcast::Receiver<Arc<Msg>>,
    flash_rx: broadcast::Receiver<Arc<Msg>>,
    /// Too much was missed to replay: the viewer should reload history.
    reset: bool,
}

async fn start(
    events: &Events,
    topic: &Topic,
    scope: &Scope,
    viewer: &Viewer,
    cursor: Option<(u64, u64)>,
) -> Result<Start, ()> {
    if !topic.ready(READY_WAIT).await {
        return Err(());
    }
    let flash_rx = events.hub.flashes.tx.subscribe();
    let now = cascade_serve::unix_now_ms() as i64;
    let country = viewer.country.as_deref();
    let Some((s0, f0)) = cursor else {
        // A new viewer: the flashes up now; history comes from the API.
        let (topic_rx, scope_seq) = topic.subscribe_at_head();
        let flash_seq = events.hub.flashes.last();
        let backlog = events.hub.flashes.for_viewer(country, scope, 0, now);
        return Ok(Start {
            backlog,
            scope_seq,
            flash_seq,
            topic_rx,
            flash_rx,
            reset: false,
        });
    };
    // A returning viewer: subscribed first, then what it missed; what is in
    // both is skipped by sequence.
    let topic_rx = topic.tx.subscribe();
    let mut backlog = Vec::new();
    let mut reset = false;
    let mut scope_seq = s0;
    match topic.kept_after(s0) {
        Some(kept) => backlog.extend(kept),
        None => {
            let replay = events
                .hub
                .bus()
                .replay(&scope.stored_subject(), s0, events.limits.replay_limit)
                .await
                .map_err(|e| tracing::warn!(error = %e, "replay failed"))?;
            if replay.truncated {
                reset = true;
            } else {
                let mut last = s0;
                for e in &replay.events {
                    last = e.seq;
                    if let Some(m) = msg_of(e) {
                        backlog.push(Arc::new(m));
                    }
                }
                backlog.extend(topic.kept_after(last).unwrap_or_default());
            }
        }
    }
    if reset {
        scope_seq = topic.head();
    } else if let Some(last) = backlog.iter().map(|m| m.seq).max() {
        scope_seq = scope_seq.max(last);
    }
    let flashes = events.hub.flashes.for_viewer(country, scope, f0, now);
    let flash_seq = flashes.iter().map(|m| m.seq).max().unwrap_or(f0).max(f0);
    backlog.extend(flashes);
    Ok(Start {
        backlog,
        scope_seq,
        flash_seq,
        topic_rx,
        flash_rx,
        reset,
    })
}

/// Joins the scope and finds where the viewer starts; when the bus cannot
/// be followed, answers 503 and gives up.
async fn begin(
    events: &Events,
    tcp: &mut TcpStream,
    scope: &Scope,
    viewer: &Viewer,
    cursor: Option<(u64, u64)>,
) -> Option<(hub::Membership, Start)> {
    let membership = events.hub.join(scope);
    match start(events, &membership.topic, scope, viewer, cursor).await {
        Ok(st) => Some((membership, st)),
        Err(()) => {
            let _ = write_answer(
                tcp,
                StatusCode::SERVICE_UNAVAILABLE,
                &[("retry-after", "2")],
                error_json(
                    "bus_unavailable",
                    "real-time events are unavailable; retry shortly",
                ),
            )
            .await;
            None
        }
    }
}

impl Start {
    /// The next message for the viewer from its scope or the flashes.
    async fn next_message(&mut self) -> Wake {
        let (m, is_flash) = tokio::select! {
            m = self.topic_rx.recv() => (m, false),
            m = self.flash_rx.recv() => (m, true),
        };
        match m {
            Ok(m) => Wake::Send(m, is_flash),
            Err(broadcast::error::RecvError::Lagged(_)) => Wake::Lagged,
            Err(broadcast::error::RecvError::Closed) => Wake::Closed,
        }
    }
}

fn msg_of(e: &cascade_bus::Event) -> Option<Msg> {
    let v: serde_json::Value = serde_json::from_slice(&e.payload).ok()?;
    Some(Msg {
        seq: e.seq,
        kind: v.get("type")?.as_str()?.to_string(),
        json: e.payload.clone(),
        flash: None,
    })
}

/// A viewer's place: the last stored sequence sent for its scope and for
/// flashes.
struct Cursor {
    scope: u64,
    flash: u64,
}

impl Cursor {
    fn id(&self) -> String {
        format!("{}-{}", self.scope, self.flash)
    }

    /// Moves the cursor past a message of the backlog (already past it).
    fn note(&mut self, m: &Msg) {
        if m.seq > 0 {
            let last = if m.flash.is_some() {
                &mut self.flash
            } else {
                &mut self.scope
            };
            *last = (*last).max(m.seq);
        }
    }

    /// Whether a message is for this viewer (a flash for its country and
    /// scope) and new to it (moving the cursor if stored).
    fn wants(&mut self, m: &Msg, is_flash: bool, country: Option<&str>, scope: &Scope) -> bool {
        (!is_flash || flash_reaches(m, country, scope)) && self.admit(m, is_flash)
    }

    /// Whether `m` is new to this viewer (moving the cursor if stored).
    fn admit(&mut self, m: &Msg, is_flash: bool) -> bool {
        if m.seq == 0 {
            return true;
        }
        let last = if is_flash {
            &mut self.flash
        } else {
            &mut self.scope
        };
        if m.seq <= *last {
            return false;
        }
        *last = m.seq;
        true
    }
}

/// What a connection's loop was woken by.
enum Wake {
    Send(Arc<Msg>, bool),
    Lagged,
    Keepalive,
    Closed,
    Stop,
    Inbound(Vec<u8>),
}

async fn sse_session(
    events: Arc<Events>,
    mut tcp: TcpStream,
    scope: Scope,
    viewer: Viewer,
    cursor: Option<(u64, u64)>,
    mut stop: watch::Receiver<bool>,
) {
    let Some((_membership, mut st)) = begin(&events, &mut tcp, &scope, &viewer, cursor).await
    else {
        return;
    };
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-store\r\naccess-control-allow-origin: *\r\nx-accel-buffering: no\r\nconnection: close\r\n\r\nretry: 2000\n\n";
    let timeout = events.limits.send_timeout;
    if tokio::time::timeout(timeout, tcp.write_all(head.as_bytes()))
        .await
        .map_or(true, |r| r.is_err())
    {
        return;
    }
    let gauge = events.metrics.connections.with_label_values(&["sse"]);
    gauge.inc();
    let _gauge = GaugeGuard(gauge);
    let (mut rd, mut wr) = tcp.into_split();
    let mut cur = Cursor {
        scope: st.scope_seq,
        flash: st.flash_seq,
    };
    if st.reset {
        let frame = format!(
            "id: {}\nevent: reset\ndata: {{\"type\":\"reset\"}}\n\n",
            cur.id()
        );
        if !send_timed(&mut wr, frame.as_bytes(), timeout).await {
            return;
        }
    }
    for m in std::mem::take(&mut st.backlog) {
        cur.note(&m);
        if !send_timed(&mut wr, &sse_frame(&m, Some(&cur)), timeout).await {
            events.metrics.dropped.with_label_values(&["slow"]).inc();
            return;
        }
        events.metrics.sent.inc();
    }
    let mut keepalive = tokio::time::interval(events.limits.keepalive);
    keepalive.reset();
    let mut probe = [0u8; 64];
    loop {
        let wake = tokio::select! {
            w = st.next_message() => w,
            _ = keepalive.tick() => Wake::Keepalive,
            r = rd.read(&mut probe) => match r {
                // An SSE client sends nothing after its request; anything
                // it sends is ignored, and its end is the end.
                Ok(n) if n > 0 => Wake::Inbound(Vec::new()),
                _ => Wake::Closed,
            },
            _ = stop.changed() => Wake::Stop,
        };
        let frame = match wake {
            Wake::Send(m, is_flash) => {
                if !cur.wants(&m, is_flash, viewer.country.as_deref(), &scope) {
                    continue;
                }
                sse_frame(&m, Some(&cur))
            }
            Wake::Keepalive => b": keep-alive\n\n".to_vec(),
            Wake::Inbound(_) => continue,
            Wake::Lagged => {
                events.metrics.dropped.with_label_values(&["lagged"]).inc();
                return;
            }
            Wake::Closed | Wake::Stop => return,
        };
        if !send_timed(&mut wr, &frame, timeout).await {
            events.metrics.dropped.with_label_values(&["slow"]).inc();
            return;
        }
        events.metrics.sent.inc();
    }
}

struct GaugeGuard(prometheus::IntGauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn flash_reaches(m: &Msg, country: Option<&str>, scope: &Scope) -> bool {
    m.flash
        .as_ref()
        .is_some_and(|(t, _)| t.reaches(country, scope))
}

/// `id:` (stored events only), `event:` and `data:` lines.
fn sse_frame(m: &Msg, cur: Option<&Cursor>) -> Vec<u8> {
    let mut f = Vec::with_capacity(m.json.len() + 64);
    if let (true, Some(c)) = (m.seq > 0, cur) {
        f.extend_from_slice(b"id: ");
        f.extend_from_slice(c.id().as_bytes());
        f.push(b'\n');
    }
    f.extend_from_slice(b"event: ");
    f.extend_from_slice(m.kind.as_bytes());
    f.extend_from_slice(b"\ndata: ");
    // JSON from serde_json holds no raw newline, so one data line holds it.
    f.extend_from_slice(&m.json);
    f.extend_from_slice(b"\n\n");
    f
}

async fn send_timed(
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    bytes: &[u8],
    timeout: Duration,
) -> bool {
    matches!(
        tokio::time::timeout(timeout, wr.write_all(bytes)).await,
        Ok(Ok(()))
    )
}

async fn ws_send(ws: &mut WebSocketStream<TcpStream>, timeout: Duration, text: String) -> bool {
    matches!(
        tokio::time::timeout(timeout, ws.send(Message::text(text))).await,
        Ok(Ok(()))
    )
}

/// `{"cursor": "…", "event": {…}}` (the cursor for stored events only).
fn ws_text(m: &Msg, cur: &Cursor) -> String {
    let json = std::str::from_utf8(&m.json).unwrap_or("{}");
    if m.seq > 0 {
        format!("{{\"cursor\":\"{}\",\"event\":{json}}}", cur.id())
    } else {
        format!("{{\"event\":{json}}}")
    }
}

async fn websocket_session(
    events: Arc<Events>,
    mut tcp: TcpStream,
    head: Head,
    scope: Scope,
    viewer: Viewer,
    cursor: Option<(u64, u64)>,
    mut stop: watch::Receiver<bool>,
) {
    let key = head
        .headers
        .get("sec-websocket-key")
        .map(|v| v.as_bytes().to_vec());
    let version_ok = head
        .headers
        .get("sec-websocket-version")
        .is_some_and(|v| v.as_bytes() == b"13");
    let Some(key) = key.filter(|_| version_ok) else {
        let _ = write_answer(
            &mut tcp,
            StatusCode::BAD_REQUEST,
            &[("sec-websocket-version", "13")],
            error_json(
                "bad_websocket",
                "a WebSocket upgrade needs Sec-WebSocket-Key and version 13",
            ),
        )
        .await;
        return;
    };
    let Some((_membership, mut st)) = begin(&events, &mut tcp, &scope, &viewer, cursor).await
    else {
        return;
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
    );
    let timeout = events.limits.send_timeout;
    if tokio::time::timeout(timeout, tcp.write_all(answer.as_bytes()))
        .await
        .map_or(true, |r| r.is_err())
    {
        return;
    }
    // Small buffers: most of a connection's life is idle, and viewers send
    // only reactions.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(Some(MAX_INBOUND))
        .max_frame_size(Some(MAX_INBOUND));
    let mut ws = WebSocketStream::from_raw_socket(tcp, Role::Server, Some(config)).await;
    let gauge = events.metrics.connections.with_label_values(&["websocket"]);
    gauge.inc();
    let _gauge = GaugeGuard(gauge);
    let mut cur = Cursor {
        scope: st.scope_seq,
        flash: st.flash_seq,
    };
    if st.reset
        && !ws_send(
            &mut ws,
            timeout,
            format!(
                "{{\"cursor\":\"{}\",\"event\":{{\"type\":\"reset\"}}}}",
                cur.id()
            ),
        )
        .await
    {
        return;
    }
    for m in std::mem::take(&mut st.backlog) {
        cur.note(&m);
        if !ws_send(&mut ws, timeout, ws_text(&m, &cur)).await {
            events.metrics.dropped.with_label_values(&["slow"]).inc();
            return;
        }
        events.metrics.sent.inc();
    }
    let bucket = events.reactions.bucket(&viewer.key);
    let mut keepalive = tokio::time::interval(events.limits.keepalive);
    keepalive.reset();
    let mut last_error = Instant::now() - Duration::from_secs(10);
    loop {
        let wake = tokio::select! {
            w = st.next_message() => w,
            _ = keepalive.tick() => Wake::Keepalive,
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => Wake::Inbound(t.as_bytes().to_vec()),
                Some(Ok(Message::Binary(b))) => Wake::Inbound(b.to_vec()),
                Some(Ok(Message::Close(_))) | None => Wake::Closed,
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    // Oversized or malformed frames end the connection.
                    tracing::debug!(error = %e, "websocket read failed");
                    events.metrics.dropped.with_label_values(&["protocol"]).inc();
                    Wake::Closed
                }
            },
            _ = stop.changed() => Wake::Stop,
        };
        let ok = match wake {
            Wake::Send(m, is_flash) => {
                if !cur.wants(&m, is_flash, viewer.country.as_deref(), &scope) {
                    continue;
                }
                let ok = ws_send(&mut ws, timeout, ws_text(&m, &cur)).await;
                if ok {
                    events.metrics.sent.inc();
                }
                ok
            }
            Wake::Keepalive => {
                matches!(
                    tokio::time::timeout(timeout, ws.send(Message::Ping(Bytes::new()))).await,
                    Ok(Ok(()))
                )
            }
            Wake::Inbound(body) => match take_reaction(&events, &scope, &bucket, &body) {
                Ok(()) => true,
                Err((_, code, message)) => {
                    // One error a second at most: a flood is not answered
                    // in kind.
                    if last_error.elapsed() >= Duration::from_secs(1) {
                        last_error = Instant::now();
                        let e = serde_json::json!({ "event": { "type": "error", "error": code, "message": message } });
                        ws_send(&mut ws, timeout, e.to_string()).await
                    } else {
                        true
                    }
                }
            },
            Wake::Lagged => {
                events.metrics.dropped.with_label_values(&["lagged"]).inc();
                let _ = ws.close(None).await;
                return;
            }
            Wake::Closed => return,
            Wake::Stop => {
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                return;
            }
        };
        if !ok {
            events.metrics.dropped.with_label_values(&["slow"]).inc();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_name_a_scope_and_maybe_react() {
        assert_eq!(
            route("/events/live/final"),
            Some((Scope::Live("final".into()), false))
        );
        assert_eq!(
            route("/events/vod/abc/react"),
            Some((Scope::Vod("abc".into()), true))
        );
        assert_eq!(route("/events/live/final/other"), None);
        assert_eq!(route("/events/radio/x"), None);
        assert_eq!(route("/events/live/a.b"), None);
        assert_eq!(route("/live/final"), None);
    }

    #[test]
    fn a_cursor_moves_only_forward_and_skips_what_was_sent() {
        let mut c = Cursor { scope: 5, flash: 2 };
        let m = |seq| Msg {
            seq,
            kind: "comment".into(),
            json: Bytes::from_static(b"{}"),
            flash: None,
        };
        assert!(!c.admit(&m(5), false));
        assert!(c.admit(&m(7), false));
        assert!(!c.admit(&m(6), false));
        assert!(c.admit(&m(0), false), "notices always pass");
        assert!(c.admit(&m(3), true));
        assert_eq!(c.id(), "7-3");
    }

    #[test]
    fn sse_frames_carry_ids_for_stored_events_only() {
        let c = Cursor { scope: 9, flash: 1 };
        let stored = Msg {
            seq: 9,
            kind: "comment".into(),
            json: Bytes::from_static(b"{\"type\":\"comment\"}"),
            flash: None,
        };
        assert_eq!(
            sse_frame(&stored, Some(&c)),
            b"id: 9-1\nevent: comment\ndata: {\"type\":\"comment\"}\n\n".to_vec()
        );
        let notice = Msg {
            seq: 0,
            kind: "swarm".into(),
            json: Bytes::from_static(b"{}"),
            flash: None,
        };
        assert_eq!(
            sse_frame(&notice, Some(&c)),
            b"event: swarm\ndata: {}\n\n".to_vec()
        );
    }
}
