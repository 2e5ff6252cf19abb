//! Mezzanine files on local disk before they are stored: indexing a
//! fragmented MP4 by its box headers, and normalising its composition
//! times, in place.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::Context;
use cascade_packager::{BoxHeader, Indexer, TrackIndex};

/// Indexes a fragmented MP4 on local disk, reading only box headers and the
/// `moov` and `moof` boxes.
pub(crate) fn index_file(path: &Path) -> anyhow::Result<TrackIndex> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut indexer = Indexer::new();
    let mut offset = 0u64;
    while offset < len {
        f.seek(SeekFrom::Start(offset))?;
        let mut head = [0u8; 16];
        let n = usize::try_from((len - offset).min(16))?;
        f.read_exact(&mut head[..n])?;
        let header = BoxHeader::parse(&head[..n])?;
        let size = header.size.unwrap_or(len - offset);
        anyhow::ensure!(size <= len - offset, "box runs past the end of the file");
        let header = BoxHeader {
            size: Some(size),
            ..header
        };
        if Indexer::wants_body(&header.kind) {
            anyhow::ensure!(size <= 64 << 20, "metadata box over 64 MiB");
            let mut body = vec![0u8; usize::try_from(size)?];
            f.seek(SeekFrom::Start(offset))?;
            f.read_exact(&mut body)?;
            indexer.push(offset, &header, &body)?;
        } else {
            indexer.push(offset, &header, &head[..n])?;
        }
        offset += size;
    }
    Ok(indexer.finish()?)
}

/// Reads one byte range of a local file (an init segment: small).
pub(crate) fn read_range(
    path: &Path,
    range: cascade_packager::ByteRange,
) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(range.length <= 64 << 20, "range over 64 MiB");
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(range.offset))?;
    let mut out = vec![0u8; usize::try_from(range.length)?];
    f.read_exact(&mut out)?;
    Ok(out)
}

/// Makes each video fragment of a mezzanine file present its first frame
/// at its decode time (see `cascade_packager::fmp4::shift_composition`),
/// rewriting the `moof` boxes in place; `index` and `cfg` are the file's.
/// Returns the shift, in ticks.
pub(crate) fn normalize_composition(
    path: &Path,
    index: &TrackIndex,
    cfg: &cascade_packager::fmp4::TrackConfig,
) -> anyhow::Result<u32> {
    use std::io::Write;
    let Some(first) = index.fragments.first() else {
        return Ok(0);
    };
    let shift = cascade_packager::fmp4::composition_shift(cfg, &read_range(path, first.range)?)?;
    if shift == 0 {
        return Ok(0);
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    for frag in &index.fragments {
        f.seek(SeekFrom::Start(frag.range.offset))?;
        let mut head = [0u8; 8];
        f.read_exact(&mut head)?;
        let header = BoxHeader::parse(&head)?;
        let size = header.size.context("moof without a size")?;
        anyhow::ensure!(
            size <= 64 << 20 && size <= frag.range.length,
            "moof too large"
        );
        let mut moof = vec![0u8; usize::try_from(size)?];
        f.seek(SeekFrom::Start(frag.range.offset))?;
        f.read_exact(&mut moof)?;
        if cascade_packager::fmp4::shift_composition(&mut moof, shift)? {
            f.seek(SeekFrom::Start(frag.range.offset))?;
            f.write_all(&moof)?;
        }
    }
    f.sync_all()?;
    Ok(shift)
}
