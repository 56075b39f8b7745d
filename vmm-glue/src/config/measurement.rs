//! `[measurement]`: pinned launch measurements and the facts of the host
//! stack that the measurement depends on.

use serde::{Deserialize, Serialize};

use super::{ConfigError, Invalid, Problem, Tee};

/// The order in which the host adds and extends firmware pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MrtdOrder {
    /// PAGE.ADD then that page's 16 MR.EXTENDs, page by page: upstream KVM
    /// (`KVM_TDX_INIT_MEM_REGION`, Linux 6.16+) with QEMU 10.1+, GCE.
    PerPage,
    /// All PAGE.ADDs of a section, then all its MR.EXTENDs: the QEMU 8.x
    /// TDX trees (Canonical's and Intel's staging QEMU).
    TwoPass,
}

/// How the firmware builds the kernel's LoadOptions, which the Linux EFI
/// stub measures into RTMR[2].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadOptions {
    /// `initrd=initrd <cmdline>`: edk2 with PR #11115 (mid-2025; Debian's
    /// ovmf-inteltdx 2026.08).
    InitrdFirst,
    /// `<cmdline> initrd=initrd`: earlier edk2 (for example 2024.x).
    CmdlineFirst,
}

/// Whether QEMU patches the Linux setup header of a TDX guest's kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SetupPatch {
    /// Decide from `qemu --version` (patched before 10.2).
    Auto,
    /// QEMU up to 10.1.
    On,
    /// QEMU 10.2 and later.
    Off,
}

/// `[measurement]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)] // keys are documented in configs/cocoon-dev.toml
pub struct RawMeasurement {
    pub expected: Vec<RawExpected>,
    pub snp_guest_features: u64,
    pub tdx_mrtd_order: MrtdOrder,
    pub tdx_load_options: LoadOptions,
    pub tdx_kernel_setup_patch: SetupPatch,
}

impl Default for RawMeasurement {
    fn default() -> Self {
        RawMeasurement {
            expected: Vec::new(),
            snp_guest_features: 0x1,
            tdx_mrtd_order: MrtdOrder::PerPage,
            tdx_load_options: LoadOptions::InitrdFirst,
            tdx_kernel_setup_patch: SetupPatch::Auto,
        }
    }
}

/// One pinned measurement as written: an SEV-SNP launch digest (hex), or a
/// table of TDX registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
#[allow(missing_docs)]
pub enum RawExpected {
    Snp(String),
    Tdx {
        mrtd: String,
        rtmr1: String,
        rtmr2: String,
    },
}

/// A pinned, validated measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// SEV-SNP launch digest.
    Snp([u8; 48]),
    /// TDX MRTD, RTMR[1], RTMR[2].
    Tdx {
        /// MRTD.
        mrtd: [u8; 48],
        /// RTMR[1].
        rtmr1: [u8; 48],
        /// RTMR[2].
        rtmr2: [u8; 48],
    },
}

/// Validated `[measurement]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasurementConfig {
    /// Allowed measurements; empty = not pinned.
    pub expected: Vec<Expected>,
    /// VMSA SEV_FEATURES the host's KVM gives SEV-SNP guests.
    pub snp_guest_features: u64,
    /// MRTD page order of the host stack.
    pub tdx_mrtd_order: MrtdOrder,
    /// LoadOptions layout of the firmware.
    pub tdx_load_options: LoadOptions,
    /// Whether QEMU patches the kernel setup header (None: decide from
    /// `qemu --version`, patched before 10.2).
    pub tdx_kernel_setup_patch: Option<bool>,
}

fn digest(v: &str, what: &str) -> Result<[u8; 48], Problem> {
    let mut out = [0u8; 48];
    hex::decode_to_slice(v, &mut out).map_err(|_| {
        Problem::quoted(
            "measurement.expected",
            v,
            format!(
                "{what} must be 96 hex digits (48 bytes), as `cocoon measure --config` prints it"
            ),
        )
    })?;
    Ok(out)
}

impl RawExpected {
    fn parse(&self) -> Result<Expected, Problem> {
        Ok(match self {
            RawExpected::Snp(d) => Expected::Snp(digest(d, "an SEV-SNP launch digest")?),
            RawExpected::Tdx { mrtd, rtmr1, rtmr2 } => Expected::Tdx {
                mrtd: digest(mrtd, "mrtd")?,
                rtmr1: digest(rtmr1, "rtmr1")?,
                rtmr2: digest(rtmr2, "rtmr2")?,
            },
        })
    }
}

/// Pins must be of the configured TEE's kind.
fn check_pins(expected: &[Expected], tee: Tee) -> Result<(), Problem> {
    let mismatch = expected.iter().any(|e| {
        matches!(
            (tee, e),
            (Tee::Snp, Expected::Tdx { .. }) | (Tee::Tdx, Expected::Snp(_)) | (Tee::None, _)
        )
    });
    if !mismatch {
        return Ok(());
    }
    Err(Problem::new(
        "measurement.expected",
        format!("{} entries", expected.len()),
        match tee {
            Tee::None => "pins a launch measurement, but `hypervisor.qemu.tee` = \"none\" has none; set tee to \"snp\" or \"tdx\" or remove the pins",
            Tee::Snp => "has a TDX entry ({ mrtd, rtmr1, rtmr2 }) but tee = \"snp\"; SEV-SNP entries are launch-digest strings",
            _ => "has an SEV-SNP launch-digest string but tee = \"tdx\"; TDX entries are tables { mrtd = \"..\", rtmr1 = \"..\", rtmr2 = \"..\" }",
        },
    ))
}

impl RawMeasurement {
    /// Validates the section for a guest in `tee`.
    pub(super) fn validate(
        &self,
        tee: Tee,
        invalid: &Invalid<'_>,
    ) -> Result<MeasurementConfig, ConfigError> {
        let expected = self
            .expected
            .iter()
            .map(RawExpected::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|p| invalid.of(p))?;
        check_pins(&expected, tee).map_err(|p| invalid.of(p))?;
        if self.snp_guest_features >> 16 != 0 || self.snp_guest_features & 1 == 0 {
            return Err(invalid.of(Problem::new(
                "measurement.snp_guest_features",
                format!("{:#x}", self.snp_guest_features),
                "bit 0 (SNPActive) must be set and bits 16-63 are reserved; KVM's default is 0x1",
            )));
        }
        Ok(MeasurementConfig {
            expected,
            snp_guest_features: self.snp_guest_features,
            tdx_mrtd_order: self.tdx_mrtd_order,
            tdx_load_options: self.tdx_load_options,
            tdx_kernel_setup_patch: match self.tdx_kernel_setup_patch {
                SetupPatch::Auto => None,
                SetupPatch::On => Some(true),
                SetupPatch::Off => Some(false),
            },
        })
    }
}
