//! Live ingest at the origin: the [`cascade_live::Ingest`] the RTMP and
//! SRT listeners hand publishes to. It checks stream keys against channels,
//! keeps each channel's ingest health (what `cascade live status` shows),
//! and counts media and refusals. The real-time ladder that turns this
//! media into CMAF parts is the next step.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use cascade_live::{flv, Ingest, Media, Publish, Refusal, Role};

use crate::repo::channels;
use crate::service::channels::authorize_publish;
use crate::service::live_health::{parse_publication, publication, Health};
use crate::service::state::State;
use crate::storage::{clock, Kind};

/// The origin's side of the RTMP listener.
pub(crate) struct LiveIngest {
    pub(crate) state: Arc<State>,
}

#[async_trait::async_trait]
impl Ingest for LiveIngest {
    async fn authorize(
        &self,
        key: &str,
        role: Role,
        _peer: SocketAddr,
    ) -> Result<Publish, Refusal> {
        let channel = match authorize_publish(&self.state, key).await {
            Ok(c) => c,
            Err(e) if e.kind() == Kind::Unauthorized => return Err(Refusal::BadKey),
            Err(e) => {
                tracing::error!(error = %e, "checking a stream key");
                return Err(Refusal::Protocol(
                    "the origin could not check the key".into(),
                ));
            }
        };
        // One primary and one backup per channel.
        let name = publication(&channel.name, role);
        if self.state.live.publishing(&name) {
            return Err(Refusal::Busy);
        }
        self.state.live_media.prepare(
            &channel.name,
            u32::try_from(channel.dvr_minutes).unwrap_or(120),
        );
        Ok(Publish {
            name,
            passphrase: (!channel.srt_passphrase.is_empty()).then_some(channel.srt_passphrase),
        })
    }

    fn started(&self, channel: &str, peer: SocketAddr) {
        if let Ok(mut c) = self.state.live.channels.lock() {
            c.insert(
                channel.to_string(),
                Health {
                    peer,
                    since: clock::now(),
                    started: Instant::now(),
                    video_frames: 0,
                    keyframes: 0,
                    audio_frames: 0,
                    bytes: 0,
                    last_keyframe: None,
                    has_video_config: false,
                    has_audio_config: false,
                },
            );
        }
        let (channel, role) = parse_publication(channel);
        tracing::info!(channel, encoder = %peer, role = role.as_str(), "live publish began");
        // The first encoder's media is used; a second one stands by.
        let first = self
            .state
            .live
            .active
            .lock()
            .map(|mut a| {
                if a.contains_key(channel) {
                    false
                } else {
                    a.insert(channel.to_string(), role);
                    true
                }
            })
            .unwrap_or(false);
        if !first {
            return;
        }
        self.state.live_media.started(channel);
        let (state, name) = (self.state.clone(), channel.to_string());
        tokio::spawn(async move {
            if let Err(e) = channels::set_live(&state.db, &name, true, clock::now() as i64).await {
                tracing::warn!(error = %e, channel = name, "marking a channel live");
            }
        });
    }

    fn media(&self, channel: &str, media: Media) {
        if let Media::Cue(section) = &media {
            let (name, role) = parse_publication(channel);
            let active = self
                .state
                .live
                .active
                .lock()
                .map(|a| a.get(name) == Some(&role))
                .unwrap_or(false);
            if active {
                crate::service::live_breaks::cue(&self.state, name, section);
            }
            return;
        }
        let frame = match &media {
            Media::Video {
                timestamp_ms, data, ..
            } if !data.is_empty() => cascade_live::frame::from_flv_video(*timestamp_ms, data),
            Media::Audio {
                timestamp_ms, data, ..
            } if !data.is_empty() => cascade_live::frame::from_flv_audio(*timestamp_ms, data),
            Media::Frame(f) => Some(f.clone()),
            _ => None,
        };
        if let Some(frame) = frame {
            let (name, role) = parse_publication(channel);
            let active = self
                .state
                .live
                .active
                .lock()
                .map(|a| a.get(name) == Some(&role))
                .unwrap_or(false);
            if active {
                self.state.live_media.frame(name, frame);
            }
        }
        let Ok(mut c) = self.state.live.channels.lock() else {
            return;
        };
        let Some(h) = c.get_mut(channel) else {
            return;
        };
        let (kind, bytes) = match &media {
            Media::Data(data) => ("stream", data.len()),
            Media::Frame(_) | Media::Cue(_) => ("stream", 0),
            Media::Video { data, .. } => ("video", data.len()),
            Media::Audio { data, .. } => ("audio", data.len()),
        };
        if bytes > 0 {
            h.bytes += bytes as u64;
            self.state
                .live
                .media_bytes
                .with_label_values(&[kind])
                .inc_by(bytes as u64);
        }
        match media {
            Media::Data(_) | Media::Frame(_) | Media::Cue(_) => {}
            Media::Video { kind, .. } => match kind {
                flv::Video::AvcConfig => h.has_video_config = true,
                flv::Video::Avc { keyframe } => {
                    h.video_frames += 1;
                    if keyframe {
                        h.keyframes += 1;
                        h.last_keyframe = Some(Instant::now());
                    }
                }
                flv::Video::AvcEnd => {}
            },
            Media::Audio { kind, .. } => match kind {
                flv::Audio::AacConfig => h.has_audio_config = true,
                flv::Audio::Aac => h.audio_frames += 1,
            },
        }
    }

    fn ended(&self, channel: &str) {
        if let Ok(mut c) = self.state.live.channels.lock() {
            c.remove(channel);
        }
        let (channel, role) = parse_publication(channel);
        tracing::info!(channel, role = role.as_str(), "live publish ended");
        let other = match role {
            Role::Primary => Role::Backup,
            Role::Backup => Role::Primary,
        };
        let standby = self.state.live.publishing(&publication(channel, other));
        let Ok(mut active) = self.state.live.active.lock() else {
            return;
        };
        if active.get(channel) != Some(&role) {
            // The standby encoder left; nothing changes for viewers.
            return;
        }
        if standby {
            // The other encoder takes over: the event goes on after a
            // discontinuity.
            active.insert(channel.to_string(), other);
            drop(active);
            tracing::warn!(channel, now = other.as_str(), "live encoder failed over");
            self.state
                .live
                .failovers
                .with_label_values(&[channel])
                .inc();
            self.state.live_media.switched(channel);
            return;
        }
        active.remove(channel);
        drop(active);
        self.state.live_media.ended(channel);
        let (state, name) = (self.state.clone(), channel.to_string());
        tokio::spawn(async move {
            if let Err(e) = channels::set_live(&state.db, &name, false, clock::now() as i64).await {
                tracing::warn!(error = %e, channel = name, "marking a channel idle");
            }
        });
    }

    fn refused(&self, why: &Refusal) {
        self.state
            .live
            .refusals
            .with_label_values(&[why.code()])
            .inc();
    }
}
