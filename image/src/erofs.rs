//! A minimal, deterministic erofs writer: uncompressed, 4 KiB blocks,
//! extended (64-byte) inodes, every file's data in whole blocks
//! (`EROFS_INODE_FLAT_PLAIN`), inline extended attributes.
//!
//! Determinism is the point: the image is a function of the tree and the
//! order file data was added in, nothing else (no clock, no random UUID,
//! no readdir order), so a layer's root hash can be computed anywhere.
//!
//! Layout: block 0 holds the superblock (at byte 1024); file data follows
//! in the order it was added; then symlink targets and directories; then
//! the metadata area (`meta_blkaddr`) with every inode, the root first,
//! the others breadth-first in name order.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};

/// Block size in bytes.
const BLOCK_BYTES: usize = 4096;
/// Block size (4 KiB: the page size the kernel driver needs).
pub const BLOCK: u64 = BLOCK_BYTES as u64;
const BLOCK_BITS: u8 = 12;
const MAGIC: u32 = 0xE0F5_E1E2;
const SUPER_OFFSET: u64 = 1024;
/// `sizeof(struct erofs_inode_extended)`.
const INODE_EXTENDED: usize = 64;
/// `sizeof(struct erofs_dirent)`.
const DIRENT: usize = 12;
/// `sizeof(struct erofs_xattr_ibody_header)`.
const XATTR_HEADER: usize = 12;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ErofsError {
    /// Writing the image (or reading a file's data) failed.
    #[error("{what}: {source}")]
    Io {
        /// The step.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Something the format cannot hold.
    #[error("{path}: {problem}")]
    Unsupported {
        /// The entry.
        path: String,
        /// Why.
        problem: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ErofsError {
    let what = what.into();
    move |source| ErofsError::Io { what, source }
}

/// What an inode is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory: name -> node index.
    Dir(BTreeMap<Vec<u8>, usize>),
    /// A regular file whose data starts at block `blkaddr`.
    File {
        /// First data block.
        blkaddr: u32,
        /// Size in bytes.
        size: u64,
    },
    /// A symbolic link to this target.
    Symlink(Vec<u8>),
    /// A character device (major, minor).
    Char(u32, u32),
    /// A block device (major, minor).
    Block(u32, u32),
    /// A FIFO.
    Fifo,
    /// A socket.
    Socket,
}

/// One inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// What it is.
    pub kind: Kind,
    /// Permission bits (`0o7777`).
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time (seconds since the epoch).
    pub mtime: u64,
    /// Extended attributes, full names (`security.capability`).
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Node {
    /// A directory with no entries.
    pub fn dir(perm: u16, uid: u32, gid: u32, mtime: u64) -> Self {
        Self {
            kind: Kind::Dir(BTreeMap::new()),
            perm,
            uid,
            gid,
            mtime,
            xattrs: BTreeMap::new(),
        }
    }

    fn format_bits(&self) -> u16 {
        match self.kind {
            Kind::Dir(_) => 0o040_000,
            Kind::File { .. } => 0o100_000,
            Kind::Symlink(_) => 0o120_000,
            Kind::Char(..) => 0o020_000,
            Kind::Block(..) => 0o060_000,
            Kind::Fifo => 0o010_000,
            Kind::Socket => 0o140_000,
        }
    }

    /// `EROFS_FT_*`.
    fn file_type(&self) -> u8 {
        match self.kind {
            Kind::File { .. } => 1,
            Kind::Dir(_) => 2,
            Kind::Char(..) => 3,
            Kind::Block(..) => 4,
            Kind::Fifo => 5,
            Kind::Socket => 6,
            Kind::Symlink(_) => 7,
        }
    }
}

/// An xattr name split into erofs's prefix index and the rest.
fn xattr_prefix(name: &[u8]) -> Option<(u8, &[u8])> {
    for (prefix, index) in [(&b"user."[..], 1u8), (b"trusted.", 4), (b"security.", 6)] {
        if let Some(rest) = name.strip_prefix(prefix) {
            return Some((index, rest));
        }
    }
    match name {
        b"system.posix_acl_access" => Some((2, b"")),
        b"system.posix_acl_default" => Some((3, b"")),
        _ => None,
    }
}

/// The inline xattr body of `node` (empty without xattrs), and
/// `i_xattr_icount`.
fn xattr_body(path: &str, node: &Node) -> Result<(Vec<u8>, u16), ErofsError> {
    if node.xattrs.is_empty() {
        return Ok((Vec::new(), 0));
    }
    let bad = |problem: String| ErofsError::Unsupported {
        path: path.to_string(),
        problem,
    };
    let mut body = vec![0u8; XATTR_HEADER];
    for (name, value) in &node.xattrs {
        let (index, rest) = xattr_prefix(name).ok_or_else(|| {
            bad(format!(
                "extended attribute {:?}: only user., trusted., security. and POSIX ACLs are kept",
                String::from_utf8_lossy(name)
            ))
        })?;
        let name_len = u8::try_from(rest.len())
            .map_err(|_| bad("an extended attribute name over 255 bytes".into()))?;
        let value_len = u16::try_from(value.len())
            .map_err(|_| bad("an extended attribute value over 64 KiB".into()))?;
        body.push(name_len);
        body.push(index);
        body.extend_from_slice(&value_len.to_le_bytes());
        body.extend_from_slice(rest);
        body.extend_from_slice(value);
        body.resize(body.len().next_multiple_of(4), 0);
    }
    let icount = u16::try_from((body.len() - XATTR_HEADER) / 4 + 1)
        .map_err(|_| bad("too many extended attributes for one inode".into()))?;
    Ok((body, icount))
}

/// Linux's `new_encode_dev`.
fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// An image being written to `out`.
#[derive(Debug)]
pub struct Image<W: Write + Seek> {
    out: W,
    /// Every inode; 0 is the root directory.
    pub nodes: Vec<Node>,
    /// The next free block.
    next_block: u64,
    uuid: [u8; 16],
}

impl<W: Write + Seek> Image<W> {
    /// Starts an image whose root directory is `root` and whose superblock
    /// carries `uuid`.
    pub fn new(mut out: W, root: Node, uuid: [u8; 16]) -> Result<Self, ErofsError> {
        out.seek(SeekFrom::Start(0)).map_err(io("seek"))?;
        out.write_all(&[0u8; BLOCK_BYTES])
            .map_err(io("write the superblock"))?;
        Ok(Self {
            out,
            nodes: vec![root],
            next_block: 1,
            uuid,
        })
    }

    fn blkaddr(&self, path: &str) -> Result<u32, ErofsError> {
        u32::try_from(self.next_block).map_err(|_| ErofsError::Unsupported {
            path: path.into(),
            problem: "the image would exceed 16 TiB".into(),
        })
    }

    /// Writes `size` bytes from `data` as a file's data (zero-padded to a
    /// block) and returns its first block.
    pub fn add_data(
        &mut self,
        path: &str,
        data: &mut impl Read,
        size: u64,
    ) -> Result<u32, ErofsError> {
        let blkaddr = self.blkaddr(path)?;
        self.out
            .seek(SeekFrom::Start(self.next_block * BLOCK))
            .map_err(io("seek"))?;
        let copied = std::io::copy(&mut data.take(size), &mut self.out)
            .map_err(io(format!("{path}: copy the file's data")))?;
        if copied != size {
            return Err(ErofsError::Io {
                what: format!("{path}: the data ended after {copied} of {size} bytes"),
                source: std::io::ErrorKind::UnexpectedEof.into(),
            });
        }
        let pad = size.next_multiple_of(BLOCK) - size;
        self.out
            .write_all(&vec![0u8; usize::try_from(pad).unwrap_or(0)])
            .map_err(io("pad the file's data"))?;
        self.next_block += size.div_ceil(BLOCK);
        Ok(blkaddr)
    }

    /// Lays out the directories and the inodes, writes them and the
    /// superblock, and returns the writer and the image's length (a
    /// whole number of blocks).
    pub fn finish(mut self) -> Result<(W, u64), ErofsError> {
        // Order: the root, then breadth-first in name order; a hard-linked
        // node where it is first met. `parent` of a directory for "..".
        let n = self.nodes.len();
        let mut order = vec![0usize];
        let mut seen = vec![false; n];
        let mut parent = vec![0usize; n];
        let mut nlink = vec![0u32; n];
        let mut paths = vec![String::from("/"); n];
        seen[0] = true;
        let mut i = 0;
        while i < order.len() {
            let dir = order[i];
            i += 1;
            if let Kind::Dir(children) = &self.nodes[dir].kind {
                nlink[dir] += 2; // "." and its entry in the parent (root: "..")
                for (name, &child) in children {
                    if matches!(self.nodes[child].kind, Kind::Dir(_)) {
                        nlink[dir] += 1; // the child's ".."
                        parent[child] = dir;
                    } else {
                        nlink[child] += 1;
                    }
                    if !seen[child] {
                        seen[child] = true;
                        order.push(child);
                        let base = if dir == 0 { "" } else { &paths[dir] };
                        paths[child] = format!("{base}/{}", String::from_utf8_lossy(name));
                    }
                }
            }
        }
        // Inode slots: 32-byte aligned, never across a block boundary.
        let mut bodies = Vec::with_capacity(order.len());
        let mut nid = vec![0u64; n];
        let mut offset = 0u64;
        for &idx in &order {
            let (body, icount) = xattr_body(&paths[idx], &self.nodes[idx])?;
            let size = ((INODE_EXTENDED + body.len()) as u64).next_multiple_of(32);
            if offset % BLOCK + size > BLOCK {
                offset = offset.next_multiple_of(BLOCK);
            }
            nid[idx] = offset / 32;
            offset += size;
            bodies.push((body, icount));
        }
        if nid[0] != 0 {
            return Err(ErofsError::Unsupported {
                path: "/".into(),
                problem: "the root inode must come first".into(),
            });
        }
        // Data of symlinks and directories.
        let mut placed: Vec<(u32, u64)> = vec![(0, 0); n];
        for &idx in &order {
            let path = paths[idx].clone();
            let (bytes, size) = match &self.nodes[idx].kind {
                Kind::Symlink(target) => (target.clone(), target.len() as u64),
                Kind::Dir(children) => {
                    let up = if idx == 0 { 0 } else { parent[idx] };
                    let mut entries: Vec<(&[u8], u64, u8)> =
                        vec![(b".", nid[idx], 2), (b"..", nid[up], 2)];
                    for (name, &child) in children {
                        if name.is_empty() || name.len() > 255 || name.contains(&b'/') {
                            return Err(ErofsError::Unsupported {
                                path,
                                problem: format!(
                                    "entry {:?} is not a file name",
                                    String::from_utf8_lossy(name)
                                ),
                            });
                        }
                        entries.push((name, nid[child], self.nodes[child].file_type()));
                    }
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                    dir_blocks(&entries)
                }
                _ => continue,
            };
            let blkaddr = self.add_data(&path, &mut &bytes[..], bytes.len() as u64)?;
            placed[idx] = (blkaddr, size);
        }
        // The metadata area.
        let meta_blkaddr = self.blkaddr("/")?;
        let meta_start = self.next_block * BLOCK;
        for (k, &idx) in order.iter().enumerate() {
            let node = &self.nodes[idx];
            let (body, icount) = &bodies[k];
            let (size, u) = match &node.kind {
                Kind::File { blkaddr, size } => (*size, *blkaddr),
                Kind::Dir(_) | Kind::Symlink(_) => (placed[idx].1, placed[idx].0),
                Kind::Char(ma, mi) | Kind::Block(ma, mi) => (0, encode_dev(*ma, *mi)),
                Kind::Fifo | Kind::Socket => (0, 0),
            };
            let mut ino = Vec::with_capacity(INODE_EXTENDED + body.len());
            ino.extend_from_slice(&1u16.to_le_bytes()); // extended, FLAT_PLAIN
            ino.extend_from_slice(&icount.to_le_bytes());
            ino.extend_from_slice(&(node.format_bits() | (node.perm & 0o7777)).to_le_bytes());
            ino.extend_from_slice(&0u16.to_le_bytes());
            ino.extend_from_slice(&size.to_le_bytes());
            ino.extend_from_slice(&u.to_le_bytes());
            let ino_no = u32::try_from(k + 1).unwrap_or(u32::MAX);
            ino.extend_from_slice(&ino_no.to_le_bytes());
            ino.extend_from_slice(&node.uid.to_le_bytes());
            ino.extend_from_slice(&node.gid.to_le_bytes());
            ino.extend_from_slice(&node.mtime.to_le_bytes());
            ino.extend_from_slice(&0u32.to_le_bytes()); // mtime_nsec
            ino.extend_from_slice(&nlink[idx].max(1).to_le_bytes());
            ino.extend_from_slice(&[0u8; 16]);
            ino.extend_from_slice(body);
            self.out
                .seek(SeekFrom::Start(meta_start + nid[idx] * 32))
                .map_err(io("seek"))?;
            self.out
                .write_all(&ino)
                .map_err(io(format!("{}: write the inode", paths[idx])))?;
        }
        let total = (meta_start + offset).next_multiple_of(BLOCK);
        self.out
            .seek(SeekFrom::Start(total - 1))
            .map_err(io("seek"))?;
        self.out.write_all(&[0]).map_err(io("pad the image"))?;
        // The superblock.
        let blocks = u32::try_from(total / BLOCK).map_err(|_| ErofsError::Unsupported {
            path: "/".into(),
            problem: "the image would exceed 16 TiB".into(),
        })?;
        let mut sb = Vec::with_capacity(128);
        sb.extend_from_slice(&MAGIC.to_le_bytes());
        sb.extend_from_slice(&0u32.to_le_bytes()); // checksum (feature off)
        sb.extend_from_slice(&0u32.to_le_bytes()); // feature_compat
        sb.push(BLOCK_BITS);
        sb.push(0); // sb_extslots
        sb.extend_from_slice(&0u16.to_le_bytes()); // root_nid
        sb.extend_from_slice(&(order.len() as u64).to_le_bytes()); // inos
        sb.extend_from_slice(&0u64.to_le_bytes()); // build_time
        sb.extend_from_slice(&0u32.to_le_bytes()); // build_time_nsec
        sb.extend_from_slice(&blocks.to_le_bytes());
        sb.extend_from_slice(&meta_blkaddr.to_le_bytes());
        sb.extend_from_slice(&0u32.to_le_bytes()); // xattr_blkaddr
        sb.extend_from_slice(&self.uuid);
        sb.extend_from_slice(&[0u8; 16]); // volume_name
        sb.extend_from_slice(&0u32.to_le_bytes()); // feature_incompat
        sb.resize(128, 0);
        self.out
            .seek(SeekFrom::Start(SUPER_OFFSET))
            .map_err(io("seek"))?;
        self.out
            .write_all(&sb)
            .map_err(io("write the superblock"))?;
        self.out.flush().map_err(io("flush the image"))?;
        Ok((self.out, total))
    }
}

/// Directory blocks for sorted `entries` (name, nid, file type), and the
/// directory's size: whole blocks but the last, which ends after its last
/// name.
fn dir_blocks(entries: &[(&[u8], u64, u8)]) -> (Vec<u8>, u64) {
    let block = BLOCK_BYTES;
    let mut out = Vec::new();
    let mut start = 0;
    while start < entries.len() {
        // As many entries as fit: 12 bytes each plus their names.
        let mut end = start;
        let mut used = 0;
        while end < entries.len() && used + DIRENT + entries[end].0.len() <= block {
            used += DIRENT + entries[end].0.len();
            end += 1;
        }
        let base = out.len();
        let mut nameoff = (end - start) * DIRENT;
        for (name, nid, ft) in &entries[start..end] {
            out.extend_from_slice(&nid.to_le_bytes());
            out.extend_from_slice(&u16::try_from(nameoff).unwrap_or(0).to_le_bytes());
            out.push(*ft);
            out.push(0);
            nameoff += name.len();
        }
        for (name, ..) in &entries[start..end] {
            out.extend_from_slice(name);
        }
        start = end;
        if start < entries.len() {
            out.resize(base + block, 0);
        }
    }
    let size = out.len() as u64;
    (out, size)
}
