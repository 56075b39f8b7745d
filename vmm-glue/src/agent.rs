//! Reaching the in-guest agent: AF_VSOCK through kernel vhost-vsock, or the
//! hybrid vsock of vhost-device-vsock (a unix socket where the host writes
//! `CONNECT <port>\n` and reads `OK <port>\n` before the stream carries the
//! guest connection).

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cocoon_protocol::agent_ttrpc::AgentClient;
use cocoon_protocol::client::GuestClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Where the agent listens, seen from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAddr {
    /// Hybrid vsock: the backend's unix socket and the guest port.
    Hybrid {
        /// vhost-device-vsock's `uds-path`.
        uds: PathBuf,
        /// Guest port.
        port: u32,
    },
    /// Kernel AF_VSOCK.
    Vsock {
        /// Guest CID.
        cid: u32,
        /// Guest port.
        port: u32,
    },
}

/// Errors reaching the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Connecting or the handshake failed.
    #[error("cannot connect to the agent at {addr}")]
    Connect {
        /// Address tried.
        addr: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The first RPC failed.
    #[error("agent did not answer the version request")]
    Rpc(#[source] cocoon_protocol::client::GuestError),
    /// The agent speaks another protocol version.
    #[error(transparent)]
    Version(#[from] cocoon_protocol::VersionMismatch),
}

impl std::fmt::Display for AgentAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Hybrid { uds, port } => write!(f, "hvsock {}:{port}", uds.display()),
            Self::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
        }
    }
}

/// Opens a hybrid-vsock stream to `port` through the backend at `uds`.
pub async fn hybrid_connect(uds: &Path, port: u32) -> io::Result<UnixStream> {
    let mut s = UnixStream::connect(uds).await?;
    s.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    // Read the reply byte by byte: nothing after the newline may be consumed.
    let mut line = Vec::with_capacity(16);
    loop {
        let mut b = [0u8; 1];
        if s.read(&mut b).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "backend closed the connection (nothing listens on the guest port yet)",
            ));
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
        if line.len() > 64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "overlong hybrid vsock reply",
            ));
        }
    }
    if line.starts_with(b"OK ") {
        Ok(s)
    } else {
        Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("hybrid vsock refused: {:?}", String::from_utf8_lossy(&line)),
        ))
    }
}

/// Connects a ttrpc client to the agent (no RPC yet).
pub async fn dial(addr: &AgentAddr) -> Result<AgentClient, AgentError> {
    let err = |source| AgentError::Connect {
        addr: addr.to_string(),
        source,
    };
    let client = match addr {
        AgentAddr::Hybrid { uds, port } => {
            let s = hybrid_connect(uds, *port).await.map_err(err)?;
            ttrpc::r#async::Client::new(ttrpc::r#async::transport::Socket::new(s))
        }
        AgentAddr::Vsock { cid, port } => {
            ttrpc::r#async::Client::connect(&format!("vsock://{cid}:{port}"))
                .await
                .map_err(|e| err(io::Error::other(e.to_string())))?
        }
    };
    Ok(AgentClient::new(client))
}

/// Connects and checks the protocol version; returns the client and the
/// guest kernel release.
pub async fn connect_checked(
    addr: &AgentAddr,
    dial_timeout: Duration,
) -> Result<(GuestClient, String), AgentError> {
    let client = tokio::time::timeout(dial_timeout, dial(addr))
        .await
        .map_err(|_| AgentError::Connect {
            addr: addr.to_string(),
            source: io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no handshake reply within {} s", dial_timeout.as_secs()),
            ),
        })??;
    let guest = GuestClient::new(client);
    let v = guest.version().await.map_err(AgentError::Rpc)?;
    cocoon_protocol::check_version(v.protocol_version)?;
    Ok((guest, v.kernel_release))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    async fn backend(reply: &'static [u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hv.sock");
        let l = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 13];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"CONNECT 1024\n");
            s.write_all(reply).await.unwrap();
            s.write_all(b"payload").await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
        (dir, path)
    }

    #[tokio::test]
    async fn handshake_leaves_the_payload_unread() {
        let (_d, path) = backend(b"OK 1073741824\n").await;
        let mut s = hybrid_connect(&path, 1024).await.unwrap();
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"payload");
    }

    #[tokio::test]
    async fn refusal_is_an_error() {
        let (_d, path) = backend(b"NO\n").await;
        let e = hybrid_connect(&path, 1024).await.unwrap_err();
        assert!(e.to_string().contains("refused"), "{e}");
    }
}
