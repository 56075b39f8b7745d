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
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::{pipe2, Pid};
use tokio::sync::watch;

use self::child::{
    ChildSecurity, ChildSpec, ChildStdio, MountOp, NodeOp, NsSetup, Report, SymlinkOp,
};
use crate::error::{Error, Result, SpawnStep};
use crate::oci::{ContainerSpec, MountKind, Security, SpecMount};
use crate::reaper::Reaper;

/// Default `$PATH` used to find the executable when the environment has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long a child may take to reach "ready" or to exec.
const REPORT_TIMEOUT: Duration = Duration::from_secs(20);

pub use crate::oci::ProcessSpec;

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
    /// The child allocates its terminal in its container's devpts and
    /// sends the master here (replaced by `Tty` once it arrived).
    TtyFromChild {
        /// The agent's end of the socket pair.
        sock: OwnedFd,
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

fn io_err(op: String, e: &std::io::Error) -> Error {
    Error::sys(op, Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
}

/// Resolves `path` inside `root` as if `root` were `/`: symlinks in the
/// container image (absolute or relative) are followed without leaving
/// `root`; components that do not exist yet are taken as they are.
pub fn resolve_in_root(root: &Path, path: &str) -> PathBuf {
    let mut pending: Vec<std::ffi::OsString> = Path::new(path)
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut current = root.to_path_buf();
    let mut links = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            if current != root {
                current.pop();
            }
            continue;
        }
        let next = current.join(&c);
        let target = match std::fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() && links < 40 => std::fs::read_link(&next).ok(),
            _ => None,
        };
        let Some(target) = target else {
            current = next;
            continue;
        };
        links += 1;
        if target.is_absolute() {
            current = root.to_path_buf();
        }
        for comp in target.components().rev() {
            match comp {
                Component::Normal(n) => pending.push(n.to_os_string()),
                Component::ParentDir => pending.push("..".into()),
                _ => {}
            }
        }
    }
    current
}

/// The directories between `root` (excluded) and `target` (excluded).
fn parents_below(root: &Path, target: &Path) -> Result<Vec<CString>> {
    let mut out = Vec::new();
    let mut p = target.parent();
    while let Some(dir) = p {
        if dir == root || !dir.starts_with(root) {
            break;
        }
        out.push(cpath("mounts.destination", dir)?);
        p = dir.parent();
    }
    out.reverse();
    Ok(out)
}

/// Resolves a bind source inside the share, refusing anything (a symlink
/// included) that leads out of it.
fn share_source(shared: &Path, rel: &str) -> Result<PathBuf> {
    let base = shared
        .canonicalize()
        .map_err(|e| io_err(format!("resolve {}", shared.display()), &e))?;
    let p = base
        .join(rel)
        .canonicalize()
        .map_err(|e| Error::InvalidArgument {
            field: "mounts.source",
            problem: format!("{rel:?} does not exist in the shared filesystem: {e}"),
        })?;
    if !p.starts_with(&base) {
        return Err(Error::InvalidArgument {
            field: "mounts.source",
            problem: format!("{rel:?} leads out of the shared filesystem"),
        });
    }
    Ok(p)
}

/// One spec mount as a mount operation under `rootfs`.
fn mount_op(rootfs: &Path, shared: &Path, pod_shm: &Path, m: &SpecMount) -> Result<MountOp> {
    let target = resolve_in_root(rootfs, &m.destination);
    let parents = parents_below(rootfs, &target)?;
    let target_c = cpath("mounts.destination", &target)?;
    let data = (!m.data.is_empty())
        .then(|| cstring("mounts.options", m.data.as_str()))
        .transpose()?;
    let mut op = match &m.kind {
        MountKind::Bind { source, recursive } => {
            let src = share_source(shared, source)?;
            let flags = libc::MS_BIND | if *recursive { libc::MS_REC } else { 0 };
            let mut op = MountOp::simple(
                cpath("mounts.source", &src)?,
                target_c,
                None,
                flags,
                None,
                !src.is_dir(),
            );
            op.remount = (m.flags != 0).then_some(m.flags);
            op
        }
        MountKind::PodShm => {
            let mut op = MountOp::simple(
                cpath("mounts.source", pod_shm)?,
                target_c,
                None,
                libc::MS_BIND,
                None,
                false,
            );
            op.remount = (m.flags != 0).then_some(m.flags);
            op
        }
        MountKind::Devpts => MountOp::simple(
            c"devpts".into(),
            target_c,
            Some(c"devpts".into()),
            m.flags,
            data,
            false,
        ),
        MountKind::Fs { fstype, source } => MountOp::simple(
            cstring("mounts.source", source.as_str())?,
            target_c,
            Some(cstring("mounts.type", fstype.as_str())?),
            m.flags,
            data,
            false,
        ),
    };
    op.parents = parents;
    op.propagation = m.propagation;
    Ok(op)
}

/// The container's mounts under `rootfs`: the spec's, in order, then the
/// default device nodes every OCI runtime provides (unless `linux.devices`
/// names the same path).
fn container_mounts(
    place: &Placement,
    spec_mounts: &[SpecMount],
    nodes: &[crate::devices::Node],
) -> Result<(Vec<MountOp>, Vec<SymlinkOp>)> {
    let rootfs = place.rootfs;
    let t = |p: &str| cpath("rootfs", &rootfs.join(p));
    let mut mounts = spec_mounts
        .iter()
        .map(|m| mount_op(rootfs, place.shared, place.pod_shm, m))
        .collect::<Result<Vec<_>>>()?;
    for dev in ["null", "zero", "full", "random", "urandom", "tty"] {
        if nodes.iter().any(|n| n.path == format!("/dev/{dev}")) {
            continue;
        }
        let mut op = MountOp::simple(
            cstring("rootfs", format!("/dev/{dev}"))?,
            t(&format!("dev/{dev}"))?,
            None,
            libc::MS_BIND,
            None,
            true,
        );
        op.parents = vec![t("dev")?];
        mounts.push(op);
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

/// The child's confinement, from the decoded spec.
fn child_security(s: &Security) -> Result<ChildSecurity> {
    let last = u32::from(crate::oci::last_cap()).min(63);
    let known: u64 = if last >= 63 {
        u64::MAX
    } else {
        (1u64 << (last + 1)) - 1
    };
    let caps = crate::oci::CapSets {
        bounding: s.caps.bounding & known,
        effective: s.caps.effective & known,
        permitted: s.caps.permitted & known,
        inheritable: s.caps.inheritable & known,
        ambient: s.caps.ambient & known,
    };
    let split = |m: u64| ((m & 0xffff_ffff) as u32, (m >> 32) as u32);
    let (e0, e1) = split(caps.effective);
    let (p0, p1) = split(caps.permitted);
    let (i0, i1) = split(caps.inheritable);
    let seccomp = match &s.seccomp {
        None => None,
        Some(f) => {
            if f.program.len() > usize::from(u16::MAX) {
                return Err(Error::InvalidArgument {
                    field: "linux.seccomp",
                    problem: format!(
                        "compiles to {} instructions; the kernel takes at most 4096",
                        f.program.len()
                    ),
                });
            }
            Some((f.program.clone(), f.flags))
        }
    };
    Ok(ChildSecurity {
        bounding_drop: (0..=libc::c_ulong::from(last))
            .filter(|c| caps.bounding & (1u64 << c) == 0)
            .collect(),
        caps: [[e0, p0, i0], [e1, p1, i1]],
        ambient: (0..=libc::c_ulong::from(last))
            .filter(|c| caps.ambient & (1u64 << c) != 0)
            .collect(),
        no_new_privs: s.no_new_privileges,
        rlimits: s
            .rlimits
            .iter()
            .map(|(r, soft, hard)| {
                (
                    *r,
                    libc::rlimit {
                        rlim_cur: *soft,
                        rlim_max: *hard,
                    },
                )
            })
            .collect(),
        oom_score_adj: s
            .oom_score_adj
            .map(|v| cstring("process.oomScoreAdj", v.to_string()))
            .transpose()?,
        umask: s.umask.map(|m| m as libc::mode_t),
        seccomp,
    })
}

/// Pipes or a pty: (child side, parent side). Child-side fds are closed in the
/// parent once the child has them. With `in_container`, the child allocates
/// the pty in its container's devpts and passes the master back.
fn make_stdio(
    terminal: bool,
    in_container: bool,
) -> Result<(ChildStdio, Vec<OwnedFd>, ParentStdio)> {
    if terminal && in_container {
        let (parent, child) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::SeqPacket,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| Error::sys("socketpair", e))?;
        return Ok((
            ChildStdio::TtyInContainer {
                sock: child.as_raw_fd(),
            },
            vec![child],
            ParentStdio::TtyFromChild { sock: parent },
        ));
    }
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

/// `struct clone_args` of clone3(2), up to `cgroup` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP`.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Clones the child with `flags` (into the cgroup whose directory is open
/// as `cgroup`, when given) and registers it with the reaper.
fn clone_child(
    reaper: &Reaper,
    flags: libc::c_int,
    spec: &ChildSpec,
    cgroup: Option<std::os::fd::RawFd>,
) -> Result<(Pid, watch::Receiver<Option<i32>>)> {
    let (argv, envp) = child::exec_arrays(spec);
    let mut args = CloneArgs {
        flags: u64::from(flags.unsigned_abs()),
        exit_signal: u64::from(libc::SIGCHLD.unsigned_abs()),
        ..CloneArgs::default()
    };
    if let Some(fd) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = u64::from(fd.unsigned_abs());
    }
    // Hold the reaper's table while cloning so the exit of a child that dies
    // at once is matched to its registration.
    let mut table = reaper.lock();
    // SAFETY: clone3 without CLONE_VM and with no stack behaves like
    // fork(2): the child gets a copy of this address space and continues
    // here with return value 0. The child only runs `child::run`, which makes
    // raw system calls on data prepared before this point and ends in execve
    // or _exit. `args` is a live clone_args of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if ret == 0 {
        child::run(spec, &argv, &envp);
    }
    if ret < 0 {
        return Err(Error::sys("clone3", Errno::last()));
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

fn base_spec(p: &ProcessSpec, ns: NsSetup, stdio: ChildStdio, ctl: &Control) -> Result<ChildSpec> {
    let (report_w, start_r) = (&ctl.report_w, &ctl.start_r);
    Ok(ChildSpec {
        parent_ends: [ctl.start_w.as_raw_fd(), ctl.report_r.as_raw_fd()],
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
        security: child_security(&p.security)?,
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

/// Receives the pty master a child sent with `SCM_RIGHTS`.
fn receive_fd(sock: &OwnedFd) -> Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut cmsg = nix::cmsg_space!(std::os::fd::RawFd);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(|e| Error::sys("receive the container's terminal", e))?;
    let fd = msg
        .cmsgs()
        .map_err(|e| Error::sys("receive the container's terminal", e))?
        .find_map(|c| match c {
            ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        })
        .ok_or_else(|| Error::sys("the child sent no terminal", Errno::EBADMSG))?;
    // SAFETY: the kernel installed this fd for us with SCM_RIGHTS; nothing
    // else owns it.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
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
            stdio: match parent {
                // Sent before the ready report.
                ParentStdio::TtyFromChild { sock } => ParentStdio::Tty {
                    master: receive_fd(&sock)?,
                },
                other => other,
            },
            start_fd: start_w,
            report_fd: report_r,
        }),
        Some(r) => Err(report_error(r, &p.args[0])),
        None => Err(Error::sys("child exited during setup", Errno::ECHILD)),
    }
}

/// Where a new container goes in the guest.
#[derive(Debug)]
pub struct Placement<'a> {
    /// Its root filesystem.
    pub rootfs: &'a Path,
    /// The share, where bind sources are resolved.
    pub shared: &'a Path,
    /// The pod's shared-memory tmpfs (for a [`MountKind::PodShm`] mount).
    pub pod_shm: &'a Path,
    /// Guest directories bound in read-only (the pod's secrets and
    /// models), with their paths in the container.
    pub binds: &'a [(PathBuf, String)],
    /// Its cgroup's directory fd, for `CLONE_INTO_CGROUP`.
    pub cgroup: Option<std::os::fd::RawFd>,
    /// Namespaces to join (`CLONE_NEWIPC`, `CLONE_NEWUTS`, `CLONE_NEWPID`)
    /// and the init process of the container that has them.
    pub joins: &'a [(libc::c_int, Pid)],
}

/// `pidfd_open(2)`.
fn pidfd_open(pid: Pid) -> Result<OwnedFd> {
    // SAFETY: a plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(Error::sys(
            format!("open process {pid} of the container whose namespaces are shared"),
            Errno::last(),
        ));
    }
    let fd = i32::try_from(fd).map_err(|_| Error::sys("pidfd_open", Errno::EBADF))?;
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Sets up the init process of a new container as `place` says.
///
/// Blocking: call from a blocking thread.
pub fn spawn_container(reaper: &Reaper, c: &ContainerSpec, place: &Placement) -> Result<Spawned> {
    let (rootfs, cgroup) = (place.rootfs, place.cgroup);
    let p = &c.process;
    validate(p)?;
    if !rootfs.is_dir() {
        return Err(Error::InvalidArgument {
            field: "rootfs",
            problem: format!("{} is not a directory in the guest", rootfs.display()),
        });
    }
    let spec_mounts: Vec<SpecMount> = c
        .mounts
        .iter()
        .filter(|m| {
            let cg = matches!(&m.kind, MountKind::Fs { fstype, .. } if fstype == "cgroup2");
            if cg && cgroup.is_none() {
                crate::log(&format!(
                    "{}: cgroup mount skipped, the guest has no cgroup v2",
                    m.destination
                ));
            }
            !cg || cgroup.is_some()
        })
        .cloned()
        .collect();
    let (mut mounts, symlinks) = container_mounts(place, &spec_mounts, &c.devices)?;
    let nodes = c
        .devices
        .iter()
        .map(|n| {
            let at = resolve_in_root(rootfs, &n.path);
            Ok(NodeOp {
                parents: parents_below(rootfs, &at)?,
                path: cpath("linux.devices", &at)?,
                mode: n.mode,
                dev: n.dev,
                uid: n.uid,
                gid: n.gid,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    // One pidfd per container whose namespaces are joined.
    let mut share_flags = 0;
    let mut share_fd = None;
    let mut pid_fd = None;
    for (flag, pid) in place.joins {
        let fd = pidfd_open(*pid)?;
        if *flag == libc::CLONE_NEWPID {
            pid_fd = Some(fd);
        } else {
            share_flags |= flag;
            share_fd = Some(fd);
        }
    }
    if place
        .joins
        .iter()
        .filter(|(f, _)| *f != libc::CLONE_NEWPID)
        .map(|(_, p)| p)
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        > 1
    {
        return Err(Error::InvalidArgument {
            field: "linux.namespaces",
            problem: "joins IPC and UTS namespaces of two different containers; the pod shares one"
                .into(),
        });
    }
    let uts_joined = share_flags & libc::CLONE_NEWUTS != 0;
    for (source, target) in place.binds {
        // Guest-memory directories bound into the container (secrets,
        // models); the mount point is made here, its content never reaches
        // the share.
        let at = resolve_in_root(rootfs, target);
        let mut op = MountOp::simple(
            cpath("secrets", source)?,
            cpath("rootfs", &at)?,
            None,
            libc::MS_BIND,
            None,
            false,
        );
        op.parents = parents_below(rootfs, &at)?;
        op.remount = Some(libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC);
        mounts.push(op);
    }
    let in_root = |field: &'static str, v: &[String]| -> Result<Vec<CString>> {
        v.iter().map(|p| cstring(field, p.as_str())).collect()
    };
    let ns = NsSetup::New {
        rootfs: cpath("rootfs", rootfs)?,
        mounts,
        symlinks,
        nodes,
        share: share_fd.as_ref().map(|fd| (fd.as_raw_fd(), share_flags)),
        readonly: c.readonly_root,
        // A joined UTS namespace keeps the pod's hostname.
        hostname: c
            .hostname
            .as_deref()
            .filter(|_| !uts_joined)
            .map(|h| cstring("hostname", h))
            .transpose()?,
        sysctls: c
            .sysctls
            .iter()
            .map(|(k, v)| {
                Ok((
                    cstring("linux.sysctl", k.as_str())?,
                    cstring("linux.sysctl", v.as_str())?,
                ))
            })
            .collect::<Result<_>>()?,
        masked: in_root("linux.maskedPaths", &c.masked_paths)?,
        readonly_paths: in_root("linux.readonlyPaths", &c.readonly_paths)?,
    };
    let (stdio, child_fds, parent) = make_stdio(p.terminal, c.own_devpts)?;
    let ctl = Control::new()?;
    let spec = base_spec(p, ns, stdio, &ctl)?;
    let mut flags =
        (libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC)
            & !share_flags;
    if cgroup.is_some() {
        // Rooted at the container's cgroup: a cgroup mount inside shows
        // only the container's own.
        flags |= libc::CLONE_NEWCGROUP;
    }
    let cloned = match &pid_fd {
        None => clone_child(reaper, flags, &spec, cgroup),
        // Joining a PID namespace only affects the children of the calling
        // thread, so clone from a short-lived thread that joined it.
        Some(fd) => std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWPID)
                    .map_err(|e| Error::sys("join the shared PID namespace", e))?;
                clone_child(reaper, flags & !libc::CLONE_NEWPID, &spec, cgroup)
            })
            .join()
            .unwrap_or_else(|_| Err(Error::sys("spawn thread panicked", Errno::EIO)))
        }),
    };
    drop((share_fd, pid_fd));
    finish_spawn(p, parent, child_fds, ctl, cloned)
}

/// Sets up a process that joins the namespaces and root of the container
/// whose init is `init`.
///
/// Blocking: call from a blocking thread.
pub fn spawn_exec(
    reaper: &Reaper,
    init: Pid,
    p: &ProcessSpec,
    cgroup: Option<std::os::fd::RawFd>,
    own_devpts: bool,
) -> Result<Spawned> {
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
    let cgns = cgroup.map(|_| open("ns/cgroup")).transpose()?;
    let ns = NsSetup::Join {
        mnt: mnt.as_raw_fd(),
        uts: uts.as_raw_fd(),
        ipc: ipc.as_raw_fd(),
        cgroup: cgns.as_ref().map(|f| f.as_raw_fd()),
        root: root.as_raw_fd(),
    };
    let (stdio, child_fds, parent) = make_stdio(p.terminal, own_devpts)?;
    let ctl = Control::new()?;
    let spec = base_spec(p, ns, stdio, &ctl)?;
    // Joining a PID namespace only affects the children of the calling
    // thread, so clone from a short-lived thread that joined it.
    let cloned = std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(pidns.as_fd(), nix::sched::CloneFlags::CLONE_NEWPID)
                .map_err(|e| Error::sys("join the container PID namespace", e))?;
            clone_child(reaper, 0, &spec, cgroup)
        })
        .join()
        .unwrap_or_else(|_| Err(Error::sys("spawn thread panicked", Errno::EIO)))
    });
    drop((mnt, uts, ipc, pidns, root, cgns));
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
    fn image_symlinks_resolve_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("run/systemd")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/run/systemd/resolv.conf", root.join("etc/resolv.conf"))
            .unwrap();
        std::os::unix::fs::symlink("../../../../..", root.join("etc/up")).unwrap();
        std::os::unix::fs::symlink("/", root.join("abs")).unwrap();
        assert_eq!(
            resolve_in_root(root, "/etc/resolv.conf"),
            root.join("run/systemd/resolv.conf")
        );
        assert_eq!(resolve_in_root(root, "/etc/up/x"), root.join("x"));
        assert_eq!(resolve_in_root(root, "/abs/etc/../../y"), root.join("y"));
        assert_eq!(resolve_in_root(root, "/new/dir"), root.join("new/dir"));
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert!(
            resolve_in_root(root, "/loop/z").starts_with(root),
            "link loops stop inside"
        );
        assert_eq!(
            parents_below(root, &root.join("a/b/c")).unwrap(),
            vec![
                cpath("t", &root.join("a")).unwrap(),
                cpath("t", &root.join("a/b")).unwrap()
            ]
        );
    }

    #[test]
    fn bind_sources_stay_in_the_share() {
        let d = tempfile::tempdir().unwrap();
        let shared = d.path().join("shared");
        std::fs::create_dir_all(shared.join("c/mounts/0")).unwrap();
        std::os::unix::fs::symlink("/etc", shared.join("c/mounts/1")).unwrap();
        assert!(share_source(&shared, "c/mounts/0").is_ok());
        let e = share_source(&shared, "c/mounts/1").unwrap_err().to_string();
        assert!(e.contains("leads out of the shared filesystem"), "{e}");
        let e = share_source(&shared, "c/mounts/9").unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
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
