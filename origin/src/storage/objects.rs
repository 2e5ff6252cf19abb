//! Media storage through `object_store`: local disk by default, so that S3
//! needs only a different store.

use std::path::Path;
use std::sync::Arc;

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
