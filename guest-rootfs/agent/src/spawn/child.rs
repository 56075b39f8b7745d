//! The child side of process creation: everything between `clone(2)` and
//! `execve(2)`.
//!
//! This code runs in a copy of a multi-threaded process, so it must not
//! allocate, lock or log: every path and argument is prepared as a
//! [`ChildSpec`] before `clone`, and only raw system calls run here. Failures
//! are reported to the parent as a fixed-size record on the report pipe (see
//! [`Report`]); a successful `execve` closes that pipe (it is `O_CLOEXEC`).

use std::ffi::{CStr, CString};
use std::os::fd::RawFd;
use std::ptr;

use libc::{c_char, c_int, c_ulong, gid_t, uid_t};

use crate::error::SpawnStep;

/// One mount performed inside the container's new mount namespace.
#[derive(Debug)]
pub struct MountOp {
    /// Mount source (device, or the path to bind).
    pub source: CString,
    /// Absolute target in the agent's view (under the container rootfs).
    pub target: CString,
    /// File system type; `None` for bind mounts.
    pub fstype: Option<CString>,
    /// `MS_*` flags.
    pub flags: c_ulong,
    /// File-system specific data.
    pub data: Option<CString>,
    /// The target is a file (for binding device nodes), not a directory.
    pub target_is_file: bool,
    /// Directories to create first, outermost first (the target's missing
    /// parents).
    pub parents: Vec<CString>,
    /// Flags of a bind remount that applies `ro`, `nosuid`, ... to a bind.
    pub remount: Option<c_ulong>,
    /// Propagation to set afterwards (`MS_PRIVATE`, ...), or 0.
    pub propagation: c_ulong,
}

impl MountOp {
    /// A mount with no parents to create, remount or propagation.
    pub fn simple(
        source: CString,
        target: CString,
        fstype: Option<CString>,
        flags: c_ulong,
        data: Option<CString>,
        target_is_file: bool,
    ) -> Self {
        Self {
            source,
            target,
            fstype,
            flags,
            data,
            target_is_file,
            parents: Vec::new(),
            remount: None,
            propagation: 0,
        }
    }
}

/// Process confinement, prepared before `clone`.
#[derive(Debug, Default)]
pub struct ChildSecurity {
    /// Capabilities to drop from the bounding set.
    pub bounding_drop: Vec<c_ulong>,
    /// `capset` data: effective, permitted, inheritable for caps 0-31 and
    /// 32-63.
    pub caps: [[u32; 3]; 2],
    /// Capabilities to raise in the ambient set.
    pub ambient: Vec<c_ulong>,
    /// Set `PR_SET_NO_NEW_PRIVS`.
    pub no_new_privs: bool,
    /// `setrlimit` calls.
    pub rlimits: Vec<(u32, libc::rlimit)>,
    /// Value for `/proc/self/oom_score_adj`.
    pub oom_score_adj: Option<CString>,
    /// `umask`.
    pub umask: Option<libc::mode_t>,
    /// Seccomp program and flags.
    pub seccomp: Option<(Vec<libc::sock_filter>, c_ulong)>,
}

/// A symlink created in the container's `/dev`.
#[derive(Debug)]
pub struct SymlinkOp {
    /// What the link points at.
    pub to: CString,
    /// Absolute path of the link in the agent's view.
    pub link: CString,
}

/// A device node created in the container's `/dev` (`linux.devices`).
#[derive(Debug)]
pub struct NodeOp {
    /// Absolute path in the agent's view (under the container rootfs).
    pub path: CString,
    /// Directories to create first, outermost first.
    pub parents: Vec<CString>,
    /// File type and permission bits.
    pub mode: libc::mode_t,
    /// Device number.
    pub dev: libc::dev_t,
    /// Owner.
    pub uid: uid_t,
    /// Group.
    pub gid: gid_t,
}

/// How the child gets its namespaces and root.
#[derive(Debug)]
pub enum NsSetup {
    /// New mount/UTS/IPC (and PID, through the clone flags) namespaces with
    /// `rootfs` as the root.
    New {
        /// Container root, in the agent's view.
        rootfs: CString,
        /// Mounts under the new root.
        mounts: Vec<MountOp>,
        /// Symlinks under the new root.
        symlinks: Vec<SymlinkOp>,
        /// Device nodes under the new root.
        nodes: Vec<NodeOp>,
        /// A pidfd of another container's init and the namespaces
        /// (`CLONE_NEWIPC`, `CLONE_NEWUTS`) to join from it first.
        share: Option<(RawFd, c_int)>,
        /// Remount the root read-only at the end.
        readonly: bool,
        /// Hostname of the new UTS namespace.
        hostname: Option<CString>,
        /// Sysctl files (under /proc/sys, container view) and values.
        sysctls: Vec<(CString, CString)>,
        /// Paths to hide (container view).
        masked: Vec<CString>,
        /// Paths to make read-only (container view).
        readonly_paths: Vec<CString>,
    },
    /// Join a running container's namespaces (PID is joined by the cloning
    /// thread) and chroot into its root.
    Join {
        /// `/proc/<init>/ns/mnt`.
        mnt: RawFd,
        /// `/proc/<init>/ns/uts`.
        uts: RawFd,
        /// `/proc/<init>/ns/ipc`.
        ipc: RawFd,
        /// `/proc/<init>/ns/cgroup`, when the container has a cgroup.
        cgroup: Option<RawFd>,
        /// `/proc/<init>/root`, opened as a directory.
        root: RawFd,
    },
}

/// Standard I/O of the child.
#[derive(Debug, Clone, Copy)]
pub enum ChildStdio {
    /// Three pipe ends.
    Pipes {
        /// Read end for stdin.
        stdin: RawFd,
        /// Write end for stdout.
        stdout: RawFd,
        /// Write end for stderr.
        stderr: RawFd,
    },
    /// The slave side of a pseudo-terminal, which becomes the controlling
    /// terminal.
    Tty {
        /// Slave fd.
        slave: RawFd,
    },
    /// A pseudo-terminal the child allocates from the container's
    /// `/dev/ptmx` once it is in the container's root; the master goes to
    /// the agent over `sock`.
    TtyInContainer {
        /// The child's end of a unix socket pair.
        sock: RawFd,
    },
}

/// Everything the child needs, prepared before `clone`.
#[derive(Debug)]
pub struct ChildSpec {
    /// Namespace and root setup.
    pub ns: NsSetup,
    /// Standard I/O.
    pub stdio: ChildStdio,
    /// User id.
    pub uid: uid_t,
    /// Group id.
    pub gid: gid_t,
    /// Supplementary groups.
    pub groups: Vec<gid_t>,
    /// Working directory inside the container.
    pub cwd: CString,
    /// Candidate paths of the executable, tried in order.
    pub candidates: Vec<CString>,
    /// argv strings (kept alive for `argv_ptrs`).
    pub argv: Vec<CString>,
    /// envp strings (kept alive for `envp_ptrs`).
    pub envp: Vec<CString>,
    /// Capabilities, rlimits, seccomp.
    pub security: ChildSecurity,
    /// The agent's ends of this child's start and report pipes, closed
    /// first thing in the child: holding its own start pipe's write end, a
    /// child whose agent died would wait for a start forever.
    pub parent_ends: [RawFd; 2],
    /// Write end of the report pipe.
    pub report_fd: RawFd,
    /// Read end of the start pipe.
    pub start_fd: RawFd,
}

/// A record on the report pipe: `step` 0 means "ready, waiting for start".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// [`SpawnStep::code`] of the failed step, or 0.
    pub step: u32,
    /// errno of the failure.
    pub errno: i32,
}

impl Report {
    /// Size on the wire.
    pub const SIZE: usize = 8;

    /// Decodes a record.
    pub fn decode(buf: [u8; Self::SIZE]) -> Self {
        let [a, b, c, d, e, f, g, h] = buf;
        Self {
            step: u32::from_le_bytes([a, b, c, d]),
            errno: i32::from_le_bytes([e, f, g, h]),
        }
    }

    fn encode(self) -> [u8; Self::SIZE] {
        let s = self.step.to_le_bytes();
        let e = self.errno.to_le_bytes();
        [s[0], s[1], s[2], s[3], e[0], e[1], e[2], e[3]]
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Writes a report and, for failures, exits the child.
fn report(fd: RawFd, step: Option<SpawnStep>, err: i32) {
    let rec = Report {
        step: step.map_or(0, SpawnStep::code),
        errno: err,
    }
    .encode();
    // SAFETY: `rec` is a valid buffer of `rec.len()` bytes; a short or failed
    // write only loses the diagnostic, the parent then sees EOF.
    unsafe { libc::write(fd, rec.as_ptr().cast(), rec.len()) };
}

fn fail(spec: &ChildSpec, step: SpawnStep) -> ! {
    let e = errno();
    report(spec.report_fd, Some(step), e);
    // SAFETY: `_exit` never returns and runs no atexit handlers or
    // destructors, which is what a failed child of a threaded process needs.
    unsafe { libc::_exit(127) }
}

/// Runs `op`; on -1, reports `step` and exits.
macro_rules! check {
    ($spec:expr, $step:expr, $call:expr) => {
        if $call == -1 {
            fail($spec, $step);
        }
    };
}

fn null_terminated(v: &[CString]) -> Vec<*const c_char> {
    v.iter().map(|s| s.as_ptr()).chain([ptr::null()]).collect()
}

/// Creates `target` as a directory or empty file, ignoring "exists".
///
/// # Safety
/// `target` must be a valid C string.
unsafe fn make_target(target: &CString, is_file: bool) -> c_int {
    // SAFETY: `target` is a valid NUL-terminated path (caller's contract).
    let rc = unsafe {
        if is_file {
            let fd = libc::open(
                target.as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                0o644,
            );
            if fd >= 0 {
                libc::close(fd);
                0
            } else {
                -1
            }
        } else {
            libc::mkdir(target.as_ptr(), 0o755)
        }
    };
    if rc == -1 && errno() == libc::EEXIST {
        0
    } else {
        rc
    }
}

/// Sends `fd` over the unix socket `sock` (`SCM_RIGHTS`), with buffers on
/// the stack.
///
/// # Safety
/// Both must be open fds of this process.
unsafe fn send_fd(sock: RawFd, fd: RawFd) -> libc::ssize_t {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // Room for one cmsghdr and one int, 8-byte aligned.
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data; the pointers set below point at live
    // stack buffers, and CMSG_SPACE(4) (24) fits in `control` (32 bytes).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(4) as usize;
        ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<c_int>(), fd);
        libc::sendmsg(sock, &msg, 0)
    }
}

/// Allocates the terminal from the container's `/dev/ptmx` (its own devpts
/// instance), sends the master to the agent and returns the slave.
fn container_tty(spec: &ChildSpec, sock: RawFd) -> RawFd {
    let step = SpawnStep::Stdio;
    // SAFETY: raw syscalls on a C string literal and fds of this child.
    unsafe {
        let master = libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        check!(spec, step, master);
        let unlock: c_int = 0;
        check!(
            spec,
            step,
            libc::ioctl(master, libc::TIOCSPTLCK, &unlock as *const c_int)
        );
        let slave = libc::ioctl(
            master,
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        check!(spec, step, slave);
        if send_fd(sock, master) == -1 {
            fail(spec, step);
        }
        libc::close(master);
        libc::close(sock);
        slave
    }
}

fn setup_stdio(spec: &ChildSpec) {
    // SAFETY: plain syscalls on fds owned by this (child) process.
    unsafe {
        check!(spec, SpawnStep::Stdio, libc::setsid());
        let stdio = match spec.stdio {
            ChildStdio::TtyInContainer { sock } => ChildStdio::Tty {
                slave: container_tty(spec, sock),
            },
            other => other,
        };
        match stdio {
            ChildStdio::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                check!(spec, SpawnStep::Stdio, libc::dup2(stdin, 0));
                check!(spec, SpawnStep::Stdio, libc::dup2(stdout, 1));
                check!(spec, SpawnStep::Stdio, libc::dup2(stderr, 2));
            }
            ChildStdio::Tty { slave } => {
                check!(
                    spec,
                    SpawnStep::Stdio,
                    libc::ioctl(slave, libc::TIOCSCTTY, 0)
                );
                check!(spec, SpawnStep::Stdio, libc::dup2(slave, 0));
                check!(spec, SpawnStep::Stdio, libc::dup2(slave, 1));
                check!(spec, SpawnStep::Stdio, libc::dup2(slave, 2));
            }
            ChildStdio::TtyInContainer { .. } => {}
        }
    }
}

/// Creates the `linux.devices` nodes, replacing whatever is at their paths.
fn make_nodes(spec: &ChildSpec, nodes: &[NodeOp]) {
    let step = SpawnStep::Devices;
    // SAFETY: every pointer comes from a live CString of `spec`; the nodes
    // are made under the container's root in its own mount namespace.
    unsafe {
        for n in nodes {
            for p in &n.parents {
                check!(spec, step, make_target(p, false));
            }
            if libc::unlink(n.path.as_ptr()) == -1 && errno() != libc::ENOENT {
                fail(spec, step);
            }
            check!(spec, step, libc::mknod(n.path.as_ptr(), n.mode, n.dev));
            check!(spec, step, libc::chmod(n.path.as_ptr(), n.mode & 0o7777));
            check!(spec, step, libc::chown(n.path.as_ptr(), n.uid, n.gid));
        }
    }
}

fn setup_new_root(
    spec: &ChildSpec,
    rootfs: &CString,
    mounts: &[MountOp],
    symlinks: &[SymlinkOp],
    nodes: &[NodeOp],
    readonly: bool,
) {
    let step = SpawnStep::Rootfs;
    // SAFETY: every pointer comes from a live CString of `spec`; the calls
    // only affect this child's private mount namespace.
    unsafe {
        check!(
            spec,
            step,
            libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                ptr::null()
            )
        );
        check!(
            spec,
            step,
            libc::mount(
                rootfs.as_ptr(),
                rootfs.as_ptr(),
                ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                ptr::null()
            )
        );
        for m in mounts {
            for p in &m.parents {
                check!(spec, step, make_target(p, false));
            }
            check!(spec, step, make_target(&m.target, m.target_is_file));
            let fstype = m.fstype.as_ref().map_or(ptr::null(), |s| s.as_ptr());
            let data = m.data.as_ref().map_or(ptr::null(), |s| s.as_ptr().cast());
            check!(
                spec,
                step,
                libc::mount(m.source.as_ptr(), m.target.as_ptr(), fstype, m.flags, data)
            );
            if let Some(flags) = m.remount {
                check!(
                    spec,
                    step,
                    libc::mount(
                        ptr::null(),
                        m.target.as_ptr(),
                        ptr::null(),
                        flags | libc::MS_BIND | libc::MS_REMOUNT,
                        ptr::null()
                    )
                );
            }
            if m.propagation != 0 {
                check!(
                    spec,
                    step,
                    libc::mount(
                        ptr::null(),
                        m.target.as_ptr(),
                        ptr::null(),
                        m.propagation,
                        ptr::null()
                    )
                );
            }
        }
        make_nodes(spec, nodes);
        for s in symlinks {
            if libc::symlink(s.to.as_ptr(), s.link.as_ptr()) == -1 && errno() != libc::EEXIST {
                fail(spec, step);
            }
        }
        check!(spec, step, libc::chdir(rootfs.as_ptr()));
        check!(
            spec,
            step,
            libc::mount(
                rootfs.as_ptr(),
                c"/".as_ptr(),
                ptr::null(),
                libc::MS_MOVE,
                ptr::null()
            )
        );
        check!(spec, step, libc::chroot(c".".as_ptr()));
        check!(spec, step, libc::chdir(c"/".as_ptr()));
        if readonly {
            check!(
                spec,
                step,
                libc::mount(
                    ptr::null(),
                    c"/".as_ptr(),
                    ptr::null(),
                    libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                    ptr::null()
                )
            );
        }
    }
}

/// Writes `value` to the file `path` (sysctls, oom_score_adj).
///
/// # Safety
/// Both must be valid C strings.
unsafe fn write_file(path: &CStr, value: &CStr) -> c_int {
    // SAFETY: valid C strings (caller's contract) and a buffer of the
    // string's length.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return -1;
        }
        let n = value.to_bytes().len();
        let w = libc::write(fd, value.as_ptr().cast(), n);
        libc::close(fd);
        if usize::try_from(w).ok() != Some(n) {
            -1
        } else {
            0
        }
    }
}

/// Sysctls, masked paths and read-only paths, in the container's view
/// (after the root moved): what runc does at the end of rootfs setup.
fn harden_paths(
    spec: &ChildSpec,
    sysctls: &[(CString, CString)],
    masked: &[CString],
    readonly_paths: &[CString],
) {
    // SAFETY: every pointer comes from a live CString of `spec` or a stack
    // buffer; the mounts only affect this child's mount namespace.
    unsafe {
        for (path, value) in sysctls {
            check!(spec, SpawnStep::Sysctl, write_file(path, value));
        }
        for p in masked {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::stat(p.as_ptr(), &mut st) == -1 {
                if errno() == libc::ENOENT {
                    continue;
                }
                fail(spec, SpawnStep::MaskPaths);
            }
            let rc = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                libc::mount(
                    c"tmpfs".as_ptr(),
                    p.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_RDONLY,
                    c"size=0".as_ptr().cast(),
                )
            } else {
                libc::mount(
                    c"/dev/null".as_ptr(),
                    p.as_ptr(),
                    ptr::null(),
                    libc::MS_BIND,
                    ptr::null(),
                )
            };
            check!(spec, SpawnStep::MaskPaths, rc);
        }
        for p in readonly_paths {
            if libc::mount(
                p.as_ptr(),
                p.as_ptr(),
                ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                ptr::null(),
            ) == -1
            {
                if errno() == libc::ENOENT {
                    continue;
                }
                fail(spec, SpawnStep::MaskPaths);
            }
            check!(
                spec,
                SpawnStep::MaskPaths,
                libc::mount(
                    ptr::null(),
                    p.as_ptr(),
                    ptr::null(),
                    libc::MS_BIND
                        | libc::MS_REMOUNT
                        | libc::MS_RDONLY
                        | libc::MS_NOSUID
                        | libc::MS_NODEV
                        | libc::MS_NOEXEC,
                    ptr::null()
                )
            );
        }
    }
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit data records.
const CAP_V3: u32 = 0x2008_0522;

/// Loads the seccomp program.
fn load_seccomp(spec: &ChildSpec) {
    let Some((program, flags)) = &spec.security.seccomp else {
        return;
    };
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len()).unwrap_or(u16::MAX),
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at the live program of `spec`, whose length the
    // parent checked fits in u16.
    check!(spec, SpawnStep::Seccomp, unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            1 as c_ulong, // SECCOMP_SET_MODE_FILTER
            *flags,
            &prog as *const libc::sock_fprog,
        )
    });
}

/// Everything that must happen while the child is still root with every
/// capability: rlimits, OOM score, the bounding set, and seccomp when
/// `noNewPrivileges` is off (loading it then needs CAP_SYS_ADMIN).
fn confine_before_user(spec: &ChildSpec) {
    let sec = &spec.security;
    // SAFETY: raw system calls with pointers to live data of `spec`.
    unsafe {
        for (resource, limit) in &sec.rlimits {
            check!(
                spec,
                SpawnStep::Rlimits,
                libc::syscall(
                    libc::SYS_prlimit64,
                    0,
                    *resource,
                    limit as *const libc::rlimit,
                    ptr::null_mut::<libc::rlimit>()
                )
            );
        }
        if let Some(v) = &sec.oom_score_adj {
            check!(
                spec,
                SpawnStep::OomScoreAdj,
                write_file(c"/proc/self/oom_score_adj", v)
            );
        }
    }
    if !sec.no_new_privs {
        load_seccomp(spec);
    }
    // SAFETY: prctl with integer arguments.
    unsafe {
        for cap in &sec.bounding_drop {
            check!(
                spec,
                SpawnStep::Capabilities,
                libc::prctl(libc::PR_CAPBSET_DROP, *cap, 0, 0, 0)
            );
        }
        // Keep the permitted set across the switch to a non-root user; the
        // capset below then narrows it.
        check!(
            spec,
            SpawnStep::Capabilities,
            libc::prctl(libc::PR_SET_KEEPCAPS, 1 as c_ulong, 0, 0, 0)
        );
    }
}

/// After the user switch: the capability sets, ambient capabilities, umask.
fn confine_after_user(spec: &ChildSpec) {
    let sec = &spec.security;
    let hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    // SAFETY: `hdr` and `caps` are live and laid out as capset(2) expects
    // (two records of effective, permitted, inheritable).
    unsafe {
        check!(
            spec,
            SpawnStep::Capabilities,
            libc::syscall(
                libc::SYS_capset,
                &hdr as *const CapHeader,
                sec.caps.as_ptr()
            )
        );
        check!(
            spec,
            SpawnStep::Capabilities,
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as c_ulong,
                0,
                0,
                0
            )
        );
        for cap in &sec.ambient {
            check!(
                spec,
                SpawnStep::Capabilities,
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as c_ulong,
                    *cap,
                    0,
                    0
                )
            );
        }
        if let Some(m) = sec.umask {
            libc::umask(m);
        }
    }
}

fn join_namespaces(
    spec: &ChildSpec,
    mnt: RawFd,
    uts: RawFd,
    ipc: RawFd,
    cgroup: Option<RawFd>,
    root: RawFd,
) {
    let step = SpawnStep::JoinNamespaces;
    // SAFETY: the fds were opened by the parent from /proc/<pid>/{ns/*,root}
    // and stay open in this child; setns/fchdir/chroot only change this child.
    unsafe {
        if let Some(cg) = cgroup {
            check!(spec, step, libc::setns(cg, libc::CLONE_NEWCGROUP));
        }
        check!(spec, step, libc::setns(uts, libc::CLONE_NEWUTS));
        check!(spec, step, libc::setns(ipc, libc::CLONE_NEWIPC));
        check!(spec, step, libc::setns(mnt, libc::CLONE_NEWNS));
        check!(spec, step, libc::fchdir(root));
        check!(spec, step, libc::chroot(c".".as_ptr()));
        check!(spec, step, libc::chdir(c"/".as_ptr()));
    }
}

/// The pointer arrays `execve` needs, built in the parent (the child must not
/// allocate).
pub fn exec_arrays(spec: &ChildSpec) -> (Vec<*const c_char>, Vec<*const c_char>) {
    (null_terminated(&spec.argv), null_terminated(&spec.envp))
}

/// The child's whole life until `execve`. Never returns.
///
/// `argv`/`envp` come from [`exec_arrays`] of the same `spec`.
pub fn run(spec: &ChildSpec, argv: &[*const c_char], envp: &[*const c_char]) -> ! {
    for fd in spec.parent_ends {
        // SAFETY: closing this child's copies of the agent's pipe ends.
        unsafe { libc::close(fd) };
    }
    // SAFETY: resetting signal dispositions and the mask of this child only;
    // the Rust runtime set SIGPIPE to SIG_IGN, which must not leak into the
    // container's processes.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, ptr::null_mut());
    }
    // A terminal from the container's own devpts needs the container's
    // root first.
    let late_tty = matches!(spec.stdio, ChildStdio::TtyInContainer { .. });
    if !late_tty {
        setup_stdio(spec);
    }
    match &spec.ns {
        NsSetup::New {
            rootfs,
            mounts,
            symlinks,
            nodes,
            share,
            readonly,
            hostname,
            sysctls,
            masked,
            readonly_paths,
        } => {
            if let Some((pidfd, flags)) = share {
                // Before any mount: an mqueue mount belongs to the IPC
                // namespace of whoever makes it.
                // SAFETY: setns on a pidfd the parent opened for this child.
                check!(spec, SpawnStep::JoinNamespaces, unsafe {
                    libc::setns(*pidfd, *flags)
                });
            }
            setup_new_root(spec, rootfs, mounts, symlinks, nodes, *readonly);
            if let Some(h) = hostname {
                // SAFETY: valid buffer and length of the hostname string.
                check!(spec, SpawnStep::Hostname, unsafe {
                    libc::sethostname(h.as_ptr(), h.as_bytes().len())
                });
            }
            harden_paths(spec, sysctls, masked, readonly_paths);
        }
        NsSetup::Join {
            mnt,
            uts,
            ipc,
            cgroup,
            root,
        } => join_namespaces(spec, *mnt, *uts, *ipc, *cgroup, *root),
    }
    if late_tty {
        setup_stdio(spec);
    }
    confine_before_user(spec);
    // Raw system calls, not the libc wrappers: glibc's set*id functions
    // broadcast the change to every thread it believes exists, and this
    // child of a multi-threaded process has only one thread, so the wrappers
    // would wait forever for the others to acknowledge.
    // SAFETY: `groups` is a live Vec whose length is passed along; the ids
    // are plain integers.
    unsafe {
        check!(
            spec,
            SpawnStep::User,
            libc::syscall(libc::SYS_setgroups, spec.groups.len(), spec.groups.as_ptr())
        );
        check!(
            spec,
            SpawnStep::User,
            libc::syscall(libc::SYS_setresgid, spec.gid, spec.gid, spec.gid)
        );
        check!(
            spec,
            SpawnStep::User,
            libc::syscall(libc::SYS_setresuid, spec.uid, spec.uid, spec.uid)
        );
    }
    confine_after_user(spec);
    // SAFETY: valid C string.
    check!(spec, SpawnStep::Cwd, unsafe {
        libc::chdir(spec.cwd.as_ptr())
    });
    if spec.security.no_new_privs {
        // SAFETY: prctl with integer arguments.
        check!(spec, SpawnStep::Capabilities, unsafe {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as c_ulong, 0, 0, 0)
        });
    }
    let mut exe = None;
    let mut lookup_errno = libc::ENOENT;
    for c in &spec.candidates {
        // SAFETY: valid C string.
        if unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 {
            exe = Some(c);
            break;
        }
        let e = errno();
        if e != libc::ENOENT && e != libc::ENOTDIR {
            lookup_errno = e;
        }
    }
    let Some(exe) = exe else {
        report(spec.report_fd, Some(SpawnStep::Lookup), lookup_errno);
        // SAFETY: see `fail`.
        unsafe { libc::_exit(127) }
    };
    report(spec.report_fd, None, 0);
    let mut byte = [0u8; 1];
    // SAFETY: reading into a 1-byte stack buffer.
    let n = unsafe { libc::read(spec.start_fd, byte.as_mut_ptr().cast(), 1) };
    if n != 1 {
        // The parent dropped the start pipe: the process was removed before
        // it started.
        // SAFETY: see `fail`.
        unsafe { libc::_exit(0) }
    }
    if spec.security.no_new_privs {
        // As late as possible: the filter then only sees execve.
        load_seccomp(spec);
    }
    // SAFETY: argv/envp are NULL-terminated arrays of live C strings.
    unsafe { libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    fail(spec, SpawnStep::Exec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_round_trips() {
        let r = Report {
            step: 7,
            errno: libc::ENOENT,
        };
        assert_eq!(Report::decode(r.encode()), r);
    }
}
