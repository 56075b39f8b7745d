//! Cocoon's state is root's alone: every directory it creates is 0700 and
//! every file 0600, so no other local user can read a pod's root
//! filesystem, logs or reference values through the state directory.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Creates `dir` (and missing parents) with mode 0700; an existing
/// directory is left as it is.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Creates `dir`, which must not exist, with mode 0700.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().mode(0o700).create(dir)
}

/// Creates (or truncates) `path` with mode 0600.
pub fn create_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Writes `data` to `path` (mode 0600).
pub fn write(path: &Path, data: impl AsRef<[u8]>) -> io::Result<()> {
    use std::io::Write;
    create_file(path)?.write_all(data.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn directories_and_files_are_private() {
        let d = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        create_dir_all(&d.path().join("a/b")).unwrap();
        assert_eq!(mode(&d.path().join("a")), 0o700);
        assert_eq!(mode(&d.path().join("a/b")), 0o700);
        create_dir(&d.path().join("a/c")).unwrap();
        assert_eq!(mode(&d.path().join("a/c")), 0o700);
        assert!(create_dir(&d.path().join("a/c")).is_err());
        write(&d.path().join("a/f"), "x").unwrap();
        assert_eq!(mode(&d.path().join("a/f")), 0o600);
    }
}
