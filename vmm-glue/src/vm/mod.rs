//! Executing a [`LaunchPlan`]: the state directory, the helper daemons,
//! QEMU, the wait for the agent; then owning the running VM — pause and
//! resume over QMP, the one exit watch, and a shutdown that leaves nothing
//! behind (also when dropped after a failure).
//!
//! What a launch started is recorded in `<dir>/processes.json`
//! ([`PROCESSES_FILE`]), so a cleanup by another process (containerd's
//! `delete` after a shim died) kills exactly those with [`kill_recorded`].

mod boot;
pub mod relay;

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use cocoon_protocol::client::GuestClient;
use slog::{info, warn, Logger};
use tokio::sync::watch;

use crate::agent::AgentError;
use crate::launch::{LaunchPlan, PlanError};
use crate::measure::Reference;
use crate::process::{Daemon, DaemonError, ProcessRecord};
use crate::qemu::qmp::{Qmp, QmpError};

/// The file in a VM's state directory holding its reference values (JSON).
pub const MEASUREMENT_FILE: &str = "measurement.json";
/// The file in a VM's state directory recording its process groups.
pub const PROCESSES_FILE: &str = "processes.json";

/// Errors of launching, controlling or stopping a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The launch could not be planned (a host or configuration problem).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// `dry_run = true`: the launch stopped after planning.
    #[error(
        "dry run (`hypervisor.qemu.dry_run` = true): QEMU was not started; the launch plan: {0}"
    )]
    DryRun(String),
    /// The VM's state directory exists already.
    #[error("VM state directory {0} exists already; is a VM with this id running? (`cocoon` cleans it up on delete)")]
    Exists(PathBuf),
    /// The state directory or a file in it could not be written.
    #[error("cannot write the VM state {path}")]
    StateDir {
        /// The directory or file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A helper daemon or QEMU failed to start.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// QEMU exited before the agent answered.
    #[error("agent did not answer within {timeout} s: qemu exited with {status} after {secs:.1} s; qemu log: {qemu_log}; guest console: {console}")]
    QemuExited {
        /// The configured timeout in seconds.
        timeout: u64,
        /// Its exit status.
        status: ExitStatus,
        /// Seconds since the launch started.
        secs: f64,
        /// Tail of QEMU's log.
        qemu_log: String,
        /// Tail of the console log.
        console: String,
    },
    /// A helper daemon died before the agent answered.
    #[error("{helper} exited with {status} after {secs:.1} s, before the agent answered; its log: {log}")]
    HelperExited {
        /// The helper's name.
        helper: &'static str,
        /// Its exit status.
        status: ExitStatus,
        /// Seconds since the launch started.
        secs: f64,
        /// Tail of its log.
        log: String,
    },
    /// The agent never answered.
    #[error("agent did not answer within {secs} s (qemu is running; last attempt: {last_attempt}); guest console: {console}")]
    AgentTimeout {
        /// The configured timeout.
        secs: u64,
        /// What the last attempt saw.
        last_attempt: String,
        /// Tail of the console log.
        console: String,
    },
    /// The agent answered wrongly (another protocol version).
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// QMP failed (pause, resume).
    #[error(transparent)]
    Qmp(#[from] QmpError),
}

/// Removes a directory tree on drop.
#[derive(Debug)]
struct RunDir(PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Which process of a VM exited first, and its status.
#[derive(Debug, Clone, Copy)]
pub struct Stopped {
    /// `qemu` or the helper's name.
    pub who: &'static str,
    /// Its exit status.
    pub status: Option<ExitStatus>,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "the VM stopped: {} exited ({s})", self.who),
            None => write!(f, "the VM stopped: {} exited", self.who),
        }
    }
}

/// A running VM with a connected agent. Dropping it kills everything and
/// removes its state directory; [`Vm::shutdown`] does it gracefully.
pub struct Vm {
    // Field order is drop order: relays and processes first, then the
    // directory.
    _relays: Vec<relay::Relay>,
    guest: GuestClient,
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

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("run_dir", &self.run_dir.0)
            .field("qemu", &self.qemu)
            .field("helpers", &self.helpers)
            .finish_non_exhaustive()
    }
}

/// Creates the VM's state directory (and its parent), which must not exist.
fn create_run_dir(dir: &Path) -> Result<RunDir, VmError> {
    if let Some(parent) = dir.parent() {
        crate::private::create_dir_all(parent).map_err(|source| VmError::StateDir {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    match crate::private::create_dir(dir) {
        Ok(()) => Ok(RunDir(dir.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(VmError::Exists(dir.to_path_buf()))
        }
        Err(source) => Err(VmError::StateDir {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

fn write_state(path: PathBuf, value: &impl serde::Serialize) -> Result<(), VmError> {
    let json = serde_json::to_vec_pretty(value).unwrap_or_default();
    crate::private::write(&path, json).map_err(|source| VmError::StateDir { path, source })
}

fn log_measurement(log: &Logger, m: &Reference) {
    match (m.launch_digest, m.mrtd) {
        (Some(ld), _) => {
            info!(log, "launch measurement"; "tee" => "snp", "launch_digest" => hex::encode(ld));
        }
        (None, Some(mrtd)) => {
            info!(log, "launch measurement"; "tee" => "tdx", "mrtd" => hex::encode(mrtd),
                "rtmr1" => m.rtmr1.map(hex::encode), "rtmr2" => m.rtmr2.map(hex::encode));
        }
        _ => info!(log, "launch inputs"; "kernel_sha256" => &m.inputs.kernel.sha256,
            "initrd_sha256" => &m.inputs.initrd.sha256),
    }
}

/// Kills the process groups recorded in `vm_dir` (those still led by the
/// recorded process) and waits up to 5 s for them to go. Returns how many
/// were signalled.
pub fn kill_recorded(vm_dir: &Path) -> usize {
    let Ok(text) = std::fs::read(vm_dir.join(PROCESSES_FILE)) else {
        return 0;
    };
    let records: Vec<ProcessRecord> = serde_json::from_slice(&text).unwrap_or_default();
    let proc_root = Path::new("/proc");
    let killed = records.iter().filter(|r| r.kill_if_same(proc_root)).count();
    let start = Instant::now();
    while records.iter().any(|r| r.is_alive(proc_root)) && start.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    killed
}

/// How many of the processes recorded in `vm_dir` are still running (the
/// recorded process itself, not a later one with its PID).
pub fn recorded_alive(vm_dir: &Path) -> usize {
    let Ok(text) = std::fs::read(vm_dir.join(PROCESSES_FILE)) else {
        return 0;
    };
    let records: Vec<ProcessRecord> = serde_json::from_slice(&text).unwrap_or_default();
    records
        .iter()
        .filter(|r| r.is_alive(Path::new("/proc")))
        .count()
}

/// Kills each daemon and waits until it is reaped.
async fn reap_all(daemons: &[Daemon]) {
    for d in daemons {
        d.kill().await;
    }
}

impl Vm {
    /// Follows `plan`: creates its state directory, starts the helpers and
    /// QEMU, then waits for the agent.
    pub async fn launch(plan: LaunchPlan, log: &Logger) -> Result<Self, VmError> {
        let log = log.new(slog::o!("vm" => plan.id.clone()));
        let started = Instant::now();
        log_measurement(&log, &plan.measurement);
        for d in &plan.devices {
            info!(log, "passing through PCI device"; "bdf" => d.bdf.as_str(), "request" => &d.request,
                  "id" => &d.id, "cc_mode" => d.cc_mode);
        }
        for w in &plan.warnings {
            warn!(log, "{}", w);
        }
        if plan.dry_run {
            let text = plan.render().trim_end().replace('\n', "; ");
            return Err(VmError::DryRun(text));
        }
        let run_dir = create_run_dir(&plan.dir)?;
        write_state(plan.dir.join(MEASUREMENT_FILE), &plan.measurement)?;
        let mut relays = Vec::new();
        for r in &plan.relays {
            relays.push(relay::start(r, &log).map_err(|source| VmError::StateDir {
                path: r.socket.clone(),
                source,
            })?);
        }
        let mut helpers = Vec::new();
        let mut records = Vec::new();
        for h in &plan.helpers {
            let d = Daemon::spawn(h.name, &h.program, &h.args, &h.log)?;
            records.extend(d.record());
            let ready = match write_state(plan.dir.join(PROCESSES_FILE), &records) {
                Ok(()) => d
                    .wait_for_socket(&h.ready_socket, boot::HELPER_TIMEOUT)
                    .await
                    .map_err(VmError::from),
                Err(e) => Err(e),
            };
            helpers.push(d);
            if let Err(e) = ready {
                reap_all(&helpers).await;
                return Err(e);
            }
        }
        info!(log, "starting qemu"; "accel" => ?plan.accel, "transport" => ?plan.transport,
              "argv" => plan.qemu_command_line());
        let qemu = match Daemon::spawn_with_fds(
            "qemu",
            &plan.qemu,
            &plan.qemu_args,
            &plan.qemu_log,
            &plan.qemu_fds,
        ) {
            Ok(q) => q,
            Err(e) => {
                reap_all(&helpers).await;
                return Err(e.into());
            }
        };
        records.extend(qemu.record());
        let qmp = Qmp::new(&plan.qmp_socket);
        let booted = match write_state(plan.dir.join(PROCESSES_FILE), &records) {
            Ok(()) => boot::wait_for_agent(&plan, &qemu, &helpers, &qmp, started).await,
            Err(e) => Err(e),
        };
        let (guest, kernel_release) = match booted {
            Ok(b) => b,
            Err(e) => {
                // Reaped before the state directory goes with the error.
                reap_all(std::slice::from_ref(&qemu)).await;
                reap_all(&helpers).await;
                return Err(e);
            }
        };
        let boot_time = started.elapsed();
        info!(log, "agent ready"; "boot_ms" => u64::try_from(boot_time.as_millis()).unwrap_or(u64::MAX), "kernel" => &kernel_release);
        let mut vm = Self {
            _relays: relays,
            guest,
            qemu,
            helpers,
            qmp,
            console_log: plan.console_log,
            kernel_release,
            boot_time,
            log,
            measurement: plan.measurement,
            run_dir,
        };
        // Once QEMU or a helper exits, the guest cannot answer: every call
        // fails at once, naming who died, instead of at its timeout.
        let stopped = vm.stopped();
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let why = stopped.await.to_string();
            tx.send_replace(Some(why));
        });
        vm.guest = vm.guest.clone().until_gone(rx);
        Ok(vm)
    }

    /// The reference values of this launch.
    pub fn measurement(&self) -> &Reference {
        &self.measurement
    }

    /// The VM's QMP client (hot-plug).
    pub fn qmp(&self) -> &Qmp {
        &self.qmp
    }

    /// The agent client.
    pub fn guest(&self) -> &GuestClient {
        &self.guest
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
    pub fn exited(&self) -> Option<ExitStatus> {
        self.qemu.try_wait()
    }

    /// The one place that learns QEMU exited: `Some(status)` once it has.
    pub fn exit_watch(&self) -> watch::Receiver<Option<ExitStatus>> {
        self.qemu.exit_watch()
    }

    /// Resolves when QEMU or any helper exits, with who it was and how: a
    /// VM whose virtiofsd or vsock daemon died is as good as dead (its
    /// guest hangs on the share or loses the agent), so callers stop it.
    pub fn stopped(&self) -> impl std::future::Future<Output = Stopped> + Send + 'static {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1 + self.helpers.len());
        for d in std::iter::once(&self.qemu).chain(&self.helpers) {
            let (who, mut watch, tx) = (d.name(), d.exit_watch(), tx.clone());
            tokio::spawn(async move {
                let status = match watch.wait_for(Option::is_some).await {
                    Ok(s) => *s,
                    Err(_) => return,
                };
                let _ = tx.send(Stopped { who, status }).await;
            });
        }
        async move {
            rx.recv().await.unwrap_or(Stopped {
                who: "qemu",
                status: None,
            })
        }
    }

    /// Kills QEMU (SIGKILL to its process group) and waits until it is
    /// reaped; the helpers follow when the VM is dropped.
    pub async fn kill(&self) {
        self.qemu.kill().await;
    }

    /// Kills QEMU and every helper and waits until each is reaped, so that
    /// nothing writes into the state directory (a vsock daemon that lost
    /// QEMU binds its socket again) while dropping the VM removes it.
    pub async fn kill_all(&self) {
        for d in std::iter::once(&self.qemu).chain(&self.helpers) {
            d.kill().await;
        }
    }

    /// Waits until QEMU exits.
    pub async fn wait(&self) -> Option<ExitStatus> {
        self.qemu.wait().await
    }

    /// Pauses every vCPU (QMP `stop`).
    pub async fn pause(&self) -> Result<(), VmError> {
        Ok(self.qmp.stop().await?)
    }

    /// Resumes the vCPUs (QMP `cont`).
    pub async fn resume(&self) -> Result<(), VmError> {
        Ok(self.qmp.cont().await?)
    }

    /// Stops the VM: asks the agent to power off, falls back to QMP `quit`
    /// and then SIGKILL; stops the helpers and removes the state directory.
    pub async fn shutdown(self) {
        if self.qemu.try_wait().is_none() {
            let asked = self.guest.shutdown().await.is_ok();
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
        for h in &self.helpers {
            // virtiofsd exits by itself once QEMU is gone; give it a moment.
            if h.wait_timeout(Duration::from_millis(200)).await.is_none() {
                h.kill().await;
            }
        }
        info!(self.log, "vm stopped");
        // Dropping removes the state directory.
    }
}
