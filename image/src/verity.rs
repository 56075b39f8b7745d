//! dm-verity hash trees, byte for byte as `veritysetup format` writes them
//! (format version 1, the Linux kernel's `dm-verity` target).
//!
//! The data is cut into blocks; each block's digest is
//! `H(salt || block)`. Digests are packed into hash blocks (zero-padded),
//! which are hashed the same way, level after level, until one hash block
//! is left: its digest is the root hash (with a single data block there is
//! no level, and the block's digest is the root). The hash device holds a 512-byte
//! superblock in its first hash block, then the levels from the top (one
//! block) down to the one over the data.
//!
//! Everything is deterministic given the salt and UUID: the caller chooses
//! them (veritysetup picks random ones unless told), so the same layer
//! always yields the same root hash.

use std::io::{Read, Write};

use sha2::{Digest, Sha256};

/// Block size of data and hash blocks (what veritysetup uses by default,
/// and the page size dm-verity needs for erofs).
pub const BLOCK_SIZE: usize = 4096;
/// SHA-256 digest length.
const DIGEST: usize = 32;
/// Digests per hash block.
const FANOUT: usize = BLOCK_SIZE / DIGEST;
/// The most salt the superblock holds.
pub const MAX_SALT: usize = 256;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    /// Reading the data or writing the tree failed.
    #[error("{what}: {source}")]
    Io {
        /// The step.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The data is not a whole number of blocks, or is empty.
    #[error("the data is {len} bytes: dm-verity needs a non-zero multiple of {BLOCK_SIZE}")]
    BadLength {
        /// The data's length.
        len: u64,
    },
    /// The salt is too long for the superblock.
    #[error("the salt is {0} bytes; at most {MAX_SALT}")]
    SaltTooLong(usize),
    /// A root hash (from a policy, say) is not 32 bytes of hex.
    #[error("root hash {0:?}: must be 64 hex digits (a SHA-256 digest)")]
    BadRootHash(String),
}

/// The parameters of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// Salt hashed before every block (may be empty).
    pub salt: Vec<u8>,
    /// The superblock's UUID (veritysetup's `--uuid`).
    pub uuid: [u8; 16],
}

/// A built tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    /// The root hash.
    pub root: [u8; DIGEST],
    /// Number of data blocks covered.
    pub data_blocks: u64,
    /// Bytes of the hash device written (superblock block + levels).
    pub hash_bytes: u64,
}

impl Tree {
    /// The root hash in hex, as veritysetup prints it.
    pub fn root_hex(&self) -> String {
        self.root.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Parses a root hash given as 64 hex digits.
pub fn parse_root(hex: &str) -> Result<[u8; DIGEST], VerityError> {
    let bad = || VerityError::BadRootHash(hex.to_string());
    if hex.len() != 2 * DIGEST || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; DIGEST];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

fn digest(salt: &[u8], block: &[u8]) -> [u8; DIGEST] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// Hashes `digests` into hash blocks: the next level's digests, and the
/// level's blocks as they go on disk.
fn level(salt: &[u8], digests: &[[u8; DIGEST]]) -> (Vec<[u8; DIGEST]>, Vec<u8>) {
    let mut blocks = Vec::with_capacity(digests.len().div_ceil(FANOUT) * BLOCK_SIZE);
    let mut next = Vec::with_capacity(digests.len().div_ceil(FANOUT));
    for chunk in digests.chunks(FANOUT) {
        let start = blocks.len();
        for d in chunk {
            blocks.extend_from_slice(d);
        }
        blocks.resize(start + BLOCK_SIZE, 0);
        next.push(digest(salt, &blocks[start..]));
    }
    (next, blocks)
}

/// The 512-byte superblock (`struct verity_sb`), in a zero-padded block.
fn superblock(params: &Params, data_blocks: u64) -> Vec<u8> {
    let mut sb = Vec::with_capacity(BLOCK_SIZE);
    sb.extend_from_slice(b"verity\0\0");
    sb.extend_from_slice(&1u32.to_le_bytes()); // version
    sb.extend_from_slice(&1u32.to_le_bytes()); // hash_type: salt first
    sb.extend_from_slice(&params.uuid);
    let mut algorithm = [0u8; 32];
    algorithm[..6].copy_from_slice(b"sha256");
    sb.extend_from_slice(&algorithm);
    let block = u32::try_from(BLOCK_SIZE).unwrap_or(u32::MAX);
    sb.extend_from_slice(&block.to_le_bytes()); // data_block_size
    sb.extend_from_slice(&block.to_le_bytes()); // hash_block_size
    sb.extend_from_slice(&data_blocks.to_le_bytes());
    let salt_len = u16::try_from(params.salt.len()).unwrap_or(u16::MAX);
    sb.extend_from_slice(&salt_len.to_le_bytes());
    sb.extend_from_slice(&[0u8; 6]);
    let mut salt = [0u8; MAX_SALT];
    salt[..params.salt.len()].copy_from_slice(&params.salt);
    sb.extend_from_slice(&salt);
    sb.resize(BLOCK_SIZE, 0);
    sb
}

/// Reads `data` (a whole number of blocks, `len` bytes) and writes its hash
/// device to `out`: what `veritysetup format --salt S --uuid U` writes.
pub fn format(
    data: &mut impl Read,
    len: u64,
    params: &Params,
    out: &mut impl Write,
) -> Result<Tree, VerityError> {
    if params.salt.len() > MAX_SALT {
        return Err(VerityError::SaltTooLong(params.salt.len()));
    }
    let block = BLOCK_SIZE as u64;
    if len == 0 || !len.is_multiple_of(block) {
        return Err(VerityError::BadLength { len });
    }
    let data_blocks = len / block;
    let mut digests = Vec::with_capacity(usize::try_from(data_blocks).unwrap_or(0));
    let mut buf = vec![0u8; BLOCK_SIZE];
    for _ in 0..data_blocks {
        data.read_exact(&mut buf)
            .map_err(|source| VerityError::Io {
                what: "read the data",
                source,
            })?;
        digests.push(digest(&params.salt, &buf));
    }
    // Levels from the one over the data up to a single block; none for a
    // single data block, whose digest is the root (as the kernel and
    // veritysetup count levels).
    let mut levels = Vec::new();
    while digests.len() > 1 {
        let (next, blocks) = level(&params.salt, &digests);
        levels.push(blocks);
        digests = next;
    }
    let mut written = 0u64;
    let mut put = |bytes: &[u8]| -> Result<(), VerityError> {
        out.write_all(bytes).map_err(|source| VerityError::Io {
            what: "write the hash tree",
            source,
        })?;
        written += bytes.len() as u64;
        Ok(())
    };
    put(&superblock(params, data_blocks))?;
    for l in levels.iter().rev() {
        put(l)?;
    }
    Ok(Tree {
        root: digests[0],
        data_blocks,
        hash_bytes: written,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect()
    }

    const UUID: [u8; 16] = [
        0x5e, 0x0c, 0x0c, 0x00, 0x1a, 0x7e, 0x4b, 0x2d, 0x9f, 0x10, 0x22, 0x33, 0x44, 0x55, 0x66,
        0x77,
    ];
    const UUID_TEXT: &str = "5e0c0c00-1a7e-4b2d-9f10-223344556677";

    fn tree_of(data: &[u8], salt: &[u8]) -> (Tree, Vec<u8>) {
        let params = Params {
            salt: salt.to_vec(),
            uuid: UUID,
        };
        let mut hash = Vec::new();
        let t = format(&mut &data[..], data.len() as u64, &params, &mut hash).unwrap();
        (t, hash)
    }

    /// Computed here from first principles, independently of `format`:
    /// one block (no level: the root is its digest) and two blocks (one
    /// hash block holding both digests, zero-padded).
    #[test]
    fn small_trees_by_hand() {
        let data = vec![0x5au8; BLOCK_SIZE];
        let (t, hash) = tree_of(&data, b"");
        let root: [u8; 32] = Sha256::digest(&data).into();
        assert_eq!(t.root, root);
        assert_eq!(t.data_blocks, 1);
        assert_eq!(hash.len(), BLOCK_SIZE);
        assert_eq!(&hash[..8], b"verity\0\0");

        let mut data = vec![0x5au8; BLOCK_SIZE];
        data.extend(vec![0xa5u8; BLOCK_SIZE]);
        let (t, hash) = tree_of(&data, b"salt");
        let leaf = |b: &[u8]| -> [u8; 32] { Sha256::digest([&b"salt"[..], b].concat()).into() };
        let mut block = [leaf(&data[..BLOCK_SIZE]), leaf(&data[BLOCK_SIZE..])].concat();
        block.resize(BLOCK_SIZE, 0);
        assert_eq!(t.root, leaf(&block));
        assert_eq!(hash.len(), 2 * BLOCK_SIZE);
        assert_eq!(&hash[BLOCK_SIZE..], &block[..]);
    }

    /// The same bytes as `veritysetup format` (cryptsetup) for trees of
    /// one, two and three levels, with and without salt; and
    /// `veritysetup verify` accepts ours. Skipped with the reason when
    /// veritysetup is missing (cryptsetup-bin, `make deps`).
    #[test]
    fn the_same_tree_as_veritysetup() {
        let veritysetup = ["/usr/sbin/veritysetup", "/sbin/veritysetup"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(veritysetup) = veritysetup else {
            eprintln!("SKIP the_same_tree_as_veritysetup: no veritysetup (cryptsetup-bin)");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let salt = pseudo_random(32, 7);
        for (blocks, salt) in [
            (1, &salt[..]),
            (2, &salt[..]),
            (128, &salt[..]),
            (129, &salt[..]),
            (129, &b""[..]),
            (16_385, &salt[..]),
        ] {
            let data = pseudo_random(blocks * BLOCK_SIZE, blocks as u64);
            let (ours, hash) = tree_of(&data, salt);
            let data_path = dir.path().join("data");
            let theirs_path = dir.path().join("theirs");
            let ours_path = dir.path().join("ours");
            std::fs::write(&data_path, &data).unwrap();
            std::fs::write(&ours_path, &hash).unwrap();
            let _ = std::fs::remove_file(&theirs_path);
            let salt_arg = if salt.is_empty() {
                "-".to_string()
            } else {
                hex::encode(salt)
            };
            let o = Command::new(veritysetup)
                .arg("format")
                .arg(&data_path)
                .arg(&theirs_path)
                .args(["--salt", &salt_arg, "--uuid", UUID_TEXT])
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let text = String::from_utf8_lossy(&o.stdout);
            let root = text
                .lines()
                .find_map(|l| l.strip_prefix("Root hash:"))
                .unwrap()
                .trim();
            assert_eq!(ours.root_hex(), root, "{blocks} blocks");
            assert_eq!(
                std::fs::read(&theirs_path).unwrap(),
                hash,
                "{blocks} blocks: hash device bytes"
            );
            let o = Command::new(veritysetup)
                .arg("verify")
                .arg(&data_path)
                .arg(&ours_path)
                .arg(root)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            // One flipped byte in the data: veritysetup refuses our tree.
            let mut bad = data.clone();
            bad[BLOCK_SIZE / 2] ^= 1;
            std::fs::write(&data_path, &bad).unwrap();
            let o = Command::new(veritysetup)
                .arg("verify")
                .arg(&data_path)
                .arg(&ours_path)
                .arg(root)
                .output()
                .unwrap();
            assert!(
                !o.status.success(),
                "{blocks} blocks: a corrupted block verified"
            );
        }
    }

    #[test]
    fn bad_input_is_named() {
        let params = Params {
            salt: vec![],
            uuid: UUID,
        };
        let e = format(&mut &[0u8; 100][..], 100, &params, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("multiple of 4096"), "{e}");
        let e = format(&mut &[][..], 0, &params, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("non-zero"), "{e}");
        let long = Params {
            salt: vec![0; MAX_SALT + 1],
            uuid: UUID,
        };
        let e = format(&mut &[0u8; 4096][..], 4096, &long, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("at most 256"), "{e}");
        // Short data: the read fails, named.
        let e = format(&mut &[0u8; 4096][..], 8192, &params, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("read the data"), "{e}");
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(66)] {
            let e = parse_root(bad).unwrap_err();
            assert!(e.to_string().contains("64 hex digits"), "{e}");
        }
        assert_eq!(parse_root(&"ab".repeat(32)).unwrap(), [0xab; 32]);
    }
}
