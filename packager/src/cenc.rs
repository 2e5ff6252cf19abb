//! Common Encryption (ISO/IEC 23001-7) of CMAF tracks, just in time.
//!
//! A clear init segment and clear fragments in; the same media with its
//! samples encrypted out, and the boxes that tell a player how:
//!
//! - `cbcs` (AES-CBC with a constant IV): video NAL units in a 1:9 pattern
//!   (one 16-byte block encrypted, nine left clear), audio whole-sample.
//!   One set of segments serves fMP4 HLS (`SAMPLE-AES`) and DASH alike.
//! - `cenc` (AES-CTR, an 8-byte IV per sample): every protected byte.
//!
//! Everything is deterministic: IVs come from the key's own IV, the track
//! and the segment number, so every edge makes the same bytes from the
//! same key and request. This is hand-written because the encryption of
//! samples *is* the product (no crate writes CENC boxes); AES itself comes
//! from the `aes` and `ctr` crates, which use the CPU's AES instructions.

use aes::cipher::{BlockEncrypt, KeyInit, KeyIvInit, StreamCipher};
use aes::Aes128;

use crate::fmp4::{parse_fragment, parse_init};
use crate::index::{first_sample_entry, handler_kind, only_trak};
use crate::mp4::{children, find, full_box, BoxHeader, Reader};
use crate::{Error, TrackKind};

/// AES-CTR with a 64-bit big-endian block counter after an 8-byte IV.
type Ctr = ctr::Ctr64BE<Aes128>;

/// A Common Encryption scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// AES-CBC, pattern 1:9 for video, whole-sample for audio, constant IV.
    Cbcs,
    /// AES-CTR, every protected byte, an 8-byte IV per sample.
    Cenc,
}

impl Scheme {
    /// `cbcs` or `cenc`: the `schm` scheme type and the URL path segment.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Cbcs => "cbcs",
            Scheme::Cenc => "cenc",
        }
    }

    /// The scheme a path segment names.
    pub fn parse(s: &str) -> Option<Scheme> {
        match s {
            "cbcs" => Some(Scheme::Cbcs),
            "cenc" => Some(Scheme::Cenc),
            _ => None,
        }
    }

    fn fourcc(self) -> [u8; 4] {
        match self {
            Scheme::Cbcs => *b"cbcs",
            Scheme::Cenc => *b"cenc",
        }
    }
}

/// A content key: its id (KID), the 128-bit AES key, and the IV the key
/// service made with it (the constant IV under `cbcs`, the base of every
/// sample's IV under `cenc`).
#[derive(Clone, PartialEq, Eq)]
pub struct ContentKey {
    /// The key id, as in `tenc`, `pssh` and license requests.
    pub kid: [u8; 16],
    /// The AES-128 key. Never printed: `Debug` shows the KID alone.
    pub key: [u8; 16],
    /// The key's IV.
    pub iv: [u8; 16],
}

impl std::fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentKey")
            .field("kid", &hex(&self.kid))
            .finish_non_exhaustive()
    }
}

/// How one track is protected.
#[derive(Debug, Clone)]
pub struct TrackProtection {
    /// `cbcs` or `cenc`.
    pub scheme: Scheme,
    /// The track's key.
    pub key: ContentKey,
    /// The track's position in the asset manifest: it keeps the `cenc` IVs
    /// of tracks that share a key apart.
    pub track: u8,
    /// Segments up to this number (from 1) stay clear so playback starts
    /// before a license arrives (the "clear lead"); 0 for none.
    pub clear_segments: u64,
    /// The fragment is a watermarked title's variant B: its `cenc` IVs
    /// differ from variant A's, which holds other bytes under the same key
    /// (a counter used twice would give away the two copies' difference).
    pub variant_b: bool,
}

/// The video pattern of `cbcs`: one block encrypted, nine skipped.
const CBCS_CRYPT_BLOCKS: u8 = 1;
const CBCS_SKIP_BLOCKS: u8 = 9;
/// Bytes of each `cenc` sample IV.
const CENC_IV_SIZE: u8 = 8;
/// Bytes of a video NAL unit kept clear after its length prefix before
/// the protected part begins: the NAL header and, in practice, the slice
/// header, which some decoders and hardware paths parse before decrypting.
const VIDEO_CLEAR_LEAD: usize = 32;
/// Most subsamples in one sample (the `senc` count is 16 bits).
const MAX_SUBSAMPLES: usize = u16::MAX as usize;

/// The protected init segment: the first sample entry becomes `encv` or
/// `enca` with a `sinf` (original format, scheme, `tenc` with the KID), and
/// `pssh` boxes (whole boxes, see [`crate::drm::pssh`]) go at the end of `moov`.
pub fn protect_init(init: &[u8], p: &TrackProtection, pssh: &[Vec<u8>]) -> Result<Vec<u8>, Error> {
    let layout = sample_layout(init)?;
    let mut out = Vec::with_capacity(init.len() + 256);
    let mut seen_moov = false;
    for child in children(init) {
        let child = child?;
        if &child.kind == b"moov" {
            seen_moov = true;
            let mut body = rebuild(child.body, b"trak", |trak| {
                rebuild(trak, b"mdia", |mdia| {
                    rebuild(mdia, b"minf", |minf| {
                        rebuild(minf, b"stbl", |stbl| {
                            rebuild(stbl, b"stsd", |stsd| protect_stsd(stsd, p, layout))
                        })
                    })
                })
            })?;
            for b in pssh {
                body.extend_from_slice(b);
            }
            put_box(&mut out, b"moov", &body);
        } else {
            put_box(&mut out, &child.kind, child.body);
        }
    }
    if !seen_moov {
        return Err(Error::MissingBox("moov"));
    }
    Ok(out)
}

/// A protected fragment: the samples encrypted in place, and `saiz`,
/// `saio` and `senc` added to the `traf` (run data offsets moved by what
/// the `moof` grew). `init` is the track's clear init segment; `segment`
/// the fragment's number (from 1), which keeps `cenc` IVs unique.
pub fn protect_fragment(
    init: &[u8],
    fragment: &[u8],
    p: &TrackProtection,
    segment: u64,
) -> Result<Vec<u8>, Error> {
    let cfg = parse_init(init)?;
    let layout = sample_layout(init)?;
    let samples = parse_fragment(&cfg, fragment)?;
    let clear = segment <= p.clear_segments;
    let use_subsamples = matches!(layout, SampleLayout::Nal { .. });
    // First what each sample's protected ranges are (from the clear bytes),
    // so the new moof is known before any byte is copied; then one copy of
    // the media into the output, encrypted in place there. Ranges and
    // sample information go into flat buffers: a segment has hundreds of
    // samples, and an allocation each would cost more than their AES.
    let mut ranges: Vec<(usize, usize)> = Vec::with_capacity(samples.len() * 2);
    let mut spans: Vec<(usize, usize)> = Vec::with_capacity(samples.len());
    let mut info: Vec<u8> = Vec::with_capacity(samples.len() * 16);
    let mut sizes: Vec<u8> = Vec::with_capacity(samples.len());
    let mut entries: Vec<(u16, u32)> = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        let bytes = fragment
            .get(s.offset..s.offset + s.size)
            .ok_or(Error::Malformed("sample data outside the fragment"))?;
        let first = ranges.len();
        match layout {
            SampleLayout::Nal { length_size, hevc } => {
                nal_subsamples_into(bytes, length_size, hevc, &mut ranges)?
            }
            SampleLayout::Whole => ranges.push((0, bytes.len())),
        }
        spans.push((first, ranges.len()));
        let before = info.len();
        if p.scheme == Scheme::Cenc {
            info.extend_from_slice(&sample_iv(p, segment, i)[..CENC_IV_SIZE as usize]);
        }
        if use_subsamples {
            entries.clear();
            if clear {
                // A clear-lead sample is described as all clear.
                entries.extend(clear_entries(bytes.len()));
            } else {
                entries_into(&ranges[first..], bytes.len(), &mut entries)?;
            }
            info.extend_from_slice(&(entries.len() as u16).to_be_bytes());
            for (c, e) in &entries {
                info.extend_from_slice(&c.to_be_bytes());
                info.extend_from_slice(&e.to_be_bytes());
            }
        }
        sizes.push(
            u8::try_from(info.len() - before)
                .map_err(|_| Error::Unsupported("sample information over 255 bytes"))?,
        );
    }
    let moof_len = moof_length(fragment)?;
    let moof = rebuild_moof(&fragment[..moof_len], &info, &sizes, use_subsamples)?;
    let mut out = Vec::with_capacity(moof.len() + fragment.len() - moof_len);
    out.extend_from_slice(&moof);
    out.extend_from_slice(&fragment[moof_len..]);
    if clear {
        return Ok(out);
    }
    // Sample positions move by what the moof grew.
    let shift = moof.len() as isize - moof_len as isize;
    let mut starts = Vec::with_capacity(samples.len());
    for s in &samples {
        let start = s.offset.checked_add_signed(shift).ok_or(Error::Truncated)?;
        if start.checked_add(s.size).is_none_or(|e| e > out.len()) {
            return Err(Error::Malformed("sample data outside the fragment"));
        }
        starts.push(start);
    }
    match p.scheme {
        Scheme::Cenc => {
            for (i, (start, span)) in starts.iter().zip(&spans).enumerate() {
                // One counter runs through every protected range of a sample.
                let iv = sample_iv(p, segment, i);
                let mut ctr = Ctr::new(&p.key.key.into(), (&iv).into());
                for &(at, n) in &ranges[span.0..span.1] {
                    ctr.apply_keystream(&mut out[start + at..start + at + n]);
                }
            }
        }
        Scheme::Cbcs => {
            let (crypt, skip) = match layout {
                SampleLayout::Nal { .. } => (CBCS_CRYPT_BLOCKS, CBCS_SKIP_BLOCKS),
                SampleLayout::Whole => (1, 0),
            };
            // Every subsample is a chain of its own from the constant IV:
            // independent, so their blocks go through AES side by side.
            let jobs: Vec<(usize, usize)> = starts
                .iter()
                .zip(&spans)
                .flat_map(|(start, span)| {
                    ranges[span.0..span.1]
                        .iter()
                        .map(move |&(at, n)| (start + at, n))
                })
                .collect();
            let cipher = Aes128::new(&p.key.key.into());
            cbc_pattern_batch(&cipher, &p.key.iv, &mut out, &jobs, crypt, skip);
        }
    }
    Ok(out)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// How a track's samples are split into clear and protected bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SampleLayout {
    /// NAL units after a length prefix (H.264, HEVC): subsamples per NAL.
    Nal { length_size: usize, hevc: bool },
    /// Every byte of the sample (audio).
    Whole,
}

fn sample_layout(init: &[u8]) -> Result<SampleLayout, Error> {
    let moov = find(init, b"moov")?.ok_or(Error::MissingBox("moov"))?;
    let trak = only_trak(moov)?;
    let mdia = crate::mp4::find_path(trak, &[b"mdia"])?;
    let kind = handler_kind(mdia)?;
    let entry = first_sample_entry(mdia)?;
    match (kind, &entry.kind) {
        (TrackKind::Video, b"avc1" | b"avc3") => {
            let boxes = entry.body.get(78..).ok_or(Error::Truncated)?;
            let avcc = find(boxes, b"avcC")?.ok_or(Error::MissingBox("avcC"))?;
            let b = *avcc.get(4).ok_or(Error::Truncated)?;
            Ok(SampleLayout::Nal {
                length_size: usize::from(b & 3) + 1,
                hevc: false,
            })
        }
        (TrackKind::Video, b"hvc1" | b"hev1") => {
            let boxes = entry.body.get(78..).ok_or(Error::Truncated)?;
            let hvcc = find(boxes, b"hvcC")?.ok_or(Error::MissingBox("hvcC"))?;
            let b = *hvcc.get(21).ok_or(Error::Truncated)?;
            Ok(SampleLayout::Nal {
                length_size: usize::from(b & 3) + 1,
                hevc: true,
            })
        }
        (TrackKind::Audio, b"mp4a" | b"ac-3" | b"ec-3" | b"Opus") => Ok(SampleLayout::Whole),
        (TrackKind::Video, _) => Err(Error::Unsupported("encryption of this video codec")),
        _ => Err(Error::Unsupported("encryption of this track")),
    }
}

/// The protected byte ranges of one video sample, relative to it: for each
/// video-coding NAL unit, what follows its length prefix and a clear lead,
/// cut to whole 16-byte blocks (so a range is a multiple of 16 and the
/// clear part takes the rest). Other NAL units stay clear.
#[cfg(test)]
fn nal_subsamples(
    sample: &[u8],
    length_size: usize,
    hevc: bool,
) -> Result<Vec<(usize, usize)>, Error> {
    let mut out = Vec::new();
    nal_subsamples_into(sample, length_size, hevc, &mut out)?;
    Ok(out)
}

/// [`nal_subsamples`] appended to `out`.
fn nal_subsamples_into(
    sample: &[u8],
    length_size: usize,
    hevc: bool,
    out: &mut Vec<(usize, usize)>,
) -> Result<(), Error> {
    let first = out.len();
    let mut pos = 0usize;
    while pos < sample.len() {
        let prefix = sample
            .get(pos..pos + length_size)
            .ok_or(Error::Malformed("NAL length prefix past the sample"))?;
        let len = prefix
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        let start = pos + length_size;
        let end = start
            .checked_add(len)
            .filter(|e| *e <= sample.len())
            .ok_or(Error::Malformed("NAL unit past the sample"))?;
        if len > 0 {
            let header = sample[start];
            let vcl = if hevc {
                (header >> 1) & 0x3f < 32
            } else {
                matches!(header & 0x1f, 1..=5)
            };
            let body = len.saturating_sub(VIDEO_CLEAR_LEAD);
            let protected = body - body % 16;
            if vcl && protected > 0 {
                if out.len() - first >= MAX_SUBSAMPLES {
                    return Err(Error::Unsupported("too many NAL units in one sample"));
                }
                out.push((end - protected, protected));
            }
        }
        pos = end;
    }
    Ok(())
}

/// `senc` subsample entries (clear bytes, protected bytes) covering a
/// sample of `len` bytes whose protected ranges are `ranges`. A clear run
/// longer than 16 bits is split into entries with nothing protected.
#[cfg(test)]
fn subsample_entries(ranges: &[(usize, usize)], len: usize) -> Result<Vec<(u16, u32)>, Error> {
    let mut out = Vec::with_capacity(ranges.len() + 1);
    entries_into(ranges, len, &mut out)?;
    Ok(out)
}

/// [`subsample_entries`] appended to `out`.
fn entries_into(
    ranges: &[(usize, usize)],
    len: usize,
    out: &mut Vec<(u16, u32)>,
) -> Result<(), Error> {
    let mut pos = 0usize;
    for &(start, n) in ranges {
        let mut clear = start - pos;
        while clear > usize::from(u16::MAX) {
            out.push((u16::MAX, 0));
            clear -= usize::from(u16::MAX);
        }
        let n = u32::try_from(n).map_err(|_| Error::Unsupported("a NAL unit over 4 GiB"))?;
        out.push((clear as u16, n));
        pos = start + n as usize;
    }
    out.extend(clear_entries(len - pos));
    if out.len() > MAX_SUBSAMPLES {
        return Err(Error::Unsupported("too many subsamples in one sample"));
    }
    Ok(())
}

/// Entries for `clear` bytes with nothing protected (16 bits each).
fn clear_entries(mut clear: usize) -> impl Iterator<Item = (u16, u32)> {
    std::iter::from_fn(move || {
        (clear > 0).then(|| {
            let n = clear.min(usize::from(u16::MAX));
            clear -= n;
            (n as u16, 0)
        })
    })
}

/// The IV of sample `index` of segment `segment`: the key's constant IV
/// under `cbcs`; under `cenc`, the key's IV with the track, the watermark
/// variant, the segment and sample folded into its first 8 bytes (unique for every sample a key
/// encrypts, as CTR needs), the counter half zero.
fn sample_iv(p: &TrackProtection, segment: u64, index: usize) -> [u8; 16] {
    match p.scheme {
        Scheme::Cbcs => p.key.iv,
        Scheme::Cenc => {
            let mut base = [0u8; 8];
            base.copy_from_slice(&p.key.iv[..8]);
            let unique = (u64::from(p.track) << 56)
                | (u64::from(p.variant_b) << 55)
                | ((segment & 0x7f_ffff_ffff) << 16)
                | (index as u64 & 0xffff);
            let mut iv = [0u8; 16];
            iv[..8].copy_from_slice(&(u64::from_be_bytes(base) ^ unique).to_be_bytes());
            iv
        }
    }
}

/// AES-CBC in the `crypt`:`skip` pattern over each `(start, len)` range of
/// `buf`, each range a chain of its own from `iv` (`cbcs` restarts the
/// chain in every subsample); within a range the chain links the encrypted
/// blocks only, and a partial block at the end stays clear. CBC is serial
/// within a chain, so up to eight chains advance together: one
/// `encrypt_blocks` call takes a block of each, which the CPU's AES units
/// pipeline.
fn cbc_pattern_batch(
    cipher: &Aes128,
    iv: &[u8; 16],
    buf: &mut [u8],
    jobs: &[(usize, usize)],
    crypt: u8,
    skip: u8,
) {
    // The whole loop runs inside one call with the CPU's AES backend
    // (AES-NI where there is one), so each step of eight blocks is one
    // direct call rather than a feature check and a dispatch.
    cipher.encrypt_with_backend(PatternJob {
        iv,
        buf,
        jobs,
        crypt,
        skip,
    });
}

/// [`cbc_pattern_batch`]'s work, run with the cipher's backend.
struct PatternJob<'a> {
    iv: &'a [u8; 16],
    buf: &'a mut [u8],
    jobs: &'a [(usize, usize)],
    crypt: u8,
    skip: u8,
}

impl aes::cipher::BlockSizeUser for PatternJob<'_> {
    type BlockSize = aes::cipher::consts::U16;
}

impl aes::cipher::BlockClosure for PatternJob<'_> {
    fn call<B: aes::cipher::BlockBackend<BlockSize = Self::BlockSize>>(self, backend: &mut B) {
        use aes::cipher::typenum::Unsigned;
        let PatternJob {
            iv,
            buf,
            jobs,
            crypt,
            skip,
        } = self;
        let crypt = usize::from(crypt.max(1));
        // The step from a run's last encrypted block to the next run's first.
        let jump = 16 * (1 + usize::from(skip));
        // Longest chains first: the tail, where fewer chains than lanes
        // are left, is then made of short ones.
        let mut order: Vec<(usize, usize)> =
            jobs.iter().copied().filter(|(_, n)| *n >= 16).collect();
        order.sort_unstable_by_key(|j| std::cmp::Reverse(j.1));
        let mut queue = order.iter();
        let iv = u128::from_ne_bytes(*iv);
        // The lanes, one chain each, in fixed slots: where the next block
        // starts, where the chain's last whole block ends (0: idle), the
        // blocks left in the crypt run, and the chain value. Every step
        // takes a block of every slot through AES at once (an idle slot's
        // is thrown away): the backend pipelines its width of blocks.
        let width = B::ParBlocksSize::USIZE;
        let mut at = vec![0usize; width];
        let mut end = vec![0usize; width];
        let mut run_left = vec![0usize; width];
        let mut chain = vec![0u128; width];
        let mut active = 0usize;
        let mut par = aes::cipher::ParBlocks::<B>::default();
        let mut fill = |slot: usize,
                        at: &mut [usize],
                        end: &mut [usize],
                        run_left: &mut [usize],
                        chain: &mut [u128]|
         -> bool {
            match queue.next() {
                Some(&(a, n)) => {
                    at[slot] = a;
                    end[slot] = a + n / 16 * 16;
                    run_left[slot] = crypt;
                    chain[slot] = iv;
                    true
                }
                None => {
                    end[slot] = 0;
                    false
                }
            }
        };
        for slot in 0..width {
            if fill(slot, &mut at, &mut end, &mut run_left, &mut chain) {
                active += 1;
            }
        }
        while active > 0 {
            for (slot, block) in par.iter_mut().enumerate() {
                if end[slot] == 0 {
                    continue;
                }
                let mut plain = [0u8; 16];
                plain.copy_from_slice(&buf[at[slot]..at[slot] + 16]);
                block.copy_from_slice(&(u128::from_ne_bytes(plain) ^ chain[slot]).to_ne_bytes());
            }
            backend.proc_par_blocks_inplace(&mut par);
            for (slot, block) in par.iter().enumerate() {
                if end[slot] == 0 {
                    continue;
                }
                let here = at[slot];
                buf[here..here + 16].copy_from_slice(block);
                let mut c = [0u8; 16];
                c.copy_from_slice(block);
                chain[slot] = u128::from_ne_bytes(c);
                // The next block the pattern encrypts: the next one within
                // the crypt run, else the first of the next period's run.
                if run_left[slot] > 1 {
                    run_left[slot] -= 1;
                    at[slot] = here + 16;
                } else {
                    run_left[slot] = crypt;
                    at[slot] = here + jump;
                }
                if at[slot] + 16 > end[slot]
                    && !fill(slot, &mut at, &mut end, &mut run_left, &mut chain)
                {
                    active -= 1;
                }
            }
        }
    }
}

/// The `stsd` body with its first entry protected.
fn protect_stsd(stsd: &[u8], p: &TrackProtection, layout: SampleLayout) -> Result<Vec<u8>, Error> {
    let head = stsd.get(..8).ok_or(Error::Truncated)?;
    let mut out = head.to_vec();
    for (i, entry) in children(&stsd[8..]).enumerate() {
        let entry = entry?;
        if i > 0 {
            put_box(&mut out, &entry.kind, entry.body);
            continue;
        }
        let (fields, new_kind) = match layout {
            SampleLayout::Nal { .. } => (78, *b"encv"),
            SampleLayout::Whole => (28, *b"enca"),
        };
        let fixed = entry.body.get(..fields).ok_or(Error::Truncated)?;
        let mut body = fixed.to_vec();
        // A `sinf` already there would mean the mezzanine is encrypted.
        for child in children(&entry.body[fields..]) {
            let child = child?;
            if &child.kind == b"sinf" {
                return Err(Error::Unsupported("the mezzanine is already encrypted"));
            }
            put_box(&mut body, &child.kind, child.body);
        }
        body.extend_from_slice(&sinf(entry.kind, p, layout));
        put_box(&mut out, &new_kind, &body);
    }
    Ok(out)
}

/// `sinf`: the original format, the scheme, and the track's `tenc`.
fn sinf(original: [u8; 4], p: &TrackProtection, layout: SampleLayout) -> Vec<u8> {
    let mut frma = Vec::new();
    put_box(&mut frma, b"frma", &original);
    let mut schm_body = vec![0, 0, 0, 0];
    schm_body.extend_from_slice(&p.scheme.fourcc());
    schm_body.extend_from_slice(&0x0001_0000u32.to_be_bytes());
    let mut tenc = Vec::new();
    match p.scheme {
        Scheme::Cbcs => {
            // Version 1 carries the pattern; audio's 0:0 means whole blocks.
            tenc.extend_from_slice(&[1, 0, 0, 0, 0]);
            tenc.push(match layout {
                SampleLayout::Nal { .. } => (CBCS_CRYPT_BLOCKS << 4) | CBCS_SKIP_BLOCKS,
                SampleLayout::Whole => 0,
            });
            tenc.extend_from_slice(&[1, 0]);
            tenc.extend_from_slice(&p.key.kid);
            tenc.push(16);
            tenc.extend_from_slice(&p.key.iv);
        }
        Scheme::Cenc => {
            tenc.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1, CENC_IV_SIZE]);
            tenc.extend_from_slice(&p.key.kid);
        }
    }
    let mut schi = Vec::new();
    put_box(&mut schi, b"tenc", &tenc);
    let mut body = frma;
    put_box(&mut body, b"schm", &schm_body);
    put_box(&mut body, b"schi", &schi);
    let mut out = Vec::new();
    put_box(&mut out, b"sinf", &body);
    out
}

/// Copies the boxes of `payload`, rewriting the first child of `kind`
/// with `f` (its header rewritten to the new length).
fn rebuild(
    payload: &[u8],
    kind: &[u8; 4],
    f: impl FnOnce(&[u8]) -> Result<Vec<u8>, Error>,
) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(payload.len() + 128);
    let mut f = Some(f);
    for child in children(payload) {
        let child = child?;
        if &child.kind == kind {
            if let Some(f) = f.take() {
                let body = f(child.body)?;
                put_box(&mut out, kind, &body);
                continue;
            }
        }
        put_box(&mut out, &child.kind, child.body);
    }
    if f.is_some() {
        return Err(Error::MissingBox(crate::mp4::fourcc_str(kind)));
    }
    Ok(out)
}

/// The whole length of the `moof` at the start of `fragment`.
fn moof_length(fragment: &[u8]) -> Result<usize, Error> {
    let h = BoxHeader::parse(fragment)?;
    if &h.kind != b"moof" {
        return Err(Error::Malformed("fragment does not start with moof"));
    }
    let len = h
        .size
        .and_then(|s| usize::try_from(s).ok())
        .ok_or(Error::Malformed("moof without a size"))?;
    if len > fragment.len() {
        return Err(Error::Truncated);
    }
    Ok(len)
}

/// The `moof` with `saiz`, `saio` and `senc` (one entry per sample: the
/// concatenated `info`, each sample's size in `sizes`) at the end of its `traf`, and every run's data offset moved by
/// the growth.
fn rebuild_moof(
    moof: &[u8],
    info: &[u8],
    sizes: &[u8],
    subsamples: bool,
) -> Result<Vec<u8>, Error> {
    let h = BoxHeader::parse(moof)?;
    let payload = &moof[h.header_len as usize..];
    let sample_count = u32::try_from(sizes.len()).map_err(|_| Error::Truncated)?;
    // senc: version 0, flags 2 when subsamples are listed.
    let mut senc = Vec::with_capacity(info.len() + 8);
    senc.extend_from_slice(&(if subsamples { 2u32 } else { 0 }).to_be_bytes());
    senc.extend_from_slice(&sample_count.to_be_bytes());
    senc.extend_from_slice(info);
    let mut saiz = vec![0, 0, 0, 0];
    let same = sizes.windows(2).all(|w| w[0] == w[1]);
    let default_size = match sizes.first() {
        Some(n) if same => *n,
        _ => 0,
    };
    saiz.push(default_size);
    saiz.extend_from_slice(&sample_count.to_be_bytes());
    if default_size == 0 {
        saiz.extend_from_slice(sizes);
    }
    // Sizes are known before the offset is: saio is 20 bytes.
    let added = 8 + saiz.len() + 20 + 8 + senc.len();
    let mut out = Vec::with_capacity(payload.len() + added + 8);
    out.extend_from_slice(&[0; 8]);
    let mut trun_offsets = Vec::new();
    let mut saio_at = None;
    let mut senc_data_at = 0usize;
    let mut trafs = 0;
    for child in children(payload) {
        let child = child?;
        if &child.kind != b"traf" {
            put_box(&mut out, &child.kind, child.body);
            continue;
        }
        trafs += 1;
        if trafs > 1 {
            return Err(Error::Unsupported("more than one traf in a moof"));
        }
        let traf_at = out.len();
        out.extend_from_slice(&[0; 8]);
        for c in children(child.body) {
            let c = c?;
            match &c.kind {
                b"senc" | b"saiz" | b"saio" => {
                    return Err(Error::Unsupported("the mezzanine is already encrypted"))
                }
                b"trun" => {
                    let mut r = Reader::new(c.body);
                    let (_, flags) = full_box(&mut r)?;
                    if flags & 1 == 0 {
                        return Err(Error::Unsupported("a run without a data offset"));
                    }
                    trun_offsets.push(out.len() + 8 + 8);
                }
                _ => {}
            }
            put_box(&mut out, &c.kind, c.body);
        }
        put_box(&mut out, b"saiz", &saiz);
        saio_at = Some(out.len() + 16);
        let mut saio = vec![0, 0, 0, 0];
        saio.extend_from_slice(&1u32.to_be_bytes());
        saio.extend_from_slice(&0u32.to_be_bytes());
        put_box(&mut out, b"saio", &saio);
        senc_data_at = out.len() + 16;
        put_box(&mut out, b"senc", &senc);
        let traf_len = u32::try_from(out.len() - traf_at).map_err(|_| Error::Truncated)?;
        out[traf_at..traf_at + 4].copy_from_slice(&traf_len.to_be_bytes());
        out[traf_at + 4..traf_at + 8].copy_from_slice(b"traf");
    }
    let saio_at = saio_at.ok_or(Error::MissingBox("traf"))?;
    let total = u32::try_from(out.len()).map_err(|_| Error::Truncated)?;
    out[..4].copy_from_slice(&total.to_be_bytes());
    out[4..8].copy_from_slice(b"moof");
    // Offsets are from the start of the moof (default-base-is-moof, or the
    // first traf's implicit base).
    out[saio_at..saio_at + 4].copy_from_slice(&(senc_data_at as u32).to_be_bytes());
    let growth = i64::from(total) - moof.len() as i64;
    for at in trun_offsets {
        let old = i32::from_be_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]);
        let new = i32::try_from(i64::from(old) + growth)
            .map_err(|_| Error::Malformed("run data offset out of range"))?;
        out[at..at + 4].copy_from_slice(&new.to_be_bytes());
    }
    Ok(out)
}

fn put_box(out: &mut Vec<u8>, kind: &[u8; 4], body: &[u8]) {
    out.extend_from_slice(&((body.len() + 8) as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmaf::{fragment, init_segment, InitTrack, OutSample};
    use crate::fmp4::parse_fragment;
    use crate::mp4::find_path;

    const AVCC: [u8; 17] = [
        1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 4, 0x67, 0x64, 0, 0x1f, 1, 0, 2, 0x68, 0xee,
    ];

    fn key() -> ContentKey {
        ContentKey {
            kid: [7; 16],
            key: [0x2b; 16],
            iv: [0x10; 16],
        }
    }

    fn protection(scheme: Scheme, clear_segments: u64) -> TrackProtection {
        TrackProtection {
            scheme,
            key: key(),
            track: 0,
            clear_segments,
            variant_b: false,
        }
    }

    fn nal(kind: u8, len: usize) -> Vec<u8> {
        let mut out = (len as u32).to_be_bytes().to_vec();
        out.push(kind);
        out.extend((1..len).map(|i| (i * 31 % 251) as u8));
        out
    }

    /// An SPS (clear), a 200-byte IDR slice (protected) and a 20-byte
    /// slice (too short: clear).
    fn video() -> (Vec<u8>, Vec<u8>) {
        let init = init_segment(&InitTrack::Avc {
            avcc: AVCC.to_vec(),
            width: 320,
            height: 180,
        });
        let mut sample = nal(0x67, 9);
        sample.extend(nal(0x65, 200));
        sample.extend(nal(0x41, 20));
        let s = OutSample {
            duration: 3000,
            cts_offset: 0,
            keyframe: true,
            data: &sample,
        };
        let frag = fragment(1, 0, &[s, s, s]).unwrap();
        (init, frag)
    }

    #[test]
    fn init_gets_a_protection_scheme_and_the_kid() {
        let (init, _) = video();
        for scheme in [Scheme::Cbcs, Scheme::Cenc] {
            let out = protect_init(
                &init,
                &protection(scheme, 0),
                &[vec![0, 0, 0, 8, b'f', b'r', b'e', b'e']],
            )
            .unwrap();
            let moov = find(&out, b"moov").unwrap().unwrap();
            let stsd = find_path(moov, &[b"trak", b"mdia", b"minf", b"stbl", b"stsd"]).unwrap();
            let entry = children(&stsd[8..]).next().unwrap().unwrap();
            assert_eq!(&entry.kind, b"encv");
            let sinf = find(&entry.body[78..], b"sinf").unwrap().unwrap();
            assert_eq!(find(sinf, b"frma").unwrap().unwrap(), b"avc1");
            let schm = find(sinf, b"schm").unwrap().unwrap();
            assert_eq!(&schm[4..8], scheme.as_str().as_bytes());
            let tenc = find_path(sinf, &[b"schi", b"tenc"]).unwrap();
            assert_eq!(&tenc[8..24], &[7; 16]);
            match scheme {
                Scheme::Cbcs => assert_eq!((tenc[0], tenc[5], tenc[7], tenc[24]), (1, 0x19, 0, 16)),
                Scheme::Cenc => assert_eq!((tenc[0], tenc[7]), (0, 8)),
            }
            assert!(
                find(moov, b"free").unwrap().is_some(),
                "pssh boxes go into moov"
            );
            // Still a track the packager reads.
            assert_eq!(parse_init(&out).unwrap().timescale, 90_000);
        }
    }

    #[test]
    fn samples_are_encrypted_where_senc_says_and_nowhere_else() {
        let (init, frag) = video();
        let clear = parse_fragment(&parse_init(&init).unwrap(), &frag).unwrap();
        for scheme in [Scheme::Cbcs, Scheme::Cenc] {
            let p = protection(scheme, 0);
            let out = protect_fragment(&init, &frag, &p, 2).unwrap();
            assert_eq!(
                out,
                protect_fragment(&init, &frag, &p, 2).unwrap(),
                "deterministic"
            );
            let enc = parse_fragment(&parse_init(&init).unwrap(), &out).unwrap();
            assert_eq!(enc.len(), 3);
            for (c, e) in clear.iter().zip(&enc) {
                assert_eq!(c.size, e.size);
                let (cb, eb) = (
                    &frag[c.offset..c.offset + c.size],
                    &out[e.offset..e.offset + e.size],
                );
                // SPS (13 bytes), the IDR's prefix, header and clear lead
                // (4 + 32 + 8: its 199-byte body leaves 160 protected).
                let clear_len = 13 + 4 + 200 - 160;
                assert_eq!(cb[..clear_len], eb[..clear_len]);
                assert_ne!(cb[clear_len..clear_len + 16], eb[clear_len..clear_len + 16]);
                let prot_end = clear_len + 160;
                assert_eq!(
                    cb[prot_end..],
                    eb[prot_end..],
                    "the short slice stays clear"
                );
                if scheme == Scheme::Cbcs {
                    // Pattern 1:9: the second block of the range is clear.
                    assert_eq!(
                        cb[clear_len + 16..clear_len + 32],
                        eb[clear_len + 16..clear_len + 32]
                    );
                }
            }
            let traf = find_path(find(&out, b"moof").unwrap().unwrap(), &[b"traf"]).unwrap();
            let senc = find(traf, b"senc").unwrap().unwrap();
            assert_eq!(u32::from_be_bytes([senc[4], senc[5], senc[6], senc[7]]), 3);
            let iv = if scheme == Scheme::Cenc { 8 } else { 0 };
            // One subsample: (57 clear, 160 protected), then the rest clear.
            let first = &senc[8 + iv..];
            assert_eq!(u16::from_be_bytes([first[0], first[1]]), 2);
            assert_eq!(u16::from_be_bytes([first[2], first[3]]), 57);
            assert_eq!(
                u32::from_be_bytes([first[4], first[5], first[6], first[7]]),
                160
            );
            assert_eq!(u16::from_be_bytes([first[8], first[9]]), 24);
            let saio = find(traf, b"saio").unwrap().unwrap();
            let at = u32::from_be_bytes([saio[8], saio[9], saio[10], saio[11]]) as usize;
            assert_eq!(
                out[at..at + 10],
                senc[8..18],
                "saio points at senc's first entry"
            );
        }
    }

    /// The pattern encryption, one chain at a time with the plain
    /// one-block API: what the batched lanes must equal.
    fn cbc_pattern_reference(
        key: &[u8; 16],
        iv: &[u8; 16],
        buf: &mut [u8],
        jobs: &[(usize, usize)],
        crypt: usize,
        skip: usize,
    ) {
        let cipher = Aes128::new(key.into());
        for &(at, n) in jobs {
            let mut chain = *iv;
            for i in 0..n / 16 {
                if i % (crypt + skip) >= crypt {
                    continue;
                }
                let block = &mut buf[at + 16 * i..at + 16 * i + 16];
                let mut b = aes::Block::default();
                for ((o, p), c) in b.iter_mut().zip(block.iter()).zip(&chain) {
                    *o = p ^ c;
                }
                cipher.encrypt_block(&mut b);
                block.copy_from_slice(&b);
                chain.copy_from_slice(&b);
            }
        }
    }

    #[test]
    fn batched_pattern_encryption_equals_one_chain_at_a_time() {
        let data: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 251) as u8).collect();
        // Chains of many lengths (some shorter than a block, one long),
        // more of them than lanes.
        let mut jobs = Vec::new();
        let mut at = 0;
        for n in [
            5000, 16, 15, 32, 160, 176, 1600, 48, 3000, 17, 800, 64, 256, 9000, 16, 400,
        ] {
            jobs.push((at, n));
            at += n + 3;
        }
        for (crypt, skip) in [(1u8, 9u8), (1, 0), (2, 3)] {
            let mut fast = data.clone();
            let mut slow = data.clone();
            let cipher = Aes128::new(&[9u8; 16].into());
            cbc_pattern_batch(&cipher, &[4; 16], &mut fast, &jobs, crypt, skip);
            cbc_pattern_reference(
                &[9; 16],
                &[4; 16],
                &mut slow,
                &jobs,
                crypt.into(),
                skip.into(),
            );
            assert_eq!(fast, slow, "{crypt}:{skip}");
            assert_ne!(fast, data);
        }
    }

    #[test]
    fn cenc_ivs_differ_per_sample_segment_and_track() {
        let p = protection(Scheme::Cenc, 0);
        let mut q = p.clone();
        q.track = 1;
        // A watermarked title's variant B holds other bytes under the same key.
        let mut b = p.clone();
        b.variant_b = true;
        let ivs = [
            sample_iv(&p, 1, 0),
            sample_iv(&p, 1, 1),
            sample_iv(&p, 2, 0),
            sample_iv(&q, 1, 0),
            sample_iv(&b, 1, 0),
        ];
        for i in 0..ivs.len() {
            assert_eq!(ivs[i][8..], [0; 8], "the counter half starts at zero");
            for j in i + 1..ivs.len() {
                assert_ne!(ivs[i], ivs[j]);
            }
        }
    }

    #[test]
    fn clear_lead_segments_are_marked_but_not_encrypted() {
        let (init, frag) = video();
        let out = protect_fragment(&init, &frag, &protection(Scheme::Cbcs, 1), 1).unwrap();
        let cfg = parse_init(&init).unwrap();
        let (c, e) = (
            parse_fragment(&cfg, &frag).unwrap(),
            parse_fragment(&cfg, &out).unwrap(),
        );
        for (c, e) in c.iter().zip(&e) {
            assert_eq!(
                frag[c.offset..c.offset + c.size],
                out[e.offset..e.offset + e.size]
            );
        }
        let traf = find_path(find(&out, b"moof").unwrap().unwrap(), &[b"traf"]).unwrap();
        assert!(find(traf, b"senc").unwrap().is_some());
    }

    #[test]
    fn long_clear_runs_split_and_bad_nal_lengths_are_refused() {
        let entries = subsample_entries(&[(70_000, 32)], 70_100).unwrap();
        assert_eq!(entries, vec![(65_535, 0), (4_465, 32), (68, 0)]);
        // A NAL unit whose length runs past the sample.
        assert!(nal_subsamples(&[0, 0, 0, 99, 0x65, 1, 2], 4, false).is_err());
        assert!(nal_subsamples(&[0, 0], 4, false).is_err());
        // Garbage in either place fails cleanly.
        let (init, frag) = video();
        let p = protection(Scheme::Cenc, 0);
        assert!(protect_fragment(&init, &frag[..frag.len() / 2], &p, 1).is_err());
        assert!(protect_init(&init[..20], &p, &[]).is_err());
        assert!(protect_fragment(&frag, &init, &p, 1).is_err());
    }

    #[test]
    fn aes128_segments_decrypt_back() {
        use aes::cipher::BlockDecrypt;
        let clear: Vec<u8> = (0..188 * 3).map(|i| i as u8).collect();
        let enc = crate::protect::aes128_segment(&[9; 16], 5, &clear);
        assert_eq!(enc.len(), clear.len() + 16 - clear.len() % 16);
        let cipher = Aes128::new(&[9u8; 16].into());
        let mut prev = [0u8; 16];
        prev[15] = 5;
        let mut out = Vec::new();
        for block in enc.chunks(16) {
            let mut b = aes::Block::clone_from_slice(block);
            cipher.decrypt_block(&mut b);
            out.extend(b.iter().zip(prev.iter()).map(|(x, y)| x ^ y));
            prev.copy_from_slice(block);
        }
        let pad = *out.last().unwrap() as usize;
        out.truncate(out.len() - pad);
        assert_eq!(out, clear);
    }
}
