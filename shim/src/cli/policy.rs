//! `cocoon policy`: the `[[images]]` of a pod's `cocoon-policy.toml` for
//! OCI images — each layer's dm-verity root hash, computed as the node
//! builds the layer (docs/verified-layers.md), so the guest accepts
//! exactly these images.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use cocoon_protocol::layers::{policy_fragment, ImagePolicy};

use super::{registry, Cli};

#[derive(Debug, Args)]
pub(crate) struct PolicyArgs {
    /// OCI images: layout directories or archives of one (`ctr images
    /// export`, `docker save` of Docker 25+, `skopeo copy oci-archive:`),
    /// or docker://HOST:PORT/NAME:TAG of a registry served over plain HTTP
    /// (a node-local registry).
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<String>,
    /// The image's name in the policy (one image only; default: its file
    /// name). Informational: the guest matches layers, not names.
    #[arg(long)]
    name: Option<String>,
    /// Print each layer's blob digest and erofs size on stderr.
    #[arg(long)]
    show_layers: bool,
}

pub(crate) async fn run(_cli: &Cli, a: &PolicyArgs) -> anyhow::Result<i32> {
    if a.name.is_some() && a.images.len() > 1 {
        anyhow::bail!("--name names one image; {} were given", a.images.len());
    }
    let scratch = tempfile::tempdir().context("create a scratch directory")?;
    let mut images = Vec::new();
    for image in &a.images {
        let (hashes, default_name) = if image.starts_with(registry::SCHEME) {
            let r = registry::Reference::parse(image)?;
            let hashes = registry::layer_hashes(&r, scratch.path())
                .await
                .with_context(|| format!("image {image}"))?;
            (
                hashes,
                format!("{}/{}:{}", r.authority, r.name, r.reference),
            )
        } else {
            let path = PathBuf::from(image);
            let scratch = scratch.path().to_path_buf();
            let hashes = tokio::task::spawn_blocking(move || {
                cocoon_image::oci::layer_hashes(&path, &scratch)
            })
            .await?
            .with_context(|| format!("image {image}"))?;
            let name = Path::new(image)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (hashes, name)
        };
        if a.show_layers {
            for h in &hashes {
                eprintln!(
                    "{image}: {} -> {} ({} bytes of erofs)",
                    h.digest, h.root_hash, h.image_bytes
                );
            }
        }
        let name = a.name.clone().unwrap_or(default_name);
        images.push(ImagePolicy {
            name,
            layers: hashes.into_iter().map(|h| h.root_hash).collect(),
        });
    }
    print!("{}", policy_fragment(&images));
    Ok(0)
}
