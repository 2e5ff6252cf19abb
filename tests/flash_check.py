#!/usr/bin/env python3
"""Checks that a live media playlist carries a news flash as an
EXT-X-DATERANGE, read by a parser that is not Cascade's own (PyPI m3u8).

Usage: flash_check.py PLAYLIST_URL FLASH_ID FLASH_TEXT
Prints one line and exits 1 on failure, with the reason.
"""

import sys
import urllib.request

import m3u8


def main():
    url, flash_id, text = sys.argv[1], sys.argv[2], sys.argv[3]
    with urllib.request.urlopen(url, timeout=20) as r:
        body = r.read().decode()
    playlist = m3u8.loads(body)
    want = f"flash-{flash_id}"
    # m3u8 attaches a date range to the segment that follows it.
    ranges = [dr for seg in playlist.segments for dr in seg.dateranges]
    ranges += list(getattr(playlist, "dateranges", None) or [])
    for dr in ranges:
        if dr.id != want:
            continue
        if dr.class_ != "com.cascade.flash":
            sys.exit(f"FAIL: class {dr.class_!r}")
        if not dr.start_date or not dr.end_date:
            sys.exit("FAIL: no START-DATE or END-DATE")
        if dr.x_client_attrs is None:
            sys.exit("FAIL: no X- attributes")
        attrs = {k.lower(): v for k, v in dr.x_client_attrs}
        if attrs.get("x_text", "").strip('"') != text:
            sys.exit(f"FAIL: X-TEXT {attrs.get('x_text')!r}, wanted {text!r}")
        if not any(s.program_date_time for s in playlist.segments):
            sys.exit("FAIL: a playlist with a date range needs a program date-time")
        print(f"ok: {want} at {dr.start_date} until {dr.end_date}, X-TEXT {text!r}")
        return
    sys.exit(f"FAIL: no EXT-X-DATERANGE with ID {want} in:\n{body}")


if __name__ == "__main__":
    main()
