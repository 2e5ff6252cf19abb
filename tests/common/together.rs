//! Helpers for the real-time tests: the NATS server and PostgreSQL the
//! tests share, tokens with a playback session, and SSE and WebSocket
//! viewers that collect what their edge pushes.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::TEST_KEY_HEX;

/// NATS with JetStream: `CASCADE_TEST_NATS`, else the one `make test` runs.
pub fn nats_url() -> String {
    std::env::var("CASCADE_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A name no other run uses (channel names, so that subjects on the
/// shared NATS server are this run's alone).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// A token for `acl` bound to playback session `session`.
pub fn sign_session(acl: &str, session: &str) -> String {
    let key = cascade_token::Key::from_hex("test", TEST_KEY_HEX).expect("test key");
    cascade_token::sign(
        &key,
        &cascade_token::Claims {
            expires: cascade_serve::unix_now() + 3600,
            acl: vec![acl.to_string()],
            id: Some(session.to_string()),
            ..Default::default()
        },
    )
}

/// A PostgreSQL schema of its own on the test server, dropped at the end.
pub struct PgSchema {
    pub url: String,
    base: String,
    schema: String,
}

impl PgSchema {
    pub async fn new() -> PgSchema {
        sqlx::any::install_default_drivers();
        let base = std::env::var("CASCADE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let admin = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(&base)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {base}: {e} (make test starts it)"));
        let schema = format!(
            "cascade_t_{}_{}",
            cascade_serve::unix_now(),
            uuid::Uuid::new_v4().simple()
        );
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .expect("schema made");
        admin.close().await;
        let sep = if base.contains('?') { '&' } else { '?' };
        PgSchema {
            url: format!("{base}{sep}options[search_path]={schema}"),
            base,
            schema,
        }
    }

    pub async fn drop(self) {
        if let Ok(admin) = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(&self.base)
            .await
        {
            let _ = sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.schema))
                .execute(&admin)
                .await;
            admin.close().await;
        }
    }
}

/// One pushed event: its SSE id or WebSocket cursor (stored events only),
/// and the event.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub id: Option<String>,
    pub event: Value,
}

impl Pushed {
    pub fn kind(&self) -> &str {
        self.event["type"].as_str().unwrap_or("")
    }
}

/// A viewer on Server-Sent Events.
pub struct SseViewer {
    pub status: u16,
    body: Option<reqwest::Response>,
    buf: Vec<u8>,
}

impl SseViewer {
    /// Connects; `last_event_id` as a reconnecting browser sends it.
    pub async fn connect(url: &str, last_event_id: Option<&str>) -> SseViewer {
        let mut req = reqwest::Client::new().get(url);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.expect("the events listener answers");
        let status = resp.status().as_u16();
        SseViewer {
            status,
            body: Some(resp),
            buf: Vec::new(),
        }
    }

    /// The next event (keep-alive comments skipped), within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Pushed> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let frame: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&frame);
                let mut id = None;
                let mut data = None;
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(v.to_string());
                    }
                }
                if let Some(d) = data {
                    let event: Value = serde_json::from_str(&d).expect("events are JSON");
                    return Some(Pushed { id, event });
                }
                continue;
            }
            let body = self.body.as_mut()?;
            match tokio::time::timeout_at(deadline, body.chunk()).await {
                Ok(Ok(Some(c))) => self.buf.extend_from_slice(&c),
                _ => return None,
            }
        }
    }
}

/// A viewer on WebSocket.
pub struct WsViewer {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl WsViewer {
    pub async fn connect(url: &str) -> WsViewer {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("WebSocket to {url}: {e}"));
        WsViewer { ws }
    }

    /// Connects, or the HTTP status it was refused with.
    pub async fn try_connect(url: &str) -> Result<WsViewer, u16> {
        match tokio_tungstenite::connect_async(url).await {
            Ok((ws, _)) => Ok(WsViewer { ws }),
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
            Err(e) => panic!("WebSocket to {url}: {e}"),
        }
    }

    pub async fn send(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_string()))
            .await
            .expect("sent");
    }

    /// The next event within `wait`; `None` on timeout or close.
    pub async fn next(&mut self, wait: Duration) -> Option<Pushed> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(&t).expect("events are JSON");
                    return Some(Pushed {
                        id: v["cursor"].as_str().map(str::to_string),
                        event: v["event"].clone(),
                    });
                }
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(_))) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Whether the edge closed the connection within `wait`.
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return true,
                Ok(Some(Ok(_))) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// A viewer the tests read events from, whatever its transport.
pub trait Pushes {
    /// The next event within `wait`; `None` on timeout or close.
    fn next_event(&mut self, wait: Duration) -> impl std::future::Future<Output = Option<Pushed>>;
}

impl Pushes for SseViewer {
    async fn next_event(&mut self, wait: Duration) -> Option<Pushed> {
        self.next(wait).await
    }
}

impl Pushes for WsViewer {
    async fn next_event(&mut self, wait: Duration) -> Option<Pushed> {
        self.next(wait).await
    }
}

/// Events of a kind from a viewer until `want` of them came (or `wait`
/// passed); other kinds are skipped.
pub async fn collect<V: Pushes>(v: &mut V, kind: &str, want: usize, wait: Duration) -> Vec<Pushed> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut got = Vec::new();
    while got.len() < want {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match v.next_event(left).await {
            Some(p) if p.kind() == kind => got.push(p),
            Some(_) => {}
            None => break,
        }
    }
    got
}
