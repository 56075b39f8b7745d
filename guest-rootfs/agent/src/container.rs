//! Containers and their processes as the agent tracks them.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::spawn::{self, ParentStdio, Spawned};
use crate::stdio::{Input, Output};

/// One process: a container's init or an exec.
#[derive(Debug)]
pub struct Process {
    /// Guest PID.
    pub pid: Pid,
    arg0: String,
    exit: watch::Receiver<Option<i32>>,
    /// Start pipe and report pipe, until started.
    pending: Mutex<Option<(OwnedFd, OwnedFd)>>,
    /// Stdin (or tty master).
    pub stdin: Input,
    /// Stdout (or tty output).
    pub stdout: Output,
    /// Stderr (empty for a tty).
    pub stderr: Output,
}

impl Process {
    /// Wraps a spawned, not yet started child.
    pub fn new(arg0: &str, s: Spawned) -> Result<Self> {
        let io = |e: std::io::Error| {
            Error::sys(
                "set up stdio pumps",
                nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            )
        };
        let (stdin, stdout, stderr) = match s.stdio {
            ParentStdio::Pipes {
                stdin,
                stdout,
                stderr,
            } => (
                Input::new(stdin, false).map_err(io)?,
                Output::pump(stdout).map_err(io)?,
                Output::pump(stderr).map_err(io)?,
            ),
            ParentStdio::TtyFromChild { .. } => {
                return Err(Error::sys(
                    "the container's terminal never arrived",
                    nix::errno::Errno::EBADMSG,
                ))
            }
            ParentStdio::Tty { master } => {
                let reader = master.try_clone().map_err(io)?;
                (
                    Input::new(master, true).map_err(io)?,
                    Output::pump(reader).map_err(io)?,
                    Output::closed(),
                )
            }
        };
        Ok(Self {
            pid: s.pid,
            arg0: arg0.to_string(),
            exit: s.exit,
            pending: Mutex::new(Some((s.start_fd, s.report_fd))),
            stdin,
            stdout,
            stderr,
        })
    }

    /// Lets the process exec.
    pub async fn start(&self) -> Result<()> {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some((start_fd, report_fd)) = pending else {
            return Err(Error::FailedPrecondition(format!(
                "process {} was started already",
                self.pid
            )));
        };
        let arg0 = self.arg0.clone();
        let pid = self.pid;
        tokio::task::spawn_blocking(move || spawn::start(start_fd, &report_fd, pid, &arg0))
            .await
            .map_err(|_| Error::sys("start task panicked", nix::errno::Errno::EIO))?
    }

    /// The exit status, if it has exited.
    pub fn exited(&self) -> Option<i32> {
        *self.exit.borrow()
    }

    /// Waits for the exit status.
    pub async fn wait(&self) -> i32 {
        let mut rx = self.exit.clone();
        loop {
            if let Some(s) = *rx.borrow_and_update() {
                return s;
            }
            if rx.changed().await.is_err() {
                // The reaper dropped the sender without a status; cannot
                // happen while the agent runs.
                return 255;
            }
        }
    }

    /// Sends `sig` unless the process is gone.
    pub fn signal(&self, sig: Signal) -> Result<()> {
        if self.exited().is_some() {
            return Ok(());
        }
        match kill(self.pid, sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(Error::sys(format!("kill {} with {sig}", self.pid), e)),
        }
    }
}

/// A container: its init process and execs.
#[derive(Debug)]
pub struct Container {
    /// Container id.
    pub id: String,
    /// The init process (PID 1 of the container's PID namespace).
    pub init: Arc<Process>,
    /// Exec'd processes by exec id.
    pub execs: Mutex<HashMap<String, Arc<Process>>>,
    /// The container's seccomp filter, which its execs get too.
    pub seccomp: Option<crate::oci::Seccomp>,
    /// Its cgroup, when the guest has cgroup v2.
    pub cgroup: Option<Arc<crate::cgroup::ContainerCgroup>>,
    /// Whether it mounts sealed models (exec then needs the policy's
    /// explicit consent).
    pub has_models: bool,
    /// Whether it has its own devpts instance at `/dev/pts` (its execs'
    /// terminals are allocated there too).
    pub own_devpts: bool,
    /// Whether it holds secrets (the pod's KBS secrets or a sealed model):
    /// the policy's stdin default depends on it.
    pub holds_secrets: bool,
    /// Its verified layers, unmounted when it is removed.
    pub layers: Mutex<Option<crate::layers::LayerStack>>,
}

impl Container {
    /// The process `exec_id` ("" for init).
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Error::ProcessNotFound {
                container_id: self.id.clone(),
                exec_id: exec_id.to_string(),
            })
    }

    /// Guest PIDs of every process in the container's PID namespace.
    pub fn pids(&self) -> Vec<u32> {
        let Ok(ns) = std::fs::read_link(format!("/proc/{}/ns/pid", self.init.pid)) else {
            return Vec::new();
        };
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let mut pids: Vec<u32> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| std::fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|l| l == ns))
            .collect();
        pids.sort_unstable();
        pids
    }

    /// CPU time (user, kernel, in ns), resident memory (bytes) and process
    /// count of the container, summed from procfs.
    pub fn usage(&self) -> (u64, u64, u64, u32) {
        // USER_HZ is 100 on Linux for every architecture Cocoon runs on.
        const NS_PER_TICK: u64 = 10_000_000;
        let page = 4096u64;
        let (mut user, mut kernel, mut rss, mut n) = (0u64, 0u64, 0u64, 0u32);
        for pid in self.pids() {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // Fields after the command name (which may contain spaces).
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                continue;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15; `rest` starts at field 3.
            user += f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * NS_PER_TICK;
            kernel += f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * NS_PER_TICK;
            let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
            rss += statm
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                * page;
            n += 1;
        }
        (user, kernel, rss, n)
    }

    /// Signals every process of the container.
    pub fn signal_all(&self, sig: Signal) {
        for pid in self.pids() {
            let Ok(pid) = i32::try_from(pid) else {
                continue;
            };
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }
}
