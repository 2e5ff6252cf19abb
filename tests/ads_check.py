#!/usr/bin/env python3
"""Checks a viewer's stitched streams from outside, with parsers and tools
that are not Cascade's own: PyPI's `m3u8` and `mpegdash`, and FFmpeg.

Usage: ads_check.py BASE QUERY

BASE is the title's edge URL (`http://edge/vod/ASSET/`), QUERY the viewer's
token query (`__token__=...`). For the fMP4 HLS variant and its audio, the
TS variant and the DASH MPD, every run between discontinuities (or every
Period) is fetched whole and decoded by FFmpeg, which must report no
error; FFmpeg's own HLS reader also plays each variant playlist from end to
end. Prints one JSON object: per format, the runs, the ad segments and the
decoded seconds. Exits 1 on the first failure, with the reason.
"""

import json
import os
import subprocess
import sys
import tempfile
import urllib.request

import m3u8
from mpegdash.parser import MPEGDASHParser

TMP = tempfile.mkdtemp(prefix="cascade-ads-")


def fail(msg):
    print(f"FAIL: {msg}", flush=True)
    sys.exit(1)


def get(url):
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read()


def with_query(url, query):
    if query in url:
        return url
    return url + ("&" if "?" in url else "?") + query


def decode(path, what, fmp4=True):
    """Decodes a file with FFmpeg; answers the seconds it lasts."""
    r = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", path, "-f", "null", "-"],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0 or r.stderr.strip():
        fail(f"FFmpeg could not decode {what}: {r.stderr.strip()[:500]}")
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration,start_time", "-of", "json", path],
        capture_output=True,
        text=True,
    )
    try:
        fmt = json.loads(probe.stdout)["format"]
        # A run later in the title starts at its own time: its length is
        # its end less its start.
        start = max(0.0, float(fmt.get("start_time", 0))) if fmp4 else 0.0
        return float(fmt["duration"]) - start
    except (KeyError, ValueError):
        fail(f"ffprobe read no duration from {what}")


def play_whole(url, what):
    """FFmpeg's own HLS reader plays a media playlist from end to end."""
    r = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", url, "-f", "null", "-"],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        fail(f"FFmpeg could not play {what} end to end: {r.stderr.strip()[:500]}")


def runs_of(playlist):
    """Splits a media playlist into runs: (init URI or None, [segments])."""
    runs = []
    current = None
    for seg in playlist.segments:
        init = seg.init_section.absolute_uri if seg.init_section else None
        if current is None or seg.discontinuity or init != current[0]:
            current = (init, [])
            runs.append(current)
        current[1].append(seg)
    return runs


def check_hls(url, query, what):
    text = get(url).decode()
    pl = m3u8.loads(text, uri=url)
    if "#EXT-X-ENDLIST" not in text:
        fail(f"{what}: no EXT-X-ENDLIST")
    runs = runs_of(pl)
    ad_segments = sum(1 for s in pl.segments if "/ad/" in s.absolute_uri)
    decoded = 0.0
    for i, (init, segs) in enumerate(runs):
        path = os.path.join(TMP, f"{what.replace(' ', '_')}-{i}.bin")
        with open(path, "wb") as f:
            if init:
                f.write(get(with_query(init, query)))
            for s in segs:
                f.write(get(with_query(s.absolute_uri, query)))
        decoded += decode(path, f"{what} run {i}", fmp4=init is not None)
    play_whole(url, what)
    return {
        "runs": len(runs),
        "ad_segments": ad_segments,
        "segments": len(pl.segments),
        "listed_secs": round(sum(s.duration for s in pl.segments), 3),
        "decoded_secs": round(decoded, 3),
        "cue_out": text.count("#EXT-X-CUE-OUT"),
        "cue_in": text.count("#EXT-X-CUE-IN"),
        "scte35_out": text.count("SCTE35-OUT=0x"),
        "scte35_in": text.count("SCTE35-IN=0x"),
    }


def expand(template, rep_id, number):
    return template.replace("$RepresentationID$", rep_id).replace("$Number$", str(number))


def check_dash(url, query):
    text = get(url).decode()
    mpd = MPEGDASHParser.parse(text)
    base = url.split("?")[0].rsplit("/", 1)[0] + "/"
    decoded = 0.0
    ads = 0
    events = 0
    for p in mpd.periods:
        if p.id.startswith("ad-"):
            ads += 1
        events += len(p.event_streams or [])
        for aset in p.adaptation_sets:
            if aset.essential_properties:
                continue  # trick mode
            if aset.content_type not in ("video", "audio"):
                continue
            rep = aset.representations[0]
            tpl = rep.segment_templates[0]
            count = sum(1 + (s.r or 0) for s in tpl.segment_timelines[0].Ss)
            path = os.path.join(TMP, f"dash-{p.id}-{rep.id}.mp4")
            with open(path, "wb") as f:
                f.write(get(with_query(base + expand(tpl.initialization, rep.id, 0), query)))
                for n in range(tpl.start_number, tpl.start_number + count):
                    f.write(get(with_query(base + expand(tpl.media, rep.id, n), query)))
            secs = decode(path, f"DASH period {p.id} {rep.id}")
            if aset.content_type == "video":
                decoded += secs
    return {"periods": len(mpd.periods), "ad_periods": ads, "event_streams": events,
            "decoded_secs": round(decoded, 3)}


def main():
    if len(sys.argv) != 3:
        fail("usage: ads_check.py BASE QUERY")
    base, query = sys.argv[1], sys.argv[2]
    master_url = with_query(base + "master.m3u8", query)
    master = m3u8.loads(get(master_url).decode(), uri=master_url)
    variant = master.playlists[0]
    out = {"fmp4": check_hls(with_query(variant.absolute_uri, query), query, "fMP4 video")}
    audio = [m for m in master.media if m.type == "AUDIO" and m.uri]
    if audio:
        out["fmp4_audio"] = check_hls(with_query(audio[0].absolute_uri, query), query, "fMP4 audio")
    ts_url = with_query(base + "master.m3u8?format=ts", query)
    ts_master = m3u8.loads(get(ts_url).decode(), uri=ts_url)
    out["ts"] = check_hls(with_query(ts_master.playlists[0].absolute_uri, query), query, "TS")
    out["dash"] = check_dash(with_query(base + "manifest.mpd", query), query)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
