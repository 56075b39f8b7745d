//! `[image]`: where container root filesystems come from. Confidential
//! pods get each image layer as a read-only disk (erofs with a dm-verity
//! hash tree, built once per layer into the node's cache) which the guest
//! checks against the layer root hashes of its initdata policy; other pods
//! get the host's root filesystem over virtio-fs (docs/verified-layers.md).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Invalid, Problem};

/// Which pods get verified layers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerifiedLayers {
    /// Pods with a TEE (`hypervisor.qemu.tee` = "snp"/"tdx").
    #[default]
    Tee,
    /// Every pod (also without a TEE: development, CI).
    Always,
}

/// `[image]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)] // keys are documented in configs/cocoon-dev.toml
pub struct RawImage {
    pub verified_layers: VerifiedLayers,
    pub allow_unverified: bool,
    pub layer_cache_dir: PathBuf,
    pub layer_cache_max_mib: u64,
    pub layer_slots: u32,
}

impl Default for RawImage {
    fn default() -> Self {
        Self {
            verified_layers: VerifiedLayers::Tee,
            allow_unverified: false,
            layer_cache_dir: "/var/lib/cocoon/layers".into(),
            layer_cache_max_mib: 20 * 1024,
            layer_slots: 8,
        }
    }
}

/// `[image]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageConfig {
    /// Which pods get verified layers.
    pub verified_layers: VerifiedLayers,
    /// Whether a pod due verified layers but without `[[images]]` in its
    /// policy runs unverified over virtio-fs (else it is refused).
    pub allow_unverified: bool,
    /// The node's layer cache.
    pub layer_cache_dir: PathBuf,
    /// Its size cap in bytes.
    pub layer_cache_max_bytes: u64,
    /// Hot-plug slots (pcie-root-ports) for layer disks per pod: the most
    /// distinct layers a pod's containers can use.
    pub layer_slots: u32,
}

/// Most hot-plug slots (with up to 16 VFIO ports, pcie.0 stays within its
/// 32 slots).
pub const MAX_LAYER_SLOTS: u32 = 12;

impl RawImage {
    /// Checks the section.
    pub fn validate(&self, invalid: &Invalid<'_>) -> Result<ImageConfig, ConfigError> {
        let dir = invalid.absolute("image.layer_cache_dir", &self.layer_cache_dir)?;
        if self.layer_cache_max_mib < 64 {
            return Err(invalid.of(Problem::new(
                "image.layer_cache_max_mib",
                self.layer_cache_max_mib,
                "must be at least 64 (MiB); the cache holds every layer of the images pods run",
            )));
        }
        if !(1..=MAX_LAYER_SLOTS).contains(&self.layer_slots) {
            return Err(invalid.of(Problem::new(
                "image.layer_slots",
                self.layer_slots,
                format!("must be between 1 and {MAX_LAYER_SLOTS} (distinct layers per pod)"),
            )));
        }
        Ok(ImageConfig {
            verified_layers: self.verified_layers,
            allow_unverified: self.allow_unverified,
            layer_cache_dir: dir,
            layer_cache_max_bytes: self.layer_cache_max_mib.saturating_mul(1 << 20),
            layer_slots: self.layer_slots,
        })
    }
}

impl ImageConfig {
    /// Whether pods of a node with this TEE setting get verified layers.
    pub fn verifies(&self, tee: super::Tee) -> bool {
        match self.verified_layers {
            VerifiedLayers::Always => true,
            VerifiedLayers::Tee => tee != super::Tee::None,
        }
    }
}
