#!/usr/bin/env python3
"""Puts an SCTE-35 cue into an MPEG transport stream, as a broadcast
encoder would: the program map gets a `CUEI` registration descriptor and a
stream of type 0x86, and the splice information section goes out on that
PID just before the first video PES whose PTS is AT seconds into the stream.

Usage: scte35_inject.py IN.ts OUT.ts AT SECTION_HEX

The section (from `table_id` 0xFC to its CRC) is given in hex, as the test
makes it with Cascade's own encoder; this script only carries it.
"""

import struct
import sys

PACKET = 188
CUE_PID = 0x1FF


def crc32(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if crc & 0x80000000 else (crc << 1) & 0xFFFFFFFF
    return crc


def pid_of(p):
    return ((p[1] & 0x1F) << 8) | p[2]


def payload_of(p):
    control = (p[3] >> 4) & 3
    if control == 1:
        return p[4:]
    if control == 3:
        return p[5 + p[4]:]
    return b""


def pts_of(pes):
    if pes[:3] != b"\x00\x00\x01" or not pes[7] & 0x80:
        return None
    b = pes[9:14]
    return ((b[0] >> 1 & 7) << 30) | (b[1] << 22) | ((b[2] >> 1) << 15) | (b[3] << 7) | (b[4] >> 1)


def with_cue_stream(p):
    """The PMT packet with the registration descriptor and the cue stream."""
    payload = payload_of(p)
    head = p[: len(p) - len(payload)]
    pointer = payload[0]
    sec = bytearray(payload[1 + pointer:])
    length = ((sec[1] & 0x0F) << 8) | sec[2]
    sec = sec[: 3 + length - 4]
    info = ((sec[10] & 0x0F) << 8) | sec[11]
    reg = b"\x05\x04CUEI"
    sec = sec[:12] + reg + sec[12:]
    info += len(reg)
    sec[10] = (sec[10] & 0xF0) | (info >> 8)
    sec[11] = info & 0xFF
    sec += bytes([0x86, 0xE0 | (CUE_PID >> 8), CUE_PID & 0xFF, 0xF0, 0x00])
    new_len = len(sec) - 3 + 4
    sec[1] = (sec[1] & 0xF0) | (new_len >> 8)
    sec[2] = new_len & 0xFF
    sec = bytes(sec) + struct.pack(">I", crc32(bytes(sec)))
    out = bytes(head) + bytes([0]) + sec
    if len(out) > PACKET:
        sys.exit("the program map does not fit one packet")
    return out + b"\xff" * (PACKET - len(out))


def cue_packet(section):
    body = bytes([0x47, 0x40 | (CUE_PID >> 8), CUE_PID & 0xFF, 0x10, 0]) + section
    if len(body) > PACKET:
        sys.exit("the cue does not fit one packet")
    return body + b"\xff" * (PACKET - len(body))


def main():
    src, dst, at, section_hex = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    section = bytes.fromhex(section_hex)
    data = open(src, "rb").read()
    packets = [data[i:i + PACKET] for i in range(0, len(data) - PACKET + 1, PACKET)]
    pmt_pid = video_pid = None
    first_pts = None
    placed = False
    out = []
    for p in packets:
        pid = pid_of(p)
        start = p[1] & 0x40
        payload = payload_of(p)
        if pid == 0 and start:
            s = payload[1 + payload[0]:]
            pmt_pid = ((s[10] & 0x1F) << 8) | s[11]
        elif pid == pmt_pid and start:
            s = payload[1 + payload[0]:]
            info = ((s[10] & 0x0F) << 8) | s[11]
            at_es = 12 + info
            if s[at_es] == 0x1B:
                video_pid = ((s[at_es + 1] & 0x1F) << 8) | s[at_es + 2]
            p = with_cue_stream(p)
        elif pid == video_pid and start and not placed:
            pts = pts_of(payload)
            if pts is not None:
                first_pts = pts if first_pts is None else first_pts
                if pts - first_pts >= at * 90000:
                    out.append(cue_packet(section))
                    placed = True
        out.append(p)
    if not placed:
        sys.exit("the stream is shorter than the cue's time")
    open(dst, "wb").write(b"".join(out))
    print(f"cue placed at {at} s on PID {CUE_PID:#x}")


if __name__ == "__main__":
    main()
