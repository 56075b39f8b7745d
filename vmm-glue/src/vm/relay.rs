//! Byte relays from the guest to fixed host addresses: the guest dials a
//! host vsock port; vhost-device-vsock hands the stream to the unix socket
//! `<uds-path>_<port>`, where a relay accepts it and connects it to the
//! address the node configured (the KBS). The relay copies bytes both ways
//! and never parses them; it cannot be pointed elsewhere by the guest.

use std::path::PathBuf;

use slog::{debug, warn, Logger};
use tokio::net::{TcpStream, UnixListener};
use tokio::task::JoinHandle;

/// One relay: the unix socket the guest's streams arrive on, and the host
/// address they are connected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRelay {
    /// `<vm dir>/agent.sock_<port>`.
    pub socket: PathBuf,
    /// `host:port`.
    pub target: String,
}

/// A running relay; stops accepting when dropped.
#[derive(Debug)]
pub struct Relay(JoinHandle<()>);

impl Drop for Relay {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Binds `r.socket` and relays every stream accepted there to `r.target`.
pub fn start(r: &PlannedRelay, log: &Logger) -> std::io::Result<Relay> {
    let listener = UnixListener::bind(&r.socket)?;
    let target = r.target.clone();
    let log = log.clone();
    Ok(Relay(tokio::spawn(async move {
        loop {
            let Ok((mut guest, _)) = listener.accept().await else {
                return;
            };
            let target = target.clone();
            let log = log.clone();
            tokio::spawn(async move {
                match TcpStream::connect(&target).await {
                    Ok(mut host) => {
                        let r = tokio::io::copy_bidirectional(&mut guest, &mut host).await;
                        debug!(log, "relay stream closed"; "target" => &target, "bytes" => ?r.ok());
                    }
                    // The guest sees its stream close and reports the KBS
                    // as unreachable.
                    Err(e) => {
                        warn!(log, "relay cannot reach its target"; "target" => &target, "error" => e.to_string())
                    }
                }
            });
        }
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn streams_reach_the_target_and_back() {
        let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf.map(|b| b.to_ascii_uppercase()))
                .await
                .unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock_1025");
        let log = Logger::root(slog::Discard, slog::o!());
        let relay = start(
            &PlannedRelay {
                socket: socket.clone(),
                target,
            },
            &log,
        )
        .unwrap();
        let mut s = tokio::net::UnixStream::connect(&socket).await.unwrap();
        s.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"HELLO");
        drop(relay);
    }

    #[tokio::test]
    async fn an_unreachable_target_closes_the_stream() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock_1025");
        let log = Logger::root(slog::Discard, slog::o!());
        let _relay = start(
            &PlannedRelay {
                socket: socket.clone(),
                target: format!("127.0.0.1:{port}"),
            },
            &log,
        )
        .unwrap();
        let mut s = tokio::net::UnixStream::connect(&socket).await.unwrap();
        let mut buf = Vec::new();
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
}
