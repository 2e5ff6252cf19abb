//! The live segmenter: frames in (from any encoder, any protocol, any
//! rung of the ladder), CMAF parts and a growing live asset manifest out.
//! Pure: the wall clock comes in with each frame.
//!
//! The first video track (`v0`) is the *primary*: its keyframes start
//! segments (the first keyframe at least a segment target after the last
//! segment began) and its frames cut parts (the first frame at least a part
//! target after the last part began). Every other track cuts its parts at
//! the same media times, so all tracks share one timeline of segments and
//! parts, which is what LL-HLS rendition reports and DASH's shared
//! `SegmentTimeline` need.
//!
//! An encoder that reconnects (or a backup that takes over) continues the
//! timeline: [`Segmenter::discontinuity`] closes what is open, and the next
//! frames are shifted to follow on; the next segment is marked as a
//! discontinuity, and a new init segment is announced when the decoder
//! configuration changed.

use std::collections::VecDeque;

use bytes::Bytes;
use cascade_packager::cmaf::{fragment, init_segment, InitTrack, OutSample};
use cascade_packager::live::{LiveBreak, LiveManifest, LivePart, LiveSegment, LiveTrack};
use cascade_packager::TrackKind;

use crate::frame::{audio_format, picture};

/// How the segmenter cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Targets {
    /// Part target, milliseconds.
    pub part_ms: u32,
    /// Segment target, milliseconds.
    pub segment_ms: u32,
    /// Segments kept in the manifest (the DVR window).
    pub window: usize,
}

/// What the segmenter made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Made {
    /// A track's init segment, generation `generation`.
    Init {
        track: String,
        generation: u32,
        bytes: Bytes,
    },
    /// A part of a track.
    Part {
        track: String,
        msn: u64,
        part: u32,
        bytes: Bytes,
    },
    /// Segment `msn` is complete on the primary (other tracks' last part
    /// may follow a moment later).
    SegmentDone { msn: u64 },
    /// Segment `msn` left the window: its parts may be dropped.
    Evicted { msn: u64 },
}

/// A frame of one track, on the shared clock.
#[derive(Debug, Clone)]
pub enum TrackFrame {
    /// New decoder configuration (`avcC` or AudioSpecificConfig).
    Config(Bytes),
    /// H.264: decode time and composition offset at 90 kHz.
    Video {
        dts: i64,
        cts: i32,
        keyframe: bool,
        data: Bytes,
    },
    /// AAC: presentation time at 90 kHz.
    Audio { pts: i64, data: Bytes },
}

/// Turns frames into parts and keeps the live manifest.
#[derive(Debug)]
pub struct Segmenter {
    targets: Targets,
    manifest: LiveManifest,
    tracks: Vec<TrackState>,
    /// Boundaries the primary closed that other tracks have not all cut
    /// yet: `(msn, part, start, end)`, 90 kHz media time.
    boundaries: VecDeque<Boundary>,
    /// The primary's open part and segment.
    open: Option<Open>,
    next_msn: u64,
    /// Added to an input time to get media time; set at the first frame
    /// of each publisher.
    offset: Option<i64>,
    /// Where media time continues after a discontinuity.
    resume_at: u64,
    pending_discontinuity: bool,
    generation: u32,
    /// Media time of the first keyframe seen while other tracks still had
    /// no configuration (a transport stream's audio comes late).
    waiting_since: Option<u64>,
    /// The wall clock of the last frame taken (Unix ms).
    last_wall: u64,
}

#[derive(Debug, Clone, Copy)]
struct Boundary {
    msn: u64,
    part: u32,
    end: u64,
}

#[derive(Debug, Clone, Copy)]
struct Open {
    msn: u64,
    part: u32,
    part_start: u64,
    segment_start: u64,
}

#[derive(Debug)]
struct TrackState {
    id: String,
    kind: TrackKind,
    config: Option<Bytes>,
    /// The generation of the init segment last announced.
    announced: Option<u32>,
    /// Whether an init segment was ever announced for this track.
    ever_announced: bool,
    /// The first segment it has a part of.
    first_msn: Option<u64>,
    /// No longer made (the ladder dropped it).
    retired: bool,
    init: Option<InitTrack>,
    /// Video: the frame whose duration is not known yet.
    held: Option<Held>,
    /// Samples of the open part: (media time 90 kHz, sample).
    buffer: Vec<Buffered>,
    /// Audio: the next frame's time in the track's timescale.
    audio_clock: Option<u64>,
    sequence: u32,
    /// The last boundary this track cut.
    cut: Option<(u64, u32)>,
    /// Bytes and 90 kHz ticks of media since the last bandwidth reading.
    bytes_in_window: u64,
    ticks_in_window: u64,
    /// The highest bit rate measured over a segment.
    peak_bps: u64,
    frame_ticks: VecDeque<u32>,
}

#[derive(Debug, Clone)]
struct Held {
    time: u64,
    cts: i32,
    keyframe: bool,
    data: Bytes,
}

#[derive(Debug, Clone)]
struct Buffered {
    /// Media time at 90 kHz (decode time for video).
    time: u64,
    /// Decode time in the track's timescale.
    dts: u64,
    duration: u32,
    cts: i32,
    keyframe: bool,
    data: Bytes,
}

impl Segmenter {
    /// A segmenter for `channel`'s event `event`, whose first segment is
    /// numbered `first_msn`; `tracks` are `(id, kind)` with the primary video first.
    pub fn new(
        channel: &str,
        event: &str,
        first_msn: u64,
        targets: Targets,
        tracks: &[(&str, TrackKind)],
    ) -> Segmenter {
        Segmenter {
            targets,
            manifest: LiveManifest {
                channel: channel.into(),
                event: event.into(),
                part_target_ms: targets.part_ms,
                segment_target_ms: targets.segment_ms,
                epoch_ms: 0,
                tracks: Vec::new(),
                segments: Vec::new(),
                discontinuity_sequence: 0,
                ended: false,
                breaks: Vec::new(),
            },
            tracks: tracks
                .iter()
                .map(|(id, kind)| TrackState {
                    id: (*id).into(),
                    kind: *kind,
                    config: None,
                    announced: None,
                    ever_announced: false,
                    first_msn: None,
                    retired: false,
                    init: None,
                    held: None,
                    buffer: Vec::new(),
                    audio_clock: None,
                    sequence: 0,
                    cut: None,
                    bytes_in_window: 0,
                    ticks_in_window: 0,
                    peak_bps: 0,
                    frame_ticks: VecDeque::new(),
                })
                .collect(),
            boundaries: VecDeque::new(),
            open: None,
            next_msn: first_msn,
            offset: None,
            resume_at: 0,
            pending_discontinuity: false,
            generation: 0,
            waiting_since: None,
            last_wall: 0,
        }
    }

    /// The manifest as it stands.
    pub fn manifest(&self) -> &LiveManifest {
        &self.manifest
    }

    /// An ad break of `duration_ms` starts with the next segment (the one
    /// after the segment in progress). A cue repeating a break already
    /// running (the same `id`) changes nothing; `id` `None` takes the next
    /// free number. Answers the break, or `None` for a repeat.
    pub fn add_break(
        &mut self,
        id: Option<u32>,
        duration_ms: u64,
        source: &str,
    ) -> Option<LiveBreak> {
        if let Some(id) = id {
            if self.manifest.breaks.iter().any(|b| b.id == id) {
                return None;
            }
        }
        let id = id.unwrap_or_else(|| {
            self.manifest
                .breaks
                .iter()
                .map(|b| b.id.saturating_add(1))
                .max()
                .unwrap_or(1)
        });
        let b = LiveBreak {
            id,
            start_msn: self.next_msn(),
            duration_ms: duration_ms.clamp(1000, 3_600_000),
            source: source.into(),
            end_msn: None,
            end_start: None,
        };
        self.manifest.breaks.push(b.clone());
        Some(b)
    }

    /// The break running now ends with the next segment (an SCTE-35 return
    /// to the network before the planned end); one not begun yet is called
    /// off. Answers whether there was one.
    pub fn end_break(&mut self) -> bool {
        let next = self.next_msn();
        let open_start = self
            .open
            .and_then(|o| self.manifest.segment(o.msn))
            .map(|s| s.start);
        let starts: Vec<(u64, u64)> = self
            .manifest
            .segments
            .iter()
            .map(|s| (s.msn, s.start))
            .collect();
        let Some(i) = self
            .manifest
            .breaks
            .iter()
            .rposition(|b| b.start_msn <= next && b.end_msn.is_none())
        else {
            return false;
        };
        let b = &mut self.manifest.breaks[i];
        if b.start_msn == next {
            self.manifest.breaks.remove(i);
            return true;
        }
        let start = starts
            .iter()
            .find(|(m, _)| *m == b.start_msn)
            .map(|(_, t)| *t);
        match (start, open_start) {
            // Just past the open segment's start: the next one ends it.
            (Some(bs), Some(os)) if os >= bs && (os - bs) / 90 < b.duration_ms => {
                b.duration_ms = (os - bs) / 90 + 1;
                true
            }
            _ => false,
        }
    }

    /// The next segment number this segmenter would use.
    pub fn next_msn(&self) -> u64 {
        self.open.map_or(self.next_msn, |o| o.msn + 1)
    }

    /// Track `track` is no longer made (the ladder fell behind): it leaves
    /// the manifest at the next segment.
    pub fn retire(&mut self, track: usize) {
        if let Some(t) = self.tracks.get_mut(track) {
            t.retired = true;
            t.buffer.clear();
            t.held = None;
        }
    }

    /// Takes one frame of `track` that reached ingest at `wall_ms`.
    pub fn push(&mut self, track: usize, frame: TrackFrame, wall_ms: u64) -> Vec<Made> {
        let mut made = Vec::new();
        if track >= self.tracks.len() {
            return made;
        }
        self.last_wall = self.last_wall.max(wall_ms);
        match frame {
            TrackFrame::Config(c) => self.configure(track, c),
            TrackFrame::Video {
                dts,
                cts,
                keyframe,
                data,
            } => self.video(track, dts, cts, keyframe, data, wall_ms, &mut made),
            TrackFrame::Audio { pts, data } => self.audio(track, pts, data, &mut made),
        }
        made
    }

    /// The publisher went away (or another takes over): what is open is
    /// closed, and the next frames continue the timeline after a
    /// discontinuity.
    pub fn discontinuity(&mut self) -> Vec<Made> {
        let mut made = Vec::new();
        if let Some(open) = self.open {
            // The held frame gets the part target's worth of duration at most.
            let end = self.close_held(open);
            self.close_part(end, true, &mut made);
            self.resume_at = end;
            self.open = None;
            self.next_msn = open.msn + 1;
        }
        // Cut what other tracks hold at the last boundary, dropping the rest.
        let last_end = self.boundaries.back().map(|b| b.end);
        for i in 1..self.tracks.len() {
            if let Some(end) = last_end {
                self.cut_other(i, end, &mut made);
            }
            self.tracks[i].buffer.clear();
            self.tracks[i].held = None;
            self.tracks[i].audio_clock = None;
        }
        self.boundaries.clear();
        self.offset = None;
        self.pending_discontinuity = !self.manifest.segments.is_empty();
        made
    }

    /// The event is over: everything open is closed and the manifest ends.
    pub fn end(&mut self) -> Vec<Made> {
        let made = self.discontinuity();
        self.pending_discontinuity = false;
        self.manifest.ended = true;
        made
    }

    fn configure(&mut self, track: usize, config: Bytes) {
        let t = &mut self.tracks[track];
        if t.config.as_ref() == Some(&config) {
            return;
        }
        let init = match t.kind {
            TrackKind::Video => picture(&config).map(|p| InitTrack::Avc {
                avcc: config.to_vec(),
                width: u16::try_from(p.width).unwrap_or(u16::MAX),
                height: u16::try_from(p.height).unwrap_or(u16::MAX),
            }),
            _ => audio_format(&config).map(|(rate, channels)| InitTrack::Aac {
                asc: config.to_vec(),
                sample_rate: rate,
                channels,
            }),
        };
        t.config = Some(config);
        t.init = init;
        // A new configuration mid-stream needs a new init segment: it takes
        // effect at the next segment (whose first frame is a keyframe).
        t.announced = None;
    }

    #[allow(clippy::too_many_arguments)]
    fn video(
        &mut self,
        track: usize,
        dts: i64,
        cts: i32,
        keyframe: bool,
        data: Bytes,
        wall_ms: u64,
        made: &mut Vec<Made>,
    ) {
        if self.tracks[track].init.is_none() {
            // No usable sequence header: parameter sets in the stream do.
            match crate::frame::inband_avcc(&data) {
                Some(c) => self.configure(track, c),
                None => return,
            }
            if self.tracks[track].init.is_none() {
                return;
            }
        }
        if track != 0 {
            let Some(time) = self.media_time(dts) else {
                return;
            };
            self.other_video(track, time, cts, keyframe, data, made);
            return;
        }
        // The primary: the first frame of a publisher fixes the offset.
        if self.offset.is_none() {
            if !keyframe {
                return;
            }
            self.offset = Some(self.resume_at as i64 - dts);
        }
        let Some(time) = self.media_time(dts) else {
            return;
        };
        let Some(open) = self.open else {
            // Nothing open: this keyframe starts a segment, once every track
            // has its configuration, or after two seconds without it (that
            // track then joins at a later segment, with a new init).
            if self.manifest.segments.is_empty()
                && self
                    .tracks
                    .iter()
                    .any(|t| t.kind == TrackKind::Audio && t.init.is_none())
            {
                let since = *self.waiting_since.get_or_insert(time);
                if !keyframe || time - since < 180_000 {
                    return;
                }
            }
            if !keyframe {
                return;
            }
            self.start_segment(time, wall_ms, made);
            self.tracks[0].held = Some(Held {
                time,
                cts,
                keyframe,
                data,
            });
            return;
        };
        let Some(held) = self.tracks[0].held.take() else {
            return;
        };
        if time <= held.time {
            // Out of order or repeated: keep the held frame, drop this one.
            self.tracks[0].held = Some(held);
            return;
        }
        let duration = u32::try_from(time - held.time).unwrap_or(u32::MAX);
        push_sample(&mut self.tracks[0], held, duration);
        let seg_due = time - open.segment_start >= u64::from(self.targets.segment_ms) * 90;
        // A part never lasts longer than the target (RFC 8216bis): cut
        // before the frame that would end past it.
        let part_due =
            time - open.part_start + u64::from(duration) > u64::from(self.targets.part_ms) * 90;
        if keyframe && seg_due {
            self.close_part(time, true, made);
            self.next_msn = open.msn + 1;
            self.open = None;
            self.start_segment(time, wall_ms, made);
        } else if part_due {
            self.close_part(time, false, made);
        }
        self.tracks[0].held = Some(Held {
            time,
            cts,
            keyframe,
            data,
        });
    }

    /// A frame of a rung other than the primary: its part is cut at the
    /// primary's boundaries.
    fn other_video(
        &mut self,
        track: usize,
        time: u64,
        cts: i32,
        keyframe: bool,
        data: Bytes,
        made: &mut Vec<Made>,
    ) {
        let t = &mut self.tracks[track];
        if let Some(held) = t.held.take() {
            if time > held.time {
                let duration = u32::try_from(time - held.time).unwrap_or(u32::MAX);
                push_sample(t, held, duration);
            }
        } else if !keyframe {
            return;
        }
        self.tracks[track].held = Some(Held {
            time,
            cts,
            keyframe,
            data,
        });
        self.cut_other(track, time, made);
    }

    fn audio(&mut self, track: usize, pts: i64, data: Bytes, made: &mut Vec<Made>) {
        let Some(InitTrack::Aac { sample_rate, .. }) = self.tracks[track].init else {
            return;
        };
        let Some(time) = self.media_time(pts) else {
            return;
        };
        let rate = u64::from(sample_rate);
        let t = &mut self.tracks[track];
        // AAC frames are 1024 samples: count them rather than trust
        // millisecond timestamps, resynchronising on a jump.
        let expected = time * rate / 90_000;
        let dts = match t.audio_clock {
            Some(c) if c.abs_diff(expected) < 2048 => c,
            _ => expected,
        };
        t.audio_clock = Some(dts + 1024);
        let time = dts * 90_000 / rate;
        // Audio from before the primary's first frame (of this publisher)
        // has nothing to join.
        let Some(open) = self.open else {
            return;
        };
        if t.buffer.is_empty() && time < open.part_start && self.boundaries.is_empty() {
            return;
        }
        t.buffer.push(Buffered {
            time,
            dts,
            duration: 1024,
            cts: 0,
            keyframe: true,
            data,
        });
        let next = time + 1024 * 90_000 / rate;
        self.cut_other(track, next, made);
    }

    /// Cuts `track`'s buffered samples into every closed boundary that ends
    /// at or before `upto` (media time it has reached).
    fn cut_other(&mut self, track: usize, upto: u64, made: &mut Vec<Made>) {
        loop {
            let t = &self.tracks[track];
            // The first boundary this track has not cut yet.
            let Some(b) = self
                .boundaries
                .iter()
                .find(|b| t.cut_past(b.msn, b.part))
                .copied()
            else {
                return;
            };
            if upto < b.end {
                return;
            }
            let t = &mut self.tracks[track];
            let take = t.buffer.iter().take_while(|s| s.time < b.end).count();
            let samples: Vec<Buffered> = t.buffer.drain(..take).collect();
            t.cut = Some((b.msn, b.part));
            if !samples.is_empty() {
                self.emit(track, b.msn, b.part, &samples, made);
            }
            self.forget_cut_boundaries();
        }
    }

    fn forget_cut_boundaries(&mut self) {
        while let Some(b) = self.boundaries.front() {
            if self.tracks[1..].iter().all(|t| !t.cut_past(b.msn, b.part)) {
                self.boundaries.pop_front();
            } else {
                return;
            }
        }
    }

    fn media_time(&self, input: i64) -> Option<u64> {
        u64::try_from(input.checked_add(self.offset?)?).ok()
    }

    fn start_segment(&mut self, time: u64, wall_ms: u64, made: &mut Vec<Made>) {
        let msn = self.next_msn;
        // A track whose configuration changed needs new init segments (a
        // new generation for every track, as the MAP changes for all); a
        // track that joins late (a rung) just gets its first.
        let config_changed = self
            .tracks
            .iter()
            .any(|t| t.init.is_some() && t.announced.is_none() && t.ever_announced)
            && !self.manifest.segments.is_empty();
        if config_changed {
            self.generation += 1;
        }
        for t in &mut self.tracks {
            if t.announced != Some(self.generation) {
                if let Some(init) = &t.init {
                    made.push(Made::Init {
                        track: t.id.clone(),
                        generation: self.generation,
                        bytes: Bytes::from(init_segment(init)),
                    });
                    t.announced = Some(self.generation);
                    t.ever_announced = true;
                }
            }
        }
        if self.manifest.segments.is_empty() {
            self.manifest.epoch_ms = wall_ms.saturating_sub(time / 90);
        }
        self.refresh_tracks();
        self.manifest.segments.push(LiveSegment {
            msn,
            start: time,
            pdt_ms: self.manifest.epoch_ms + time / 90,
            init: self.generation,
            discontinuity: std::mem::take(&mut self.pending_discontinuity),
            parts: Vec::new(),
            complete: false,
        });
        while self.manifest.segments.len() > self.targets.window.max(2) {
            let old = self.manifest.segments.remove(0);
            if old.discontinuity {
                self.manifest.discontinuity_sequence += 1;
            }
            made.push(Made::Evicted { msn: old.msn });
        }
        // A break ends with the first segment that starts its duration or
        // more after its own first one; recorded, so where it ended is
        // known after its segments left the window.
        let segments = &self.manifest.segments;
        for b in self
            .manifest
            .breaks
            .iter_mut()
            .filter(|b| b.end_msn.is_none() && b.start_msn < msn)
        {
            let begun = segments
                .iter()
                .find(|s| s.msn == b.start_msn)
                .map(|s| s.start);
            if begun.is_some_and(|t0| time >= t0 + b.duration_ms * 90) {
                b.end_msn = Some(msn);
                b.end_start = Some(time);
            }
        }
        // Breaks are kept while any of their segments is in the window, and
        // the last one that ended before it (it names the content that
        // follows it in a session's MPD).
        let first = self.manifest.segments.first().map_or(0, |s| s.msn);
        if let Some(i) = self
            .manifest
            .breaks
            .iter()
            .rposition(|b| b.end_msn.is_some_and(|e| e <= first))
        {
            self.manifest.breaks.drain(..i);
        }
        self.open = Some(Open {
            msn,
            part: 0,
            part_start: time,
            segment_start: time,
        });
    }

    /// Closes the primary's open part at media time `end`.
    fn close_part(&mut self, end: u64, segment_ends: bool, made: &mut Vec<Made>) {
        let Some(open) = self.open else {
            return;
        };
        let samples: Vec<Buffered> = self.tracks[0].buffer.drain(..).collect();
        if !samples.is_empty() {
            let independent = samples[0].keyframe;
            self.emit(0, open.msn, open.part, &samples, made);
            if let Some(seg) = self.manifest.segments.last_mut() {
                seg.parts.push(LivePart {
                    duration: u32::try_from(end - open.part_start).unwrap_or(u32::MAX),
                    independent,
                    published_ms: self.last_wall,
                });
            }
            self.boundaries.push_back(Boundary {
                msn: open.msn,
                part: open.part,
                end,
            });
            self.open = Some(Open {
                part: open.part + 1,
                part_start: end,
                ..open
            });
        }
        if segment_ends {
            if let Some(seg) = self.manifest.segments.last_mut() {
                if !seg.complete {
                    seg.complete = true;
                    made.push(Made::SegmentDone { msn: seg.msn });
                }
            }
        }
    }

    /// Gives the primary's held frame a duration and buffers it; returns the
    /// media time where it ends.
    fn close_held(&mut self, open: Open) -> u64 {
        let Some(held) = self.tracks[0].held.take() else {
            return open.part_start;
        };
        let duration = self.tracks[0]
            .frame_ticks
            .back()
            .copied()
            .unwrap_or(3000)
            .max(1);
        let end = held.time + u64::from(duration);
        push_sample(&mut self.tracks[0], held, duration);
        end
    }

    fn emit(
        &mut self,
        track: usize,
        msn: u64,
        part: u32,
        samples: &[Buffered],
        made: &mut Vec<Made>,
    ) {
        let t = &mut self.tracks[track];
        t.sequence = t.sequence.wrapping_add(1);
        t.first_msn.get_or_insert(msn);
        let out: Vec<OutSample<'_>> = samples
            .iter()
            .map(|s| OutSample {
                duration: s.duration,
                cts_offset: s.cts,
                keyframe: s.keyframe,
                data: &s.data,
            })
            .collect();
        let Ok(bytes) = fragment(t.sequence, samples[0].dts, &out) else {
            return;
        };
        t.bytes_in_window += bytes.len() as u64;
        t.ticks_in_window += samples.iter().map(|s| u64::from(s.duration)).sum::<u64>() * 90_000
            / u64::from(t.init.as_ref().map_or(90_000, InitTrack::timescale));
        made.push(Made::Part {
            track: t.id.clone(),
            msn,
            part,
            bytes: Bytes::from(bytes),
        });
    }

    /// Codec, size, rate and bandwidth of each track into the manifest.
    fn refresh_tracks(&mut self) {
        let mut tracks = Vec::new();
        for t in &mut self.tracks {
            let Some(init) = &t.init else { continue };
            // A rung is listed once it has made a part; a retired one no more.
            if t.retired || (t.first_msn.is_none() && t.kind == TrackKind::Video && t.id != "v0") {
                continue;
            }
            let measured = if t.ticks_in_window >= 90_000 {
                t.bytes_in_window * 8 * 90_000 / t.ticks_in_window
            } else {
                0
            };
            // Bandwidth is the peak per segment: it never goes down mid-event.
            t.peak_bps = t.peak_bps.max(measured);
            let bandwidth = t.peak_bps;
            t.bytes_in_window = 0;
            t.ticks_in_window = 0;
            let mut lt = LiveTrack {
                id: t.id.clone(),
                kind: t.kind,
                codec: init.codec(),
                bandwidth: if bandwidth == 0 {
                    default_bandwidth(t.kind)
                } else {
                    bandwidth
                },
                width: 0,
                height: 0,
                frame_rate: 0.0,
                sample_rate: 0,
                channels: 0,
                first_msn: t.first_msn.unwrap_or(0),
            };
            match init {
                InitTrack::Avc { width, height, .. } => {
                    lt.width = u32::from(*width);
                    lt.height = u32::from(*height);
                    let n = t.frame_ticks.len() as u64;
                    let sum: u64 = t.frame_ticks.iter().map(|d| u64::from(*d)).sum();
                    if n > 0 && sum > 0 {
                        lt.frame_rate =
                            ((90_000.0 * n as f64 / sum as f64) * 1000.0).round() / 1000.0;
                    }
                }
                InitTrack::Aac {
                    sample_rate,
                    channels,
                    ..
                } => {
                    lt.sample_rate = *sample_rate;
                    lt.channels = *channels;
                }
            }
            tracks.push(lt);
        }
        self.manifest.tracks = tracks;
    }
}

impl TrackState {
    /// Whether boundary `(msn, part)` is still ahead of what this track cut.
    fn cut_past(&self, msn: u64, part: u32) -> bool {
        match self.cut {
            None => true,
            Some(c) => (msn, part) > c,
        }
    }
}

fn push_sample(t: &mut TrackState, held: Held, duration: u32) {
    if t.frame_ticks.len() >= 60 {
        t.frame_ticks.pop_front();
    }
    t.frame_ticks.push_back(duration);
    t.buffer.push(Buffered {
        time: held.time,
        dts: held.time,
        duration,
        cts: held.cts,
        keyframe: held.keyframe,
        data: held.data,
    });
}

fn default_bandwidth(kind: TrackKind) -> u64 {
    match kind {
        TrackKind::Video => 3_000_000,
        _ => 128_000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AVCC: [u8; 41] = [
        1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 26, 0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40, 0x50, 0x05,
        0xbb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83,
        0x19, 0x60, 1, 0, 4, 0x68, 0xeb, 0xe3, 0xcb,
    ];

    fn segmenter() -> Segmenter {
        Segmenter::new(
            "final",
            "e1",
            500,
            Targets {
                part_ms: 500,
                segment_ms: 2000,
                window: 3,
            },
            &[("v0", TrackKind::Video), ("a0", TrackKind::Audio)],
        )
    }

    /// Feeds `secs` of 30 fps video (a keyframe every 2 s) and 48 kHz AAC,
    /// interleaved by time as an encoder sends them, from input time `from`.
    fn feed(s: &mut Segmenter, from: i64, secs: i64, made: &mut Vec<Made>) {
        let mut v = 0i64;
        let mut a = 0i64;
        let frames = secs * 30;
        while v < frames {
            let vt = from + v * 3000;
            let at = from + a * 1920;
            if at < vt {
                made.extend(s.push(
                    1,
                    TrackFrame::Audio {
                        pts: at,
                        data: Bytes::from_static(&[0x21, 0]),
                    },
                    0,
                ));
                a += 1;
            } else {
                let data = Bytes::from(vec![
                    0,
                    0,
                    0,
                    2,
                    if v % 60 == 0 { 0x65 } else { 0x41 },
                    v as u8,
                ]);
                made.extend(s.push(
                    0,
                    TrackFrame::Video {
                        dts: vt,
                        cts: 0,
                        keyframe: v % 60 == 0,
                        data,
                    },
                    1_000 + (vt / 90) as u64,
                ));
                v += 1;
            }
        }
    }

    fn parts(made: &[Made], track: &str) -> Vec<(u64, u32)> {
        made.iter()
            .filter_map(|m| match m {
                Made::Part {
                    track: t,
                    msn,
                    part,
                    ..
                } if t == track => Some((*msn, *part)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_break_records_its_end_and_stays_while_its_segments_do() {
        let mut s = segmenter();
        let mut made = s.push(0, TrackFrame::Config(Bytes::from_static(&AVCC)), 0);
        made.extend(s.push(1, TrackFrame::Config(Bytes::from_static(&[0x11, 0x90])), 0));
        // Segments 500 (0 s) and 501 (2 s, growing).
        feed(&mut s, 0, 4, &mut made);
        // 4 s from the next segment, 502 at 4 s: it ends with 504 at 8 s.
        let b = s.add_break(Some(7), 4000, "operator").unwrap();
        assert_eq!((b.start_msn, b.end_msn), (502, None));
        feed(&mut s, 360_000, 8, &mut made);
        let m = s.manifest();
        assert_eq!(m.breaks[0].end_msn, Some(504), "{:?}", m.breaks);
        assert_eq!(m.breaks[0].end_start, m.segment(504).map(|x| x.start));
        // Its first segment left the window (3 segments): it stays, ended.
        assert!(m.segment(502).is_none());
        assert_eq!(m.breaks.len(), 1);
        // A later break, 506 to 507: once both are wholly before the
        // window, only the last one stays (it names what follows).
        let b = s.add_break(Some(8), 2000, "operator").unwrap();
        assert_eq!(b.start_msn, 506);
        feed(&mut s, 1_080_000, 12, &mut made);
        let m = s.manifest();
        let ids: Vec<(u32, Option<u64>)> = m.breaks.iter().map(|x| (x.id, x.end_msn)).collect();
        assert_eq!(ids, vec![(8, Some(507))], "{:?}", m.breaks);
        // Ending a break that is over does nothing.
        assert!(!s.end_break());
    }

    #[test]
    fn frames_become_parts_and_segments() {
        let mut s = segmenter();
        let mut made = s.push(0, TrackFrame::Config(Bytes::from_static(&AVCC)), 0);
        made.extend(s.push(1, TrackFrame::Config(Bytes::from_static(&[0x11, 0x90])), 0));
        feed(&mut s, 9000, 7, &mut made);
        let inits: Vec<_> = made
            .iter()
            .filter(|m| matches!(m, Made::Init { .. }))
            .collect();
        assert_eq!(inits.len(), 2);
        let m = s.manifest();
        // Segments 500..=502 complete, 503 in progress; the window keeps 3.
        let msns: Vec<u64> = m.segments.iter().map(|s| s.msn).collect();
        assert_eq!(msns, vec![501, 502, 503]);
        assert!(made.contains(&Made::Evicted { msn: 500 }));
        assert!(m.segments[0].complete && m.segments[1].complete && !m.segments[2].complete);
        assert_eq!(m.segments[0].parts.len(), 4);
        assert!(m.segments[0].parts.iter().all(|p| p.duration == 45_000));
        assert!(m.segments[0].parts[0].independent && !m.segments[0].parts[1].independent);
        assert_eq!(m.segments[0].start, 180_000);
        assert_eq!(m.segments[1].start, 360_000);
        assert_eq!(m.segments[0].pdt_ms, 1_000 + 100 + 2000);
        assert_eq!(m.tracks.len(), 2);
        assert_eq!((m.tracks[0].width, m.tracks[0].height), (1280, 720));
        assert_eq!(m.tracks[0].frame_rate, 30.0);
        assert_eq!(m.tracks[1].codec, "mp4a.40.2");
        // Audio is cut at the video's boundaries, one part for each.
        let v = parts(&made, "v0");
        let a = parts(&made, "a0");
        assert_eq!(v.len(), 13);
        assert_eq!(a.len(), 13);
        assert_eq!(v, a);

        // Each part is a fragment whose first decode time is its start.
        let Some(Made::Part { bytes, .. }) = made
            .iter()
            .find(|m| matches!(m, Made::Part { track, msn: 501, part: 1, .. } if track == "a0"))
        else {
            panic!("no part 501.1 of a0");
        };
        let cfg = cascade_packager::fmp4::parse_init(&init_segment(&InitTrack::Aac {
            asc: vec![0x11, 0x90],
            sample_rate: 48_000,
            channels: 2,
        }))
        .unwrap();
        let samples = cascade_packager::fmp4::parse_fragment(&cfg, bytes).unwrap();
        // 2.5 s at 48 kHz: the AAC frame that starts at or after it.
        assert_eq!(samples[0].dts, 120_832);
    }

    #[test]
    fn a_reconnect_continues_the_timeline_after_a_discontinuity() {
        let mut s = segmenter();
        s.push(0, TrackFrame::Config(Bytes::from_static(&AVCC)), 0);
        s.push(1, TrackFrame::Config(Bytes::from_static(&[0x11, 0x90])), 0);
        let mut made = Vec::new();
        feed(&mut s, 0, 3, &mut made);
        made.extend(s.discontinuity());
        let before = s.manifest().segments.clone();
        assert!(before.iter().all(|s| s.complete));
        let end = before
            .last()
            .map(|l| l.start + cascade_packager::live::segment_duration(l))
            .unwrap();
        assert_eq!(end, 270_000);
        // The encoder restarts its clock at zero.
        feed(&mut s, 0, 3, &mut made);
        let m = s.manifest();
        let resumed = m
            .segments
            .iter()
            .find(|x| x.discontinuity)
            .expect("a discontinuity");
        assert_eq!(resumed.start, end);
        assert_eq!(resumed.msn, before.last().unwrap().msn + 1);
        assert_eq!(resumed.init, 0, "same configuration, same init");
        // No segment number is used twice.
        let mut all: Vec<(u64, u32)> = parts(&made, "v0");
        all.sort();
        all.dedup();
        assert_eq!(all.len(), parts(&made, "v0").len());

        let ended = s.end();
        assert!(s.manifest().ended);
        assert!(ended.iter().any(|m| matches!(m, Made::Part { .. })));
    }

    #[test]
    fn a_new_configuration_brings_a_new_init() {
        let mut s = segmenter();
        s.push(0, TrackFrame::Config(Bytes::from_static(&AVCC)), 0);
        let mut made = Vec::new();
        feed(&mut s, 0, 3, &mut made);
        s.discontinuity();
        let mut other = AVCC;
        other[3] = 0x28;
        made.extend(s.push(0, TrackFrame::Config(Bytes::from(other.to_vec())), 0));
        feed(&mut s, 0, 3, &mut made);
        assert!(made.contains(&Made::Init {
            track: "v0".into(),
            generation: 1,
            bytes: Bytes::from(init_segment(&InitTrack::Avc {
                avcc: other.to_vec(),
                width: 1280,
                height: 720
            }))
        }));
        let last = s.manifest().segments.last().unwrap();
        assert_eq!(last.init, 1);
    }

    #[test]
    fn the_first_segment_waits_for_a_late_audio_configuration() {
        // A transport stream's audio comes after its video: the first
        // segment starts once both are configured, so both have init 0.
        let mut s = segmenter();
        s.push(0, TrackFrame::Config(Bytes::from_static(&AVCC)), 0);
        let mut made = Vec::new();
        feed(&mut s, 0, 1, &mut made);
        assert!(s.manifest().segments.is_empty());
        made.extend(s.push(1, TrackFrame::Config(Bytes::from_static(&[0x11, 0x90])), 0));
        feed(&mut s, 90_000, 4, &mut made);
        let inits: Vec<(String, u32)> = made
            .iter()
            .filter_map(|m| match m {
                Made::Init {
                    track, generation, ..
                } => Some((track.clone(), *generation)),
                _ => None,
            })
            .collect();
        assert_eq!(inits, vec![("v0".to_string(), 0), ("a0".to_string(), 0)]);
        assert!(s.manifest().segments.iter().all(|seg| seg.init == 0));
    }

    #[test]
    fn parts_never_exceed_the_target() {
        // 25 fps: 12 frames (0.48 s) fit in 0.5 s, 13 would not.
        let mut s = segmenter();
        s.push(0, TrackFrame::Config(Bytes::from_static(&AVCC)), 0);
        s.push(1, TrackFrame::Config(Bytes::from_static(&[0x11, 0x90])), 0);
        for v in 0..150i64 {
            let data = Bytes::from_static(&[0, 0, 0, 1, 0x41]);
            s.push(
                0,
                TrackFrame::Video {
                    dts: v * 3600,
                    cts: 0,
                    keyframe: v % 25 == 0,
                    data,
                },
                0,
            );
        }
        let m = s.manifest();
        let parts: Vec<u32> = m
            .segments
            .iter()
            .flat_map(|s| s.parts.iter().map(|p| p.duration))
            .collect();
        assert!(parts.iter().all(|d| *d <= 45_000), "{parts:?}");
        assert!(parts.contains(&43_200));
    }

    #[test]
    fn parameter_sets_in_the_stream_stand_in_for_a_missing_sequence_header() {
        let mut s = segmenter();
        // A sequence header that is not one (FFmpeg's tee without global headers).
        s.push(
            0,
            TrackFrame::Config(Bytes::from_static(&[0, 0, 0, 1, 0x67])),
            0,
        );
        s.push(1, TrackFrame::Config(Bytes::from_static(&[0x11, 0x90])), 0);
        let sps = &AVCC[8..34];
        let pps = &AVCC[37..41];
        let mut made = Vec::new();
        for v in 0..90i64 {
            let mut data = Vec::new();
            let key = v % 30 == 0;
            let units: Vec<&[u8]> = if key {
                vec![sps, pps, &[0x65, 1]]
            } else {
                vec![&[0x41, 1]]
            };
            for u in units {
                data.extend_from_slice(&(u.len() as u32).to_be_bytes());
                data.extend_from_slice(u);
            }
            made.extend(s.push(
                0,
                TrackFrame::Video {
                    dts: v * 3000,
                    cts: 0,
                    keyframe: key,
                    data: Bytes::from(data),
                },
                0,
            ));
        }
        assert!(made
            .iter()
            .any(|m| matches!(m, Made::Init { track, .. } if track == "v0")));
        assert!(!s.manifest().segments.is_empty());
        assert_eq!(s.manifest().tracks[0].width, 1280);
    }

    #[test]
    fn garbage_configs_and_early_frames_are_ignored() {
        let mut s = segmenter();
        // Frames before any configuration, a configuration that is not one.
        assert!(s
            .push(
                0,
                TrackFrame::Video {
                    dts: 0,
                    cts: 0,
                    keyframe: true,
                    data: Bytes::new()
                },
                0
            )
            .is_empty());
        s.push(0, TrackFrame::Config(Bytes::from_static(&[1, 2, 3])), 0);
        assert!(s
            .push(
                0,
                TrackFrame::Video {
                    dts: 0,
                    cts: 0,
                    keyframe: true,
                    data: Bytes::new()
                },
                0
            )
            .is_empty());
        assert!(s.push(9, TrackFrame::Config(Bytes::new()), 0).is_empty());
        assert!(s.manifest().segments.is_empty());
    }
}
