//! `[hypervisor.qemu]`: the QEMU binary, the guest, machine, TEE and PCI
//! topology.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Invalid, Problem};

/// Default SEV-SNP guest policy: SMT allowed (bit 16), reserved bit 17 set,
/// no debug, no migration agent (SEV-SNP ABI, "Guest Policy").
pub const DEFAULT_SNP_POLICY: u64 = 0x30000;

/// Bit 19 of the SNP policy: the guest may be debugged by the host.
pub const SNP_POLICY_DEBUG: u64 = 1 << 19;

/// Kernel parameters the node config may not set: Cocoon owns them.
const RESERVED_KERNEL_PARAMS: &[&str] = &["init", "rdinit", "root", "console"];

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Accel {
    /// KVM where usable, else TCG.
    Auto,
    /// Hardware virtualization.
    Kvm,
    /// Software emulation.
    Tcg,
}

/// virtiofsd cache policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsCache {
    /// `--cache=never`.
    Never,
    /// `--cache=metadata`.
    Metadata,
    /// `--cache=auto`.
    Auto,
    /// `--cache=always`.
    Always,
}

impl FsCache {
    /// The virtiofsd argument value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Never => "never",
            Self::Metadata => "metadata",
            Self::Auto => "auto",
            Self::Always => "always",
        }
    }
}

/// Which trusted execution environment a VM runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tee {
    /// No TEE (development).
    None,
    /// AMD SEV-SNP.
    Snp,
    /// Intel TDX.
    Tdx,
    /// Whatever the host supports (SNP or TDX), else an error.
    Auto,
}

impl Tee {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Snp => "snp",
            Self::Tdx => "tdx",
            Self::Auto => "auto",
        }
    }

    /// Whether the guest is (or may be) confidential.
    pub fn is_confidential(self) -> bool {
        self != Self::None
    }
}

/// How VFIO devices are cold-plugged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ColdPlug {
    /// One pcie-root-port per device.
    RootPort,
    /// VFIO passthrough disabled.
    NoPort,
}

/// How the pod's network namespace reaches the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkModel {
    /// Each interface mirrored to a tap joined by tc ingress redirects
    /// (Kata's `tcfilter`): the VM gets a virtio-net device per interface.
    Tcfilter,
    /// No network: the guest has only `lo`, whatever the pod's namespace
    /// holds.
    None,
}

/// `[hypervisor.qemu]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)] // keys are documented in configs/cocoon-dev.toml
pub struct RawQemu {
    pub path: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub firmware: PathBuf,
    pub machine_type: String,
    pub accel: Accel,
    pub cpu_model: String,
    pub default_vcpus: u32,
    pub default_memory: u32,
    pub kernel_params: String,
    pub debug_console: bool,
    pub virtio_fs_daemon: PathBuf,
    pub virtio_fs_cache: FsCache,
    pub vhost_user_vsock_daemon: PathBuf,
    pub tee: Tee,
    pub snp_guest_policy: u64,
    pub tdx_quote_generation_socket: PathBuf,
    pub cold_plug_vfio: ColdPlug,
    pub pcie_root_port: u32,
    pub pci_mmio64_mb: u64,
    pub network_model: NetworkModel,
    pub dry_run: bool,
}

impl Default for RawQemu {
    fn default() -> Self {
        Self {
            path: "/usr/bin/qemu-system-x86_64".into(),
            kernel: "/usr/local/share/cocoon/vmlinuz".into(),
            initrd: "/usr/local/share/cocoon/initrd.img".into(),
            firmware: PathBuf::new(),
            machine_type: "q35".into(),
            accel: Accel::Auto,
            cpu_model: String::new(),
            default_vcpus: 1,
            default_memory: 1024,
            kernel_params: String::new(),
            debug_console: false,
            virtio_fs_daemon: "/usr/local/libexec/cocoon/virtiofsd".into(),
            virtio_fs_cache: FsCache::Never,
            vhost_user_vsock_daemon: "/usr/local/libexec/cocoon/vhost-device-vsock".into(),
            tee: Tee::None,
            snp_guest_policy: DEFAULT_SNP_POLICY,
            tdx_quote_generation_socket: "/var/run/tdx-qgs/qgs.socket".into(),
            cold_plug_vfio: ColdPlug::RootPort,
            pcie_root_port: 0,
            pci_mmio64_mb: 0,
            network_model: NetworkModel::Tcfilter,
            dry_run: false,
        }
    }
}

/// Validated `[hypervisor.qemu]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuConfig {
    /// QEMU binary.
    pub path: PathBuf,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Guest initrd.
    pub initrd: PathBuf,
    /// Firmware for -bios, if any.
    pub firmware: Option<PathBuf>,
    /// Machine type.
    pub machine_type: String,
    /// Accelerator choice.
    pub accel: Accel,
    /// CPU model, if set.
    pub cpu_model: Option<String>,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Extra kernel parameters.
    pub kernel_params: Vec<String>,
    /// Serial console to a log file.
    pub debug_console: bool,
    /// virtiofsd binary.
    pub virtio_fs_daemon: PathBuf,
    /// virtiofsd cache mode.
    pub virtio_fs_cache: FsCache,
    /// vhost-device-vsock binary.
    pub vhost_user_vsock_daemon: PathBuf,
    /// Trusted execution environment.
    pub tee: Tee,
    /// SEV-SNP guest policy.
    pub snp_guest_policy: u64,
    /// TDX quote generation service socket.
    pub tdx_quote_generation_socket: PathBuf,
    /// VFIO cold-plug topology.
    pub cold_plug_vfio: ColdPlug,
    /// pcie-root-ports to create at least.
    pub pcie_root_port: u32,
    /// 64-bit PCI MMIO window in MiB (0: firmware default).
    pub pci_mmio64_mb: u64,
    /// How the pod's network reaches the VM.
    pub network_model: NetworkModel,
    /// Stop each launch after planning it (reported as an error).
    pub dry_run: bool,
}

impl RawQemu {
    /// Checks the sizes, names and kernel parameters.
    fn check_values(&self) -> Result<Vec<String>, Problem> {
        if !(1..=240).contains(&self.default_vcpus) {
            return Err(Problem::new(
                "hypervisor.qemu.default_vcpus",
                self.default_vcpus,
                "must be between 1 and 240",
            ));
        }
        if !(64..=4 * 1024 * 1024).contains(&self.default_memory) {
            return Err(Problem::new(
                "hypervisor.qemu.default_memory",
                self.default_memory,
                "is in MiB and must be between 64 and 4194304",
            ));
        }
        if self.machine_type != "q35" {
            return Err(Problem::quoted(
                "hypervisor.qemu.machine_type",
                &self.machine_type,
                "only \"q35\" is supported",
            ));
        }
        if self.cpu_model.contains([',', ' ']) {
            return Err(Problem::quoted(
                "hypervisor.qemu.cpu_model",
                &self.cpu_model,
                "must be a plain CPU model name such as \"host\", \"max\" or \"EPYC-v4\"",
            ));
        }
        if self
            .kernel_params
            .chars()
            .any(|c| c.is_control() && c != ' ')
        {
            return Err(Problem::quoted(
                "hypervisor.qemu.kernel_params",
                &self.kernel_params,
                "must be one line of printable characters",
            ));
        }
        let params: Vec<String> = self
            .kernel_params
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if let Some(p) = params
            .iter()
            .find(|p| RESERVED_KERNEL_PARAMS.contains(&p.split('=').next().unwrap_or(p)))
        {
            return Err(Problem::quoted(
                "hypervisor.qemu.kernel_params",
                &self.kernel_params,
                format!("{p:?} is set by Cocoon itself; remove it"),
            ));
        }
        // Under TCG, pages virtiofsd fills through the shared memory file
        // can keep stale translations of code that was there before, and
        // programs on the virtio-fs root crash; zeroing pages on allocation
        // makes TCG notice the change (docs/guest-kernel.md).
        if self.accel != Accel::Kvm {
            if let Some(p) = params.iter().find(|p| {
                p.strip_prefix("init_on_alloc=")
                    .is_some_and(|v| matches!(v, "0" | "n" | "N" | "off"))
            }) {
                return Err(Problem::quoted(
                    "hypervisor.qemu.kernel_params",
                    &self.kernel_params,
                    format!(
                        "{p:?} breaks guests under TCG (programs on the virtio-fs root crash); remove it, or set accel = \"kvm\""
                    ),
                ));
            }
        }
        Ok(params)
    }

    /// Checks the TEE-related values against each other.
    fn check_tee(&self) -> Result<(), Problem> {
        let policy = self.snp_guest_policy;
        // SNP policy: bit 17 is reserved and must be 1; bits above 24 are
        // reserved and must be 0 (SEV-SNP ABI spec, "Guest Policy").
        if policy & (1 << 17) == 0 || policy >> 25 != 0 {
            return Err(Problem::new(
                "hypervisor.qemu.snp_guest_policy",
                format!("{policy:#x}"),
                "is not a valid SEV-SNP policy (bit 17 must be set, bits 25-63 clear); the usual value is 0x30000",
            ));
        }
        if self.tee.is_confidential() && policy & SNP_POLICY_DEBUG != 0 && !self.debug_console {
            return Err(Problem::new(
                "hypervisor.qemu.snp_guest_policy",
                format!("{policy:#x}"),
                "allows host debugging of a confidential guest; clear bit 19 (or set debug_console = true to say this is a debug node)",
            ));
        }
        if self.tee.is_confidential() && self.accel == Accel::Tcg {
            return Err(Problem::new(
                "hypervisor.qemu.accel",
                "\"tcg\"",
                format!(
                    "a confidential guest (tee = {:?}) needs KVM; use \"auto\" or \"kvm\"",
                    self.tee.as_str()
                ),
            ));
        }
        Ok(())
    }

    /// Checks the PCI topology values.
    fn check_pci(&self) -> Result<(), Problem> {
        if self.pcie_root_port > 16 {
            return Err(Problem::new(
                "hypervisor.qemu.pcie_root_port",
                self.pcie_root_port,
                "must be between 0 and 16",
            ));
        }
        let mmio = self.pci_mmio64_mb;
        if mmio != 0 && !(mmio.is_power_of_two() && mmio <= 1 << 24) {
            return Err(Problem::new(
                "hypervisor.qemu.pci_mmio64_mb",
                mmio,
                "must be 0 (firmware default) or a power of two up to 16777216 (16 TiB), e.g. 262144 for GPUs with 128 GiB BARs",
            ));
        }
        Ok(())
    }

    /// Validates the section.
    pub(super) fn validate(&self, invalid: &Invalid<'_>) -> Result<QemuConfig, super::ConfigError> {
        let kernel_params = self.check_values().map_err(|p| invalid.of(p))?;
        self.check_tee().map_err(|p| invalid.of(p))?;
        self.check_pci().map_err(|p| invalid.of(p))?;
        let abs = |key: &'static str, p: &Path| invalid.absolute(key, p);
        Ok(QemuConfig {
            path: abs("hypervisor.qemu.path", &self.path)?,
            kernel: abs("hypervisor.qemu.kernel", &self.kernel)?,
            initrd: abs("hypervisor.qemu.initrd", &self.initrd)?,
            firmware: if self.firmware.as_os_str().is_empty() {
                None
            } else {
                Some(abs("hypervisor.qemu.firmware", &self.firmware)?)
            },
            machine_type: self.machine_type.clone(),
            accel: self.accel,
            cpu_model: (!self.cpu_model.is_empty()).then(|| self.cpu_model.clone()),
            vcpus: self.default_vcpus,
            memory_mib: self.default_memory,
            kernel_params,
            debug_console: self.debug_console,
            virtio_fs_daemon: abs("hypervisor.qemu.virtio_fs_daemon", &self.virtio_fs_daemon)?,
            virtio_fs_cache: self.virtio_fs_cache,
            vhost_user_vsock_daemon: abs(
                "hypervisor.qemu.vhost_user_vsock_daemon",
                &self.vhost_user_vsock_daemon,
            )?,
            tee: self.tee,
            snp_guest_policy: self.snp_guest_policy,
            tdx_quote_generation_socket: abs(
                "hypervisor.qemu.tdx_quote_generation_socket",
                &self.tdx_quote_generation_socket,
            )?,
            cold_plug_vfio: self.cold_plug_vfio,
            pcie_root_port: self.pcie_root_port,
            pci_mmio64_mb: self.pci_mmio64_mb,
            network_model: self.network_model,
            dry_run: self.dry_run,
        })
    }
}
