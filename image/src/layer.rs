//! An OCI image layer (a tar stream, gzip- or zstd-compressed or not) converted to
//! an erofs image that overlayfs can stack in the guest: whiteouts become
//! overlayfs whiteouts (a character device 0:0), an opaque-directory marker
//! becomes `trusted.overlay.opaque = "y"` on its directory.
//!
//! What the tar says is kept exactly: file types, permission bits
//! (set-id and sticky included), numeric owners (PAX `uid`/`gid` over the
//! header's), modification times (whole seconds), device numbers, hard
//! links, symlink targets, long names and extended attributes (PAX
//! `SCHILY.xattr.*`). Directories a tar implies but never lists are made
//! `0755 root:root` with time 0, so the result does not depend on anything
//! outside the layer. A later entry for the same path replaces the earlier
//! one, as extraction would.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Seek, Write};

use crate::erofs::{ErofsError, Image, Kind, Node};

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The tar stream is corrupt or cannot be read.
    #[error("the layer is not a readable tar stream: {0}")]
    Tar(#[source] std::io::Error),
    /// An entry Cocoon cannot represent, or that escapes the layer.
    #[error("layer entry {path:?}: {problem}")]
    Entry {
        /// The entry's path.
        path: String,
        /// Why.
        problem: String,
    },
    /// Writing the image.
    #[error(transparent)]
    Erofs(#[from] ErofsError),
}

fn entry_err(path: &str, problem: impl Into<String>) -> LayerError {
    LayerError::Entry {
        path: path.to_string(),
        problem: problem.into(),
    }
}

/// The components of an entry's path, checked: no `..`, nothing absolute
/// left after the leading `/` and `./` are dropped.
fn components(path: &[u8]) -> Result<Vec<Vec<u8>>, LayerError> {
    let shown = String::from_utf8_lossy(path).into_owned();
    let mut out = Vec::new();
    for c in path.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(entry_err(&shown, "a path with `..` escapes the layer")),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

struct Tree<W: Write + Seek> {
    image: Image<W>,
}

impl<W: Write + Seek> Tree<W> {
    fn children(&mut self, dir: usize) -> &mut BTreeMap<Vec<u8>, usize> {
        match &mut self.image.nodes[dir].kind {
            Kind::Dir(c) => c,
            _ => unreachable!("only directories are walked into"),
        }
    }

    /// The directory at `parts`, made (0755 root:root, time 0) where the
    /// tar did not list it. A non-directory in the way is replaced, as
    /// extraction replaces it.
    fn dir(&mut self, parts: &[Vec<u8>]) -> usize {
        let mut at = 0;
        for p in parts {
            let existing = self.children(at).get(p).copied();
            at = match existing {
                Some(i) if matches!(self.image.nodes[i].kind, Kind::Dir(_)) => i,
                _ => {
                    let i = self.image.nodes.len();
                    self.image.nodes.push(Node::dir(0o755, 0, 0, 0));
                    self.children(at).insert(p.clone(), i);
                    i
                }
            };
        }
        at
    }

    fn lookup(&self, parts: &[Vec<u8>]) -> Option<usize> {
        let mut at = 0;
        for p in parts {
            match &self.image.nodes[at].kind {
                Kind::Dir(c) => at = *c.get(p)?,
                _ => return None,
            }
        }
        Some(at)
    }

    /// Puts `node` at `parts` (replacing what was there; a directory over a
    /// directory keeps its entries).
    fn put(&mut self, parts: &[Vec<u8>], mut node: Node) {
        let Some((name, parent)) = parts.split_last() else {
            // The layer's root itself: its attributes, not its entries.
            if let (Kind::Dir(_), Kind::Dir(old)) = (&node.kind, &self.image.nodes[0].kind) {
                node.kind = Kind::Dir(old.clone());
                self.image.nodes[0] = node;
            }
            return;
        };
        let dir = self.dir(parent);
        if let Some(&old) = self.children(dir).get(name) {
            if let (Kind::Dir(_), Kind::Dir(entries)) = (&node.kind, &self.image.nodes[old].kind) {
                node.kind = Kind::Dir(entries.clone());
                self.image.nodes[old] = node;
                return;
            }
        }
        let i = self.image.nodes.len();
        self.image.nodes.push(node);
        self.children(dir).insert(name.clone(), i);
    }
}

/// Reads `layer` (tar, or tar compressed with gzip or zstd, told by their
/// magic numbers) and writes its erofs image
/// to `out`; returns the writer and the image's length.
pub fn to_erofs<W: Write + Seek>(
    layer: impl Read,
    out: W,
    uuid: [u8; 16],
) -> Result<(W, u64), LayerError> {
    let mut buffered = BufReader::new(layer);
    let head = buffered.fill_buf().map_err(LayerError::Tar)?;
    let reader: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(buffered))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(buffered).map_err(LayerError::Tar)?)
    } else {
        Box::new(buffered)
    };
    let mut archive = tar::Archive::new(reader);
    let root = Node::dir(0o755, 0, 0, 0);
    let mut tree = Tree {
        image: Image::new(out, root, uuid)?,
    };
    for entry in archive.entries().map_err(LayerError::Tar)? {
        let mut entry = entry.map_err(LayerError::Tar)?;
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let parts = components(&raw_path)?;
        let header = entry.header().clone();
        let kind = header.entry_type();
        if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            continue;
        }
        // Owner, time, xattrs; PAX records override the header's fields.
        let mut uid = header.uid().map_err(LayerError::Tar)?;
        let mut gid = header.gid().map_err(LayerError::Tar)?;
        let mut xattrs = BTreeMap::new();
        if let Some(pax) = entry.pax_extensions().map_err(LayerError::Tar)? {
            for ext in pax {
                let ext = ext.map_err(LayerError::Tar)?;
                let Ok(key) = ext.key() else { continue };
                let number = || {
                    std::str::from_utf8(ext.value_bytes())
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok())
                        .ok_or_else(|| entry_err(&shown, format!("PAX {key} is not a number")))
                };
                if key == "uid" {
                    uid = number()?;
                } else if key == "gid" {
                    gid = number()?;
                } else if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    xattrs.insert(name.as_bytes().to_vec(), ext.value_bytes().to_vec());
                } else if key.starts_with("SCHILY.acl.") || key.starts_with("GNU.sparse.") {
                    return Err(entry_err(
                        &shown,
                        format!("PAX {key}: textual ACLs and sparse files are not supported"),
                    ));
                }
            }
        }
        let id = |v: u64, what: &str| {
            u32::try_from(v).map_err(|_| entry_err(&shown, format!("{what} {v} is over 2^32")))
        };
        let (uid, gid) = (id(uid, "uid")?, id(gid, "gid")?);
        let perm = u16::try_from(header.mode().map_err(LayerError::Tar)? & 0o7777).unwrap_or(0);
        let mtime = header.mtime().map_err(LayerError::Tar)?;
        let node = |kind: Kind| Node {
            kind,
            perm,
            uid,
            gid,
            mtime,
            xattrs: xattrs.clone(),
        };
        // Whiteouts.
        if let Some((name, parent)) = parts.split_last() {
            if name == b".wh..wh..opq" {
                let dir = tree.dir(parent);
                tree.image.nodes[dir]
                    .xattrs
                    .insert(b"trusted.overlay.opaque".to_vec(), b"y".to_vec());
                continue;
            }
            if let Some(hidden) = name.strip_prefix(b".wh.") {
                let mut target = parent.to_vec();
                target.push(hidden.to_vec());
                let mut w = node(Kind::Char(0, 0));
                w.perm = 0;
                w.xattrs.clear();
                tree.put(&target, w);
                continue;
            }
        }
        use tar::EntryType as T;
        let made = match kind {
            T::Regular | T::Continuous => {
                let size = entry.size();
                let blkaddr = tree.image.add_data(&shown, &mut entry, size)?;
                node(Kind::File { blkaddr, size })
            }
            T::Directory => node(Kind::Dir(BTreeMap::new())),
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| entry_err(&shown, "a symlink without a target"))?;
                node(Kind::Symlink(target.into_owned()))
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| entry_err(&shown, "a hard link without a target"))?;
                let to = components(&target)?;
                let Some(existing) = tree.lookup(&to) else {
                    return Err(entry_err(
                        &shown,
                        format!(
                            "a hard link to {:?}, which the layer does not hold before it",
                            String::from_utf8_lossy(&target)
                        ),
                    ));
                };
                if matches!(tree.image.nodes[existing].kind, Kind::Dir(_)) {
                    return Err(entry_err(&shown, "a hard link to a directory"));
                }
                if let Some((name, parent)) = parts.split_last() {
                    let dir = tree.dir(parent);
                    tree.children(dir).insert(name.clone(), existing);
                }
                continue;
            }
            T::Char | T::Block => {
                let major = header.device_major().map_err(LayerError::Tar)?.unwrap_or(0);
                let minor = header.device_minor().map_err(LayerError::Tar)?.unwrap_or(0);
                if major >= 1 << 12 || minor >= 1 << 20 {
                    return Err(entry_err(
                        &shown,
                        format!("device {major}:{minor} does not fit Linux's 12:20 bits"),
                    ));
                }
                node(if kind == T::Char {
                    Kind::Char(major, minor)
                } else {
                    Kind::Block(major, minor)
                })
            }
            T::Fifo => node(Kind::Fifo),
            other => {
                return Err(entry_err(
                    &shown,
                    format!(
                        "tar entry type {other:?} is not supported (sparse or vendor-specific)"
                    ),
                ))
            }
        };
        tree.put(&parts, made);
    }
    Ok(tree.image.finish()?)
}
