//! Verified layers of a pod's containers (docs/verified-layers.md): when a
//! pod gets them, which disks its VM gets, and the node cache behind them.
//!
//! For every container the shim asks containerd for the container's image
//! layers, converts each layer blob once per node into the cache (erofs +
//! dm-verity tree, [`cocoon_image::cache`]) and hot-plugs each layer the
//! pod does not have yet as a read-only virtio-blk disk. The root hashes
//! the shim sends along are only claims: the guest accepts them only as one
//! image of the pod's measured policy, and dm-verity checks every block
//! against them.

use cocoon_image::cache::{CachedLayer, LayerCache};
use cocoon_protocol::agent::VerifiedLayer;
use cocoon_vmm::qemu::argv::hotplug_port;
use cocoon_vmm::qemu::qmp::Qmp;
use slog::{info, warn, Logger};

use super::error::{Result, ShimError};
use super::images::{stream_blob, Containerd};
use crate::node::NodeConfig;

/// How a pod's containers get their root filesystems.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootfsSource {
    /// The host's root filesystem over virtio-fs.
    Shared,
    /// Verified layers.
    Verified,
}

/// Decides for a pod from the node config and the pod's initdata: verified
/// layers when the node asks for them and the policy lists images; a pod
/// due them without images is refused unless `image.allow_unverified`.
pub fn decide(config: &NodeConfig, initdata: Option<&[u8]>, log: &Logger) -> Result<RootfsSource> {
    let image = &config.vm.image;
    if !image.verifies(config.vm.qemu.tee) {
        return Ok(RootfsSource::Shared);
    }
    let images = match initdata {
        None => Vec::new(),
        Some(doc) => {
            let parsed = cocoon_protocol::initdata::parse(doc).map_err(|e| ShimError::Invalid {
                field: "initdata".into(),
                problem: e.to_string(),
            })?;
            match parsed.data.get(cocoon_protocol::layers::POLICY_KEY) {
                Some(p) => cocoon_protocol::layers::images_of_policy(p).map_err(|problem| {
                    ShimError::Invalid {
                        field: "initdata".into(),
                        problem,
                    }
                })?,
                None => Vec::new(),
            }
        }
    };
    if !images.is_empty() {
        return Ok(RootfsSource::Verified);
    }
    if image.allow_unverified {
        warn!(log, "the pod's initdata lists no images: its root filesystems come unverified over virtio-fs (image.allow_unverified = true)");
        return Ok(RootfsSource::Shared);
    }
    Err(ShimError::FailedPrecondition(
        "this pod must run verified images (image.verified_layers), but its initdata policy lists none: add [[images]] to cocoon-policy.toml (`cocoon policy IMAGE` prints them), or set image.allow_unverified = true in the node config (development only)".into(),
    ))
}

#[derive(Debug)]
struct Attached {
    digest: String,
    serial: String,
    layer: CachedLayer,
}

/// A pod's layer disks.
#[derive(Debug)]
pub struct PodLayers {
    cache: LayerCache,
    slots: u32,
    api: Containerd,
    qmp: Qmp,
    attached: tokio::sync::Mutex<Vec<Attached>>,
}

impl PodLayers {
    /// Layer disks for a pod whose VM has `slots` hot-plug ports.
    pub fn new(config: &NodeConfig, api: Containerd, qmp: Qmp) -> Result<Self> {
        let image = &config.vm.image;
        let cache = LayerCache::open(&image.layer_cache_dir, image.layer_cache_max_bytes)
            .map_err(|e| ShimError::FailedPrecondition(format!("image.layer_cache_dir: {e}")))?;
        Ok(Self {
            cache,
            slots: image.layer_slots,
            api,
            qmp,
            attached: tokio::sync::Mutex::default(),
        })
    }

    /// The layers of container `id`, each plugged into the VM.
    pub async fn for_container(&self, id: &str, log: &Logger) -> Result<Vec<VerifiedLayer>> {
        let fail = |e: String| {
            ShimError::FailedPrecondition(format!("verified layers of container {id:?}: {e}"))
        };
        let (image, layers) = self.api.container_layers(id).await.map_err(fail)?;
        let mut attached = self.attached.lock().await;
        let mut out = Vec::with_capacity(layers.len());
        for l in layers {
            let known = attached.iter().position(|a| a.digest == l.digest);
            let at = match known {
                Some(at) => at,
                None => {
                    let slot = u32::try_from(attached.len()).unwrap_or(u32::MAX);
                    if slot >= self.slots {
                        return Err(ShimError::FailedPrecondition(format!(
                            "container {id:?} needs more than image.layer_slots = {} distinct layers in this pod; raise image.layer_slots (at most 12)",
                            self.slots
                        )));
                    }
                    let started = std::time::Instant::now();
                    let (cache, api, layer) = (self.cache.clone(), self.api.clone(), l.clone());
                    let handle = tokio::runtime::Handle::current();
                    // Streamed from containerd only when not cached yet.
                    let (cached, built) = tokio::task::spawn_blocking(move || {
                        cache.get_or_build(&layer.digest, || {
                            Ok(Box::new(stream_blob(&api, &layer, &handle))
                                as Box<dyn std::io::Read>)
                        })
                    })
                    .await
                    .map_err(|e| fail(e.to_string()))?
                    .map_err(|e| fail(e.to_string()))?;
                    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    info!(log, "layer ready"; "container" => id, "digest" => &l.digest,
                          "root_hash" => &cached.root_hash, "built" => built, "ms" => ms,
                          "bytes" => cached.len);
                    let serial = format!("cocoon-layer{slot}");
                    self.qmp
                        .hotplug_read_only_disk(
                            &cached.path,
                            &format!("layer{slot}"),
                            &format!("layerdev{slot}"),
                            &serial,
                            &hotplug_port(slot),
                        )
                        .await
                        .map_err(|e| fail(format!("hot-plug of {}: {e}", l.digest)))?;
                    attached.push(Attached {
                        digest: l.digest.clone(),
                        serial,
                        layer: cached,
                    });
                    attached.len() - 1
                }
            };
            let a = &attached[at];
            let mut v = VerifiedLayer::new();
            v.serial = a.serial.clone();
            v.root_hash = a.layer.root_hash.clone();
            v.data_blocks = a.layer.data_blocks;
            v.hash_start_block = a.layer.hash_start_block;
            v.digest = a.digest.clone();
            out.push(v);
        }
        info!(log, "verified layers"; "container" => id, "image" => image, "layers" => out.len());
        Ok(out)
    }
}
