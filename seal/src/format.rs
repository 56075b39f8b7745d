//! The on-disk format (docs/sealed-models.md): constants, the header, key
//! derivation, nonces and associated data. Everything that both sealing and
//! opening must agree on lives here.

use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::Aes256Gcm;
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::SealError;

/// The first eight bytes of a sealed model.
pub const MAGIC: &[u8; 8] = b"COCOONSM";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Length of the model key (the KBS resource), bytes.
pub const KEY_LEN: usize = 32;
/// Length of an AES-GCM tag, bytes.
pub const TAG_LEN: usize = 16;
/// Length of the per-model HKDF salt, bytes.
pub const SALT_LEN: usize = 32;
/// The default plaintext chunk size.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Smallest chunk size accepted.
pub const MIN_CHUNK_SIZE: u32 = 4096;
/// Largest chunk size accepted.
pub const MAX_CHUNK_SIZE: u32 = 64 << 20;
/// Largest header (the JSON document) accepted.
pub const MAX_HEADER_LEN: u32 = 16 << 20;
/// Most files in one sealed directory.
pub const MAX_FILES: usize = 100_000;
/// The only cipher of format version 1.
pub const CIPHER: &str = "aes-256-gcm";
/// The only key derivation of format version 1.
pub const KDF: &str = "hkdf-sha256";
/// HKDF `info` of format version 1.
pub const KDF_INFO: &[u8] = b"cocoon sealed model v1";
/// The file index of the header tag's nonce and associated data.
pub const HEADER_FILE_INDEX: u32 = u32::MAX;
/// Bytes before the header document: magic, version, document length.
pub const PREFIX_LEN: usize = 16;

/// A model key: 32 random bytes, the exact content of the KBS resource.
/// Wiped from memory when dropped; never printed.
pub struct ModelKey([u8; KEY_LEN]);

impl ModelKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, SealError> {
        let mut k = [0u8; KEY_LEN];
        getrandom::getrandom(&mut k).map_err(|e| SealError::Random(e.to_string()))?;
        Ok(Self(k))
    }

    /// A key from its bytes (a key file, or a KBS resource): exactly 32.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        let k: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| SealError::KeyLength(bytes.len()))?;
        Ok(Self(k))
    }

    /// The key's bytes (to write the key file or compare).
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl Drop for ModelKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl std::fmt::Debug for ModelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ModelKey(..)")
    }
}

/// What was sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// One file; it opens to a file.
    File,
    /// A directory tree of regular files; it opens to a directory.
    Directory,
}

/// One file of the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative path, `/`-separated, no `.`/`..`/empty components.
    pub path: String,
    /// Plaintext size, bytes.
    pub size: u64,
    /// Permission bits: 0o644, or 0o755 for an executable.
    pub mode: u32,
}

/// The header document (JSON). Every chunk's associated data carries the
/// SHA-256 of the encoded header, so no byte of it can change unnoticed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// [`CIPHER`].
    pub cipher: String,
    /// [`KDF`].
    pub kdf: String,
    /// The HKDF salt, hex ([`SALT_LEN`] bytes): fresh per sealed model.
    pub salt: String,
    /// Plaintext bytes per chunk (the last chunk of a file may be shorter).
    pub chunk_size: u32,
    /// The KBS resource that holds the key: `kbs:///<repo>/<type>/<tag>`.
    pub key_uri: String,
    /// File or directory.
    pub kind: Kind,
    /// The files, sorted by path (bytewise).
    pub files: Vec<FileEntry>,
}

fn bad(why: impl Into<String>) -> SealError {
    SealError::BadHeader(why.into())
}

/// Whether `path` is a clean relative path (what a file table may hold).
pub fn path_ok(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 4096
        && !path.contains('\0')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && c.len() <= 255)
}

impl Header {
    /// Checks every field; the reader calls it before trusting a value.
    pub fn check(&self) -> Result<(), SealError> {
        if self.cipher != CIPHER {
            return Err(bad(format!("cipher {:?} (only {CIPHER:?})", self.cipher)));
        }
        if self.kdf != KDF {
            return Err(bad(format!("kdf {:?} (only {KDF:?})", self.kdf)));
        }
        if hex::decode(&self.salt).map(|s| s.len()) != Ok(SALT_LEN) {
            return Err(bad(format!("salt is not {SALT_LEN} bytes of hex")));
        }
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(bad(format!(
                "chunk_size {} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}",
                self.chunk_size
            )));
        }
        self.key_uri
            .parse::<cocoon_protocol::resource::ResourceUri>()
            .map_err(|e| bad(e.to_string()))?;
        if self.files.len() > MAX_FILES {
            return Err(bad(format!("more than {MAX_FILES} files")));
        }
        if self.kind == Kind::File && (self.files.len() != 1 || self.files[0].path.contains('/')) {
            return Err(bad("a sealed file must list exactly one file name"));
        }
        let mut total: u64 = 0;
        let mut names = std::collections::HashSet::new();
        for (i, f) in self.files.iter().enumerate() {
            if !path_ok(&f.path) {
                return Err(bad(format!(
                    "file path {:?} is not a clean relative path",
                    f.path
                )));
            }
            if i > 0 && self.files[i - 1].path >= f.path {
                return Err(bad(format!(
                    "file table not sorted or duplicated at {:?}",
                    f.path
                )));
            }
            // A file may not also be a directory of another entry.
            let mut ancestor = f.path.as_str();
            while let Some((parent, _)) = ancestor.rsplit_once('/') {
                if names.contains(parent) {
                    return Err(bad(format!("{:?} is below the file {parent:?}", f.path)));
                }
                ancestor = parent;
            }
            names.insert(f.path.as_str());
            if f.mode != 0o644 && f.mode != 0o755 {
                return Err(bad(format!(
                    "mode {:o} of {:?} (only 644 or 755)",
                    f.mode, f.path
                )));
            }
            total = total
                .checked_add(f.size)
                .ok_or_else(|| bad("file sizes overflow"))?;
        }
        Ok(())
    }

    /// The encoded prefix and header document: the bytes the digest and
    /// every chunk's associated data cover.
    pub fn encode(&self) -> Result<Vec<u8>, SealError> {
        let doc = serde_json::to_vec(self).map_err(|e| bad(e.to_string()))?;
        let len = u32::try_from(doc.len())
            .ok()
            .filter(|&l| l <= MAX_HEADER_LEN)
            .ok_or_else(|| bad("the header document is larger than 16 MiB"))?;
        let mut out = Vec::with_capacity(PREFIX_LEN + doc.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&doc);
        Ok(out)
    }

    /// Total plaintext bytes.
    pub fn plaintext_len(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Number of chunks of a file of `size` bytes (an empty file has one,
    /// so its presence is authenticated too).
    pub fn chunks_of(&self, size: u64) -> u64 {
        size.div_ceil(u64::from(self.chunk_size)).max(1)
    }

    /// Length of the whole sealed model given its encoded header length.
    pub fn sealed_len(&self, encoded_header_len: usize) -> u64 {
        let data: u64 = self
            .files
            .iter()
            .map(|f| f.size + self.chunks_of(f.size) * TAG_LEN as u64)
            .sum();
        encoded_header_len as u64 + TAG_LEN as u64 + data
    }
}

/// The cipher of one model: AES-256-GCM under
/// HKDF-SHA256(salt = header salt, ikm = model key, info = [`KDF_INFO`]).
pub fn model_cipher(key: &ModelKey, salt_hex: &str) -> Result<Aes256Gcm, SealError> {
    let salt = hex::decode(salt_hex).map_err(|_| bad("salt is not hex"))?;
    let hk = Hkdf::<Sha256>::new(Some(&salt), key.as_bytes());
    let mut okm = zeroize::Zeroizing::new([0u8; 32]);
    hk.expand(KDF_INFO, okm.as_mut())
        .map_err(|_| bad("key derivation failed"))?;
    Ok(Aes256Gcm::new(GenericArray::from_slice(okm.as_ref())))
}

/// Nonce of chunk `chunk` of file `file`: file index (u32, big-endian) then
/// chunk index (u64, big-endian). Unique per model; the key is per model.
pub fn nonce(file: u32, chunk: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&file.to_be_bytes());
    n[4..].copy_from_slice(&chunk.to_be_bytes());
    n
}

/// Associated data of a chunk: SHA-256 of the encoded header, file index,
/// chunk index, and 1 for a file's last chunk (else 0). Reordering,
/// truncation and header edits all change it.
pub fn aad(header_digest: &[u8; 32], file: u32, chunk: u64, last: bool) -> [u8; 45] {
    let mut a = [0u8; 45];
    a[..32].copy_from_slice(header_digest);
    a[32..36].copy_from_slice(&file.to_be_bytes());
    a[36..44].copy_from_slice(&chunk.to_be_bytes());
    a[44] = u8::from(last);
    a
}

/// SHA-256 of the encoded header.
pub fn header_digest(encoded: &[u8]) -> [u8; 32] {
    Sha256::digest(encoded).into()
}

/// The header tag: AES-GCM over no plaintext with the header's associated
/// data ([`HEADER_FILE_INDEX`], chunk 0, last). It lets a reader check key
/// and header before any data.
pub fn header_tag(cipher: &Aes256Gcm, digest: &[u8; 32]) -> Result<[u8; TAG_LEN], SealError> {
    let tag = cipher
        .encrypt_in_place_detached(
            GenericArray::from_slice(&nonce(HEADER_FILE_INDEX, 0)),
            &aad(digest, HEADER_FILE_INDEX, 0, true),
            &mut [],
        )
        .map_err(|_| SealError::Crypto)?;
    Ok(tag.into())
}
