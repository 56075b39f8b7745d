//! A reproducible newc cpio archive (the initramfs format).

use std::collections::BTreeMap;
use std::io::{self, Write};

/// One entry of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory.
    Dir,
    /// A regular file with its content and mode bits (e.g. 0o755).
    File {
        /// Content.
        data: Vec<u8>,
        /// Permission bits.
        mode: u32,
    },
    /// A character device node.
    CharDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
}

/// Errors while writing the archive.
#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    /// A file is too large for the newc format (4 GiB).
    #[error("{0} is larger than 4 GiB, which newc cannot hold")]
    TooLarge(String),
    /// Writing failed.
    #[error("cannot write the initrd")]
    Write(#[source] io::Error),
}

/// An initramfs under construction: paths (without leading `/`) → entries.
/// Parent directories are added automatically.
#[derive(Debug, Default, Clone)]
pub struct Initrd {
    entries: BTreeMap<String, Entry>,
}

impl Initrd {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `path` (and its parents as directories).
    pub fn add(&mut self, path: &str, entry: Entry) {
        let path = path.trim_start_matches('/').to_string();
        let mut parent = String::new();
        for comp in path
            .split('/')
            .take(path.split('/').count().saturating_sub(1))
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(comp);
            self.entries.entry(parent.clone()).or_insert(Entry::Dir);
        }
        self.entries.insert(path, entry);
    }

    /// Paths in archive order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Writes the archive: sorted order, inodes numbered from 1, mtime 0,
    /// owner root.
    pub fn write<W: Write>(&self, mut out: W) -> Result<W, InitrdError> {
        for (ino, (path, entry)) in (1u32..).zip(&self.entries) {
            let b = cpio::newc::Builder::new(path)
                .ino(ino)
                .uid(0)
                .gid(0)
                .mtime(0);
            let (b, data): (_, &[u8]) = match entry {
                Entry::Dir => (b.mode(0o040_755).nlink(2), &[]),
                Entry::File { data, mode } => (b.mode(0o100_000 | (mode & 0o7777)).nlink(1), data),
                Entry::CharDev { major, minor } => (
                    b.mode(0o020_600)
                        .nlink(1)
                        .rdev_major(*major)
                        .rdev_minor(*minor),
                    &[],
                ),
            };
            let len = u32::try_from(data.len()).map_err(|_| InitrdError::TooLarge(path.clone()))?;
            let mut w = b.write(out, len);
            w.write_all(data).map_err(InitrdError::Write)?;
            out = w.finish().map_err(InitrdError::Write)?;
        }
        cpio::newc::trailer(out).map_err(InitrdError::Write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Initrd {
        let mut i = Initrd::new();
        i.add(
            "init",
            Entry::File {
                data: b"#!agent".to_vec(),
                mode: 0o755,
            },
        );
        i.add(
            "lib/modules/6.12/kernel/a.ko.xz",
            Entry::File {
                data: vec![1, 2, 3],
                mode: 0o644,
            },
        );
        i.add("dev/console", Entry::CharDev { major: 5, minor: 1 });
        i
    }

    #[test]
    fn parents_are_added_and_order_is_sorted() {
        let paths: Vec<_> = sample().paths().map(str::to_string).collect();
        assert_eq!(
            paths,
            [
                "dev",
                "dev/console",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/6.12",
                "lib/modules/6.12/kernel",
                "lib/modules/6.12/kernel/a.ko.xz"
            ]
        );
    }

    #[test]
    fn same_input_same_bytes_and_cpio_reads_it_back() {
        let a = sample().write(Vec::new()).unwrap();
        let b = sample().write(Vec::new()).unwrap();
        assert_eq!(a, b);
        // Read back with the crate's reader: names, modes and data survive.
        let mut rest: &[u8] = &a;
        let mut seen = Vec::new();
        loop {
            let mut r = cpio::NewcReader::new(rest).unwrap();
            if r.entry().is_trailer() {
                break;
            }
            let name = r.entry().name().to_string();
            let mode = r.entry().mode();
            let mtime = r.entry().mtime();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut r, &mut data).unwrap();
            seen.push((name, mode, mtime, data));
            rest = r.finish().unwrap();
        }
        assert_eq!(seen.len(), 8);
        let init = seen.iter().find(|e| e.0 == "init").unwrap();
        assert_eq!(
            (init.1, init.2, init.3.as_slice()),
            (0o100_755, 0, &b"#!agent"[..])
        );
    }
}
