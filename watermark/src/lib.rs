//! Forensic A/B watermarking.
//!
//! Every video segment is made twice at ingest: variant A carries a faint
//! low-frequency pattern in its luma with one sign, variant B with the
//! other. An edge serves A or B for segment `n` from bit `n` of an
//! identifier bound to the playback session, so each session's stream
//! spells its identifier while each variant is still cached once for
//! everyone. A copy captured from one session gives the identifier back,
//! even re-encoded at a fraction of the bit rate and scaled down.
//!
//! The mark: a 32×18 grid of cells, each +1 or −1 from a fixed seed,
//! spread over the picture (so it scales with it) and added to the luma at
//! ±`strength` levels (3 by default: below what a viewer notices on moving
//! pictures, and the coarse cells survive compression, which keeps low
//! frequencies). Detection averages each cell's luma, takes away the mean
//! of its neighbours (the picture's own slow changes), and correlates with
//! the pattern treated the same way: about ±`strength` on a marked frame,
//! near zero on an unmarked one. Frames of one segment are averaged; the
//! sign is the segment's bit.
//!
//! The payload: a sync pair (1, 0), a 16-bit identifier and an 8-bit CRC,
//! 26 segments (52 s at 2-second segments), repeated through the title.
//! A picture correlates with the pattern a little by itself (a bias that
//! differs from title to title), so bits are not read by sign: the
//! segments' correlations fall into two groups, and the threshold lies
//! between them; the sync pair makes sure both groups exist. A copy whose
//! groups are not apart carries no mark; one whose bits fail the sync or
//! the CRC is unreadable.
//!
//! A pure library: planes in, numbers out; the transcoder embeds, the
//! `cascade watermark detect` command decodes a file and detects.

#![warn(unreachable_pub)]

/// Cells across the picture.
pub const GRID_X: usize = 32;
/// Cells down the picture.
pub const GRID_Y: usize = 18;
/// Bits of the session identifier.
pub const ID_BITS: usize = 16;
/// Bits of the payload: the sync pair, the identifier, its CRC-8.
pub const PAYLOAD_BITS: usize = 2 + ID_BITS + 8;
/// The seed of the pattern every title uses.
pub const SEED: u64 = 0x6361_7363_6164_6521;
/// Luma levels the mark adds or takes away by default.
pub const DEFAULT_STRENGTH: u8 = 3;
/// Below this distance between the two groups of segment correlations (in
/// luma levels) a copy is taken to carry no mark: an unmarked copy's
/// segments differ by a few tenths, a marked one's by about twice the
/// strength the codec left (four and more at a rung's bit rate, two and
/// more re-encoded at a quarter of it and scaled down).
pub const MARK_THRESHOLD: f32 = 0.8;

/// Which copy of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// The pattern subtracted (bit 0).
    A,
    /// The pattern added (bit 1).
    B,
}

impl Variant {
    /// `a` or `b`, as in file and URL names.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::A => "a",
            Variant::B => "b",
        }
    }

    fn sign(self) -> f32 {
        match self {
            Variant::A => -1.0,
            Variant::B => 1.0,
        }
    }
}

/// The mark's cells, and the same cells high-passed for detection.
#[derive(Debug, Clone)]
pub struct Pattern {
    cells: [[f32; GRID_X]; GRID_Y],
    filtered: [[f32; GRID_X]; GRID_Y],
    energy: f32,
}

impl Pattern {
    /// The pattern of `seed` (use [`SEED`]).
    pub fn new(seed: u64) -> Pattern {
        // xorshift64*: a fixed, portable sequence (the pattern must be the
        // same on every machine and in every build).
        let mut state = seed | 1;
        let mut next = || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let mut cells = [[0f32; GRID_X]; GRID_Y];
        for row in &mut cells {
            for c in row.iter_mut() {
                *c = if next() >> 63 == 1 { 1.0 } else { -1.0 };
            }
        }
        let filtered = high_pass(&cells);
        let energy = filtered.iter().flatten().map(|v| v * v).sum();
        Pattern {
            cells,
            filtered,
            energy,
        }
    }

    /// Adds the mark for `variant` to a luma plane of `width`×`height`
    /// pixels, rows `stride` bytes apart, at `strength` levels.
    pub fn embed(
        &self,
        luma: &mut [u8],
        width: usize,
        height: usize,
        stride: usize,
        variant: Variant,
        strength: u8,
    ) {
        if width == 0 || height == 0 || stride < width {
            return;
        }
        let delta = variant.sign() * f32::from(strength);
        for y in 0..height {
            let Some(row) = luma.get_mut(y * stride..y * stride + width) else {
                return;
            };
            let cells = &self.cells[y * GRID_Y / height];
            for (x, px) in row.iter_mut().enumerate() {
                let v = f32::from(*px) + delta * cells[x * GRID_X / width];
                *px = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }

    /// How strongly a luma plane carries the mark, in luma levels: about
    /// `+strength` for variant B, `-strength` for A, near 0 for neither.
    pub fn correlate(&self, luma: &[u8], width: usize, height: usize, stride: usize) -> f32 {
        if width < GRID_X || height < GRID_Y || stride < width {
            return 0.0;
        }
        let mut sums = [[0f32; GRID_X]; GRID_Y];
        let mut counts = [[0u32; GRID_X]; GRID_Y];
        for y in 0..height {
            let Some(row) = luma.get(y * stride..y * stride + width) else {
                return 0.0;
            };
            let gy = y * GRID_Y / height;
            for (x, px) in row.iter().enumerate() {
                let gx = x * GRID_X / width;
                sums[gy][gx] += f32::from(*px);
                counts[gy][gx] += 1;
            }
        }
        for (srow, crow) in sums.iter_mut().zip(&counts) {
            for (s, c) in srow.iter_mut().zip(crow) {
                *s /= (*c).max(1) as f32;
            }
        }
        let filtered = high_pass(&sums);
        let dot: f32 = filtered
            .iter()
            .flatten()
            .zip(self.filtered.iter().flatten())
            .map(|(a, b)| a * b)
            .sum();
        dot / self.energy.max(f32::EPSILON)
    }
}

/// Each cell minus the mean of its 3×3 neighbourhood (edges repeated).
fn high_pass(m: &[[f32; GRID_X]; GRID_Y]) -> [[f32; GRID_X]; GRID_Y] {
    let mut out = [[0f32; GRID_X]; GRID_Y];
    for y in 0..GRID_Y {
        for x in 0..GRID_X {
            let mut sum = 0.0;
            for dy in [-1isize, 0, 1] {
                for dx in [-1isize, 0, 1] {
                    let yy = (y as isize + dy).clamp(0, GRID_Y as isize - 1) as usize;
                    let xx = (x as isize + dx).clamp(0, GRID_X as isize - 1) as usize;
                    sum += m[yy][xx];
                }
            }
            out[y][x] = m[y][x] - sum / 9.0;
        }
    }
    out
}

/// The payload bits of an identifier: the sync pair (1, 0), its 16 bits,
/// most significant first, then the CRC-8 of its two bytes.
pub fn payload(id: u16) -> [bool; PAYLOAD_BITS] {
    let crc = crc8(&id.to_be_bytes());
    let word = (0b10 << 24) | (u32::from(id) << 8) | u32::from(crc);
    let mut out = [false; PAYLOAD_BITS];
    for (i, b) in out.iter_mut().enumerate() {
        *b = (word >> (PAYLOAD_BITS - 1 - i)) & 1 == 1;
    }
    out
}

/// The variant segment `n` (from 1) of session `id` is served in.
pub fn variant_for(id: u16, segment: u64) -> Variant {
    let bits = payload(id);
    let i = (segment.saturating_sub(1) % PAYLOAD_BITS as u64) as usize;
    if bits[i] {
        Variant::B
    } else {
        Variant::A
    }
}

/// What a copy says.
#[derive(Debug, Clone, PartialEq)]
pub enum Detection {
    /// The identifier, and how far the weakest bit stood from the
    /// threshold (luma levels; confidence).
    Marked { id: u16, weakest: f32 },
    /// The segments' correlations are not apart: no mark.
    Unmarked { spread: f32 },
    /// Marked, but the bits fail their check (too short, or damaged).
    Unreadable { spread: f32, segments: usize },
}

/// Reads the payload from the mean correlation of each segment, from
/// segment 1 (repeats of the payload are added up).
pub fn detect(segments: &[f32]) -> Detection {
    let n = segments.len();
    let Some((low, high)) = two_groups(segments) else {
        return Detection::Unmarked { spread: 0.0 };
    };
    let spread = high - low;
    if spread < MARK_THRESHOLD {
        return Detection::Unmarked { spread };
    }
    if n < PAYLOAD_BITS {
        return Detection::Unreadable {
            spread,
            segments: n,
        };
    }
    let threshold = (low + high) / 2.0;
    let mut votes = [0f32; PAYLOAD_BITS];
    for (i, c) in segments.iter().enumerate() {
        votes[i % PAYLOAD_BITS] += c - threshold;
    }
    let word = votes
        .iter()
        .fold(0u32, |w, v| (w << 1) | u32::from(*v > 0.0));
    let id = ((word >> 8) & 0xffff) as u16;
    if word >> 24 != 0b10 || crc8(&id.to_be_bytes()) != (word & 0xff) as u8 {
        return Detection::Unreadable {
            spread,
            segments: n,
        };
    }
    let repeats = (n / PAYLOAD_BITS).max(1) as f32;
    let weakest = votes
        .iter()
        .map(|v| v.abs() / repeats)
        .fold(f32::INFINITY, f32::min);
    Detection::Marked { id, weakest }
}

/// The means of the two groups `values` fall into (1-D two-means, from the
/// extremes); `None` for no values.
fn two_groups(values: &[f32]) -> Option<(f32, f32)> {
    let (mut low, mut high) = values.iter().fold(None, |acc: Option<(f32, f32)>, v| {
        Some(acc.map_or((*v, *v), |(l, h)| (l.min(*v), h.max(*v))))
    })?;
    for _ in 0..16 {
        let mid = (low + high) / 2.0;
        let (mut ls, mut ln, mut hs, mut hn) = (0.0, 0usize, 0.0, 0usize);
        for v in values {
            if *v > mid {
                hs += v;
                hn += 1;
            } else {
                ls += v;
                ln += 1;
            }
        }
        if ln == 0 || hn == 0 {
            return Some((mid, mid));
        }
        (low, high) = (ls / ln as f32, hs / hn as f32);
    }
    Some((low, high))
}

/// CRC-8 (polynomial 0x07): a wrong bit in the identifier fails it.
fn crc8(bytes: &[u8]) -> u8 {
    let mut crc = 0u8;
    for b in bytes {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x07
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A picture with edges and gradients, different in every frame.
    fn picture(w: usize, h: usize, t: usize) -> Vec<u8> {
        (0..w * h)
            .map(|i| {
                let (x, y) = (i % w, i / w);
                let v = (x * 255 / w + y * 97 / h + t * 7) % 256;
                if (x / 40 + y / 30 + t).is_multiple_of(3) {
                    (v / 2) as u8
                } else {
                    v as u8
                }
            })
            .collect()
    }

    /// Downscales by averaging (a crude stand-in for a scaler).
    fn shrink(src: &[u8], w: usize, h: usize, nw: usize, nh: usize) -> Vec<u8> {
        (0..nw * nh)
            .map(|i| {
                let (x, y) = (i % nw, i / nw);
                let (x0, x1) = (x * w / nw, ((x + 1) * w / nw).max(x * w / nw + 1));
                let (y0, y1) = (y * h / nh, ((y + 1) * h / nh).max(y * h / nh + 1));
                let mut s = 0u32;
                for yy in y0..y1 {
                    for xx in x0..x1 {
                        s += u32::from(src[yy * w + xx]);
                    }
                }
                (s / ((x1 - x0) * (y1 - y0)) as u32) as u8
            })
            .collect()
    }

    #[test]
    fn marks_read_back_with_their_sign_at_any_size() {
        let p = Pattern::new(SEED);
        let (w, h) = (320, 180);
        for t in 0..5 {
            let clear = picture(w, h, t);
            let plain = p.correlate(&clear, w, h, w);
            for v in [Variant::A, Variant::B] {
                let mut f = clear.clone();
                p.embed(&mut f, w, h, w, v, DEFAULT_STRENGTH);
                let c = p.correlate(&f, w, h, w) - plain;
                assert!((c - v.sign() * 3.0).abs() < 0.6, "{v:?}: {c}");
                let small = shrink(&f, w, h, 213, 120);
                let base = p.correlate(&shrink(&clear, w, h, 213, 120), 213, 120, 213);
                let c = p.correlate(&small, 213, 120, 213) - base;
                assert!(c * v.sign() > 1.5, "scaled {v:?}: {c}");
            }
        }
    }

    #[test]
    fn payloads_round_trip_and_fail_their_check_when_damaged() {
        for id in [0u16, 1, 0x1234, 0xbeef, u16::MAX] {
            let bits = payload(id);
            // Two repeats on a picture that biases every segment by +1.3,
            // one with a weak wrong bit that the other outvotes.
            let mut segs: Vec<f32> = bits.iter().map(|b| if *b { 3.4 } else { -0.8 }).collect();
            segs.extend(bits.iter().map(|b| if *b { 3.0 } else { -0.4 }));
            segs[3] = 1.3 - (segs[3] - 1.3) * 0.5;
            assert!(
                matches!(detect(&segs), Detection::Marked { id: got, weakest } if got == id && weakest > 0.1),
                "{id}: {:?}",
                detect(&segs)
            );
            for n in 1..=PAYLOAD_BITS as u64 * 2 {
                let want = if bits[((n - 1) % PAYLOAD_BITS as u64) as usize] {
                    Variant::B
                } else {
                    Variant::A
                };
                assert_eq!(variant_for(id, n), want);
            }
        }
        let bits = payload(0x1234);
        assert_eq!((bits[0], bits[1]), (true, false), "the sync pair");
        let mut segs: Vec<f32> = bits.iter().map(|b| if *b { 1.0 } else { -1.0 }).collect();
        segs[5] = -segs[5];
        assert!(matches!(detect(&segs), Detection::Unreadable { .. }));
        // An unmarked copy: a bias, and segments a few tenths apart.
        let plain: Vec<f32> = (0..30).map(|i| 1.2 + (i % 3) as f32 * 0.1).collect();
        assert!(matches!(detect(&plain), Detection::Unmarked { .. }));
        assert!(matches!(detect(&[1.0; 10]), Detection::Unmarked { .. }));
        assert!(matches!(
            detect(&[1.0, -1.0, 1.0, 1.0, -1.0, 1.0, 1.0, -1.0, 1.0, 1.0]),
            Detection::Unreadable { segments: 10, .. }
        ));
        assert!(matches!(detect(&[]), Detection::Unmarked { .. }));
    }

    #[test]
    fn odd_planes_do_not_panic() {
        let p = Pattern::new(SEED);
        let mut tiny = vec![0u8; 10];
        p.embed(&mut tiny, 5, 2, 5, Variant::B, 3);
        assert_eq!(p.correlate(&tiny, 5, 2, 5), 0.0);
        let mut short = vec![0u8; 100];
        p.embed(&mut short, 64, 36, 64, Variant::A, 3);
        assert_eq!(p.correlate(&short, 64, 36, 64), 0.0);
        assert_eq!(p.correlate(&[], 0, 0, 0), 0.0);
    }

    #[test]
    fn the_pattern_is_fixed() {
        let a = Pattern::new(SEED);
        let b = Pattern::new(SEED);
        assert_eq!(a.cells, b.cells);
        let ones = a.cells.iter().flatten().filter(|c| **c > 0.0).count();
        assert!((200..376).contains(&ones), "{ones} of 576 cells are +1");
    }
}
