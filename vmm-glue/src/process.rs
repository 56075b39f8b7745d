//! Ownership of child processes (QEMU, virtiofsd, vhost-device-vsock).
//!
//! A [`Daemon`] runs in its own process group, dies with its parent
//! (`PR_SET_PDEATHSIG`), writes stdout/stderr to a log file, and is killed
//! (the whole group) when dropped. Nothing it started can outlive it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

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

/// A supervised child process.
#[derive(Debug)]
pub struct Daemon {
    name: &'static str,
    child: tokio::process::Child,
    pid: Option<Pid>,
    log: PathBuf,
    exit: Option<ExitStatus>,
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
        let out = std::fs::File::create(log).map_err(|source| DaemonError::Log {
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
        // SAFETY: the closure runs between fork and exec and only calls
        // prctl, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
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
        Ok(Self {
            name,
            child,
            pid,
            log: log.to_path_buf(),
            exit: None,
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

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Waits for it to exit.
    pub async fn wait(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.wait().await.ok();
        }
        self.exit
    }

    /// Waits up to `timeout` for it to exit.
    pub async fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(timeout, self.wait())
            .await
            .ok()
            .flatten()
    }

    /// Kills its whole process group with SIGKILL and reaps it.
    pub async fn kill(&mut self) {
        self.kill_group();
        self.wait().await;
    }

    fn kill_group(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        if let Some(pid) = self.pid {
            let _ = killpg(pid, Signal::SIGKILL);
        }
        let _ = self.child.start_kill();
    }

    /// Waits until `socket` exists, failing early if the daemon exits.
    pub async fn wait_for_socket(
        &mut self,
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
        self.kill_group();
        // Reap at once if it is already gone; otherwise tokio reaps the
        // killed child in the background.
        let _ = self.child.try_wait();
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
        let mut d = Daemon::spawn(
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
