//! Copying between the stdio fifos containerd gives the shim and the
//! agent's stdio RPCs.

use std::path::Path;

use cocoon_protocol::agent::StdioStream;
use cocoon_protocol::client::{GuestClient, ProcessRef};
use slog::{debug, warn, Logger};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use super::error::{Result, ShimError};

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
    guest: GuestClient,
    target: ProcessRef,
    stream: StdioStream,
    path: &Path,
    log: Logger,
) -> Result<JoinHandle<()>> {
    let mut out = open_output(path).await?;
    Ok(tokio::spawn(async move {
        loop {
            match guest.read(&target, stream).await {
                Ok(None) => break,
                Ok(Some(data)) => {
                    if out.write_all(&data).await.is_err() {
                        // Nobody reads any more (ctr detached); keep draining
                        // so the process does not block on a full pipe.
                        continue;
                    }
                }
                Err(e) if e.code == Some(ttrpc::Code::PERMISSION_DENIED) => {
                    // The pod's policy keeps this output in the guest.
                    warn!(log, "the guest refused the process's output"; "error" => e.to_string());
                    break;
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
    guest: GuestClient,
    target: ProcessRef,
    path: &Path,
    log: Logger,
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
                    if let Err(e) = guest.write_stdin(&target, buf[..n].to_vec()).await {
                        if e.code == Some(ttrpc::Code::PERMISSION_DENIED) {
                            warn!(log, "the guest refused input for the process"; "error" => e.to_string());
                            break;
                        }
                        return;
                    }
                }
            }
        }
        let _ = guest.close_stdin(&target).await;
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use cocoon_protocol::agent::*;
    use cocoon_protocol::agent_ttrpc::{create_agent, Agent, AgentClient};
    use ttrpc::r#async::TtrpcContext;

    /// A stand-in for the agent's stdio calls: scripted output chunks, a
    /// record of what reached stdin.
    #[derive(Default)]
    struct StdioPeer {
        out: Mutex<VecDeque<Vec<u8>>>,
        stdin: Mutex<Vec<u8>>,
        closed: Mutex<bool>,
    }

    #[async_trait::async_trait]
    impl Agent for StdioPeer {
        async fn read_stream(
            &self,
            _: &TtrpcContext,
            req: ReadStreamRequest,
        ) -> ttrpc::Result<ReadStreamResponse> {
            assert_eq!(req.container_id, "c1");
            let mut r = ReadStreamResponse::new();
            match self.out.lock().unwrap().pop_front() {
                Some(d) => r.data = d,
                None => r.eof = true,
            }
            Ok(r)
        }

        async fn write_stdin(
            &self,
            _: &TtrpcContext,
            req: WriteStdinRequest,
        ) -> ttrpc::Result<WriteStdinResponse> {
            self.stdin.lock().unwrap().extend_from_slice(&req.data);
            let mut r = WriteStdinResponse::new();
            r.written = u32::try_from(req.data.len()).unwrap();
            Ok(r)
        }

        async fn close_stdin(
            &self,
            _: &TtrpcContext,
            _: CloseStdinRequest,
        ) -> ttrpc::Result<CloseStdinResponse> {
            *self.closed.lock().unwrap() = true;
            Ok(CloseStdinResponse::new())
        }
    }

    async fn serve(dir: &Path, peer: Arc<StdioPeer>) -> (ttrpc::r#async::Server, GuestClient) {
        let sock = format!("unix://{}", dir.join("agent.sock").display());
        let mut server = ttrpc::r#async::Server::new()
            .bind(&sock)
            .unwrap()
            .register_service(create_agent(peer));
        server.start().await.unwrap();
        let client = ttrpc::r#async::Client::connect(&sock).await.unwrap();
        (server, GuestClient::new(AgentClient::new(client)))
    }

    fn fifo(path: &Path) {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }

    fn logger() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    #[tokio::test]
    async fn output_is_copied_to_the_fifo_until_eof() {
        let dir = tempfile::tempdir().unwrap();
        let peer = Arc::new(StdioPeer::default());
        peer.out
            .lock()
            .unwrap()
            .extend([b"hello ".to_vec(), b"world\n".to_vec()]);
        let (mut server, guest) = serve(dir.path(), peer).await;
        let path = dir.path().join("stdout");
        fifo(&path);
        // containerd holds the read end open before the shim writes.
        let reader = {
            let path = path.clone();
            std::thread::spawn(move || std::fs::read(path).unwrap())
        };
        let task = spawn_output(
            guest,
            ProcessRef::init("c1"),
            StdioStream::STDOUT,
            &path,
            logger(),
        )
        .await
        .unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reader.join().unwrap(), b"hello world\n");
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn input_is_copied_then_stdin_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let peer = Arc::new(StdioPeer::default());
        let (mut server, guest) = serve(dir.path(), peer.clone()).await;
        let path = dir.path().join("stdin");
        fifo(&path);
        let task = spawn_input(guest, ProcessRef::init("c1"), &path, logger())
            .await
            .unwrap();
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
                f.write_all(b"line one\nline two\n").unwrap();
            })
        };
        writer.join().unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(*peer.stdin.lock().unwrap(), b"line one\nline two\n");
        assert!(*peer.closed.lock().unwrap(), "stdin was not closed at EOF");
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_fifo_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let peer = Arc::new(StdioPeer::default());
        let (mut server, guest) = serve(dir.path(), peer).await;
        let e = spawn_input(
            guest,
            ProcessRef::init("c1"),
            &dir.path().join("nope"),
            logger(),
        )
        .await
        .unwrap_err()
        .full_message();
        assert!(e.contains("open fifo") && e.contains("nope"), "{e}");
        server.shutdown().await.unwrap();
    }
}
