//! Live media at the origin: each channel's segmenter runs in its own task,
//! fed by the ingest; the parts, init segments and live manifest it makes
//! are kept in RAM for the DVR window and handed to shields and edges,
//! which may wait for a part that does not exist yet (a blocking request):
//! they are woken the moment it does.
//!
//! An encoder that drops and comes back within the reconnect grace
//! continues the same event after a discontinuity; after the grace the
//! event ends (the playlists get `EXT-X-ENDLIST`). Segment numbers never
//! repeat on a channel, across reconnects, events and restarts of the
//! origin: a new event starts at the wall clock divided by the segment
//! target, and a segment is never shorter than the target except the last.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cascade_live::frame::Frame;
use cascade_live::segmenter::{Made, Segmenter, Targets, TrackFrame};
use cascade_packager::live::LiveManifest;
use cascade_packager::TrackKind;
use object_store::path::Path as ObjPath;
use object_store::ObjectStore;
use prometheus::{IntCounterVec, IntGaugeVec};
use tokio::sync::{mpsc, watch};

use crate::storage::clock;
use cascade_live::ladder::{self as live_ladder, LadderConfig, LadderIn, LadderOut};

/// Default DVR window of a channel, in minutes.
pub(crate) const DEFAULT_DVR_MINUTES: u32 = 120;

/// Frames queued per channel before the ingest drops them (and counts it).
const QUEUE: usize = 4096;

/// All channels' live media.
pub(crate) struct LiveMedia {
    channels: Mutex<HashMap<String, Arc<ChannelMedia>>>,
    /// Frames to each channel's segmenter task.
    feeds: Mutex<HashMap<String, mpsc::Sender<Input>>>,
    /// Each channel's DVR window in minutes, as its last publish found it.
    dvr: Mutex<HashMap<String, u32>>,
    targets: Targets,
    grace: Duration,
    ladder: Vec<crate::config::Rung>,
    preset: String,
    pub(crate) speed: prometheus::GaugeVec,
    pub(crate) rungs_dropped: IntCounterVec,
    pub(crate) parts: IntCounterVec,
    pub(crate) dropped: IntCounterVec,
    pub(crate) edge_msn: IntGaugeVec,
    /// `/live-mezz/` requests by kind (a blocking manifest request, a part…).
    pub(crate) requests: IntCounterVec,
    /// Where completed segments go (the DVR window and the recording).
    store: Arc<dyn ObjectStore>,
    /// Segments whose parts stay in RAM (the rest are read from the store).
    ram_segments: u64,
    /// Events that ended, for the recorder.
    ended_tx: mpsc::UnboundedSender<Arc<ChannelMedia>>,
}

/// One channel's current event: what the segmenter made so far.
pub(crate) struct ChannelMedia {
    pub(crate) channel: String,
    pub(crate) event: String,
    state: Mutex<Stored>,
    changed: watch::Sender<u64>,
    store: Arc<dyn ObjectStore>,
    ram_segments: u64,
    /// Segments being written to the store.
    pending: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct Stored {
    manifest: Option<Arc<LiveManifest>>,
    json: Bytes,
    parts: HashMap<(String, u64, u32), Bytes>,
    inits: HashMap<(String, u32), Bytes>,
    /// Segments written to the store, with their init generation.
    stored: std::collections::BTreeMap<u64, u32>,
    /// Init segments written to the store.
    stored_inits: std::collections::HashSet<(String, u32)>,
}

/// The object path of a live event's file (`{track}/{msn}.m4s`,
/// `{track}/init-{g}.mp4`).
pub(crate) fn live_object(channel: &str, event: &str, file: &str) -> ObjPath {
    ObjPath::from(format!("live/{channel}/{event}/{file}"))
}

/// What a channel's segmenter task takes.
enum Input {
    /// A publisher began (after a drop: a discontinuity).
    Started,
    Frame(Frame, u64),
    /// The publisher went away.
    Ended,
    /// What the ladder made.
    Ladder(LadderOut),
    /// An ad break starts with the next segment (`Some(ms)`), or the one
    /// running ends (`None`); with the cue's id, if it had one.
    Break {
        id: Option<u32>,
        duration_ms: Option<u64>,
        source: &'static str,
        done: Option<tokio::sync::oneshot::Sender<Option<cascade_packager::live::LiveBreak>>>,
    },
}

/// What a request for a part finds.
pub(crate) enum PartLookup {
    Found(Bytes),
    /// Its segment is complete and kept in the store, not in RAM.
    Stored,
    /// Not in the window, or it never will exist.
    Gone,
    /// Still not there when the wait ended.
    NotYet,
}

impl LiveMedia {
    /// The live media of every channel; ended events are sent to the
    /// receiver it returns (the recorder).
    pub(crate) fn new(
        registry: &prometheus::Registry,
        cfg: &crate::config::OriginConfig,
        store: Arc<dyn ObjectStore>,
    ) -> anyhow::Result<(LiveMedia, mpsc::UnboundedReceiver<Arc<ChannelMedia>>)> {
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        let (part_ms, segment_ms, grace_secs) = (
            cfg.live_part_ms,
            cfg.live_segment_ms,
            cfg.live_reconnect_grace_secs,
        );
        let speed = prometheus::GaugeVec::new(
            prometheus::Opts::new(
                "origin_live_transcode_speed",
                "Media seconds the live ladder encodes per second, by channel (below 1: behind)",
            ),
            &["channel"],
        )?;
        let rungs_dropped = IntCounterVec::new(
            prometheus::Opts::new(
                "origin_live_rungs_dropped_total",
                "Rungs the live ladder stopped making because it fell behind, by channel",
            ),
            &["channel"],
        )?;
        registry.register(Box::new(speed.clone()))?;
        registry.register(Box::new(rungs_dropped.clone()))?;
        let parts = IntCounterVec::new(
            prometheus::Opts::new(
                "origin_live_parts_total",
                "CMAF parts published, by channel",
            ),
            &["channel"],
        )?;
        let dropped = IntCounterVec::new(
            prometheus::Opts::new(
                "origin_live_dropped_frames_total",
                "Frames dropped because a channel's segmenter fell behind, by channel",
            ),
            &["channel"],
        )?;
        let edge_msn = IntGaugeVec::new(
            prometheus::Opts::new(
                "origin_live_edge_msn",
                "The newest segment number of each channel",
            ),
            &["channel"],
        )?;
        let requests = IntCounterVec::new(
            prometheus::Opts::new(
                "origin_live_requests_total",
                "Requests for live media from shields and edges, by kind",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(parts.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(edge_msn.clone()))?;
        Ok((
            LiveMedia {
                store,
                ram_segments: cfg.live_ram_segments,
                ended_tx,
                channels: Mutex::new(HashMap::new()),
                feeds: Mutex::new(HashMap::new()),
                dvr: Mutex::new(HashMap::new()),
                targets: Targets {
                    part_ms,
                    segment_ms,
                    window: 0,
                },
                grace: Duration::from_secs(grace_secs),
                ladder: cfg.live_ladder.clone(),
                preset: cfg.live_preset.clone(),
                speed,
                rungs_dropped,
                parts,
                dropped,
                edge_msn,
                requests,
            },
            ended_rx,
        ))
    }

    /// Notes `channel`'s DVR window for its next event.
    pub(crate) fn prepare(&self, channel: &str, dvr_minutes: u32) {
        if let Ok(mut d) = self.dvr.lock() {
            d.insert(channel.to_string(), dvr_minutes);
        }
    }

    /// A publisher began on `channel`: continues the event in its grace
    /// period, or starts a new one.
    pub(crate) fn started(self: &Arc<Self>, channel: &str) {
        let dvr_minutes = self
            .dvr
            .lock()
            .ok()
            .and_then(|d| d.get(channel).copied())
            .unwrap_or(DEFAULT_DVR_MINUTES);
        let Ok(mut feeds) = self.feeds.lock() else {
            return;
        };
        if let Some(tx) = feeds.get(channel) {
            if tx.try_send(Input::Started).is_ok() {
                return;
            }
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        feeds.insert(channel.to_string(), tx.clone());
        drop(feeds);
        let event = format!("{}-{}", channel, clock::now_ms());
        let media = Arc::new(ChannelMedia {
            channel: channel.to_string(),
            event: event.clone(),
            state: Mutex::new(Stored::default()),
            changed: watch::channel(0).0,
            store: self.store.clone(),
            ram_segments: self.ram_segments,
            pending: std::sync::atomic::AtomicUsize::new(0),
        });
        let previous = self
            .channels
            .lock()
            .ok()
            .and_then(|mut c| c.insert(channel.to_string(), media.clone()));
        let last_msn = previous
            .and_then(|p| p.manifest())
            .and_then(|m| m.last_part())
            .map_or(0, |(msn, _)| msn + 1);
        let first_msn = (clock::now_ms() / u64::from(self.targets.segment_ms)).max(last_msn);
        let window = (u64::from(dvr_minutes) * 60_000 / u64::from(self.targets.segment_ms))
            .clamp(6, 100_000) as usize;
        let targets = Targets {
            window,
            ..self.targets
        };
        let ids: Vec<String> = (1..=self.ladder.len()).map(|i| format!("v{i}")).collect();
        let mut tracks = vec![("v0", TrackKind::Video), ("a0", TrackKind::Audio)];
        tracks.extend(ids.iter().map(|id| (id.as_str(), TrackKind::Video)));
        let segmenter = Segmenter::new(channel, &event, first_msn, targets, &tracks);
        let ladder = (!self.ladder.is_empty()).then(|| {
            let back = tx.clone();
            live_ladder::spawn(
                channel.to_string(),
                LadderConfig {
                    rungs: self
                        .ladder
                        .iter()
                        .map(|r| live_ladder::Rung {
                            height: r.height,
                            kbps: r.kbps,
                        })
                        .collect(),
                    preset: self.preset.clone(),
                    max_lag_ms: live_ladder::MAX_LAG_MS,
                },
                move |made| back.blocking_send(Input::Ladder(made)).is_ok(),
            )
        });
        tracing::info!(channel, event, first_msn, "live event began");
        let this = self.clone();
        let name = channel.to_string();
        tokio::spawn(async move { this.run(name, segmenter, media, rx, tx, ladder).await });
    }

    /// A frame from `channel`'s publisher.
    pub(crate) fn frame(&self, channel: &str, frame: Frame) {
        let tx = self.feeds.lock().ok().and_then(|f| f.get(channel).cloned());
        if let Some(tx) = tx {
            if tx.try_send(Input::Frame(frame, clock::now_ms())).is_err() {
                self.dropped.with_label_values(&[channel]).inc();
            }
        }
    }

    /// An ad break on `channel`: one of `duration_ms` from the next
    /// segment, or (`None`) the end of the one running. Answers the break
    /// made (`None` for a repeated cue or an end), or an error when the
    /// channel is not live.
    pub(crate) async fn ad_break(
        &self,
        channel: &str,
        id: Option<u32>,
        duration_ms: Option<u64>,
        source: &'static str,
    ) -> Result<Option<cascade_packager::live::LiveBreak>, ()> {
        let tx = self.feeds.lock().ok().and_then(|f| f.get(channel).cloned());
        let Some(tx) = tx else { return Err(()) };
        let (done, rx) = tokio::sync::oneshot::channel();
        tx.send(Input::Break {
            id,
            duration_ms,
            source,
            done: Some(done),
        })
        .await
        .map_err(|_| ())?;
        rx.await.map_err(|_| ())
    }

    /// `channel`'s publisher went away.
    pub(crate) fn ended(&self, channel: &str) {
        self.tell(channel, vec![Input::Ended]);
    }

    /// Another encoder took over `channel`: what is open is closed, and its
    /// frames continue the event after a discontinuity.
    pub(crate) fn switched(&self, channel: &str) {
        self.tell(channel, vec![Input::Ended, Input::Started]);
    }

    /// Queues control inputs in order, ahead of any frame sent after this
    /// call; when the queue is full, the rest follow as soon as it drains
    /// (the segmenter must hear of them whatever the frames do).
    fn tell(&self, channel: &str, inputs: Vec<Input>) {
        let tx = self.feeds.lock().ok().and_then(|f| f.get(channel).cloned());
        let Some(tx) = tx else { return };
        let mut rest = Vec::new();
        for input in inputs {
            if !rest.is_empty() {
                rest.push(input);
                continue;
            }
            if let Err(mpsc::error::TrySendError::Full(i)) = tx.try_send(input) {
                rest.push(i);
            }
        }
        if !rest.is_empty() {
            tokio::spawn(async move {
                for i in rest {
                    let _ = tx.send(i).await;
                }
            });
        }
    }

    /// `channel`'s current or last event.
    pub(crate) fn channel(&self, channel: &str) -> Option<Arc<ChannelMedia>> {
        self.channels.lock().ok()?.get(channel).cloned()
    }

    async fn run(
        self: Arc<Self>,
        channel: String,
        mut segmenter: Segmenter,
        media: Arc<ChannelMedia>,
        mut rx: mpsc::Receiver<Input>,
        own: mpsc::Sender<Input>,
        ladder: Option<std::sync::mpsc::SyncSender<LadderIn>>,
    ) {
        let speed = self.speed.with_label_values(&[&channel]);
        let dropped = self.dropped.with_label_values(&[&channel]);
        // After a frame could not be queued for the ladder, it waits for
        // the next keyframe (the frames between would not decode).
        let mut ladder_skipping = false;
        let parts = self.parts.with_label_values(&[&channel]);
        let edge = self.edge_msn.with_label_values(&[&channel]);
        let mut publishing = true;
        loop {
            let input = if publishing {
                rx.recv().await
            } else {
                tokio::time::timeout(self.grace, rx.recv())
                    .await
                    .ok()
                    .flatten()
            };
            let made = match input {
                Some(Input::Frame(frame, wall)) if publishing => {
                    if let Some(l) = &ladder {
                        let input = match &frame {
                            Frame::VideoConfig(c) => Some(LadderIn::Config(c.clone())),
                            Frame::Video {
                                dts,
                                cts,
                                keyframe,
                                data,
                            } if !ladder_skipping || *keyframe => Some(LadderIn::Frame {
                                dts: *dts,
                                cts: *cts,
                                keyframe: *keyframe,
                                data: data.clone(),
                                wall_ms: wall,
                            }),
                            _ => None,
                        };
                        if let Some(input) = input {
                            ladder_skipping = l.try_send(input).is_err();
                            if ladder_skipping {
                                dropped.inc();
                            }
                        }
                    }
                    let (track, f) = match frame {
                        Frame::VideoConfig(c) => (0, TrackFrame::Config(c)),
                        Frame::AudioConfig(c) => (1, TrackFrame::Config(c)),
                        Frame::Video {
                            dts,
                            cts,
                            keyframe,
                            data,
                        } => (
                            0,
                            TrackFrame::Video {
                                dts,
                                cts,
                                keyframe,
                                data,
                            },
                        ),
                        Frame::Audio { pts, data } => (1, TrackFrame::Audio { pts, data }),
                    };
                    segmenter.push(track, f, wall)
                }
                Some(Input::Frame(..)) => Vec::new(),
                Some(Input::Ladder(LadderOut::Frame { rung, frame })) => {
                    let f = match frame {
                        Frame::VideoConfig(c) => TrackFrame::Config(c),
                        Frame::Video {
                            dts,
                            cts,
                            keyframe,
                            data,
                        } => TrackFrame::Video {
                            dts,
                            cts,
                            keyframe,
                            data,
                        },
                        Frame::AudioConfig(_) | Frame::Audio { .. } => continue,
                    };
                    segmenter.push(2 + rung, f, clock::now_ms())
                }
                Some(Input::Ladder(LadderOut::Dropped { rung })) => {
                    self.rungs_dropped.with_label_values(&[&channel]).inc();
                    segmenter.retire(2 + rung);
                    Vec::new()
                }
                Some(Input::Ladder(LadderOut::Speed(s))) => {
                    speed.set(s);
                    Vec::new()
                }
                Some(Input::Break {
                    id,
                    duration_ms,
                    source,
                    done,
                }) => {
                    let made = match duration_ms {
                        Some(ms) => segmenter.add_break(id, ms, source),
                        None => {
                            segmenter.end_break();
                            None
                        }
                    };
                    if let Some(b) = &made {
                        tracing::info!(
                            channel,
                            id = b.id,
                            start_msn = b.start_msn,
                            duration_ms = b.duration_ms,
                            source,
                            "ad break"
                        );
                    }
                    if let Some(done) = done {
                        let _ = done.send(made);
                    }
                    // The manifest changed: publish it as it stands.
                    media.apply(&segmenter, Vec::new(), &parts);
                    Vec::new()
                }
                Some(Input::Started) => {
                    publishing = true;
                    tracing::info!(
                        channel,
                        "live publisher back within the grace: a discontinuity"
                    );
                    Vec::new()
                }
                Some(Input::Ended) => {
                    publishing = false;
                    segmenter.discontinuity()
                }
                None => {
                    // The grace passed: unless a publisher came back just
                    // now (under the lock `started` takes), the event ends
                    // and a new publisher starts a new one.
                    {
                        let Ok(mut feeds) = self.feeds.lock() else {
                            break;
                        };
                        if !rx.is_empty() {
                            continue;
                        }
                        if feeds.get(&channel).is_some_and(|tx| tx.same_channel(&own)) {
                            feeds.remove(&channel);
                        }
                    }
                    let made = segmenter.end();
                    media.apply(&segmenter, made, &parts);
                    let _ = self.ended_tx.send(media.clone());
                    break;
                }
            };
            if !made.is_empty() {
                media.apply(&segmenter, made, &parts);
                if let Some((msn, _)) = segmenter.manifest().last_part() {
                    edge.set(msn as i64);
                }
            }
        }
        tracing::info!(channel, "live event ended");
    }
}

impl ChannelMedia {
    /// The manifest as it stands.
    pub(crate) fn manifest(&self) -> Option<Arc<LiveManifest>> {
        self.state.lock().ok()?.manifest.clone()
    }

    /// The manifest's JSON once `ready` says it is ready, waiting at most
    /// `wait`; `None` if it did not get there in time.
    pub(crate) async fn manifest_when<F>(
        &self,
        wait: Duration,
        ready: F,
    ) -> Option<(Arc<LiveManifest>, Bytes)>
    where
        F: Fn(&LiveManifest) -> bool,
    {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(found) = self.current().filter(|(m, _)| ready(m)) {
                return Some(found);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return self.current().filter(|(m, _)| ready(m)),
            }
        }
    }

    /// An init segment.
    pub(crate) fn init(&self, track: &str, generation: u32) -> Option<Bytes> {
        self.state
            .lock()
            .ok()?
            .inits
            .get(&(track.to_string(), generation))
            .cloned()
    }

    /// Part `part` of segment `msn` of `track`, waiting up to `wait` for it
    /// to be made.
    pub(crate) async fn part(
        &self,
        track: &str,
        msn: u64,
        part: u32,
        wait: Duration,
    ) -> PartLookup {
        let key = (track.to_string(), msn, part);
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            {
                let Ok(s) = self.state.lock() else {
                    return PartLookup::Gone;
                };
                if let Some(b) = s.parts.get(&key) {
                    return PartLookup::Found(b.clone());
                }
                let Some(m) = &s.manifest else {
                    return PartLookup::NotYet;
                };
                if m.track(track).is_none() {
                    return PartLookup::Gone;
                }
                if s.stored.contains_key(&msn) {
                    // Complete, and its parts no longer in RAM.
                    return PartLookup::Stored;
                }
                // Listed (or its segment is over) but absent for this track:
                // another track's part may still come a frame later; a part
                // of a segment that left the window, or ended short, never will.
                match m.last_part() {
                    _ if m.ended => return PartLookup::Gone,
                    Some((last, _)) if msn > last + 2 => return PartLookup::Gone,
                    _ => {}
                }
                if m.segment(msn).is_none() && m.segments.first().is_some_and(|f| msn < f.msn) {
                    return PartLookup::Gone;
                }
                if m.has_part(msn, part).is_none() && m.segment(msn).is_some_and(|s| s.complete) {
                    // The segment completed with fewer parts.
                    let listed = m.segment(msn).map_or(0, |s| s.parts.len() as u32);
                    if part >= listed {
                        return PartLookup::Gone;
                    }
                }
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return PartLookup::NotYet;
            }
        }
    }

    fn current(&self) -> Option<(Arc<LiveManifest>, Bytes)> {
        let s = self.state.lock().ok()?;
        Some((s.manifest.clone()?, s.json.clone()))
    }

    fn apply(
        self: &Arc<Self>,
        segmenter: &Segmenter,
        made: Vec<Made>,
        parts: &prometheus::IntCounter,
    ) {
        let mut done = Vec::new();
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        for m in made {
            match m {
                Made::Init {
                    track,
                    generation,
                    bytes,
                } => {
                    s.inits.insert((track, generation), bytes);
                }
                Made::Part {
                    track,
                    msn,
                    part,
                    bytes,
                } => {
                    parts.inc();
                    s.parts.insert((track, msn, part), bytes);
                }
                Made::SegmentDone { msn } => done.push(msn),
                Made::Evicted { msn } => s.parts.retain(|(_, m, _), _| *m != msn),
            }
        }
        let m = Arc::new(segmenter.manifest().clone());
        s.json = Bytes::from(m.to_json());
        s.manifest = Some(m.clone());
        drop(s);
        self.changed.send_modify(|v| *v += 1);
        for msn in done {
            self.pending
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (this, m) = (self.clone(), m.clone());
            tokio::spawn(async move {
                if let Err(e) = this.persist(&m, msn).await {
                    tracing::warn!(channel = this.channel, msn, error = %e, "storing a live segment");
                }
                this.pending
                    .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
    }

    /// Writes segment `msn` of every track to the store once each track's
    /// parts are there (a rung's or the audio's last part may come a moment
    /// after the source's), then lets go of old parts in RAM.
    async fn persist(&self, m: &LiveManifest, msn: u64) -> anyhow::Result<()> {
        let seg = m
            .segment(msn)
            .ok_or_else(|| anyhow::anyhow!("segment not in the manifest"))?;
        let (parts, init) = (seg.parts.len() as u32, seg.init);
        for t in &m.tracks {
            if msn < t.first_msn {
                continue;
            }
            let mut whole = Vec::new();
            for p in 0..parts {
                match self.part(&t.id, msn, p, Duration::from_secs(10)).await {
                    PartLookup::Found(b) => whole.extend_from_slice(&b),
                    _ => anyhow::bail!("part {p} of {} never came", t.id),
                }
            }
            let init_key = (t.id.clone(), init);
            let init_bytes = self.state.lock().ok().and_then(|s| {
                (!s.stored_inits.contains(&init_key))
                    .then(|| s.inits.get(&init_key).cloned())
                    .flatten()
            });
            if let Some(bytes) = init_bytes {
                let path = live_object(
                    &self.channel,
                    &self.event,
                    &format!("{}/init-{init}.mp4", t.id),
                );
                self.store.put(&path, bytes.into()).await?;
                if let Ok(mut s) = self.state.lock() {
                    s.stored_inits.insert(init_key);
                }
            }
            let path = live_object(&self.channel, &self.event, &format!("{}/{msn}.m4s", t.id));
            self.store.put(&path, Bytes::from(whole).into()).await?;
        }
        if let Ok(mut s) = self.state.lock() {
            s.stored.insert(msn, init);
            // Parts are asked for near the live edge only: a stored segment
            // this far back is served whole from the store.
            if let Some(old) = msn.checked_sub(self.ram_segments.max(1)) {
                if s.stored.contains_key(&old) {
                    s.parts.retain(|(_, m, _), _| *m != old);
                }
            }
        }
        Ok(())
    }

    /// A complete segment of `track` from the store.
    pub(crate) async fn stored_segment(&self, track: &str, msn: u64) -> Option<Bytes> {
        let path = live_object(&self.channel, &self.event, &format!("{track}/{msn}.m4s"));
        self.store.get(&path).await.ok()?.bytes().await.ok()
    }

    /// Segments in the store, oldest first, with their init generation.
    pub(crate) fn stored(&self) -> Vec<(u64, u32)> {
        self.state
            .lock()
            .map(|s| s.stored.iter().map(|(m, g)| (*m, *g)).collect())
            .unwrap_or_default()
    }

    /// Waits (at most `wait`) until no segment is being written.
    pub(crate) async fn settled(&self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while self.pending.load(std::sync::atomic::Ordering::SeqCst) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
