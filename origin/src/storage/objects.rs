//! Media storage through `object_store`: local disk by default, so that S3
//! needs only a different store.

use std::io::{Read, Seek, SeekFrom};

use anyhow::Context;
use std::path::Path;
use std::sync::Arc;

use cascade_packager::{BoxHeader, Indexer, TrackIndex};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::ObjectStore;
use tokio::io::AsyncWriteExt;

/// Opens the local media store, creating its directory.
pub(crate) fn open_local(dir: &Path) -> anyhow::Result<Arc<dyn ObjectStore>> {
    std::fs::create_dir_all(dir)?;
    Ok(Arc::new(LocalFileSystem::new_with_prefix(dir)?))
}

/// The object path of a file of an asset.
pub(crate) fn object_path(asset: &str, file: &str) -> ObjPath {
    ObjPath::from(format!("{asset}/{file}"))
}

/// Copies a local file into the store without holding it in memory.
pub(crate) async fn upload_file(
    store: &Arc<dyn ObjectStore>,
    src: &Path,
    dst: &ObjPath,
) -> anyhow::Result<()> {
    let mut file = tokio::fs::File::open(src).await?;
    let mut writer = object_store::buffered::BufWriter::new(store.clone(), dst.clone());
    tokio::io::copy(&mut file, &mut writer).await?;
    writer.shutdown().await?;
    Ok(())
}

/// Deletes every object of an asset (used when a job fails).
pub(crate) async fn delete_asset(store: &Arc<dyn ObjectStore>, asset: &str) {
    use futures::StreamExt;
    let prefix = ObjPath::from(asset);
    let mut listing = store.list(Some(&prefix));
    let mut paths = Vec::new();
    while let Some(Ok(meta)) = listing.next().await {
        paths.push(meta.location);
    }
    for p in paths {
        if let Err(e) = store.delete(&p).await {
            tracing::warn!(path = %p, error = %e, "could not delete partial output");
        }
    }
}

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
