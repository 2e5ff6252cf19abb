//! Common Media Server Data (CTA-5006): what the edge tells players about
//! each media object and about itself, so that a player steps down before
//! it stalls. `CMSD-Static` describes the object (type, stream type,
//! format) and is the same wherever it is served; `CMSD-Dynamic` is this
//! hop's: the edge's name, `mb` (the most a player should fetch, kbit/s)
//! while it sheds, and `du` (duress) while it refuses or caps new sessions.
//!
//! Written by hand: the headers are a few structured-field tokens, and the
//! tests read them back with an independent parser (`@svta/cml-cmsd`).

use cascade_packager::live::LiveOutput;
use cascade_packager::{Format, Output};
use cascade_serve::Response;

use crate::governor::Governor;

/// Adds CMSD to an answer of a title's output.
pub(crate) fn add_vod(resp: &mut Response, output: &Output, governor: &Governor) {
    let (ot, sf) = match output {
        Output::Multivariant | Output::MediaPlaylist(_) | Output::IframePlaylist(_) => {
            ("m", Some("h"))
        }
        Output::TsPlaylist(_) => ("m", Some("h")),
        Output::Mpd => ("m", Some("d")),
        Output::Init(_) => ("i", None),
        Output::Segment(t, _) | Output::KeySegment(t, _) => (track_type(t), None),
        Output::Subtitles(_) => ("c", Some("d")),
        Output::SubtitleSegment(_, _, Format::Ts) => ("c", Some("h")),
        Output::SubtitleSegment(..) => ("c", None),
        Output::TsSegment(ids, _) => (
            if ids.contains('.') {
                "av"
            } else {
                track_type(ids)
            },
            Some("h"),
        ),
    };
    add(resp, ot, "v", sf, governor);
}

/// Adds CMSD to an answer of a live channel's output.
pub(crate) fn add_live(resp: &mut Response, output: Option<&LiveOutput>, governor: &Governor) {
    let Some(output) = output else { return };
    let (ot, sf) = match output {
        LiveOutput::Multivariant
        | LiveOutput::Media(_)
        | LiveOutput::TsMultivariant
        | LiveOutput::TsPlaylist(..) => ("m", Some("h")),
        LiveOutput::Mpd => ("m", Some("d")),
        LiveOutput::Init(..) | LiveOutput::KeyedInit(..) => ("i", None),
        LiveOutput::Segment(t, _) | LiveOutput::Part(t, _, _) => (track_type(t), None),
        LiveOutput::TsSegment(..) => ("av", Some("h")),
    };
    add(resp, ot, "l", sf, governor);
}

fn add(resp: &mut Response, ot: &str, st: &str, sf: Option<&str>, governor: &Governor) {
    let mut s = format!("ot={ot}");
    if let Some(sf) = sf {
        s.push_str(",sf=");
        s.push_str(sf);
    }
    s.push_str(",st=");
    s.push_str(st);
    let dynamic = governor.cmsd_dynamic(None);
    for (name, value) in [
        ("cmsd-static", s.as_str()),
        ("cmsd-dynamic", dynamic.as_str()),
    ] {
        if let Ok(v) = http::HeaderValue::from_str(value) {
            resp.headers.insert(name, v);
        }
    }
}

/// The object type of one track's media by its id: `a…` audio, `s…`
/// subtitles, otherwise video.
fn track_type(track: &str) -> &'static str {
    match track.as_bytes().first() {
        Some(b'a') => "a",
        Some(b's') => "c",
        _ => "v",
    }
}
