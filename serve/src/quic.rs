//! The HTTP/3 listener: quinn for QUIC, h3 for HTTP/3. It adapts requests
//! and responses and nothing more; the policy is the role's [`Handler`],
//! called through the same [`Front`] as the TCP listener, so tokens, geo,
//! the cache, packaging, `Cache-Status`, metrics and the access log are one
//! code path whatever the protocol.
//!
//! Each request stream runs in its own task and writes its body in chunks,
//! each awaiting QUIC flow control: a slow reader holds back its own stream
//! only, and a large object is never copied whole.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use h3::error::Code;
use h3::server::{RequestResolver, RequestStream};
use http::{HeaderValue, Method, StatusCode, Uri};
use prometheus::{IntCounterVec, IntGauge, Opts};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::listener::{Front, Served};
use crate::pipeline::Exchange;
use crate::tls::CertStore;
use crate::writer::{write_response, Abort, Sink};
use crate::Metrics;
use crate::{Handler, Request, Response};

/// Body bytes handed to QUIC at a time: each piece waits for flow control.
const CHUNK: usize = 64 * 1024;
/// How long a request made in 0-RTT with an unsafe method waits for the
/// handshake before it is refused with 425 Too Early.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(10);

/// How long a connection stays open after its last request, waiting for
/// the client to close it, so that the last bytes sent are not discarded.
const LINGER: Duration = Duration::from_secs(2);
/// The application close code for a clean close (RFC 9114 §8.1).
const H3_NO_ERROR: quinn::VarInt = quinn::VarInt::from_u32(0x100);

/// Limits and switches of the HTTP/3 listener.
#[derive(Debug, Clone)]
pub struct H3Config {
    /// The cache name used in `Cache-Status` and logs, such as `cascade-edge`.
    pub role: &'static str,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Most QUIC connections open at once; more are refused.
    pub max_connections: usize,
    /// Concurrent request streams a client may open on one connection.
    pub max_streams: u32,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Largest request header section (QPACK-decoded), in bytes.
    pub max_header_bytes: u64,
    /// Accept 0-RTT data. Replayable, so only GET and HEAD are answered
    /// before the handshake completes; other methods wait for it.
    pub allow_0rtt: bool,
    /// A stream whose reader takes nothing for this long is reset.
    pub send_timeout: Duration,
    /// On shutdown, how long open requests may take to finish.
    pub drain: Duration,
    /// An `Alt-Svc` value for every response.
    pub alt_svc: Option<HeaderValue>,
    /// How long a request stream may take to send its headers.
    pub header_timeout: Duration,
    /// Who may read `/metrics`.
    pub metrics_access: crate::MetricsAccess,
}

impl H3Config {
    /// Defaults for a role.
    pub fn new(role: &'static str) -> Self {
        H3Config {
            role,
            max_body_bytes: 1024 * 1024,
            max_connections: 10_000,
            max_streams: 100,
            idle_timeout: Duration::from_secs(30),
            max_header_bytes: 16 * 1024,
            allow_0rtt: false,
            send_timeout: Duration::from_secs(30),
            drain: Duration::from_secs(10),
            alt_svc: None,
            header_timeout: Duration::from_secs(10),
            metrics_access: crate::MetricsAccess::default(),
        }
    }
}

/// A running HTTP/3 listener.
pub struct H3Handle {
    /// The bound UDP address.
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl H3Handle {
    /// Stops taking connections, tells clients with GOAWAY, lets open
    /// requests finish (up to the drain time) and closes the endpoint.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// Serves `handler` over HTTP/3 on `socket` until shut down.
pub fn serve_h3(
    socket: std::net::UdpSocket,
    certs: Arc<CertStore>,
    handler: Arc<dyn Handler>,
    metrics: Arc<Metrics>,
    cfg: H3Config,
) -> std::io::Result<H3Handle> {
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(certs.quic_config(cfg.allow_0rtt))
            .map_err(std::io::Error::other)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(cfg.max_streams.into());
    // A client opens three unidirectional streams (control, QPACK encoder
    // and decoder); a few more leave room for grease.
    transport.max_concurrent_uni_streams(8u32.into());
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(cfg.idle_timeout).map_err(std::io::Error::other)?,
    ));
    server.transport_config(Arc::new(transport));
    socket.set_nonblocking(true)?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    let addr = endpoint.local_addr()?;
    let stats = Arc::new(ConnStats::register(&metrics));
    let front = Arc::new(Front::new(
        handler,
        metrics,
        cfg.role,
        cfg.alt_svc.clone(),
        cfg.metrics_access.clone(),
    ));
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(accept_loop(endpoint, front, stats, cfg, rx));
    Ok(H3Handle {
        addr,
        shutdown: tx,
        task,
    })
}

/// QUIC connection counts for `/metrics`.
struct ConnStats {
    /// Connections by outcome: accepted, refused (over the limit), failed (handshake).
    connections: IntCounterVec,
    /// Connections open now.
    open: IntGauge,
}

impl ConnStats {
    fn register(metrics: &Metrics) -> ConnStats {
        let connections = IntCounterVec::new(
            Opts::new(
                "h3_connections_total",
                "QUIC connections, by outcome: accepted, refused (over the limit), failed (handshake)",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let open = IntGauge::new("h3_connections_open", "QUIC connections open now")
            .expect("static metric definition");
        // A second HTTP/3 listener in the same registry would fail to
        // register; roles run one each.
        let _ = metrics.registry().register(Box::new(connections.clone()));
        let _ = metrics.registry().register(Box::new(open.clone()));
        ConnStats { connections, open }
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    front: Arc<Front>,
    stats: Arc<ConnStats>,
    cfg: H3Config,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(cfg.max_connections));
    let connections = TaskTracker::new();
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
            _ = stopped(&mut stop) => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            stats.connections.with_label_values(&["refused"]).inc();
            incoming.refuse();
            continue;
        };
        let front = front.clone();
        let stats = stats.clone();
        let cfg = cfg.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let _open = front.metrics.connection();
            connection(incoming, front, stats.clone(), cfg, stop).await;
            drop(permit);
        });
    }
    // Refuse new connections, let open ones finish what they started.
    endpoint.set_server_config(None);
    connections.close();
    if tokio::time::timeout(
        cfg.drain + LINGER + Duration::from_secs(1),
        connections.wait(),
    )
    .await
    .is_err()
    {
        tracing::warn!("HTTP/3 connections still open after the drain time");
    }
    endpoint.close(H3_NO_ERROR, b"");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
}

/// Serves one QUIC connection until it closes or the listener stops.
async fn connection(
    incoming: quinn::Incoming,
    front: Arc<Front>,
    stats: Arc<ConnStats>,
    cfg: H3Config,
    mut stop: watch::Receiver<bool>,
) {
    let peer = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            stats.connections.with_label_values(&["failed"]).inc();
            tracing::debug!(error = %e, %peer, "QUIC connection not accepted");
            return;
        }
    };
    // `handshake` turns true once the handshake is complete: until then,
    // requests may be 0-RTT data, which an attacker can replay.
    let (conn, handshake) = if cfg.allow_0rtt {
        match connecting.into_0rtt() {
            Ok((conn, done)) => {
                let (tx, rx) = watch::channel(false);
                let watched = conn.clone();
                tokio::spawn(async move {
                    // `done` resolves when the handshake completes, and also
                    // when the connection dies first (quinn sets the close
                    // reason before). On the server its value means nothing.
                    // Dead first: the flag stays false and early requests
                    // are refused, never run.
                    let _ = done.await;
                    if watched.close_reason().is_none() {
                        let _ = tx.send(true);
                    }
                });
                (conn, rx)
            }
            Err(connecting) => match connecting.await {
                Ok(conn) => (conn, watch::channel(true).1),
                Err(e) => {
                    stats.connections.with_label_values(&["failed"]).inc();
                    tracing::debug!(error = %e, %peer, "QUIC handshake failed");
                    return;
                }
            },
        }
    } else {
        match connecting.await {
            Ok(conn) => (conn, watch::channel(true).1),
            Err(e) => {
                stats.connections.with_label_values(&["failed"]).inc();
                tracing::debug!(error = %e, %peer, "QUIC handshake failed");
                return;
            }
        }
    };
    stats.connections.with_label_values(&["accepted"]).inc();
    stats.open.inc();
    let mut h3 = match h3::server::builder()
        .max_field_section_size(cfg.max_header_bytes)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn.clone()))
        .await
    {
        Ok(h3) => h3,
        Err(e) => {
            stats.open.dec();
            tracing::debug!(error = %e, %peer, "HTTP/3 connection setup failed");
            return;
        }
    };
    let requests = TaskTracker::new();
    // Set once the listener stops: the time by which open requests must end.
    let mut drain_by: Option<tokio::time::Instant> = None;
    loop {
        let deadline = drain_by.unwrap_or_else(|| tokio::time::Instant::now() + cfg.drain);
        tokio::select! {
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => {
                    let ctx = StreamCtx {
                        front: front.clone(),
                        cfg: cfg.clone(),
                        peer,
                        handshake: handshake.clone(),
                    };
                    requests.spawn(request(resolver, ctx));
                }
                Ok(None) => break,
                Err(e) => {
                    if !e.is_h3_no_error() {
                        tracing::debug!(error = %e, %peer, "HTTP/3 connection ended");
                    }
                    break;
                }
            },
            _ = stopped(&mut stop), if drain_by.is_none() => {
                // GOAWAY: the client opens no new requests here; any it sent
                // meanwhile are refused by h3 as the connection keeps being
                // polled, so the client may retry them elsewhere. Those
                // already accepted go on.
                drain_by = Some(tokio::time::Instant::now() + cfg.drain);
                requests.close();
                // One past the last accepted request: GOAWAY names the first
                // stream *not* processed (RFC 9114 §5.2), and those accepted are.
                if h3.shutdown(1).await.is_err() {
                    break;
                }
            }
            _ = requests.wait(), if drain_by.is_some() => break,
            _ = tokio::time::sleep_until(deadline), if drain_by.is_some() => break,
        }
    }
    requests.close();
    let by = drain_by.unwrap_or_else(|| tokio::time::Instant::now() + cfg.idle_timeout);
    if tokio::time::timeout_at(by, requests.wait()).await.is_err() {
        tracing::debug!(%peer, "HTTP/3 requests cut off at the drain time");
    }
    // A response's last bytes may still be unacknowledged when its task
    // ends, and closing a QUIC connection discards them: give the client a
    // moment to close first, as it does once it has its answers and the
    // GOAWAY.
    let linger = tokio::time::Instant::now() + LINGER;
    let _ = tokio::time::timeout_at(linger, conn.closed()).await;
    conn.close(H3_NO_ERROR, b"");
    drop(h3);
    stats.open.dec();
}

/// What a request task needs from its connection.
struct StreamCtx {
    front: Arc<Front>,
    cfg: H3Config,
    peer: SocketAddr,
    handshake: watch::Receiver<bool>,
}

type Stream = RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// Serves one request stream.
async fn request(resolver: RequestResolver<h3_quinn::Connection, Bytes>, mut ctx: StreamCtx) {
    let started = Instant::now();
    let resolved = tokio::time::timeout(ctx.cfg.header_timeout, resolver.resolve_request());
    let (req, mut stream) = match resolved.await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, peer = %ctx.peer, "bad HTTP/3 request");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %ctx.peer, "HTTP/3 request headers not received in time");
            return;
        }
    };
    let (parts, ()) = req.into_parts();
    let request_id = Front::request_id(&parts.headers);
    let method = parts.method;
    // The pipeline sees what a TCP request gives it: the path and query, and
    // the authority as `Host`.
    let uri = parts
        .uri
        .path_and_query()
        .map(|pq| Uri::from(pq.clone()))
        .unwrap_or_else(|| Uri::from_static("/"));
    let mut headers = parts.headers;
    if let Some(authority) = parts.uri.authority() {
        if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
            headers.entry(http::header::HOST).or_insert(v);
        }
    }

    let early = if !is_safe(&method) && !*ctx.handshake.borrow() {
        // RFC 8470: a replayable request must not take effect twice; wait
        // for the handshake to prove the client is live.
        let confirmed = async { ctx.handshake.wait_for(|d| *d).await.is_ok() };
        match tokio::time::timeout(HANDSHAKE_WAIT, confirmed).await {
            Ok(true) => None,
            _ => Some(Response::error(
                StatusCode::from_u16(425).unwrap_or(StatusCode::BAD_REQUEST),
                "too_early",
                "request sent in 0-RTT; retry after the handshake",
            )),
        }
    } else {
        None
    };
    let exchange = match early {
        Some(r) => Exchange::from(r),
        None => match read_body(&mut stream, ctx.cfg.max_body_bytes).await {
            Ok(body) => {
                ctx.front
                    .answer(Request {
                        method: method.clone(),
                        uri: uri.clone(),
                        headers,
                        body,
                        client: Some(ctx.peer),
                        request_id: request_id.clone(),
                        protocol: "h3",
                        secure: true,
                    })
                    .await
            }
            Err(BodyError::TooLarge) => {
                // RFC 9114 §4.1.2: answer early and stop reading.
                stream.stop_sending(Code::H3_NO_ERROR);
                Exchange::from(Response::error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "request body over the limit",
                ))
            }
            Err(BodyError::Stream) => return,
        },
    };
    let Exchange { response, log } = exchange;
    let status = response.status;
    let cache = Front::cache_label(&response);
    let mut sink = H3Sink(&mut stream);
    let written = write_response(
        &mut sink,
        response,
        &method,
        &request_id,
        ctx.cfg.send_timeout,
    )
    .await;
    ctx.front.record(
        Served {
            request_id: &request_id,
            method: &method,
            path: uri.path(),
            status,
            cache,
            protocol: "h3",
            bytes: written.bytes,
            complete: written.complete,
            client: Some(ctx.peer),
            started,
        },
        log,
    );
}

/// Resolves once the listener is told to stop.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// What may be answered from 0-RTT data: reads only.
fn is_safe(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

enum BodyError {
    TooLarge,
    Stream,
}

async fn read_body(stream: &mut Stream, limit: usize) -> Result<Bytes, BodyError> {
    let mut body = BytesMut::new();
    loop {
        match stream.recv_data().await {
            Ok(Some(mut chunk)) => {
                if body.len() + chunk.remaining() > limit {
                    return Err(BodyError::TooLarge);
                }
                while chunk.has_remaining() {
                    let piece = chunk.chunk();
                    body.extend_from_slice(piece);
                    let n = piece.len();
                    chunk.advance(n);
                }
            }
            Ok(None) => return Ok(body.freeze()),
            Err(e) => {
                tracing::debug!(error = %e, "reading an HTTP/3 request body");
                return Err(BodyError::Stream);
            }
        }
    }
}

/// HTTP/3 through h3: each piece of body waits for QUIC flow control, so
/// a slow reader holds back its own stream only. A broken response resets
/// the stream.
struct H3Sink<'a>(&'a mut Stream);

#[async_trait::async_trait]
impl Sink for H3Sink<'_> {
    fn max_piece(&self) -> usize {
        CHUNK
    }

    async fn head(&mut self, status: StatusCode, headers: http::HeaderMap) -> bool {
        let mut head = http::Response::new(());
        *head.status_mut() = status;
        *head.headers_mut() = headers;
        match self.0.send_response(head).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "sending HTTP/3 response headers");
                false
            }
        }
    }

    async fn data(&mut self, piece: Bytes, _last: bool) -> bool {
        match self.0.send_data(piece).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "HTTP/3 stream closed mid-body");
                false
            }
        }
    }

    async fn finish(&mut self) -> bool {
        match self.0.finish().await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "finishing an HTTP/3 response");
                false
            }
        }
    }

    fn abort(&mut self, why: Abort) {
        self.0.stop_stream(match why {
            Abort::Upstream => Code::H3_INTERNAL_ERROR,
            Abort::Stalled => Code::H3_REQUEST_CANCELLED,
        });
    }
}
