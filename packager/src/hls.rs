//! HLS playlists (RFC 8216) with fMP4 segments.

use std::fmt::Write;

use crate::manifest::{AssetManifest, Track};

/// The multivariant playlist: one variant per video rendition, every audio
/// track in one alternate rendition group.
pub(crate) fn multivariant(m: &AssetManifest) -> String {
    let mut out = String::from("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    let audios: Vec<&Track> = m.audios().collect();
    for (i, a) in audios.iter().enumerate() {
        let default = if i == 0 { "YES" } else { "NO" };
        let _ = writeln!(
            out,
            "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aud\",NAME=\"{name}\",LANGUAGE=\"{lang}\",DEFAULT={default},AUTOSELECT=YES,CHANNELS=\"{ch}\",URI=\"{id}.m3u8\"",
            name = audio_name(a, i),
            lang = a.language,
            ch = a.channels.max(1),
            id = a.id,
        );
    }
    let audio_peak = audios.iter().map(|a| a.bandwidth).max().unwrap_or(0);
    let audio_avg = audios
        .iter()
        .map(|a| a.average_bandwidth)
        .max()
        .unwrap_or(0);
    let audio_codec = audios.first().map(|a| a.codec.as_str());
    for v in m.videos() {
        let codecs = match audio_codec {
            Some(ac) => format!("{},{}", v.codec, ac),
            None => v.codec.clone(),
        };
        let _ = write!(
            out,
            "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={},CODECS=\"{}\",RESOLUTION={}x{},FRAME-RATE={:.3}",
            v.bandwidth.saturating_add(audio_peak),
            v.average_bandwidth.saturating_add(audio_avg),
            codecs,
            v.width,
            v.height,
            v.frame_rate,
        );
        if !audios.is_empty() {
            out.push_str(",AUDIO=\"aud\"");
        }
        let _ = writeln!(out, "\n{}.m3u8", v.id);
    }
    out
}

/// The media playlist of one track: every fragment as one segment.
pub(crate) fn media_playlist(track: &Track) -> String {
    let ts = f64::from(track.timescale);
    let target = track
        .fragments
        .iter()
        .map(|f| (f.duration as f64 / ts).round() as u64)
        .max()
        .unwrap_or(1)
        .max(1);
    let mut out = String::with_capacity(64 + track.fragments.len() * 32);
    let _ = write!(
        out,
        "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:1\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-MAP:URI=\"{}/init.mp4\"\n",
        track.id
    );
    for (i, f) in track.fragments.iter().enumerate() {
        let _ = write!(
            out,
            "#EXTINF:{:.5},\n{}/{}.m4s\n",
            f.duration as f64 / ts,
            track.id,
            i + 1
        );
    }
    out.push_str("#EXT-X-ENDLIST\n");
    out
}

fn audio_name(a: &Track, i: usize) -> String {
    if a.language == "und" {
        format!("Audio {}", i + 1)
    } else {
        a.language.clone()
    }
}
