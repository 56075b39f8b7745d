//! The container's OCI runtime spec, decoded into what the agent enforces.
//!
//! The shim sends the bundle's `config.json` (rewritten for the guest, see
//! `CreateContainerRequest.oci_spec`); everything here is validated and
//! prepared in the agent before `clone`, so the child only makes system
//! calls. A field the agent cannot honour is refused with its name, never
//! dropped.

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::str::FromStr;

use libc::c_ulong;
use oci_spec::runtime::{
    LinuxCapabilities, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag,
    LinuxSeccompOperator, PosixRlimitType, Process, Spec,
};

use crate::error::{Error, Result};

fn invalid(field: &'static str, problem: impl Into<String>) -> Error {
    Error::InvalidArgument {
        field,
        problem: problem.into(),
    }
}

/// The five capability sets of a process, as bit masks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapSets {
    /// Bounding set.
    pub bounding: u64,
    /// Effective set.
    pub effective: u64,
    /// Permitted set.
    pub permitted: u64,
    /// Inheritable set.
    pub inheritable: u64,
    /// Ambient set.
    pub ambient: u64,
}

/// A compiled seccomp filter.
#[derive(Debug, Clone)]
pub struct Seccomp {
    /// Classic BPF program.
    pub program: Vec<libc::sock_filter>,
    /// `SECCOMP_FILTER_FLAG_*`.
    pub flags: libc::c_ulong,
}

/// What confines a process beyond its user.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// Capability sets (no capabilities when the spec names none).
    pub caps: CapSets,
    /// `process.noNewPrivileges`.
    pub no_new_privileges: bool,
    /// `(resource, soft, hard)` from `process.rlimits`.
    pub rlimits: Vec<(u32, u64, u64)>,
    /// `process.oomScoreAdj`.
    pub oom_score_adj: Option<i32>,
    /// `process.user.umask`.
    pub umask: Option<u32>,
    /// `linux.seccomp`, compiled.
    pub seccomp: Option<Seccomp>,
}

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
    /// Capabilities, rlimits, seccomp and the like.
    pub security: Security,
}

/// How a mount is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    /// A bind of a path in the shared filesystem (relative to it).
    Bind {
        /// Source, relative to the share.
        source: String,
        /// `rbind`.
        recursive: bool,
    },
    /// A new devpts instance (`newinstance`, `ptmxmode=0666` added when
    /// missing): the container's terminals are allocated in it, by the
    /// container's process, so no container sees another's.
    Devpts,
    /// The pod's shared memory: one guest tmpfs for every container of the
    /// pod (they share the IPC namespace), made by the first that asks with
    /// its options (`size=`, `mode=`) and bound into the others. The shim
    /// writes the pod's `/dev/shm` bind as `tmpfs` with source
    /// [`POD_SHM_SOURCE`].
    PodShm,
    /// A new file system instance (proc, sysfs, tmpfs, mqueue).
    Fs {
        /// File system type.
        fstype: String,
        /// Source (informational for these types).
        source: String,
    },
}

/// One entry of `mounts`, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecMount {
    /// Absolute path inside the container.
    pub destination: String,
    /// How to mount it.
    pub kind: MountKind,
    /// `MS_*` flags from the options (applied by a remount for binds).
    pub flags: c_ulong,
    /// `MS_PRIVATE`/`MS_SLAVE`/`MS_SHARED`/`MS_UNBINDABLE` (| `MS_REC`), or 0.
    pub propagation: c_ulong,
    /// File-system data (`size=64m,mode=1777`).
    pub data: String,
}

/// A container's spec, decoded.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    /// The init process.
    pub process: ProcessSpec,
    /// `hostname`.
    pub hostname: Option<String>,
    /// `root.readonly`.
    pub readonly_root: bool,
    /// `mounts`, in order.
    pub mounts: Vec<SpecMount>,
    /// `linux.maskedPaths`.
    pub masked_paths: Vec<String>,
    /// `linux.readonlyPaths`.
    pub readonly_paths: Vec<String>,
    /// `linux.sysctl` as `/proc/sys/...` path and value, sorted.
    pub sysctls: Vec<(String, String)>,
    /// `linux.resources` as cgroup v2 limits.
    pub limits: crate::cgroup::Limits,
    /// `linux.resources.devices` with the defaults every container gets.
    pub device_rules: crate::devices::DeviceRules,
    /// `linux.devices`: nodes to create in the container's `/dev`.
    pub devices: Vec<crate::devices::Node>,
    /// A devpts instance of its own at `/dev/pts`: its terminals are
    /// allocated there by its processes (else in the guest's devpts).
    pub own_devpts: bool,
    /// `linux.namespaces` the container joins instead of getting its own:
    /// IPC, UTS or PID of another container of the pod (see
    /// [`NsJoin`]).
    pub joins: Vec<NsJoin>,
}

/// A namespace shared with another container of the pod: the shim writes
/// `linux.namespaces[].path` as `container:<id>` for a namespace a CRI pod
/// shares (the sandbox's IPC and UTS, and its PID with
/// `shareProcessNamespace`). Host paths never reach the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsJoin {
    /// `CLONE_NEWIPC`, `CLONE_NEWUTS` or `CLONE_NEWPID`.
    pub flag: libc::c_int,
    /// The container whose init's namespace is joined.
    pub container: String,
}

pub use cocoon_protocol::{NS_CONTAINER_PREFIX, POD_SHM_SOURCE};

/// The namespaces the container joins; the rest it gets new. Mount,
/// network and cgroup namespaces are the agent's to decide; a user
/// namespace is refused; a path that names no pod container is refused.
fn namespace_joins(ns: &[oci_spec::runtime::LinuxNamespace]) -> Result<Vec<NsJoin>> {
    use oci_spec::runtime::LinuxNamespaceType as T;
    let mut out = Vec::new();
    for n in ns {
        if n.typ() == T::User {
            return Err(invalid(
                "linux.namespaces",
                "a user namespace is not supported in the guest (the VM is the isolation boundary)",
            ));
        }
        let Some(path) = n.path() else { continue };
        let flag = match n.typ() {
            T::Ipc => libc::CLONE_NEWIPC,
            T::Uts => libc::CLONE_NEWUTS,
            T::Pid => libc::CLONE_NEWPID,
            // The pod's network is the VM's; mount and cgroup namespaces
            // are always the container's own.
            _ => continue,
        };
        let path = path.display().to_string();
        let id = path
            .strip_prefix(NS_CONTAINER_PREFIX)
            .filter(|id| cocoon_protocol::resource::is_container_id(id))
            .ok_or_else(|| {
                invalid(
                    "linux.namespaces",
                    format!(
                        "{:?} path {path:?} names no container of the pod (container:<id>)",
                        n.typ()
                    ),
                )
            })?;
        out.push(NsJoin {
            flag,
            container: id.to_string(),
        });
    }
    Ok(out)
}

impl ContainerSpec {
    /// Decodes the JSON spec of `CreateContainerRequest.oci_spec`.
    pub fn from_json(json: &[u8]) -> Result<Self> {
        if json.is_empty() {
            return Err(invalid("oci_spec", "is empty"));
        }
        let spec: Spec = serde_json::from_slice(json)
            .map_err(|e| invalid("oci_spec", format!("is not an OCI runtime spec: {e}")))?;
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| invalid("oci_spec", "has no process"))?;
        let linux = spec.linux().clone().unwrap_or_default();
        let mut process = ProcessSpec::from_oci(process)?;
        if let Some(s) = linux.seccomp() {
            process.security.seccomp = Some(compile_seccomp(s)?);
        }
        let mounts = spec
            .mounts()
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|m| {
                decode_mount(
                    &m.destination().display().to_string(),
                    m.typ().as_deref().unwrap_or(""),
                    &m.source()
                        .as_ref()
                        .map(|s| s.display().to_string())
                        .unwrap_or_default(),
                    m.options().as_deref().unwrap_or(&[]),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let mut sysctls = Vec::new();
        for (k, v) in linux.sysctl().clone().unwrap_or_default() {
            sysctls.push((sysctl_path(&k)?, v));
        }
        sysctls.sort();
        let paths = |v: &Option<Vec<String>>, field: &'static str| -> Result<Vec<String>> {
            let v = v.clone().unwrap_or_default();
            if let Some(bad) = v.iter().find(|p| !is_clean_absolute(p)) {
                return Err(invalid(
                    field,
                    format!("{bad:?} is not an absolute path without `..`"),
                ));
            }
            Ok(v)
        };
        let own_devpts = mounts
            .iter()
            .any(|m| m.kind == MountKind::Devpts && m.destination == "/dev/pts");
        Ok(Self {
            process,
            hostname: spec.hostname().clone().filter(|h| !h.is_empty()),
            readonly_root: spec
                .root()
                .as_ref()
                .and_then(|r| r.readonly())
                .unwrap_or(false),
            mounts,
            masked_paths: paths(linux.masked_paths(), "linux.maskedPaths")?,
            readonly_paths: paths(linux.readonly_paths(), "linux.readonlyPaths")?,
            sysctls,
            limits: linux
                .resources()
                .as_ref()
                .map(limits)
                .transpose()?
                .unwrap_or_default(),
            device_rules: crate::devices::DeviceRules::from_oci(
                linux
                    .resources()
                    .as_ref()
                    .and_then(|r| r.devices().as_deref())
                    .unwrap_or(&[]),
            )?,
            devices: linux
                .devices()
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, d)| crate::devices::Node::from_oci(i, d))
                .collect::<Result<_>>()?,
            joins: namespace_joins(linux.namespaces().as_deref().unwrap_or(&[]))?,
            own_devpts,
        })
    }
}

impl ProcessSpec {
    /// Decodes `ExecProcessRequest.oci_process`.
    pub fn from_json(json: &[u8]) -> Result<Self> {
        if json.is_empty() {
            return Err(invalid("oci_process", "is empty"));
        }
        let p: Process = serde_json::from_slice(json)
            .map_err(|e| invalid("oci_process", format!("is not an OCI process: {e}")))?;
        Self::from_oci(&p)
    }

    /// Decodes an OCI process (no seccomp: that is container-wide).
    pub fn from_oci(p: &Process) -> Result<Self> {
        let user = p.user();
        let rlimits = p
            .rlimits()
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|r| {
                if r.soft() > r.hard() {
                    return Err(invalid(
                        "process.rlimits",
                        format!(
                            "{:?}: soft limit {} exceeds hard limit {}",
                            r.typ(),
                            r.soft(),
                            r.hard()
                        ),
                    ));
                }
                Ok((rlimit_resource(r.typ()), r.soft(), r.hard()))
            })
            .collect::<Result<Vec<_>>>()?;
        // (uid_t)-1 means "leave unchanged" to setresuid: the process
        // would stay root.
        let ids = std::iter::once(("process.user.uid", user.uid()))
            .chain(std::iter::once(("process.user.gid", user.gid())))
            .chain(
                user.additional_gids()
                    .iter()
                    .flatten()
                    .map(|g| ("process.user.additionalGids", *g)),
            );
        for (field, id) in ids {
            if id == u32::MAX {
                return Err(invalid(
                    field,
                    "4294967295 is (uid_t)-1, which set*id(2) reads as \"no change\": use a real id",
                ));
            }
        }
        let args = p.args().clone().unwrap_or_default();
        if args.iter().any(|a| a.contains('\0')) {
            return Err(invalid("process.args", "contains a NUL byte"));
        }
        Ok(Self {
            args,
            env: p.env().clone().unwrap_or_default(),
            cwd: p.cwd().display().to_string(),
            uid: user.uid(),
            gid: user.gid(),
            groups: user.additional_gids().clone().unwrap_or_default(),
            terminal: p.terminal().unwrap_or(false),
            security: Security {
                caps: p
                    .capabilities()
                    .as_ref()
                    .map(cap_sets)
                    .transpose()?
                    .unwrap_or_default(),
                no_new_privileges: p.no_new_privileges().unwrap_or(false),
                rlimits,
                oom_score_adj: p.oom_score_adj(),
                umask: user.umask(),
                seccomp: None,
            },
        })
    }
}

/// Decodes `UpdateContainerRequest.oci_resources`.
pub fn limits_from_json(json: &[u8]) -> Result<crate::cgroup::Limits> {
    let r: oci_spec::runtime::LinuxResources = serde_json::from_slice(json)
        .map_err(|e| invalid("oci_resources", format!("is not OCI linux.resources: {e}")))?;
    limits(&r)
}

/// `linux.resources` in cgroup v2 terms (runc's conversions). Block I/O,
/// hugepages, network classes, cpusets and RDMA are logged and ignored;
/// device rules are a program, not a file ([`crate::devices`]).
pub fn limits(r: &oci_spec::runtime::LinuxResources) -> Result<crate::cgroup::Limits> {
    use crate::cgroup::{shares_to_weight, Limits, MIN_MEMORY};
    let mut l = Limits::default();
    if let Some(m) = r.memory() {
        if let Some(limit) = m.limit() {
            if limit > 0 && limit < MIN_MEMORY {
                return Err(invalid(
                    "linux.resources.memory.limit",
                    format!("{limit} bytes is below the {MIN_MEMORY}-byte minimum a container needs; raise it"),
                ));
            }
            l.memory_max = Some(if limit <= 0 { -1 } else { limit });
        }
        l.memory_low = m.reservation().map(|v| if v <= 0 { -1 } else { v });
        if let Some(swap) = m.swap() {
            l.swap_max = Some(match (swap, m.limit()) {
                (s, _) if s < 0 => -1,
                (s, Some(limit)) if limit > 0 => {
                    if s < limit {
                        return Err(invalid(
                            "linux.resources.memory.swap",
                            format!(
                                "{s} is below memory.limit {limit}; swap counts memory plus swap"
                            ),
                        ));
                    }
                    s - limit
                }
                (s, _) => s,
            });
        }
    }
    if let Some(c) = r.cpu() {
        if c.quota().is_some() || c.period().is_some() {
            let period = c.period().unwrap_or(100_000);
            if !(1_000..=1_000_000).contains(&period) {
                return Err(invalid(
                    "linux.resources.cpu.period",
                    format!("{period} µs is outside 1000..=1000000"),
                ));
            }
            l.cpu_max = Some((c.quota().filter(|q| *q > 0), period));
        }
        l.cpu_weight = c.shares().map(shares_to_weight);
        if c.cpus().is_some() || c.mems().is_some() {
            crate::log("linux.resources.cpu.cpus/mems ignored: no cpuset in the guest");
        }
    }
    if let Some(p) = r.pids() {
        l.pids_max = Some(p.limit());
    }
    for (k, v) in r.unified().clone().unwrap_or_default() {
        let known = ["memory.", "cpu.", "pids.", "io."]
            .iter()
            .any(|p| k.starts_with(p));
        if !known || k.contains('/') {
            return Err(invalid(
                "linux.resources.unified",
                format!("{k:?} is not a memory, cpu, pids or io file of the container's cgroup"),
            ));
        }
        l.unified.insert(k, v);
    }
    if r.block_io().is_some()
        || r.hugepage_limits().is_some()
        || r.network().is_some()
        || r.rdma().is_some()
    {
        crate::log("linux.resources blockIO/hugepageLimits/network/rdma ignored in the guest");
    }
    Ok(l)
}

/// Whether `p` is absolute and has no `..` component.
pub fn is_clean_absolute(p: &str) -> bool {
    p.starts_with('/') && !p.split('/').any(|c| c == "..")
}

/// The highest capability the running kernel knows.
pub fn last_cap() -> u8 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

fn cap_mask(field: &'static str, set: &Option<oci_spec::runtime::Capabilities>) -> Result<u64> {
    let mut mask = 0u64;
    for c in set.iter().flatten() {
        // The spec's name (CAP_CHOWN) through serde, then the kernel's number.
        let name = serde_json::to_value(c)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let cap = caps::Capability::from_str(&name)
            .map_err(|_| invalid(field, format!("{name:?} is not a Linux capability")))?;
        mask |= cap.bitmask();
    }
    Ok(mask)
}

fn cap_sets(c: &LinuxCapabilities) -> Result<CapSets> {
    Ok(CapSets {
        bounding: cap_mask("process.capabilities.bounding", c.bounding())?,
        effective: cap_mask("process.capabilities.effective", c.effective())?,
        permitted: cap_mask("process.capabilities.permitted", c.permitted())?,
        inheritable: cap_mask("process.capabilities.inheritable", c.inheritable())?,
        ambient: cap_mask("process.capabilities.ambient", c.ambient())?,
    })
}

fn rlimit_resource(t: PosixRlimitType) -> u32 {
    use PosixRlimitType as T;
    match t {
        T::RlimitCpu => libc::RLIMIT_CPU,
        T::RlimitFsize => libc::RLIMIT_FSIZE,
        T::RlimitData => libc::RLIMIT_DATA,
        T::RlimitStack => libc::RLIMIT_STACK,
        T::RlimitCore => libc::RLIMIT_CORE,
        T::RlimitRss => libc::RLIMIT_RSS,
        T::RlimitNproc => libc::RLIMIT_NPROC,
        T::RlimitNofile => libc::RLIMIT_NOFILE,
        T::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        T::RlimitAs => libc::RLIMIT_AS,
        T::RlimitLocks => libc::RLIMIT_LOCKS,
        T::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        T::RlimitNice => libc::RLIMIT_NICE,
        T::RlimitRtprio => libc::RLIMIT_RTPRIO,
        T::RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

/// Sysctls that belong to a namespace the container (or its pod) owns:
/// IPC and UTS ones, and `net.*` (the pod's VM is its network namespace).
/// Anything else would change the whole VM.
fn sysctl_path(key: &str) -> Result<String> {
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let namespaced = IPC.contains(&key) || key.starts_with("fs.mqueue.") || key.starts_with("net.");
    let well_formed = !key.is_empty()
        && key
            .split('.')
            .all(|c| !c.is_empty() && c != ".." && !c.contains('/'));
    if !namespaced || !well_formed {
        return Err(invalid(
            "linux.sysctl",
            format!("{key:?} is not a namespaced sysctl (IPC, fs.mqueue.*, net.*); it would change the whole VM"),
        ));
    }
    Ok(format!("/proc/sys/{}", key.replace('.', "/")))
}

/// Splits mount options into flags, propagation and data.
pub fn parse_mount_options(options: &[String]) -> (c_ulong, c_ulong, bool, Vec<String>) {
    use libc::*;
    let (mut flags, mut propagation, mut bind) = (0 as c_ulong, 0 as c_ulong, false);
    let mut data = Vec::new();
    for o in options {
        let (set, clear): (c_ulong, c_ulong) = match o.as_str() {
            "ro" => (MS_RDONLY, 0),
            "rw" => (0, MS_RDONLY),
            "nosuid" => (MS_NOSUID, 0),
            "suid" => (0, MS_NOSUID),
            "nodev" => (MS_NODEV, 0),
            "dev" => (0, MS_NODEV),
            "noexec" => (MS_NOEXEC, 0),
            "exec" => (0, MS_NOEXEC),
            "sync" => (MS_SYNCHRONOUS, 0),
            "async" => (0, MS_SYNCHRONOUS),
            "dirsync" => (MS_DIRSYNC, 0),
            "mand" => (MS_MANDLOCK, 0),
            "nomand" => (0, MS_MANDLOCK),
            "noatime" => (MS_NOATIME, 0),
            "atime" => (0, MS_NOATIME),
            "nodiratime" => (MS_NODIRATIME, 0),
            "diratime" => (0, MS_NODIRATIME),
            "relatime" => (MS_RELATIME, 0),
            "norelatime" => (0, MS_RELATIME),
            "strictatime" => (MS_STRICTATIME, 0),
            "nostrictatime" => (0, MS_STRICTATIME),
            "bind" => {
                bind = true;
                (0, 0)
            }
            "rbind" => {
                bind = true;
                (MS_REC, 0)
            }
            "private" => {
                propagation = MS_PRIVATE;
                (0, 0)
            }
            "rprivate" => {
                propagation = MS_PRIVATE | MS_REC;
                (0, 0)
            }
            "shared" => {
                propagation = MS_SHARED;
                (0, 0)
            }
            "rshared" => {
                propagation = MS_SHARED | MS_REC;
                (0, 0)
            }
            "slave" => {
                propagation = MS_SLAVE;
                (0, 0)
            }
            "rslave" => {
                propagation = MS_SLAVE | MS_REC;
                (0, 0)
            }
            "unbindable" => {
                propagation = MS_UNBINDABLE;
                (0, 0)
            }
            "runbindable" => {
                propagation = MS_UNBINDABLE | MS_REC;
                (0, 0)
            }
            // runc's copy-up of image content into a tmpfs: the guest
            // mounts an empty tmpfs (what crun does without it too).
            "tmpcopyup" | "defaults" => (0, 0),
            other => {
                data.push(other.to_string());
                (0, 0)
            }
        };
        flags = (flags | set) & !clear;
    }
    (flags, propagation, bind, data)
}

/// Decodes one mount of the spec.
pub fn decode_mount(
    destination: &str,
    typ: &str,
    source: &str,
    options: &[String],
) -> Result<SpecMount> {
    if !is_clean_absolute(destination) || destination == "/" {
        return Err(invalid(
            "mounts.destination",
            format!("{destination:?} must be an absolute path below / without `..`"),
        ));
    }
    let (flags, propagation, bind_opt, data) = parse_mount_options(options);
    let bind = bind_opt || typ == "bind" || typ == "rbind";
    let kind = if bind {
        if source.is_empty() || source.starts_with('/') || source.split('/').any(|c| c == "..") {
            return Err(invalid(
                "mounts.source",
                format!("bind source {source:?} of {destination} must be relative to the shared filesystem, without `..`"),
            ));
        }
        MountKind::Bind {
            source: source.to_string(),
            recursive: flags & libc::MS_REC != 0 || typ == "rbind",
        }
    } else {
        match typ {
            "devpts" => MountKind::Devpts,
            "tmpfs" if source == POD_SHM_SOURCE => MountKind::PodShm,
            "proc" | "sysfs" | "tmpfs" | "mqueue" => MountKind::Fs {
                fstype: typ.to_string(),
                source: if source.is_empty() { typ } else { source }.to_string(),
            },
            // The guest is cgroup v2 only; the mount shows the container's
            // own cgroup (it runs in a cgroup namespace rooted there).
            "cgroup" | "cgroup2" => MountKind::Fs {
                fstype: "cgroup2".into(),
                source: "cgroup".into(),
            },
            other => {
                return Err(invalid(
                    "mounts.type",
                    format!("{other:?} at {destination} is not supported in the guest (proc, sysfs, tmpfs, mqueue, devpts, cgroup, bind)"),
                ))
            }
        }
    };
    let data = match kind {
        MountKind::Fs { .. } | MountKind::PodShm => data.join(","),
        MountKind::Devpts => {
            let mut data = data;
            if !data.iter().any(|o| o == "newinstance") {
                data.push("newinstance".into());
            }
            if !data.iter().any(|o| o.starts_with("ptmxmode=")) {
                data.push("ptmxmode=0666".into());
            }
            data.join(",")
        }
        MountKind::Bind { .. } => String::new(),
    };
    Ok(SpecMount {
        destination: destination.to_string(),
        kind,
        flags: flags & !libc::MS_REC,
        propagation,
        data,
    })
}

fn scmp_action(
    field: &'static str,
    a: LinuxSeccompAction,
    errno: Option<u32>,
) -> Result<libseccomp::ScmpAction> {
    use libseccomp::ScmpAction as S;
    use LinuxSeccompAction as A;
    Ok(match a {
        A::ScmpActKill | A::ScmpActKillThread => S::KillThread,
        A::ScmpActKillProcess => S::KillProcess,
        A::ScmpActTrap => S::Trap,
        A::ScmpActErrno => S::Errno(
            i32::try_from(errno.unwrap_or(libc::EPERM as u32))
                .map_err(|_| invalid(field, "errnoRet is out of range"))?,
        ),
        A::ScmpActTrace => S::Trace(u16::try_from(errno.unwrap_or(0)).unwrap_or(0)),
        A::ScmpActLog => S::Log,
        A::ScmpActAllow => S::Allow,
        A::ScmpActNotify => {
            return Err(invalid(
                field,
                "SCMP_ACT_NOTIFY needs a listener next to the container; it is not supported in a VM guest",
            ))
        }
    })
}

fn scmp_op(op: LinuxSeccompOperator, value: u64) -> libseccomp::ScmpCompareOp {
    use libseccomp::ScmpCompareOp as C;
    use LinuxSeccompOperator as O;
    match op {
        O::ScmpCmpNe => C::NotEqual,
        O::ScmpCmpLt => C::Less,
        O::ScmpCmpLe => C::LessOrEqual,
        O::ScmpCmpEq => C::Equal,
        O::ScmpCmpGe => C::GreaterEqual,
        O::ScmpCmpGt => C::Greater,
        O::ScmpCmpMaskedEq => C::MaskedEqual(value),
    }
}

fn seccomp_err(field: &'static str) -> impl Fn(libseccomp::error::SeccompError) -> Error {
    move |e| invalid(field, e.to_string())
}

/// Compiles `linux.seccomp` with libseccomp to a BPF program, the same way
/// runc and crun do: one rule per syscall name (per condition when several
/// conditions test the same argument), the listed architectures added to
/// the native one. A syscall name libseccomp does not know is skipped, as
/// runc does (profiles name calls newer than the library); the shim has
/// refused names that no Linux kernel has.
pub fn compile_seccomp(s: &LinuxSeccomp) -> Result<Seccomp> {
    use libseccomp::{ScmpArch, ScmpArgCompare, ScmpFilterContext, ScmpSyscall};
    let default = scmp_action(
        "linux.seccomp.defaultAction",
        s.default_action(),
        s.default_errno_ret(),
    )?;
    let mut ctx = ScmpFilterContext::new(default).map_err(seccomp_err("linux.seccomp"))?;
    for arch in s.architectures().clone().unwrap_or_default() {
        let name = serde_json::to_value(arch)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let a = ScmpArch::from_str(&name).map_err(|_| {
            invalid(
                "linux.seccomp.architectures",
                format!("{name:?} is not an architecture libseccomp knows"),
            )
        })?;
        ctx.add_arch(a)
            .map_err(seccomp_err("linux.seccomp.architectures"))?;
    }
    let mut skipped = BTreeSet::new();
    for rule in s.syscalls().clone().unwrap_or_default() {
        let action = scmp_action(
            "linux.seccomp.syscalls.action",
            rule.action(),
            rule.errno_ret(),
        )?;
        if action == default {
            // libseccomp refuses rules that repeat the default action.
            continue;
        }
        let conds: Vec<ScmpArgCompare> = rule
            .args()
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|a| {
                let (op, datum) = match a.op() {
                    LinuxSeccompOperator::ScmpCmpMaskedEq => {
                        (scmp_op(a.op(), a.value()), a.value_two().unwrap_or(0))
                    }
                    op => (scmp_op(op, 0), a.value()),
                };
                Ok(ScmpArgCompare::new(
                    u32::try_from(a.index()).map_err(|_| {
                        invalid("linux.seccomp.syscalls.args.index", "is out of range")
                    })?,
                    op,
                    datum,
                ))
            })
            .collect::<Result<_>>()?;
        let mut indexes: Vec<u32> = rule
            .args()
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|a| u32::try_from(a.index()).unwrap_or(u32::MAX))
            .collect();
        indexes.sort_unstable();
        let repeated = indexes.windows(2).any(|w| w[0] == w[1]);
        for name in rule.names() {
            let Ok(sc) = ScmpSyscall::from_name(name) else {
                skipped.insert(name.clone());
                continue;
            };
            let r = if conds.is_empty() {
                ctx.add_rule(action, sc).map(drop)
            } else if repeated {
                conds
                    .iter()
                    .try_for_each(|c| ctx.add_rule_conditional(action, sc, &[*c]).map(drop))
            } else {
                ctx.add_rule_conditional(action, sc, &conds).map(drop)
            };
            r.map_err(|e| invalid("linux.seccomp.syscalls", format!("rule for {name:?}: {e}")))?;
        }
    }
    if !skipped.is_empty() {
        crate::log(&format!(
            "seccomp: system calls unknown to this guest's libseccomp skipped: {}",
            skipped.into_iter().collect::<Vec<_>>().join(",")
        ));
    }
    let mut flags: libc::c_ulong = 0;
    for f in s.flags().clone().unwrap_or_default() {
        flags |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => 2,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => 4,
            // One thread exists when the filter is loaded.
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => 0,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                return Err(invalid(
                    "linux.seccomp.flags",
                    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV applies to SCMP_ACT_NOTIFY, which is not supported",
                ))
            }
        };
    }
    let program = export_bpf(&ctx)?;
    Ok(Seccomp { program, flags })
}

/// The filter's BPF program, through a memfd (libseccomp 2.5 exports to a
/// file descriptor only).
fn export_bpf(ctx: &libseccomp::ScmpFilterContext) -> Result<Vec<libc::sock_filter>> {
    use std::io::{Read, Seek};
    // SAFETY: memfd_create with a valid name; the fd is owned below.
    let raw = unsafe { libc::memfd_create(c"seccomp-bpf".as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return Err(Error::sys("memfd_create", nix::errno::Errno::last()));
    }
    // SAFETY: `raw` is a fresh fd nothing else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    ctx.export_bpf(fd.as_fd())
        .map_err(seccomp_err("linux.seccomp"))?;
    let mut f = std::fs::File::from(fd);
    let mut bytes = Vec::new();
    f.rewind()
        .and_then(|_| f.read_to_end(&mut bytes))
        .map_err(|e| Error::sys("read the seccomp program", io_errno(&e)))?;
    if bytes.is_empty() || bytes.len() % 8 != 0 {
        return Err(Error::sys(
            "libseccomp exported a malformed program",
            nix::errno::Errno::EINVAL,
        ));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

fn io_errno(e: &std::io::Error) -> nix::errno::Errno {
    nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

#[cfg(test)]
mod tests;
