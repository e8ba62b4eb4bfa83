//! Files Axle keeps on disk — the data directory, its databases and what holds keys,
//! certificates or credentials — are never readable by other users of the machine: directories
//! are made 0700 and files 0600 when they are created (not afterwards, which would leave a
//! moment to read them), and tightened when an older installation left them open.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};

/// Creates `dir` (and its parents) as 0700, and makes it 0700 if it exists.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(0o700);
    builder.create(dir)?;
    restrict(dir, 0o700)
}

/// Opens `path` for writing, created 0600 (an existing file is truncated and made 0600).
pub fn create_private(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let file = options.open(path)?;
    restrict(path, 0o600)?;
    Ok(file)
}

/// Replaces `path` with `bytes` at once (written beside it, then renamed), private throughout.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = Path::new(&partial);
    let mut file = create_private(partial)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(partial, path)
}

/// The secret kept in `path`: read when it is there, else `make`d, written (private) and
/// answered. Answers whether it was made now, so the caller may say so once.
pub fn kept_secret(path: &Path, make: impl FnOnce() -> String) -> io::Result<(String, bool)> {
    match std::fs::read_to_string(path) {
        Ok(secret) if !secret.trim().is_empty() => return Ok((secret.trim().to_string(), false)),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        private_dir(dir)?;
    }
    let secret = make();
    write_private(path, secret.as_bytes())?;
    Ok((secret, true))
}

/// Makes the SQLite database at `path` private before it is opened: created empty as 0600 when
/// missing (SQLite gives its `-wal` and `-shm` files the database's mode), and the three files
/// tightened when they exist.
pub fn private_sqlite(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = OpenOptions::new();
    options.write(true).create(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        match restrict(Path::new(&file), 0o600) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    Ok(())
}

#[cfg(unix)]
fn restrict(path: &Path, mode: u32) -> io::Result<()> {
    let permissions = std::fs::metadata(path)?.permissions();
    if permissions.mode() & 0o777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn restrict(_: &Path, _: u32) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn directories_and_files_are_private_whatever_they_were() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data/gateway");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700, "an open directory is tightened");

        let key = dir.join("admin_key");
        write_private(&key, b"secret").unwrap();
        assert_eq!(
            (mode(&key), std::fs::read(&key).unwrap()),
            (0o600, b"secret".to_vec())
        );
        let db = dir.join("x.sqlite");
        std::fs::write(&db, b"").unwrap();
        std::fs::write(dir.join("x.sqlite-wal"), b"").unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        private_sqlite(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&dir.join("x.sqlite-wal")), 0o600);
    }
}
