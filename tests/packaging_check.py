#!/usr/bin/env python3
"""Checks a packaged title from outside, with parsers and tools that are not
Cascade's own: PyPI's `m3u8` and `mpegdash`, FFmpeg's `ffprobe` and `ffmpeg`.

Usage: packaging_check.py BASE QUERY --audio en,hi --subtitles en --cues N

BASE is the title's edge URL (`http://edge/vod/ASSET/`), QUERY the viewer's
token query (`__token__=...`). Prints one line per check and exits 1 on the
first failure, with the reason.
"""

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request

import m3u8
from mpegdash.parser import MPEGDASHParser

AUDIO_FRAME = 1024 / 48000  # one AAC frame at 48 kHz, in seconds
TMP = tempfile.mkdtemp(prefix="cascade-check-")


def fail(msg):
    print(f"FAIL: {msg}", flush=True)
    sys.exit(1)


def ok(msg):
    print(f"ok: {msg}", flush=True)


def check(cond, msg):
    if not cond:
        fail(msg)


def get(url, byterange=None):
    req = urllib.request.Request(url)
    if byterange:
        req.add_header("Range", byterange)
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read()


def with_query(url, query):
    if not query or query in url:
        return url
    return url + ("&" if "?" in url else "?") + query


def load_playlist(url):
    text = get(url).decode()
    return m3u8.loads(text, uri=url), text


# --- the rules of EXT-X-VERSION (RFC 8216bis section 8, "Protocol version compatibility")


def required_version(pl, text):
    if pl.is_i_frames_only:
        return 5 if pl.segment_map else 4
    v = 1
    if any(s.byterange for s in pl.segments):
        v = max(v, 4)
    if pl.segment_map:
        v = max(v, 6)
    if any("." in line.split(":", 1)[1].split(",")[0] for line in text.splitlines() if line.startswith("#EXTINF:")):
        v = max(v, 3)
    return v


def check_media_playlist(url, what):
    pl, text = load_playlist(url)
    check(pl.version == required_version(pl, text), f"{what}: EXT-X-VERSION {pl.version}, features need {required_version(pl, text)}")
    check(pl.target_duration is not None, f"{what}: no EXT-X-TARGETDURATION")
    for s in pl.segments:
        check(round(s.duration) <= pl.target_duration, f"{what}: segment {s.uri} lasts {s.duration} > target {pl.target_duration}")
    check(pl.is_independent_segments, f"{what}: no EXT-X-INDEPENDENT-SEGMENTS")
    check(pl.playlist_type == "vod" and pl.is_endlist, f"{what}: not a VOD playlist with ENDLIST")
    check(len(pl.segments) > 0, f"{what}: no segments")
    return pl


def absolute(pl, uri):
    return urllib.parse.urljoin(pl.base_uri, uri)


# --- minimal ISO-BMFF reading, for the independent timeline check


def boxes(data, start=0, end=None):
    end = len(data) if end is None else end
    at = start
    while at + 8 <= end:
        size, kind = struct.unpack(">I4s", data[at:at + 8])
        header = 8
        if size == 1:
            size = struct.unpack(">Q", data[at + 8:at + 16])[0]
            header = 16
        if size < header or at + size > end:
            raise ValueError("bad box")
        yield kind.decode("latin1"), at + header, at + size
        at += size


def fragment_times(seg, trex_duration=0):
    """(tfdt, summed sample durations) of a moof+mdat."""
    for kind, body, end in boxes(seg):
        if kind != "moof":
            continue
        for k2, b2, e2 in boxes(seg, body, end):
            if k2 != "traf":
                continue
            tfdt = None
            default_dur = trex_duration
            total = 0
            for k3, b3, e3 in boxes(seg, b2, e2):
                vf = struct.unpack(">I", seg[b3:b3 + 4])[0]
                version, flags = vf >> 24, vf & 0xFFFFFF
                if k3 == "tfhd":
                    at = b3 + 8
                    if flags & 1:
                        at += 8
                    if flags & 2:
                        at += 4
                    if flags & 8:
                        default_dur = struct.unpack(">I", seg[at:at + 4])[0]
                elif k3 == "tfdt":
                    tfdt = struct.unpack(">Q" if version == 1 else ">I", seg[b3 + 4:b3 + (12 if version == 1 else 8)])[0]
                elif k3 == "trun":
                    count = struct.unpack(">I", seg[b3 + 4:b3 + 8])[0]
                    at = b3 + 8 + (4 if flags & 1 else 0) + (4 if flags & 4 else 0)
                    fields = sum(1 for f in (0x100, 0x200, 0x400, 0x800) if flags & f)
                    for i in range(count):
                        if flags & 0x100:
                            total += struct.unpack(">I", seg[at + i * fields * 4:at + i * fields * 4 + 4])[0]
                        else:
                            total += default_dur
            return tfdt, total
    raise ValueError("no moof")


# --- FFmpeg


def ffprobe_first_times(path):
    """First presentation time of the video and of the audio stream in a file."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "packet=stream_index,pts_time:stream=index,codec_type",
         "-of", "json", path],
        capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        fail(f"ffprobe cannot read {path}: {out.stderr.strip()[:300]}")
    data = json.loads(out.stdout)
    kinds = {s["index"]: s["codec_type"] for s in data.get("streams", [])}
    first = {}
    for p in data.get("packets", []):
        kind = kinds.get(p["stream_index"])
        if "pts_time" in p and kind:
            t = float(p["pts_time"])
            first[kind] = min(first.get(kind, t), t)
    return first


def ffmpeg_decodes(url, what):
    out = subprocess.run(["ffmpeg", "-v", "error", "-xerror", "-i", url, "-map", "0", "-f", "null", "-"],
                         capture_output=True, text=True, timeout=300)
    check(out.returncode == 0 and not out.stderr.strip(), f"{what}: ffmpeg could not decode to the end: {out.stderr.strip()[:400]}")


def save(name, data):
    path = os.path.join(TMP, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


# --- the checks


def check_fmp4(base, query, audio_langs, sub_langs, cues):
    master_url = with_query(base + "master.m3u8", query)
    master, text = load_playlist(master_url)
    children = []
    for p in master.playlists:
        si = p.stream_info
        check(si.bandwidth and si.average_bandwidth and si.codecs and si.resolution and si.frame_rate,
              f"fMP4 variant {p.uri}: BANDWIDTH, AVERAGE-BANDWIDTH, CODECS, RESOLUTION and FRAME-RATE are all needed")
        check("mp4a.40.2" in si.codecs and si.codecs.split(",")[0].startswith(("avc1.", "hvc1.", "av01.")),
              f"fMP4 variant {p.uri}: CODECS {si.codecs}")
        children.append(check_media_playlist(absolute(master, p.uri), f"fMP4 variant {p.uri}"))
    audio = [m for m in master.media if m.type == "AUDIO"]
    subs = [m for m in master.media if m.type == "SUBTITLES"]
    check(sorted(m.language for m in audio) == sorted(audio_langs), f"audio renditions {[m.language for m in audio]}, want {audio_langs}")
    check([m.default for m in audio].count("YES") == 1 and all(m.autoselect == "YES" for m in audio), "exactly one DEFAULT audio, all AUTOSELECT")
    check(sorted(m.language for m in subs) == sorted(sub_langs), f"subtitle renditions {[m.language for m in subs]}, want {sub_langs}")
    for m in audio + subs:
        children.append(check_media_playlist(absolute(master, m.uri), f"{m.type} {m.language}"))
    iframes = master.iframe_playlists
    check(len(iframes) == len(master.playlists), f"{len(iframes)} I-frame playlists for {len(master.playlists)} variants")
    for ip in iframes:
        children.append(check_media_playlist(absolute(master, ip.uri), f"I-frame {ip.uri}"))
    check(master.version == max(c.version for c in children), f"master EXT-X-VERSION {master.version}, children need {max(c.version for c in children)}")
    ok(f"fMP4 master: {len(master.playlists)} variants, {len(audio)} audio, {len(subs)} subtitles, {len(iframes)} I-frame playlists; versions and target durations hold")

    # Each segment: the first video and audio presentation times agree.
    video_pl = load_playlist(absolute(master, master.playlists[0].uri))[0]
    for m in audio:
        audio_pl = load_playlist(absolute(master, m.uri))[0]
        vinit = get(absolute(video_pl, video_pl.segment_map[0].uri))
        ainit = get(absolute(audio_pl, audio_pl.segment_map[0].uri))
        check(len(video_pl.segments) == len(audio_pl.segments), f"{len(video_pl.segments)} video segments but {len(audio_pl.segments)} audio ({m.language})")
        for i, (vs, as_) in enumerate(zip(video_pl.segments, audio_pl.segments)):
            v = ffprobe_first_times(save(f"v{i}.mp4", vinit + get(absolute(video_pl, vs.uri))))
            a = ffprobe_first_times(save(f"a{i}.mp4", ainit + get(absolute(audio_pl, as_.uri))))
            check("video" in v and "audio" in a, f"fMP4 segment {i + 1}: ffprobe found no packets")
            check(abs(v["video"] - a["audio"]) <= AUDIO_FRAME + 1e-6,
                  f"fMP4 segment {i + 1} ({m.language}): video starts {v['video']:.4f}, audio {a['audio']:.4f}")
    ok("fMP4: every segment read by ffprobe; first audio and video times within one audio frame")

    # I-frame byte ranges hold a decodable keyframe.
    for ip in iframes:
        pl = load_playlist(absolute(master, ip.uri))[0]
        init = get(absolute(pl, pl.segment_map[0].uri))
        for i, s in enumerate(pl.segments[:3]):
            length, offset = s.byterange.split("@")
            start = int(offset)
            data = get(absolute(pl, s.uri), f"bytes={start}-{start + int(length) - 1}")
            check(len(data) == int(length), f"I-frame range {s.byterange}: got {len(data)} bytes")
            path = save(f"key{i}.mp4", init + data)
            out = subprocess.run(["ffmpeg", "-v", "error", "-i", path, "-frames:v", "1", "-f", "null", "-"],
                                 capture_output=True, text=True, timeout=60)
            check(out.returncode == 0, f"I-frame {s.uri} {s.byterange}: {out.stderr.strip()[:300]}")
    ok("I-frame playlists: byte ranges hold decodable keyframes")

    # Subtitle segments carry the timestamp map, and all cues are there.
    for m in subs:
        check_subtitles(load_playlist(absolute(master, m.uri))[0], cues, "MPEGTS:0,", f"fMP4 subtitles {m.language}")

    for p in master.playlists:
        ffmpeg_decodes(absolute(master, p.uri), f"fMP4 variant {p.uri}")
    for m in audio:
        ffmpeg_decodes(absolute(master, m.uri), f"fMP4 audio {m.language}")
    ok("fMP4: ffmpeg decodes every variant and audio rendition to the end")


def check_subtitles(pl, cues, mapping, what):
    seen = set()
    for s in pl.segments:
        body = get(absolute(pl, s.uri)).decode()
        check(body.startswith("WEBVTT\nX-TIMESTAMP-MAP=") and mapping in body.split("\n")[1],
              f"{what}: segment {s.uri} starts {body[:60]!r}")
        for line in body.splitlines():
            if "-->" in line:
                seen.add(line.split()[0])
    check(len(seen) == cues, f"{what}: {len(seen)} distinct cues over the segments, the file has {cues}")
    ok(f"{what}: {len(pl.segments)} segments with X-TIMESTAMP-MAP, all {cues} cues")


def check_ts(base, query, audio_langs, sub_langs, cues):
    master_url = with_query(base + "master.m3u8?format=ts", query)
    master, text = load_playlist(master_url)
    children = []
    audio = [m for m in master.media if m.type == "AUDIO"]
    check(sorted(m.language for m in audio) == sorted(audio_langs), f"TS audio renditions {[m.language for m in audio]}")
    check([m.uri is None for m in audio].count(True) == 1, "TS: the default audio is muxed into the variants (no URI), the others are not")
    for p in master.playlists:
        check(p.uri.split("?")[0].endswith(".m3u8") and p.uri.startswith("ts/"), f"TS variant URI {p.uri}")
        check(p.stream_info.codecs.startswith("avc1."), f"TS variant codecs {p.stream_info.codecs}")
        pl = check_media_playlist(absolute(master, p.uri), f"TS variant {p.uri}")
        check(pl.segment_map == [] or not pl.segment_map, f"TS variant {p.uri} has EXT-X-MAP")
        children.append(pl)
    for m in audio:
        if m.uri:
            children.append(check_media_playlist(absolute(master, m.uri), f"TS audio {m.language}"))
    subs = [m for m in master.media if m.type == "SUBTITLES"]
    check(sorted(m.language for m in subs) == sorted(sub_langs), "TS subtitle renditions")
    for m in subs:
        pl = check_media_playlist(absolute(master, m.uri), f"TS subtitles {m.language}")
        children.append(pl)
        check_subtitles(pl, cues, "MPEGTS:900000,", f"TS subtitles {m.language}")
    check(master.version == max(c.version for c in children), f"TS master EXT-X-VERSION {master.version}")
    ok(f"TS master: {len(master.playlists)} variants; versions and target durations hold")

    pl = children[0]
    for i, s in enumerate(pl.segments):
        data = get(absolute(pl, s.uri))
        check(len(data) % 188 == 0 and data[0] == 0x47, f"TS segment {s.uri}: not whole 188-byte packets")
        first = ffprobe_first_times(save(f"s{i}.ts", data))
        check("video" in first and "audio" in first, f"TS segment {s.uri}: ffprobe found {sorted(first)}")
        check(abs(first["video"] - first["audio"]) <= AUDIO_FRAME + 1e-6,
              f"TS segment {s.uri}: video starts {first['video']:.4f}, audio {first['audio']:.4f}")
        check(abs(first["video"] - (10.0 + sum(x.duration for x in pl.segments[:i]))) < 0.002,
              f"TS segment {s.uri}: video starts at {first['video']:.4f}, not at its place in the title")
    ok(f"TS: {len(pl.segments)} segments read by ffprobe; audio and video start together, at their playlist times")
    for p in master.playlists:
        ffmpeg_decodes(absolute(master, p.uri), f"TS variant {p.uri}")
    for m in audio:
        if m.uri:
            ffmpeg_decodes(absolute(master, m.uri), f"TS audio {m.language}")
    ok("TS: ffmpeg decodes every variant and audio rendition to the end")


def check_dash(base, query, audio_langs, sub_langs):
    url = with_query(base + "manifest.mpd", query)
    mpd = MPEGDASHParser.parse(get(url).decode())
    check(mpd.type == "static" and mpd.availability_start_time is None, "DASH: a static MPD without availabilityStartTime")
    period = mpd.periods[0]
    langs, texts, trick = [], [], 0
    for aset in period.adaptation_sets:
        if aset.essential_properties and any(p.scheme_id_uri == "http://dashif.org/guidelines/trickmode" for p in aset.essential_properties):
            trick += 1
        if aset.content_type == "audio":
            langs.append(aset.lang)
        if aset.content_type == "text":
            texts.append(aset.lang)
            continue
        for rep in aset.representations:
            check(rep.codecs and rep.bandwidth, f"DASH representation {rep.id}: @codecs and @bandwidth needed")
            tmpl = rep.segment_templates[0]
            timeline = []
            t = None
            for s in tmpl.segment_timelines[0].Ss:
                t = s.t if s.t is not None else t
                for _ in range((s.r or 0) + 1):
                    timeline.append((t, s.d))
                    t += s.d
            init_url = with_query(urllib.parse.urljoin(url, tmpl.initialization.split("?")[0].replace("$RepresentationID$", rep.id)), query)
            get(init_url)
            for n, (t, d) in enumerate(timeline, start=tmpl.start_number):
                media = tmpl.media.split("?")[0].replace("$RepresentationID$", rep.id).replace("$Number$", str(n))
                seg = get(with_query(urllib.parse.urljoin(url, media), query))
                tfdt, total = fragment_times(seg)
                check((tfdt, total) == (t, d), f"DASH {rep.id} segment {n}: timeline says t={t} d={d}, the fragment has tfdt={tfdt} duration={total}")
    check(sorted(langs) == sorted(audio_langs), f"DASH audio lang {langs}")
    check(sorted(texts) == sorted(sub_langs), f"DASH text lang {texts}")
    check(trick >= 1, "DASH: no trick-mode AdaptationSet")
    ok(f"DASH: static MPD; every SegmentTimeline matches its fragments; audio {langs}, text {texts}, {trick} trick-mode set(s)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("query")
    ap.add_argument("--audio", default="")
    ap.add_argument("--subtitles", default="")
    ap.add_argument("--cues", type=int, default=0)
    args = ap.parse_args()
    audio = [x for x in args.audio.split(",") if x]
    subs = [x for x in args.subtitles.split(",") if x]
    check_fmp4(args.base, args.query, audio, subs, args.cues)
    check_ts(args.base, args.query, audio, subs, args.cues)
    check_dash(args.base, args.query, audio, subs)
    print("all checks passed")


if __name__ == "__main__":
    main()
