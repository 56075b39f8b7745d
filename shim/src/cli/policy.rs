//! `cocoon policy`: the `[[images]]` of a pod's `cocoon-policy.toml` for
//! OCI images — each layer's dm-verity root hash, computed as the node
//! builds the layer (docs/verified-layers.md), so the guest accepts
//! exactly these images — and what a container of each image may run: the
//! command line, working directory and environment of the image's config,
//! and the paths where the host may mount over the image.

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
    /// Pin only the layers: containers of the image may run any command,
    /// working directory and environment the host's spec names.
    #[arg(long)]
    any_process: bool,
    /// Also allow host mounts (volumes, file systems, masked paths) at this
    /// container path (a pattern: `*` matches any run of characters, as in
    /// `/data/*`); repeatable. The files containerd and the kubelet bind
    /// are always allowed; `/proc`, `/sys` and `/dev` are never checked.
    #[arg(long = "volume", value_name = "PATH")]
    volumes: Vec<String>,
    /// Also allow this environment entry (`NAME=value`, a pattern: `*`
    /// matches any run of characters, as in `MODEL_NAME=*`); repeatable.
    #[arg(
        long = "env",
        value_name = "NAME=VALUE",
        conflicts_with = "any_process"
    )]
    env: Vec<String>,
    /// Do not pin volumes: the host may mount volumes and file systems, or
    /// mask paths, anywhere, over the image's own files too.
    #[arg(long, conflicts_with = "volumes")]
    any_volume: bool,
}

/// What containerd and the kubelet mount over every container's image:
/// the `tmpfs` at `/run` of containerd's default spec (`ctr run`), the
/// pod's name-resolution files (CRI), the termination log and the service
/// account (kubelet).
pub(crate) const DEFAULT_VOLUMES: [&str; 6] = [
    "/run",
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/dev/termination-log",
    "/var/run/secrets/kubernetes.io/serviceaccount",
];

/// Environment entries containerd and the kubelet add to an image's:
/// `HOSTNAME`, and the API server's address, which the kubelet gives every
/// container (`KUBERNETES_SERVICE_HOST`, `KUBERNETES_PORT_443_TCP`, ...).
/// The discovery variables of the namespace's other services are left
/// out: an application may read such names as its own settings, so pods
/// set `enableServiceLinks: false` or name them with `--env`.
pub(crate) const KUBERNETES_ENV: [&str; 4] = [
    "HOSTNAME=*",
    "KUBERNETES_SERVICE_*=*",
    "KUBERNETES_PORT=*",
    "KUBERNETES_PORT_*=*",
];

fn pinned(
    name: String,
    hashes: Vec<cocoon_image::oci::LayerHash>,
    process: cocoon_image::oci::ImageProcess,
    a: &PolicyArgs,
) -> ImagePolicy {
    let mut img = ImagePolicy {
        name,
        layers: hashes.into_iter().map(|h| h.root_hash).collect(),
        ..ImagePolicy::default()
    };
    if !a.any_process {
        let mut env = process.env;
        env.extend(KUBERNETES_ENV.iter().map(|e| e.to_string()));
        env.extend(a.env.iter().cloned());
        img.args = Some(process.args);
        img.cwd = Some(process.cwd);
        img.env = Some(env);
    }
    if !a.any_volume {
        let mut v: Vec<String> = DEFAULT_VOLUMES.iter().map(|v| v.to_string()).collect();
        v.extend(a.volumes.iter().cloned());
        img.volumes = Some(v);
    }
    img
}

pub(crate) async fn run(_cli: &Cli, a: &PolicyArgs) -> anyhow::Result<i32> {
    if a.name.is_some() && a.images.len() > 1 {
        anyhow::bail!("--name names one image; {} were given", a.images.len());
    }
    for v in &a.volumes {
        if !cocoon_protocol::layers::is_volume_pattern(v) {
            anyhow::bail!("--volume {v:?}: not an absolute container path without `..` (as in /data or /data/*)");
        }
    }
    for e in &a.env {
        if !cocoon_protocol::layers::is_env_pattern(e) {
            anyhow::bail!("--env {e:?}: not NAME=value (a pattern: `*` matches any run of characters, as in MODEL=*)");
        }
    }
    let scratch = tempfile::tempdir().context("create a scratch directory")?;
    let mut images = Vec::new();
    for image in &a.images {
        let (hashes, process, default_name) = if image.starts_with(registry::SCHEME) {
            let r = registry::Reference::parse(image)?;
            let (hashes, process) = registry::image(&r, scratch.path())
                .await
                .with_context(|| format!("image {image}"))?;
            (
                hashes,
                process,
                format!("{}/{}:{}", r.authority, r.name, r.reference),
            )
        } else {
            let path = PathBuf::from(image);
            let scratch = scratch.path().to_path_buf();
            let (hashes, process) = tokio::task::spawn_blocking(move || {
                let process = cocoon_image::oci::process_of(&path)?;
                Ok::<_, cocoon_image::oci::OciError>((
                    cocoon_image::oci::layer_hashes(&path, &scratch)?,
                    process,
                ))
            })
            .await?
            .with_context(|| format!("image {image}"))?;
            let name = Path::new(image)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (hashes, process, name)
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
        let img = pinned(name, hashes, process, a);
        img.check(&format!("images[{}]", images.len()))
            .map_err(|e| anyhow::anyhow!("image {image}: {e}"))?;
        images.push(img);
    }
    print!("{}", policy_fragment(&images));
    Ok(0)
}
