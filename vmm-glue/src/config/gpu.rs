//! `[gpu]`: the CC mode passed-through GPUs must be in, how a mismatch is
//! handled, and where devices are looked up.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Invalid, Problem, Tee};

/// A GPU's confidential-computing mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CcMode {
    /// CC off.
    Off,
    /// CC on: all protections, no profiling or debugging.
    On,
    /// CC on with developer tools (profiling/debugging) allowed.
    Devtools,
}

impl CcMode {
    /// The name gpu-admin-tools and the node config use.
    pub fn as_str(self) -> &'static str {
        match self {
            CcMode::Off => "off",
            CcMode::On => "on",
            CcMode::Devtools => "devtools",
        }
    }
}

/// `gpu.cc_mode` as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RawCcMode {
    /// On for confidential guests, off otherwise.
    Auto,
    /// CC on.
    On,
    /// CC on with developer tools.
    Devtools,
    /// CC off (non-confidential guests only).
    Off,
    /// Whatever mode (non-confidential guests only).
    Any,
}

/// Which CC mode passed-through GPUs must be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CcPolicy {
    /// This mode.
    Exact(CcMode),
    /// Whatever mode (non-confidential guests only).
    Any,
}

/// What to do with a GPU in the wrong CC mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnMismatch {
    /// Refuse the launch.
    Refuse,
    /// Run `set_cc_mode_command`, then check again.
    Set,
}

/// `[gpu]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)] // keys are documented in configs/cocoon-dev.toml
pub struct RawGpu {
    pub cc_mode: RawCcMode,
    pub on_mismatch: OnMismatch,
    pub set_cc_mode_command: Vec<String>,
    pub extra_cc_capable_ids: Vec<String>,
    pub cdi_spec_dirs: Vec<PathBuf>,
    pub host_root: PathBuf,
}

impl Default for RawGpu {
    fn default() -> Self {
        RawGpu {
            cc_mode: RawCcMode::Auto,
            on_mismatch: OnMismatch::Refuse,
            set_cc_mode_command: Vec::new(),
            extra_cc_capable_ids: Vec::new(),
            cdi_spec_dirs: vec!["/etc/cdi".into(), "/var/run/cdi".into()],
            host_root: "/".into(),
        }
    }
}

/// Validated `[gpu]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuConfig {
    /// Required CC mode (`auto` resolved against the TEE).
    pub cc_mode: CcPolicy,
    /// Mismatch handling.
    pub on_mismatch: OnMismatch,
    /// Mode switch command (`{bdf}`, `{mode}` placeholders).
    pub set_cc_mode_command: Vec<String>,
    /// Admin-added CC-capable (vendor, device) IDs.
    pub extra_cc_capable_ids: Vec<(u16, u16)>,
    /// CDI spec directories.
    pub cdi_spec_dirs: Vec<PathBuf>,
    /// Where `/sys` and `/dev` are read for device lookups.
    pub host_root: PathBuf,
}

/// A PCI ID `"vendor:device"` in hex.
fn parse_pci_id(id: &str) -> Option<(u16, u16)> {
    let (v, d) = id.split_once(':')?;
    (v.len() == 4 && d.len() == 4).then_some(())?;
    Some((
        u16::from_str_radix(v, 16).ok()?,
        u16::from_str_radix(d, 16).ok()?,
    ))
}

impl RawGpu {
    fn cc_policy(&self, tee: Tee) -> Result<CcPolicy, Problem> {
        Ok(match (self.cc_mode, tee.is_confidential()) {
            (RawCcMode::Auto, false) => CcPolicy::Exact(CcMode::Off),
            (RawCcMode::Auto | RawCcMode::On, _) => CcPolicy::Exact(CcMode::On),
            (RawCcMode::Devtools, _) => CcPolicy::Exact(CcMode::Devtools),
            (RawCcMode::Off, false) => CcPolicy::Exact(CcMode::Off),
            (RawCcMode::Any, false) => CcPolicy::Any,
            (m @ (RawCcMode::Off | RawCcMode::Any), true) => {
                return Err(Problem::new(
                    "gpu.cc_mode",
                    if m == RawCcMode::Off { "\"off\"" } else { "\"any\"" },
                    format!("a confidential guest (tee = {:?}) must not use a GPU outside CC mode: its DMA and MMIO would be readable by the host; use \"on\" (or \"devtools\" for debugging)", tee.as_str()),
                ))
            }
        })
    }

    fn check_mismatch(&self, policy: CcPolicy) -> Result<(), Problem> {
        if self.on_mismatch != OnMismatch::Set {
            return Ok(());
        }
        if self.set_cc_mode_command.is_empty() {
            return Err(Problem::new(
                "gpu.on_mismatch",
                "\"set\"",
                "needs `gpu.set_cc_mode_command`, e.g. [\"/usr/local/bin/nvidia_gpu_tools.py\", \"--gpu-bdf={bdf}\", \"--set-cc-mode={mode}\", \"--reset-after-cc-mode-switch\"]",
            ));
        }
        if policy == CcPolicy::Any {
            return Err(Problem::new(
                "gpu.on_mismatch",
                "\"set\"",
                "with cc_mode = \"any\" there is no mode to set; use \"refuse\"",
            ));
        }
        Ok(())
    }

    /// Validates the section for a guest in `tee`.
    pub(super) fn validate(
        &self,
        tee: Tee,
        invalid: &Invalid<'_>,
    ) -> Result<GpuConfig, ConfigError> {
        let cc_mode = self.cc_policy(tee).map_err(|p| invalid.of(p))?;
        self.check_mismatch(cc_mode).map_err(|p| invalid.of(p))?;
        let mut extra = Vec::new();
        for id in &self.extra_cc_capable_ids {
            extra.push(parse_pci_id(id).ok_or_else(|| {
                invalid.of(Problem::quoted(
                    "gpu.extra_cc_capable_ids",
                    id,
                    "entries are PCI IDs \"vendor:device\" in hex, e.g. \"10de:2b85\"",
                ))
            })?);
        }
        for p in &self.cdi_spec_dirs {
            invalid.absolute("gpu.cdi_spec_dirs", p)?;
        }
        Ok(GpuConfig {
            cc_mode,
            on_mismatch: self.on_mismatch,
            set_cc_mode_command: self.set_cc_mode_command.clone(),
            extra_cc_capable_ids: extra,
            cdi_spec_dirs: self.cdi_spec_dirs.clone(),
            host_root: invalid.absolute("gpu.host_root", &self.host_root)?,
        })
    }
}
