//! The RTMP ingest listener: encoders (OBS, FFmpeg, hardware encoders)
//! publish to `rtmp://host:1935/{app}/{stream key}`.
//!
//! `rml_rtmp` speaks the protocol (handshake, chunk stream, AMF0 commands)
//! without IO; this drives it over a socket. Before a publish is accepted a
//! connection may send only [`PRE_AUTH_BYTES`] and must get there within
//! [`HANDSHAKE_TIME`], so that garbage and idle connections cost little; a
//! publisher that sends nothing for [`IDLE_TIME`] is dropped. Every
//! connection runs in its own task: whatever one sends, the others and the
//! listener carry on. Cue points (`onCuePoint`) are read from the same
//! bytes by [`crate::rtmp_cues`] and handed on as SCTE-35 cues.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::flv;
use crate::rtmp_cues::CueWatcher;
use crate::{Ingest, Media, Refusal, Role};

/// Time from connecting to an accepted publish.
pub const HANDSHAKE_TIME: Duration = Duration::from_secs(10);
/// Bytes a connection may send before its publish is accepted.
pub const PRE_AUTH_BYTES: usize = 64 * 1024;
/// Silence after which a publisher is dropped.
pub const IDLE_TIME: Duration = Duration::from_secs(15);
/// Connections at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 256;

/// A running RTMP listener.
pub struct RtmpServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RtmpServer {
    /// Stops accepting and ends the publishing connections.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Serves RTMP publishers on `listener`, handing what they send to `ingest`.
pub fn serve(listener: TcpListener, ingest: Arc<dyn Ingest>) -> std::io::Result<RtmpServer> {
    let addr = listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut stop_rx = stopped.clone();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = stop_rx.changed() => break,
            };
            let (tcp, peer) = tokio::select! {
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "rtmp accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop_rx.changed() => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            };
            let ingest = ingest.clone();
            let mut stopped = stopped.clone();
            conns.spawn(async move {
                tokio::select! {
                    _ = connection(tcp, peer, ingest) => {}
                    _ = stopped.changed() => {}
                }
                drop(permit);
            });
        }
        conns.shutdown().await;
    });
    Ok(RtmpServer { addr, stop, task })
}

/// Why a connection ended.
enum End {
    /// The encoder hung up or stopped publishing.
    Closed,
    /// Refused, for this reason.
    Refused(Refusal),
}

async fn connection(mut tcp: TcpStream, peer: SocketAddr, ingest: Arc<dyn Ingest>) {
    let _ = tcp.set_nodelay(true);
    let mut conn = Conn {
        ingest: ingest.clone(),
        peer,
        channel: None,
        received: 0,
        cues: CueWatcher::new(),
    };
    let end = conn.run(&mut tcp).await;
    // Ends the publish (also if a panic unwinds through here).
    drop(conn);
    match end {
        End::Closed => tracing::debug!(%peer, "rtmp connection closed"),
        End::Refused(r) => {
            ingest.refused(&r);
            tracing::info!(%peer, reason = r.code(), detail = %r, "rtmp publish refused");
        }
    }
    let _ = tcp.shutdown().await;
}

struct Conn {
    ingest: Arc<dyn Ingest>,
    peer: SocketAddr,
    /// The channel, once its publish is accepted.
    channel: Option<String>,
    /// Bytes read so far.
    received: usize,
    /// Cue points (`onCuePoint`), which the session drops, read alongside.
    cues: CueWatcher,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(channel) = self.channel.take() {
            self.ingest.ended(&channel);
        }
    }
}

impl Conn {
    async fn run(&mut self, tcp: &mut TcpStream) -> End {
        let deadline = tokio::time::Instant::now() + HANDSHAKE_TIME;
        let mut buf = vec![0u8; 16 * 1024];
        // The handshake.
        let mut handshake = Handshake::new(PeerType::Server);
        let remaining = loop {
            let n = match self.read(tcp, &mut buf, Some(deadline)).await {
                Ok(n) => n,
                Err(end) => return end,
            };
            match handshake.process_bytes(&buf[..n]) {
                Ok(HandshakeProcessResult::InProgress { response_bytes }) => {
                    if tcp.write_all(&response_bytes).await.is_err() {
                        return End::Closed;
                    }
                }
                Ok(HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                }) => {
                    if tcp.write_all(&response_bytes).await.is_err() {
                        return End::Closed;
                    }
                    break remaining_bytes;
                }
                Err(_) => return End::Refused(Refusal::Protocol("not an RTMP handshake".into())),
            }
        };
        // The session: connect, then publish, then media.
        let (mut session, initial) = match ServerSession::new(ServerSessionConfig::new()) {
            Ok(s) => s,
            Err(_) => return End::Closed,
        };
        if let Err(end) = self.handle(tcp, &mut session, initial).await {
            return end;
        }
        let mut input = remaining;
        loop {
            if !input.is_empty() {
                let results = match session_input(&mut session, &input) {
                    Some(r) => r,
                    None => {
                        return End::Refused(Refusal::Protocol("a malformed RTMP message".into()))
                    }
                };
                if let Err(end) = self.handle(tcp, &mut session, results).await {
                    return end;
                }
                for section in self.cues.feed(&input) {
                    if let Some(channel) = &self.channel {
                        self.ingest
                            .media(channel, Media::Cue(bytes::Bytes::from(section)));
                    }
                }
            }
            let before_publish = self.channel.is_none();
            let n = match self
                .read(tcp, &mut buf, before_publish.then_some(deadline))
                .await
            {
                Ok(n) => n,
                Err(end) => return end,
            };
            input = buf[..n].to_vec();
        }
    }

    /// Reads some bytes within the deadline (before a publish) or the idle
    /// time (after); ends the connection on EOF, silence or too many bytes
    /// before a publish.
    async fn read(
        &mut self,
        tcp: &mut TcpStream,
        buf: &mut [u8],
        deadline: Option<tokio::time::Instant>,
    ) -> Result<usize, End> {
        let until = deadline.unwrap_or_else(|| tokio::time::Instant::now() + IDLE_TIME);
        let n = match tokio::time::timeout_at(until, tcp.read(buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Err(End::Closed),
            Ok(Ok(n)) => n,
            Err(_) if deadline.is_some() => {
                return Err(End::Refused(Refusal::Protocol(
                    "no publish within the handshake time".into(),
                )))
            }
            Err(_) => return Err(End::Refused(Refusal::Idle)),
        };
        self.received = self.received.saturating_add(n);
        if self.channel.is_none() && self.received > PRE_AUTH_BYTES {
            return Err(End::Refused(Refusal::Protocol(
                "too many bytes before a publish".into(),
            )));
        }
        Ok(n)
    }

    /// Sends the session's responses and acts on its events.
    async fn handle(
        &mut self,
        tcp: &mut TcpStream,
        session: &mut ServerSession,
        results: Vec<ServerSessionResult>,
    ) -> Result<(), End> {
        let mut queue: std::collections::VecDeque<ServerSessionResult> = results.into();
        while let Some(result) = queue.pop_front() {
            match result {
                ServerSessionResult::OutboundResponse(packet) => {
                    if tcp.write_all(&packet.bytes).await.is_err() {
                        return Err(End::Closed);
                    }
                }
                ServerSessionResult::RaisedEvent(event) => {
                    let more = self.event(tcp, session, event).await?;
                    queue.extend(more);
                }
                ServerSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        Ok(())
    }

    async fn event(
        &mut self,
        tcp: &mut TcpStream,
        session: &mut ServerSession,
        event: ServerSessionEvent,
    ) -> Result<Vec<ServerSessionResult>, End> {
        match event {
            ServerSessionEvent::ConnectionRequested { request_id, .. } => session
                .accept_request(request_id)
                .map_err(|_| End::Refused(Refusal::Protocol("a bad connect".into()))),
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                app_name,
                stream_key,
                ..
            } => {
                // `rtmp://host/live/{key}` is the primary encoder,
                // `rtmp://host/backup/{key}` the backup.
                let role = if app_name == "backup" {
                    Role::Backup
                } else {
                    Role::Primary
                };
                if self.channel.is_some() {
                    return Err(End::Refused(Refusal::Protocol(
                        "a second publish on one connection".into(),
                    )));
                }
                match self.ingest.authorize(&stream_key, role, self.peer).await {
                    Ok(publish) => {
                        let channel = publish.name;
                        self.channel = Some(channel.clone());
                        self.ingest.started(&channel, self.peer);
                        session
                            .accept_request(request_id)
                            .map_err(|_| End::Refused(Refusal::Protocol("a bad publish".into())))
                    }
                    Err(refusal) => {
                        // Say why, then hang up.
                        let (code, why) = match &refusal {
                            Refusal::BadKey => ("NetStream.Publish.BadName", "bad stream key"),
                            Refusal::Busy => ("NetStream.Publish.BadName", "the channel is busy"),
                            _ => ("NetStream.Publish.Failed", "refused"),
                        };
                        if let Ok(r) = session.reject_request(request_id, code, why) {
                            for result in r {
                                if let ServerSessionResult::OutboundResponse(p) = result {
                                    let _ = tcp.write_all(&p.bytes).await;
                                }
                            }
                        }
                        Err(End::Refused(refusal))
                    }
                }
            }
            ServerSessionEvent::PublishStreamFinished { .. } => Err(End::Closed),
            ServerSessionEvent::VideoDataReceived {
                data, timestamp, ..
            } => {
                let Some(channel) = &self.channel else {
                    return Err(End::Refused(Refusal::Protocol(
                        "media before a publish".into(),
                    )));
                };
                let kind = flv::video(&data).map_err(|e| End::Refused(Refusal::Codec(e)))?;
                self.ingest.media(
                    channel,
                    Media::Video {
                        kind,
                        timestamp_ms: timestamp.value,
                        data,
                    },
                );
                Ok(Vec::new())
            }
            ServerSessionEvent::AudioDataReceived {
                data, timestamp, ..
            } => {
                let Some(channel) = &self.channel else {
                    return Err(End::Refused(Refusal::Protocol(
                        "media before a publish".into(),
                    )));
                };
                let kind = flv::audio(&data).map_err(|e| End::Refused(Refusal::Codec(e)))?;
                self.ingest.media(
                    channel,
                    Media::Audio {
                        kind,
                        timestamp_ms: timestamp.value,
                        data,
                    },
                );
                Ok(Vec::new())
            }
            ServerSessionEvent::PlayStreamRequested { request_id, .. } => {
                // Ingest only: viewers play through the edges.
                let _ = session.reject_request(request_id, "NetStream.Play.Failed", "ingest only");
                Err(End::Refused(Refusal::Protocol(
                    "play is not offered".into(),
                )))
            }
            _ => Ok(Vec::new()),
        }
    }
}

/// Hands bytes to the RTMP session: its results, or `None` for bytes it
/// cannot take. `rml_rtmp` 0.8 panics on an AMF0 command with fewer than
/// three values (found by the `rtmp_ingest` fuzz target), which any client
/// can send before its key is checked; the panic is caught here and the
/// connection refused like any malformed message.
pub fn session_input(
    session: &mut rml_rtmp::sessions::ServerSession,
    bytes: &[u8],
) -> Option<Vec<rml_rtmp::sessions::ServerSessionResult>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| session.handle_input(bytes)))
        .ok()?
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_that_panics_rml_rtmp_is_refused_not_a_crash() {
        // Found by the rtmp_ingest fuzz target: a chunk whose AMF0 command
        // has fewer than three values.
        let mut input = vec![0u8; 60];
        input[21] = 17;
        input[59] = 31;
        let (mut session, _) =
            rml_rtmp::sessions::ServerSession::new(rml_rtmp::sessions::ServerSessionConfig::new())
                .unwrap();
        assert!(session_input(&mut session, &input).is_none());
    }
}
