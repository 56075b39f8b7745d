//! The `start` action: containerd runs `containerd-shim-cocoon-v2 ... start`
//! in the bundle and reads one line, the ttrpc address, from its output.
//!
//! Cocoon prints a plain `unix://` address (what containerd 1.6 and 1.7
//! expect; 2.x accepts it too) and writes the bundle's `address` file. A CRI
//! container whose pod already has a shim gets that shim's address: one shim
//! and one VM per pod. Otherwise the listening socket is bound here and
//! handed to a detached `serve` process as fd 3.

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use super::args::Args;
use super::request;

/// Where containerd's shims put their sockets (fixed in containerd 1.6+).
pub const SOCKET_ROOT: &str = "/run/containerd/s";
/// Environment variable carrying the listener fd to the server.
pub const LISTEN_FD_ENV: &str = "COCOON_SHIM_LISTEN_FD";
/// The fd number of the listener in the server.
pub const LISTEN_FD: i32 = 3;

/// The socket path for a grouping id, as containerd computes it.
pub fn socket_path(containerd_address: &str, namespace: &str, group: &str) -> PathBuf {
    let digest = Sha256::digest(format!("{containerd_address}/{namespace}/{group}").as_bytes());
    Path::new(SOCKET_ROOT).join(hex::encode(digest))
}

/// Runs `start` in the current directory (the bundle); returns the address.
pub fn start(args: &Args) -> anyhow::Result<String> {
    let bundle = std::env::current_dir()?;
    let spec = request::load(&bundle)?;
    let group = request::group_id(&spec, &args.id);
    let path = socket_path(&args.address, &args.namespace, &group);
    let address = format!("unix://{}", path.display());
    if UnixStream::connect(&path).is_ok() {
        // The pod's shim is alive: join it.
        std::fs::write(bundle.join("address"), &address)?;
        return Ok(address);
    }
    std::fs::create_dir_all(SOCKET_ROOT)?;
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).map_err(|e| anyhow::anyhow!("bind {}: {e}", path.display()))?;
    let fd = listener.as_raw_fd();
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "-namespace",
        &args.namespace,
        "-id",
        &args.id,
        "-address",
        &args.address,
    ]);
    if args.debug {
        cmd.arg("-debug");
    }
    cmd.arg("serve")
        .current_dir(&bundle)
        .env(LISTEN_FD_ENV, LISTEN_FD.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: between fork and exec only async-signal-safe calls: setsid,
    // dup2 (which clears FD_CLOEXEC on the new descriptor) or, when the
    // listener already is fd 3, fcntl to clear FD_CLOEXEC.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            let rc = if fd == LISTEN_FD {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, LISTEN_FD)
            };
            if rc == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        let _ = std::fs::remove_file(&path);
        anyhow::anyhow!("spawn the shim server: {e}")
    })?;
    std::fs::write(bundle.join("address"), &address)?;
    std::fs::write(bundle.join("shim.pid"), child.id().to_string())?;
    drop(listener);
    Ok(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_path_is_containerds_hash() {
        let p = socket_path("/run/containerd/containerd.sock", "default", "t1");
        let expected = hex::encode(Sha256::digest(
            b"/run/containerd/containerd.sock/default/t1",
        ));
        assert_eq!(p, Path::new(SOCKET_ROOT).join(expected));
        assert!(p.as_os_str().len() < 108);
    }
}
