//! Verified layers from real images: the test busybox image (a layer GNU
//! tar wrote from a real root filesystem) and the same image as
//! containerd exports it. The layer's erofs image, mounted by the kernel,
//! holds exactly the root filesystem the layer was made from, and the root
//! hashes do not depend on which archive the image came in.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use cocoon_image::{layer, oci};
use cocoon_tests::busybox_rootfs;
use cocoon_tests::containerd::{image_archives, out, IMAGE};

/// Every entry under `root`: path, type and mode, owner, size, content
/// digest or link target (mtimes left out: the layer sets them to 0).
fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let what = if m.is_dir() {
                stack.push(p.clone());
                String::new()
            } else if m.file_type().is_symlink() {
                std::fs::read_link(&p).unwrap().display().to_string()
            } else if m.is_file() {
                let data = std::fs::read(&p).unwrap();
                format!("{} {:x}", data.len(), sha2_digest(&data))
            } else {
                format!("rdev {}", m.rdev())
            };
            out.push(format!(
                "{rel} {:o} {}:{} {what}",
                m.mode(),
                m.uid(),
                m.gid()
            ));
        }
    }
    out.sort();
    out
}

fn sha2_digest(data: &[u8]) -> u128 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(data);
    u128::from_be_bytes(d[..16].try_into().unwrap())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

#[test]
fn a_real_layer_mounts_as_the_root_filesystem_it_was_made_from() {
    let test = "a_real_layer_mounts_as_the_root_filesystem_it_was_made_from";
    let (busybox, _) = image_archives();
    let scratch = tempfile::tempdir().unwrap();
    let hashes = oci::layer_hashes(busybox, scratch.path()).unwrap();
    assert_eq!(hashes.len(), 1, "{hashes:?}");
    // The layer blob out of the archive, converted and mounted.
    let o = Command::new("tar")
        .arg("-xf")
        .arg(busybox)
        .arg("-C")
        .arg(scratch.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let blob = scratch
        .path()
        .join("blobs/sha256")
        .join(hashes[0].digest.trim_start_matches("sha256:"));
    let image = scratch.path().join("layer.erofs");
    let (_, len) = layer::to_erofs(
        std::fs::File::open(&blob).unwrap(),
        std::fs::File::create(&image).unwrap(),
        oci::LAYER_FS_UUID,
    )
    .unwrap();
    assert_eq!(len, hashes[0].image_bytes);
    if !is_root() {
        eprintln!("SKIP {test} (the mount): needs root");
        return;
    }
    let mnt = tempfile::tempdir().unwrap();
    let o = Command::new("mount")
        .args(["-t", "erofs", "-o", "ro"])
        .arg(&image)
        .arg(mnt.path())
        .output()
        .unwrap();
    if !o.status.success() {
        eprintln!("SKIP {test} (the mount): {}", out(&o));
        return;
    }
    let mounted = listing(mnt.path());
    let _ = Command::new("umount").arg(mnt.path()).status();
    assert_eq!(mounted, listing(busybox_rootfs()));
    // Not two empty trees: busybox itself and the 10 MiB data file.
    assert!(
        mounted
            .iter()
            .any(|l| l.starts_with("bin/busybox 100755 0:0 "))
            && mounted
                .iter()
                .any(|l| l.starts_with("data/big 100644 0:0 10485760 ")),
        "{mounted:?}"
    );
}

#[test]
fn the_root_hashes_do_not_depend_on_the_archive() {
    let test = "the_root_hashes_do_not_depend_on_the_archive";
    let Some((_env, sb, ctd)) = cocoon_tests::containerd::setup(test, &["default"]) else {
        return;
    };
    let (busybox, _) = image_archives();
    let scratch = tempfile::tempdir().unwrap();
    let ours = oci::layer_hashes(busybox, scratch.path()).unwrap();
    let exported = scratch.path().join("exported.tar");
    let o = ctd
        .ctr(&["images", "export", &exported.display().to_string(), IMAGE])
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let theirs = oci::layer_hashes(&exported, scratch.path()).unwrap();
    assert_eq!(theirs, ours);
    drop(ctd);
    sb.assert_clean();
}
