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

use crate::pipeline::{Delivered, Exchange, PhaseLog};
use crate::tls::CertStore;
use crate::writer::{write_response, Abort, Sink};
use crate::Metrics;
use crate::{valid_request_id, Handler, MetricsAccess, Request, Response, REQUEST_ID};

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
    /// How long a client may take to send a request's headers, from the
    /// connection's start (or, on a kept-alive connection, once the idle
    /// keep-alive time is over). Slow or silent clients are cut off.
    pub header_timeout: Duration,
    /// Largest request header section (request line and fields); more is
    /// refused with 431.
    pub max_header_bytes: usize,
    /// Who may read `/metrics`.
    pub metrics_access: MetricsAccess,
    /// Threads that run connections, each with a single-threaded runtime
    /// of its own (a connection stays on one thread for its life, as with
    /// nginx's workers); 0 runs them on the caller's runtime.
    pub threads: usize,
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
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 32 * 1024,
            metrics_access: MetricsAccess::default(),
            threads: 0,
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
    pub(crate) metrics: Arc<Metrics>,
    role: &'static str,
    alt_svc: Option<HeaderValue>,
    metrics_access: MetricsAccess,
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
    pub(crate) complete: bool,
    pub(crate) client: Option<SocketAddr>,
    pub(crate) started: Instant,
}

impl Front {
    pub(crate) fn new(
        handler: Arc<dyn Handler>,
        metrics: Arc<Metrics>,
        role: &'static str,
        alt_svc: Option<HeaderValue>,
        metrics_access: MetricsAccess,
    ) -> Front {
        Front {
            metrics_access,
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
    /// role's pipeline.
    pub(crate) async fn answer(&self, req: Request) -> Exchange {
        let mut exchange = match req.uri.path() {
            "/healthz" => Exchange::from(Response::new(StatusCode::OK, "text/plain", "ok\n")),
            "/metrics" => {
                let authorization = req
                    .headers
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok());
                let peer = req.client.map(|a| a.ip());
                Exchange::from(if self.metrics_access.allows(peer, authorization) {
                    Response::new(
                        StatusCode::OK,
                        "text/plain; version=0.0.4",
                        self.metrics.render(),
                    )
                } else {
                    Response::error(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        "metrics are for operators: scrape from an operator network or with the credential",
                    )
                })
            }
            _ => self.handler.clone().handle(req).await,
        };
        if let Some(v) = &self.alt_svc {
            exchange
                .response
                .headers
                .insert(http::header::ALT_SVC, v.clone());
        }
        exchange
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

    /// Counts the request, writes its access-log line and runs the role's
    /// `log` phase.
    pub(crate) fn record(&self, s: Served<'_>, log: Option<PhaseLog>) {
        let elapsed = s.started.elapsed();
        if let Some(log) = log {
            log(&Delivered {
                status: s.status,
                bytes: s.bytes,
                complete: s.complete,
                elapsed,
            });
        }
        self.metrics
            .observe(s.status.as_u16(), s.cache, s.protocol, s.bytes, elapsed);
        // The path only: query strings carry tokens, which never reach logs.
        // Health checks, scrapes and heartbeats arrive every few seconds:
        // logged at debug, so the console shows what people do.
        cascade_common::access_log!(
            s.path,
            role = self.role,
            request_id = %s.request_id,
            method = %s.method,
            path = s.path,
            status = s.status.as_u16(),
            bytes = s.bytes,
            ms = elapsed.as_secs_f64() * 1000.0,
            cache = s.cache,
            protocol = s.protocol,
            client = %Peer(s.client),
        );
    }
}

/// A client's address as logged: `1.2.3.4:5678`, or `-` when unknown.
struct Peer(Option<SocketAddr>);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(a) => write!(f, "{a}"),
            None => f.write_str("-"),
        }
    }
}

struct App {
    front: Front,
    cfg: ListenerConfig,
    options: HttpServerOptions,
    inflight: Arc<InFlight>,
    opened: Opened,
}

/// Connections that have not yet begun a request, by peer address (unique
/// among open TCP connections of one listener). A connection whose first
/// request has not arrived within the header time is closed, whatever
/// Pingora is waiting for: the HTTP/2 preface after TLS, or the 24 bytes it
/// reads to tell h2c from HTTP/1.1, neither of which has a deadline of its
/// own.
#[derive(Default)]
struct Opened(std::sync::Mutex<std::collections::HashSet<SocketAddr>>);

impl Opened {
    fn add(&self, peer: SocketAddr) {
        if let Ok(mut s) = self.0.lock() {
            s.insert(peer);
        }
    }

    /// The connection from `peer` has begun a request.
    fn begun(&self, peer: SocketAddr) {
        if let Ok(mut s) = self.0.lock() {
            s.remove(&peer);
        }
    }

    /// Whether the connection from `peer` is still waiting for its first
    /// request; forgets it either way.
    fn still_waiting(&self, peer: SocketAddr) -> bool {
        self.0.lock().map(|mut s| s.remove(&peer)).unwrap_or(false)
    }
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
    options.h2_idle_timeout = Some(Duration::from_secs(cfg.keepalive_secs));
    let tls = cfg
        .tls
        .as_ref()
        .map(|store| Arc::new(Acceptor::from_server_config(Arc::new(store.tcp_config()))));
    let inflight = Arc::new(InFlight::default());
    let app = Arc::new(App {
        front: Front::new(
            handler,
            metrics,
            cfg.role,
            cfg.alt_svc.clone(),
            cfg.metrics_access.clone(),
        ),
        cfg: cfg.clone(),
        options,
        inflight: inflight.clone(),
        opened: Opened::default(),
    });
    let permits = Arc::new(Semaphore::new(cfg.max_connections));
    let mut stop = rx.clone();
    let workers = (cfg.threads > 0)
        .then(|| Workers::start(cfg.threads, cfg.role))
        .transpose()?;
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
            let conn = Conn {
                app: app.clone(),
                peer,
                shutdown: rx.clone(),
                tls: tls.clone(),
                permit,
            };
            match &workers {
                None => {
                    tokio::spawn(conn.run(tcp));
                }
                Some(w) => w.hand_over(tcp, conn),
            }
        }
        if let Some(w) = workers {
            w.finish();
        }
    });
    Ok(ServerHandle {
        addr,
        shutdown: tx,
        task,
        inflight,
    })
}

/// An accepted connection, ready to be served on some runtime.
struct Conn {
    app: Arc<App>,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
    tls: Option<Arc<Acceptor>>,
    permit: tokio::sync::OwnedSemaphorePermit,
}

impl Conn {
    /// Serves the connection on `tcp` to its end.
    async fn run(self, tcp: tokio::net::TcpStream) {
        let Conn {
            app,
            peer,
            shutdown,
            tls,
            permit,
        } = self;
        let mut l4 = L4Stream::from(tcp);
        // The peer address feeds token IP binding and geo.
        let digest = SocketDigest::from_raw_fd(l4.as_raw_fd());
        let _ = digest.peer_addr.set(Some(peer.into()));
        l4.set_socket_digest(digest);
        let stream: pingora_core::protocols::Stream = match tls {
            None => Box::new(l4),
            Some(acceptor) => {
                match tokio::time::timeout(TLS_HANDSHAKE, acceptor.tls_handshake(l4)).await {
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
        let _open = app.front.metrics.connection();
        app.opened.add(peer);
        let serve = app.process_new(stream, &shutdown);
        // Once a request has begun, its own deadlines apply; until
        // then, the header time from here.
        let first_request = async {
            tokio::time::sleep(app.cfg.header_timeout).await;
            if !app.opened.still_waiting(peer) {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = serve => {}
            _ = first_request => {
                tracing::debug!(%peer, "no request within the header time; closing");
            }
        }
        app.opened.still_waiting(peer);
        drop(permit);
    }
}

/// Threads that each run connections on a single-threaded runtime of their
/// own. On a busy multi-threaded runtime, a socket's readiness found by one
/// worker wakes another to run the task (a futex wake and a context switch
/// per request, measured at a tenth of the edge's time on a small hit);
/// here a connection's whole life is on one thread, and only its hand-over
/// at accept crosses threads.
struct Workers {
    queues: Vec<tokio::sync::mpsc::UnboundedSender<(std::net::TcpStream, Conn)>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Workers {
    fn start(n: usize, role: &'static str) -> std::io::Result<Workers> {
        let mut queues = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, mut rx) =
                tokio::sync::mpsc::unbounded_channel::<(std::net::TcpStream, Conn)>();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            std::thread::Builder::new()
                .name(format!("{role}-conn-{i}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let mut conns = tokio::task::JoinSet::new();
                        loop {
                            tokio::select! {
                                next = rx.recv() => match next {
                                    Some((std_tcp, conn)) => {
                                        // The socket moves to this thread's
                                        // reactor.
                                        match tokio::net::TcpStream::from_std(std_tcp) {
                                            Ok(tcp) => {
                                                conns.spawn(conn.run(tcp));
                                            }
                                            Err(e) => tracing::warn!(error = %e, "taking over a connection"),
                                        }
                                    }
                                    None => break,
                                },
                                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                            }
                        }
                        // Shutting down: the connections end as their
                        // requests finish.
                        while conns.join_next().await.is_some() {}
                    });
                })?;
            queues.push(tx);
        }
        Ok(Workers {
            queues,
            next: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Gives a connection to the next thread in turn.
    fn hand_over(&self, tcp: tokio::net::TcpStream, conn: Conn) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len();
        // Leaves this runtime's reactor; the worker registers it with its own.
        match tcp.into_std() {
            Ok(std_tcp) => {
                let _ = self.queues[i].send((std_tcp, conn));
            }
            Err(e) => tracing::warn!(error = %e, "handing over a connection"),
        }
    }

    /// Closes the queues. Each thread ends once its connections have (the
    /// requests being answered are waited for by [`ServerHandle::shutdown`];
    /// idle kept-alive connections, as on the shared runtime, are not).
    fn finish(self) {
        drop(self.queues);
    }
}

#[async_trait::async_trait]
impl HttpServerApp for App {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // Pingora's read timeout is per read, so a client trickling a byte
        // at a time would never be cut off: the whole header section gets
        // one deadline. A kept-alive connection may first idle for its
        // keep-alive time.
        let reused = session.take_connection_user_context().is_some();
        let idle = if reused { self.cfg.keepalive_secs } else { 0 };
        session.set_read_timeout(Some(self.cfg.header_timeout));
        let deadline = self.cfg.header_timeout + Duration::from_secs(idle);
        match tokio::time::timeout(deadline, session.read_request()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return None,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "reading request");
                return None;
            }
            Err(_) => {
                tracing::debug!("request headers not received in time; closing");
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
        if let Some(peer) = client {
            self.opened.begun(peer);
        }
        let request_id = Front::request_id(&headers);

        let header_bytes = header_size(session.req_header());
        let exchange = if header_bytes > self.cfg.max_header_bytes {
            // Refused before the body is read; the connection is not reused.
            session.set_keepalive(None);
            Exchange::from(Response::error(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                &format!("request headers over {} bytes", self.cfg.max_header_bytes),
            ))
        } else {
            match read_body(&mut session, self.cfg.max_body_bytes).await {
                Err(BodyError::TooLarge) => Exchange::from(Response::error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "request body over the limit",
                )),
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
                            secure: self.cfg.tls.is_some(),
                        })
                        .await
                }
            }
        };

        let Exchange { response, log } = exchange;
        let status = response.status;
        let cache = Front::cache_label(&response);
        let mut sink = TcpSink::new(&mut session);
        let written = write_response(&mut sink, response, &method, &request_id, SEND_TIMEOUT).await;
        drop(sink);
        self.front.record(
            Served {
                request_id: &request_id,
                method: &method,
                path: uri.path(),
                status,
                cache,
                protocol,
                bytes: written.bytes,
                complete: written.complete,
                client,
                started,
            },
            log,
        );
        if !written.complete {
            return None;
        }
        let mut settings = pingora_core::apps::HttpPersistentSettings::for_session(&session);
        // Tells the next request on this connection that it may idle first.
        settings.set_user_context(Box::new(KeptAlive));
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

/// The size of a request's header section as sent: request line and
/// fields, each with its separators.
fn header_size(req: &pingora_http::RequestHeader) -> usize {
    let target = req
        .uri
        .path_and_query()
        .map_or(req.uri.path().len(), |pq| pq.as_str().len());
    let line = req.method.as_str().len() + target + 12;
    req.headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + line
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

/// Marks a connection that has answered a request and is kept alive.
struct KeptAlive;

/// How long a client may take nothing of a response before it is cut off.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// HTTP/1.1 and HTTP/2 through Pingora's session. A broken response closes
/// the connection (the caller does not reuse it), so an HTTP/1.1 client sees
/// a short body and an HTTP/2 client a reset stream.
///
/// Over HTTP/1.1 the socket is corked (`TCP_CORK`, nginx's `tcp_nopush`)
/// from the head to the first piece of body: Pingora writes the head and
/// the body with two system calls, and uncorked each would leave as its own
/// packet, waking the client twice. A hit on a small object then costs one
/// transmission instead of two (measured: the head's own send was a fifth
/// of the edge's time on a playlist hit). Uncorked after the first piece,
/// so that a body streaming in is never held back.
struct TcpSink<'a> {
    session: &'a mut ServerSession,
    /// The body's last piece went out, ending the response.
    ended: bool,
    /// The socket corked now, if it is.
    corked: Option<i32>,
}

impl<'a> TcpSink<'a> {
    fn new(session: &'a mut ServerSession) -> Self {
        TcpSink {
            session,
            ended: false,
            corked: None,
        }
    }

    fn cork(&mut self) {
        if self.session.is_http2() {
            return;
        }
        // The stream's id is its socket's descriptor (TLS streams answer
        // their TCP stream's).
        if let Some(fd) = self.session.stream().map(|s| s.id()) {
            if set_cork(fd, true) {
                self.corked = Some(fd);
            }
        }
    }

    fn uncork(&mut self) {
        if let Some(fd) = self.corked.take() {
            set_cork(fd, false);
        }
    }
}

impl Drop for TcpSink<'_> {
    fn drop(&mut self) {
        self.uncork();
    }
}

/// Sets or clears `TCP_CORK`; false if the socket refused. Clearing it sends
/// what it held back.
fn set_cork(fd: i32, on: bool) -> bool {
    let value: libc::c_int = on.into();
    // SAFETY: `fd` is the descriptor of the session's own socket, open for
    // as long as the session (borrowed by the sink) lives; setsockopt reads
    // `value` only during the call, and a stale or wrong descriptor makes it
    // fail with EBADF or ENOTSOCK rather than misbehave.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

#[async_trait::async_trait]
impl Sink for TcpSink<'_> {
    fn max_piece(&self) -> usize {
        // Each piece must go out within the send timeout: a client that
        // reads 256 KiB per 30 s (70 kbit/s) keeps its download.
        256 * 1024
    }

    async fn head(&mut self, status: StatusCode, headers: HeaderMap) -> bool {
        let Ok(mut header) = ResponseHeader::build(status, Some(headers.len())) else {
            return false;
        };
        for (name, value) in headers.iter() {
            let _ = header.append_header(name.clone(), value.clone());
        }
        self.cork();
        self.session
            .write_response_header(Box::new(header))
            .await
            .is_ok()
    }

    async fn data(&mut self, piece: Bytes, last: bool) -> bool {
        // The last piece ends the body in the same write: one flush for a
        // small answer, not two.
        self.ended = last;
        let sent = self.session.write_response_body(piece, last).await.is_ok();
        self.uncork();
        sent
    }

    async fn finish(&mut self) -> bool {
        let finished = self.ended || self.session.finish_body().await.is_ok();
        self.uncork();
        finished
    }

    fn abort(&mut self, _why: Abort) {
        self.uncork();
        self.session.set_keepalive(None);
    }
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
    impl crate::Pipeline for Slow {
        type Ctx = ();
        fn new_ctx(&self, _req: &Request) {}
        async fn produce(&self, _req: &Request, _ctx: &mut ()) -> Response {
            let _ = self.entered.send(()).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            self.answered.store(true, Ordering::SeqCst);
            Response::new(StatusCode::OK, "text/plain", "done\n")
        }
    }

    #[tokio::test]
    async fn shutdown_waits_for_requests_being_answered() {
        shutdown_waits_with(0).await;
    }

    /// The same with connections on threads of their own.
    #[tokio::test]
    async fn shutdown_waits_for_requests_on_connection_threads() {
        shutdown_waits_with(2).await;
    }

    async fn shutdown_waits_with(threads: usize) {
        let (tx, mut entered) = tokio::sync::mpsc::channel(1);
        let answered = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(Slow {
            entered: tx,
            answered: answered.clone(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut cfg = ListenerConfig::new("test");
        cfg.threads = threads;
        let server = serve(listener, handler, Arc::new(Metrics::new("test")), cfg).expect("serve");
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

    /// Answers every request with "ok".
    struct Ok200;

    #[async_trait::async_trait]
    impl crate::Pipeline for Ok200 {
        type Ctx = ();
        fn new_ctx(&self, _req: &Request) {}
        async fn produce(&self, _req: &Request, _ctx: &mut ()) -> Response {
            Response::new(StatusCode::OK, "text/plain", "ok\n")
        }
    }

    async fn quick_server() -> ServerHandle {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut cfg = ListenerConfig::new("test");
        cfg.header_timeout = Duration::from_millis(300);
        serve(listener, Arc::new(Ok200), Arc::new(Metrics::new("t")), cfg).expect("serve")
    }

    /// Reads until the server closes the connection; what it sent, or
    /// `None` if it was still open after five seconds.
    async fn until_closed(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let mut got = Vec::new();
        let read = stream.read_to_end(&mut got);
        match tokio::time::timeout(Duration::from_secs(5), read).await {
            Ok(_) => Some(got),
            Err(_) => None,
        }
    }

    #[tokio::test]
    async fn a_silent_client_is_cut_off() {
        let server = quick_server().await;
        let mut c = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        let got = until_closed(&mut c).await.expect("closed by the server");
        assert!(got.is_empty());
        server.shutdown().await;
    }

    #[tokio::test]
    async fn a_client_that_stops_within_the_first_bytes_is_cut_off() {
        use tokio::io::AsyncWriteExt;
        let server = quick_server().await;
        // Fewer bytes than Pingora reads to tell HTTP/2 from HTTP/1.1: an
        // HTTP/1.1 start, and the start of the HTTP/2 preface.
        for start in [&b"GET / HT"[..], &b"PRI * HTTP/2.0"[..]] {
            let mut c = tokio::net::TcpStream::connect(server.addr)
                .await
                .expect("connect");
            c.write_all(start).await.expect("write");
            let got = until_closed(&mut c).await.expect("closed by the server");
            assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
        }
        // Kept alive after a request: the same connection is not cut at the
        // header time while it idles within its keep-alive time.
        use tokio::io::AsyncReadExt;
        let mut c = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        for _ in 0..2 {
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("write");
            let mut buf = vec![0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
                .await
                .expect("an answer")
                .expect("read");
            assert!(
                String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&buf[..n])
            );
            // Idle for longer than the header time (300 ms).
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        server.shutdown().await;
    }

    #[tokio::test]
    async fn a_trickling_client_is_cut_off() {
        use tokio::io::AsyncWriteExt;
        let server = quick_server().await;
        let mut c = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        // One byte every 100 ms: each read is quick, the whole is not.
        let trickle = async {
            for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            {
                if c.write_all(&[*b]).await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        };
        let cut = tokio::time::timeout(Duration::from_secs(5), trickle)
            .await
            .unwrap_or(false);
        let got = if cut {
            Vec::new()
        } else {
            until_closed(&mut c).await.expect("closed by the server")
        };
        assert!(!String::from_utf8_lossy(&got).contains("200 OK"));
        server.shutdown().await;
    }

    #[tokio::test]
    async fn oversized_headers_are_refused_with_431() {
        use tokio::io::AsyncWriteExt;
        let server = quick_server().await;
        let mut c = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        let big = "a".repeat(40 * 1024);
        let req = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
        c.write_all(req.as_bytes()).await.expect("write");
        let got = until_closed(&mut c).await.expect("closed by the server");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 431"), "{text}");
        assert!(text.contains("headers_too_large"), "{text}");
        // A normal request still works.
        let r = reqwest::get(format!("http://{}/", server.addr))
            .await
            .expect("get");
        assert_eq!(r.status(), 200);
        server.shutdown().await;
    }
}
