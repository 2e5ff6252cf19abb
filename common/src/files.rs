//! Files that hold secrets (databases with signing keys, key files, the
//! data directory around them) are readable by their owner alone: the data
//! directory 0700, each secret-bearing file 0600. SQLite gives its `-wal`
//! and `-shm` files the mode of the database file, so preparing the
//! database file before SQLite opens it is enough.

use std::io;
use std::path::Path;

/// Creates `dir` (and its parents) if needed and makes it 0700.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    set_mode(dir, 0o700)
}

/// Makes `path` a file only its owner reads: creates it empty with mode
/// 0600 if it is missing, else narrows its mode to 0600.
pub fn private_file(path: &Path) -> io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    drop(opts.open(path)?);
    set_mode(path, 0o600)
}

/// A SQLite database file of `url` (`sqlite://PATH…` or `sqlite:PATH…`)
/// made private before SQLite opens it; other URLs are left alone.
pub fn private_sqlite(url: &str) -> io::Result<()> {
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return Ok(());
    };
    let path = rest.split('?').next().unwrap_or("");
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    let path = Path::new(path);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    private_file(path)?;
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let side = Path::new(&side);
        if side.exists() {
            set_mode(side, 0o600)?;
        }
    }
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn directories_and_files_become_private() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        private_dir(&dir).expect("dir");
        assert_eq!(mode(&dir), 0o700);
        let db = dir.join("x.db");
        std::fs::write(&db, b"kept").expect("write");
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::fs::write(dir.join("x.db-wal"), b"").expect("wal");
        private_sqlite(&format!("sqlite://{}?mode=rwc", db.display())).expect("sqlite");
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&dir.join("x.db-wal")), 0o600);
        assert_eq!(std::fs::read(&db).expect("read"), b"kept", "contents kept");
        let fresh = dir.join("fresh.db");
        private_sqlite(&format!("sqlite:{}", fresh.display())).expect("fresh");
        assert_eq!(mode(&fresh), 0o600);
        private_sqlite("postgres://u@h/db").expect("not a file");
    }
}
