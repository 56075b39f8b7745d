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

/// Decodes a mountinfo field: the kernel writes space, tab, newline and
/// backslash as `\040`, `\011`, `\012` and `\134`.
fn unescape_mountinfo(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Every mount point of this mount namespace, decoded.
pub fn mount_points() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .collect()
}

/// Mount points at or below `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = mount_points()
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    points.dedup();
    points
}

/// Whether `path` is a mount point.
pub fn is_mounted(path: &Path) -> bool {
    mount_points().iter().any(|p| p == path)
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
    for p in mounts_under(dir) {
        umount2(&p, MntFlags::MNT_DETACH)
            .map_err(|e| ShimError::Rootfs(format!("unmount {}: {e}", p.display())))?;
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
            cocoon_vmm::private::create_dir_all(parent)
                .map_err(|e| ShimError::io(format!("create {}", parent.display()), e))?;
        }
        match cocoon_vmm::private::create_dir(dir) {
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
/// volume's files. The removal itself never crosses into another file
/// system (each directory's device is compared with `dir`'s), so even a
/// mount this process cannot see is left alone.
pub fn remove_unmounted(dir: &Path) -> Result<()> {
    unmount_all_under(dir)?;
    if let Some(p) = mounts_under(dir).first() {
        return Err(ShimError::Rootfs(format!(
            "{} is still mounted; {} is left in place",
            p.display(),
            dir.display()
        )));
    }
    match std::fs::symlink_metadata(dir) {
        Ok(m) => remove_tree_on_dev(dir, std::os::unix::fs::MetadataExt::dev(&m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ShimError::io(format!("stat {}", dir.display()), e)),
    }
}

/// Removes `dir` and what is below it on device `dev`; a directory on
/// another device (a mount point) makes the removal fail instead.
fn remove_tree_on_dev(dir: &Path, dev: u64) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let io = |what: &str, p: &Path, e: std::io::Error| {
        ShimError::io(format!("{what} {}", p.display()), e)
    };
    for entry in std::fs::read_dir(dir).map_err(|e| io("read", dir, e))? {
        let path = entry.map_err(|e| io("read", dir, e))?.path();
        let m = std::fs::symlink_metadata(&path).map_err(|e| io("stat", &path, e))?;
        if m.is_dir() {
            if m.dev() != dev {
                return Err(ShimError::Rootfs(format!(
                    "{} is another file system (a mount); {} is left in place",
                    path.display(),
                    dir.display()
                )));
            }
            remove_tree_on_dev(&path, dev)?;
        } else {
            std::fs::remove_file(&path).map_err(|e| io("remove", &path, e))?;
        }
    }
    std::fs::remove_dir(dir).map_err(|e| io("remove", dir, e))
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
    /// Mounts the container's rootfs (`None`: an empty directory, for a
    /// container on verified layers) at `<shared>/<id>/rootfs` and its host
    /// volumes at `<shared>/<id>/mounts/<n>`.
    pub fn mount(
        shared: &Path,
        id: &str,
        src: Option<&super::request::RootfsSource>,
        binds: &[super::guest_spec::HostBind],
    ) -> Result<Self> {
        let (target, guest_path) = shared_paths(shared, id);
        let guard = DirGuard::adopt(shared.join(id));
        match src {
            Some(src) => mount_rootfs(&src.mounts, &src.bundle_rootfs, &target)?,
            None => std::fs::create_dir_all(&target)
                .map_err(|e| ShimError::io(format!("mkdir {}", target.display()), e))?,
        }
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
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(
            unescape_mountinfo(r"/run/my\040state/a\011b\134c\012d"),
            Path::new("/run/my state/a\tb\\c\nd")
        );
        assert_eq!(unescape_mountinfo(r"/x\04"), Path::new(r"/x\04"));
        assert_eq!(unescape_mountinfo(r"/x\9999"), Path::new(r"/x\9999"));
    }

    #[test]
    fn a_state_dir_with_a_space_is_unmounted_and_never_deleted_through() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: mounting needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("my state\tdir");
        let volume = d.path().join("volume");
        std::fs::create_dir_all(state.join("c1/rootfs")).unwrap();
        std::fs::create_dir_all(&volume).unwrap();
        std::fs::write(volume.join("precious"), "keep").unwrap();
        let bind = |src: &Path, dst: &Path| {
            nix::mount::mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .unwrap();
        };
        bind(&volume, &state.join("c1/rootfs"));
        assert!(
            is_mounted(&state.join("c1/rootfs")),
            "the escaped mount point is found"
        );
        remove_unmounted(&state).unwrap();
        assert!(!state.exists());
        assert_eq!(
            std::fs::read_to_string(volume.join("precious")).unwrap(),
            "keep"
        );

        // A mount the removal does not know about (another device below
        // the directory) stops it before it deletes anything there.
        std::fs::create_dir_all(state.join("c2/rootfs")).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &state.join("c2/rootfs"),
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        std::fs::write(state.join("c2/rootfs/precious"), "keep").unwrap();
        let dev = std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(&state).unwrap());
        let e = remove_tree_on_dev(&state, dev).unwrap_err().to_string();
        assert!(e.contains("another file system"), "{e}");
        assert!(state.join("c2/rootfs/precious").exists());
        remove_unmounted(&state).unwrap();
    }

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
        assert!(SharedRootfs::mount(dir.path(), "c1", Some(&src), &[]).is_err());
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
