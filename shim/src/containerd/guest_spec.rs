//! The OCI spec the guest gets: the bundle's `config.json`, checked and
//! rewritten for a VM.
//!
//! - Host bind mounts (Kubernetes volumes, `/etc/hosts`, `ctr --mount`)
//!   are bound into the pod's share at `<id>/mounts/<n>` — each volume on
//!   its own, read-only on the host when the spec says `ro` — and their
//!   sources become paths relative to the share.
//! - A bind of the sandbox's `/dev/shm` becomes the pod's shared-memory
//!   tmpfs in the guest (one per pod): shared memory cannot cross virtio-fs.
//! - Namespaces are decided in the guest: every container gets its own
//!   mount namespace and the pod's network (the VM's); IPC, UTS and PID are
//!   its own unless the spec joins the pod sandbox's (CRI does for IPC and
//!   UTS, and for PID with `shareProcessNamespace`), which becomes a join of
//!   the sandbox container's namespace in the guest
//!   ([`GuestSpec::share_pod_namespaces`]). Asking for the host's (hostPID,
//!   hostIPC, hostNetwork) or joining any other path is logged, a user
//!   namespace is refused.
//! - What only the host could do (hooks) is logged once per container.
//!
//! Every check here runs before anything is mounted or started, so bad input
//! is one error at Create naming the field.

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};

use cocoon_protocol::{NS_CONTAINER_PREFIX, POD_SHM_SOURCE};

use super::error::{Result, ShimError};

/// Where a container's volumes go in its share directory.
pub const MOUNTS_DIR: &str = "mounts";

fn invalid(field: String, problem: impl Into<String>) -> ShimError {
    ShimError::Invalid {
        field,
        problem: problem.into(),
    }
}

/// A host path bound into the share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBind {
    /// Host source.
    pub source: PathBuf,
    /// Read-only (`ro` in the options).
    pub readonly: bool,
    /// Path relative to the container's share directory.
    pub rel: String,
}

/// The guest's spec and the host binds it needs.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// The rewritten spec.
    pub spec: Spec,
    /// Host paths to bind into `<shared>/<id>/` before the guest uses them.
    pub binds: Vec<HostBind>,
    /// Notes for the log: what the guest does differently from runc.
    pub notes: Vec<String>,
    /// Namespace paths of the bundle's spec (IPC, UTS, PID), removed from
    /// `spec` until [`GuestSpec::share_pod_namespaces`] maps them.
    pub ns_paths: Vec<(LinuxNamespaceType, PathBuf)>,
}

impl GuestSpec {
    /// Maps the namespace paths of a container of pod `sandbox_id` whose
    /// sandbox task reported `sandbox_pid` (every task of a Cocoon pod
    /// reports the VM's PID): `/proc/<sandbox_pid>/ns/<type>` — what CRI
    /// writes for the namespaces a pod shares — joins the sandbox
    /// container's namespace in the guest. Any other path (or no pod) is
    /// logged and the container gets its own.
    pub fn share_pod_namespaces(&mut self, pod: Option<(&str, u32)>) {
        let mut joins = Vec::new();
        for (typ, path) in std::mem::take(&mut self.ns_paths) {
            let name = match typ {
                LinuxNamespaceType::Ipc => "ipc",
                LinuxNamespaceType::Uts => "uts",
                _ => "pid",
            };
            match pod {
                Some((sandbox, pid)) if path == Path::new(&format!("/proc/{pid}/ns/{name}")) => {
                    joins.push((typ, format!("{NS_CONTAINER_PREFIX}{sandbox}")));
                }
                _ => self.notes.push(format!(
                    "the spec joins {} namespace {}, which is not its pod's; in the guest the container gets its own",
                    name.to_uppercase(),
                    path.display()
                )),
            }
        }
        if joins.is_empty() {
            return;
        }
        if let Some(mut linux) = self.spec.linux().clone() {
            let mut namespaces = linux.namespaces().clone().unwrap_or_default();
            for n in namespaces.iter_mut() {
                if let Some((_, p)) = joins.iter().find(|(t, _)| *t == n.typ()) {
                    n.set_path(Some(PathBuf::from(p)));
                }
            }
            linux.set_namespaces(Some(namespaces));
            self.spec.set_linux(Some(linux));
        }
    }
}

fn is_bind(m: &Mount) -> bool {
    m.typ()
        .as_deref()
        .is_some_and(|t| t == "bind" || t == "rbind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

fn clean_absolute(p: &Path) -> bool {
    p.is_absolute()
        && !p
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
}

/// Checks and rewrites `spec` for container `id` (terminal from containerd's
/// request). Nothing is mounted yet.
pub fn prepare(spec: &Spec, id: &str, terminal: bool) -> Result<GuestSpec> {
    let mut out = spec.clone();
    let mut notes = Vec::new();
    if let Some(mut p) = out.process().clone() {
        p.set_terminal(Some(terminal));
        out.set_process(Some(p));
    }
    let mut binds = Vec::new();
    let mut mounts = Vec::new();
    for (i, m) in spec
        .mounts()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let dest = m.destination();
        if !clean_absolute(dest) || dest == Path::new("/") {
            return Err(invalid(
                format!("mounts[{i}].destination"),
                format!(
                    "{} must be an absolute path below / without `..`",
                    dest.display()
                ),
            ));
        }
        if !is_bind(&m) {
            mounts.push(m);
            continue;
        }
        let Some(source) = m.source().clone() else {
            return Err(invalid(
                format!("mounts[{i}].source"),
                "a bind mount needs a source",
            ));
        };
        if dest == Path::new("/dev/shm") {
            // The sandbox's shm directory: the pod's tmpfs in the guest.
            let mut shm = Mount::default();
            shm.set_destination(dest.clone());
            shm.set_typ(Some("tmpfs".into()));
            shm.set_source(Some(POD_SHM_SOURCE.into()));
            shm.set_options(Some(vec![
                "nosuid".into(),
                "noexec".into(),
                "nodev".into(),
                "mode=1777".into(),
                "size=65536k".into(),
            ]));
            mounts.push(shm);
            notes.push(format!(
                "{} bound at /dev/shm: the container gets the pod's guest tmpfs (shared memory does not cross virtio-fs)",
                source.display()
            ));
            continue;
        }
        if !source.is_absolute() {
            return Err(invalid(
                format!("mounts[{i}].source"),
                format!("{} is not an absolute host path", source.display()),
            ));
        }
        if let Err(e) = std::fs::metadata(&source) {
            return Err(invalid(
                format!("mounts[{i}].source"),
                format!(
                    "{} cannot be bound into the container: {e}; create it first or fix the path",
                    source.display()
                ),
            ));
        }
        let readonly = m.options().iter().flatten().any(|o| o == "ro");
        let rel = format!("{MOUNTS_DIR}/{i}");
        let mut gm = m.clone();
        gm.set_source(Some(PathBuf::from(format!("{id}/{rel}"))));
        mounts.push(gm);
        binds.push(HostBind {
            source,
            readonly,
            rel,
        });
    }
    out.set_mounts(Some(mounts));
    let mut ns_paths = Vec::new();
    if let Some(mut linux) = out.linux().clone() {
        let mut namespaces = linux.namespaces().clone().unwrap_or_default();
        if namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::User)
        {
            return Err(invalid(
                "linux.namespaces".into(),
                "a user namespace is not supported in the guest; remove it (the VM is the isolation boundary)",
            ));
        }
        for (typ, what) in [
            (LinuxNamespaceType::Pid, "PID"),
            (LinuxNamespaceType::Ipc, "IPC"),
            (LinuxNamespaceType::Uts, "UTS"),
        ] {
            match namespaces.iter().find(|n| n.typ() == typ) {
                None => notes.push(format!(
                    "the spec shares the host's {what} namespace; in the guest the container gets its own"
                )),
                Some(n) => {
                    if let Some(p) = n.path() {
                        ns_paths.push((typ, p.clone()));
                    }
                }
            }
        }
        if !namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Network)
        {
            notes.push(
                "the spec shares the host's network; in the guest the container has the pod's (the VM's)".into(),
            );
        }
        // Host namespace paths mean nothing in the guest
        // (`share_pod_namespaces` maps the pod's).
        for n in namespaces.iter_mut() {
            n.set_path(None);
        }
        linux.set_namespaces(Some(namespaces));
        out.set_linux(Some(linux));
    }
    if spec.hooks().is_some() {
        notes.push(
            "OCI hooks are not run: they are host programs and the container is in a VM".into(),
        );
    }
    if let Some(s) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        check_seccomp_names(s)?;
    }
    Ok(GuestSpec {
        spec: out,
        binds,
        notes,
        ns_paths,
    })
}

/// Refuses syscall names that no Linux architecture has: a typo would
/// otherwise silently leave a call unfiltered. Names the guest's libseccomp
/// does not know yet (newer than it) are skipped in the guest, as runc does.
fn check_seccomp_names(s: &oci_spec::runtime::LinuxSeccomp) -> Result<()> {
    for (i, rule) in s.syscalls().iter().flatten().enumerate() {
        for (j, name) in rule.names().iter().enumerate() {
            if !super::syscalls::is_linux_syscall(name) {
                return Err(invalid(
                    format!("linux.seccomp.syscalls[{i}].names[{j}]"),
                    format!("{name:?} is not a Linux system call"),
                ));
            }
        }
    }
    Ok(())
}

/// Binds the host paths under `container_dir` (`<shared>/<id>`).
///
/// A read-only volume is made read-only on a private staging mount point
/// (under `staging`, outside the share) and only then bound into the share:
/// the copy of the mount that propagates to virtiofsd is a clone of that
/// read-only mount (a remount in place would not propagate). On error the
/// caller's guard of `container_dir` unmounts what was done.
pub fn mount_binds(binds: &[HostBind], container_dir: &Path, staging: &Path) -> Result<()> {
    use nix::mount::{umount2, MntFlags};
    let bind = |src: &Path, dst: &Path| {
        mount(
            Some(src),
            dst,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| ShimError::Rootfs(format!("bind {} on {}: {e}", src.display(), dst.display())))
    };
    let make = |p: &Path, dir: bool| {
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| ShimError::io(format!("create {}", parent.display()), e))?;
        }
        let made = if dir {
            std::fs::create_dir(p)
        } else {
            std::fs::File::create(p).map(drop)
        };
        made.map_err(|e| ShimError::io(format!("create {}", p.display()), e))
    };
    for b in binds {
        let target = container_dir.join(&b.rel);
        let dir = b.source.is_dir();
        make(&target, dir)?;
        if !b.readonly {
            bind(&b.source, &target)?;
            continue;
        }
        let stage = staging.join(b.rel.replace('/', "-"));
        make(&stage, dir)?;
        let staged = bind(&b.source, &stage)
            .and_then(|()| {
                mount(
                    None::<&str>,
                    &stage,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                )
                .map_err(|e| ShimError::Rootfs(format!("make {} read-only: {e}", stage.display())))
            })
            .and_then(|()| bind(&stage, &target));
        let _ = umount2(&stage, MntFlags::MNT_DETACH);
        let _ = if dir {
            std::fs::remove_dir(&stage)
        } else {
            std::fs::remove_file(&stage)
        };
        staged?;
    }
    let _ = std::fs::remove_dir(staging);
    Ok(())
}

impl GuestSpec {
    /// The spec as JSON for `CreateContainerRequest.oci_spec`.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(&self.spec).map_err(|e| invalid("oci spec".into(), e.to_string()))
    }
}

#[cfg(test)]
mod tests;
