//! QMP, QEMU's control socket, through the `qapi` crate.
//!
//! Each command opens its own connection (`-qmp ...,server=on,wait=off`
//! accepts a new client after the previous one left), negotiates, runs the
//! command and closes. No long-lived reader means an event that the crate's
//! bundled schema does not know can only affect the command it arrived with.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use qapi::qmp;

/// QMP errors.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be reached.
    #[error("cannot connect to QMP socket {path}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// QEMU rejected the command or the connection broke.
    #[error("QMP command {command} failed: {message}")]
    Command {
        /// Command name.
        command: &'static str,
        /// QEMU's or the transport's message.
        message: String,
    },
}

/// `x-query-virtio-status`, answered as plain JSON so a field added by a
/// newer QEMU cannot break decoding.
#[derive(Debug, Clone, serde::Serialize)]
struct VirtioStatusQuery {
    path: String,
}

impl qapi::Command for VirtioStatusQuery {
    type Ok = serde_json::Value;
    const NAME: &'static str = "x-query-virtio-status";
    const ALLOW_OOB: bool = false;
}

/// A QMP command whose arguments are a JSON object (for commands the
/// crate's typed schema makes unwieldy, such as `blockdev-add`).
macro_rules! json_command {
    ($ty:ident, $name:literal) => {
        #[derive(Debug, Clone, serde::Serialize)]
        #[serde(transparent)]
        struct $ty(serde_json::Value);

        impl qapi::Command for $ty {
            type Ok = serde_json::Value;
            const NAME: &'static str = $name;
            const ALLOW_OOB: bool = false;
        }
    };
}
json_command!(BlockdevAdd, "blockdev-add");
json_command!(DeviceAdd, "device_add");

/// Client of one VM's QMP socket.
#[derive(Debug, Clone)]
pub struct Qmp {
    socket: PathBuf,
    timeout: Duration,
}

impl Qmp {
    /// A client for `socket`.
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_path_buf(),
            timeout: Duration::from_secs(10),
        }
    }

    fn run_blocking<C: qapi::Command + 'static>(
        socket: &Path,
        timeout: Duration,
        cmd: &C,
    ) -> Result<C::Ok, QmpError> {
        let stream = UnixStream::connect(socket).map_err(|source| QmpError::Connect {
            path: socket.to_path_buf(),
            source,
        })?;
        let fail = |message: String| QmpError::Command {
            command: C::NAME,
            message,
        };
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| fail(e.to_string()))?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(|e| fail(e.to_string()))?;
        let mut q = qapi::Qmp::from_stream(&stream);
        q.handshake().map_err(|e| fail(format!("handshake: {e}")))?;
        q.execute(cmd).map_err(|e| fail(e.to_string()))
    }

    async fn run<C: qapi::Command + 'static>(&self, cmd: C) -> Result<C::Ok, QmpError>
    where
        C::Ok: Send,
    {
        let socket = self.socket.clone();
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || Self::run_blocking(&socket, timeout, &cmd))
            .await
            .unwrap_or_else(|e| {
                Err(QmpError::Command {
                    command: C::NAME,
                    message: format!("client failed: {e}"),
                })
            })
    }

    /// Hot-plugs `path` as a read-only virtio-blk disk with virtio serial
    /// `serial` into root port `bus`: a `file` node under a `raw` node
    /// named `node`, the device named `id`.
    pub async fn hotplug_read_only_disk(
        &self,
        path: &Path,
        node: &str,
        id: &str,
        serial: &str,
        bus: &str,
    ) -> Result<(), QmpError> {
        let path = path.to_str().ok_or_else(|| QmpError::Command {
            command: "blockdev-add",
            message: format!("{} is not UTF-8", path.display()),
        })?;
        self.run(BlockdevAdd(serde_json::json!({
            "driver": "raw",
            "node-name": node,
            "read-only": true,
            "file": {"driver": "file", "filename": path, "read-only": true},
        })))
        .await?;
        self.run(DeviceAdd(serde_json::json!({
            "driver": "virtio-blk-pci",
            "id": id,
            "drive": node,
            "bus": bus,
            "serial": serial,
        })))
        .await?;
        Ok(())
    }

    /// The VM's run state as QEMU names it ("running", "paused", ...).
    pub async fn status(&self) -> Result<String, QmpError> {
        let s = self.run(qmp::query_status {}).await?;
        Ok(serde_json::to_value(s.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "unknown".into()))
    }

    /// Whether the guest driver of the virtio device with QOM id `id` has
    /// finished initializing it (`VIRTIO_CONFIG_S_DRIVER_OK`).
    pub async fn virtio_driver_ok(&self, id: &str) -> Result<bool, QmpError> {
        let v = self
            .run(VirtioStatusQuery {
                path: format!("/machine/peripheral/{id}/virtio-backend"),
            })
            .await?;
        Ok(v["status"]["statuses"].as_array().is_some_and(|a| {
            a.iter().any(|s| {
                s.as_str()
                    .is_some_and(|s| s.starts_with("VIRTIO_CONFIG_S_DRIVER_OK"))
            })
        }))
    }

    /// Pauses all vCPUs.
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.run(qmp::stop {}).await.map(drop)
    }

    /// Resumes the vCPUs.
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.run(qmp::cont {}).await.map(drop)
    }

    /// Sends an ACPI power-button press.
    pub async fn powerdown(&self) -> Result<(), QmpError> {
        self.run(qmp::system_powerdown {}).await.map(drop)
    }

    /// Makes QEMU exit at once.
    pub async fn quit(&self) -> Result<(), QmpError> {
        self.run(qmp::quit {}).await.map(drop)
    }
}
