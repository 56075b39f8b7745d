//! A container's root filesystem from verified layers
//! (docs/verified-layers.md).
//!
//! Each layer is a read-only virtio-blk disk the host hot-plugs: an erofs
//! image followed by its dm-verity hash device. Before the first block is
//! read, the layers' root hashes, bottom to top, must be exactly one image
//! of the pod's initdata policy (measured at launch, so the host cannot
//! change it). The agent then puts a dm-verity target over each disk with
//! that root hash, mounts the erofs read-only, and stacks the layers with
//! overlayfs under a tmpfs upper directory in guest memory. Every block
//! read later is checked against the hash; a changed block is an I/O error
//! (EIO) for the reader, never its contents.
//!
//! Device mapper is driven through its ioctl interface
//! (`include/uapi/linux/dm-ioctl.h`, interface 4): create, load a one-line
//! verity table, resume; remove with deferred removal, so a device still
//! held by a dying container's mounts goes once the last user closes it.

use std::ffi::CString;
use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cocoon_protocol::agent::VerifiedLayer;
use cocoon_protocol::layers;
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{Error, Result};
use crate::oci::{ContainerSpec, ProcessSpec};
use crate::policy::PodPolicy;

/// Where each container's layers are mounted.
pub const LAYERS_DIR: &str = "/run/cocoon/layers";
/// How long a layer disk may take to appear after the host plugged it.
const DISK_WAIT: Duration = Duration::from_secs(30);
/// dm-verity data and hash block size of Cocoon's layers.
const BLOCK: u64 = 4096;

/// A container's mounted layer stack.
#[derive(Debug)]
pub struct LayerStack {
    dir: PathBuf,
    /// The overlay mount: the container's root.
    pub root: PathBuf,
    mounts: Vec<PathBuf>,
    devices: Vec<String>,
}

impl LayerStack {
    /// Unmounts everything and removes the verity devices (deferred while
    /// a mount namespace still holds them).
    pub fn teardown(&self) {
        let _ = umount2(&self.root, MntFlags::MNT_DETACH);
        for m in self.mounts.iter().rev() {
            let _ = umount2(m, MntFlags::MNT_DETACH);
        }
        for d in self.devices.iter().rev() {
            let _ = dm::remove(d);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn invalid(problem: String) -> Error {
    Error::InvalidArgument {
        field: "layers",
        problem,
    }
}

/// Checks `layers` against the policy: well-formed, and exactly one
/// allowed image. Returns that image's index.
pub fn check(layers: &[VerifiedLayer], policy: &PodPolicy) -> Result<usize> {
    for (i, l) in layers.iter().enumerate() {
        layers::check_root_hash(&l.root_hash)
            .map_err(|e| invalid(format!("[{i}].root_hash {e}")))?;
        if l.data_blocks == 0 || l.hash_start_block <= l.data_blocks {
            return Err(invalid(format!(
                "[{i}]: data_blocks {} and hash_start_block {} do not describe an image followed by its hash tree",
                l.data_blocks, l.hash_start_block
            )));
        }
        if !is_serial(&l.serial) {
            return Err(invalid(format!(
                "[{i}].serial {:?} is not a virtio-blk serial (1-20 of A-Z a-z 0-9 _ -)",
                l.serial
            )));
        }
    }
    if policy.images.is_empty() {
        return Err(Error::PermissionDenied(
            "the host offers verified layers, but the pod's initdata policy lists no images to check them against; add the image's [[images]] (`cocoon policy IMAGE`) to cocoon-policy.toml".into(),
        ));
    }
    let hashes: Vec<&str> = layers.iter().map(|l| l.root_hash.as_str()).collect();
    layers::matching_image(&policy.images, &hashes).ok_or_else(|| {
        let shown: Vec<String> = layers
            .iter()
            .map(|l| format!("{} ({})", l.root_hash, l.digest))
            .collect();
        Error::PermissionDenied(format!(
            "the container's layers [{}] are not an image of the pod's initdata policy ({} image(s) allowed; every layer, in order): refused",
            shown.join(", "),
            policy.images.len()
        ))
    })
}

/// Checks what a container on `layers` runs against the pins of the
/// policy's entries for those layers (`args`, `cwd`, `env`, `volumes`):
/// the host writes the OCI spec, so without this it could run any program
/// of a verified image, or put a volume of its own over the image's
/// files. `env` is as the host wrote it (sealed values still sealed);
/// `volumes` are [`host_mount_points`].
pub fn check_process(
    layers: &[VerifiedLayer],
    policy: &PodPolicy,
    process: &ProcessSpec,
    volumes: &[&str],
) -> Result<usize> {
    let hashes: Vec<&str> = layers.iter().map(|l| l.root_hash.as_str()).collect();
    let p = layers::Process {
        args: &process.args,
        cwd: &process.cwd,
        env: &process.env,
        volumes,
    };
    layers::allowed_image(&policy.images, &hashes, &p).map_err(|why| {
        Error::PermissionDenied(match why {
            Some(why) => format!(
                "the pod's initdata policy allows the container's image, but not what the host asks it to run: {why}; refused"
            ),
            None => "the container's layers are not an image of the pod's initdata policy: refused".into(),
        })
    })
}

/// The container paths where the host's spec puts something over the
/// image, which the `volumes` pins govern: every mount (a volume, or a
/// file system that would hide the image's files under it) and every
/// masked path, except under the kernel's own trees (`/proc`, `/sys`,
/// `/dev`), where an image has nothing to hide.
pub fn host_mount_points(spec: &ContainerSpec) -> Vec<String> {
    let kernel = |p: &str| {
        ["/proc", "/sys", "/dev"]
            .iter()
            .any(|k| p == *k || p.strip_prefix(k).is_some_and(|r| r.starts_with('/')))
    };
    spec.mounts
        .iter()
        .map(|m| m.destination.as_str())
        .chain(spec.masked_paths.iter().map(String::as_str))
        .map(layers::clean_path)
        .filter(|p| !kernel(p))
        .collect()
}

fn is_serial(s: &str) -> bool {
    (1..=20).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The block device (`vdX`) whose virtio serial is `serial`, waiting for
/// the host's hot-plug to arrive.
fn disk_by_serial(sys_block: &Path, serial: &str, wait: Duration) -> Result<String> {
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(rd) = fs::read_dir(sys_block) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Ok(s) = fs::read_to_string(e.path().join("serial")) else {
                    continue;
                };
                if s.trim_end() == serial {
                    return Ok(name);
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::FailedPrecondition(format!(
                "no disk with serial {serial:?} appeared within {} s (the host hot-plugs each layer disk before creating the container)",
                wait.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sys(op: impl Into<String>) -> impl FnOnce(Errno) -> Error {
    let op = op.into();
    move |e| Error::sys(op, e)
}

/// Mounts `layers` (bottom to top) for container `cid`. Blocking.
pub fn assemble(cid: &str, layers: &[VerifiedLayer]) -> Result<LayerStack> {
    let dir = Path::new(LAYERS_DIR).join(cid);
    fs::create_dir_all(&dir).map_err(|e| {
        Error::sys(
            format!("mkdir {}", dir.display()),
            Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        )
    })?;
    let mut stack = LayerStack {
        root: dir.join("rootfs"),
        dir,
        mounts: Vec::new(),
        devices: Vec::new(),
    };
    match build(cid, layers, &mut stack) {
        Ok(()) => Ok(stack),
        Err(e) => {
            stack.teardown();
            Err(e)
        }
    }
}

fn mkdir(p: &Path) -> Result<()> {
    fs::create_dir_all(p).map_err(|e| {
        Error::sys(
            format!("mkdir {}", p.display()),
            Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        )
    })
}

fn build(cid: &str, layers: &[VerifiedLayer], stack: &mut LayerStack) -> Result<()> {
    let mut lowers = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let disk = disk_by_serial(Path::new("/sys/block"), &l.serial, DISK_WAIT)?;
        let devno = fs::read_to_string(format!("/sys/block/{disk}/dev"))
            .map_err(|e| Error::FailedPrecondition(format!("read /sys/block/{disk}/dev: {e}")))?
            .trim()
            .to_string();
        let name = format!("cocoon-{cid}-{i}");
        let params = format!(
            "1 {devno} {devno} {BLOCK} {BLOCK} {} {} sha256 {} -",
            l.data_blocks, l.hash_start_block, l.root_hash
        );
        let node =
            dm::create_verity(&name, l.data_blocks * (BLOCK / 512), &params).map_err(|e| {
                Error::FailedPrecondition(format!(
                    "layer {i} ({}): cannot set up dm-verity on {disk}: {e}",
                    l.digest
                ))
            })?;
        stack.devices.push(name);
        let at = stack.dir.join(format!("l{i}"));
        mkdir(&at)?;
        if let Err(e) = mount(
            Some(node.as_path()),
            &at,
            Some("erofs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
            None::<&str>,
        ) {
            return Err(if e == Errno::EIO {
                Error::FailedPrecondition(format!(
                    "layer {i} ({}) failed dm-verity verification: its blocks on {disk} do not hash to root hash {} of the pod's policy (the host's copy of the layer was changed)",
                    l.digest, l.root_hash
                ))
            } else {
                Error::sys(format!("mount layer {i} ({}) as erofs", l.digest), e)
            });
        }
        stack.mounts.push(at.clone());
        lowers.push(at);
    }
    let rw = stack.dir.join("rw");
    mkdir(&rw)?;
    mount(
        Some("tmpfs"),
        &rw,
        Some("tmpfs"),
        MsFlags::MS_NODEV,
        Some("mode=0755"),
    )
    .map_err(sys("mount the container's writable layer (tmpfs)"))?;
    stack.mounts.push(rw.clone());
    let (upper, work) = (rw.join("upper"), rw.join("work"));
    mkdir(&upper)?;
    mkdir(&work)?;
    mkdir(&stack.root)?;
    // overlayfs lists the top layer first.
    let lowerdir: Vec<String> = lowers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowerdir.join(":"),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        &stack.root,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(sys("mount the layers with overlayfs"))?;
    // The image root's own mode and owner come from the bottom layer.
    Ok(())
}

mod dm {
    //! The device-mapper ioctls Cocoon needs.
    use super::*;

    const DM_IOCTL_SIZE: usize = 312;
    /// `DM_IOCTL_SIZE` as the header's `data_start`.
    const DATA_START: u32 = 312;
    const TARGET_SPEC_SIZE: usize = 40;
    const NAME_OFFSET: usize = 48;
    const NAME_LEN: usize = 128;
    const DM_DEV_CREATE: u8 = 3;
    const DM_DEV_REMOVE: u8 = 4;
    const DM_DEV_SUSPEND: u8 = 6;
    const DM_TABLE_LOAD: u8 = 9;
    const DM_READONLY_FLAG: u32 = 1;
    const DM_DEFERRED_REMOVE: u32 = 1 << 17;
    const CONTROL: &str = "/dev/mapper/control";

    /// `_IOWR(0xfd, cmd, struct dm_ioctl)`.
    fn request(cmd: u8) -> libc::c_ulong {
        (3 << 30)
            | ((DM_IOCTL_SIZE as libc::c_ulong) << 16)
            | (0xfd << 8)
            | libc::c_ulong::from(cmd)
    }

    /// A `struct dm_ioctl` header for device `name`, with room for
    /// `payload` bytes after it.
    fn header(name: &str, flags: u32, payload: usize) -> Result<Vec<u8>> {
        if name.len() >= NAME_LEN {
            return Err(Error::FailedPrecondition(format!(
                "device-mapper name {name:?} is too long"
            )));
        }
        let size = DM_IOCTL_SIZE + payload;
        let mut b = vec![0u8; size];
        let put =
            |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        put(&mut b, 0, 4); // interface version 4.0.0
        put(&mut b, 12, u32::try_from(size).unwrap_or(u32::MAX)); // data_size
        put(&mut b, 16, DATA_START);
        put(&mut b, 28, flags);
        b[NAME_OFFSET..NAME_OFFSET + name.len()].copy_from_slice(name.as_bytes());
        Ok(b)
    }

    fn call(cmd: u8, buf: &mut [u8]) -> std::result::Result<(), Errno> {
        let control = fs::File::open(CONTROL)
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::ENODEV)))?;
        // SAFETY: buf is a dm_ioctl header of the size the request encodes,
        // followed by its declared payload (data_size covers both); the
        // kernel writes within data_size.
        let rc = unsafe { libc::ioctl(control.as_raw_fd(), request(cmd), buf.as_mut_ptr()) };
        if rc < 0 {
            Err(Errno::last())
        } else {
            Ok(())
        }
    }

    /// Creates `name` with one read-only verity target of `sectors`
    /// sectors and resumes it; returns its device node.
    pub fn create_verity(
        name: &str,
        sectors: u64,
        params: &str,
    ) -> std::result::Result<PathBuf, String> {
        let mut create = header(name, 0, 0).map_err(|e| e.to_string())?;
        call(DM_DEV_CREATE, &mut create).map_err(|e| format!("DM_DEV_CREATE: {e}"))?;
        let dev = u64::from_ne_bytes(create[40..48].try_into().unwrap_or([0; 8]));
        let loaded = (|| {
            let cparams = CString::new(params).map_err(|_| "NUL in the table".to_string())?;
            let text = cparams.as_bytes_with_nul();
            let spec_len = (TARGET_SPEC_SIZE + text.len()).next_multiple_of(8);
            let mut load = header(name, DM_READONLY_FLAG, spec_len).map_err(|e| e.to_string())?;
            load[20..24].copy_from_slice(&1u32.to_ne_bytes()); // target_count
            let s = DM_IOCTL_SIZE;
            load[s..s + 8].copy_from_slice(&0u64.to_ne_bytes()); // sector_start
            load[s + 8..s + 16].copy_from_slice(&sectors.to_ne_bytes()); // length
            load[s + 20..s + 24]
                .copy_from_slice(&u32::try_from(spec_len).unwrap_or(0).to_ne_bytes()); // next
            load[s + 24..s + 30].copy_from_slice(b"verity");
            load[s + TARGET_SPEC_SIZE..s + TARGET_SPEC_SIZE + text.len()].copy_from_slice(text);
            call(DM_TABLE_LOAD, &mut load).map_err(|e| {
                format!("DM_TABLE_LOAD (verity {params}): {e}; the kernel log (dmesg) says why")
            })?;
            let mut resume = header(name, 0, 0).map_err(|e| e.to_string())?;
            call(DM_DEV_SUSPEND, &mut resume).map_err(|e| format!("resume: {e}"))
        })();
        if let Err(e) = loaded {
            let _ = remove(name);
            return Err(e);
        }
        let minor = nix::sys::stat::minor(dev);
        let node = PathBuf::from(format!("/dev/dm-{minor}"));
        if !node.exists() {
            let _ = remove(name);
            return Err(format!("{} did not appear (no devtmpfs?)", node.display()));
        }
        Ok(node)
    }

    /// Removes `name`, deferred while it is open.
    pub fn remove(name: &str) -> std::result::Result<(), Errno> {
        let mut b = header(name, DM_DEFERRED_REMOVE, 0).map_err(|_| Errno::EINVAL)?;
        call(DM_DEV_REMOVE, &mut b)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn requests_and_headers_follow_dm_ioctl_h() {
            // DM_DEV_CREATE and DM_TABLE_LOAD as dmsetup issues them.
            assert_eq!(request(DM_DEV_CREATE), 0xc138_fd03);
            assert_eq!(request(DM_TABLE_LOAD), 0xc138_fd09);
            let h = header("cocoon-c1-0", DM_READONLY_FLAG, 48).unwrap();
            assert_eq!(h.len(), 360);
            assert_eq!(&h[0..4], &4u32.to_ne_bytes());
            assert_eq!(&h[12..16], &360u32.to_ne_bytes());
            assert_eq!(&h[16..20], &312u32.to_ne_bytes());
            assert_eq!(&h[28..32], &1u32.to_ne_bytes());
            assert_eq!(&h[48..59], b"cocoon-c1-0");
            assert!(header(&"x".repeat(128), 0, 0).is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_protocol::layers::ImagePolicy;

    fn layer(hash: &str, serial: &str) -> VerifiedLayer {
        let mut l = VerifiedLayer::new();
        l.root_hash = hash.into();
        l.serial = serial.into();
        l.data_blocks = 10;
        l.hash_start_block = 11;
        l.digest = "sha256:00".into();
        l
    }

    #[test]
    fn only_an_allowed_image_in_order_passes() {
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let policy = PodPolicy {
            images: vec![ImagePolicy {
                name: "app".into(),
                layers: vec![a.clone(), b.clone()],
                ..ImagePolicy::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            check(&[layer(&a, "l0"), layer(&b, "l1")], &policy).unwrap(),
            0
        );
        let e = check(&[layer(&b, "l0"), layer(&a, "l1")], &policy).unwrap_err();
        assert!(matches!(e, Error::PermissionDenied(_)), "{e}");
        assert!(
            e.to_string()
                .contains("not an image of the pod's initdata policy"),
            "{e}"
        );
        let e = check(&[layer(&a, "l0")], &PodPolicy::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("lists no images"), "{e}");
        let e = check(&[layer(&a[..10], "l0")], &policy)
            .unwrap_err()
            .to_string();
        assert!(e.contains("layers") && e.contains("[0].root_hash"), "{e}");
        let e = check(&[layer(&a, "bad serial")], &policy)
            .unwrap_err()
            .to_string();
        assert!(e.contains("serial"), "{e}");
        let mut l = layer(&a, "l0");
        l.hash_start_block = 10;
        let e = check(&[l], &policy).unwrap_err().to_string();
        assert!(e.contains("hash_start_block"), "{e}");
    }

    #[test]
    fn the_host_cannot_run_another_command_of_a_pinned_image() {
        let a = "a".repeat(64);
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let policy = PodPolicy {
            images: vec![ImagePolicy {
                name: "app".into(),
                layers: vec![a.clone()],
                args: Some(s(&["/app/server"])),
                volumes: Some(s(&["/etc/hosts"])),
                ..ImagePolicy::default()
            }],
            ..Default::default()
        };
        let mut p = ProcessSpec {
            args: s(&["/app/server"]),
            cwd: "/".into(),
            ..Default::default()
        };
        let layers = [layer(&a, "l0")];
        assert_eq!(
            check_process(&layers, &policy, &p, &["/etc/hosts"]).unwrap(),
            0
        );
        let e = check_process(&layers, &policy, &p, &["/app"]).unwrap_err();
        assert!(matches!(e, Error::PermissionDenied(_)), "{e}");
        assert!(
            e.to_string()
                .contains("images[0] (\"app\"): a host mount at \"/app\""),
            "{e}"
        );
        p.args = s(&["/bin/sh"]);
        let e = check_process(&layers, &policy, &p, &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not what the host asks it to run")
                && e.contains("process.args [\"/bin/sh\"]"),
            "{e}"
        );
    }

    #[test]
    fn mounts_and_masks_over_the_image_are_host_mount_points() {
        use crate::oci::{MountKind, SpecMount};
        let m = |dest: &str, kind: MountKind| SpecMount {
            destination: dest.into(),
            kind,
            flags: 0,
            propagation: 0,
            data: String::new(),
        };
        let fs = |t: &str| MountKind::Fs {
            fstype: t.into(),
            source: t.into(),
        };
        let bind = MountKind::Bind {
            source: "c/mounts/0".into(),
            recursive: false,
        };
        let spec = ContainerSpec {
            mounts: vec![
                m("/proc", fs("proc")),
                m("/dev", fs("tmpfs")),
                m("/dev/pts", MountKind::Devpts),
                m("/dev/shm", MountKind::PodShm),
                m("/sys/fs/cgroup", fs("cgroup2")),
                m("/dev/termination-log", bind.clone()),
                m("/etc//hosts", bind),
                m("/app/config", fs("tmpfs")),
                m("/development", fs("tmpfs")),
            ],
            masked_paths: vec!["/proc/kcore".into(), "/app/auth.yaml".into()],
            ..Default::default()
        };
        assert_eq!(
            host_mount_points(&spec),
            [
                "/etc/hosts",
                "/app/config",
                "/development",
                "/app/auth.yaml"
            ]
        );
    }

    #[test]
    fn a_disk_is_found_by_its_serial_or_the_wait_ends() {
        let d = tempfile::tempdir().unwrap();
        for (n, s) in [("vda", "disk0\n"), ("vdb", "l-sha-1\n")] {
            fs::create_dir(d.path().join(n)).unwrap();
            fs::write(d.path().join(n).join("serial"), s).unwrap();
        }
        fs::create_dir(d.path().join("loop0")).unwrap();
        assert_eq!(
            disk_by_serial(d.path(), "l-sha-1", Duration::ZERO).unwrap(),
            "vdb"
        );
        let e = disk_by_serial(d.path(), "nope", Duration::from_millis(100))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"nope\"") && e.contains("appeared"), "{e}");
    }
}
