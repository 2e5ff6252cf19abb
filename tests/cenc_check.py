"""An independent decryptor for Cascade's protected media, for the tests.

Its own small ISO BMFF box reader and PyPI's pycryptodome for AES, so
nothing of the packager's code checks the packager's output.

    cenc_check.py fmp4 KEYHEX ENC_INIT ENC_SEG CLEAR_INIT CLEAR_SEG OUT
        Decrypts every sample of ENC_SEG (cbcs or cenc, as its init's
        `schm` says) and checks it equals the clear sample of CLEAR_SEG,
        and that every protected range differs from the clear bytes.
        Writes CLEAR_INIT + the segment with its samples decrypted to OUT.
    cenc_check.py ts KEYHEX SEQUENCE ENC_TS OUT
        HLS AES-128: AES-CBC of the whole segment, IV the media sequence
        number, PKCS#7 padding; checks the TS sync bytes; writes OUT.

Prints one JSON line of what it found; exits non-zero on a mismatch.
"""

import json
import struct
import sys

from Crypto.Cipher import AES
from Crypto.Util import Counter

CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"moof", b"traf",
              b"sinf", b"schi", b"mvex", b"edts"}


def boxes(data, start=0, end=None):
    """Yields (type, payload start, box end) of each box in data[start:end]."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        header = 8
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise ValueError("bad box size")
        yield kind, pos + header, pos + size
        pos += size


def find(data, path, start=0, end=None):
    """The (payload start, end) of the first box along path."""
    for kind, s, e in boxes(data, start, end):
        if kind == path[0]:
            if len(path) == 1:
                return s, e
            return find(data, path[1:], s, e)
    raise ValueError("missing " + path[0].decode())


def init_info(init):
    """The scheme, KID, constant IV, pattern and trex defaults of an init."""
    stsd_s, stsd_e = find(init, [b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd"])
    entry = next(boxes(init, stsd_s + 8, stsd_e))
    kind, es, ee = entry
    fields = 78 if kind == b"encv" else 28
    sinf = find(init, [b"sinf"], es + fields, ee)
    schm = find(init, [b"schm"], *sinf)
    scheme = init[schm[0] + 4:schm[0] + 8].decode()
    tenc_s, _ = find(init, [b"schi", b"tenc"], *sinf)
    version = init[tenc_s]
    pattern = init[tenc_s + 5]
    per_sample_iv = init[tenc_s + 7]
    kid = init[tenc_s + 8:tenc_s + 24]
    const_iv = None
    if per_sample_iv == 0:
        n = init[tenc_s + 24]
        const_iv = init[tenc_s + 25:tenc_s + 25 + n]
    trex_s, _ = find(init, [b"moov", b"mvex", b"trex"])
    dur, size, flags = struct.unpack(">III", init[trex_s + 12:trex_s + 24])
    return {
        "scheme": scheme, "kid": kid.hex(), "iv_size": per_sample_iv, "const_iv": const_iv,
        "crypt": (pattern >> 4) if version == 1 else 0,
        "skip": (pattern & 15) if version == 1 else 0,
        "default_size": size, "video": kind == b"encv",
    }


def samples(seg, default_size):
    """(offset, size) of each sample, from the one traf's runs."""
    moof_s, moof_e = find(seg, [b"moof"])
    moof_start = moof_s - 8
    traf = find(seg, [b"traf"], moof_s, moof_e)
    tfhd_s, _ = find(seg, [b"tfhd"], *traf)
    tf_flags = struct.unpack(">I", seg[tfhd_s:tfhd_s + 4])[0] & 0xFFFFFF
    p = tfhd_s + 8
    if tf_flags & 1:
        p += 8
    if tf_flags & 2:
        p += 4
    if tf_flags & 8:
        p += 4
    if tf_flags & 0x10:
        default_size = struct.unpack(">I", seg[p:p + 4])[0]
    out = []
    for kind, s, e in boxes(seg, *traf):
        if kind != b"trun":
            continue
        flags = struct.unpack(">I", seg[s:s + 4])[0] & 0xFFFFFF
        count = struct.unpack(">I", seg[s + 4:s + 8])[0]
        p = s + 8
        offset = moof_start + struct.unpack(">i", seg[p:p + 4])[0]
        p += 4
        if flags & 4:
            p += 4
        for _ in range(count):
            if flags & 0x100:
                p += 4
            size = default_size
            if flags & 0x200:
                size = struct.unpack(">I", seg[p:p + 4])[0]
                p += 4
            if flags & 0x400:
                p += 4
            if flags & 0x800:
                p += 4
            out.append((offset, size))
            offset += size
    return out


def senc(seg, iv_size, count):
    """Per sample: (IV, [(clear, protected)] or None)."""
    traf = find(seg, [b"moof", b"traf"])
    s, _ = find(seg, [b"senc"], *traf)
    flags = struct.unpack(">I", seg[s:s + 4])[0] & 0xFFFFFF
    n = struct.unpack(">I", seg[s + 4:s + 8])[0]
    if n != count:
        raise ValueError("senc counts %d samples, the runs %d" % (n, count))
    p = s + 8
    out = []
    for _ in range(n):
        iv = seg[p:p + iv_size]
        p += iv_size
        subs = None
        if flags & 2:
            k = struct.unpack(">H", seg[p:p + 2])[0]
            p += 2
            subs = []
            for _ in range(k):
                c, e = struct.unpack(">HI", seg[p:p + 6])
                subs.append((c, e))
                p += 6
        out.append((iv, subs))
    return out


def decrypt_cbc_pattern(key, iv, data, crypt, skip):
    """cbcs: CBC over the pattern's encrypted blocks, chained among them."""
    if crypt == 0 and skip == 0:
        crypt = 1
    out = bytearray(data)
    blocks = len(data) // 16
    picked = [i for i in range(blocks) if i % (crypt + skip) < crypt]
    if not picked:
        return bytes(out)
    enc = b"".join(data[i * 16:(i + 1) * 16] for i in picked)
    dec = AES.new(key, AES.MODE_CBC, iv=iv).decrypt(enc)
    for j, i in enumerate(picked):
        out[i * 16:(i + 1) * 16] = dec[j * 16:(j + 1) * 16]
    return bytes(out)


def fmp4(key, enc_init, enc_seg, clear_init, clear_seg, out_path):
    info = init_info(enc_init)
    enc_samples = samples(enc_seg, info["default_size"])
    clear_trex = find(clear_init, [b"moov", b"mvex", b"trex"])[0]
    clear_default = struct.unpack(">I", clear_init[clear_trex + 16:clear_trex + 20])[0]
    clear_samples = samples(clear_seg, clear_default)
    if len(enc_samples) != len(clear_samples):
        raise SystemExit("sample counts differ")
    aux = senc(enc_seg, info["iv_size"], len(enc_samples))
    out = bytearray(enc_seg)
    protected_total = 0
    ranges_checked = 0
    for (off, size), (coff, csize), (iv, subs) in zip(enc_samples, clear_samples, aux):
        data = enc_seg[off:off + size]
        clear = clear_seg[coff:coff + csize]
        if size != csize:
            raise SystemExit("sample sizes differ")
        if subs is None:
            subs = [(0, size)]
        plain = bytearray(data)
        pos = 0
        ctr = None
        if info["scheme"] == "cenc":
            ctr = AES.new(key, AES.MODE_CTR, counter=Counter.new(64, prefix=bytes(iv), initial_value=0))
        for c, e in subs:
            pos += c
            part = data[pos:pos + e]
            if info["scheme"] == "cenc":
                dec = ctr.decrypt(part)
            else:
                civ = info["const_iv"] if info["const_iv"] else bytes(iv)
                crypt, skip = (info["crypt"], info["skip"]) if info["video"] else (0, 0)
                dec = decrypt_cbc_pattern(key, civ, part, crypt, skip)
            plain[pos:pos + e] = dec
            if e >= 16:
                ranges_checked += 1
                if part == clear[pos:pos + e]:
                    raise SystemExit("a protected range is in the clear at sample offset %d" % off)
            protected_total += e
            pos += e
        if bytes(plain) != clear:
            raise SystemExit("a decrypted sample differs from the clear one (offset %d)" % off)
        out[off:off + size] = plain
    with open(out_path, "wb") as f:
        f.write(clear_init + bytes(out))
    print(json.dumps({"scheme": info["scheme"], "kid": info["kid"], "samples": len(enc_samples),
                      "protected_bytes": protected_total, "ranges": ranges_checked,
                      "crypt": info["crypt"], "skip": info["skip"]}))


def ts(key, seq, enc, out_path):
    iv = seq.to_bytes(16, "big")
    dec = AES.new(key, AES.MODE_CBC, iv=iv).decrypt(enc)
    pad = dec[-1]
    if not 1 <= pad <= 16 or dec[-pad:] != bytes([pad]) * pad:
        raise SystemExit("bad PKCS#7 padding")
    dec = dec[:-pad]
    if len(dec) % 188 or any(dec[i] != 0x47 for i in range(0, len(dec), 188)):
        raise SystemExit("not MPEG-TS after decryption")
    if enc[:len(dec)] == dec:
        raise SystemExit("the segment was not encrypted")
    with open(out_path, "wb") as f:
        f.write(dec)
    print(json.dumps({"packets": len(dec) // 188}))


def main():
    mode = sys.argv[1]
    key = bytes.fromhex(sys.argv[2])
    read = lambda p: open(p, "rb").read()
    if mode == "fmp4":
        fmp4(key, read(sys.argv[3]), read(sys.argv[4]), read(sys.argv[5]), read(sys.argv[6]), sys.argv[7])
    elif mode == "ts":
        ts(key, int(sys.argv[3]), read(sys.argv[4]), sys.argv[5])
    else:
        raise SystemExit("mode: fmp4 or ts")


if __name__ == "__main__":
    main()
