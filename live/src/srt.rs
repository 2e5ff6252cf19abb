//! The SRT ingest listener: encoders call in (caller mode) with
//! `srt://host:8890?streamid=publish:{stream key}` and send an MPEG
//! transport stream.
//!
//! `srt-tokio` speaks SRT (handshake, stream ids, retransmission); this
//! checks each caller's stream id against the channels before accepting
//! it, reads the program map for codecs (H.264 and AAC only) and counts
//! frames. A caller refused by key never gets a connection; one that sends
//! nothing for [`IDLE_TIME`] is dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use srt_protocol::options::{KeySize, Passphrase};
use srt_protocol::settings::KeySettings;
use srt_tokio::access::{RejectReason, ServerRejectReason};
use srt_tokio::{ConnectionRequest, SrtListener};
use tokio::sync::watch;

use crate::{flv, ts, Ingest, Media, Refusal, Role};

/// Silence after which a publisher is dropped.
pub const IDLE_TIME: Duration = Duration::from_secs(15);
/// Callers being handled at once; more are refused as overloaded.
pub const MAX_CONNECTIONS: usize = 256;
/// Longest stream id looked at.
const MAX_STREAM_ID: usize = 512;

/// A running SRT listener.
pub struct SrtServer {
    /// Where it listens (UDP).
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl SrtServer {
    /// Stops listening and ends the publishing connections.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Serves SRT callers on `socket`, handing what they send to `ingest`.
pub async fn serve(
    socket: tokio::net::UdpSocket,
    ingest: Arc<dyn Ingest>,
) -> std::io::Result<SrtServer> {
    let addr = socket.local_addr()?;
    let (mut listener, mut incoming) = SrtListener::builder()
        .socket(socket)
        .latency(Duration::from_millis(200))
        .bind(addr)
        .await?;
    let (stop, stopped) = watch::channel(false);
    let mut stop_rx = stopped.clone();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let request = tokio::select! {
                r = incoming.incoming().next() => match r {
                    Some(r) => r,
                    None => {
                        // srt-tokio's listener task died (it panics on some
                        // handshakes): listen again on the same address;
                        // publishers on it reconnect within their grace.
                        tracing::error!(%addr, "the SRT listener stopped; listening again");
                        match rebind(addr).await {
                            Some((l, i)) => {
                                listener = l;
                                incoming = i;
                                continue;
                            }
                            None => break,
                        }
                    }
                },
                _ = stop_rx.changed() => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            };
            if conns.len() >= MAX_CONNECTIONS {
                ingest.refused(&Refusal::Protocol("too many SRT callers".into()));
                let _ = request
                    .reject(RejectReason::Server(ServerRejectReason::Overload))
                    .await;
                continue;
            }
            let ingest = ingest.clone();
            let mut stopped = stopped.clone();
            conns.spawn(async move {
                tokio::select! {
                    _ = caller(request, ingest) => {}
                    _ = stopped.changed() => {}
                }
            });
        }
        conns.shutdown().await;
        listener.close().await;
    });
    Ok(SrtServer { addr, stop, task })
}

/// A new SRT listener on `addr` (the old one's socket is gone with it),
/// retried for a few seconds.
async fn rebind(addr: SocketAddr) -> Option<(SrtListener, srt_tokio::SrtIncoming)> {
    for _ in 0..50 {
        match SrtListener::builder()
            .latency(Duration::from_millis(200))
            .bind(addr)
            .await
        {
            Ok(pair) => return Some(pair),
            // The dying listener may still hold the port for a moment.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    tracing::error!(%addr, "the SRT listener could not listen again");
    None
}

/// The stream key and encoder role in a stream id: `publish:{key}` or
/// `backup:{key}`, or the SRT access control form
/// `#!::r={key},m=publish[,role=backup]`.
pub fn stream_key(stream_id: &str) -> Option<(&str, Role)> {
    if stream_id.len() > MAX_STREAM_ID {
        return None;
    }
    for (prefix, role) in [("publish:", Role::Primary), ("backup:", Role::Backup)] {
        if let Some(key) = stream_id.strip_prefix(prefix) {
            return Some((key, role)).filter(|(k, _)| !k.is_empty());
        }
    }
    let fields = stream_id.strip_prefix("#!::")?;
    let mut key = None;
    let mut publish = false;
    let mut role = Role::Primary;
    for f in fields.split(',') {
        match f.split_once('=') {
            Some(("r", v)) if !v.is_empty() => key = Some(v),
            Some(("m", "publish")) => publish = true,
            Some(("role", "backup")) => role = Role::Backup,
            _ => {}
        }
    }
    key.filter(|_| publish).map(|k| (k, role))
}

/// Ends a publish when dropped (also on a panic).
struct Publishing {
    ingest: Arc<dyn Ingest>,
    channel: String,
}

impl Drop for Publishing {
    fn drop(&mut self) {
        self.ingest.ended(&self.channel);
    }
}

async fn caller(request: ConnectionRequest, ingest: Arc<dyn Ingest>) {
    let peer = request.remote();
    let key = request
        .stream_id()
        .and_then(|id| stream_key(id))
        .map(|(k, role)| (k.to_string(), role));
    let Some((key, role)) = key else {
        ingest.refused(&Refusal::BadKey);
        tracing::info!(%peer, "srt caller refused: no publish stream id");
        let _ = request
            .reject(RejectReason::Server(ServerRejectReason::BadMode))
            .await;
        return;
    };
    let publish = match ingest.authorize(&key, role, peer).await {
        Ok(p) => p,
        Err(r) => {
            ingest.refused(&r);
            tracing::info!(%peer, reason = r.code(), "srt caller refused");
            let reason = match r {
                Refusal::Busy => ServerRejectReason::Conflict,
                _ => ServerRejectReason::Unauthorized,
            };
            let _ = request.reject(RejectReason::Server(reason)).await;
            return;
        }
    };
    // A channel with a passphrase takes only callers that encrypt with it,
    // and say their key length (`pbkeylen`); a channel without one, only
    // callers in the clear. (srt-protocol 0.4 panics when the two sides
    // disagree on either, so that is settled here, before accepting.)
    let keys = match (&publish.passphrase, request.key_size()) {
        (None, KeySize::Unspecified) => None,
        (None, _) => {
            refuse(
                &request_refusal(
                    &ingest,
                    "this channel takes SRT in the clear (no passphrase)",
                ),
                peer,
            );
            let _ = request
                .reject(RejectReason::Server(ServerRejectReason::Unauthorized))
                .await;
            return;
        }
        (Some(_), KeySize::Unspecified) => {
            refuse(
                &request_refusal(
                    &ingest,
                    "this channel takes encrypted SRT only (passphrase and pbkeylen)",
                ),
                peer,
            );
            let _ = request
                .reject(RejectReason::Server(ServerRejectReason::Unauthorized))
                .await;
            return;
        }
        (Some(p), size) => match Passphrase::try_from(p.clone()) {
            Ok(passphrase) => Some(KeySettings {
                key_size: size,
                passphrase,
            }),
            Err(_) => {
                refuse(
                    &request_refusal(&ingest, "the channel's SRT passphrase is unusable"),
                    peer,
                );
                let _ = request
                    .reject(RejectReason::Server(ServerRejectReason::Unauthorized))
                    .await;
                return;
            }
        },
    };
    let mut socket = match request.accept(keys).await {
        Ok(s) => s,
        Err(e) => {
            let r = Refusal::Protocol("the SRT handshake failed (a wrong passphrase?)".into());
            ingest.refused(&r);
            tracing::info!(%peer, error = %e, "srt accept failed");
            return;
        }
    };
    let channel = publish.name;
    ingest.started(&channel, peer);
    let publishing = Publishing {
        ingest: ingest.clone(),
        channel,
    };
    let mut reader = ts::Reader::default();
    loop {
        let next = match tokio::time::timeout(IDLE_TIME, socket.next()).await {
            Ok(Some(Ok((_, data)))) => data,
            Ok(_) => break,
            Err(_) => {
                ingest.refused(&Refusal::Idle);
                break;
            }
        };
        if let Err(e) = feed(&mut reader, &publishing, &next) {
            ingest.refused(&Refusal::Codec(e.clone()));
            tracing::info!(%peer, channel = publishing.channel, detail = %e, "srt publish refused");
            break;
        }
    }
    drop(publishing);
    let _ = futures::SinkExt::close(&mut socket).await;
}

/// Counts a refusal of a caller before its connection is accepted.
fn request_refusal(ingest: &Arc<dyn Ingest>, why: &str) -> Refusal {
    let r = Refusal::Protocol(why.into());
    ingest.refused(&r);
    r
}

fn refuse(r: &Refusal, peer: SocketAddr) {
    tracing::info!(%peer, detail = %r, "srt caller refused");
}

/// Hands one datagram to the ingest: its bytes, then what its packets began.
fn feed(reader: &mut ts::Reader, p: &Publishing, data: &Bytes) -> Result<(), flv::Unsupported> {
    p.ingest.media(&p.channel, Media::Data(data.clone()));
    reader.push(data, &mut |event| {
        let media = match event {
            ts::Event::Codecs => Media::Video {
                kind: flv::Video::AvcConfig,
                timestamp_ms: 0,
                data: Bytes::new(),
            },
            ts::Event::VideoFrame { keyframe } => Media::Video {
                kind: flv::Video::Avc { keyframe },
                timestamp_ms: 0,
                data: Bytes::new(),
            },
            ts::Event::AudioFrame => Media::Audio {
                kind: flv::Audio::Aac,
                timestamp_ms: 0,
                data: Bytes::new(),
            },
            ts::Event::Frame(f) => Media::Frame(f),
            ts::Event::Cue(section) => Media::Cue(Bytes::from(section)),
        };
        p.ingest.media(&p.channel, media);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids() {
        assert_eq!(
            stream_key("publish:final.abc"),
            Some(("final.abc", Role::Primary))
        );
        assert_eq!(
            stream_key("backup:final.abc"),
            Some(("final.abc", Role::Backup))
        );
        assert_eq!(
            stream_key("#!::r=final.abc,m=publish"),
            Some(("final.abc", Role::Primary))
        );
        assert_eq!(
            stream_key("#!::m=publish,r=final.abc"),
            Some(("final.abc", Role::Primary))
        );
        assert_eq!(
            stream_key("#!::m=publish,r=final.abc,role=backup"),
            Some(("final.abc", Role::Backup))
        );
        assert_eq!(stream_key("backup:"), None);
        assert_eq!(stream_key("#!::r=final.abc,m=request"), None);
        assert_eq!(stream_key("publish:"), None);
        assert_eq!(stream_key("final.abc"), None);
        assert_eq!(stream_key(&"x".repeat(600)), None);
    }
}
