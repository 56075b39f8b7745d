//! Asynchronous pumps between a child's stdio fds and the RPCs that read
//! and write them.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, Mutex};

/// Largest chunk handed to one `ReadStream` reply.
///
/// Kept at 16 KiB so each reply leaves the guest as a vsock packet below
/// 32 KiB: Linux 6.12 sends larger packets as non-linear buffers, which
/// vhost-device-vsock 0.3.0 (the vhost-user backend used where the kernel's
/// vhost-vsock is missing) stalls on. Measured: 64 KiB replies hung after
/// 0.2–1.2 MB; 16 KiB replies stream 10 MiB intact.
const CHUNK: usize = 16 * 1024;
/// Chunks buffered per stream before the child is throttled.
const BUFFERED_CHUNKS: usize = 16;

fn nonblocking(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?;
    fcntl(
        fd.as_raw_fd(),
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )?;
    // SAFETY: an OwnedFd is a valid open descriptor that stays open, and
    // keeps returning the same number, until the AsyncFd owning it drops.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// Output of a child (stdout, stderr or a tty), readable chunk by chunk.
#[derive(Debug)]
pub struct Output {
    rx: Mutex<mpsc::Receiver<Vec<u8>>>,
}

impl Output {
    /// Starts pumping `fd` until EOF (or EIO, which a pty master returns once
    /// the last slave fd closed).
    pub fn pump(fd: OwnedFd) -> io::Result<Self> {
        let afd = nonblocking(fd)?;
        let (tx, rx) = mpsc::channel(BUFFERED_CHUNKS);
        tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let Ok(mut guard) = afd.readable().await else {
                    break;
                };
                match guard.try_io(|inner| {
                    nix::unistd::read(inner.get_ref().as_raw_fd(), &mut buf)
                        .map_err(io::Error::from)
                }) {
                    Ok(Ok(0)) => break,
                    Ok(Ok(n)) => {
                        if tx.send(buf[..n].to_vec()).await.is_err() {
                            break;
                        }
                    }
                    Ok(Err(e)) if e.raw_os_error() == Some(Errno::EINTR as i32) => {}
                    Ok(Err(_)) => break,
                    Err(_would_block) => {}
                }
            }
        });
        Ok(Self { rx: Mutex::new(rx) })
    }

    /// An output that is at EOF already (stderr of a tty process).
    pub fn closed() -> Self {
        let (_, rx) = mpsc::channel(1);
        Self { rx: Mutex::new(rx) }
    }

    /// Next chunk, or `None` at EOF.
    pub async fn read(&self) -> Option<Vec<u8>> {
        self.rx.lock().await.recv().await
    }
}

/// Input of a child (stdin pipe or tty master).
#[derive(Debug)]
pub struct Input {
    fd: Mutex<Option<AsyncFd<OwnedFd>>>,
    tty: bool,
}

impl Input {
    /// Wraps the write end of stdin (or a dup of the tty master).
    pub fn new(fd: OwnedFd, tty: bool) -> io::Result<Self> {
        Ok(Self {
            fd: Mutex::new(Some(nonblocking(fd)?)),
            tty,
        })
    }

    /// Writes all of `data`; fails once stdin is closed.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<usize> {
        let total = data.len();
        let guard = self.fd.lock().await;
        let afd = guard
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "stdin is closed"))?;
        while !data.is_empty() {
            let mut ready = afd.writable().await?;
            match ready
                .try_io(|inner| nix::unistd::write(inner.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) if e.raw_os_error() == Some(Errno::EINTR as i32) => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(total)
    }

    /// Closes stdin: the child reads EOF. On a tty, sends the EOF character
    /// instead (the terminal stays open for output).
    pub async fn close(&self) {
        if self.tty {
            let _ = self.write_all(&[4]).await;
        } else {
            self.fd.lock().await.take();
        }
    }

    /// Sets the window size of a tty.
    pub async fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        if !self.tty {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "process has no terminal",
            ));
        }
        let guard = self.fd.lock().await;
        let afd = guard
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "terminal is closed"))?;
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a `winsize` from the pointer, which points
        // at a live local of the right type; the fd is the pty master.
        let rc = unsafe { libc::ioctl(afd.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
