//! [`LaunchPlan`]: every decision of a launch — reference values and pins,
//! the TEE, the PCI devices, the helper daemons' and QEMU's command lines,
//! where the agent will answer — computed from (node config, request, host
//! view) before anything starts. [`crate::vm::Vm::launch`] only follows it.
//!
//! Building a plan reads files (the measured kernel, initrd and firmware,
//! sysfs through [`HostView`]) and may ask QEMU which objects it knows; it
//! starts nothing and creates nothing, except that a GPU whose CC mode
//! differs from `[gpu]` is switched by the admin's command when
//! `gpu.on_mismatch = "set"`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cocoon_protocol::AGENT_VSOCK_PORT;
use serde::Serialize;

use super::helpers::{command_line, HelperSpec};
use crate::agent::AgentAddr;
use crate::config::{Accel, ColdPlug, Config, ConfigError, Tee, Transport};
use crate::gpu::{CcMode, GpuError};
use crate::host::HostRoots;
use crate::measure::{Kind as MeasureKind, MeasureError, Reference};
use crate::pci::PciBdf;
use crate::qemu::argv::{
    kernel_cmdline, DiskArg, FsShare, NicArg, PciArgs, ResolvedAccel, VfioArg, VmArgs, VsockDevice,
};
use crate::tee::{HostTee, LaunchTee, TeeError};
use crate::vfio::{Backend, VfioDevice};

/// At most this many PCI functions fit behind the root ports of one VM.
pub const MAX_PCI_FUNCTIONS: usize = 16;

/// A host directory shared into the guest over virtio-fs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// Mount tag.
    pub tag: String,
    /// Host directory.
    pub dir: PathBuf,
}

/// What to launch.
#[derive(Debug, Clone, Default)]
pub struct LaunchRequest {
    /// Unique id (sandbox id); names the state directory.
    pub id: String,
    /// The VM's state directory (created by the launch, must not exist);
    /// default `<runtime.state_dir>/<id>`.
    pub dir: Option<PathBuf>,
    /// virtio-fs shares.
    pub shares: Vec<Share>,
    /// PCI functions to pass through, resolved by the caller
    /// ([`crate::vfio::resolve`]).
    pub devices: Vec<VfioDevice>,
    /// Guest CID for kernel vhost-vsock; random when `None`.
    pub vsock_cid: Option<u32>,
    /// The pod's initdata document (exact bytes): its digest goes into
    /// HOST_DATA (SEV-SNP) / MRCONFIGID (TDX) and the reference values.
    pub initdata: Option<Vec<u8>>,
    /// Host vsock ports the guest may dial, each relayed to a fixed host
    /// address.
    pub relays: Vec<GuestRelay>,
    /// The pod's network interfaces, each on a tap the caller opened
    /// ([`crate::net::mirror`]) and keeps open until QEMU runs.
    pub nics: Vec<PlannedNic>,
    /// Read-only disks (virtio-blk), in order: the guest sees them as
    /// vda, vdb, ... and by their serials.
    pub disks: Vec<PlannedDisk>,
    /// Empty root ports to hot-plug disks into later (`hp0`, `hp1`, ...,
    /// [`crate::qemu::argv::hotplug_port`]): the layer disks of the pod's
    /// containers.
    pub hotplug_slots: u32,
}

/// A host file given to the VM as a read-only virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedDisk {
    /// The file or block device.
    pub path: PathBuf,
    /// The serial the guest reads from `/sys/block/vdX/serial`: 1 to 20
    /// letters, digits, `-` or `_`.
    pub serial: String,
}

/// A pod interface given to the VM as virtio-net on an open tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedNic {
    /// MAC address.
    pub mac: String,
    /// MTU.
    pub mtu: u32,
    /// The tap's queue fds in this process; QEMU inherits them as 3, 4,
    /// ... in order.
    pub tap_fds: Vec<std::os::fd::RawFd>,
}

/// A host vsock port the guest may dial, relayed to `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestRelay {
    /// Host vsock port.
    pub port: u32,
    /// `host:port` the streams are connected to.
    pub target: String,
}

/// The host as a launch sees it: where host facts are read, the CPUID
/// source, and what QEMU knows.
#[derive(Debug, Clone)]
pub struct HostView {
    /// `/proc`, `/dev`, `/sys` (fixture trees in tests).
    pub roots: HostRoots,
    /// CPUID (the real instruction, or a recorded CPU).
    pub cpuid: fn(u32) -> (u32, u32, u32, u32),
    /// QOM object types QEMU knows; `None` asks `qemu -object help`.
    pub qemu_objects: Option<Vec<String>>,
}

impl HostView {
    /// This host.
    pub fn detect() -> Self {
        Self {
            roots: HostRoots::default(),
            cpuid: crate::tee::host_cpuid,
            qemu_objects: None,
        }
    }
}

/// Why a launch cannot be planned. Each is a host or configuration problem
/// the caller can fix; nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The configuration names a missing file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The reference values cannot be computed or are not pinned.
    #[error(transparent)]
    Measure(#[from] MeasureError),
    /// The configured TEE cannot run here.
    #[error(transparent)]
    Tee(#[from] TeeError),
    /// A GPU does not satisfy `[gpu]`.
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// `accel = "kvm"` on a host where KVM cannot run guests.
    #[error("`hypervisor.qemu.accel` = \"kvm\" but KVM cannot run guests here (no /dev/kvm or no vmx/svm CPU flag); use \"auto\" or \"tcg\"")]
    KvmUnavailable,
    /// `transport = "vhost-vsock"` without the kernel device.
    #[error("`agent.transport` = \"vhost-vsock\" but /dev/vhost-vsock does not exist; load the vhost_vsock module or use \"vhost-user-vsock\"")]
    NoVhostVsock,
    /// QEMU does not know the TEE's object.
    #[error("{qemu} does not know the `{object}` object (QEMU {needed} or newer is needed for `hypervisor.qemu.tee` = \"{tee}\"); install a newer QEMU or point `hypervisor.qemu.path` at one")]
    QemuTooOld {
        /// The binary.
        qemu: PathBuf,
        /// The QOM type.
        object: &'static str,
        /// Minimum version.
        needed: &'static str,
        /// Config value.
        tee: &'static str,
    },
    /// VFIO devices requested with `cold_plug_vfio = "no-port"`.
    #[error("the pod asks for VFIO devices but `hypervisor.qemu.cold_plug_vfio` = \"no-port\"; set it to \"root-port\"")]
    ColdPlugDisabled,
    /// More PCI functions than root ports.
    #[error("the pod asks for {0} PCI functions; at most 16 root ports fit")]
    TooManyFunctions(usize),
    /// A path would not fit a unix socket address.
    #[error("socket path {0} is longer than 107 bytes; use a shorter `runtime.state_dir`")]
    SocketPathTooLong(PathBuf),
    /// A shared directory is not a directory.
    #[error("shared directory {0} is not a directory")]
    NotADirectory(PathBuf),
    /// Guest-to-host relays need the hybrid vsock of vhost-device-vsock.
    #[error("the pod's KBS relay needs `agent.transport` = \"vhost-user-vsock\" (the kernel vhost-vsock relay is not implemented yet); set it, or leave `attestation.kbs_url` empty")]
    RelayNeedsHybridVsock,
    /// A disk that cannot be attached.
    #[error("disk {path}: {problem}")]
    BadDisk {
        /// The file.
        path: PathBuf,
        /// Why.
        problem: String,
    },
    /// The measuring task panicked or was cancelled.
    #[error("the planning task failed: {0}")]
    Task(String),
}

/// A PCI function the plan passes through, with what was checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedDevice {
    /// Host PCI address.
    pub bdf: PciBdf,
    /// The request it came from (device path or CDI name).
    pub request: String,
    /// `vendor:device`.
    pub id: String,
    /// CC mode read from the GPU (`None` for other functions).
    pub cc_mode: Option<&'static str>,
}

/// Every decision of one launch.
#[derive(Debug, Clone)]
pub struct LaunchPlan {
    /// The request id.
    pub id: String,
    /// State directory the launch creates.
    pub dir: PathBuf,
    /// Reference values (checked against the pins already).
    pub measurement: Reference,
    /// The TEE and its QEMU object's parameters.
    pub tee: LaunchTee,
    /// Accelerator.
    pub accel: ResolvedAccel,
    /// Agent transport.
    pub transport: Transport,
    /// PCI functions passed through.
    pub devices: Vec<PlannedDevice>,
    /// Helper daemons, started in this order before QEMU.
    pub helpers: Vec<HelperSpec>,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// QEMU's argv after the binary.
    pub qemu_args: Vec<OsString>,
    /// QEMU's stdout/stderr.
    pub qemu_log: PathBuf,
    /// QMP socket.
    pub qmp_socket: PathBuf,
    /// Serial console log, when `debug_console` is on.
    pub console_log: Option<PathBuf>,
    /// Where the agent answers.
    pub agent: AgentAddr,
    /// Guest-to-host byte relays, started before QEMU.
    pub relays: Vec<crate::vm::relay::PlannedRelay>,
    /// Fds QEMU inherits as 3, 4, ... (the taps of `-netdev tap,fd=`).
    pub qemu_fds: Vec<std::os::fd::RawFd>,
    /// Launch → agent-ready budget.
    pub dial_timeout: Duration,
    /// Things the admin should know (logged at launch).
    pub warnings: Vec<&'static str>,
    /// Stop after planning (`hypervisor.qemu.dry_run`).
    pub dry_run: bool,
}

/// The resolved choices for one launch (also used by `cocoon config show`
/// and measurement code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// Accelerator.
    pub accel: ResolvedAccel,
    /// Agent transport.
    pub transport: Transport,
}

/// Resolves `auto` choices against the host.
pub fn resolve(config: &Config, host: &HostRoots) -> Result<Resolved, PlanError> {
    let accel = match config.qemu.accel {
        Accel::Tcg => ResolvedAccel::Tcg,
        Accel::Kvm if host.kvm_usable() => ResolvedAccel::Kvm,
        Accel::Kvm => return Err(PlanError::KvmUnavailable),
        Accel::Auto if host.kvm_usable() => ResolvedAccel::Kvm,
        Accel::Auto => ResolvedAccel::Tcg,
    };
    let transport = match config.agent.transport {
        Transport::VhostVsock if !host.has_vhost_vsock() => return Err(PlanError::NoVhostVsock),
        Transport::Auto if host.has_vhost_vsock() => Transport::VhostVsock,
        Transport::Auto => Transport::VhostUserVsock,
        t => t,
    };
    Ok(Resolved { accel, transport })
}

fn measure_kind(tee: &LaunchTee) -> MeasureKind {
    match tee {
        LaunchTee::None => MeasureKind::None,
        LaunchTee::Snp { .. } => MeasureKind::Snp,
        LaunchTee::Tdx { .. } => MeasureKind::Tdx,
    }
}

/// Computes the reference values and checks them against the pins.
fn measure(
    config: &Config,
    host: &HostView,
    kind: MeasureKind,
    initdata: Option<&[u8]>,
) -> Result<Reference, PlanError> {
    let doc = initdata.map(|d| (Path::new("initdata"), d));
    let r = crate::measure::for_launch(config, kind, doc, &host.cpuid)?;
    crate::measure::check_pinned(config, &r)?;
    Ok(r)
}

/// Puts the initdata digest, as the reference values fitted it, into the
/// TEE's launch parameter.
fn bind_initdata(tee: &mut LaunchTee, r: &Reference) {
    match tee {
        LaunchTee::None => {}
        LaunchTee::Snp { host_data, .. } => {
            *host_data = r.host_data.as_deref().and_then(|h| {
                let mut b = [0u8; 32];
                hex::decode_to_slice(h, &mut b).ok().map(|()| b)
            });
        }
        LaunchTee::Tdx { mrconfigid, .. } => {
            *mrconfigid = r.mrconfigid.as_deref().and_then(|h| {
                let mut b = [0u8; 48];
                hex::decode_to_slice(h, &mut b).ok().map(|()| b)
            });
        }
    }
}

/// The reference values and the TEE. A launch whose TEE is configured is
/// measured (and its pin checked) before the host is asked, so a pin
/// mismatch is reported whatever the host offers.
fn measure_and_resolve_tee(
    config: &Config,
    host: &HostView,
    initdata: Option<&[u8]>,
) -> Result<(Reference, LaunchTee), PlanError> {
    let configured = match config.qemu.tee {
        Tee::None => Some(MeasureKind::None),
        Tee::Snp => Some(MeasureKind::Snp),
        Tee::Tdx => Some(MeasureKind::Tdx),
        Tee::Auto => None,
    };
    let early = configured
        .map(|kind| measure(config, host, kind, initdata))
        .transpose()?;
    let mut tee = crate::tee::resolve(&config.qemu, &HostTee::detect(&host.roots, &host.cpuid))?;
    let reference = match early {
        Some(r) => r,
        None => measure(config, host, measure_kind(&tee), initdata)?,
    };
    bind_initdata(&mut tee, &reference);
    Ok((reference, tee))
}

/// QOM types QEMU lists in `-object help`.
pub fn qemu_objects(qemu: &Path) -> Vec<String> {
    std::process::Command::new(qemu)
        .args(["-object", "help"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| l.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Checks that QEMU knows the TEE's object type.
fn check_qemu_knows(config: &Config, host: &HostView, tee: &LaunchTee) -> Result<(), PlanError> {
    let (object, needed, name) = match tee {
        LaunchTee::None => return Ok(()),
        LaunchTee::Snp { .. } => ("sev-snp-guest", "9.1", "snp"),
        LaunchTee::Tdx { .. } => ("tdx-guest", "10.1", "tdx"),
    };
    let asked;
    let known = match &host.qemu_objects {
        Some(k) => k,
        None => {
            asked = qemu_objects(&config.qemu.path);
            &asked
        }
    };
    if known.iter().any(|o| o == object) {
        return Ok(());
    }
    Err(PlanError::QemuTooOld {
        qemu: config.qemu.path.clone(),
        object,
        needed,
        tee: name,
    })
}

/// Checks the devices of a launch against `[gpu]` and the port budget.
fn plan_devices(
    config: &Config,
    devices: &[VfioDevice],
    tee: &LaunchTee,
) -> Result<(PciArgs, Vec<PlannedDevice>), PlanError> {
    let q = &config.qemu;
    let mut pci = PciArgs {
        vfio: Vec::new(),
        root_ports: q.pcie_root_port,
        hotplug_ports: 0,
        mmio64_mb: q.pci_mmio64_mb,
    };
    if devices.is_empty() {
        return Ok((pci, Vec::new()));
    }
    if q.cold_plug_vfio == ColdPlug::NoPort {
        return Err(PlanError::ColdPlugDisabled);
    }
    if devices.len() > MAX_PCI_FUNCTIONS {
        return Err(PlanError::TooManyFunctions(devices.len()));
    }
    let host = HostRoots::under(&config.gpu.host_root);
    let confidential = *tee != LaunchTee::None;
    let modes = crate::gpu::check_launch(&host, devices, &config.gpu, confidential)?;
    let mut planned = Vec::new();
    for (d, (_, mode)) in devices.iter().zip(&modes) {
        planned.push(PlannedDevice {
            bdf: d.function.bdf.clone(),
            request: d.request.clone(),
            id: format!("{:04x}:{:04x}", d.function.vendor, d.function.device),
            cc_mode: mode.map(CcMode::as_str),
        });
        pci.vfio.push(VfioArg {
            bdf: d.function.bdf.clone(),
            iommufd: matches!(d.backend, Backend::Iommufd(_)),
        });
    }
    Ok((pci, planned))
}

fn socket_path(dir: &Path, name: &str) -> Result<PathBuf, PlanError> {
    let p = dir.join(name);
    if p.as_os_str().len() > 107 {
        return Err(PlanError::SocketPathTooLong(p));
    }
    Ok(p)
}

/// A guest CID for kernel vhost-vsock: random in [3, 2^31), so concurrent
/// VMs practically never collide (QEMU refuses a CID in use).
fn random_cid() -> u32 {
    use std::io::Read;
    let mut b = [0u8; 4];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if read.is_err() {
        return 3 + std::process::id();
    }
    3 + (u32::from_le_bytes(b) % ((1 << 31) - 3))
}

/// The helper daemons and QEMU-side devices of the shares and the agent
/// transport.
struct Wiring {
    helpers: Vec<HelperSpec>,
    shares: Vec<FsShare>,
    vsock: VsockDevice,
    agent: AgentAddr,
    relays: Vec<crate::vm::relay::PlannedRelay>,
}

fn plan_wiring(
    config: &Config,
    req: &LaunchRequest,
    dir: &Path,
    transport: Transport,
) -> Result<Wiring, PlanError> {
    let q = &config.qemu;
    let mut helpers = Vec::new();
    let mut shares = Vec::new();
    for (i, s) in req.shares.iter().enumerate() {
        let socket = socket_path(dir, &format!("fs{i}.sock"))?;
        helpers.push(HelperSpec::virtiofsd(
            &q.virtio_fs_daemon,
            socket.clone(),
            &s.dir,
            q.virtio_fs_cache,
            dir.join(format!("virtiofsd{i}.log")),
        ));
        shares.push(FsShare {
            socket,
            tag: s.tag.clone(),
        });
    }
    let mut relays = Vec::new();
    let (vsock, agent) = match transport {
        Transport::VhostUserVsock | Transport::Auto => {
            let vhu = socket_path(dir, "vsock.sock")?;
            let hybrid = socket_path(dir, "agent.sock")?;
            // vhost-device-vsock connects guest-initiated streams to
            // `<uds-path>_<port>`; keep room for that suffix.
            socket_path(dir, "agent.sock_4294967295")?;
            helpers.push(HelperSpec::vhost_device_vsock(
                &q.vhost_user_vsock_daemon,
                vhu.clone(),
                &hybrid,
                dir.join("vsock.log"),
            ));
            for r in &req.relays {
                relays.push(crate::vm::relay::PlannedRelay {
                    socket: socket_path(dir, &format!("agent.sock_{}", r.port))?,
                    target: r.target.clone(),
                });
            }
            (
                VsockDevice::VhostUser { socket: vhu },
                AgentAddr::Hybrid {
                    uds: hybrid,
                    port: AGENT_VSOCK_PORT,
                },
            )
        }
        Transport::VhostVsock => {
            if !req.relays.is_empty() {
                return Err(PlanError::RelayNeedsHybridVsock);
            }
            let cid = req.vsock_cid.unwrap_or_else(random_cid);
            (
                VsockDevice::Vhost { cid },
                AgentAddr::Vsock {
                    cid,
                    port: AGENT_VSOCK_PORT,
                },
            )
        }
    };
    Ok(Wiring {
        helpers,
        shares,
        vsock,
        agent,
        relays,
    })
}

impl LaunchPlan {
    /// Decides everything about launching `req` with `config` on `host`.
    ///
    /// # Errors
    /// A [`PlanError`] naming the key, file or device to fix.
    pub fn build(config: &Config, host: &HostView, req: &LaunchRequest) -> Result<Self, PlanError> {
        config.check_files()?;
        let (measurement, tee) = measure_and_resolve_tee(config, host, req.initdata.as_deref())?;
        check_qemu_knows(config, host, &tee)?;
        let (mut pci, devices) = plan_devices(config, &req.devices, &tee)?;
        pci.hotplug_ports = req.hotplug_slots;
        if let Some(fw) = &config.qemu.firmware {
            crate::tee::check_firmware(&tee, fw)?;
        }
        let mut warnings = Vec::new();
        if tee != LaunchTee::None && config.qemu.debug_console {
            warnings.push(
                "debug_console is on for a confidential guest: its console output leaves the TEE",
            );
        }
        let resolved = resolve(config, &host.roots)?;
        for d in &req.disks {
            let bad = |problem: &str| PlanError::BadDisk {
                path: d.path.clone(),
                problem: problem.into(),
            };
            let ok_serial = (1..=20).contains(&d.serial.len())
                && d.serial
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok_serial {
                return Err(bad("the serial must be 1 to 20 letters, digits, - or _"));
            }
            use std::os::unix::fs::FileTypeExt;
            match std::fs::metadata(&d.path) {
                Ok(m) if m.is_file() || m.file_type().is_block_device() => {}
                Ok(_) => return Err(bad("is not a regular file or a block device")),
                Err(e) => return Err(bad(&format!("cannot be read: {e}"))),
            }
        }
        if let Some(s) = req.shares.iter().find(|s| !s.dir.is_dir()) {
            return Err(PlanError::NotADirectory(s.dir.clone()));
        }
        let dir = req
            .dir
            .clone()
            .unwrap_or_else(|| config.runtime.state_dir.join(&req.id));
        let wiring = plan_wiring(config, req, &dir, resolved.transport)?;
        let q = &config.qemu;
        let qmp_socket = socket_path(&dir, "qmp.sock")?;
        let console_log = q.debug_console.then(|| dir.join("console.log"));
        let args = VmArgs {
            name: format!("cocoon-{}", req.id.chars().take(16).collect::<String>()),
            accel: resolved.accel,
            machine_type: q.machine_type.clone(),
            cpu_model: q
                .cpu_model
                .clone()
                .unwrap_or_else(|| resolved.accel.default_cpu().into()),
            vcpus: q.vcpus,
            memory_mib: q.memory_mib,
            kernel: q.kernel.clone(),
            initrd: q.initrd.clone(),
            firmware: q.firmware.clone(),
            cmdline: kernel_cmdline(q),
            vsock: wiring.vsock,
            shares: wiring.shares,
            console_log: console_log.clone(),
            qmp_socket: qmp_socket.clone(),
            tee: tee.clone(),
            pci,
            nics: req
                .nics
                .iter()
                .scan(3, |next, n| {
                    let first = *next;
                    *next += i32::try_from(n.tap_fds.len()).unwrap_or(i32::MAX);
                    Some(NicArg {
                        fds: (first..*next).collect(),
                        mac: n.mac.clone(),
                        mtu: n.mtu,
                    })
                })
                .collect(),
            disks: req
                .disks
                .iter()
                .map(|d| DiskArg {
                    path: d.path.clone(),
                    serial: d.serial.clone(),
                })
                .collect(),
        };
        Ok(Self {
            id: req.id.clone(),
            qemu_args: args.to_argv(),
            qemu_log: dir.join("qemu.log"),
            dir,
            measurement,
            tee,
            accel: resolved.accel,
            transport: resolved.transport,
            devices,
            helpers: wiring.helpers,
            qemu: q.path.clone(),
            qmp_socket,
            console_log,
            agent: wiring.agent,
            relays: wiring.relays,
            qemu_fds: req
                .nics
                .iter()
                .flat_map(|n| n.tap_fds.iter().copied())
                .collect(),
            dial_timeout: config.agent.dial_timeout,
            warnings,
            dry_run: q.dry_run,
        })
    }

    /// [`LaunchPlan::build`] on the blocking pool (it hashes the kernel and
    /// initrd and may run QEMU).
    ///
    /// # Errors
    /// As [`LaunchPlan::build`].
    pub async fn build_blocking(
        config: &Config,
        host: &HostView,
        req: &LaunchRequest,
    ) -> Result<Self, PlanError> {
        let (c, h, r) = (config.clone(), host.clone(), req.clone());
        tokio::task::spawn_blocking(move || Self::build(&c, &h, &r))
            .await
            .map_err(|e| PlanError::Task(e.to_string()))?
    }

    /// QEMU's whole command line.
    pub fn qemu_command_line(&self) -> String {
        command_line(&self.qemu, &self.qemu_args)
    }

    /// The plan as text, one decision a line (dry runs, golden tests).
    pub fn render(&self) -> String {
        let mut out = format!(
            "id: {}\ndir: {}\ntee: {}\naccel: {:?}\ntransport: {:?}\nagent: {}\ndial_timeout_s: {}\n",
            self.id,
            self.dir.display(),
            tee_name(&self.tee),
            self.accel,
            self.transport,
            self.agent,
            self.dial_timeout.as_secs()
        );
        out.push_str(&format!(
            "measurement: {}\n",
            serde_json::to_string(&self.measurement).unwrap_or_default()
        ));
        for d in &self.devices {
            out.push_str(&format!(
                "device: {} {} ({}) cc_mode={}\n",
                d.bdf,
                d.id,
                d.request,
                d.cc_mode.unwrap_or("-")
            ));
        }
        for h in &self.helpers {
            out.push_str(&format!("helper: {}\n", h.command_line()));
        }
        for r in &self.relays {
            out.push_str(&format!("relay: {} -> {}\n", r.socket.display(), r.target));
        }
        out.push_str(&format!("qemu: {}\n", self.qemu_command_line()));
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        out
    }
}

fn tee_name(t: &LaunchTee) -> &'static str {
    match t {
        LaunchTee::None => "none",
        LaunchTee::Snp { .. } => "snp",
        LaunchTee::Tdx { .. } => "tdx",
    }
}
