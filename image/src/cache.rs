//! The node's cache of verified layer images: one file per layer digest,
//! the erofs image followed by its dm-verity hash device, built once and
//! shared by every pod that uses the layer, evicted oldest-used first
//! beyond a size cap.
//!
//! The cache is not trusted for integrity — the guest checks every block
//! against the root hash from the pod's policy — only for not doing the
//! work twice. Concurrent builders of one layer are serialised with a lock
//! file; a build goes to a temporary file renamed into place, so a reader
//! never sees half an entry and an interrupted build leaves nothing.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::{layer, oci, verity};

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The cache directory or an entry.
    #[error("layer cache {path}: {source}")]
    Io {
        /// What.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The digest is not `sha256:` and 64 hex digits.
    #[error("layer digest {0:?}: must be sha256:<64 hex digits>")]
    BadDigest(String),
    /// The blob read is not the one its digest names.
    #[error("layer {digest}: the blob read has digest sha256:{got}")]
    Mismatch {
        /// The expected digest.
        digest: String,
        /// What was read.
        got: String,
    },
    /// Converting the layer.
    #[error("layer {digest}: {source}")]
    Layer {
        /// The layer.
        digest: String,
        /// Why.
        #[source]
        source: layer::LayerError,
    },
    /// Hashing the image.
    #[error("layer {digest}: {source}")]
    Verity {
        /// The layer.
        digest: String,
        /// Why.
        #[source]
        source: verity::VerityError,
    },
}

/// One cached layer: `path` holds the erofs image (`data_blocks` 4 KiB
/// blocks), then its hash device (superblock first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedLayer {
    /// The file.
    pub path: PathBuf,
    /// dm-verity root hash (hex).
    pub root_hash: String,
    /// Blocks of erofs image at the start of the file.
    pub data_blocks: u64,
    /// dm-verity's `<hash_start_block>`: the first hash block after the
    /// verity superblock, in 4 KiB blocks from the file's start.
    pub hash_start_block: u64,
    /// The file's length.
    pub len: u64,
}

/// The cache in `dir`, holding at most `max_bytes` of entries (the one
/// being used is never evicted to make room for itself).
#[derive(Debug, Clone)]
pub struct LayerCache {
    dir: PathBuf,
    max_bytes: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// An exclusive `flock`, held while the file is open (until dropped).
struct Lock(#[allow(dead_code)] File);

impl Lock {
    fn take(path: &Path) -> Result<Self, CacheError> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io(path))?;
        // SAFETY: flock on an fd this function owns.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io(path)(std::io::Error::last_os_error()));
        }
        Ok(Self(f))
    }
}

impl LayerCache {
    /// The cache at `dir` (created, mode 0700).
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, CacheError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            max_bytes,
        })
    }

    fn hex(digest: &str) -> Result<&str, CacheError> {
        digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .ok_or_else(|| CacheError::BadDigest(digest.to_string()))
    }

    /// The entry for `digest`, built from the blob `open` returns when it
    /// is not cached yet; `true` with it when it was built now.
    pub fn get_or_build(
        &self,
        digest: &str,
        open: impl FnOnce() -> std::io::Result<Box<dyn Read>>,
    ) -> Result<(CachedLayer, bool), CacheError> {
        let hex = Self::hex(digest)?;
        let path = self.dir.join(format!("{hex}.layer"));
        let meta = self.dir.join(format!("{hex}.meta"));
        let lock = Lock::take(&self.dir.join(format!("{hex}.lock")))?;
        if let Some(hit) = Self::read_meta(&path, &meta) {
            // Used now: the eviction order follows use.
            let _ = File::open(&path).and_then(|f| f.set_modified(std::time::SystemTime::now()));
            drop(lock);
            return Ok((hit, false));
        }
        let built = self.build(digest, hex, &path, &meta, open);
        drop(lock);
        let built = built?;
        self.evict(hex);
        Ok((built, true))
    }

    fn read_meta(path: &Path, meta: &Path) -> Option<CachedLayer> {
        let text = std::fs::read_to_string(meta).ok()?;
        let mut it = text.split_whitespace();
        let root_hash = it.next()?.to_string();
        verity::parse_root(&root_hash).ok()?;
        let data_blocks: u64 = it.next()?.parse().ok()?;
        let len: u64 = it.next()?.parse().ok()?;
        (std::fs::metadata(path).ok()?.len() == len).then(|| CachedLayer {
            path: path.to_path_buf(),
            root_hash,
            data_blocks,
            hash_start_block: data_blocks + 1,
            len,
        })
    }

    fn build(
        &self,
        digest: &str,
        hex: &str,
        path: &Path,
        meta: &Path,
        open: impl FnOnce() -> std::io::Result<Box<dyn Read>>,
    ) -> Result<CachedLayer, CacheError> {
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{hex}."))
            .tempfile_in(&self.dir)
            .map_err(io(&self.dir))?;
        let blob = open().map_err(io(Path::new(digest)))?;
        let converted =
            oci::convert_blob(blob, tmp.reopen().map_err(io(path))?).map_err(|source| {
                CacheError::Layer {
                    digest: digest.to_string(),
                    source,
                }
            })?;
        let got = oci::hex(&converted.sha256);
        if got != hex {
            return Err(CacheError::Mismatch {
                digest: digest.to_string(),
                got,
            });
        }
        // The hash device right after the image, in the same file.
        let len = converted.len;
        let mut out = tmp.reopen().map_err(io(path))?;
        out.seek(SeekFrom::Start(len)).map_err(io(path))?;
        let mut out = std::io::BufWriter::new(out);
        let tree =
            oci::layer_tree(tmp.reopen().map_err(io(path))?, len, &mut out).map_err(|source| {
                CacheError::Verity {
                    digest: digest.to_string(),
                    source,
                }
            })?;
        out.flush().map_err(io(path))?;
        drop(out);
        tmp.as_file().sync_all().map_err(io(path))?;
        let entry = CachedLayer {
            path: path.to_path_buf(),
            root_hash: tree.root_hex(),
            data_blocks: tree.data_blocks,
            hash_start_block: tree.data_blocks + 1,
            len: len + tree.hash_bytes,
        };
        tmp.persist(path).map_err(|e| io(path)(e.error))?;
        std::fs::write(
            meta,
            format!("{} {} {}\n", entry.root_hash, entry.data_blocks, entry.len),
        )
        .map_err(io(meta))?;
        Ok(entry)
    }

    /// Removes the least recently used entries until the cache is within
    /// its cap, never `keep`.
    fn evict(&self, keep: &str) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut entries: Vec<(std::time::SystemTime, u64, String)> = dir
            .filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name().into_string().ok()?;
                let hex = name.strip_suffix(".layer")?.to_string();
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), hex))
            })
            .collect();
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        entries.sort();
        for (_, len, hex) in entries {
            if total <= self.max_bytes {
                break;
            }
            if hex == keep {
                continue;
            }
            let Ok(_lock) = Lock::take(&self.dir.join(format!("{hex}.lock"))) else {
                continue;
            };
            let _ = std::fs::remove_file(self.dir.join(format!("{hex}.meta")));
            if std::fs::remove_file(self.dir.join(format!("{hex}.layer"))).is_ok() {
                total = total.saturating_sub(len);
            }
            // The (empty) lock file stays: removing it could let two
            // builders lock different files for one digest.
        }
    }
}
