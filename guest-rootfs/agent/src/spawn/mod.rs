//! Starting processes in containers: new containers (fresh mount, PID, UTS
//! and IPC namespaces over a root filesystem) and execs joining a running
//! container's namespaces.
//!
//! A process starts in two phases, like an OCI runtime's create/start: the
//! child sets everything up and stops just before `execve`, reporting "ready"
//! ([`spawn_container`], [`spawn_exec`]); [`start`] then lets it exec. Setup
//! errors (a missing executable, a bad working directory) are therefore
//! reported at create time, exec errors at start time.

pub mod child;

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::{pipe2, Pid};
use tokio::sync::watch;

use self::child::{ChildSpec, ChildStdio, MountOp, NsSetup, Report, SymlinkOp};
use crate::error::{Error, Result, SpawnStep};
use crate::reaper::Reaper;

/// Default `$PATH` used to find the executable when the environment has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long a child may take to reach "ready" or to exec.
const REPORT_TIMEOUT: Duration = Duration::from_secs(20);

/// What to run, decoded from the request.
#[derive(Debug, Clone, Default)]
pub struct ProcessSpec {
    /// argv; not empty.
    pub args: Vec<String>,
    /// `KEY=value` strings.
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub cwd: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Allocate a pseudo-terminal.
    pub terminal: bool,
}

/// The agent's ends of a child's standard I/O.
#[derive(Debug)]
pub enum ParentStdio {
    /// Pipes: stdin write end, stdout and stderr read ends.
    Pipes {
        /// Write end of stdin.
        stdin: OwnedFd,
        /// Read end of stdout.
        stdout: OwnedFd,
        /// Read end of stderr.
        stderr: OwnedFd,
    },
    /// Master side of the child's pseudo-terminal.
    Tty {
        /// Master fd.
        master: OwnedFd,
    },
}

/// A child that is set up and waits for [`start`].
#[derive(Debug)]
pub struct Spawned {
    /// Its PID in the agent's PID namespace.
    pub pid: Pid,
    /// Receives the exit status once the reaper collected it.
    pub exit: watch::Receiver<Option<i32>>,
    /// The agent's stdio ends.
    pub stdio: ParentStdio,
    /// Writing one byte here lets the child exec.
    pub start_fd: OwnedFd,
    /// Report pipe: a record on failure, EOF after a successful exec.
    pub report_fd: OwnedFd,
}

fn cstring(field: &'static str, s: impl Into<Vec<u8>>) -> Result<CString> {
    CString::new(s).map_err(|e| Error::nul(field, e))
}

fn cpath(field: &'static str, p: &Path) -> Result<CString> {
    cstring(field, p.as_os_str().as_bytes())
}

fn set_cloexec(fd: &OwnedFd) -> Result<()> {
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map(drop)
        .map_err(|e| Error::sys("set FD_CLOEXEC", e))
}

/// Candidate executable paths for `arg0`, following `$PATH` like execvp.
fn candidates(arg0: &str, env: &[String]) -> Result<Vec<CString>> {
    if arg0.contains('/') {
        return Ok(vec![cstring("process.args", arg0)?]);
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| cstring("process.env", format!("{}/{arg0}", d.trim_end_matches('/'))))
        .collect()
}

/// The mounts every container gets, under `rootfs`.
fn container_mounts(rootfs: &Path) -> Result<(Vec<MountOp>, Vec<SymlinkOp>)> {
    use libc::{MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MS_STRICTATIME};
    let t = |p: &str| cpath("rootfs", &rootfs.join(p));
    let mut mounts = vec![
        MountOp {
            source: c"proc".into(),
            target: t("proc")?,
            fstype: Some(c"proc".into()),
            flags: MS_NOSUID | MS_NODEV | MS_NOEXEC,
            data: None,
            target_is_file: false,
        },
        MountOp {
            source: c"sysfs".into(),
            target: t("sys")?,
            fstype: Some(c"sysfs".into()),
            flags: MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY,
            data: None,
            target_is_file: false,
        },
        MountOp {
            source: c"tmpfs".into(),
            target: t("dev")?,
            fstype: Some(c"tmpfs".into()),
            flags: MS_NOSUID | MS_STRICTATIME,
            data: Some(c"mode=755,size=65536k".into()),
            target_is_file: false,
        },
        // The guest's devpts, not a new instance: terminals are allocated by
        // the agent there, and `tty`/ttyname must resolve them.
        MountOp {
            source: c"/dev/pts".into(),
            target: t("dev/pts")?,
            fstype: None,
            flags: MS_BIND,
            data: None,
            target_is_file: false,
        },
        MountOp {
            source: c"shm".into(),
            target: t("dev/shm")?,
            fstype: Some(c"tmpfs".into()),
            flags: MS_NOSUID | MS_NODEV | MS_NOEXEC,
            data: Some(c"mode=1777,size=65536k".into()),
            target_is_file: false,
        },
    ];
    for dev in ["null", "zero", "full", "random", "urandom", "tty"] {
        mounts.push(MountOp {
            source: cstring("rootfs", format!("/dev/{dev}"))?,
            target: t(&format!("dev/{dev}"))?,
            fstype: None,
            flags: MS_BIND,
            data: None,
            target_is_file: true,
        });
    }
    let links = [
        ("pts/ptmx", "dev/ptmx"),
        ("/proc/self/fd", "dev/fd"),
        ("/proc/self/fd/0", "dev/stdin"),
        ("/proc/self/fd/1", "dev/stdout"),
        ("/proc/self/fd/2", "dev/stderr"),
    ];
    let symlinks = links
        .iter()
        .map(|(to, link)| {
            Ok(SymlinkOp {
                to: cstring("rootfs", *to)?,
                link: t(link)?,
            })
        })
        .collect::<Result<_>>()?;
    Ok((mounts, symlinks))
}

/// Pipes or a pty: (child side, parent side). Child-side fds are closed in the
/// parent once the child has them.
fn make_stdio(terminal: bool) -> Result<(ChildStdio, Vec<OwnedFd>, ParentStdio)> {
    if terminal {
        let pty = nix::pty::openpty(None, None).map_err(|e| Error::sys("openpty", e))?;
        set_cloexec(&pty.master)?;
        set_cloexec(&pty.slave)?;
        let stdio = ChildStdio::Tty {
            slave: pty.slave.as_raw_fd(),
        };
        return Ok((
            stdio,
            vec![pty.slave],
            ParentStdio::Tty { master: pty.master },
        ));
    }
    let p = || pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e));
    let (in_r, in_w) = p()?;
    let (out_r, out_w) = p()?;
    let (err_r, err_w) = p()?;
    let stdio = ChildStdio::Pipes {
        stdin: in_r.as_raw_fd(),
        stdout: out_w.as_raw_fd(),
        stderr: err_w.as_raw_fd(),
    };
    Ok((
        stdio,
        vec![in_r, out_w, err_w],
        ParentStdio::Pipes {
            stdin: in_w,
            stdout: out_r,
            stderr: err_r,
        },
    ))
}

/// Clones the child with `flags` and registers it with the reaper.
fn clone_child(
    reaper: &Reaper,
    flags: libc::c_int,
    spec: &ChildSpec,
) -> Result<(Pid, watch::Receiver<Option<i32>>)> {
    let (argv, envp) = child::exec_arrays(spec);
    let clone_flags = libc::c_ulong::try_from(flags | libc::SIGCHLD).unwrap_or_default();
    // Hold the reaper's table while cloning so the exit of a child that dies
    // at once is matched to its registration.
    let mut table = reaper.lock();
    // SAFETY: clone without CLONE_VM and with a NULL stack behaves like
    // fork(2): the child gets a copy of this address space and continues
    // here with return value 0. The child only runs `child::run`, which makes
    // raw system calls on data prepared before this point and ends in execve
    // or _exit.
    let ret =
        unsafe { libc::syscall(libc::SYS_clone, clone_flags, 0usize, 0usize, 0usize, 0usize) };
    if ret == 0 {
        child::run(spec, &argv, &envp);
    }
    if ret < 0 {
        return Err(Error::sys("clone", Errno::last()));
    }
    let pid = Pid::from_raw(
        i32::try_from(ret).map_err(|_| Error::sys("clone returned a bad pid", Errno::EINVAL))?,
    );
    let rx = table.register(pid);
    Ok((pid, rx))
}

/// Where a child is stuck, from procfs (for the timeout error).
fn stuck_where(pid: Pid) -> String {
    let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    let syscall = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
    let nr = syscall.split_whitespace().next().unwrap_or("?").to_string();
    let stack = std::fs::read_to_string(format!("/proc/{pid}/stack")).unwrap_or_default();
    let stack: Vec<&str> = stack
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap_or(l))
        .take(6)
        .collect();
    format!(
        "child {pid} is blocked in {wchan:?} (syscall {nr}, kernel stack {})",
        stack.join(" < ")
    )
}

/// Reads one report record; `Ok(None)` on EOF.
fn read_report(fd: &OwnedFd, pid: Pid) -> Result<Option<Report>> {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(REPORT_TIMEOUT.as_millis()).unwrap_or(PollTimeout::MAX);
    loop {
        match poll(&mut fds, timeout) {
            Ok(0) => {
                return Err(Error::sys(
                    format!("waiting for the child to report: {}", stuck_where(pid)),
                    Errno::ETIMEDOUT,
                ))
            }
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(Error::sys("poll report pipe", e)),
        }
    }
    let mut buf = [0u8; Report::SIZE];
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(fd.as_raw_fd(), &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(Error::sys("read report pipe", e)),
        }
    }
    if got == 0 {
        return Ok(None);
    }
    if got < Report::SIZE {
        return Err(Error::sys("short report from child", Errno::EIO));
    }
    Ok(Some(Report::decode(buf)))
}

fn report_error(r: Report, arg0: &str) -> Error {
    let errno = Errno::from_raw(r.errno);
    match SpawnStep::from_code(r.step) {
        Some(SpawnStep::Lookup) if errno == Errno::ENOENT => {
            Error::ExecutableNotFound(arg0.to_string())
        }
        Some(step) => Error::Spawn {
            step,
            what: arg0.to_string(),
            errno,
        },
        None => Error::sys(format!("child reported unknown step {}", r.step), errno),
    }
}

fn validate(p: &ProcessSpec) -> Result<()> {
    if p.args.is_empty() || p.args[0].is_empty() {
        return Err(Error::InvalidArgument {
            field: "process.args",
            problem: "is empty; give the program to run".into(),
        });
    }
    if !p.cwd.starts_with('/') {
        return Err(Error::InvalidArgument {
            field: "process.cwd",
            problem: format!("{:?} is not an absolute path", p.cwd),
        });
    }
    if let Some(bad) = p.env.iter().find(|e| !e.contains('=')) {
        return Err(Error::InvalidArgument {
            field: "process.env",
            problem: format!("entry {bad:?} is not KEY=value"),
        });
    }
    Ok(())
}

fn base_spec(
    p: &ProcessSpec,
    ns: NsSetup,
    stdio: ChildStdio,
    report_w: &OwnedFd,
    start_r: &OwnedFd,
) -> Result<ChildSpec> {
    Ok(ChildSpec {
        ns,
        stdio,
        uid: p.uid,
        gid: p.gid,
        groups: p.groups.clone(),
        cwd: cstring("process.cwd", p.cwd.as_str())?,
        candidates: candidates(&p.args[0], &p.env)?,
        argv: p
            .args
            .iter()
            .map(|a| cstring("process.args", a.as_str()))
            .collect::<Result<_>>()?,
        envp: p
            .env
            .iter()
            .map(|e| cstring("process.env", e.as_str()))
            .collect::<Result<_>>()?,
        report_fd: report_w.as_raw_fd(),
        start_fd: start_r.as_raw_fd(),
    })
}

/// The report and start pipes between the agent and one child.
struct Control {
    report_r: OwnedFd,
    report_w: OwnedFd,
    start_r: OwnedFd,
    start_w: OwnedFd,
}

impl Control {
    fn new() -> Result<Self> {
        let (report_r, report_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
        let (start_r, start_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
        Ok(Self {
            report_r,
            report_w,
            start_r,
            start_w,
        })
    }
}

/// After `clone`: closes the child's ends and waits for its ready report.
fn finish_spawn(
    p: &ProcessSpec,
    parent: ParentStdio,
    child_fds: Vec<OwnedFd>,
    ctl: Control,
    cloned: Result<(Pid, watch::Receiver<Option<i32>>)>,
) -> Result<Spawned> {
    // The child holds its own copies now.
    drop(child_fds);
    let Control {
        report_r,
        report_w,
        start_r,
        start_w,
    } = ctl;
    drop(report_w);
    drop(start_r);
    let (pid, exit) = cloned?;
    match read_report(&report_r, pid)? {
        Some(Report { step: 0, .. }) => Ok(Spawned {
            pid,
            exit,
            stdio: parent,
            start_fd: start_w,
            report_fd: report_r,
        }),
        Some(r) => Err(report_error(r, &p.args[0])),
        None => Err(Error::sys("child exited during setup", Errno::ECHILD)),
    }
}

/// Sets up the init process of a new container rooted at `rootfs`.
///
/// Blocking: call from a blocking thread.
pub fn spawn_container(
    reaper: &Reaper,
    rootfs: &Path,
    hostname: Option<&str>,
    readonly: bool,
    p: &ProcessSpec,
    binds: &[(std::path::PathBuf, &str)],
) -> Result<Spawned> {
    validate(p)?;
    if !rootfs.is_dir() {
        return Err(Error::InvalidArgument {
            field: "rootfs",
            problem: format!("{} is not a directory in the guest", rootfs.display()),
        });
    }
    let (mut mounts, symlinks) = container_mounts(rootfs)?;
    for (source, target) in binds {
        // Guest-memory directories bound into the container (secrets); the
        // mount point is made here, its content never reaches the share.
        let at = rootfs.join(target);
        std::fs::create_dir_all(&at).map_err(|e| {
            Error::sys(
                format!("mkdir {}", at.display()),
                Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            )
        })?;
        mounts.push(MountOp {
            source: cpath("secrets", source)?,
            target: cpath("rootfs", &at)?,
            fstype: None,
            flags: libc::MS_BIND,
            data: None,
            target_is_file: false,
        });
    }
    let ns = NsSetup::New {
        rootfs: cpath("rootfs", rootfs)?,
        mounts,
        symlinks,
        readonly,
        hostname: hostname.map(|h| cstring("hostname", h)).transpose()?,
    };
    let (stdio, child_fds, parent) = make_stdio(p.terminal)?;
    let ctl = Control::new()?;
    let spec = base_spec(p, ns, stdio, &ctl.report_w, &ctl.start_r)?;
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    let cloned = clone_child(reaper, flags, &spec);
    finish_spawn(p, parent, child_fds, ctl, cloned)
}

/// Sets up a process that joins the namespaces and root of the container
/// whose init is `init`.
///
/// Blocking: call from a blocking thread.
pub fn spawn_exec(reaper: &Reaper, init: Pid, p: &ProcessSpec) -> Result<Spawned> {
    validate(p)?;
    let open = |what: &str| -> Result<OwnedFd> {
        let path = format!("/proc/{init}/{what}");
        let flags = if what == "root" {
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC
        } else {
            OFlag::O_RDONLY | OFlag::O_CLOEXEC
        };
        nix::fcntl::open(path.as_str(), flags, nix::sys::stat::Mode::empty())
            .map(|fd| {
                // SAFETY: `open` just returned this fd and nothing else owns it.
                unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
            })
            .map_err(|e| Error::sys(format!("open {path}"), e))
    };
    let (mnt, uts, ipc, pidns, root) = (
        open("ns/mnt")?,
        open("ns/uts")?,
        open("ns/ipc")?,
        open("ns/pid")?,
        open("root")?,
    );
    let ns = NsSetup::Join {
        mnt: mnt.as_raw_fd(),
        uts: uts.as_raw_fd(),
        ipc: ipc.as_raw_fd(),
        root: root.as_raw_fd(),
    };
    let (stdio, child_fds, parent) = make_stdio(p.terminal)?;
    let ctl = Control::new()?;
    let spec = base_spec(p, ns, stdio, &ctl.report_w, &ctl.start_r)?;
    // Joining a PID namespace only affects the children of the calling
    // thread, so clone from a short-lived thread that joined it.
    let cloned = std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(pidns.as_fd(), nix::sched::CloneFlags::CLONE_NEWPID)
                .map_err(|e| Error::sys("join the container PID namespace", e))?;
            clone_child(reaper, 0, &spec)
        })
        .join()
        .unwrap_or_else(|_| Err(Error::sys("spawn thread panicked", Errno::EIO)))
    });
    drop((mnt, uts, ipc, pidns, root));
    finish_spawn(p, parent, child_fds, ctl, cloned)
}

/// Lets a ready child exec and waits until it did.
///
/// Blocking: call from a blocking thread.
pub fn start(start_fd: OwnedFd, report_fd: &OwnedFd, pid: Pid, arg0: &str) -> Result<()> {
    let file = File::from(start_fd);
    nix::unistd::write(&file, &[1u8]).map_err(|e| Error::sys("signal the child to start", e))?;
    drop(file);
    match read_report(report_fd, pid)? {
        None => Ok(()),
        Some(r) => Err(report_error(r, arg0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_path() {
        let env = vec!["PATH=/bin:/usr/bin/".to_string()];
        let c = candidates("sh", &env).unwrap();
        assert_eq!(
            c,
            vec![
                CString::new("/bin/sh").unwrap(),
                CString::new("/usr/bin/sh").unwrap()
            ]
        );
        let c = candidates("./x", &env).unwrap();
        assert_eq!(c, vec![CString::new("./x").unwrap()]);
        assert_eq!(candidates("ls", &[]).unwrap().len(), 6);
    }

    #[test]
    fn validation_names_the_field() {
        let mut p = ProcessSpec {
            cwd: "/".into(),
            ..Default::default()
        };
        assert!(validate(&p)
            .unwrap_err()
            .to_string()
            .contains("process.args"));
        p.args = vec!["sh".into()];
        p.cwd = "rel".into();
        assert!(validate(&p)
            .unwrap_err()
            .to_string()
            .contains("process.cwd"));
        p.cwd = "/".into();
        p.env = vec!["NOEQUALS".into()];
        assert!(validate(&p)
            .unwrap_err()
            .to_string()
            .contains("process.env"));
    }
}
