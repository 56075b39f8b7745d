//! Container root filesystems: the mounts containerd passes (overlayfs,
//! bind from the native snapshotter) are mounted on the host under the pod's
//! shared directory, which virtiofsd exports to the guest.

use std::path::{Path, PathBuf};

use containerd_shim_protos::api::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::error::{Result, ShimError};

/// Splits mount options into flags and file-system data.
fn parse_options(options: &[String]) -> (MsFlags, Vec<String>) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "suid" | "dev" | "exec" | "defaults" => {}
            other => data.push(other.to_string()),
        }
    }
    (flags, data)
}

/// Mounts `mounts` (or binds `bundle_rootfs` when there are none) at
/// `target`. Returns whether something was mounted.
pub fn mount_rootfs(mounts: &[Mount], bundle_rootfs: &Path, target: &Path) -> Result<()> {
    std::fs::create_dir_all(target)
        .map_err(|e| ShimError::io(format!("mkdir {}", target.display()), e))?;
    if mounts.is_empty() {
        // `ctr run --rootfs DIR`: containerd put the rootfs in the bundle.
        return mount(
            Some(bundle_rootfs),
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| {
            ShimError::Rootfs(format!(
                "bind {} on {}: {e}",
                bundle_rootfs.display(),
                target.display()
            ))
        });
    }
    if mounts.len() > 1 {
        return Err(ShimError::Rootfs(format!(
            "{} rootfs mounts given; Cocoon supports exactly one",
            mounts.len()
        )));
    }
    let m = &mounts[0];
    let (mut flags, data) = parse_options(&m.options);
    let fstype = match m.type_.as_str() {
        "overlay" => Some("overlay"),
        "bind" | "rbind" => {
            flags |= MsFlags::MS_BIND;
            None
        }
        other => {
            return Err(ShimError::Rootfs(format!(
                "mount type {other:?} is not supported; use the overlayfs or native snapshotter"
            )))
        }
    };
    let data = data.join(",");
    let ro_bind = fstype.is_none() && flags.contains(MsFlags::MS_RDONLY);
    mount(
        Some(m.source.as_str()),
        target,
        fstype,
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )
    .map_err(|e| {
        ShimError::Rootfs(format!(
            "mount {} ({}) on {}: {e}",
            m.source,
            m.type_,
            target.display()
        ))
    })?;
    if ro_bind {
        // A read-only bind needs a remount to take effect.
        let _ = mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        );
    }
    Ok(())
}

/// Whether `path` is a mount point (its device differs from its parent's,
/// or /proc/self/mountinfo lists it).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let needle = path.display().to_string();
    info.lines()
        .any(|l| l.split_whitespace().nth(4) == Some(needle.as_str()))
}

/// Unmounts everything at `target` (lazily, so a busy virtiofsd cannot block
/// it) and removes the directory.
pub fn unmount_rootfs(target: &Path) -> Result<()> {
    while is_mounted(target) {
        umount2(target, MntFlags::MNT_DETACH)
            .map_err(|e| ShimError::Rootfs(format!("unmount {}: {e}", target.display())))?;
    }
    match std::fs::remove_dir(target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ShimError::io(format!("remove {}", target.display()), e)),
    }
}

/// Unmounts every mount at or below `dir` (deepest first).
pub fn unmount_all_under(dir: &Path) -> Result<()> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Ok(());
    };
    let prefix = dir.display().to_string();
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| *p == prefix || p.starts_with(&format!("{prefix}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    for p in points {
        umount2(Path::new(p), MntFlags::MNT_DETACH)
            .map_err(|e| ShimError::Rootfs(format!("unmount {p}: {e}")))?;
    }
    Ok(())
}

/// Where a container's rootfs goes inside the pod's shared directory, and
/// the path the guest sees relative to the share.
pub fn shared_paths(shared: &Path, container_id: &str) -> (PathBuf, String) {
    (
        shared.join(container_id).join("rootfs"),
        format!("{container_id}/rootfs"),
    )
}

/// The shim's one cleanup guard: a directory that everything mounted below
/// it is unmounted from and that is removed when the guard is dropped —
/// a pod's state directory, or a container's directory in the share.
#[derive(Debug)]
pub struct DirGuard(Option<PathBuf>);

impl DirGuard {
    /// Creates `dir` (which must not exist; its parent is created) and
    /// guards it.
    pub fn create(dir: &Path) -> Result<Self> {
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| ShimError::io(format!("create {}", parent.display()), e))?;
        }
        match std::fs::create_dir(dir) {
            Ok(()) => Ok(Self(Some(dir.to_path_buf()))),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(
                ShimError::AlreadyExists(format!("state directory {}", dir.display())),
            ),
            Err(e) => Err(ShimError::io(format!("create {}", dir.display()), e)),
        }
    }

    /// Guards an existing directory (or one about to be created).
    pub fn adopt(dir: PathBuf) -> Self {
        Self(Some(dir))
    }

    /// The guarded directory.
    pub fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    /// Keeps the directory: the guard no longer removes it.
    pub fn release(mut self) -> PathBuf {
        self.0.take().unwrap_or_default()
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = remove_unmounted(&d);
        }
    }
}

/// Unmounts everything at or below `dir`, then removes it — unless a mount
/// is still there: removing through a bound host volume would delete the
/// volume's files.
pub fn remove_unmounted(dir: &Path) -> Result<()> {
    unmount_all_under(dir)?;
    let prefix = dir.display().to_string();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if let Some(p) = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .find(|p| *p == prefix || p.starts_with(&format!("{prefix}/")))
    {
        return Err(ShimError::Rootfs(format!(
            "{p} is still mounted; {} is left in place",
            dir.display()
        )));
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ShimError::io(format!("remove {}", dir.display()), e)),
    }
}

/// A container's rootfs mounted into the pod's share, guarded: dropping it
/// unmounts the rootfs and removes `<shared>/<id>`.
#[derive(Debug)]
pub struct SharedRootfs {
    /// Host mount point (`<shared>/<id>/rootfs`).
    pub target: PathBuf,
    /// The path the guest sees, relative to the share.
    pub guest_path: String,
    guard: DirGuard,
}

impl SharedRootfs {
    /// Mounts the container's rootfs at `<shared>/<id>/rootfs` and its
    /// host volumes at `<shared>/<id>/mounts/<n>`.
    pub fn mount(
        shared: &Path,
        id: &str,
        src: &super::request::RootfsSource,
        binds: &[super::guest_spec::HostBind],
    ) -> Result<Self> {
        let (target, guest_path) = shared_paths(shared, id);
        let guard = DirGuard::adopt(shared.join(id));
        mount_rootfs(&src.mounts, &src.bundle_rootfs, &target)?;
        let staging = shared.parent().unwrap_or(shared).join("staging").join(id);
        super::guest_spec::mount_binds(binds, guard.path(), &staging)?;
        Ok(Self {
            target,
            guest_path,
            guard,
        })
    }

    /// Keeps the mount (the container now owns it); returns the mount point.
    pub fn keep(self) -> PathBuf {
        let _ = self.guard.release();
        self.target
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let (f, d) = parse_options(&[
            "rbind".into(),
            "ro".into(),
            "lowerdir=/a:/b".into(),
            "index=off".into(),
        ]);
        assert!(f.contains(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY));
        assert_eq!(d, vec!["lowerdir=/a:/b", "index=off"]);
    }

    #[test]
    fn guards_remove_their_directory_unless_released() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("state/pod");
        let g = DirGuard::create(&d).unwrap();
        std::fs::write(d.join("f"), "x").unwrap();
        assert!(matches!(
            DirGuard::create(&d),
            Err(ShimError::AlreadyExists(_))
        ));
        drop(g);
        assert!(!d.exists());
        let g = DirGuard::create(&d).unwrap();
        assert_eq!(g.release(), d);
        assert!(d.exists());
    }

    #[test]
    fn a_failed_rootfs_mount_leaves_no_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Mount::new();
        m.type_ = "erofs".into();
        let src = super::super::request::RootfsSource {
            mounts: vec![m],
            bundle_rootfs: dir.path().join("b"),
        };
        assert!(SharedRootfs::mount(dir.path(), "c1", &src, &[]).is_err());
        assert!(!dir.path().join("c1").exists());
    }

    #[test]
    fn unsupported_types_are_refused_before_mounting() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Mount::new();
        m.type_ = "erofs".into();
        m.source = "/dev/x".into();
        let e = mount_rootfs(&[m], dir.path(), &dir.path().join("t"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("mount type \"erofs\" is not supported"), "{e}");
    }
}
