//! A reader for the few ISO-BMFF boxes the packager needs.
//!
//! Everything here reads untrusted bytes: every count is checked against the
//! bytes that remain before anything is allocated, and nothing panics.

use crate::Error;

/// The size and type of one box, as read from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoxHeader {
    /// The four-character type, such as `moov`.
    pub kind: [u8; 4],
    /// The length of the header itself: 8, or 16 for a 64-bit size.
    pub header_len: u64,
    /// The whole box, header included. `None` means "to the end of the file".
    pub size: Option<u64>,
}

impl BoxHeader {
    /// Reads a box header from the first 8 or 16 bytes of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes);
        let size32 = r.u32()?;
        let kind = r.fourcc()?;
        let (size, header_len) = match size32 {
            0 => (None, 8),
            1 => {
                let size64 = r.u64()?;
                if size64 < 16 {
                    return Err(Error::Malformed("box size smaller than its header"));
                }
                (Some(size64), 16)
            }
            n if n < 8 => return Err(Error::Malformed("box size smaller than its header")),
            n => (Some(u64::from(n)), 8),
        };
        Ok(BoxHeader {
            kind,
            header_len,
            size,
        })
    }
}

/// A cursor over a byte slice that fails instead of panicking.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if n > self.remaining() {
            return Err(Error::Truncated);
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub(crate) fn skip(&mut self, n: usize) -> Result<(), Error> {
        self.take(n).map(|_| ())
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, Error> {
        Ok(self.u32()? as i32)
    }

    pub(crate) fn u64(&mut self) -> Result<u64, Error> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    pub(crate) fn fourcc(&mut self) -> Result<[u8; 4], Error> {
        let b = self.take(4)?;
        Ok([b[0], b[1], b[2], b[3]])
    }
}

/// One child box inside a parent's payload.
pub(crate) struct Child<'a> {
    pub(crate) kind: [u8; 4],
    pub(crate) body: &'a [u8],
}

/// Iterates over the boxes packed in `payload`, which must hold whole boxes.
pub(crate) fn children(payload: &[u8]) -> impl Iterator<Item = Result<Child<'_>, Error>> {
    let mut rest = payload;
    let mut failed = false;
    std::iter::from_fn(move || {
        if rest.is_empty() || failed {
            return None;
        }
        let item = (|| {
            let header = BoxHeader::parse(rest)?;
            let size = match header.size {
                Some(s) => usize::try_from(s).map_err(|_| Error::Truncated)?,
                None => rest.len(),
            };
            if size > rest.len() {
                return Err(Error::Truncated);
            }
            let hl = header.header_len as usize;
            let child = Child {
                kind: header.kind,
                body: &rest[hl..size],
            };
            rest = &rest[size..];
            Ok(child)
        })();
        if item.is_err() {
            failed = true;
        }
        Some(item)
    })
}

/// The first child of `kind` in `payload`, if any.
pub(crate) fn find<'a>(payload: &'a [u8], kind: &[u8; 4]) -> Result<Option<&'a [u8]>, Error> {
    for child in children(payload) {
        let child = child?;
        if &child.kind == kind {
            return Ok(Some(child.body));
        }
    }
    Ok(None)
}

/// Follows a path of nested boxes, such as `mdia/minf/stbl`.
pub(crate) fn find_path<'a>(payload: &'a [u8], path: &[&[u8; 4]]) -> Result<&'a [u8], Error> {
    let mut cur = payload;
    for kind in path {
        cur = find(cur, kind)?.ok_or(Error::MissingBox(fourcc_str(kind)))?;
    }
    Ok(cur)
}

pub(crate) fn fourcc_str(kind: &[u8; 4]) -> &'static str {
    match kind {
        b"moov" => "moov",
        b"trak" => "trak",
        b"mdia" => "mdia",
        b"mdhd" => "mdhd",
        b"hdlr" => "hdlr",
        b"minf" => "minf",
        b"stbl" => "stbl",
        b"stsd" => "stsd",
        b"avcC" => "avcC",
        b"esds" => "esds",
        b"tkhd" => "tkhd",
        b"moof" => "moof",
        b"traf" => "traf",
        b"tfhd" => "tfhd",
        b"tfdt" => "tfdt",
        b"trun" => "trun",
        b"mvex" => "mvex",
        b"trex" => "trex",
        b"ftyp" => "ftyp",
        b"mfhd" => "mfhd",
        b"mdat" => "mdat",
        b"edts" => "edts",
        b"elst" => "elst",
        b"avc1" => "avc1",
        b"avc3" => "avc3",
        b"hvc1" => "hvc1",
        b"hev1" => "hev1",
        b"hvcC" => "hvcC",
        b"av01" => "av01",
        b"av1C" => "av1C",
        b"mp4a" => "mp4a",
        _ => "box",
    }
}

/// Splits the version and flags word of a full box.
pub(crate) fn full_box(r: &mut Reader<'_>) -> Result<(u8, u32), Error> {
    let word = r.u32()?;
    Ok(((word >> 24) as u8, word & 0x00ff_ffff))
}

/// Writes a box header followed by `body`.
#[cfg(test)]
pub(crate) fn write_box(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&((body.len() + 8) as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_sizes() {
        let b = write_box(b"free", &[1, 2, 3]);
        let h = BoxHeader::parse(&b).unwrap();
        assert_eq!(h.kind, *b"free");
        assert_eq!(h.size, Some(11));
        assert_eq!(h.header_len, 8);

        let mut large = vec![0, 0, 0, 1];
        large.extend_from_slice(b"mdat");
        large.extend_from_slice(&20u64.to_be_bytes());
        let h = BoxHeader::parse(&large).unwrap();
        assert_eq!((h.size, h.header_len), (Some(20), 16));

        assert!(BoxHeader::parse(&[0, 0, 0, 4, b'a', b'b', b'c', b'd']).is_err());
        assert!(BoxHeader::parse(&[0, 0]).is_err());
    }

    #[test]
    fn children_stop_on_truncation() {
        let mut payload = write_box(b"aaaa", &[0; 4]);
        payload.extend_from_slice(&[0, 0, 0, 99, b'b', b'b', b'b', b'b']);
        let items: Vec<_> = children(&payload).collect();
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        assert!(items[1].is_err());
    }
}
