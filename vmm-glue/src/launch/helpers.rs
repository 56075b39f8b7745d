//! The helper daemons of a VM — virtiofsd per share, vhost-device-vsock for
//! hybrid vsock — as values: program, argv, the socket that says it is
//! ready, and its log. [`crate::vm`] starts them in plan order.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::config::FsCache;

/// Guest CID used with vhost-device-vsock (each VM has its own backend).
pub const HYBRID_GUEST_CID: u32 = 3;

/// One helper daemon to start before QEMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperSpec {
    /// Short name (`virtiofsd`, `vhost-device-vsock`).
    pub name: &'static str,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// The socket whose appearance means it is ready.
    pub ready_socket: PathBuf,
    /// Its stdout/stderr.
    pub log: PathBuf,
}

impl HelperSpec {
    /// virtiofsd exporting `shared_dir` on `socket`.
    pub fn virtiofsd(
        program: &Path,
        socket: PathBuf,
        shared_dir: &Path,
        cache: FsCache,
        log: PathBuf,
    ) -> Self {
        Self {
            name: "virtiofsd",
            program: program.to_path_buf(),
            args: vec![
                format!("--socket-path={}", socket.display()).into(),
                format!("--shared-dir={}", shared_dir.display()).into(),
                "--sandbox=none".into(),
                format!("--cache={}", cache.as_str()).into(),
                "--announce-submounts".into(),
                "--log-level=warn".into(),
            ],
            ready_socket: socket,
            log,
        }
    }

    /// vhost-device-vsock serving the vhost-user socket `socket`, bridging
    /// guest streams to unix sockets at `uds` (`<uds>_<port>` for streams
    /// the guest opens).
    pub fn vhost_device_vsock(program: &Path, socket: PathBuf, uds: &Path, log: PathBuf) -> Self {
        let arg = format!(
            "guest-cid={HYBRID_GUEST_CID},socket={},uds-path={}",
            socket.display(),
            uds.display()
        );
        Self {
            name: "vhost-device-vsock",
            program: program.to_path_buf(),
            args: vec!["--vm".into(), arg.into()],
            ready_socket: socket,
            log,
        }
    }

    /// The command line as one string (for logs and dry runs).
    pub fn command_line(&self) -> String {
        command_line(&self.program, &self.args)
    }
}

/// `program arg...` joined with spaces.
pub fn command_line(program: &Path, args: &[OsString]) -> String {
    let mut line = program.display().to_string();
    for a in args {
        line.push(' ');
        line.push_str(&a.to_string_lossy());
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_command_lines() {
        let v = HelperSpec::virtiofsd(
            Path::new("/bin/virtiofsd"),
            "/s/fs0.sock".into(),
            Path::new("/pod/shared"),
            FsCache::Auto,
            "/s/virtiofsd0.log".into(),
        );
        assert_eq!(
            v.command_line(),
            "/bin/virtiofsd --socket-path=/s/fs0.sock --shared-dir=/pod/shared --sandbox=none --cache=auto --announce-submounts --log-level=warn"
        );
        let h = HelperSpec::vhost_device_vsock(
            Path::new("/bin/vdv"),
            "/s/vsock.sock".into(),
            Path::new("/s/agent.sock"),
            "/s/vsock.log".into(),
        );
        assert_eq!(
            h.command_line(),
            "/bin/vdv --vm guest-cid=3,socket=/s/vsock.sock,uds-path=/s/agent.sock"
        );
        assert_eq!(h.ready_socket, Path::new("/s/vsock.sock"));
    }
}
