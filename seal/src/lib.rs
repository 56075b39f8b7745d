//! Cocoon's sealed models: a model file or a whole model directory,
//! encrypted on its owner's machine with a fresh 256-bit key in a chunked,
//! authenticated, streaming format (docs/sealed-models.md), and opened only
//! where the key is released — inside the pod's TEE.
//!
//! - [`seal::seal`] encrypts a file or directory into one sealed file;
//! - [`open::read_header`] reads the header without the key;
//! - [`open::open`] verifies and decrypts (or only verifies) with the key.
//!
//! Both sides stream with constant memory (a batch of chunks per worker
//! thread) and encrypt/decrypt the chunks of a batch in parallel.

pub mod format;
pub mod open;
pub mod seal;

use std::path::PathBuf;

pub use format::{FileEntry, Header, Kind, ModelKey};

/// Errors of sealing and opening. Each names what is wrong and, where
/// there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// I/O on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The input cannot be sealed as it is.
    #[error("{path}: {why}")]
    Input {
        /// The offending path.
        path: PathBuf,
        /// What is wrong and the fix.
        why: String,
    },
    /// An output path exists already.
    #[error("{0} exists; choose another path or remove it (a key file is never overwritten)")]
    Exists(PathBuf),
    /// Not a sealed model at all.
    #[error("not a Cocoon sealed model (bad magic)")]
    NotSealed,
    /// A format version this code does not read.
    #[error("sealed with format version {0}; this Cocoon reads version {v} only: upgrade Cocoon to open it", v = format::FORMAT_VERSION)]
    Version(u32),
    /// The header is malformed.
    #[error("bad header: {0}")]
    BadHeader(String),
    /// The key does not open this model, or the header was edited.
    #[error("the key does not open this model: wrong key, or the header was changed")]
    WrongKey,
    /// A chunk failed authentication.
    #[error("chunk {chunk} of {path:?} does not authenticate: the data was edited, reordered or comes from another model")]
    Chunk {
        /// File path in the model.
        path: String,
        /// Chunk index.
        chunk: u64,
    },
    /// The sealed file is shorter than its header says.
    #[error("truncated: the header promises {expected} bytes, the file has {actual}")]
    Truncated {
        /// Length the header implies.
        expected: u64,
        /// Actual length.
        actual: u64,
    },
    /// The sealed file is longer than its header says.
    #[error("extended: {extra} bytes follow the last chunk")]
    Extended {
        /// Extra bytes.
        extra: u64,
    },
    /// A key is not 32 bytes.
    #[error("a model key is 32 bytes, this one has {0}")]
    KeyLength(usize),
    /// No randomness.
    #[error("cannot get random bytes: {0}")]
    Random(String),
    /// The cipher failed (cannot happen with valid lengths).
    #[error("encryption failed")]
    Crypto,
}

impl SealError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

/// One chunk in flight.
pub(crate) struct Job {
    pub file: u32,
    pub chunk: u64,
    pub last: bool,
    pub buf: Vec<u8>,
    pub tag: [u8; format::TAG_LEN],
    pub ok: bool,
}

/// Runs `f` over `jobs` on up to `threads` scoped threads.
pub(crate) fn parallel(jobs: &mut [Job], threads: usize, f: impl Fn(&mut Job) + Sync) {
    let threads = threads.clamp(1, jobs.len().max(1));
    if threads == 1 {
        jobs.iter_mut().for_each(&f);
        return;
    }
    let per = jobs.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        for part in jobs.chunks_mut(per) {
            s.spawn(move || part.iter_mut().for_each(f));
        }
    });
}

/// Worker threads to use: the machine's parallelism.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests;
