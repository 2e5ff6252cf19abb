//! The HTTP server loop of the axum roles (origin, control), in place of
//! `axum::serve`, which sets no limits: each connection gets a deadline for
//! its request headers (a silent or trickling client is cut off), a limit
//! on their size (431), and the listener a limit on open connections.
//! Every request carries the peer's address as axum's `ConnectInfo`.
//!
//! [`json_errors`] is the middleware that turns the framework's own plain
//! text refusals (a bad path or query, a wrong method, a body over the
//! limit) into the JSON error shape every other answer has.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Limits of an axum role's listener.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// How long a client may take to send a request's headers. On a
    /// kept-alive connection the time starts once the previous answer is
    /// sent, so this is also the idle keep-alive time.
    pub header_timeout: Duration,
    /// Largest request header section; more is refused with 431.
    pub max_header_bytes: usize,
    /// Most connections open at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// On shutdown, how long open requests may take to finish.
    pub drain: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            // Longer than the proxy tiers' 10 s: edges and shields keep
            // pooled connections to the origin idle for up to 20 s.
            header_timeout: Duration::from_secs(30),
            max_header_bytes: 32 * 1024,
            max_connections: 4096,
            drain: Duration::from_secs(10),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets open
/// requests finish for up to `limits.drain`.
pub async fn serve_router(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_header_bytes)
        .keep_alive(true);
    // The connections, so that those still open after the drain time are
    // ended before the caller closes what they use (the database).
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let router = router.clone();
            async move {
                Ok::<_, Infallible>(
                    router
                        .oneshot(req.map(axum::body::Body::new))
                        .await
                        .into_response(),
                )
            }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(tcp), service));
        connections.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still being answered after the drain time; ending them");
    }
    connections.shutdown().await;
}

/// Largest plain-text refusal that is carried over into the JSON message.
const MAX_REFUSAL_TEXT: usize = 4096;

/// Middleware: an error answer that is not JSON (axum's own rejections of a
/// bad path, query, method or body size) is rewritten as
/// `{"error": code, "message": text}`, the code named after the status.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = match axum::body::to_bytes(body, MAX_REFUSAL_TEXT).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
        Err(_) => String::new(),
    };
    let code = error_code(status);
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let mut body = serde_json::json!({ "error": code, "message": message }).to_string();
    body.push('\n');
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// A stable code for a status: its reason phrase in snake case
/// (`payload_too_large`, `method_not_allowed`), with the API's own names
/// where it has them.
fn error_code(status: StatusCode) -> String {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large".into(),
        StatusCode::BAD_REQUEST => "bad_request".into(),
        StatusCode::NOT_FOUND => "not_found".into(),
        _ => status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
            .replace([' ', '-'], "_"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};

    fn app() -> Router {
        Router::new()
            .route(
                "/echo/{n}",
                get(
                    |axum::extract::Path(n): axum::extract::Path<u32>| async move { n.to_string() },
                ),
            )
            .route(
                "/json",
                post(|axum::Json(v): axum::Json<serde_json::Value>| async move { axum::Json(v) }),
            )
            .layer(axum::extract::DefaultBodyLimit::max(1024))
            .layer(axum::middleware::from_fn(json_errors))
    }

    async fn call(req: Request) -> (StatusCode, serde_json::Value) {
        let r = app().oneshot(req).await.expect("infallible");
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, serde_json::from_slice(&body).unwrap_or_default())
    }

    #[tokio::test]
    async fn framework_refusals_become_json() {
        let get_req = |uri: &str| {
            Request::builder()
                .uri(uri)
                .body(axum::body::Body::empty())
                .expect("request")
        };
        let (s, v) = call(get_req("/echo/abc")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(v["error"], "bad_request");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        let post_big = Request::builder()
            .method("POST")
            .uri("/json")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(format!("\"{}\"", "a".repeat(4096))))
            .expect("request");
        let (s, v) = call(post_big).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(v["error"], "body_too_large");
        let (s, v) = call(
            Request::builder()
                .method("DELETE")
                .uri("/json")
                .body(axum::body::Body::empty())
                .expect("request"),
        )
        .await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(v["error"], "method_not_allowed");
        // A good answer is untouched.
        let r = app().oneshot(get_req("/echo/7")).await.expect("infallible");
        assert_eq!(r.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn headers_have_a_deadline_and_a_size_limit() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let limits = HttpLimits {
            header_timeout: Duration::from_millis(300),
            max_header_bytes: 8192,
            ..HttpLimits::default()
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_router(listener, app(), limits, async {
            let _ = rx.await;
        }));
        // Half a request, then nothing: cut off.
        let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET /echo/1 HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut got)).await;
        assert!(read.is_ok(), "the server closed the connection");
        assert!(!String::from_utf8_lossy(&got).contains("200 OK"));
        // Oversized headers: 431.
        let mut big = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "GET /echo/1 HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(20_000)
        );
        big.write_all(req.as_bytes()).await.expect("write");
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), big.read_to_end(&mut got)).await;
        assert!(
            String::from_utf8_lossy(&got).starts_with("HTTP/1.1 431"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        // A normal request works.
        let r = reqwest::get(format!("http://{addr}/echo/5"))
            .await
            .expect("get");
        assert_eq!(r.text().await.expect("text"), "5");
        let _ = tx.send(());
        server.await.expect("server task");
    }
}
