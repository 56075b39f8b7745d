//! Ownership of child processes (QEMU, virtiofsd, vhost-device-vsock).
//!
//! A [`Daemon`] runs in its own process group, dies with its parent
//! (`PR_SET_PDEATHSIG`), writes stdout/stderr to a log file, and is killed
//! (the whole group) when dropped. Nothing it started can outlive it.
//!
//! One task per daemon owns the child and reaps it; everyone else learns
//! of its exit through [`Daemon::exit_watch`] — nothing polls.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

/// Errors of starting or waiting for a daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The log file could not be created.
    #[error("cannot create log file {path}")]
    Log {
        /// Log path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The program could not be executed.
    #[error("cannot start {name} ({program})")]
    Spawn {
        /// Daemon name.
        name: &'static str,
        /// Program path.
        program: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The daemon exited before it was ready.
    #[error("{name} exited with {status} before it was ready; its log says: {log_tail}")]
    ExitedEarly {
        /// Daemon name.
        name: &'static str,
        /// Exit status.
        status: ExitStatus,
        /// Last lines of its log.
        log_tail: String,
    },
    /// The daemon did not create its socket in time.
    #[error("{name} did not create {socket} within {secs} s; its log says: {log_tail}")]
    NotReady {
        /// Daemon name.
        name: &'static str,
        /// The socket waited for.
        socket: PathBuf,
        /// Timeout in seconds.
        secs: u64,
        /// Last lines of its log.
        log_tail: String,
    },
}

/// A process group started by a [`Daemon`], as recorded for a cleanup by
/// another process (the pid alone could have been reused by then).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// Daemon name.
    pub name: String,
    /// PID, also the process group id.
    pub pid: i32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_ticks: u64,
}

impl ProcessRecord {
    /// Reads the start time of `pid` from `proc_root/<pid>/stat`.
    pub fn start_ticks(proc_root: &Path, pid: i32) -> Option<u64> {
        let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
        // The command name (field 2) may hold spaces and parentheses; the
        // fields after its closing parenthesis are plain.
        let rest = &stat[stat.rfind(')')? + 1..];
        rest.split_whitespace().nth(19)?.parse().ok()
    }

    /// Kills the recorded process group if its leader is still the process
    /// that was recorded. Returns whether a signal was sent.
    pub fn kill_if_same(&self, proc_root: &Path) -> bool {
        if Self::start_ticks(proc_root, self.pid) != Some(self.start_ticks) {
            return false;
        }
        killpg(Pid::from_raw(self.pid), Signal::SIGKILL).is_ok()
    }

    /// Whether the recorded process still exists (as itself).
    pub fn is_alive(&self, proc_root: &Path) -> bool {
        let stat = std::fs::read_to_string(proc_root.join(self.pid.to_string()).join("stat"))
            .unwrap_or_default();
        Self::start_ticks(proc_root, self.pid) == Some(self.start_ticks) && !stat.contains(") Z")
    }
}

/// A supervised child process.
#[derive(Debug)]
pub struct Daemon {
    name: &'static str,
    pid: Option<Pid>,
    start_ticks: Option<u64>,
    log: PathBuf,
    exit: watch::Receiver<Option<ExitStatus>>,
    kill: Arc<Notify>,
}

/// Last `lines` lines of a log file, joined with " | ".
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = all[all.len().saturating_sub(lines)..].join(" | ");
    if tail.is_empty() {
        "(nothing)".into()
    } else {
        tail
    }
}

/// Owns the child: reaps it and publishes its exit; kills its group (while
/// the leader is unreaped, so the group id cannot have been reused) when
/// asked.
async fn supervise(
    mut child: tokio::process::Child,
    pid: Option<Pid>,
    exit: watch::Sender<Option<ExitStatus>>,
    kill: Arc<Notify>,
) {
    loop {
        tokio::select! {
            status = child.wait() => {
                // An error here means the child is gone without a status
                // (already reaped elsewhere); report it as killed.
                let status = status.unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(9));
                exit.send_replace(Some(status));
                return;
            }
            () = kill.notified() => {
                if let Some(pid) = pid {
                    let _ = killpg(pid, Signal::SIGKILL);
                }
                let _ = child.start_kill();
            }
        }
    }
}

impl Daemon {
    /// Starts `program args...` with output to `log`.
    ///
    /// Must be called from a long-lived thread (a runtime worker, not the
    /// blocking pool): the parent-death signal fires when the *thread* that
    /// forked exits.
    pub fn spawn(
        name: &'static str,
        program: &Path,
        args: &[OsString],
        log: &Path,
    ) -> Result<Self, DaemonError> {
        Self::spawn_with_fds(name, program, args, log, &[])
    }

    /// [`Daemon::spawn`], the child inheriting `fds` as 3, 4, ... (the
    /// parent's copies stay as they are).
    pub fn spawn_with_fds(
        name: &'static str,
        program: &Path,
        args: &[OsString],
        log: &Path,
        fds: &[std::os::fd::RawFd],
    ) -> Result<Self, DaemonError> {
        let out = crate::private::create_file(log).map_err(|source| DaemonError::Log {
            path: log.to_path_buf(),
            source,
        })?;
        let err = out.try_clone().map_err(|source| DaemonError::Log {
            path: log.to_path_buf(),
            source,
        })?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0)
            .kill_on_drop(true);
        let fds = fds.to_vec();
        // SAFETY: the closure runs between fork and exec and only calls
        // prctl, fcntl and dup2, which are async-signal-safe, on a Vec
        // allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                // First out of the way of 3.., then into place (dup2
                // clears close-on-exec on the copy).
                let mut high = [0; 64];
                if fds.len() > high.len() {
                    return Err(std::io::Error::from_raw_os_error(libc::EMFILE));
                }
                for (h, fd) in high.iter_mut().zip(&fds) {
                    *h = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 1024);
                    if *h == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (i, h) in high.iter().take(fds.len()).enumerate() {
                    let target = 3 + i32::try_from(i).unwrap_or(i32::MAX);
                    if libc::dup2(*h, target) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| DaemonError::Spawn {
            name,
            program: program.to_path_buf(),
            source,
        })?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .map(Pid::from_raw);
        let start_ticks =
            pid.and_then(|p| ProcessRecord::start_ticks(Path::new("/proc"), p.as_raw()));
        let (tx, rx) = watch::channel(None);
        let kill = Arc::new(Notify::new());
        tokio::spawn(supervise(child, pid, tx, kill.clone()));
        Ok(Self {
            name,
            pid,
            start_ticks,
            log: log.to_path_buf(),
            exit: rx,
            kill,
        })
    }

    /// The daemon's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Its PID (also its process group id).
    pub fn pid(&self) -> Option<Pid> {
        self.pid
    }

    /// What a cleanup in another process needs to kill it safely.
    pub fn record(&self) -> Option<ProcessRecord> {
        Some(ProcessRecord {
            name: self.name.to_string(),
            pid: self.pid?.as_raw(),
            start_ticks: self.start_ticks?,
        })
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The exit status if it has exited.
    pub fn try_wait(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// A receiver that learns the exit status (`Some`) once it exits.
    pub fn exit_watch(&self) -> watch::Receiver<Option<ExitStatus>> {
        self.exit.clone()
    }

    /// Waits for it to exit.
    pub async fn wait(&self) -> Option<ExitStatus> {
        let mut rx = self.exit.clone();
        let r = rx.wait_for(Option::is_some).await.ok().and_then(|s| *s);
        r
    }

    /// Waits up to `timeout` for it to exit.
    pub async fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(timeout, self.wait())
            .await
            .ok()
            .flatten()
    }

    /// Kills its whole process group with SIGKILL and waits until it is
    /// reaped.
    pub async fn kill(&self) {
        self.kill_group();
        self.wait().await;
    }

    fn kill_group(&self) {
        if self.try_wait().is_none() {
            // `notify_one` stores a permit, so a kill asked for before the
            // supervisor first polls is not lost.
            self.kill.notify_one();
        }
    }

    /// Waits until `socket` exists, failing early if the daemon exits.
    pub async fn wait_for_socket(
        &self,
        socket: &Path,
        timeout: Duration,
    ) -> Result<(), DaemonError> {
        let start = Instant::now();
        loop {
            if socket.exists() {
                return Ok(());
            }
            if let Some(status) = self.try_wait() {
                return Err(DaemonError::ExitedEarly {
                    name: self.name,
                    status,
                    log_tail: log_tail(&self.log, 5),
                });
            }
            if start.elapsed() > timeout {
                return Err(DaemonError::NotReady {
                    name: self.name,
                    socket: socket.to_path_buf(),
                    secs: timeout.as_secs(),
                    log_tail: log_tail(&self.log, 5),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        self.kill.notify_one();
        // Also signal the group directly: when the runtime is shutting down
        // the supervisor may never run again. The leader is not reaped yet
        // (no exit was published), so its group id is still its own.
        if let Some(pid) = self.pid {
            let _ = killpg(pid, Signal::SIGKILL);
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dropping_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sh.log");
        let pidfile = dir.path().join("grandchild");
        let script = format!(
            "sleep 600 & echo $! > {}; echo started; wait",
            pidfile.display()
        );
        let d = Daemon::spawn(
            "sh",
            Path::new("/bin/sh"),
            &["-c".into(), script.into()],
            &log,
        )
        .unwrap();
        let start = Instant::now();
        while !pidfile.exists() || std::fs::read_to_string(&pidfile).unwrap().trim().is_empty() {
            assert!(start.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let grandchild: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        drop(d);
        let start = Instant::now();
        // The grandchild (same process group) must be gone; it is reaped by
        // init, so poll /proc for it.
        loop {
            let stat =
                std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z") {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "grandchild survived: {stat}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(log_tail(&log, 1).contains("started"));
    }

    #[tokio::test]
    async fn early_exit_reports_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        let d = Daemon::spawn(
            "x",
            Path::new("/bin/sh"),
            &["-c".into(), "echo bad option >&2; exit 2".into()],
            &log,
        )
        .unwrap();
        let e = d
            .wait_for_socket(&dir.path().join("never.sock"), Duration::from_secs(10))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x exited with exit status: 2") && e.contains("bad option"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn the_exit_watch_learns_the_status() {
        let dir = tempfile::tempdir().unwrap();
        let d = Daemon::spawn(
            "sh",
            Path::new("/bin/sh"),
            &["-c".into(), "exit 7".into()],
            &dir.path().join("l"),
        )
        .unwrap();
        let mut rx = d.exit_watch();
        let status = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(Option::is_some))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(status.code(), Some(7));
        assert_eq!(d.try_wait().and_then(|s| s.code()), Some(7));
    }

    #[tokio::test]
    async fn records_kill_only_the_recorded_process() {
        let dir = tempfile::tempdir().unwrap();
        let d = Daemon::spawn(
            "sleep",
            Path::new("/bin/sleep"),
            &["600".into()],
            &dir.path().join("l"),
        )
        .unwrap();
        let rec = d.record().unwrap();
        let proc_root = Path::new("/proc");
        assert!(rec.is_alive(proc_root));
        // Another start time is another process that reuses the pid.
        let other = ProcessRecord {
            start_ticks: rec.start_ticks + 1,
            ..rec.clone()
        };
        assert!(!other.kill_if_same(proc_root));
        assert!(d.try_wait().is_none());
        assert!(rec.kill_if_same(proc_root));
        let status = d.wait_timeout(Duration::from_secs(10)).await.unwrap();
        assert!(!status.success());
        assert!(!rec.is_alive(proc_root));
        let json = serde_json::to_string(&rec).unwrap();
        assert_eq!(serde_json::from_str::<ProcessRecord>(&json).unwrap(), rec);
    }

    #[tokio::test]
    async fn missing_program_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = Daemon::spawn(
            "qemu",
            Path::new("/nonexistent/qemu"),
            &[],
            &dir.path().join("l"),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "cannot start qemu (/nonexistent/qemu)");
    }
}
