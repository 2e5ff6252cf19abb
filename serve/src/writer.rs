//! The one response writer and body pump that every listener uses. A
//! listener supplies a [`Sink`] (how its protocol sends a head, data and the
//! end); everything that decides *what* is sent lives here, so HTTP/1.1,
//! HTTP/2 and HTTP/3 answer the same request with the same status, headers
//! and body:
//!
//! - `Content-Length` on every status that may have a body (HEAD included,
//!   with the length a GET would get), never on 1xx, 204 or 304;
//! - headers that mean something only to one HTTP/1.1 connection dropped;
//! - `x-request-id` on every answer;
//! - a streamed body is pumped as it arrives; if its upstream fails midway,
//!   sends more than it announced, or the client stops reading for the
//!   send timeout, the response is aborted, so the client sees an error
//!   rather than a short body that looks whole.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use crate::{Response, REQUEST_ID};

/// Headers that mean something only to one HTTP/1.1 connection; HTTP/2 and
/// HTTP/3 forbid them (RFC 9113 §8.2.2, RFC 9114 §4.2), and our HTTP/1.1
/// framing is the listener's, not the handler's.
const CONNECTION_HEADERS: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// Why a response was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Abort {
    /// The upstream failed, or sent other than it announced.
    Upstream,
    /// The client took nothing for the send timeout.
    Stalled,
}

/// How one protocol sends a response.
#[async_trait::async_trait]
pub(crate) trait Sink: Send {
    /// The largest piece of body handed over at once; each piece waits for
    /// the client (flow control) within the send timeout.
    fn max_piece(&self) -> usize;
    /// Sends status and headers; false when the client is gone.
    async fn head(&mut self, status: StatusCode, headers: HeaderMap) -> bool;
    /// Sends a piece of body (`last`: the body's last, when known, so that
    /// a protocol can end the response with it); false when the client is
    /// gone.
    async fn data(&mut self, piece: Bytes, last: bool) -> bool;
    /// Ends the response; false when it could not be ended cleanly.
    async fn finish(&mut self) -> bool;
    /// Ends the response as broken, so that it cannot pass for whole.
    fn abort(&mut self, why: Abort);
}

/// What went out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Written {
    /// Whether the response went out whole (and the connection may be reused).
    pub(crate) complete: bool,
    /// Body bytes sent.
    pub(crate) bytes: usize,
}

/// Whether a response of this status may have a body (and so a
/// `Content-Length`): not 1xx, 204 or 304 (RFC 9110 §8.6).
pub(crate) fn has_body(status: StatusCode) -> bool {
    !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

/// The headers sent for a response of `status`: its own, less connection
/// headers, with `Content-Length` where a body may be and the request id.
/// Edited in place: a hit's answer is not copied again on its way out.
pub(crate) fn head_fields(
    mut headers: HeaderMap,
    status: StatusCode,
    length: usize,
    request_id: &str,
) -> HeaderMap {
    for name in CONNECTION_HEADERS {
        headers.remove(name);
    }
    headers.remove(http::header::CONTENT_LENGTH);
    if has_body(status) {
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(HeaderName::from_static(REQUEST_ID), v);
    }
    headers
}

/// Writes `response` to `sink`.
pub(crate) async fn write_response(
    sink: &mut impl Sink,
    response: Response,
    method: &Method,
    request_id: &str,
    send_timeout: Duration,
) -> Written {
    let length = match &response.stream {
        Some(s) => s.expected_len().unwrap_or(0) as usize,
        None => response.body.len(),
    };
    let Response {
        status,
        headers,
        body,
        stream,
    } = response;
    let headers = head_fields(headers, status, length, request_id);
    let broken = |bytes| Written {
        complete: false,
        bytes,
    };
    if !sink.head(status, headers).await {
        return broken(0);
    }
    if method == Method::HEAD || length == 0 || !has_body(status) {
        return Written {
            complete: sink.finish().await,
            bytes: 0,
        };
    }
    let mut sent = 0;
    match stream {
        None => {
            if !send(sink, body, true, &mut sent, request_id, send_timeout).await {
                return broken(sent);
            }
        }
        Some(shared) => {
            let mut reader = shared.reader();
            while let Some(chunk) = reader.next().await {
                let Ok(chunk) = chunk else {
                    tracing::warn!(request_id, sent, "upstream failed mid-body; aborting");
                    sink.abort(Abort::Upstream);
                    return broken(sent);
                };
                if sent + chunk.len() > length {
                    tracing::warn!(request_id, sent, "upstream sent more than it announced");
                    sink.abort(Abort::Upstream);
                    return broken(sent);
                }
                if !send(sink, chunk, false, &mut sent, request_id, send_timeout).await {
                    return broken(sent);
                }
            }
            if sent != length {
                sink.abort(Abort::Upstream);
                return broken(sent);
            }
        }
    }
    Written {
        complete: sink.finish().await,
        bytes: sent,
    }
}

/// Sends `body` in pieces the sink takes, each within the send timeout,
/// adding to `sent` what went out; false when the client is gone or
/// stalled (the response is then aborted).
async fn send(
    sink: &mut impl Sink,
    mut body: Bytes,
    whole: bool,
    sent: &mut usize,
    request_id: &str,
    send_timeout: Duration,
) -> bool {
    let max = sink.max_piece().max(1);
    while !body.is_empty() {
        let piece = body.split_to(body.len().min(max));
        let n = piece.len();
        let last = whole && body.is_empty();
        match tokio::time::timeout(send_timeout, sink.data(piece, last)).await {
            Ok(true) => *sent += n,
            Ok(false) => return false,
            Err(_) => {
                tracing::info!(request_id, "client stopped reading; aborting the response");
                sink.abort(Abort::Stalled);
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared_body;

    /// Records what a protocol would have sent.
    #[derive(Default)]
    struct Capture {
        status: Option<StatusCode>,
        headers: HeaderMap,
        body: Vec<u8>,
        finished: bool,
        aborted: Option<Abort>,
        piece: usize,
        stall: bool,
    }

    #[async_trait::async_trait]
    impl Sink for Capture {
        fn max_piece(&self) -> usize {
            self.piece
        }
        async fn head(&mut self, status: StatusCode, headers: HeaderMap) -> bool {
            self.status = Some(status);
            self.headers = headers;
            true
        }
        async fn data(&mut self, piece: Bytes, _last: bool) -> bool {
            if self.stall {
                std::future::pending::<()>().await;
            }
            assert!(piece.len() <= self.piece);
            self.body.extend_from_slice(&piece);
            true
        }
        async fn finish(&mut self) -> bool {
            self.finished = true;
            true
        }
        fn abort(&mut self, why: Abort) {
            self.aborted = Some(why);
        }
    }

    fn capture() -> Capture {
        Capture {
            piece: 4,
            ..Capture::default()
        }
    }

    async fn write(r: Response, method: Method) -> (Capture, Written) {
        let mut c = capture();
        let w = write_response(&mut c, r, &method, "rid", Duration::from_secs(5)).await;
        (c, w)
    }

    #[tokio::test]
    async fn a_whole_body_goes_in_pieces_with_its_length() {
        let mut r = Response::new(StatusCode::OK, "text/plain", "0123456789");
        r.headers
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        let (c, w) = write(r, Method::GET).await;
        assert_eq!(c.body, b"0123456789");
        assert_eq!(c.headers["content-length"], "10");
        assert_eq!(c.headers[REQUEST_ID], "rid");
        assert!(c.headers.get("connection").is_none());
        assert!(c.finished && w.complete && w.bytes == 10);
    }

    #[tokio::test]
    async fn head_has_the_length_of_get_and_no_body() {
        let r = Response::new(StatusCode::OK, "text/plain", "0123456789");
        let (c, w) = write(r, Method::HEAD).await;
        assert_eq!(c.headers["content-length"], "10");
        assert!(c.body.is_empty() && w.bytes == 0 && c.finished);
    }

    #[tokio::test]
    async fn no_content_and_not_modified_have_no_length() {
        for status in [StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED] {
            let r = Response::new(status, "text/plain", Bytes::new());
            let (c, _) = write(r, Method::GET).await;
            assert!(c.headers.get("content-length").is_none(), "{status}");
            assert!(c.finished);
        }
    }

    #[tokio::test]
    async fn an_upstream_failing_midway_aborts() {
        let (body, mut writer) = shared_body(Some(10));
        writer.push(Bytes::from_static(b"01234"));
        let mut r = Response::new(StatusCode::OK, "video/mp4", Bytes::new());
        r.stream = Some(body);
        let task = tokio::spawn(write(r, Method::GET));
        writer.fail("gone");
        let (c, w) = task.await.expect("task");
        assert_eq!(c.aborted, Some(Abort::Upstream));
        assert!(!w.complete && !c.finished);
        assert_eq!(w.bytes, 5);
    }

    #[tokio::test]
    async fn an_overlong_stream_aborts() {
        let (body, mut writer) = shared_body(Some(3));
        writer.push(Bytes::from_static(b"01234"));
        writer.finish();
        let mut r = Response::new(StatusCode::OK, "video/mp4", Bytes::new());
        r.stream = Some(body);
        let (c, w) = write(r, Method::GET).await;
        assert_eq!(c.aborted, Some(Abort::Upstream));
        assert!(!w.complete);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_client_is_aborted_after_the_send_timeout() {
        let mut c = capture();
        c.stall = true;
        let r = Response::new(StatusCode::OK, "text/plain", "0123456789");
        let w = write_response(&mut c, r, &Method::GET, "rid", Duration::from_secs(5)).await;
        assert_eq!(c.aborted, Some(Abort::Stalled));
        assert!(!w.complete);
    }
}
