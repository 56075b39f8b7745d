//! Copying between the stdio fifos containerd gives the shim and the
//! agent's stdio RPCs.

use std::path::Path;
use std::time::Duration;

use cocoon_protocol::agent::{
    CloseStdinRequest, ReadStreamRequest, StdioStream, WriteStdinRequest,
};
use cocoon_protocol::agent_ttrpc::AgentClient;
use cocoon_vmm::agent::ctx;
use slog::{debug, Logger};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use super::error::{Result, ShimError};

const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// Which process the streams belong to.
#[derive(Debug, Clone)]
pub struct Target {
    /// Container id.
    pub container_id: String,
    /// Exec id ("" for init).
    pub exec_id: String,
}

/// Opens the write end of an output fifo (containerd holds the read end).
async fn open_output(path: &Path) -> Result<pipe::Sender> {
    let path = path.to_path_buf();
    // Opening a fifo for writing blocks until a reader exists; containerd
    // opened it before calling us, but do it off the runtime anyway.
    let file = tokio::task::spawn_blocking(move || {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| (path, e))
    })
    .await
    .map_err(|e| ShimError::io("open fifo", std::io::Error::other(e)))?
    .map_err(|(p, e)| ShimError::io(format!("open fifo {}", p.display()), e))?;
    pipe::Sender::from_file(file).map_err(|e| ShimError::io("register fifo", e))
}

/// Copies one agent output stream into the fifo at `path` until EOF.
pub async fn spawn_output(
    agent: AgentClient,
    target: Target,
    stream: StdioStream,
    path: &Path,
    log: Logger,
) -> Result<JoinHandle<()>> {
    let mut out = open_output(path).await?;
    Ok(tokio::spawn(async move {
        loop {
            let mut req = ReadStreamRequest::new();
            req.container_id = target.container_id.clone();
            req.exec_id = target.exec_id.clone();
            req.stream = stream.into();
            match agent
                .read_stream(ttrpc::context::Context::default(), &req)
                .await
            {
                Ok(r) if r.eof => break,
                Ok(r) => {
                    if out.write_all(&r.data).await.is_err() {
                        // Nobody reads any more (ctr detached); keep draining
                        // so the process does not block on a full pipe.
                        continue;
                    }
                }
                Err(e) => {
                    debug!(log, "output stream ended"; "error" => e.to_string());
                    break;
                }
            }
        }
    }))
}

/// Copies the stdin fifo at `path` to the process until EOF, then closes
/// the process's stdin.
pub async fn spawn_input(
    agent: AgentClient,
    target: Target,
    path: &Path,
) -> Result<JoinHandle<()>> {
    let mut input = pipe::OpenOptions::new()
        .open_receiver(path)
        .map_err(|e| ShimError::io(format!("open fifo {}", path.display()), e))?;
    Ok(tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match input.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut req = WriteStdinRequest::new();
                    req.container_id = target.container_id.clone();
                    req.exec_id = target.exec_id.clone();
                    req.data = buf[..n].to_vec();
                    if agent.write_stdin(ctx(RPC_TIMEOUT), &req).await.is_err() {
                        return;
                    }
                }
            }
        }
        close_stdin(&agent, &target).await;
    }))
}

/// Closes the process's stdin in the guest.
pub async fn close_stdin(agent: &AgentClient, target: &Target) {
    let mut req = CloseStdinRequest::new();
    req.container_id = target.container_id.clone();
    req.exec_id = target.exec_id.clone();
    let _ = agent.close_stdin(ctx(RPC_TIMEOUT), &req).await;
}
