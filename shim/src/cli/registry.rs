//! Images straight from a registry for `cocoon policy`: the OCI
//! distribution API (`/v2/<name>/manifests/<reference>`,
//! `/v2/<name>/blobs/<digest>`) over plain HTTP, as a node-local registry
//! (Debian's docker-registry) serves it. Every manifest and blob is checked
//! against the digest that named it.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};
use cocoon_image::oci::{self, LayerHash};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use sha2::{Digest, Sha256};

/// The scheme of registry references (as skopeo spells it).
pub const SCHEME: &str = "docker://";
/// Largest manifest or index read.
const MAX_DOCUMENT: usize = 4 << 20;
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// `docker://HOST[:PORT]/NAME[:TAG|@DIGEST]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host:port`.
    pub authority: String,
    /// Repository name.
    pub name: String,
    /// Tag or digest.
    pub reference: String,
}

impl Reference {
    /// Parses a `docker://` reference; the registry must be named (no
    /// Docker Hub default).
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let rest = s
            .strip_prefix(SCHEME)
            .with_context(|| format!("{s:?} is not a {SCHEME} reference"))?;
        let (authority, path) = rest.split_once('/').with_context(|| {
            format!("{s:?} names no repository: use {SCHEME}HOST:PORT/NAME:TAG")
        })?;
        if authority.is_empty() || authority.contains(['@', ' ']) {
            bail!("{s:?}: {authority:?} is not a registry HOST:PORT");
        }
        let (name, reference) = if let Some((n, d)) = path.split_once('@') {
            (n, d.to_string())
        } else {
            match path.rsplit_once(':') {
                Some((n, t)) if !t.contains('/') => (n, t.to_string()),
                _ => (path, "latest".to_string()),
            }
        };
        let name_ok = !name.is_empty()
            && name.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        if !name_ok {
            bail!(
                "{s:?}: {name:?} is not a repository name (lowercase letters, digits, . _ - and /)"
            );
        }
        if reference.is_empty() {
            bail!("{s:?} has an empty tag");
        }
        Ok(Self {
            authority: authority.to_string(),
            name: name.to_string(),
            reference,
        })
    }
}

/// A GET that follows up to three redirects; returns the response with its
/// body unread.
async fn get(
    authority: &str,
    path: &str,
    accept: Option<&str>,
) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
    let (mut authority, mut path) = (authority.to_string(), path.to_string());
    for _ in 0..4 {
        let stream = tokio::net::TcpStream::connect(&authority)
            .await
            .with_context(|| format!("connect to the registry at {authority}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP to {authority}"))?;
        tokio::spawn(conn);
        let mut req = hyper::Request::get(path.as_str()).header(hyper::header::HOST, &authority);
        if let Some(a) = accept {
            req = req.header(hyper::header::ACCEPT, a);
        }
        let resp = sender
            .send_request(req.body(Empty::<Bytes>::new())?)
            .await
            .with_context(|| format!("GET http://{authority}{path}"))?;
        let status = resp.status();
        if status.is_redirection() {
            let to = resp
                .headers()
                .get(hyper::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            if let Some(rest) = to.strip_prefix("http://") {
                let (a, p) = rest.split_once('/').unwrap_or((rest, ""));
                (authority, path) = (a.to_string(), format!("/{p}"));
            } else if to.starts_with('/') {
                path = to;
            } else {
                bail!(
                    "GET http://{authority}{path}: redirected to {to:?}, which is not plain HTTP"
                );
            }
            continue;
        }
        if status == hyper::StatusCode::UNAUTHORIZED {
            bail!("GET http://{authority}{path}: the registry wants credentials, which cocoon policy does not send; copy the image to an OCI layout first (`skopeo copy docker://... oci:DIR`)");
        }
        if !status.is_success() {
            bail!("GET http://{authority}{path}: {status}");
        }
        return Ok(resp);
    }
    bail!("GET http://{authority}{path}: too many redirects")
}

/// A manifest or index, checked against `digest` when the reference was
/// one; with its media type.
async fn document(r: &Reference, reference: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let path = format!("/v2/{}/manifests/{reference}", r.name);
    let resp = get(&r.authority, &path, Some(ACCEPT)).await?;
    let media_type = resp
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut body = resp.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            bytes.extend_from_slice(&data);
            if bytes.len() > MAX_DOCUMENT {
                bail!("{path}: larger than {MAX_DOCUMENT} bytes");
            }
        }
    }
    if let Some(want) = reference.strip_prefix("sha256:") {
        let got = hex::encode(Sha256::digest(&bytes));
        if got != want {
            bail!("{path}: the registry sent a document whose digest is sha256:{got}");
        }
    }
    Ok((media_type, bytes))
}

/// Streams blob `d` into a temporary file in `scratch`.
async fn blob(r: &Reference, d: &Descriptor, scratch: &Path) -> anyhow::Result<std::fs::File> {
    let path = format!("/v2/{}/blobs/{}", r.name, d.digest());
    let resp = get(&r.authority, &path, None).await?;
    let mut f = tempfile::tempfile_in(scratch)?;
    let mut body = resp.into_body();
    let mut got: u64 = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            got += data.len() as u64;
            if got > d.size() {
                bail!("{path}: more than the descriptor's {} bytes", d.size());
            }
            f.write_all(&data)?;
        }
    }
    use std::io::Seek;
    f.rewind()?;
    Ok(f)
}

/// The root hash of each layer (bottom first) of image `r`, and the
/// process its config names.
pub async fn image(
    r: &Reference,
    scratch: &Path,
) -> anyhow::Result<(Vec<LayerHash>, oci::ImageProcess)> {
    let (mut media_type, mut bytes) = document(r, &r.reference).await?;
    for _ in 0..2 {
        if !media_type.contains("index") && !media_type.contains("manifest.list") {
            break;
        }
        let index = ImageIndex::from_reader(&bytes[..]).context("the image index")?;
        let d = oci::pick_manifest(&index).map_err(anyhow::Error::msg)?;
        (media_type, bytes) = document(r, d.digest().as_ref()).await?;
    }
    let manifest = ImageManifest::from_reader(&bytes[..])
        .with_context(|| format!("the manifest ({media_type})"))?;
    let config = manifest.config();
    if config.size() > MAX_DOCUMENT as u64 {
        bail!(
            "the image config {} is larger than {MAX_DOCUMENT} bytes",
            config.digest()
        );
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut blob(r, config, scratch).await?, &mut bytes)?;
    let got = hex::encode(Sha256::digest(&bytes));
    if got != config.digest().digest() {
        bail!(
            "the registry sent the image config {} as a document whose digest is sha256:{got}",
            config.digest()
        );
    }
    let process = oci::image_process(&bytes, config.digest().as_ref())?;
    let mut out = Vec::new();
    for d in manifest.layers() {
        let f = blob(r, d, scratch).await?;
        let scratch = scratch.to_path_buf();
        let d = d.clone();
        out.push(
            tokio::task::spawn_blocking(move || oci::hash_layer_blob(f, &d, &scratch)).await??,
        );
    }
    Ok((out, process))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_a_registry_a_repository_and_a_tag_or_digest() {
        let r = Reference::parse("docker://127.0.0.1:5000/library/busybox:1.36").unwrap();
        assert_eq!(
            (r.authority.as_str(), r.name.as_str(), r.reference.as_str()),
            ("127.0.0.1:5000", "library/busybox", "1.36")
        );
        let r = Reference::parse("docker://reg:5000/app").unwrap();
        assert_eq!(r.reference, "latest");
        let r = Reference::parse("docker://reg/app@sha256:ab").unwrap();
        assert_eq!(
            (r.name.as_str(), r.reference.as_str()),
            ("app", "sha256:ab")
        );
        for bad in [
            "reg:5000/app",
            "docker://reg:5000",
            "docker:///app",
            "docker://reg/App",
            "docker://reg/app:",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }
}
