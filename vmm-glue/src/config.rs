//! The node configuration (`/etc/cocoon/config.toml`), in two layers: the
//! serde form ([`RawConfig`], unknown keys rejected, every key defaulted)
//! and the validated form ([`Config`]) the rest of Cocoon uses.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The built-in development defaults (the text of `configs/cocoon-dev.toml`).
pub const DEV_DEFAULTS: &str = include_str!("../../configs/cocoon-dev.toml");

/// Default location of the node configuration.
pub const DEFAULT_PATH: &str = "/etc/cocoon/config.toml";

/// Environment variable overriding the configuration path.
pub const ENV_PATH: &str = "COCOON_CONFIG";

/// Errors of loading or validating a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key or wrong type.
    #[error("{origin}: {message}")]
    Parse {
        /// File name (or "built-in defaults").
        origin: String,
        /// The parser's message, naming the key and position.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{origin}: `{key}` = {value}: {problem}")]
    Invalid {
        /// File name.
        origin: String,
        /// Dotted key, e.g. `hypervisor.qemu.default_vcpus`.
        key: &'static str,
        /// The offending value as written.
        value: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// A file named by the configuration does not exist.
    #[error("`{key}` = {path:?}: {problem}")]
    MissingFile {
        /// Dotted key.
        key: &'static str,
        /// The path.
        path: PathBuf,
        /// What to do.
        problem: &'static str,
    },
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
    pub accel: String,
    pub cpu_model: String,
    pub default_vcpus: u32,
    pub default_memory: u32,
    pub kernel_params: String,
    pub debug_console: bool,
    pub virtio_fs_daemon: PathBuf,
    pub virtio_fs_cache: String,
    pub vhost_user_vsock_daemon: PathBuf,
    pub tee: String,
    pub snp_guest_policy: u64,
    pub tdx_quote_generation_socket: PathBuf,
    pub cold_plug_vfio: String,
    pub pcie_root_port: u32,
    pub pci_mmio64_mb: u64,
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
            accel: "auto".into(),
            cpu_model: String::new(),
            default_vcpus: 1,
            default_memory: 1024,
            kernel_params: String::new(),
            debug_console: false,
            virtio_fs_daemon: "/usr/local/libexec/cocoon/virtiofsd".into(),
            virtio_fs_cache: "never".into(),
            vhost_user_vsock_daemon: "/usr/local/libexec/cocoon/vhost-device-vsock".into(),
            tee: "none".into(),
            snp_guest_policy: DEFAULT_SNP_POLICY,
            tdx_quote_generation_socket: "/var/run/tdx-qgs/qgs.socket".into(),
            cold_plug_vfio: "root-port".into(),
            pcie_root_port: 0,
            pci_mmio64_mb: 0,
            dry_run: false,
        }
    }
}

/// `[hypervisor]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)] // keys are documented in configs/cocoon-dev.toml
pub struct RawHypervisor {
    pub qemu: RawQemu,
}

/// `[agent]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)] // keys are documented in configs/cocoon-dev.toml
pub struct RawAgent {
    pub transport: String,
    pub dial_timeout: u64,
}

impl Default for RawAgent {
    fn default() -> Self {
        Self {
            transport: "auto".into(),
            dial_timeout: 30,
        }
    }
}

/// `[runtime]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)] // keys are documented in configs/cocoon-dev.toml
pub struct RawRuntime {
    pub state_dir: PathBuf,
    pub log_level: String,
    pub allowed_annotations: Vec<String>,
    pub pod_resources_socket: PathBuf,
}

impl Default for RawRuntime {
    fn default() -> Self {
        Self {
            state_dir: "/run/cocoon".into(),
            log_level: "info".into(),
            allowed_annotations: Vec::new(),
            pod_resources_socket: PathBuf::new(),
        }
    }
}

/// The whole file as written; every key has a default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)] // keys are documented in configs/cocoon-dev.toml
pub struct RawConfig {
    pub hypervisor: RawHypervisor,
    pub agent: RawAgent,
    pub runtime: RawRuntime,
    pub measurement: RawMeasurement,
    pub gpu: RawGpu,
}

/// `[gpu]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct RawGpu {
    pub cc_mode: String,
    pub on_mismatch: String,
    pub set_cc_mode_command: Vec<String>,
    pub extra_cc_capable_ids: Vec<String>,
    pub cdi_spec_dirs: Vec<PathBuf>,
    pub host_root: PathBuf,
}

impl Default for RawGpu {
    fn default() -> Self {
        RawGpu {
            cc_mode: "auto".into(),
            on_mismatch: "refuse".into(),
            set_cc_mode_command: Vec::new(),
            extra_cc_capable_ids: Vec::new(),
            cdi_spec_dirs: vec!["/etc/cdi".into(), "/var/run/cdi".into()],
            host_root: "/".into(),
        }
    }
}

/// Which CC mode passed-through GPUs must be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CcPolicy {
    /// This mode.
    Exact(crate::gpu::CcMode),
    /// Whatever mode (non-confidential guests only).
    Any,
}

/// What to do with a GPU in the wrong CC mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMismatch {
    /// Refuse the launch.
    Refuse,
    /// Run `set_cc_mode_command`, then check again.
    Set,
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

/// How VFIO devices are cold-plugged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColdPlug {
    /// One pcie-root-port per device.
    RootPort,
    /// VFIO passthrough disabled.
    NoPort,
}

/// `[measurement]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct RawMeasurement {
    pub expected: Vec<RawExpected>,
    pub snp_guest_features: u64,
    pub tdx_mrtd_order: String,
    pub tdx_load_options: String,
    pub tdx_kernel_setup_patch: String,
}

impl Default for RawMeasurement {
    fn default() -> Self {
        RawMeasurement {
            expected: Vec::new(),
            snp_guest_features: 0x1,
            tdx_mrtd_order: "per-page".into(),
            tdx_load_options: "initrd-first".into(),
            tdx_kernel_setup_patch: "auto".into(),
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
    pub tdx_mrtd_order: crate::measure::tdx::MrtdOrder,
    /// LoadOptions layout of the firmware.
    pub tdx_load_options: crate::measure::tdx::LoadOptions,
    /// Whether QEMU patches the kernel setup header (None: decide from
    /// `qemu --version`, patched before 10.2).
    pub tdx_kernel_setup_patch: Option<bool>,
}

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM where usable, else TCG.
    Auto,
    /// Hardware virtualization.
    Kvm,
    /// Software emulation.
    Tcg,
}

/// How the host reaches the agent's vsock port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// vhost-vsock where `/dev/vhost-vsock` exists, else vhost-user-vsock.
    Auto,
    /// Kernel vhost-vsock, host connects over AF_VSOCK.
    VhostVsock,
    /// vhost-device-vsock daemon with the hybrid unix-socket handshake.
    VhostUserVsock,
}

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Progress.
    Info,
    /// Details.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The slog level.
    pub fn to_slog(self) -> slog::Level {
        match self {
            Self::Error => slog::Level::Error,
            Self::Warn => slog::Level::Warning,
            Self::Info => slog::Level::Info,
            Self::Debug => slog::Level::Debug,
            Self::Trace => slog::Level::Trace,
        }
    }
}

/// virtiofsd cache policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// Stop each launch after building the QEMU argv (reported as an error).
    pub dry_run: bool,
}

/// Validated `[agent]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// Transport.
    pub transport: Transport,
    /// How long to wait for the agent.
    pub dial_timeout: Duration,
}

/// An annotation allow-list entry: exact key, or prefix when it ends in `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationPattern(String);

impl AnnotationPattern {
    /// Whether `key` matches.
    pub fn matches(&self, key: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix),
            None => key == self.0,
        }
    }
}

impl fmt::Display for AnnotationPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Validated `[runtime]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// State directory.
    pub state_dir: PathBuf,
    /// Log level.
    pub log_level: LogLevel,
    /// Annotation allow-list.
    pub allowed_annotations: Vec<AnnotationPattern>,
    /// The kubelet's PodResources socket, if set.
    pub pod_resources_socket: Option<PathBuf>,
}

/// The validated node configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where it came from (a path, or "built-in defaults").
    pub origin: String,
    /// The file as written, with defaults filled in (for `config show`).
    pub raw: RawConfig,
    /// `[hypervisor.qemu]`.
    pub qemu: QemuConfig,
    /// `[agent]`.
    pub agent: AgentConfig,
    /// `[runtime]`.
    pub runtime: RuntimeConfig,
    /// `[measurement]`.
    pub measurement: MeasurementConfig,
    /// `[gpu]`.
    pub gpu: GpuConfig,
}

/// Default SEV-SNP guest policy: SMT allowed (bit 16), reserved bit 17 set,
/// no debug, no migration agent (SEV-SNP ABI, "Guest Policy").
pub const DEFAULT_SNP_POLICY: u64 = 0x30000;

/// Bit 19 of the SNP policy: the guest may be debugged by the host.
pub const SNP_POLICY_DEBUG: u64 = 1 << 19;

/// Which trusted execution environment a VM runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

/// Kernel parameters the node config may not set: Cocoon owns them.
const RESERVED_KERNEL_PARAMS: &[&str] = &["init", "rdinit", "root", "console"];

impl RawConfig {
    /// Parses TOML text.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().replace('\n', " "),
        })
    }

    /// Validates every value and resolves choices.
    pub fn validate(self, origin: &str) -> Result<Config, ConfigError> {
        let invalid = |key: &'static str, value: String, problem: String| ConfigError::Invalid {
            origin: origin.to_string(),
            key,
            value,
            problem,
        };
        let q = &self.hypervisor.qemu;
        let abs = |key: &'static str, p: &Path| -> Result<PathBuf, ConfigError> {
            if p.is_absolute() {
                Ok(p.to_path_buf())
            } else {
                Err(invalid(
                    key,
                    format!("{p:?}"),
                    "must be an absolute path".into(),
                ))
            }
        };
        let accel = match q.accel.as_str() {
            "auto" => Accel::Auto,
            "kvm" => Accel::Kvm,
            "tcg" => Accel::Tcg,
            other => {
                return Err(invalid(
                    "hypervisor.qemu.accel",
                    format!("{other:?}"),
                    "use \"auto\", \"kvm\" or \"tcg\"".into(),
                ))
            }
        };
        if !(1..=240).contains(&q.default_vcpus) {
            return Err(invalid(
                "hypervisor.qemu.default_vcpus",
                q.default_vcpus.to_string(),
                "must be between 1 and 240".into(),
            ));
        }
        if !(64..=4 * 1024 * 1024).contains(&q.default_memory) {
            return Err(invalid(
                "hypervisor.qemu.default_memory",
                q.default_memory.to_string(),
                "is in MiB and must be between 64 and 4194304".into(),
            ));
        }
        if q.machine_type != "q35" {
            return Err(invalid(
                "hypervisor.qemu.machine_type",
                format!("{:?}", q.machine_type),
                "only \"q35\" is supported".into(),
            ));
        }
        if q.cpu_model.contains([',', ' ']) {
            return Err(invalid(
                "hypervisor.qemu.cpu_model",
                format!("{:?}", q.cpu_model),
                "must be a plain CPU model name such as \"host\", \"max\" or \"EPYC-v4\"".into(),
            ));
        }
        let kernel_params: Vec<String> = q
            .kernel_params
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if let Some(p) = kernel_params
            .iter()
            .find(|p| RESERVED_KERNEL_PARAMS.contains(&p.split('=').next().unwrap_or(p)))
        {
            return Err(invalid(
                "hypervisor.qemu.kernel_params",
                format!("{:?}", q.kernel_params),
                format!("{p:?} is set by Cocoon itself; remove it"),
            ));
        }
        let virtio_fs_cache = match q.virtio_fs_cache.as_str() {
            "never" => FsCache::Never,
            "metadata" => FsCache::Metadata,
            "auto" => FsCache::Auto,
            "always" => FsCache::Always,
            other => {
                return Err(invalid(
                    "hypervisor.qemu.virtio_fs_cache",
                    format!("{other:?}"),
                    "use \"never\", \"metadata\", \"auto\" or \"always\"".into(),
                ))
            }
        };
        let tee = match q.tee.as_str() {
            "none" => Tee::None,
            "snp" => Tee::Snp,
            "tdx" => Tee::Tdx,
            "auto" => Tee::Auto,
            other => {
                return Err(invalid(
                    "hypervisor.qemu.tee",
                    format!("{other:?}"),
                    "use \"none\", \"snp\", \"tdx\" or \"auto\"".into(),
                ))
            }
        };
        // SNP policy: bit 17 is reserved and must be 1; bits above 24 are
        // reserved and must be 0 (SEV-SNP ABI spec, "Guest Policy").
        if q.snp_guest_policy & (1 << 17) == 0 || q.snp_guest_policy >> 25 != 0 {
            return Err(invalid(
                "hypervisor.qemu.snp_guest_policy",
                format!("{:#x}", q.snp_guest_policy),
                "is not a valid SEV-SNP policy (bit 17 must be set, bits 25-63 clear); the usual value is 0x30000".into(),
            ));
        }
        if tee != Tee::None && q.snp_guest_policy & SNP_POLICY_DEBUG != 0 && !q.debug_console {
            return Err(invalid(
                "hypervisor.qemu.snp_guest_policy",
                format!("{:#x}", q.snp_guest_policy),
                "allows host debugging of a confidential guest; clear bit 19 (or set debug_console = true to say this is a debug node)".into(),
            ));
        }
        if matches!(tee, Tee::Snp | Tee::Tdx | Tee::Auto) && accel == Accel::Tcg {
            return Err(invalid(
                "hypervisor.qemu.accel",
                "\"tcg\"".into(),
                format!(
                    "a confidential guest (tee = {:?}) needs KVM; use \"auto\" or \"kvm\"",
                    q.tee
                ),
            ));
        }
        let qemu = QemuConfig {
            path: abs("hypervisor.qemu.path", &q.path)?,
            kernel: abs("hypervisor.qemu.kernel", &q.kernel)?,
            initrd: abs("hypervisor.qemu.initrd", &q.initrd)?,
            firmware: if q.firmware.as_os_str().is_empty() {
                None
            } else {
                Some(abs("hypervisor.qemu.firmware", &q.firmware)?)
            },
            machine_type: q.machine_type.clone(),
            accel,
            cpu_model: (!q.cpu_model.is_empty()).then(|| q.cpu_model.clone()),
            vcpus: q.default_vcpus,
            memory_mib: q.default_memory,
            kernel_params,
            debug_console: q.debug_console,
            virtio_fs_daemon: abs("hypervisor.qemu.virtio_fs_daemon", &q.virtio_fs_daemon)?,
            virtio_fs_cache,
            vhost_user_vsock_daemon: abs(
                "hypervisor.qemu.vhost_user_vsock_daemon",
                &q.vhost_user_vsock_daemon,
            )?,
            tee,
            snp_guest_policy: q.snp_guest_policy,
            tdx_quote_generation_socket: abs(
                "hypervisor.qemu.tdx_quote_generation_socket",
                &q.tdx_quote_generation_socket,
            )?,
            cold_plug_vfio: match q.cold_plug_vfio.as_str() {
                "root-port" => ColdPlug::RootPort,
                "no-port" => ColdPlug::NoPort,
                other => {
                    return Err(invalid(
                        "hypervisor.qemu.cold_plug_vfio",
                        format!("{other:?}"),
                        "use \"root-port\" (one pcie-root-port per device) or \"no-port\" (no VFIO devices)".into(),
                    ))
                }
            },
            pcie_root_port: if q.pcie_root_port <= 16 {
                q.pcie_root_port
            } else {
                return Err(invalid(
                    "hypervisor.qemu.pcie_root_port",
                    q.pcie_root_port.to_string(),
                    "must be between 0 and 16".into(),
                ));
            },
            pci_mmio64_mb: if q.pci_mmio64_mb == 0 || (q.pci_mmio64_mb.is_power_of_two() && q.pci_mmio64_mb <= 1 << 24) {
                q.pci_mmio64_mb
            } else {
                return Err(invalid(
                    "hypervisor.qemu.pci_mmio64_mb",
                    q.pci_mmio64_mb.to_string(),
                    "must be 0 (firmware default) or a power of two up to 16777216 (16 TiB), e.g. 262144 for GPUs with 128 GiB BARs".into(),
                ));
            },
            dry_run: q.dry_run,
        };

        let a = &self.agent;
        let transport = match a.transport.as_str() {
            "auto" => Transport::Auto,
            "vhost-vsock" => Transport::VhostVsock,
            "vhost-user-vsock" => Transport::VhostUserVsock,
            other => {
                return Err(invalid(
                    "agent.transport",
                    format!("{other:?}"),
                    "use \"auto\", \"vhost-vsock\" or \"vhost-user-vsock\"".into(),
                ))
            }
        };
        if !(1..=600).contains(&a.dial_timeout) {
            return Err(invalid(
                "agent.dial_timeout",
                a.dial_timeout.to_string(),
                "is in seconds and must be between 1 and 600".into(),
            ));
        }
        let agent = AgentConfig {
            transport,
            dial_timeout: Duration::from_secs(a.dial_timeout),
        };

        let r = &self.runtime;
        let log_level = match r.log_level.as_str() {
            "error" => LogLevel::Error,
            "warn" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            other => {
                return Err(invalid(
                    "runtime.log_level",
                    format!("{other:?}"),
                    "use \"error\", \"warn\", \"info\", \"debug\" or \"trace\"".into(),
                ))
            }
        };
        let mut allowed = Vec::new();
        for p in &r.allowed_annotations {
            let star = p.find('*');
            if p.is_empty() || star.is_some_and(|i| i != p.len() - 1) {
                return Err(invalid(
                    "runtime.allowed_annotations",
                    format!("{p:?}"),
                    "entries are annotation keys, optionally ending in `*` (e.g. \"io.cocoon.*\")"
                        .into(),
                ));
            }
            allowed.push(AnnotationPattern(p.clone()));
        }
        let runtime = RuntimeConfig {
            state_dir: abs("runtime.state_dir", &r.state_dir)?,
            log_level,
            allowed_annotations: allowed,
            pod_resources_socket: if r.pod_resources_socket.as_os_str().is_empty() {
                None
            } else {
                Some(abs(
                    "runtime.pod_resources_socket",
                    &r.pod_resources_socket,
                )?)
            },
        };
        let measurement = self.measurement.validate(qemu.tee, &invalid)?;
        let gpu = self.gpu.validate(qemu.tee, &invalid)?;
        Ok(Config {
            origin: origin.to_string(),
            raw: self,
            qemu,
            agent,
            runtime,
            measurement,
            gpu,
        })
    }
}

impl RawGpu {
    fn validate(
        &self,
        tee: Tee,
        invalid: &dyn Fn(&'static str, String, String) -> ConfigError,
    ) -> Result<GpuConfig, ConfigError> {
        use crate::gpu::CcMode;
        let confidential = matches!(tee, Tee::Snp | Tee::Tdx);
        let cc_mode = match self.cc_mode.as_str() {
            "auto" if tee == Tee::None => CcPolicy::Exact(CcMode::Off),
            "auto" => CcPolicy::Exact(CcMode::On),
            "on" => CcPolicy::Exact(CcMode::On),
            "devtools" => CcPolicy::Exact(CcMode::Devtools),
            "off" if !confidential => CcPolicy::Exact(CcMode::Off),
            "any" if !confidential => CcPolicy::Any,
            v @ ("off" | "any") => {
                return Err(invalid(
                    "gpu.cc_mode",
                    format!("{v:?}"),
                    format!("a confidential guest (tee = {:?}) must not use a GPU outside CC mode: its DMA and MMIO would be readable by the host; use \"on\" (or \"devtools\" for debugging)", tee.as_str()),
                ))
            }
            other => {
                return Err(invalid(
                    "gpu.cc_mode",
                    format!("{other:?}"),
                    "use \"auto\" (on for confidential guests, off otherwise), \"on\", \"devtools\", \"off\" or \"any\"".into(),
                ))
            }
        };
        let on_mismatch = match self.on_mismatch.as_str() {
            "refuse" => OnMismatch::Refuse,
            "set" if self.set_cc_mode_command.is_empty() => {
                return Err(invalid(
                    "gpu.on_mismatch",
                    "\"set\"".into(),
                    "needs `gpu.set_cc_mode_command`, e.g. [\"/usr/local/bin/nvidia_gpu_tools.py\", \"--gpu-bdf={bdf}\", \"--set-cc-mode={mode}\", \"--reset-after-cc-mode-switch\"]".into(),
                ))
            }
            "set" if cc_mode == CcPolicy::Any => {
                return Err(invalid(
                    "gpu.on_mismatch",
                    "\"set\"".into(),
                    "with cc_mode = \"any\" there is no mode to set; use \"refuse\"".into(),
                ))
            }
            "set" => OnMismatch::Set,
            other => {
                return Err(invalid(
                    "gpu.on_mismatch",
                    format!("{other:?}"),
                    "use \"refuse\" or \"set\"".into(),
                ))
            }
        };
        let mut extra = Vec::new();
        for id in &self.extra_cc_capable_ids {
            let parsed = id.split_once(':').and_then(|(v, d)| {
                (v.len() == 4 && d.len() == 4).then_some(())?;
                Some((
                    u16::from_str_radix(v, 16).ok()?,
                    u16::from_str_radix(d, 16).ok()?,
                ))
            });
            match parsed {
                Some(p) => extra.push(p),
                None => {
                    return Err(invalid(
                        "gpu.extra_cc_capable_ids",
                        format!("{id:?}"),
                        "entries are PCI IDs \"vendor:device\" in hex, e.g. \"10de:2b85\"".into(),
                    ))
                }
            }
        }
        for (key, p) in self
            .cdi_spec_dirs
            .iter()
            .map(|p| ("gpu.cdi_spec_dirs", p))
            .chain(std::iter::once(("gpu.host_root", &self.host_root)))
        {
            if !p.is_absolute() {
                return Err(invalid(
                    key,
                    format!("{p:?}"),
                    "must be an absolute path".into(),
                ));
            }
        }
        Ok(GpuConfig {
            cc_mode,
            on_mismatch,
            set_cc_mode_command: self.set_cc_mode_command.clone(),
            extra_cc_capable_ids: extra,
            cdi_spec_dirs: self.cdi_spec_dirs.clone(),
            host_root: self.host_root.clone(),
        })
    }
}

impl RawMeasurement {
    fn validate(
        &self,
        tee: Tee,
        invalid: &dyn Fn(&'static str, String, String) -> ConfigError,
    ) -> Result<MeasurementConfig, ConfigError> {
        use crate::measure::tdx::{LoadOptions, MrtdOrder};
        let digest = |v: &str, what: &str| -> Result<[u8; 48], ConfigError> {
            let mut out = [0u8; 48];
            match hex::decode_to_slice(v, &mut out) {
                Ok(()) => Ok(out),
                Err(_) => Err(invalid(
                    "measurement.expected",
                    format!("{v:?}"),
                    format!(
                        "{what} must be 96 hex digits (48 bytes), as `cocoon measure --config` prints it"
                    ),
                )),
            }
        };
        let mut expected = Vec::new();
        for e in &self.expected {
            expected.push(match e {
                RawExpected::Snp(d) => Expected::Snp(digest(d, "an SEV-SNP launch digest")?),
                RawExpected::Tdx { mrtd, rtmr1, rtmr2 } => Expected::Tdx {
                    mrtd: digest(mrtd, "mrtd")?,
                    rtmr1: digest(rtmr1, "rtmr1")?,
                    rtmr2: digest(rtmr2, "rtmr2")?,
                },
            });
        }
        let kind_mismatch = expected.iter().find(|e| {
            matches!(
                (tee, e),
                (Tee::Snp, Expected::Tdx { .. }) | (Tee::Tdx, Expected::Snp(_)) | (Tee::None, _)
            )
        });
        if kind_mismatch.is_some() {
            return Err(invalid(
                "measurement.expected",
                format!("{} entries", expected.len()),
                match tee {
                    Tee::None => "pins a launch measurement, but `hypervisor.qemu.tee` = \"none\" has none; set tee to \"snp\" or \"tdx\" or remove the pins".into(),
                    Tee::Snp => "has a TDX entry ({ mrtd, rtmr1, rtmr2 }) but tee = \"snp\"; SEV-SNP entries are launch-digest strings".into(),
                    _ => "has an SEV-SNP launch-digest string but tee = \"tdx\"; TDX entries are tables { mrtd = \"..\", rtmr1 = \"..\", rtmr2 = \"..\" }".into(),
                },
            ));
        }
        if self.snp_guest_features >> 16 != 0 || self.snp_guest_features & 1 == 0 {
            return Err(invalid(
                "measurement.snp_guest_features",
                format!("{:#x}", self.snp_guest_features),
                "bit 0 (SNPActive) must be set and bits 16-63 are reserved; KVM's default is 0x1"
                    .into(),
            ));
        }
        let tdx_mrtd_order = match self.tdx_mrtd_order.as_str() {
            "per-page" => MrtdOrder::PerPage,
            "two-pass" => MrtdOrder::TwoPass,
            other => {
                return Err(invalid(
                    "measurement.tdx_mrtd_order",
                    format!("{other:?}"),
                    "use \"per-page\" (upstream KVM, Linux 6.16+ with QEMU 10.1+) or \"two-pass\" (QEMU 8.x TDX trees)".into(),
                ))
            }
        };
        let tdx_load_options =
            match self.tdx_load_options.as_str() {
                "initrd-first" => LoadOptions::InitrdFirst,
                "cmdline-first" => LoadOptions::CmdlineFirst,
                other => return Err(invalid(
                    "measurement.tdx_load_options",
                    format!("{other:?}"),
                    "use \"initrd-first\" (edk2 from mid-2025) or \"cmdline-first\" (older edk2)"
                        .into(),
                )),
            };
        let tdx_kernel_setup_patch = match self.tdx_kernel_setup_patch.as_str() {
            "auto" => None,
            "on" => Some(true),
            "off" => Some(false),
            other => {
                return Err(invalid(
                    "measurement.tdx_kernel_setup_patch",
                    format!("{other:?}"),
                    "use \"auto\" (from `qemu --version`), \"on\" (QEMU up to 10.1) or \"off\" (QEMU 10.2+)".into(),
                ))
            }
        };
        Ok(MeasurementConfig {
            expected,
            snp_guest_features: self.snp_guest_features,
            tdx_mrtd_order,
            tdx_load_options,
            tdx_kernel_setup_patch,
        })
    }
}

impl Config {
    /// Parses and validates TOML text.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        RawConfig::parse(text, origin)?.validate(origin)
    }

    /// Reads and validates a file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// The built-in development defaults.
    pub fn dev_defaults() -> Result<Self, ConfigError> {
        Self::from_toml(DEV_DEFAULTS, "built-in defaults")
    }

    /// Loads the configuration the way every Cocoon binary does: `explicit`
    /// (a flag or the containerd `ConfigPath` option), else `$COCOON_CONFIG`,
    /// else `/etc/cocoon/config.toml` if it exists, else the built-in
    /// development defaults.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        if let Some(p) = explicit {
            return Self::from_file(p);
        }
        if let Some(p) = std::env::var_os(ENV_PATH).filter(|v| !v.is_empty()) {
            return Self::from_file(Path::new(&p));
        }
        let default = Path::new(DEFAULT_PATH);
        if default.exists() {
            return Self::from_file(default);
        }
        Self::dev_defaults()
    }

    /// Checks that the files the configuration names exist.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        let q = &self.qemu;
        let mut files: Vec<(&'static str, &Path, &'static str)> = vec![
            (
                "hypervisor.qemu.path",
                &q.path,
                "install QEMU 10 (make deps) or fix the path",
            ),
            (
                "hypervisor.qemu.kernel",
                &q.kernel,
                "build the guest (make guest) and install it (make install), or fix the path",
            ),
            (
                "hypervisor.qemu.initrd",
                &q.initrd,
                "build the guest (make guest) and install it (make install), or fix the path",
            ),
            (
                "hypervisor.qemu.virtio_fs_daemon",
                &q.virtio_fs_daemon,
                "install virtiofsd (make deps install) or fix the path",
            ),
        ];
        if let Some(fw) = &q.firmware {
            files.push((
                "hypervisor.qemu.firmware",
                fw,
                "install the firmware package or fix the path",
            ));
        }
        if self.agent.transport != Transport::VhostVsock {
            files.push((
                "hypervisor.qemu.vhost_user_vsock_daemon",
                &q.vhost_user_vsock_daemon,
                "install vhost-device-vsock (make deps install) or fix the path",
            ));
        }
        for (key, path, problem) in files {
            if !path.is_file() {
                return Err(ConfigError::MissingFile {
                    key,
                    path: path.to_path_buf(),
                    problem,
                });
            }
        }
        Ok(())
    }

    /// The effective configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(&self.raw).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::from_toml(text, "test.toml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn dev_defaults_are_valid_and_match_the_serde_defaults_where_documented() {
        let c = Config::dev_defaults().unwrap();
        assert_eq!(c.qemu.accel, Accel::Auto);
        assert_eq!(c.qemu.vcpus, 1);
        assert_eq!(c.qemu.memory_mib, 1024);
        assert_eq!(c.agent.transport, Transport::Auto);
        assert_eq!(c.agent.dial_timeout, Duration::from_secs(30));
        assert_eq!(c.runtime.state_dir, PathBuf::from("/run/cocoon"));
        assert!(c.qemu.debug_console);
        // An empty file gives the serde defaults, which only differ in the
        // console (off unless asked for).
        let empty = Config::from_toml("", "empty").unwrap();
        assert!(!empty.qemu.debug_console);
        assert_eq!(empty.qemu.kernel, c.qemu.kernel);
    }

    #[test]
    fn shipped_tee_configs_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let snp = Config::from_file(&root.join("cocoon-qemu-snp.toml")).unwrap();
        assert_eq!(
            (snp.qemu.tee, snp.qemu.accel, snp.qemu.debug_console),
            (Tee::Snp, Accel::Kvm, false)
        );
        assert_eq!(snp.qemu.snp_guest_policy, DEFAULT_SNP_POLICY);
        let tdx = Config::from_file(&root.join("cocoon-qemu-tdx.toml")).unwrap();
        assert_eq!(tdx.qemu.tee, Tee::Tdx);
        assert!(tdx.qemu.firmware.is_some());
        for tee in ["snp", "tdx"] {
            let c = Config::from_file(&root.join(format!("cocoon-qemu-nvidia-gpu-{tee}.toml")))
                .unwrap();
            assert_eq!(c.gpu.cc_mode, CcPolicy::Exact(crate::gpu::CcMode::On));
            assert_eq!(c.qemu.cold_plug_vfio, ColdPlug::RootPort);
            assert!(c.qemu.tee == Tee::Snp || c.qemu.tee == Tee::Tdx);
            assert!(!c.gpu.set_cc_mode_command.is_empty());
        }
    }

    #[test]
    fn show_round_trips() {
        let c = Config::dev_defaults().unwrap();
        let again = Config::from_toml(&c.to_toml(), "shown").unwrap();
        assert_eq!(again.raw, c.raw);
    }

    #[test]
    fn a_full_custom_file() {
        let c = Config::from_toml(
            r#"
            [hypervisor.qemu]
            accel = "tcg"
            default_vcpus = 4
            default_memory = 2048
            kernel_params = "quiet  loglevel=3"
            firmware = "/usr/share/ovmf/OVMF.fd"
            [agent]
            transport = "vhost-user-vsock"
            dial_timeout = 5
            [runtime]
            log_level = "debug"
            allowed_annotations = ["io.cocoon.*", "io.katacontainers.config.hypervisor.cc_init_data"]
            "#,
            "custom",
        )
        .unwrap();
        assert_eq!(c.qemu.accel, Accel::Tcg);
        assert_eq!(c.qemu.kernel_params, vec!["quiet", "loglevel=3"]);
        assert_eq!(
            c.qemu.firmware,
            Some(PathBuf::from("/usr/share/ovmf/OVMF.fd"))
        );
        assert_eq!(c.agent.transport, Transport::VhostUserVsock);
        assert_eq!(c.runtime.log_level, LogLevel::Debug);
        assert!(c.runtime.allowed_annotations[0].matches("io.cocoon.gpu"));
        assert!(!c.runtime.allowed_annotations[0].matches("io.other"));
        assert!(c.runtime.allowed_annotations[1]
            .matches("io.katacontainers.config.hypervisor.cc_init_data"));
        assert!(!c.runtime.allowed_annotations[1]
            .matches("io.katacontainers.config.hypervisor.cc_init_data2"));
    }

    #[test]
    fn bad_files_name_the_key_and_the_fix() {
        let cases: &[(&str, &[&str])] = &[
            (
                "[hypervisor.qemu]\nfoo = 1",
                &["unknown field `foo`", "test.toml"],
            ),
            (
                "[hypervisor.qemu]\naccel = \"xen\"",
                &["hypervisor.qemu.accel", "\"xen\"", "\"tcg\""],
            ),
            (
                "[hypervisor.qemu]\ndefault_vcpus = 0",
                &["hypervisor.qemu.default_vcpus", "between 1 and 240"],
            ),
            (
                "[hypervisor.qemu]\ndefault_memory = 16",
                &["hypervisor.qemu.default_memory", "MiB"],
            ),
            (
                "[hypervisor.qemu]\ndefault_vcpus = \"two\"",
                &["invalid type", "default_vcpus"],
            ),
            (
                "[hypervisor.qemu]\nkernel = \"vmlinuz\"",
                &["hypervisor.qemu.kernel", "absolute path"],
            ),
            (
                "[hypervisor.qemu]\nkernel_params = \"init=/bin/sh\"",
                &["hypervisor.qemu.kernel_params", "set by Cocoon"],
            ),
            (
                "[hypervisor.qemu]\nmachine_type = \"pc\"",
                &["hypervisor.qemu.machine_type", "q35"],
            ),
            (
                "[hypervisor.qemu]\ncpu_model = \"host,+sev\"",
                &["hypervisor.qemu.cpu_model"],
            ),
            (
                "[hypervisor.qemu]\nvirtio_fs_cache = \"sometimes\"",
                &["hypervisor.qemu.virtio_fs_cache"],
            ),
            (
                "[agent]\ntransport = \"tcp\"",
                &["agent.transport", "vhost-user-vsock"],
            ),
            (
                "[agent]\ndial_timeout = 0",
                &["agent.dial_timeout", "seconds"],
            ),
            (
                "[runtime]\nlog_level = \"loud\"",
                &["runtime.log_level", "\"debug\""],
            ),
            (
                "[runtime]\nallowed_annotations = [\"io.*.x\"]",
                &["runtime.allowed_annotations", "ending in `*`"],
            ),
            (
                "[runtime]\nstate_dir = \"run\"",
                &["runtime.state_dir", "absolute"],
            ),
            (
                "[measurement]\nexpected = [\"abcd\"]",
                &["measurement.expected", "96 hex digits", "\"abcd\""],
            ),
            (
                "[measurement]\nexpected = [\"000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\"]\n[hypervisor.qemu]\ntee = \"none\"",
                &["measurement.expected", "`hypervisor.qemu.tee` = \"none\" has none"],
            ),
            (
                "[hypervisor.qemu]\ntee = \"snp\"\naccel = \"kvm\"\n[measurement]\nexpected = [{ mrtd = \"\", rtmr1 = \"\", rtmr2 = \"\" }]",
                &["measurement.expected", "mrtd must be 96 hex digits"],
            ),
            (
                "[measurement]\ntdx_mrtd_order = \"random\"",
                &["measurement.tdx_mrtd_order", "per-page"],
            ),
            (
                "[measurement]\ntdx_load_options = \"x\"",
                &["measurement.tdx_load_options", "initrd-first"],
            ),
            (
                "[measurement]\ntdx_kernel_setup_patch = \"yes\"",
                &["measurement.tdx_kernel_setup_patch", "QEMU up to 10.1"],
            ),
            (
                "[measurement]\nsnp_guest_features = 0x20",
                &["measurement.snp_guest_features", "SNPActive"],
            ),
            (
                "[hypervisor.qemu]\ntee = \"snp\"\naccel = \"kvm\"\n[gpu]\ncc_mode = \"off\"",
                &["gpu.cc_mode", "must not use a GPU outside CC mode"],
            ),
            (
                "[gpu]\ncc_mode = \"maybe\"",
                &["gpu.cc_mode", "\"devtools\""],
            ),
            (
                "[gpu]\non_mismatch = \"set\"",
                &["gpu.on_mismatch", "needs `gpu.set_cc_mode_command`"],
            ),
            (
                "[gpu]\nextra_cc_capable_ids = [\"10de-2b85\"]",
                &["gpu.extra_cc_capable_ids", "\"10de:2b85\""],
            ),
            (
                "[gpu]\ncdi_spec_dirs = [\"cdi\"]",
                &["gpu.cdi_spec_dirs", "absolute"],
            ),
            (
                "[hypervisor.qemu]\ncold_plug_vfio = \"bridge-port\"",
                &["hypervisor.qemu.cold_plug_vfio", "\"root-port\""],
            ),
            (
                "[hypervisor.qemu]\npcie_root_port = 17",
                &["hypervisor.qemu.pcie_root_port", "between 0 and 16"],
            ),
            (
                "[hypervisor.qemu]\npci_mmio64_mb = 1000",
                &["hypervisor.qemu.pci_mmio64_mb", "power of two"],
            ),
            (
                "[runtime]\npod_resources_socket = \"kubelet.sock\"",
                &["runtime.pod_resources_socket", "absolute"],
            ),
            ("[hypervisor.qemu", &["test.toml", "line 1"]),
            ("[runtimes]\nx = 1", &["unknown field `runtimes`"]),
        ];
        for (text, needles) in cases {
            let e = err(text);
            for n in *needles {
                assert!(e.contains(n), "config {text:?}: error {e:?} lacks {n:?}");
            }
            assert!(!e.contains('\n'), "one line: {e:?}");
        }
    }

    #[test]
    fn gpu_cc_mode_auto_follows_the_tee() {
        use crate::gpu::CcMode;
        let dev = Config::dev_defaults().unwrap();
        assert_eq!(dev.gpu.cc_mode, CcPolicy::Exact(CcMode::Off));
        assert_eq!(dev.gpu.on_mismatch, OnMismatch::Refuse);
        let snp =
            Config::from_toml("[hypervisor.qemu]\ntee = \"snp\"\naccel = \"kvm\"", "t").unwrap();
        assert_eq!(snp.gpu.cc_mode, CcPolicy::Exact(CcMode::On));
        let any = Config::from_toml(
            "[gpu]\ncc_mode = \"any\"\nextra_cc_capable_ids = [\"10DE:2b85\"]",
            "t",
        )
        .unwrap();
        assert_eq!(any.gpu.cc_mode, CcPolicy::Any);
        assert_eq!(any.gpu.extra_cc_capable_ids, vec![(0x10de, 0x2b85)]);
    }

    #[test]
    fn pinned_measurements_by_tee() {
        let d = "ab".repeat(48);
        let snp = Config::from_toml(
            &format!("[hypervisor.qemu]\ntee = \"snp\"\naccel = \"kvm\"\n[measurement]\nexpected = [\"{d}\"]"),
            "t",
        )
        .unwrap();
        assert_eq!(snp.measurement.expected, vec![Expected::Snp([0xab; 48])]);
        let tdx = Config::from_toml(
            &format!("[hypervisor.qemu]\ntee = \"tdx\"\naccel = \"kvm\"\n[measurement]\nexpected = [{{ mrtd = \"{d}\", rtmr1 = \"{d}\", rtmr2 = \"{d}\" }}]"),
            "t",
        )
        .unwrap();
        assert!(matches!(tdx.measurement.expected[0], Expected::Tdx { .. }));
        let e = err(&format!("[hypervisor.qemu]\ntee = \"tdx\"\naccel = \"kvm\"\n[measurement]\nexpected = [\"{d}\"]"));
        assert!(
            e.contains("SEV-SNP launch-digest string but tee = \"tdx\""),
            "{e}"
        );
        // Unpinned by default.
        assert!(Config::dev_defaults()
            .unwrap()
            .measurement
            .expected
            .is_empty());
    }

    #[test]
    fn missing_and_unreadable_files() {
        let e = Config::from_file(Path::new("/nonexistent/cocoon.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot read config file /nonexistent/cocoon.toml"),
            "{e}"
        );
        let mut c = Config::dev_defaults().unwrap();
        c.qemu.kernel = "/nonexistent/vmlinuz".into();
        c.qemu.path = "/bin/sh".into();
        c.qemu.initrd = "/bin/sh".into();
        c.qemu.virtio_fs_daemon = "/bin/sh".into();
        let e = c.check_files().unwrap_err().to_string();
        assert!(
            e.contains("hypervisor.qemu.kernel") && e.contains("make guest"),
            "{e}"
        );
    }
}
