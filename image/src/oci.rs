//! The layers of an OCI image (an image layout directory, or the same in a
//! tar archive as `ctr export` and `docker save` write it) and the root
//! hash each one gets as a verified layer: what a pod's policy allows.
//!
//! Every blob read is checked against its descriptor's digest and size, so
//! the hashes name exactly the layers the image's manifest names.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use sha2::{Digest as _, Sha256};

use crate::{layer, verity};

/// The UUID in every layer image's erofs superblock: fixed, as it is part
/// of the bytes the root hash covers.
pub const LAYER_FS_UUID: [u8; 16] = [0; 16];

/// The verity parameters of every layer image: no salt (the root hash is
/// then a plain function of the layer; a salt guards against precomputed
/// collisions, which SHA-256 does not need) and an all-zero UUID.
pub fn layer_params() -> verity::Params {
    verity::Params {
        salt: Vec::new(),
        uuid: [0; 16],
    }
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// Reading the image.
    #[error("{path}: {source}")]
    Io {
        /// What was read.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The image is not what the OCI image spec describes.
    #[error("{path}: {problem}")]
    Invalid {
        /// Where.
        path: String,
        /// Why.
        problem: String,
    },
    /// A layer cannot be converted.
    #[error("layer {digest}: {source}")]
    Layer {
        /// The layer's digest.
        digest: String,
        /// Why.
        #[source]
        source: layer::LayerError,
    },
    /// Hashing a layer image.
    #[error("layer {digest}: {source}")]
    Verity {
        /// The layer's digest.
        digest: String,
        /// Why.
        #[source]
        source: verity::VerityError,
    },
}

fn invalid(path: &str, problem: impl Into<String>) -> OciError {
    OciError::Invalid {
        path: path.to_string(),
        problem: problem.into(),
    }
}

/// One layer's policy entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerHash {
    /// The layer blob's digest (`sha256:...`).
    pub digest: String,
    /// The dm-verity root hash of its erofs image (hex).
    pub root_hash: String,
    /// The erofs image's size in bytes.
    pub image_bytes: u64,
}

/// Where the blobs are.
enum Store {
    Dir(PathBuf),
    /// A tar archive: each member's data offset and size.
    Tar {
        file: PathBuf,
        members: HashMap<String, (u64, u64)>,
    },
}

/// The largest JSON document (index, manifest) read.
const MAX_JSON: u64 = 4 << 20;

impl Store {
    fn open(path: &Path) -> Result<Self, OciError> {
        let shown = path.display().to_string();
        let io = |source| OciError::Io {
            path: shown.clone(),
            source,
        };
        if path.is_dir() {
            return Ok(Self::Dir(path.to_path_buf()));
        }
        let file = File::open(path).map_err(io)?;
        let mut archive = tar::Archive::new(file);
        let mut members = HashMap::new();
        for entry in archive.entries_with_seek().map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = String::from_utf8_lossy(&entry.path_bytes())
                .trim_start_matches("./")
                .to_string();
            members.insert(name, (entry.raw_file_position(), entry.size()));
        }
        Ok(Self::Tar {
            file: path.to_path_buf(),
            members,
        })
    }

    /// `name` (a path in the layout) and its size.
    fn open_member(&self, name: &str) -> Result<(Box<dyn Read>, u64), OciError> {
        match self {
            Self::Dir(dir) => {
                let p = dir.join(name);
                let io = |source| OciError::Io {
                    path: p.display().to_string(),
                    source,
                };
                let f = File::open(&p).map_err(io)?;
                let len = f.metadata().map_err(io)?.len();
                Ok((Box::new(f), len))
            }
            Self::Tar { file, members } => {
                let &(offset, size) = members.get(name).ok_or_else(|| {
                    invalid(&file.display().to_string(), format!("holds no {name}"))
                })?;
                let io = |source| OciError::Io {
                    path: format!("{}:{name}", file.display()),
                    source,
                };
                let mut f = File::open(file).map_err(io)?;
                f.seek(SeekFrom::Start(offset)).map_err(io)?;
                Ok((Box::new(f.take(size)), size))
            }
        }
    }

    fn json(&self, name: &str) -> Result<Vec<u8>, OciError> {
        let (r, len) = self.open_member(name)?;
        if len > MAX_JSON {
            return Err(invalid(
                name,
                format!("{len} bytes is too large for a JSON document"),
            ));
        }
        let mut out = Vec::new();
        r.take(MAX_JSON)
            .read_to_end(&mut out)
            .map_err(|source| OciError::Io {
                path: name.to_string(),
                source,
            })?;
        Ok(out)
    }

    /// A blob's path, for a sha256 descriptor.
    fn blob_name(d: &Descriptor) -> Result<String, OciError> {
        let digest = d.digest();
        if digest.algorithm().as_ref() != "sha256" {
            return Err(invalid(
                digest.as_ref(),
                "only sha256 digests are supported",
            ));
        }
        Ok(format!("blobs/sha256/{}", digest.digest()))
    }

    /// A small blob, checked against its descriptor.
    fn json_blob(&self, d: &Descriptor) -> Result<Vec<u8>, OciError> {
        let bytes = self.json(&Self::blob_name(d)?)?;
        check(d, &Sha256::digest(&bytes).into(), bytes.len() as u64)?;
        Ok(bytes)
    }
}

fn check(d: &Descriptor, sha: &[u8; 32], len: u64) -> Result<(), OciError> {
    let want = d.digest().digest();
    let got = hex(sha);
    if got != want || len != d.size() {
        return Err(invalid(
            d.digest().as_ref(),
            format!(
                "the blob does not match its descriptor (sha256:{got}, {len} bytes; descriptor {} bytes)",
                d.size()
            ),
        ));
    }
    Ok(())
}

/// Hashes and counts what passes through.
struct Hashing<R> {
    inner: R,
    sha: Sha256,
    len: u64,
}

/// A layer blob converted into an erofs image.
pub(crate) struct Converted {
    /// The image's length.
    pub len: u64,
    /// SHA-256 of the whole blob, as read.
    pub sha256: [u8; 32],
    /// The blob's length.
    pub blob_len: u64,
}

/// Converts the layer `blob` into an erofs image written to `image`, with
/// the fixed layer parameters, and reads the blob to its end so that its
/// digest covers every byte (what the tar reader left unread included).
pub(crate) fn convert_blob(blob: impl Read, image: File) -> Result<Converted, layer::LayerError> {
    let mut hashing = Hashing {
        inner: blob,
        sha: Sha256::new(),
        len: 0,
    };
    let (_, len) = layer::to_erofs(&mut hashing, image, LAYER_FS_UUID)?;
    std::io::copy(&mut hashing, &mut std::io::sink()).map_err(layer::LayerError::Tar)?;
    Ok(Converted {
        len,
        sha256: hashing.sha.finalize().into(),
        blob_len: hashing.len,
    })
}

/// The dm-verity tree (layer parameters) of the `len`-byte image at the
/// start of `image`, written to `out`.
pub(crate) fn layer_tree(
    mut image: File,
    len: u64,
    out: &mut impl std::io::Write,
) -> Result<verity::Tree, verity::VerityError> {
    image
        .seek(SeekFrom::Start(0))
        .map_err(|source| verity::VerityError::Io {
            what: "read the data",
            source,
        })?;
    verity::format(
        &mut std::io::BufReader::new(image),
        len,
        &layer_params(),
        out,
    )
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// The entry of `index` to follow: its only one, or the linux/amd64 one
/// of several.
pub fn pick_manifest(index: &ImageIndex) -> Result<&Descriptor, String> {
    let manifests = index.manifests();
    if manifests.len() == 1 {
        return Ok(&manifests[0]);
    }
    manifests
        .iter()
        .find(|m| {
            m.platform().as_ref().is_some_and(|p| {
                p.os().to_string() == "linux" && p.architecture().to_string() == "amd64"
            })
        })
        .ok_or_else(|| format!("{} manifests and none for linux/amd64", manifests.len()))
}

/// The image manifest `index` leads to: its only one, or the linux/amd64
/// one of several (one level of nested index followed).
fn manifest(store: &Store, index: &ImageIndex, depth: u8) -> Result<ImageManifest, OciError> {
    let chosen = pick_manifest(index).map_err(|p| invalid("index.json", p))?;
    let bytes = store.json_blob(chosen)?;
    if *chosen.media_type() == MediaType::ImageIndex {
        if depth > 0 {
            return Err(invalid(
                chosen.digest().as_ref(),
                "an index nested too deep",
            ));
        }
        let nested = ImageIndex::from_reader(&bytes[..])
            .map_err(|e| invalid(chosen.digest().as_ref(), e.to_string()))?;
        return manifest(store, &nested, depth + 1);
    }
    ImageManifest::from_reader(&bytes[..])
        .map_err(|e| invalid(chosen.digest().as_ref(), e.to_string()))
}

/// The policy entry of one layer blob read from `blob`, checked against
/// its descriptor `d` (digest and size); the layer image is built in a
/// temporary file in `scratch`.
pub fn hash_layer_blob(
    blob: impl Read,
    d: &Descriptor,
    scratch: &Path,
) -> Result<LayerHash, OciError> {
    let digest = d.digest().to_string();
    let tmp = tempfile::tempfile_in(scratch).map_err(|source| OciError::Io {
        path: scratch.display().to_string(),
        source,
    })?;
    let image = tmp.try_clone().map_err(|source| OciError::Io {
        path: scratch.display().to_string(),
        source,
    })?;
    let converted = convert_blob(blob, image).map_err(|source| OciError::Layer {
        digest: digest.clone(),
        source,
    })?;
    check(d, &converted.sha256, converted.blob_len)?;
    let len = converted.len;
    let tree = layer_tree(tmp, len, &mut std::io::sink()).map_err(|source| OciError::Verity {
        digest: digest.clone(),
        source,
    })?;
    Ok(LayerHash {
        digest,
        root_hash: tree.root_hex(),
        image_bytes: len,
    })
}

/// The `PATH` containerd gives a container whose image sets none (`ctr
/// run` and CRI alike).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a container of an image runs when nothing overrides the image's
/// config: the pins `cocoon policy` writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageProcess {
    /// `Entrypoint` followed by `Cmd`.
    pub args: Vec<String>,
    /// `WorkingDir`, or `/`.
    pub cwd: String,
    /// `Env`, with containerd's default `PATH` when it has none.
    pub env: Vec<String>,
}

/// The process of an image config document (`application/vnd.oci.image.
/// config.v1+json` or Docker's, which has the same fields); `at` names the
/// document in errors.
pub fn image_process(config: &[u8], at: &str) -> Result<ImageProcess, OciError> {
    let c = ImageConfiguration::from_reader(config).map_err(|e| invalid(at, e.to_string()))?;
    let cfg = c.config().clone().unwrap_or_default();
    let mut args: Vec<String> = cfg.entrypoint().clone().unwrap_or_default();
    args.extend(cfg.cmd().clone().unwrap_or_default());
    if args.is_empty() {
        return Err(invalid(
            at,
            "the image's config has neither Entrypoint nor Cmd: a container of it needs a command of its own (write `args` into the policy by hand)",
        ));
    }
    let mut env = cfg.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    let cwd = cfg
        .working_dir()
        .clone()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".to_string());
    Ok(ImageProcess { args, cwd, env })
}

/// The process of the image at `image` (a layout directory or an archive
/// of one), from its config.
pub fn process_of(image: &Path) -> Result<ImageProcess, OciError> {
    let store = Store::open(image)?;
    let index_bytes = store.json("index.json")?;
    let index = ImageIndex::from_reader(&index_bytes[..])
        .map_err(|e| invalid("index.json", e.to_string()))?;
    let manifest = manifest(&store, &index, 0)?;
    let config = store.json_blob(manifest.config())?;
    image_process(&config, manifest.config().digest().as_ref())
}

/// The root hash of each layer of the image at `image` (a layout directory
/// or an archive of one), bottom layer first. Layer images are built in
/// `scratch` and removed.
pub fn layer_hashes(image: &Path, scratch: &Path) -> Result<Vec<LayerHash>, OciError> {
    let store = Store::open(image)?;
    let index_bytes = store.json("index.json")?;
    let index = ImageIndex::from_reader(&index_bytes[..])
        .map_err(|e| invalid("index.json", e.to_string()))?;
    let manifest = manifest(&store, &index, 0)?;
    let mut out = Vec::new();
    for d in manifest.layers() {
        let (reader, _) = store.open_member(&Store::blob_name(d)?)?;
        out.push(hash_layer_blob(reader, d, scratch)?);
    }
    Ok(out)
}
