#!/usr/bin/env python3
"""Checks a live channel's LL-HLS playlists and DASH MPD from outside, with
parsers that are not Cascade's own: PyPI's `m3u8` and `mpegdash`.

Usage: live_check.py BASE QUERY

BASE is the channel's edge URL (`http://edge/live/NAME/`), QUERY the
viewer's token query (`__token__=...`). Prints one line per check and exits
1 on the first failure, with the reason.
"""

import sys
import urllib.parse
import urllib.request

import m3u8
from mpegdash.parser import MPEGDASHParser


def fail(msg):
    print(f"FAIL: {msg}", flush=True)
    sys.exit(1)


def ok(msg):
    print(f"ok: {msg}", flush=True)


def get(url):
    with urllib.request.urlopen(url, timeout=20) as r:
        return r.status, r.headers, r.read()


def with_query(url, query):
    return url + ("&" if "?" in url else "?") + query


def main():
    base, query = sys.argv[1], sys.argv[2]
    status, _, body = get(with_query(base + "master.m3u8", query))
    master = m3u8.loads(body.decode(), uri=base)
    if not master.is_variant or not master.playlists:
        fail("the multivariant playlist lists no variants")
    for p in master.playlists:
        if query not in p.uri:
            fail(f"variant {p.uri} has no token")
        if not p.stream_info.codecs or not p.stream_info.resolution:
            fail(f"variant {p.uri} lacks CODECS or RESOLUTION")
    audio = [m for m in master.media if m.type == "AUDIO"]
    ok(f"multivariant: {len(master.playlists)} variant(s), {len(audio)} audio rendition(s)")

    for uri in [master.playlists[0].uri] + [a.uri for a in audio]:
        status, headers, body = get(urllib.parse.urljoin(base, uri))
        text = body.decode()
        pl = m3u8.loads(text, uri=base)
        sc = pl.server_control
        if sc is None or sc.can_block_reload != "YES":
            fail(f"{uri}: no EXT-X-SERVER-CONTROL with CAN-BLOCK-RELOAD=YES")
        if not sc.part_hold_back or sc.part_hold_back < 3 * pl.part_inf.part_target - 1e-6:
            fail(f"{uri}: PART-HOLD-BACK {sc.part_hold_back} is under three part targets")
        if not sc.can_skip_until or sc.can_skip_until < 6 * pl.target_duration:
            fail(f"{uri}: CAN-SKIP-UNTIL {sc.can_skip_until} is under six target durations")
        if pl.part_inf is None or not pl.part_inf.part_target:
            fail(f"{uri}: no EXT-X-PART-INF")
        if not pl.segments:
            fail(f"{uri}: no segments")
        parts = [p for s in pl.segments for p in s.parts]
        if not parts:
            fail(f"{uri}: no EXT-X-PART")
        for p in parts:
            if p.duration > pl.part_inf.part_target + 0.0005:
                fail(f"{uri}: part {p.uri} lasts {p.duration}, over PART-TARGET")
        for s in pl.segments:
            if s.uri and s.duration > pl.target_duration:
                fail(f"{uri}: segment {s.uri} lasts {s.duration}, over the target duration")
            if s.uri and s.program_date_time is None:
                fail(f"{uri}: segment without EXT-X-PROGRAM-DATE-TIME")
        if not pl.preload_hint or pl.preload_hint.hint_type != "PART":
            fail(f"{uri}: no EXT-X-PRELOAD-HINT of a part")
        if not pl.rendition_reports and audio:
            fail(f"{uri}: no EXT-X-RENDITION-REPORT")
        if "no-store" in headers.get("cache-control", ""):
            fail(f"{uri}: a playlist that may not be kept")
        ok(f"{uri}: {len(pl.segments)} segment(s), {len(parts)} part(s), server control and hints")

        # A delta update parses, and skips what is older than CAN-SKIP-UNTIL.
        last = pl.media_sequence + len([s for s in pl.segments if s.uri]) - 1
        delta_uri = with_query(
            urllib.parse.urljoin(base, uri), f"_HLS_msn={last}&_HLS_part=0&_HLS_skip=YES"
        )
        status, _, body = get(delta_uri)
        delta = m3u8.loads(body.decode(), uri=base)
        if delta.server_control is None:
            fail(f"{uri}: the delta update lost its server control")
        ok(f"{uri}: delta update parses (skipped {delta.skip.skipped_segments if delta.skip else 0})")

    status, _, body = get(with_query(base + "manifest.mpd", query))
    mpd = MPEGDASHParser.parse(body.decode())
    if mpd.type != "dynamic":
        fail(f"the MPD is {mpd.type}, not dynamic")
    if not mpd.utc_timings:
        fail("the MPD has no UTCTiming")
    sets = mpd.periods[0].adaptation_sets
    for a in sets:
        tpl = a.segment_templates[0]
        if tpl.availability_time_offset is None or float(tpl.availability_time_offset) <= 0:
            fail("no availabilityTimeOffset: not low-latency")
        if query not in tpl.media:
            fail("media template has no token")
    ok(f"MPD: dynamic, {len(sets)} adaptation set(s), availabilityTimeOffset, UTCTiming")


if __name__ == "__main__":
    main()
