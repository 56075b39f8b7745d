//! One VM from start to end: helper daemons, QEMU, the agent connection, and
//! a shutdown that leaves nothing behind (also when dropped after a failure).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cocoon_protocol::agent_ttrpc::AgentClient;
use cocoon_protocol::AGENT_VSOCK_PORT;
use slog::{info, warn, Logger};

use crate::agent::{self, AgentAddr, AgentError};
use crate::config::{Accel, ColdPlug, Config, ConfigError, Tee, Transport};
use crate::host::HostRoots;
use crate::measure::{Kind as MeasureKind, Reference};
use crate::process::{log_tail, Daemon, DaemonError};
use crate::qemu::argv::{
    kernel_cmdline, FsShare, PciArgs, ResolvedAccel, VfioArg, VmArgs, VsockDevice,
};
use crate::qemu::qmp::Qmp;
use crate::tee::{HostTee, LaunchTee};

/// How long a helper daemon may take to create its socket.
const HELPER_TIMEOUT: Duration = Duration::from_secs(10);
/// Guest CID used with vhost-device-vsock (each VM has its own backend).
const HYBRID_GUEST_CID: u32 = 3;

/// Errors of launching or stopping a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The configuration names a missing file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `accel = "kvm"` on a host where KVM cannot run guests.
    #[error("`hypervisor.qemu.accel` = \"kvm\" but KVM cannot run guests here (no /dev/kvm or no vmx/svm CPU flag); use \"auto\" or \"tcg\"")]
    KvmUnavailable,
    /// `transport = "vhost-vsock"` without the kernel device.
    #[error("`agent.transport` = \"vhost-vsock\" but /dev/vhost-vsock does not exist; load the vhost_vsock module or use \"vhost-user-vsock\"")]
    NoVhostVsock,
    /// The VM's state directory exists already.
    #[error("VM state directory {0} exists already; is a VM with this id running? (`cocoon` cleans it up on delete)")]
    Exists(PathBuf),
    /// The state directory could not be created.
    #[error("cannot create VM state directory {path}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A path would not fit a unix socket address.
    #[error("socket path {0} is longer than 107 bytes; use a shorter `runtime.state_dir`")]
    SocketPathTooLong(PathBuf),
    /// A shared directory is not a directory.
    #[error("shared directory {0} is not a directory")]
    NotADirectory(PathBuf),
    /// A helper or QEMU failed.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// The agent never answered.
    #[error("agent did not answer within {secs} s ({reason}); guest console: {console}")]
    AgentTimeout {
        /// The configured timeout.
        secs: u64,
        /// What was observed.
        reason: String,
        /// Tail of the console log.
        console: String,
    },
    /// The agent answered wrongly.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The configured TEE cannot run here.
    #[error(transparent)]
    Tee(#[from] crate::tee::TeeError),
    /// A VFIO device cannot be passed through.
    #[error(transparent)]
    Vfio(#[from] crate::vfio::VfioError),
    /// A GPU does not satisfy `[gpu]`.
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
    /// VFIO devices requested with `cold_plug_vfio = "no-port"`, or too many.
    #[error("{0}")]
    Devices(String),
    /// `dry_run = true`: the launch stopped before QEMU.
    #[error(
        "dry run (`hypervisor.qemu.dry_run` = true): QEMU was not started; its command line: {0}"
    )]
    DryRun(String),
    /// The launch measurement cannot be computed or is not pinned.
    #[error(transparent)]
    Measure(#[from] crate::measure::MeasureError),
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
}

/// Checks that QEMU knows the TEE's object type (`-object help`).
fn check_qemu_knows(qemu: &Path, tee: &LaunchTee) -> Result<(), VmError> {
    let (object, needed, name) = match tee {
        LaunchTee::None => return Ok(()),
        LaunchTee::Snp { .. } => ("sev-snp-guest", "9.1", "snp"),
        LaunchTee::Tdx { .. } => ("tdx-guest", "10.1", "tdx"),
    };
    let out = std::process::Command::new(qemu)
        .args(["-object", "help"])
        .output();
    let known = out.is_ok_and(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l.trim() == object)
    });
    if known {
        Ok(())
    } else {
        Err(VmError::QemuTooOld {
            qemu: qemu.to_path_buf(),
            object,
            needed,
            tee: name,
        })
    }
}

/// A host directory shared into the guest over virtio-fs.
#[derive(Debug, Clone)]
pub struct Share {
    /// Mount tag.
    pub tag: String,
    /// Host directory.
    pub dir: PathBuf,
}

/// What to launch.
#[derive(Debug, Clone)]
pub struct VmRequest {
    /// Unique id (sandbox id); names the state directory.
    pub id: String,
    /// The VM's state directory (created, must not exist); default
    /// `<runtime.state_dir>/<id>`.
    pub dir: Option<PathBuf>,
    /// virtio-fs shares.
    pub shares: Vec<Share>,
    /// Device node paths of the pod (`linux.devices`); VFIO ones are passed
    /// through.
    pub devices: Vec<String>,
    /// CDI device names of the pod (`cdi.k8s.io/*` annotations).
    pub cdi_devices: Vec<String>,
}

/// Removes a directory tree on drop.
#[derive(Debug)]
struct RunDir(PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running VM with a connected agent. Dropping it kills everything and
/// removes its state directory; [`Vm::shutdown`] does it gracefully.
pub struct Vm {
    // Field order is drop order: processes first, then the directory.
    agent: AgentClient,
    qemu: Daemon,
    helpers: Vec<Daemon>,
    qmp: Qmp,
    console_log: Option<PathBuf>,
    kernel_release: String,
    boot_time: Duration,
    log: Logger,
    measurement: Reference,
    run_dir: RunDir,
}

/// Resolves and checks the VFIO devices a launch asks for.
fn pci_devices(
    config: &Config,
    req: &VmRequest,
    tee: &LaunchTee,
    log: &Logger,
) -> Result<PciArgs, VmError> {
    let q = &config.qemu;
    let mut pci = PciArgs {
        vfio: Vec::new(),
        root_ports: q.pcie_root_port,
        mmio64_mb: q.pci_mmio64_mb,
    };
    let wanted =
        req.devices.iter().any(|p| crate::vfio::is_vfio_path(p)) || !req.cdi_devices.is_empty();
    if !wanted {
        return Ok(pci);
    }
    if q.cold_plug_vfio == ColdPlug::NoPort {
        return Err(VmError::Devices(
            "the pod asks for VFIO devices but `hypervisor.qemu.cold_plug_vfio` = \"no-port\"; set it to \"root-port\"".into(),
        ));
    }
    let host = HostRoots::under(&config.gpu.host_root);
    let devices = crate::vfio::resolve(
        &host,
        &req.devices,
        &req.cdi_devices,
        &config.gpu.cdi_spec_dirs,
    )?;
    if devices.len() > 16 {
        return Err(VmError::Devices(format!(
            "the pod asks for {} PCI functions; at most 16 root ports fit",
            devices.len()
        )));
    }
    let confidential = !matches!(tee, LaunchTee::None);
    let modes = crate::gpu::check_launch(&host, &devices, &config.gpu, confidential)?;
    for (d, (_, mode)) in devices.iter().zip(&modes) {
        info!(log, "passing through PCI device"; "bdf" => &d.function.bdf, "request" => &d.request,
              "id" => format!("{:04x}:{:04x}", d.function.vendor, d.function.device),
              "cc_mode" => mode.map(|m| m.as_str()));
        pci.vfio.push(VfioArg {
            bdf: d.function.bdf.clone(),
            iommufd: matches!(d.backend, crate::vfio::Backend::Iommufd(_)),
        });
    }
    Ok(pci)
}

/// The file in a VM's state directory holding its reference values (JSON).
pub const MEASUREMENT_FILE: &str = "measurement.json";

async fn measure_launch(config: &Config, kind: MeasureKind) -> Result<Reference, VmError> {
    let c = config.clone();
    let r = tokio::task::spawn_blocking(move || {
        let r = crate::measure::for_launch(&c, kind, None, &crate::tee::host_cpuid)?;
        crate::measure::check_pinned(&c, &r)?;
        Ok::<_, crate::measure::MeasureError>(r)
    })
    .await
    .map_err(|e| {
        VmError::Measure(crate::measure::MeasureError::Input {
            what: "measurement".into(),
            problem: format!("the measuring task failed: {e}"),
        })
    })??;
    Ok(r)
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("run_dir", &self.run_dir.0)
            .field("qemu", &self.qemu)
            .field("helpers", &self.helpers)
            .finish_non_exhaustive()
    }
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
pub fn resolve(config: &Config, host: &HostRoots) -> Result<Resolved, VmError> {
    let accel = match config.qemu.accel {
        Accel::Tcg => ResolvedAccel::Tcg,
        Accel::Kvm if host.kvm_usable() => ResolvedAccel::Kvm,
        Accel::Kvm => return Err(VmError::KvmUnavailable),
        Accel::Auto if host.kvm_usable() => ResolvedAccel::Kvm,
        Accel::Auto => ResolvedAccel::Tcg,
    };
    let transport = match config.agent.transport {
        Transport::VhostVsock if !host.has_vhost_vsock() => return Err(VmError::NoVhostVsock),
        Transport::Auto if host.has_vhost_vsock() => Transport::VhostVsock,
        Transport::Auto => Transport::VhostUserVsock,
        t => t,
    };
    Ok(Resolved { accel, transport })
}

fn socket_path(dir: &Path, name: &str) -> Result<PathBuf, VmError> {
    let p = dir.join(name);
    if p.as_os_str().len() > 107 {
        return Err(VmError::SocketPathTooLong(p));
    }
    Ok(p)
}

/// A guest CID for kernel vhost-vsock: random in [3, 2^31), so concurrent
/// VMs practically never collide (QEMU refuses a CID in use).
fn random_cid() -> u32 {
    let mut b = [0u8; 4];
    if getrandom_fill(&mut b).is_err() {
        return 3 + std::process::id();
    }
    3 + (u32::from_le_bytes(b) % ((1 << 31) - 3))
}

fn getrandom_fill(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

impl Vm {
    /// Starts helpers and QEMU, then waits for the agent.
    pub async fn launch(
        config: &Config,
        host: &HostRoots,
        req: &VmRequest,
        log: &Logger,
    ) -> Result<Self, VmError> {
        let log = log.new(slog::o!("vm" => req.id.clone()));
        let started = Instant::now();
        config.check_files()?;
        // The reference values come first: a launch that does not match the
        // pinned measurement is refused whatever the host offers.
        let pinned_kind = match config.qemu.tee {
            Tee::None => Some(MeasureKind::None),
            Tee::Snp => Some(MeasureKind::Snp),
            Tee::Tdx => Some(MeasureKind::Tdx),
            Tee::Auto => None,
        };
        let mut measurement = match pinned_kind {
            Some(kind) => Some(measure_launch(config, kind).await?),
            None => None,
        };
        let tee = crate::tee::resolve(
            &config.qemu,
            &HostTee::detect(host, &crate::tee::host_cpuid),
        )?;
        let measurement = match measurement.take() {
            Some(m) => m,
            None => {
                let kind = match tee {
                    LaunchTee::None => MeasureKind::None,
                    LaunchTee::Snp { .. } => MeasureKind::Snp,
                    LaunchTee::Tdx { .. } => MeasureKind::Tdx,
                };
                measure_launch(config, kind).await?
            }
        };
        match (measurement.launch_digest, measurement.mrtd) {
            (Some(ld), _) => {
                info!(log, "launch measurement"; "tee" => "snp", "launch_digest" => hex::encode(ld))
            }
            (None, Some(mrtd)) => {
                info!(log, "launch measurement"; "tee" => "tdx", "mrtd" => hex::encode(mrtd),
                "rtmr1" => measurement.rtmr1.map(hex::encode), "rtmr2" => measurement.rtmr2.map(hex::encode))
            }
            _ => info!(log, "launch inputs"; "kernel_sha256" => &measurement.inputs.kernel.sha256,
                "initrd_sha256" => &measurement.inputs.initrd.sha256),
        }
        check_qemu_knows(&config.qemu.path, &tee)?;
        let pci = pci_devices(config, req, &tee, &log)?;
        if let Some(fw) = &config.qemu.firmware {
            crate::tee::check_firmware(&tee, fw)?;
        }
        if tee != LaunchTee::None && config.qemu.debug_console {
            warn!(
                log,
                "debug_console is on for a confidential guest: its console output leaves the TEE"
            );
        }
        let resolved = resolve(config, host)?;
        for s in &req.shares {
            if !s.dir.is_dir() {
                return Err(VmError::NotADirectory(s.dir.clone()));
            }
        }
        std::fs::create_dir_all(&config.runtime.state_dir).map_err(|source| VmError::StateDir {
            path: config.runtime.state_dir.clone(),
            source,
        })?;
        let dir = req
            .dir
            .clone()
            .unwrap_or_else(|| config.runtime.state_dir.join(&req.id));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(VmError::Exists(dir))
            }
            Err(source) => return Err(VmError::StateDir { path: dir, source }),
        }
        let run_dir = RunDir(dir.clone());
        let json = serde_json::to_vec_pretty(&measurement).unwrap_or_default();
        std::fs::write(dir.join(MEASUREMENT_FILE), json).map_err(|source| VmError::StateDir {
            path: dir.join(MEASUREMENT_FILE),
            source,
        })?;
        let q = &config.qemu;

        let mut helpers = Vec::new();
        let mut shares = Vec::new();
        for (i, s) in req.shares.iter().enumerate() {
            let sock = socket_path(&dir, &format!("fs{i}.sock"))?;
            let args: Vec<OsString> = vec![
                format!("--socket-path={}", sock.display()).into(),
                format!("--shared-dir={}", s.dir.display()).into(),
                "--sandbox=none".into(),
                format!("--cache={}", q.virtio_fs_cache.as_str()).into(),
                "--announce-submounts".into(),
                "--log-level=warn".into(),
            ];
            let mut d = Daemon::spawn(
                "virtiofsd",
                &q.virtio_fs_daemon,
                &args,
                &dir.join(format!("virtiofsd{i}.log")),
            )?;
            d.wait_for_socket(&sock, HELPER_TIMEOUT).await?;
            helpers.push(d);
            shares.push(FsShare {
                socket: sock,
                tag: s.tag.clone(),
            });
        }

        let (vsock, addr) = match resolved.transport {
            Transport::VhostUserVsock | Transport::Auto => {
                let vhu = socket_path(&dir, "vsock.sock")?;
                let hybrid = socket_path(&dir, "agent.sock")?;
                // vhost-device-vsock connects guest-initiated streams to
                // `<uds-path>_<port>`; keep room for that suffix.
                socket_path(&dir, "agent.sock_4294967295")?;
                let arg = format!(
                    "guest-cid={HYBRID_GUEST_CID},socket={},uds-path={}",
                    vhu.display(),
                    hybrid.display()
                );
                let mut d = Daemon::spawn(
                    "vhost-device-vsock",
                    &q.vhost_user_vsock_daemon,
                    &["--vm".into(), arg.into()],
                    &dir.join("vsock.log"),
                )?;
                d.wait_for_socket(&vhu, HELPER_TIMEOUT).await?;
                helpers.push(d);
                (
                    VsockDevice::VhostUser { socket: vhu },
                    AgentAddr::Hybrid {
                        uds: hybrid,
                        port: AGENT_VSOCK_PORT,
                    },
                )
            }
            Transport::VhostVsock => {
                let cid = random_cid();
                (
                    VsockDevice::Vhost { cid },
                    AgentAddr::Vsock {
                        cid,
                        port: AGENT_VSOCK_PORT,
                    },
                )
            }
        };

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
            vsock,
            shares,
            console_log: console_log.clone(),
            qmp_socket: qmp_socket.clone(),
            tee,
            pci,
        };
        let argv = args.to_argv();
        if q.dry_run {
            let mut line = q.path.display().to_string();
            for a in &argv {
                line.push(' ');
                line.push_str(&a.to_string_lossy());
            }
            return Err(VmError::DryRun(line));
        }
        info!(log, "starting qemu"; "accel" => ?resolved.accel, "transport" => ?resolved.transport,
              "argv" => argv.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "));
        let mut qemu = Daemon::spawn("qemu", &q.path, &argv, &dir.join("qemu.log"))?;

        let deadline = started + config.agent.dial_timeout;
        let qmp = Qmp::new(&qmp_socket);
        // vhost-device-vsock 0.3.0 can leave a CONNECT unanswered for good
        // when it arrives before the guest driver set the device up (seen
        // under load), and then answers no later CONNECT either. Wait until
        // the guest driver is ready before the first one.
        let mut driver_ready = !matches!(addr, AgentAddr::Hybrid { .. });
        let mut last_error = String::from("none yet");
        let (agent, kernel_release) = loop {
            if let Some(status) = qemu.try_wait() {
                return Err(VmError::AgentTimeout {
                    secs: config.agent.dial_timeout.as_secs(),
                    reason: format!(
                        "qemu exited with {status} after {:.1} s; qemu log: {}",
                        started.elapsed().as_secs_f64(),
                        log_tail(qemu.log(), 3)
                    ),
                    console: console_log
                        .as_deref()
                        .map_or_else(|| "(debug_console is off)".into(), |c| log_tail(c, 8)),
                });
            }
            if Instant::now() >= deadline {
                return Err(VmError::AgentTimeout {
                    secs: config.agent.dial_timeout.as_secs(),
                    reason: format!("qemu is running; last attempt: {last_error}"),
                    console: console_log
                        .as_deref()
                        .map_or_else(|| "(debug_console is off)".into(), |c| log_tail(c, 8)),
                });
            }
            // An attempt that got through may take long under emulation on a
            // loaded host; never cut it short before the deadline (retrying
            // only adds work for the guest). One that cannot get through
            // fails fast: the backend closes it while nothing listens.
            if !driver_ready {
                match qmp
                    .virtio_driver_ok(crate::qemu::argv::VSOCK_DEVICE_ID)
                    .await
                {
                    Ok(true) => driver_ready = true,
                    Ok(false) => {
                        last_error = "the guest has not initialized its vsock device yet".into()
                    }
                    Err(e) => last_error = e.to_string(),
                }
                if !driver_ready {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1));
            let qemu_exit = async {
                while qemu.try_wait().is_none() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            let attempt = tokio::select! {
                // The handshake gets a bounded wait: a CONNECT sent while the
                // guest's vsock device is still coming up may never be
                // answered by vhost-device-vsock, so open a new one.
                r = tokio::time::timeout(left, agent::connect_checked(&addr, Duration::from_secs(4).min(left), left)) => r,
                // Checked at the top of the loop.
                () = qemu_exit => continue,
            };
            match attempt {
                Ok(Ok(ok)) => break ok,
                Ok(Err(AgentError::Version(v))) => return Err(AgentError::Version(v).into()),
                Ok(Err(e)) => {
                    last_error = e.to_string();
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(_) => last_error = format!("no answer within {} s", left.as_secs()),
            }
        };
        let boot_time = started.elapsed();
        info!(log, "agent ready"; "boot_ms" => u64::try_from(boot_time.as_millis()).unwrap_or(u64::MAX), "kernel" => &kernel_release);
        Ok(Self {
            agent,
            qemu,
            helpers,
            qmp,
            console_log,
            kernel_release,
            boot_time,
            log,
            measurement,
            run_dir,
        })
    }

    /// The reference values of this launch.
    pub fn measurement(&self) -> &Reference {
        &self.measurement
    }

    /// The agent client.
    pub fn agent(&self) -> &AgentClient {
        &self.agent
    }

    /// The QMP client.
    pub fn qmp(&self) -> &Qmp {
        &self.qmp
    }

    /// Launch → agent ready.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// Guest kernel release reported by the agent.
    pub fn kernel_release(&self) -> &str {
        &self.kernel_release
    }

    /// The VM's state directory.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir.0
    }

    /// The serial console log, if the console is on.
    pub fn console_log(&self) -> Option<&Path> {
        self.console_log.as_deref()
    }

    /// PIDs of QEMU and the helpers (for resource accounting).
    pub fn pids(&self) -> Vec<i32> {
        std::iter::once(&self.qemu)
            .chain(&self.helpers)
            .filter_map(|d| d.pid().map(|p| p.as_raw()))
            .collect()
    }

    /// Whether QEMU has exited, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.qemu.try_wait()
    }

    /// Waits until QEMU exits.
    pub async fn wait(&mut self) -> Option<std::process::ExitStatus> {
        self.qemu.wait().await
    }

    /// Stops the VM: asks the agent to power off, falls back to QMP `quit`
    /// and then SIGKILL; stops the helpers and removes the state directory.
    pub async fn shutdown(mut self) {
        if self.qemu.try_wait().is_none() {
            let req = cocoon_protocol::agent::ShutdownRequest::new();
            let asked = self
                .agent
                .shutdown(agent::ctx(Duration::from_secs(2)), &req)
                .await
                .is_ok();
            if !asked
                || self
                    .qemu
                    .wait_timeout(Duration::from_secs(5))
                    .await
                    .is_none()
            {
                warn!(self.log, "guest did not power off; quitting qemu");
                let _ = tokio::time::timeout(Duration::from_secs(2), self.qmp.quit()).await;
                if self
                    .qemu
                    .wait_timeout(Duration::from_secs(3))
                    .await
                    .is_none()
                {
                    self.qemu.kill().await;
                }
            }
        }
        for h in &mut self.helpers {
            // virtiofsd exits by itself once QEMU is gone; give it a moment.
            if h.wait_timeout(Duration::from_millis(200)).await.is_none() {
                h.kill().await;
            }
        }
        info!(self.log, "vm stopped");
        // Dropping removes the state directory.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_without_the_tee_object_is_too_old() {
        let tdx = LaunchTee::Tdx {
            mrconfigid: None,
            qgs_socket: "/q".into(),
        };
        // /bin/true prints no object list, like a QEMU without tdx-guest.
        let e = check_qemu_knows(Path::new("/bin/true"), &tdx)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not know the `tdx-guest` object (QEMU 10.1 or newer"),
            "{e}"
        );
        check_qemu_knows(Path::new("/bin/true"), &LaunchTee::None).unwrap();
        let qemu = Path::new("/usr/bin/qemu-system-x86_64");
        if qemu.exists() {
            let snp = LaunchTee::Snp {
                cbitpos: 51,
                reduced_phys_bits: 1,
                policy: 0x30000,
                host_data: None,
            };
            check_qemu_knows(qemu, &snp).unwrap();
        }
    }
}
