//! Live ad insertion: a session's ads in place of a live break's segments.
//!
//! A break's segments are *slots*: slot `k` is the content segment
//! `start_msn + k`, and in the session's playlists it holds the `k`-th
//! segment of the break's ads in play order, then (once the ads are over)
//! the slate's segments round and round, or the content again (the
//! channel's own break, "early return"), by the origin's configuration.
//! Every slot keeps its content segment's media sequence number, program
//! date-time and cue tags, so numbering never depends on what a session
//! saw before it joined, blocking reloads (`_HLS_msn`) mean what they mean
//! for the shared playlist, and every edge makes the same playlist for the
//! same session without keeping anything but the session's decisions.
//! Creatives are conditioned with the ladder's segment duration, as live
//! segments are, so an ad's time matches the slots it fills.
//!
//! A slot is listed once its content segment is complete, so a session's
//! timeline never runs ahead of the channel's and the channel's parts are
//! there when it comes back (listed as soon as the segment began, the ads
//! would put a low-latency player a segment ahead of the live edge, and it
//! would stall for that long when the break ends). While a break's slot is
//! the live edge the playlist lists no parts, so a low-latency player
//! blocks on whole segments (`_HLS_msn` alone, which the edge asks
//! upstream as the next segment's start: this one complete) until the
//! content comes back.
//!
//! Each change of run (content to ad, ad to ad, a slate loop, back to
//! content) is an `EXT-X-DISCONTINUITY` with its own `EXT-X-MAP`; the
//! discontinuity sequence counts the session's changes before the first
//! listed segment, for the breaks still in the manifest.

use crate::live::{LiveManifest, LiveTrack};
use crate::manifest::{codec_family, AssetManifest, Track, TrackKind};

/// One ad (or the slate) as the live stitcher sees it.
#[derive(Debug, Clone)]
pub struct LiveAd<'a> {
    /// The creative's asset id.
    pub creative: &'a str,
    /// Its manifest.
    pub manifest: &'a AssetManifest,
}

/// A session's ads for one live break.
#[derive(Debug, Clone)]
pub struct LiveFill<'a> {
    /// The break it fills (`LiveBreak::id`).
    pub break_id: u32,
    /// The break's number in the session's plan (in ad URLs).
    pub plan_id: u32,
    /// The ads, in play order, as the plan has them.
    pub ads: Vec<LiveAd<'a>>,
    /// What fills the break after the ads: the slate, or (`None`) the
    /// content.
    pub slate: Option<LiveAd<'a>>,
}

/// What a slot holds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Slot<'s, 'a> {
    /// Segment `frag` (0-based) of ad `n` (its index in the plan).
    Ad {
        fill: &'s LiveFill<'a>,
        ad: &'s LiveAd<'a>,
        n: usize,
        frag: usize,
    },
    /// Segment `frag` of the slate's `turn`-th loop.
    Slate {
        fill: &'s LiveFill<'a>,
        ad: &'s LiveAd<'a>,
        turn: u64,
        frag: usize,
    },
    /// The content segment itself.
    Content,
}

impl<'s, 'a> Slot<'s, 'a> {
    /// Which run the slot belongs to: a change is a discontinuity.
    fn run(&self) -> (u8, u32, u64) {
        match self {
            Slot::Content => (0, 0, 0),
            Slot::Ad { fill, n, .. } => (1, fill.plan_id, *n as u64),
            Slot::Slate { fill, turn, .. } => (2, fill.plan_id, *turn),
        }
    }

    /// The ad (or slate) and its index in the break's URLs.
    pub(crate) fn media(self) -> Option<(&'s LiveFill<'a>, &'s LiveAd<'a>, usize, usize)> {
        match self {
            Slot::Ad { fill, ad, n, frag } => Some((fill, ad, n, frag)),
            // The slate's index is past the ads: never a planned ad, so
            // its fetches are not reported.
            Slot::Slate { fill, ad, frag, .. } => Some((fill, ad, fill.ads.len(), frag)),
            Slot::Content => None,
        }
    }
}

/// One break of the session in the window.
#[derive(Debug)]
struct Span<'s, 'a> {
    fill: &'s LiveFill<'a>,
    /// Usable ads: (index in the plan, segments).
    ads: Vec<(usize, usize)>,
    /// The slate's segments (0: no slate).
    slate: usize,
    start: u64,
    /// The first segment after the break, once it exists.
    end: Option<u64>,
}

/// A session's slots in one live manifest.
#[derive(Debug)]
pub struct Slots<'s, 'a> {
    spans: Vec<Span<'s, 'a>>,
    /// The longest ad or slate segment, 90 kHz.
    longest: u64,
}

impl<'s, 'a> Slots<'s, 'a> {
    /// The slots of `fills` in `m`. An ad without a rendition for every
    /// video codec family of the channel, or without audio when the
    /// channel has it, is left out (of every playlist alike).
    pub fn new(m: &LiveManifest, fills: &'s [LiveFill<'a>]) -> Slots<'s, 'a> {
        let mut spans = Vec::new();
        let mut longest = 0u64;
        for fill in fills {
            let Some(b) = m.breaks.iter().find(|b| b.id == fill.break_id) else {
                continue;
            };
            // Where it ends: recorded once known; else found from its first
            // segment's time. A break whose first segment left the window
            // before its end was recorded is not placed.
            let end = b.end_msn.or_else(|| {
                let until = m.segment(b.start_msn)?.start + b.duration_ms * 90;
                m.segments
                    .iter()
                    .find(|x| x.msn > b.start_msn && x.start >= until)
                    .map(|x| x.msn)
            });
            let begun = m.segment(b.start_msn).is_some()
                || (end.is_some() && m.segments.first().is_some_and(|f| f.msn > b.start_msn));
            if !begun || end.is_some_and(|e| m.segments.first().is_none_or(|f| e <= f.msn)) {
                continue;
            }
            let mut ads = Vec::new();
            for (i, ad) in fill.ads.iter().enumerate() {
                let n = frags(m, ad.manifest);
                if n > 0 {
                    ads.push((i, n));
                    longest = longest.max(longest_frag(ad.manifest));
                }
            }
            let slate = fill.slate.as_ref().map_or(0, |s| frags(m, s.manifest));
            if slate > 0 {
                longest = longest.max(fill.slate.as_ref().map_or(0, |s| longest_frag(s.manifest)));
            }
            if ads.is_empty() && slate == 0 {
                continue;
            }
            spans.push(Span {
                fill,
                ads,
                slate,
                start: b.start_msn,
                end,
            });
        }
        Slots { spans, longest }
    }

    /// Whether no break of the session is in the window.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// What segment `msn`'s place holds.
    pub(crate) fn at(&self, msn: u64) -> Slot<'s, 'a> {
        for s in &self.spans {
            if msn < s.start || s.end.is_some_and(|e| msn >= e) {
                continue;
            }
            let mut k = (msn - s.start) as usize;
            for &(n, count) in &s.ads {
                if k < count {
                    return Slot::Ad {
                        fill: s.fill,
                        ad: &s.fill.ads[n],
                        n,
                        frag: k,
                    };
                }
                k -= count;
            }
            if let (Some(ad), true) = (s.fill.slate.as_ref(), s.slate > 0) {
                return Slot::Slate {
                    fill: s.fill,
                    ad,
                    turn: (k / s.slate) as u64,
                    frag: k % s.slate,
                };
            }
            return Slot::Content;
        }
        Slot::Content
    }

    /// Whether segment `msn` starts a new run for the session (a
    /// discontinuity of its own, beside the content's).
    pub(crate) fn turns(&self, msn: u64) -> bool {
        msn > 0 && self.at(msn).run() != self.at(msn - 1).run()
    }

    /// The session's discontinuities at or before `msn` (the first listed
    /// segment, whose own is counted here rather than tagged).
    pub(crate) fn turns_through(&self, msn: u64) -> u64 {
        let mut points: Vec<u64> = Vec::new();
        for s in &self.spans {
            let last = s.end.unwrap_or(msn).min(msn);
            points.extend(s.start..=last);
        }
        points.sort_unstable();
        points.dedup();
        points.into_iter().filter(|p| self.turns(*p)).count() as u64
    }

    /// The longest ad or slate segment in whole seconds, rounded up.
    pub(crate) fn longest_secs(&self) -> u64 {
        self.longest.div_ceil(90_000)
    }
}

/// The ad's stand-in for a live video rendition: the same codec family,
/// the nearest height (the taller on a tie).
pub(crate) fn ad_video<'m>(ad: &'m AssetManifest, t: &LiveTrack) -> Option<&'m Track> {
    let family = codec_family(&t.codec);
    ad.videos()
        .filter(|a| a.codec_family() == family)
        .min_by_key(|a| (a.height.abs_diff(t.height), std::cmp::Reverse(a.height)))
}

/// The ad's audio (a creative is conditioned with one track).
pub(crate) fn ad_audio(ad: &AssetManifest) -> Option<&Track> {
    ad.audios().next()
}

/// The ad's stand-in for a live track of either kind.
pub(crate) fn stand_in<'m>(ad: &'m AssetManifest, t: &LiveTrack) -> Option<&'m Track> {
    match t.kind {
        TrackKind::Video => ad_video(ad, t),
        _ => ad_audio(ad),
    }
}

/// How many segments of `ad` fill slots in `m`: 0 when it cannot stand in
/// for every track. An ad's audio may run a few milliseconds past its
/// video in a last, tiny fragment: left out, so every lane ends together.
fn frags(m: &LiveManifest, ad: &AssetManifest) -> usize {
    let Some(timeline) = ad.timeline() else {
        return 0;
    };
    let mut n = timeline.fragments.len();
    for t in &m.tracks {
        match stand_in(ad, t) {
            Some(a) if t.kind == TrackKind::Audio => n = n.min(a.fragments.len()),
            Some(_) => {}
            None => return 0,
        }
    }
    n
}

/// An ad's longest video segment, 90 kHz.
fn longest_frag(ad: &AssetManifest) -> u64 {
    ad.timeline().map_or(0, |t| {
        let ts = u64::from(t.timescale.max(1));
        t.fragments
            .iter()
            .map(|f| f.duration * 90_000 / ts)
            .max()
            .unwrap_or(0)
    })
}

/// A fragment's duration in seconds.
pub(crate) fn frag_secs(t: &Track, frag: usize) -> f64 {
    t.fragments
        .get(frag)
        .map_or(0.0, |f| f.duration as f64 / f64::from(t.timescale.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::{
        media_playlist, stitched_media_playlist, stitched_ts_playlist, Blocking, LiveBreak,
        LivePart, LiveSegment,
    };
    use crate::manifest::{ByteRange, Fragment};

    fn track(id: &str, kind: TrackKind, height: u32, n: u64) -> Track {
        let timescale = if kind == TrackKind::Audio {
            48000
        } else {
            12800
        };
        Track {
            marked: None,
            id: id.into(),
            kind,
            file: format!("{id}.mp4"),
            codec: if kind == TrackKind::Audio {
                "mp4a.40.2".into()
            } else {
                "avc1.640028".into()
            },
            bandwidth: 1000,
            average_bandwidth: 1000,
            width: height * 16 / 9,
            height,
            frame_rate: 25.0,
            sample_rate: 48000,
            channels: 2,
            language: "en".into(),
            media_time: 0,
            timescale,
            init: ByteRange {
                offset: 0,
                length: 10,
            },
            fragments: (0..n)
                .map(|i| Fragment {
                    range: ByteRange {
                        offset: 10 + i * 10,
                        length: 10,
                    },
                    start: i * 2 * u64::from(timescale),
                    duration: 2 * u64::from(timescale),
                    key_length: 0,
                })
                .collect(),
        }
    }

    /// An ad of `n` 2-second segments at 1080p, 720p and 360p.
    fn ad(id: &str, n: u64) -> AssetManifest {
        AssetManifest::new(
            id,
            vec![
                track("v0", TrackKind::Video, 1080, n),
                track("v1", TrackKind::Video, 720, n),
                track("v2", TrackKind::Video, 360, n),
                track("a0", TrackKind::Audio, 0, n),
            ],
        )
    }

    /// Segments 100..100+n of 2 s (four parts each), the last growing;
    /// a 10-second break from segment 102.
    fn channel(n: u64) -> LiveManifest {
        let part = LivePart {
            duration: 45_000,
            independent: true,
            published_ms: 0,
        };
        let segments = (0..n)
            .map(|i| LiveSegment {
                msn: 100 + i,
                start: i * 180_000,
                pdt_ms: 1_700_000_000_000 + i * 2000,
                init: 0,
                discontinuity: false,
                parts: vec![part; if i + 1 == n { 2 } else { 4 }],
                complete: i + 1 != n,
            })
            .collect();
        let video = |id: &str, height: u32| crate::live::LiveTrack {
            id: id.into(),
            kind: TrackKind::Video,
            codec: "avc1.64001f".into(),
            bandwidth: 3_000_000,
            width: height * 16 / 9,
            height,
            frame_rate: 30.0,
            sample_rate: 0,
            channels: 0,
            first_msn: 0,
        };
        LiveManifest {
            channel: "final".into(),
            event: "e1".into(),
            part_target_ms: 500,
            segment_target_ms: 2000,
            epoch_ms: 1_700_000_000_000,
            tracks: vec![
                video("v0", 720),
                video("v1", 360),
                crate::live::LiveTrack {
                    id: "a0".into(),
                    kind: TrackKind::Audio,
                    codec: "mp4a.40.2".into(),
                    bandwidth: 128_000,
                    width: 0,
                    height: 0,
                    frame_rate: 0.0,
                    sample_rate: 48_000,
                    channels: 2,
                    first_msn: 0,
                },
            ],
            segments,
            discontinuity_sequence: 3,
            ended: false,
            breaks: vec![LiveBreak {
                end_msn: None,
                end_start: None,
                id: 9,
                start_msn: 102,
                duration_ms: 10_000,
                source: "scte35".into(),
            }],
        }
    }

    fn uri_lines_of(p: &str) -> Vec<&str> {
        uris(p)
    }

    fn uris(p: &str) -> Vec<&str> {
        p.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn ads_take_the_slots_of_a_break_then_the_content_comes_back() {
        let (a, b) = (ad("adA", 2), ad("adB", 1));
        let fills = [LiveFill {
            break_id: 9,
            plan_id: 4,
            ads: vec![
                LiveAd {
                    creative: "adA",
                    manifest: &a,
                },
                LiveAd {
                    creative: "adB",
                    manifest: &b,
                },
            ],
            slate: None,
        }];
        // Break 102..107 (10 s); ads fill 102..104; the channel's own
        // break content plays 105 and 106; 107 is back after the break.
        let m = channel(10);
        let slots = Slots::new(&m, &fills);
        let p = stitched_media_playlist(&m, "v0", Blocking::default(), &slots).unwrap();
        assert_eq!(
            &uris(&p)[..9],
            [
                "v0/100.m4s",
                "v0/101.m4s",
                "ad/4.0/adA/v1/1.m4s",
                "ad/4.0/adA/v1/2.m4s",
                "ad/4.1/adB/v1/1.m4s",
                "v0/105.m4s",
                "v0/106.m4s",
                "v0/107.m4s",
                "v0/108.m4s",
            ],
            "{p}"
        );
        // Numbering and dates are the content's; a discontinuity and a map
        // at each change of run.
        assert!(p.contains("#EXT-X-MEDIA-SEQUENCE:100\n"));
        assert!(p.contains("#EXT-X-DISCONTINUITY-SEQUENCE:3\n"));
        assert_eq!(p.matches("#EXT-X-DISCONTINUITY\n").count(), 3, "{p}");
        assert!(p.contains("#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"ad/4.0/adA/v1/init.mp4\"\n#EXT-X-CUE-OUT:DURATION=10.000\n#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:24.000Z\n#EXTINF:2.000,\nad/4.0/adA/v1/1.m4s\n"), "{p}");
        assert!(p.contains("#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"v0/init-0.mp4\"\n"));
        // The content after the ads is live again: parts and a hint.
        assert!(p.contains("#EXT-X-PRELOAD-HINT"));
        // The 360p rendition gets the ad's 360p; audio its audio.
        let low = stitched_media_playlist(&m, "v1", Blocking::default(), &slots).unwrap();
        assert!(low.contains("ad/4.0/adA/v2/1.m4s"));
        let audio = stitched_media_playlist(&m, "a0", Blocking::default(), &slots).unwrap();
        assert!(audio.contains("ad/4.1/adB/a0/1.m4s"));
        // Same slots in every playlist: the same number of lines.
        assert_eq!(uris(&low).len(), uris(&p).len());
        // Legacy TS: whole segments, the ad's muxed TS.
        let ts = stitched_ts_playlist(&m, "v0", "a0", &slots).unwrap();
        assert!(ts.contains("../ad/4.0/adA/ts/v1.a0/2.ts\n"), "{ts}");
        assert_eq!(ts.matches("#EXT-X-DISCONTINUITY\n").count(), 3, "{ts}");
        // DASH: a period per run, each at its slots' time; the content
        // after the ads is named by its first segment and offset to it.
        let d = crate::live::stitched_mpd(&m, 1_700_000_030_000, 60, "/live/time", &slots).unwrap();
        let periods: Vec<&str> = d
            .lines()
            .filter_map(|l| l.trim().strip_prefix("<Period id=\""))
            .collect();
        assert_eq!(
            periods,
            [
                "0\" start=\"PT0S\">",
                "ad-4-0\" start=\"PT4.000S\">",
                "ad-4-1\" start=\"PT8.000S\">",
                "c105\" start=\"PT10.000S\">",
            ],
            "{d}"
        );
        assert!(
            d.contains("media=\"ad/4.0/adA/$RepresentationID$/$Number$.m4s\""),
            "{d}"
        );
        assert!(d.contains("presentationTimeOffset=\"900000\""), "{d}");
        assert!(d.contains("startNumber=\"105\""), "{d}");
        let ev = d.find("spliceEventId=\"9\"").unwrap();
        assert!(ev > d.find("ad-4-0").unwrap() && ev < d.find("ad-4-1").unwrap());
        // Ads up to the channel's height: its 720p, not its 1080p.
        assert!(
            d.contains("height=\"720\"") && !d.contains("height=\"1080\""),
            "{d}"
        );
        // No fills: exactly the shared playlist.
        let none = Slots::new(&m, &[]);
        assert!(none.is_empty());
        assert_eq!(
            stitched_media_playlist(&m, "v0", Blocking::default(), &none).unwrap(),
            media_playlist(&m, "v0", Blocking::default()).unwrap()
        );
    }

    #[test]
    fn a_slate_fills_the_rest_and_the_live_edge_in_a_break_has_no_parts() {
        let (a, s) = (ad("adA", 2), ad("slate", 2));
        let fills = [LiveFill {
            break_id: 9,
            plan_id: 0,
            ads: vec![LiveAd {
                creative: "adA",
                manifest: &a,
            }],
            slate: Some(LiveAd {
                creative: "slate",
                manifest: &s,
            }),
        }];
        // The live edge is segment 105, in the break, still growing: its
        // slot waits until it is complete.
        let m = channel(6);
        let slots = Slots::new(&m, &fills);
        let p = stitched_media_playlist(&m, "v0", Blocking::default(), &slots).unwrap();
        assert_eq!(
            &uris(&p)[2..],
            [
                "ad/0.0/adA/v1/1.m4s",
                "ad/0.0/adA/v1/2.m4s",
                "ad/0.1/slate/v1/1.m4s",
            ],
            "{p}"
        );
        assert!(!p.contains("#EXT-X-PART:"), "{p}");
        assert!(!p.contains("#EXT-X-PRELOAD-HINT"), "{p}");
        assert!(
            p.trim_end().ends_with(".m4s"),
            "nothing after the last slot: {p}"
        );
        // The slate loops, each loop a run of its own.
        let m = channel(9);
        let slots = Slots::new(&m, &fills);
        let p = stitched_media_playlist(&m, "v0", Blocking::default(), &slots).unwrap();
        assert_eq!(
            &uris(&p)[6..],
            ["ad/0.1/slate/v1/1.m4s", "v0/107.m4s"],
            "{p}"
        );
        assert_eq!(p.matches("#EXT-X-DISCONTINUITY\n").count(), 4, "{p}");
    }

    #[test]
    fn the_discontinuity_sequence_counts_the_sessions_changes_out_of_the_window() {
        let a = ad("adA", 2);
        let fills = [LiveFill {
            break_id: 9,
            plan_id: 1,
            ads: vec![LiveAd {
                creative: "adA",
                manifest: &a,
            }],
            slate: None,
        }];
        let m = channel(10);
        let slots = Slots::new(&m, &fills);
        // Through 101: none; 102 turns to the ad; 104 back to content.
        assert_eq!(slots.turns_through(101), 0);
        assert_eq!(slots.turns_through(102), 1);
        assert_eq!(slots.turns_through(103), 1);
        assert_eq!(slots.turns_through(104), 2);
        assert_eq!(slots.turns_through(109), 2);
        // A player's discontinuity count for a segment never changes as
        // the window moves: segment 105's is the same from either window.
        let cc_of = |m: &LiveManifest, msn: u64| {
            let p = stitched_media_playlist(m, "v0", Blocking::default(), &Slots::new(m, &fills))
                .unwrap();
            let head: u64 = p
                .lines()
                .find_map(|l| l.strip_prefix("#EXT-X-DISCONTINUITY-SEQUENCE:"))
                .unwrap()
                .parse()
                .unwrap();
            let upto = p.find(&format!("v0/{msn}.m4s")).unwrap();
            head + p[..upto].matches("#EXT-X-DISCONTINUITY\n").count() as u64
        };
        let mut later = channel(10);
        later.segments.drain(..2);
        assert_eq!(cc_of(&m, 105), 5);
        assert_eq!(cc_of(&later, 105), 5);
        // Once the break's first segment leaves the window, its recorded
        // end keeps its slots in place (and the count the same).
        let mut gone = channel(10);
        gone.breaks[0].end_msn = Some(104);
        gone.breaks[0].end_start = Some(4 * 180_000);
        gone.segments.drain(..3);
        assert!(!Slots::new(&gone, &fills).is_empty());
        assert_eq!(cc_of(&gone, 105), 5);
        let p =
            stitched_media_playlist(&gone, "v0", Blocking::default(), &Slots::new(&gone, &fills))
                .unwrap();
        assert_eq!(uri_lines_of(&p)[0], "ad/1.0/adA/v1/2.m4s", "{p}");
        // Without a recorded end it cannot be placed: the content shows.
        gone.breaks[0].end_msn = None;
        assert!(Slots::new(&gone, &fills).is_empty());
    }

    #[test]
    fn an_ad_without_the_channels_codec_is_left_out() {
        let mut hevc = ad("adH", 2);
        for t in &mut hevc.tracks {
            if t.kind == TrackKind::Video {
                t.codec = "hvc1.1.6.L93.B0".into();
            }
        }
        let fills = [LiveFill {
            break_id: 9,
            plan_id: 0,
            ads: vec![LiveAd {
                creative: "adH",
                manifest: &hevc,
            }],
            slate: None,
        }];
        let m = channel(10);
        assert!(Slots::new(&m, &fills).is_empty());
    }
}
