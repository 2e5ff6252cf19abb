//! The HTTP/1.1 and HTTP/2 listener, in clear (h2c) or over TLS: our accept
//! loop hands each TCP connection to Pingora's HTTP sessions, which handle
//! framing, keep-alive and HTTP/2. We own the accept loop rather than
//! Pingora's `Server` so that several roles share one process (`cascade
//! dev`), tests bind ephemeral ports, and shutdown is a watch channel we
//! control.
//!
//! What every listener does around the handler (request ids, `/healthz`,
//! `/metrics`, `Alt-Svc`, metrics and the access log) lives in [`Front`],
//! which the HTTP/3 listener shares: a listener only adapts a protocol.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use pingora_core::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest};
use pingora_core::server::ShutdownWatch;
use pingora_http::ResponseHeader;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::tls::CertStore;
use crate::{valid_request_id, Handler, Request, Response, REQUEST_ID};

/// How long a client may take over its TLS handshake.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// Limits of one listener.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// The cache name used in `Cache-Status` and logs, such as `cascade-edge`.
    pub role: &'static str,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Most connections open at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Idle keep-alive time, in seconds.
    pub keepalive_secs: u64,
    /// Serve TLS with this certificate store (ALPN `h2`, `http/1.1`).
    pub tls: Option<Arc<CertStore>>,
    /// An `Alt-Svc` value for every response, announcing HTTP/3.
    pub alt_svc: Option<HeaderValue>,
}

impl ListenerConfig {
    /// Defaults for a role.
    pub fn new(role: &'static str) -> Self {
        ListenerConfig {
            role,
            max_body_bytes: 1024 * 1024,
            max_connections: 10_000,
            keepalive_secs: 60,
            tls: None,
            alt_svc: None,
        }
    }
}

/// A running listener.
pub struct ServerHandle {
    /// The bound address.
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
    inflight: Arc<InFlight>,
}

impl ServerHandle {
    /// Stops accepting and waits for the requests being answered to finish,
    /// up to [`DRAIN`]. Idle keep-alive connections are not waited for:
    /// they close after their next request or their keep-alive time.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        let deadline = tokio::time::Instant::now() + DRAIN;
        loop {
            let idle = self.inflight.idle.notified();
            if self.inflight.count.load(Ordering::Acquire) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                tracing::warn!(
                    requests = self.inflight.count.load(Ordering::Acquire),
                    "requests still being answered after the drain time"
                );
                break;
            }
        }
    }
}

/// How long shutdown waits for the requests being answered.
const DRAIN: Duration = Duration::from_secs(10);

/// Requests being answered now, so that shutdown can wait for them.
#[derive(Default)]
struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

/// One request being answered; dropping it counts the request done.
struct InFlightGuard(Arc<InFlight>);

impl InFlightGuard {
    fn new(inflight: &Arc<InFlight>) -> InFlightGuard {
        inflight.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(inflight.clone())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// What every listener does around the handler. A listener turns its
/// protocol's request into a [`Request`], calls [`Front::answer`], writes the
/// [`Response`] its own way and reports it with [`Front::record`].
pub(crate) struct Front {
    handler: Arc<dyn Handler>,
    metrics: Arc<Metrics>,
    role: &'static str,
    alt_svc: Option<HeaderValue>,
}

/// One answered request, for metrics and the access log.
pub(crate) struct Served<'a> {
    pub(crate) request_id: &'a str,
    pub(crate) method: &'a Method,
    pub(crate) path: &'a str,
    pub(crate) status: StatusCode,
    pub(crate) cache: &'static str,
    pub(crate) protocol: &'static str,
    pub(crate) bytes: usize,
    pub(crate) client: Option<SocketAddr>,
    pub(crate) started: Instant,
}

impl Front {
    pub(crate) fn new(
        handler: Arc<dyn Handler>,
        metrics: Arc<Metrics>,
        role: &'static str,
        alt_svc: Option<HeaderValue>,
    ) -> Front {
        Front {
            handler,
            metrics,
            role,
            alt_svc,
        }
    }

    /// The caller's request id when it sent a well-formed one, else a new one.
    pub(crate) fn request_id(headers: &HeaderMap) -> String {
        headers
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| valid_request_id(v))
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
    }

    /// Answers a request: health and metrics here, everything else by the
    /// role's handler.
    pub(crate) async fn answer(&self, req: Request) -> Response {
        let mut response = match req.uri.path() {
            "/healthz" => Response::new(StatusCode::OK, "text/plain", "ok\n"),
            "/metrics" => Response::new(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics.render(),
            ),
            _ => self.handler.handle(req).await,
        };
        if let Some(v) = &self.alt_svc {
            response.headers.insert(http::header::ALT_SVC, v.clone());
        }
        response
    }

    /// The outcome word of a response's `Cache-Status`, for metrics and logs.
    pub(crate) fn cache_label(response: &Response) -> &'static str {
        response
            .headers
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .map(cache_outcome)
            .unwrap_or("none")
    }

    /// Counts the request and writes its access-log line.
    pub(crate) fn record(&self, s: Served<'_>) {
        let elapsed = s.started.elapsed();
        self.metrics
            .observe(s.status.as_u16(), s.cache, s.protocol, s.bytes, elapsed);
        // The path only: query strings carry tokens, which never reach logs.
        tracing::info!(
            target: "access",
            role = self.role,
            request_id = %s.request_id,
            method = %s.method,
            path = s.path,
            status = s.status.as_u16(),
            bytes = s.bytes,
            ms = elapsed.as_secs_f64() * 1000.0,
            cache = s.cache,
            protocol = s.protocol,
            client = ?s.client,
        );
    }
}

struct App {
    front: Front,
    cfg: ListenerConfig,
    options: HttpServerOptions,
    inflight: Arc<InFlight>,
}

/// Serves `handler` on `listener` until shut down.
pub fn serve(
    listener: TcpListener,
    handler: Arc<dyn Handler>,
    metrics: Arc<Metrics>,
    cfg: ListenerConfig,
) -> std::io::Result<ServerHandle> {
    let addr = listener.local_addr()?;
    let (tx, rx) = watch::channel(false);
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    let tls = cfg
        .tls
        .as_ref()
        .map(|store| Arc::new(Acceptor::from_server_config(Arc::new(store.tcp_config()))));
    let inflight = Arc::new(InFlight::default());
    let app = Arc::new(App {
        front: Front::new(handler, metrics, cfg.role, cfg.alt_svc.clone()),
        cfg: cfg.clone(),
        options,
        inflight: inflight.clone(),
    });
    let permits = Arc::new(Semaphore::new(cfg.max_connections));
    let mut stop = rx.clone();
    let task = tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = stop.changed() => break,
            };
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.changed() => break,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let app = app.clone();
            let shutdown = rx.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let mut l4 = L4Stream::from(tcp);
                // The peer address feeds token IP binding and geo.
                let digest = SocketDigest::from_raw_fd(l4.as_raw_fd());
                let _ = digest.peer_addr.set(Some(peer.into()));
                l4.set_socket_digest(digest);
                let stream: pingora_core::protocols::Stream = match tls {
                    None => Box::new(l4),
                    Some(acceptor) => {
                        match tokio::time::timeout(TLS_HANDSHAKE, acceptor.tls_handshake(l4)).await
                        {
                            Ok(Ok(s)) => Box::new(s),
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, %peer, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        }
                    }
                };
                app.process_new(stream, &shutdown).await;
                drop(permit);
            });
        }
    });
    Ok(ServerHandle {
        addr,
        shutdown: tx,
        task,
        inflight,
    })
}

#[async_trait::async_trait]
impl HttpServerApp for App {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "reading request");
                return None;
            }
        }
        let _inflight = InFlightGuard::new(&self.inflight);
        if *shutdown.borrow() {
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(self.cfg.keepalive_secs));
        }
        let started = Instant::now();
        let req_header = session.req_header();
        let method = req_header.method.clone();
        let uri = req_header.uri.clone();
        let headers = req_header.headers.clone();
        let protocol = if session.is_http2() { "h2" } else { "http/1.1" };
        let client = session.client_addr().and_then(|a| a.as_inet()).copied();
        let request_id = Front::request_id(&headers);

        let response = match read_body(&mut session, self.cfg.max_body_bytes).await {
            Err(BodyError::TooLarge) => Response::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "request body over the limit",
            ),
            Err(BodyError::Io) => return None,
            Ok(body) => {
                self.front
                    .answer(Request {
                        method: method.clone(),
                        uri: uri.clone(),
                        headers,
                        body,
                        client,
                        request_id: request_id.clone(),
                        protocol,
                    })
                    .await
            }
        };

        let status = response.status;
        let cache = Front::cache_label(&response);
        let (ok, bytes) = write_response(&mut session, response, &method, &request_id).await;
        self.front.record(Served {
            request_id: &request_id,
            method: &method,
            path: uri.path(),
            status,
            cache,
            protocol,
            bytes,
            client,
            started,
        });
        if !ok {
            return None;
        }
        let settings = pingora_core::apps::HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(Some(s)) => Some(ReusedHttpStream::from_reusable_stream(s, settings)),
            _ => None,
        }
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }
}

/// The outcome word of this tier's `Cache-Status` entry (the last one).
pub fn cache_outcome(v: &str) -> &'static str {
    let last = v.rsplit(',').next().unwrap_or("");
    if last.contains("fwd=stale") || last.contains("detail=stale") {
        "stale"
    } else if last.contains("; hit") {
        "hit"
    } else if last.contains("fwd=bypass") {
        "bypass"
    } else if last.contains("fwd=") {
        "miss"
    } else {
        "none"
    }
}

enum BodyError {
    TooLarge,
    Io,
}

async fn read_body(session: &mut ServerSession, limit: usize) -> Result<Bytes, BodyError> {
    let mut buf = BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > limit {
                    return Err(BodyError::TooLarge);
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf.freeze()),
            Err(_) => return Err(BodyError::Io),
        }
    }
}

/// Writes the response; says whether the connection may be reused, and how
/// many body bytes went out. A streamed body is written as it arrives; if
/// its upstream fails midway the connection is closed, so the client sees a
/// short body rather than a complete-looking wrong one.
async fn write_response(
    session: &mut ServerSession,
    response: Response,
    method: &Method,
    request_id: &str,
) -> (bool, usize) {
    let length = match &response.stream {
        Some(s) => s.expected_len().unwrap_or(0) as usize,
        None => response.body.len(),
    };
    let mut header = match ResponseHeader::build(response.status, Some(response.headers.len() + 2))
    {
        Ok(h) => h,
        Err(_) => return (false, 0),
    };
    for (name, value) in response.headers.iter() {
        let _ = header.append_header(name.clone(), value.clone());
    }
    let _ = header.insert_header(http::header::CONTENT_LENGTH, length);
    if let Ok(v) = HeaderValue::from_str(request_id) {
        let _ = header.insert_header(REQUEST_ID, v);
    }
    if session
        .write_response_header(Box::new(header))
        .await
        .is_err()
    {
        return (false, 0);
    }
    if method == Method::HEAD || length == 0 {
        return (session.finish_body().await.is_ok(), 0);
    }
    let Some(stream) = response.stream else {
        let ok = session
            .write_response_body(response.body, true)
            .await
            .is_ok();
        return (ok, length);
    };
    let mut reader = stream.reader();
    let mut sent = 0;
    while let Some(chunk) = reader.next().await {
        let Ok(chunk) = chunk else {
            tracing::warn!(
                request_id,
                sent,
                "upstream failed mid-body; closing the connection"
            );
            return (false, sent);
        };
        sent += chunk.len();
        if sent > length {
            tracing::warn!(request_id, sent, "upstream sent more than it announced");
            return (false, sent);
        }
        if session.write_response_body(chunk, false).await.is_err() {
            return (false, sent);
        }
    }
    if sent != length {
        return (false, sent);
    }
    (session.finish_body().await.is_ok(), sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// Answers after a slow upstream's 300 ms, saying when it starts and ends.
    struct Slow {
        entered: tokio::sync::mpsc::Sender<()>,
        answered: Arc<AtomicBool>,
    }

    #[async_trait::async_trait]
    impl Handler for Slow {
        async fn handle(&self, _req: Request) -> Response {
            let _ = self.entered.send(()).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            self.answered.store(true, Ordering::SeqCst);
            Response::new(StatusCode::OK, "text/plain", "done\n")
        }
    }

    #[tokio::test]
    async fn shutdown_waits_for_requests_being_answered() {
        let (tx, mut entered) = tokio::sync::mpsc::channel(1);
        let answered = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(Slow {
            entered: tx,
            answered: answered.clone(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let server = serve(
            listener,
            handler,
            Arc::new(Metrics::new("test")),
            ListenerConfig::new("test"),
        )
        .expect("serve");
        let url = format!("http://{}/slow", server.addr);
        let request = tokio::spawn(async move {
            let r = reqwest::get(url).await.map_err(|e| e.to_string())?;
            r.text().await.map_err(|e| e.to_string())
        });
        entered
            .recv()
            .await
            .expect("the request reached the handler");
        server.shutdown().await;
        assert!(
            answered.load(Ordering::SeqCst),
            "shutdown returned before the request was answered"
        );
        assert_eq!(request.await.expect("task").expect("response"), "done\n");
    }
}
