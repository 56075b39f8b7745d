//! Duties of PID 1: the early mounts, kernel modules, and powering off.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::mount::{mount, MsFlags};

/// Lists the modules to load, in order, one path per line (written by the
/// initrd builder).
pub const MODULE_LOAD_ORDER: &str = "/lib/modules/load-order";

/// `finit_module` flag: the file is compressed, the kernel decompresses it.
const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;

fn log(msg: &str) {
    eprintln!("cocoon-agent: {msg}");
}

/// Mounts the pseudo file systems the agent and containers need.
pub fn early_mounts() {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let table: [(&str, &str, &str, MsFlags, Option<&str>); 8] = [
        ("proc", "/proc", "proc", nosuid, None),
        ("sysfs", "/sys", "sysfs", nosuid, None),
        (
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            nosuid,
            Some("nsdelegate"),
        ),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("ptmxmode=0666,mode=0620"),
        ),
        ("shm", "/dev/shm", "tmpfs", nosuid, Some("mode=1777")),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
    ];
    for (src, dst, fstype, flags, data) in table {
        if let Err(e) = fs::create_dir_all(dst) {
            log(&format!("mkdir {dst}: {e}"));
        }
        if let Err(e) = mount(Some(src), dst, Some(fstype), flags, data) {
            log(&format!("mount {fstype} on {dst}: {e}"));
        }
    }
}

/// Raises the open-file limit to what containerd's and dockerd's service
/// units give (1048576): a container whose spec sets no `RLIMIT_NOFILE`
/// inherits the runtime's, as under runc.
pub fn raise_nofile() {
    let lim = libc::rlimit {
        rlim_cur: 1 << 20,
        rlim_max: 1 << 20,
    };
    // SAFETY: setrlimit with a live struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        log(&format!(
            "cannot raise RLIMIT_NOFILE: {}",
            std::io::Error::last_os_error()
        ));
    }
}

/// Brings the loopback interface up: the pod's containers share the VM's
/// network namespace, and `127.0.0.1` must answer there as it does in any
/// pod.
pub fn loopback_up() {
    if let Err(e) = set_up("lo") {
        log(&format!("cannot bring lo up: {e}"));
    }
}

fn set_up(name: &str) -> std::io::Result<()> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| {
        // No IPv4 address yet is fine; any AF_INET datagram socket will do.
        std::net::UdpSocket::bind("127.0.0.1:0")
    })?;
    // SAFETY: `ifreq` is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `req`, a live ifreq
    // with a NUL-terminated name.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::c_short::try_from(libc::IFF_UP).unwrap_or(1);
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Loads the modules listed in [`MODULE_LOAD_ORDER`]; a module that is
/// already loaded (or built in) is fine.
pub fn load_modules(order: &Path) {
    let Ok(list) = fs::read_to_string(order) else {
        return;
    };
    for path in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let file = match fs::File::open(path) {
            Ok(f) => f,
            Err(e) => {
                log(&format!("open module {path}: {e}"));
                continue;
            }
        };
        let flags = if path.ends_with(".xz") || path.ends_with(".zst") || path.ends_with(".gz") {
            MODULE_INIT_COMPRESSED_FILE
        } else {
            0
        };
        // SAFETY: finit_module reads the module from an open fd; the params
        // string is a static NUL-terminated empty string.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_finit_module,
                file.as_raw_fd(),
                c"".as_ptr(),
                flags,
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            // ENODEV: a TEE guest driver (tdx-guest) on another kind of
            // machine; nothing to drive here.
            if !matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENODEV)) {
                log(&format!("load module {path}: {e}"));
            }
        }
    }
}

/// Ends the guest: powers off when PID 1, otherwise exits.
pub fn power_off(poweroff: bool) {
    if poweroff {
        nix::unistd::sync();
        let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    }
    std::process::exit(0);
}
