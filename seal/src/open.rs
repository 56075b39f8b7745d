//! Reading a sealed model: the header without the key; verifying and
//! decrypting with it.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::AeadInPlace;

use crate::format::{self, Header, Kind, ModelKey, PREFIX_LEN, TAG_LEN};
use crate::{parallel, Job, SealError};

/// Reads and checks the header at the start of `r`: magic, version, the
/// document and every field. Returns the header and its encoded bytes.
pub fn read_header(r: &mut impl Read) -> Result<(Header, Vec<u8>), SealError> {
    let mut prefix = [0u8; PREFIX_LEN];
    r.read_exact(&mut prefix)
        .map_err(|_| SealError::NotSealed)?;
    if &prefix[..8] != format::MAGIC {
        return Err(SealError::NotSealed);
    }
    let version = u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]);
    if version != format::FORMAT_VERSION {
        return Err(SealError::Version(version));
    }
    let len = u32::from_le_bytes([prefix[12], prefix[13], prefix[14], prefix[15]]);
    if len > format::MAX_HEADER_LEN {
        return Err(SealError::BadHeader(format!(
            "the header document claims {len} bytes (at most 16 MiB)"
        )));
    }
    let mut encoded = prefix.to_vec();
    encoded.resize(PREFIX_LEN + len as usize, 0);
    r.read_exact(&mut encoded[PREFIX_LEN..])
        .map_err(|_| SealError::BadHeader("the header document is cut short".into()))?;
    let header: Header = serde_json::from_slice(&encoded[PREFIX_LEN..])
        .map_err(|e| SealError::BadHeader(e.to_string()))?;
    header.check()?;
    // The document must be the canonical encoding, so the digest a writer
    // computed is the one every reader computes.
    if header.encode()? != encoded {
        return Err(SealError::BadHeader(
            "the header document is not in canonical form".into(),
        ));
    }
    Ok((header, encoded))
}

/// The header of the sealed model at `path` (no key needed).
pub fn read_header_file(path: &Path) -> Result<Header, SealError> {
    let mut f = File::open(path).map_err(SealError::io(path))?;
    Ok(read_header(&mut f)?.0)
}

/// How to open.
pub struct OpenOptions<'a> {
    /// Worker threads.
    pub threads: usize,
    /// Called after each batch with (plaintext bytes done, total).
    pub progress: Option<&'a mut dyn FnMut(u64, u64)>,
}

impl std::fmt::Debug for OpenOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenOptions")
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

/// Where the plaintext of the file being written goes.
struct Sink {
    root: PathBuf,
    kind: Kind,
    current: Option<(u32, BufWriter<File>)>,
}

impl Sink {
    fn start(&mut self, header: &Header, file: u32) -> Result<(), SealError> {
        self.finish()?;
        let entry = &header.files[file as usize];
        let path = match self.kind {
            Kind::File => self.root.clone(),
            Kind::Directory => {
                let p = self.root.join(&entry.path);
                if let Some(parent) = p.parent() {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o755)
                        .create(parent)
                        .map_err(SealError::io(parent))?;
                }
                p
            }
        };
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(entry.mode)
            .open(&path)
            .map_err(SealError::io(&path))?;
        self.current = Some((file, BufWriter::with_capacity(1 << 20, f)));
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SealError> {
        if let Some((_, w)) = self.current.take() {
            let f = w
                .into_inner()
                .map_err(|e| SealError::io(&self.root)(e.into_error()))?;
            drop(f);
        }
        Ok(())
    }
}

/// Verifies the sealed model at `sealed` with `key` and, with `out`,
/// decrypts it there: a file for a sealed file, a directory for a sealed
/// directory. `out` must not exist; it appears only when every chunk has
/// authenticated (written as `<out>.partial`, removed on any error).
/// Memory use is constant: `threads` × 2 chunks.
pub fn open(
    sealed: &Path,
    key: &ModelKey,
    out: Option<&Path>,
    mut opts: OpenOptions<'_>,
) -> Result<Header, SealError> {
    let file = File::open(sealed).map_err(SealError::io(sealed))?;
    let actual = file.metadata().map_err(SealError::io(sealed))?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let (header, encoded) = read_header(&mut r)?;
    let digest = format::header_digest(&encoded);
    let cipher = format::model_cipher(key, &header.salt)?;
    let mut tag = [0u8; TAG_LEN];
    r.read_exact(&mut tag).map_err(|_| SealError::Truncated {
        expected: header.sealed_len(encoded.len()),
        actual,
    })?;
    cipher
        .decrypt_in_place_detached(
            GenericArray::from_slice(&format::nonce(format::HEADER_FILE_INDEX, 0)),
            &format::aad(&digest, format::HEADER_FILE_INDEX, 0, true),
            &mut [],
            GenericArray::from_slice(&tag),
        )
        .map_err(|_| SealError::WrongKey)?;
    let expected = header.sealed_len(encoded.len());
    if actual < expected {
        return Err(SealError::Truncated { expected, actual });
    }
    if actual > expected {
        return Err(SealError::Extended {
            extra: actual - expected,
        });
    }
    let Some(out) = out else {
        decrypt(&header, &digest, &cipher, &mut r, None, &mut opts)?;
        return Ok(header);
    };
    if out.symlink_metadata().is_ok() {
        return Err(SealError::Exists(out.to_path_buf()));
    }
    let partial = PathBuf::from(format!("{}.partial", out.display()));
    let _ = remove(&partial);
    let mut sink = Sink {
        root: partial.clone(),
        kind: header.kind,
        current: None,
    };
    let result = (|| {
        if header.kind == Kind::Directory {
            std::fs::DirBuilder::new()
                .mode(0o755)
                .create(&partial)
                .map_err(SealError::io(&partial))?;
        }
        decrypt(
            &header,
            &digest,
            &cipher,
            &mut r,
            Some(&mut sink),
            &mut opts,
        )?;
        sink.finish()?;
        std::fs::rename(&partial, out).map_err(SealError::io(out))
    })();
    if result.is_err() {
        drop(sink);
        let _ = remove(&partial);
    }
    result.map(|()| header)
}

fn remove(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) => Err(e),
    }
}

fn decrypt(
    header: &Header,
    digest: &[u8; 32],
    cipher: &aes_gcm::Aes256Gcm,
    r: &mut impl Read,
    mut sink: Option<&mut Sink>,
    opts: &mut OpenOptions<'_>,
) -> Result<(), SealError> {
    let chunk = header.chunk_size as usize;
    let threads = opts.threads.max(1);
    let batch = threads * 2;
    let total = header.plaintext_len();
    let mut done = 0u64;
    let mut jobs: Vec<Job> = Vec::with_capacity(batch);
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut flush = |jobs: &mut Vec<Job>,
                     spare: &mut Vec<Vec<u8>>,
                     sink: &mut Option<&mut Sink>|
     -> Result<(), SealError> {
        parallel(jobs, threads, |j| {
            j.ok = cipher
                .decrypt_in_place_detached(
                    GenericArray::from_slice(&format::nonce(j.file, j.chunk)),
                    &format::aad(digest, j.file, j.chunk, j.last),
                    &mut j.buf,
                    GenericArray::from_slice(&j.tag),
                )
                .is_ok();
        });
        for mut j in jobs.drain(..) {
            if !j.ok {
                return Err(SealError::Chunk {
                    path: header.files[j.file as usize].path.clone(),
                    chunk: j.chunk,
                });
            }
            if let Some(sink) = sink.as_deref_mut() {
                if j.chunk == 0 {
                    sink.start(header, j.file)?;
                }
                if let Some((_, w)) = sink.current.as_mut() {
                    w.write_all(&j.buf).map_err(SealError::io(&sink.root))?;
                }
            }
            done += j.buf.len() as u64;
            j.buf.clear();
            spare.push(j.buf);
        }
        if let Some(p) = opts.progress.as_deref_mut() {
            p(done, total);
        }
        Ok(())
    };
    for (i, entry) in header.files.iter().enumerate() {
        let file = u32::try_from(i).map_err(|_| SealError::Crypto)?;
        let n = header.chunks_of(entry.size);
        let mut left = entry.size;
        for c in 0..n {
            let len = usize::try_from(left.min(chunk as u64)).unwrap_or(chunk);
            let mut buf = spare.pop().unwrap_or_else(|| Vec::with_capacity(chunk));
            buf.resize(len, 0);
            let mut tag = [0u8; TAG_LEN];
            r.read_exact(&mut buf)
                .and_then(|()| r.read_exact(&mut tag))
                .map_err(|_| SealError::BadHeader("the file changed while being read".into()))?;
            left -= len as u64;
            jobs.push(Job {
                file,
                chunk: c,
                last: c + 1 == n,
                buf,
                tag,
                ok: false,
            });
            if jobs.len() == batch {
                flush(&mut jobs, &mut spare, &mut sink)?;
            }
        }
    }
    flush(&mut jobs, &mut spare, &mut sink)
}
