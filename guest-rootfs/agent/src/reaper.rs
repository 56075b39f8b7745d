//! Collects the exit status of every child (and, as PID 1, of every orphan)
//! and hands it to whoever registered the PID.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::watch;

/// Exit status as containers report it: the exit code, or 128+N for a death
/// by signal N.
pub fn exit_status(ws: WaitStatus) -> Option<i32> {
    match ws {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

/// PID → exit watchers, plus exits nobody registered (yet).
#[derive(Debug, Default)]
pub struct Table {
    watchers: HashMap<Pid, watch::Sender<Option<i32>>>,
    unclaimed: HashMap<Pid, i32>,
}

impl Table {
    /// Registers `pid`; the receiver sees `Some(status)` once it exits.
    pub fn register(&mut self, pid: Pid) -> watch::Receiver<Option<i32>> {
        let initial = self.unclaimed.remove(&pid);
        let (tx, rx) = watch::channel(initial);
        if initial.is_none() {
            self.watchers.insert(pid, tx);
        }
        rx
    }

    fn exited(&mut self, pid: Pid, status: i32) {
        match self.watchers.remove(&pid) {
            Some(tx) => {
                let _ = tx.send(Some(status));
            }
            // An orphan re-parented to PID 1, or a child whose registration
            // is still on its way. Keep a bounded number.
            None => {
                if self.unclaimed.len() > 4096 {
                    self.unclaimed.clear();
                }
                self.unclaimed.insert(pid, status);
            }
        }
    }
}

/// The reaper.
#[derive(Debug, Default)]
pub struct Reaper {
    table: Mutex<Table>,
}

impl Reaper {
    /// Locks the table (registration while cloning).
    pub fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Collects every child that has exited so far.
    pub fn reap_all(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(ws) => {
                    if let (Some(pid), Some(status)) = (ws.pid(), exit_status(ws)) {
                        self.lock().exited(pid, status);
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(_) => return,
            }
        }
    }

    /// Reaps on every SIGCHLD until the runtime stops.
    pub async fn run(self: std::sync::Arc<Self>) -> std::io::Result<()> {
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        loop {
            self.reap_all();
            sigchld.recv().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    #[test]
    fn statuses_follow_the_shell_convention() {
        let p = Pid::from_raw(5);
        assert_eq!(exit_status(WaitStatus::Exited(p, 3)), Some(3));
        assert_eq!(
            exit_status(WaitStatus::Signaled(p, Signal::SIGKILL, false)),
            Some(137)
        );
        assert_eq!(exit_status(WaitStatus::StillAlive), None);
    }

    #[test]
    fn early_exit_is_delivered_on_registration() {
        let mut t = Table::default();
        let p = Pid::from_raw(42);
        t.exited(p, 7);
        assert_eq!(*t.register(p).borrow(), Some(7));
        let q = Pid::from_raw(43);
        let rx = t.register(q);
        assert_eq!(*rx.borrow(), None);
        t.exited(q, 0);
        assert_eq!(*rx.borrow(), Some(0));
    }
}
