//! The client a tier uses to fetch from the next tier.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::{HeaderMap, StatusCode};

use crate::REQUEST_ID;

/// One upstream base URL with a pooled client.
#[derive(Clone, Debug)]
pub struct Upstream {
    client: reqwest::Client,
    base: String,
    max_body_bytes: usize,
    /// At most so many fetches in flight, by priority, when set.
    limiter: Option<std::sync::Arc<crate::priority::Limiter>>,
}

/// A fetched response, body read whole.
#[derive(Debug, Clone)]
pub struct UpstreamResponse {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

/// A fetched response whose body is still arriving.
#[derive(Debug, Clone)]
pub struct StreamingResponse {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// The body, as it arrives.
    pub body: crate::SharedBody,
}

/// Why a fetch failed. Says whether trying another upstream may help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// Could not connect or the connection broke: another upstream may work.
    #[error("upstream {0} unreachable: {1}")]
    Connect(String, String),
    /// No answer in time: another upstream may work.
    #[error("upstream {0} timed out")]
    Timeout(String),
    /// The body was over the limit.
    #[error("upstream body over {0} bytes")]
    TooLarge(usize),
    /// Too many fetches wait for this upstream already: another may have room.
    #[error("upstream {0} saturated")]
    Saturated(String),
}

impl UpstreamError {
    /// Whether another upstream may succeed where this one failed.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect(..) | UpstreamError::Timeout(_) | UpstreamError::Saturated(_)
        )
    }
}

impl Upstream {
    /// A client for `base` (such as `http://127.0.0.1:8081`).
    pub fn new(base: &str, timeout: Duration, max_body_bytes: usize) -> Upstream {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(timeout)
            // Below the origin's 30 s idle limit (and the shields' 60 s),
            // so a pooled connection is never reused as the server closes it.
            .pool_idle_timeout(Duration::from_secs(20))
            .no_proxy()
            .build()
            .unwrap_or_default();
        Upstream {
            client,
            base: base.trim_end_matches('/').to_string(),
            max_body_bytes,
            limiter: None,
        }
    }

    /// The same upstream with at most `limiter`'s fetches in flight,
    /// waiting ones served live first, then on demand, then pre-warm.
    pub fn with_limiter(mut self, limiter: std::sync::Arc<crate::priority::Limiter>) -> Upstream {
        self.limiter = Some(limiter);
        self
    }

    /// A place under the concurrency limit for a fetch of `path` at the
    /// priority of the work running (or the path's), and that priority.
    async fn admit(
        &self,
        path: &str,
    ) -> Result<(Option<crate::priority::Permit>, crate::priority::Priority), UpstreamError> {
        use crate::priority::Priority;
        let p = Priority::current().unwrap_or_else(|| Priority::of_path(path));
        let permit = match &self.limiter {
            Some(l) => Some(
                l.acquire(p)
                    .await
                    .ok_or_else(|| UpstreamError::Saturated(self.base.clone()))?,
            ),
            None => None,
        };
        Ok((permit, p))
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request and reads the whole body within the limit.
    pub async fn send(
        &self,
        method: http::Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
        request_id: &str,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let (_permit, priority) = self.admit(path_and_query).await?;
        let url = format!("{}{}", self.base, path_and_query);
        let mut req = self
            .client
            .request(method, &url)
            .header(REQUEST_ID, request_id);
        if priority == crate::priority::Priority::Prewarm {
            req = req.header(crate::priority::HEADER, priority.name());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.map_err(|e| self.classify(e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        if let Some(len) = resp.content_length() {
            if len as usize > self.max_body_bytes {
                return Err(UpstreamError::TooLarge(self.max_body_bytes));
            }
        }
        let body = self.read_whole(resp).await?;
        Ok(UpstreamResponse {
            status,
            headers,
            body,
        })
    }

    /// A GET whose body is handed on as it arrives: the status and headers,
    /// and a shared body fed by a task of its own. Only for answers that
    /// announce their length (within the limit); `Ok(Err(whole))` otherwise,
    /// with the body read whole.
    ///
    /// `on_whole` gets the complete body (to store it) before readers see
    /// the end, so that a request arriving just after finds it cached.
    /// `conditional` headers make it a revalidation; a 304 comes back whole.
    pub async fn get_streaming<F, Fut>(
        &self,
        path: &str,
        range: Option<&str>,
        conditional: &[(&str, &str)],
        request_id: &str,
        on_whole: F,
    ) -> Result<Result<StreamingResponse, UpstreamResponse>, UpstreamError>
    where
        F: FnOnce(Bytes) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let (permit, priority) = self.admit(path).await?;
        let url = format!("{}{}", self.base, path);
        let mut req = self.client.get(&url).header(REQUEST_ID, request_id);
        if priority == crate::priority::Priority::Prewarm {
            req = req.header(crate::priority::HEADER, priority.name());
        }
        if let Some(r) = range {
            req = req.header("range", r);
        }
        for (k, v) in conditional {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.map_err(|e| self.classify(e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let len = resp
            .content_length()
            .filter(|_| status != StatusCode::NOT_MODIFIED);
        let Some(len) = len else {
            let body = self.read_whole(resp).await?;
            return Ok(Err(UpstreamResponse {
                status,
                headers,
                body,
            }));
        };
        if len as usize > self.max_body_bytes {
            return Err(UpstreamError::TooLarge(self.max_body_bytes));
        }
        let (body, mut writer) = crate::shared_body(Some(len));
        let this = self.clone();
        let whole = body.clone();
        tokio::spawn(async move {
            // The place under the limit is held until the body is in.
            let _permit = permit;
            let mut stream = resp.bytes_stream();
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(c) if writer.len() + c.len() <= len as usize => writer.push(c),
                    Ok(_) => return writer.fail("upstream sent more than it announced"),
                    Err(e) => return writer.fail(&this.classify(e).to_string()),
                }
            }
            if writer.len() == len as usize {
                on_whole(whole.snapshot()).await;
                writer.finish();
            } else {
                writer.fail("upstream body ended short");
            }
        });
        Ok(Ok(StreamingResponse {
            status,
            headers,
            body,
        }))
    }

    async fn read_whole(&self, resp: reqwest::Response) -> Result<Bytes, UpstreamError> {
        let mut body = BytesMut::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.classify(e))?;
            if body.len() + chunk.len() > self.max_body_bytes {
                return Err(UpstreamError::TooLarge(self.max_body_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }

    /// A GET, with an optional `Range`.
    pub async fn get(
        &self,
        path: &str,
        range: Option<&str>,
        request_id: &str,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let headers: Vec<(&str, &str)> = range.map(|r| ("range", r)).into_iter().collect();
        self.send(http::Method::GET, path, &headers, None, request_id)
            .await
    }

    fn classify(&self, e: reqwest::Error) -> UpstreamError {
        if e.is_timeout() {
            UpstreamError::Timeout(self.base.clone())
        } else {
            // Without the URL: it may carry a viewer's token in its query.
            UpstreamError::Connect(self.base.clone(), e.without_url().to_string())
        }
    }
}
