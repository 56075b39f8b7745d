//! Sealing a model file or directory into one sealed file.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::AeadInPlace;

use crate::format::{self, FileEntry, Header, Kind, ModelKey, SALT_LEN, TAG_LEN};
use crate::{parallel, Job, SealError};

/// How to seal.
#[derive(Debug, Clone)]
pub struct SealOptions {
    /// The KBS resource that will hold the key.
    pub key_uri: String,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// Worker threads.
    pub threads: usize,
    /// A fixed salt (published test vectors only; a fresh one otherwise).
    pub salt: Option<[u8; SALT_LEN]>,
}

/// What was sealed.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The header written.
    pub header: Header,
    /// Bytes of the sealed file.
    pub sealed_len: u64,
}

/// A file to seal: where it is, and its entry.
struct Source {
    path: PathBuf,
    entry: FileEntry,
}

fn mode_of(meta: &std::fs::Metadata) -> u32 {
    if meta.mode() & 0o111 != 0 {
        0o755
    } else {
        0o644
    }
}

/// Lists the regular files under `dir`. Symlinks
/// to regular files are followed (model caches link shards to blobs);
/// symlinks to directories and special files are refused.
fn walk(root: &Path, dir: &Path, rel: &str, out: &mut Vec<Source>) -> Result<(), SealError> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(SealError::io(dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(SealError::io(dir))?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let name = name.to_str().ok_or_else(|| SealError::Input {
            path: path.clone(),
            why: "the name is not UTF-8; rename it".into(),
        })?;
        let rel = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let lmeta = std::fs::symlink_metadata(&path).map_err(SealError::io(&path))?;
        let meta = std::fs::metadata(&path).map_err(SealError::io(&path))?;
        if lmeta.is_dir() {
            walk(root, &path, &rel, out)?;
        } else if meta.is_file() {
            if !format::path_ok(&rel) {
                return Err(SealError::Input {
                    path,
                    why: "the relative path is too long".into(),
                });
            }
            out.push(Source {
                entry: FileEntry {
                    path: rel,
                    size: meta.len(),
                    mode: mode_of(&meta),
                },
                path,
            });
        } else {
            let what = if lmeta.is_symlink() && meta.is_dir() {
                "a symlink to a directory; copy the tree with `cp -rL` first"
            } else {
                "not a regular file (a device, FIFO or socket); remove it from the model directory"
            };
            return Err(SealError::Input {
                path,
                why: what.into(),
            });
        }
        if out.len() > format::MAX_FILES {
            return Err(SealError::Input {
                path: root.to_path_buf(),
                why: format!("more than {} files", format::MAX_FILES),
            });
        }
    }
    Ok(())
}

fn sources(input: &Path) -> Result<(Kind, Vec<Source>), SealError> {
    let meta = std::fs::metadata(input).map_err(SealError::io(input))?;
    if meta.is_file() {
        let name = input
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| format::path_ok(n))
            .ok_or_else(|| SealError::Input {
                path: input.to_path_buf(),
                why: "the file name is not UTF-8".into(),
            })?;
        return Ok((
            Kind::File,
            vec![Source {
                path: input.to_path_buf(),
                entry: FileEntry {
                    path: name.to_string(),
                    size: meta.len(),
                    mode: mode_of(&meta),
                },
            }],
        ));
    }
    if !meta.is_dir() {
        return Err(SealError::Input {
            path: input.to_path_buf(),
            why: "not a regular file or directory".into(),
        });
    }
    let mut out = Vec::new();
    walk(input, input, "", &mut out)?;
    // The file table is sorted by the whole path, bytewise.
    out.sort_by(|a, b| a.entry.path.cmp(&b.entry.path));
    Ok((Kind::Directory, out))
}

/// Seals `input` (a file or a directory) into `out` with `key`. `out` must
/// not exist; it appears only when complete (written to `<out>.partial`,
/// which is removed on any error). Memory use is constant: `threads` × 2
/// chunks.
pub fn seal(
    input: &Path,
    out: &Path,
    key: &ModelKey,
    opts: &SealOptions,
) -> Result<Sealed, SealError> {
    if !(format::MIN_CHUNK_SIZE..=format::MAX_CHUNK_SIZE).contains(&opts.chunk_size) {
        return Err(SealError::BadHeader(format!(
            "chunk size {} is outside {}..={}",
            opts.chunk_size,
            format::MIN_CHUNK_SIZE,
            format::MAX_CHUNK_SIZE
        )));
    }
    if out.symlink_metadata().is_ok() {
        return Err(SealError::Exists(out.to_path_buf()));
    }
    let (kind, sources) = sources(input)?;
    let salt = match opts.salt {
        Some(s) => s,
        None => {
            let mut s = [0u8; SALT_LEN];
            getrandom::getrandom(&mut s).map_err(|e| SealError::Random(e.to_string()))?;
            s
        }
    };
    let header = Header {
        cipher: format::CIPHER.into(),
        kdf: format::KDF.into(),
        salt: hex::encode(salt),
        chunk_size: opts.chunk_size,
        key_uri: opts.key_uri.clone(),
        kind,
        files: sources.iter().map(|s| s.entry.clone()).collect(),
    };
    header.check()?;
    let partial = PathBuf::from(format!("{}.partial", out.display()));
    let result = write_sealed(&header, &sources, &partial, key, opts.threads).and_then(|len| {
        // No-clobber publish: link fails if `out` appeared meanwhile.
        std::fs::hard_link(&partial, out).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                SealError::Exists(out.to_path_buf())
            } else {
                SealError::io(out)(e)
            }
        })?;
        Ok(len)
    });
    let _ = std::fs::remove_file(&partial);
    Ok(Sealed {
        header,
        sealed_len: result?,
    })
}

fn write_sealed(
    header: &Header,
    sources: &[Source],
    partial: &Path,
    key: &ModelKey,
    threads: usize,
) -> Result<u64, SealError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(partial)
        .map_err(SealError::io(partial))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let encoded = header.encode()?;
    let digest = format::header_digest(&encoded);
    let cipher = format::model_cipher(key, &header.salt)?;
    w.write_all(&encoded).map_err(SealError::io(partial))?;
    w.write_all(&format::header_tag(&cipher, &digest)?)
        .map_err(SealError::io(partial))?;

    let chunk = header.chunk_size as usize;
    let batch = threads.max(1) * 2;
    let mut jobs: Vec<Job> = Vec::with_capacity(batch);
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let flush = |jobs: &mut Vec<Job>,
                 spare: &mut Vec<Vec<u8>>,
                 w: &mut BufWriter<File>|
     -> Result<(), SealError> {
        parallel(jobs, threads, |j| {
            match cipher.encrypt_in_place_detached(
                GenericArray::from_slice(&format::nonce(j.file, j.chunk)),
                &format::aad(&digest, j.file, j.chunk, j.last),
                &mut j.buf,
            ) {
                Ok(tag) => {
                    j.tag.copy_from_slice(&tag);
                    j.ok = true;
                }
                Err(_) => j.ok = false,
            }
        });
        for mut j in jobs.drain(..) {
            if !j.ok {
                return Err(SealError::Crypto);
            }
            w.write_all(&j.buf).map_err(SealError::io(partial))?;
            w.write_all(&j.tag).map_err(SealError::io(partial))?;
            j.buf.clear();
            spare.push(j.buf);
        }
        Ok(())
    };
    for (i, src) in sources.iter().enumerate() {
        let file_index = u32::try_from(i).map_err(|_| SealError::Crypto)?;
        let mut f = File::open(&src.path).map_err(SealError::io(&src.path))?;
        let n = header.chunks_of(src.entry.size);
        let mut left = src.entry.size;
        for c in 0..n {
            let len = usize::try_from(left.min(chunk as u64)).unwrap_or(chunk);
            let mut buf = spare.pop().unwrap_or_else(|| Vec::with_capacity(chunk));
            buf.resize(len, 0);
            f.read_exact(&mut buf).map_err(|e| SealError::Input {
                path: src.path.clone(),
                why: format!(
                    "changed while being sealed ({e}); seal a copy that nothing writes to"
                ),
            })?;
            left -= len as u64;
            jobs.push(Job {
                file: file_index,
                chunk: c,
                last: c + 1 == n,
                buf,
                tag: [0; TAG_LEN],
                ok: false,
            });
            if jobs.len() == batch {
                flush(&mut jobs, &mut spare, &mut w)?;
            }
        }
        // The file must not have grown either.
        let mut probe = [0u8; 1];
        if f.read(&mut probe).map_err(SealError::io(&src.path))? != 0 {
            return Err(SealError::Input {
                path: src.path.clone(),
                why: "changed while being sealed (it grew); seal a copy that nothing writes to"
                    .into(),
            });
        }
    }
    flush(&mut jobs, &mut spare, &mut w)?;
    let file = w
        .into_inner()
        .map_err(|e| SealError::io(partial)(e.into_error()))?;
    file.sync_all().map_err(SealError::io(partial))?;
    Ok(header.sealed_len(encoded.len()))
}
