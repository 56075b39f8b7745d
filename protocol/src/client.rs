//! [`GuestClient`]: the typed client of the agent API that the shim and
//! `cocoon run` share. Each call has a named timeout ([`timeouts`]); calls
//! that block until the guest has something to say (reads, waits) have
//! none. Errors keep the agent's status code.

use std::time::Duration;

use tokio::sync::watch;
use ttrpc::context::Context;
use ttrpc::Code;

use crate::agent::*;
use crate::agent_ttrpc::AgentClient;

/// How long each kind of call may take.
pub mod timeouts {
    use std::time::Duration;

    /// `Version`, the first call after connecting.
    pub const VERSION: Duration = Duration::from_secs(10);
    /// `CreateSandbox`: mounts the shared filesystem.
    pub const CREATE_SANDBOX: Duration = Duration::from_secs(60);
    /// `CreateSandbox` that fetches secrets first: the agent's KBS exchange
    /// may take three attempts of up to 30 s per request.
    pub const CREATE_SANDBOX_WITH_SECRETS: Duration = Duration::from_secs(240);
    /// `CreateContainer`: namespaces and the rootfs over virtio-fs, which
    /// can be slow on a loaded emulated guest.
    pub const CREATE_CONTAINER: Duration = Duration::from_secs(60);
    /// `CreateContainer` that decrypts sealed models first (gigabytes at
    /// memory speed, much slower under emulation).
    pub const CREATE_CONTAINER_WITH_MODELS: Duration = Duration::from_secs(1800);
    /// `StartProcess` and `ExecProcess`.
    pub const START: Duration = Duration::from_secs(30);
    /// Signals, removals, resizes, listings, stats.
    pub const CONTROL: Duration = Duration::from_secs(10);
    /// `WriteStdin` and `CloseStdin` (a full pipe in the guest may hold a
    /// write until the process reads).
    pub const STDIN: Duration = Duration::from_secs(40);
    /// `Shutdown`: the agent only has to start powering off.
    pub const SHUTDOWN: Duration = Duration::from_secs(2);
}

/// A failed agent call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{op}: {message}")]
pub struct GuestError {
    /// What was asked of the guest ("start the process in the guest").
    pub op: &'static str,
    /// The agent's status code; `None` when the call never got an answer
    /// (connection lost, timeout).
    pub code: Option<Code>,
    /// The agent's message, or the transport error.
    pub message: String,
}

impl GuestError {
    fn new(op: &'static str, e: ttrpc::Error) -> Self {
        match e {
            ttrpc::Error::RpcStatus(s) => Self {
                op,
                code: Some(s.code()),
                message: s.message().to_string(),
            },
            other => Self {
                op,
                code: None,
                message: other.to_string(),
            },
        }
    }
}

/// Result of a guest call.
pub type GuestResult<T> = Result<T, GuestError>;

fn ctx(timeout: Duration) -> Context {
    ttrpc::context::with_timeout(i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX))
}

/// Which process of a container a call is about (`exec_id` empty: the
/// container's init).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ProcessRef {
    /// Container id.
    pub container_id: String,
    /// Exec id; empty for the init process.
    pub exec_id: String,
}

impl ProcessRef {
    /// The init process of `container_id`.
    pub fn init(container_id: &str) -> Self {
        Self {
            container_id: container_id.to_string(),
            exec_id: String::new(),
        }
    }
}

/// The agent API with named timeouts. Cheap to clone (one connection).
#[derive(Clone)]
pub struct GuestClient {
    inner: AgentClient,
    /// Set (with the reason) once the VM is gone: every pending and later
    /// call fails at once instead of waiting for a guest that cannot
    /// answer.
    gone: Option<watch::Receiver<Option<String>>>,
}

impl std::fmt::Debug for GuestClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestClient").finish_non_exhaustive()
    }
}

impl GuestClient {
    /// Wraps a connected ttrpc client.
    pub fn new(inner: AgentClient) -> Self {
        Self { inner, gone: None }
    }

    /// This client, failing every call once `gone` holds a reason (the VM
    /// stopped: QEMU or a helper it needs exited).
    #[must_use]
    pub fn until_gone(mut self, gone: watch::Receiver<Option<String>>) -> Self {
        self.gone = Some(gone);
        self
    }

    /// Runs one call, mapping its error, unless the VM is gone first.
    async fn call<T>(
        &self,
        op: &'static str,
        call: impl std::future::Future<Output = ttrpc::Result<T>>,
    ) -> GuestResult<T> {
        let Some(mut gone) = self.gone.clone() else {
            return call.await.map_err(|e| GuestError::new(op, e));
        };
        let lost = |why: Option<String>| GuestError {
            op,
            code: None,
            message: why.unwrap_or_else(|| "the VM is gone".into()),
        };
        if let Some(why) = gone.borrow().clone() {
            return Err(lost(Some(why)));
        }
        tokio::select! {
            r = call => r.map_err(|e| GuestError::new(op, e)),
            w = gone.wait_for(Option::is_some) => Err(lost(w.ok().and_then(|w| w.clone()))),
        }
    }

    /// `Version`: the agent's protocol version and kernel release.
    pub async fn version(&self) -> GuestResult<VersionResponse> {
        let mut req = VersionRequest::new();
        req.protocol_version = crate::PROTOCOL_VERSION;
        self.call(
            "ask the agent its version",
            self.inner.version(ctx(timeouts::VERSION), &req),
        )
        .await
    }

    /// `CreateSandbox`: mounts the share tagged `shared_fs_tag`, hands over
    /// the pod's initdata document (empty: none) and the secrets to fetch.
    pub async fn create_sandbox(&self, req: CreateSandboxRequest) -> GuestResult<()> {
        let timeout = if req.secrets.is_empty() {
            timeouts::CREATE_SANDBOX
        } else {
            timeouts::CREATE_SANDBOX_WITH_SECRETS
        };
        self.call(
            "create the sandbox in the guest",
            self.inner.create_sandbox(ctx(timeout), &req),
        )
        .await
        .map(drop)
    }

    /// `CreateContainer`: returns the guest PID of its init process
    /// (created, not started).
    pub async fn create_container(&self, req: &CreateContainerRequest) -> GuestResult<u32> {
        self.create_container_reply(req).await.map(|r| r.pid)
    }

    /// `CreateContainer`, with the whole reply (the models it decrypted).
    pub async fn create_container_reply(
        &self,
        req: &CreateContainerRequest,
    ) -> GuestResult<CreateContainerResponse> {
        let timeout = if req.models.is_empty() {
            timeouts::CREATE_CONTAINER
        } else {
            timeouts::CREATE_CONTAINER_WITH_MODELS
        };
        self.call(
            "create the container in the guest",
            self.inner.create_container(ctx(timeout), req),
        )
        .await
    }

    /// `StartProcess`.
    pub async fn start(&self, p: &ProcessRef) -> GuestResult<u32> {
        let mut req = StartProcessRequest::new();
        req.container_id.clone_from(&p.container_id);
        req.exec_id.clone_from(&p.exec_id);
        self.call(
            "start the process in the guest",
            self.inner.start_process(ctx(timeouts::START), &req),
        )
        .await
        .map(|r| r.pid)
    }

    /// `ExecProcess`: creates (not starts) an exec process from its OCI
    /// process (JSON).
    pub async fn exec(&self, p: &ProcessRef, oci_process: Vec<u8>) -> GuestResult<u32> {
        let mut req = ExecProcessRequest::new();
        req.container_id.clone_from(&p.container_id);
        req.exec_id.clone_from(&p.exec_id);
        req.oci_process = oci_process;
        self.call(
            "create the exec process in the guest",
            self.inner.exec_process(ctx(timeouts::START), &req),
        )
        .await
        .map(|r| r.pid)
    }

    /// `SignalProcess` (to every process of the container with `all`).
    pub async fn signal(&self, p: &ProcessRef, signal: u32, all: bool) -> GuestResult<()> {
        let mut req = SignalProcessRequest::new();
        req.container_id.clone_from(&p.container_id);
        req.exec_id.clone_from(&p.exec_id);
        req.signal = signal;
        req.all = all;
        self.call(
            "signal the process in the guest",
            self.inner.signal_process(ctx(timeouts::CONTROL), &req),
        )
        .await
        .map(drop)
    }

    /// `WaitProcess`: blocks (no timeout) until the process exits; its exit
    /// code, 128+N when killed by signal N.
    pub async fn wait(&self, p: &ProcessRef) -> GuestResult<i32> {
        self.wait_status(p).await.map(|r| r.exit_status)
    }

    /// `WaitProcess`, with whether the OOM killer struck the container.
    pub async fn wait_status(&self, p: &ProcessRef) -> GuestResult<WaitProcessResponse> {
        let mut req = WaitProcessRequest::new();
        req.container_id.clone_from(&p.container_id);
        req.exec_id.clone_from(&p.exec_id);
        self.call(
            "wait for the process in the guest",
            self.inner.wait_process(Context::default(), &req),
        )
        .await
    }

    /// `UpdateContainer`: new `linux.resources` (JSON) for the container's
    /// cgroup.
    pub async fn update(&self, container_id: &str, oci_resources: Vec<u8>) -> GuestResult<()> {
        let mut req = UpdateContainerRequest::new();
        req.container_id = container_id.to_string();
        req.oci_resources = oci_resources;
        self.call(
            "update the container's resources in the guest",
            self.inner.update_container(ctx(timeouts::CONTROL), &req),
        )
        .await
        .map(drop)
    }

    /// `RemoveProcess` (an exec's bookkeeping).
    pub async fn remove_process(&self, p: &ProcessRef) -> GuestResult<()> {
        let mut req = RemoveProcessRequest::new();
        req.container_id.clone_from(&p.container_id);
        req.exec_id.clone_from(&p.exec_id);
        self.call(
            "remove the process in the guest",
            self.inner.remove_process(ctx(timeouts::CONTROL), &req),
        )
        .await
        .map(drop)
    }

    /// `RemoveContainer`.
    pub async fn remove_container(&self, container_id: &str) -> GuestResult<()> {
        let mut req = RemoveContainerRequest::new();
        req.container_id = container_id.to_string();
        self.call(
            "remove the container in the guest",
            self.inner.remove_container(ctx(timeouts::CONTROL), &req),
        )
        .await
        .map(drop)
    }

    /// `ReadStream`: blocks (no timeout) until output or end of stream;
    /// `None` at the end.
    pub async fn read(&self, p: &ProcessRef, stream: StdioStream) -> GuestResult<Option<Vec<u8>>> {
        let mut req = ReadStreamRequest::new();
        req.container_id.clone_from(&p.container_id);
        req.exec_id.clone_from(&p.exec_id);
        req.stream = stream.into();
        let r = self
            .call(
                "read the process's output",
                self.inner.read_stream(Context::default(), &req),
            )
            .await?;
        Ok((!r.eof).then_some(r.data))
    }

    /// `WriteStdin`.
    pub async fn write_stdin(&self, p: &ProcessRef, data: Vec<u8>) -> GuestResult<u32> {
        let mut req = WriteStdinRequest::new();
        req.container_id.clone_from(&p.container_id);
        req.exec_id.clone_from(&p.exec_id);
        req.data = data;
        self.call(
            "write to the process's stdin",
            self.inner.write_stdin(ctx(timeouts::STDIN), &req),
        )
        .await
        .map(|r| r.written)
    }

    /// `CloseStdin`.
    pub async fn close_stdin(&self, p: &ProcessRef) -> GuestResult<()> {
        let mut req = CloseStdinRequest::new();
        req.container_id.clone_from(&p.container_id);
        req.exec_id.clone_from(&p.exec_id);
        self.call(
            "close the process's stdin",
            self.inner.close_stdin(ctx(timeouts::STDIN), &req),
        )
        .await
        .map(drop)
    }

    /// `ResizeTty`.
    pub async fn resize(&self, p: &ProcessRef, rows: u32, cols: u32) -> GuestResult<()> {
        let mut req = ResizeTtyRequest::new();
        req.container_id.clone_from(&p.container_id);
        req.exec_id.clone_from(&p.exec_id);
        req.rows = rows;
        req.cols = cols;
        self.call(
            "resize the terminal in the guest",
            self.inner.resize_tty(ctx(timeouts::CONTROL), &req),
        )
        .await
        .map(drop)
    }

    /// `ListProcesses`: guest PIDs of the container.
    pub async fn list_processes(&self, container_id: &str) -> GuestResult<Vec<u32>> {
        let mut req = ListProcessesRequest::new();
        req.container_id = container_id.to_string();
        self.call(
            "list the container's processes in the guest",
            self.inner.list_processes(ctx(timeouts::CONTROL), &req),
        )
        .await
        .map(|r| r.pids)
    }

    /// `Stats`.
    pub async fn stats(&self, container_id: &str) -> GuestResult<StatsResponse> {
        let mut req = StatsRequest::new();
        req.container_id = container_id.to_string();
        self.call(
            "read the container's stats in the guest",
            self.inner.stats(ctx(timeouts::CONTROL), &req),
        )
        .await
    }

    /// `Shutdown`: asks the guest to power off.
    pub async fn shutdown(&self) -> GuestResult<()> {
        self.call(
            "ask the guest to power off",
            self.inner
                .shutdown(ctx(timeouts::SHUTDOWN), &ShutdownRequest::new()),
        )
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_the_code_and_name_the_call() {
        let mut s = ttrpc::proto::Status::new();
        s.set_code(Code::NOT_FOUND);
        s.set_message("container \"x\" not found".into());
        let e = GuestError::new("start the process in the guest", ttrpc::Error::RpcStatus(s));
        assert_eq!(e.code, Some(Code::NOT_FOUND));
        assert_eq!(
            e.to_string(),
            "start the process in the guest: container \"x\" not found"
        );
        let e = GuestError::new("x", ttrpc::Error::LocalClosed);
        assert_eq!(e.code, None);
    }

    /// A guest that never answers (its VM lost a helper): calls pending
    /// and later fail as soon as the VM is known to be gone, with why,
    /// instead of waiting for their timeouts.
    #[tokio::test]
    async fn calls_fail_at_once_when_the_vm_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let silent = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
        let client = ttrpc::r#async::Client::connect(&format!("unix://{}", path.display()))
            .await
            .unwrap();
        let _conn = silent.join().unwrap().unwrap();
        let (tx, rx) = watch::channel(None);
        let guest = GuestClient::new(AgentClient::new(client)).until_gone(rx);
        let started = std::time::Instant::now();
        let pending = tokio::spawn({
            let guest = guest.clone();
            async move { guest.version().await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!pending.is_finished(), "the call ended before the VM went");
        tx.send_replace(Some("the VM stopped: virtiofsd exited".into()));
        let e = pending.await.unwrap().unwrap_err();
        assert_eq!(e.code, None);
        assert_eq!(
            e.to_string(),
            "ask the agent its version: the VM stopped: virtiofsd exited"
        );
        assert!(started.elapsed() < timeouts::VERSION);
        let e = guest.stats("c1").await.unwrap_err();
        assert!(e.to_string().contains("virtiofsd exited"), "{e}");
    }
}
