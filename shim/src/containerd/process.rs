//! Tasks as the shim tracks them: containers, their init and exec
//! processes, exit statuses.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use containerd_shim_protos::api::Status;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use cocoon_protocol::client::ProcessRef;

use super::request::Kind;

/// How a process ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    /// Exit status (128+N for signal N).
    pub status: u32,
    /// When.
    pub at: Timestamp,
}

/// The stdio paths containerd gave.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    /// stdin fifo ("" for none).
    pub stdin: String,
    /// stdout fifo.
    pub stdout: String,
    /// stderr fifo.
    pub stderr: String,
    /// Terminal.
    pub terminal: bool,
}

/// One process (a container's init or an exec).
#[derive(Debug)]
pub struct Proc {
    /// Agent ids.
    pub target: ProcessRef,
    /// The PID containerd sees: the VM's (QEMU's) host PID.
    pub pid: u32,
    /// The PID in the guest, for logs.
    pub guest_pid: u32,
    /// stdio.
    pub stdio: StdioPaths,
    status: Mutex<Status>,
    exit: watch::Sender<Option<Exit>>,
    /// Copy tasks (stdin, stdout, stderr).
    pub io_tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The stdin copy task, for CloseIO.
    pub stdin_task: Mutex<Option<JoinHandle<()>>>,
}

impl Proc {
    /// A created (not yet started) process.
    pub fn new(target: ProcessRef, pid: u32, guest_pid: u32, stdio: StdioPaths) -> Self {
        Self {
            target,
            pid,
            guest_pid,
            stdio,
            status: Mutex::new(Status::CREATED),
            exit: watch::channel(None).0,
            io_tasks: Mutex::default(),
            stdin_task: Mutex::default(),
        }
    }

    /// Current status.
    pub fn status(&self) -> Status {
        *self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the status (not to STOPPED: use [`Proc::set_exited`]).
    pub fn set_status(&self, s: Status) {
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if *st != Status::STOPPED {
            *st = s;
        }
    }

    /// Records the exit once; returns false if it had exited already.
    pub fn set_exited(&self, exit: Exit) -> bool {
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if *st == Status::STOPPED {
            return false;
        }
        *st = Status::STOPPED;
        self.exit.send_replace(Some(exit));
        true
    }

    /// The exit, if any.
    pub fn exit(&self) -> Option<Exit> {
        self.exit.borrow().clone()
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.exit.subscribe();
        loop {
            if let Some(e) = rx.borrow_and_update().clone() {
                return e;
            }
            if rx.changed().await.is_err() {
                return Exit {
                    status: 255,
                    at: super::publisher::now(),
                };
            }
        }
    }

    /// Stops the stdio copy tasks.
    pub fn abort_io(&self) {
        for t in self
            .io_tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
        if let Some(t) = self
            .stdin_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            t.abort();
        }
    }
}

/// One container.
#[derive(Debug)]
pub struct Container {
    /// Container id (= containerd task id).
    pub id: String,
    /// Bundle path.
    pub bundle: PathBuf,
    /// What it is in its pod.
    pub kind: Kind,
    /// Host mount point of its rootfs.
    pub rootfs: PathBuf,
    /// Init process.
    pub init: std::sync::Arc<Proc>,
    /// Execs by id.
    pub execs: Mutex<HashMap<String, std::sync::Arc<Proc>>>,
}

impl Container {
    /// `exec_id` ("" = init).
    pub fn proc(&self, exec_id: &str) -> Option<std::sync::Arc<Proc>> {
        if exec_id.is_empty() {
            Some(self.init.clone())
        } else {
            self.execs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(exec_id)
                .cloned()
        }
    }

    /// Every process, init first.
    pub fn procs(&self) -> Vec<std::sync::Arc<Proc>> {
        let mut v = vec![self.init.clone()];
        v.extend(
            self.execs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned(),
        );
        v
    }
}
