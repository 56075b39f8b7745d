//! OCI layers become erofs images the Linux kernel mounts with every
//! detail of the tar intact, overlayfs honours their whiteouts, the same
//! layer always gives the same bytes, and bad layers are refused by name.
//! The mounts need root (skipped with the reason otherwise).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use cocoon_image::{layer, verity};

const UUID: [u8; 16] = [7; 16];

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// A tar stream built entry by entry.
struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Self {
        Self(tar::Builder::new(Vec::new()))
    }

    fn header(kind: tar::EntryType, mode: u32, uid: u64, mtime: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(mtime);
        h.set_size(0);
        h
    }

    fn dir(&mut self, path: &str, mode: u32, mtime: u64) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0, mtime);
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    fn file(&mut self, path: &str, mode: u32, uid: u64, data: &[u8]) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, uid, 1_700_000_000);
        h.set_size(data.len() as u64);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }

    fn link(&mut self, kind: tar::EntryType, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(kind, 0o777, 0, 1_700_000_000);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }

    fn device(&mut self, kind: tar::EntryType, path: &str, major: u32, minor: u32) -> &mut Self {
        let mut h = Self::header(kind, 0o600, 0, 1_700_000_000);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        self.0
            .append_pax_extensions(records.iter().map(|(k, v)| (*k, *v)))
            .unwrap();
        self
    }

    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn convert(tar: &[u8]) -> Result<Vec<u8>, layer::LayerError> {
    let (out, len) = layer::to_erofs(tar, std::io::Cursor::new(Vec::new()), UUID)?;
    let bytes = out.into_inner();
    assert_eq!(bytes.len() as u64, len);
    assert_eq!(len % 4096, 0);
    Ok(bytes)
}

/// The layer with one of everything.
fn full_layer() -> (Vec<u8>, Vec<u8>) {
    let tool = pseudo_random(3 * 4096 + 1, 3);
    let mut t = Tar::new();
    t.dir("etc/", 0o755, 1_600_000_000)
        .file("etc/hostname", 0o644, 0, b"first\n")
        .file("bin/tool", 0o4755, 1000, &tool)
        .file("empty", 0o600, 0, b"")
        .link(tar::EntryType::Symlink, "etc/link", "hostname")
        .link(tar::EntryType::Link, "bin/tool2", "bin/tool")
        .device(tar::EntryType::Char, "dev/null", 1, 3)
        .device(tar::EntryType::Block, "dev/sda", 8, 0)
        .device(tar::EntryType::Fifo, "run/fifo", 0, 0);
    let long = format!("deep/{}/{}", "d".repeat(100), "f".repeat(200));
    t.file(&long, 0o644, 0, b"long");
    t.pax(&[
        (
            "SCHILY.xattr.security.capability",
            &[
                1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        ),
        ("SCHILY.xattr.user.note", b"hello"),
        ("uid", b"100000"),
    ])
    .file("caps", 0o755, 0, b"#!/bin/sh\n");
    t.dir("many/", 0o755, 0);
    for i in 0..300 {
        t.file(
            &format!("many/f{i:03}"),
            0o644,
            0,
            format!("{i}").as_bytes(),
        );
    }
    // The same path again: the later entry wins.
    t.file("etc/hostname", 0o640, 0, b"second\n");
    (t.bytes(), tool)
}

/// A read-only mount (on a temp dir it keeps), undone on drop.
struct Mount(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl Mount {
    fn erofs(image: &Path) -> Result<Self, String> {
        let dir = tempfile::tempdir().unwrap();
        for opts in ["ro", "ro,loop"] {
            let o = Command::new("mount")
                .args(["-t", "erofs", "-o", opts])
                .arg(image)
                .arg(dir.path())
                .output()
                .unwrap();
            if o.status.success() {
                return Ok(Self(dir.path().to_path_buf(), dir));
            }
            if opts == "ro,loop" {
                return Err(String::from_utf8_lossy(&o.stderr).into_owned());
            }
        }
        unreachable!()
    }

    fn overlay(lower: &[&Path]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let lowerdir: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
        let o = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!("ro,lowerdir={}", lowerdir.join(":")))
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        Self(dir.path().to_path_buf(), dir)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let o = Command::new("getfattr")
        .args(["--absolute-names", "--only-values", "-h", "-n", name])
        .arg(path)
        .output()
        .ok()?;
    o.status.success().then_some(o.stdout)
}

fn can_mount(test: &str) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if !root {
        eprintln!("SKIP {test}: mounting erofs images needs root");
    }
    root
}

#[test]
fn the_kernel_mounts_a_layer_with_everything_in_it() {
    let test = "the_kernel_mounts_a_layer_with_everything_in_it";
    let (tar, tool) = full_layer();
    let image = convert(&tar).unwrap();
    // Deterministic: the same layer, the same bytes (and so root hash).
    assert_eq!(convert(&tar).unwrap(), image);
    if !can_mount(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layer.erofs");
    std::fs::write(&path, &image).unwrap();
    if let Ok(o) = Command::new("fsck.erofs").arg(&path).output() {
        assert!(
            o.status.success(),
            "fsck.erofs: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let m = match Mount::erofs(&path) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIP {test}: this kernel cannot mount erofs: {e}");
            return;
        }
    };
    let r = &m.0;
    let meta = |p: &str| std::fs::symlink_metadata(r.join(p)).unwrap();
    assert_eq!(std::fs::read(r.join("etc/hostname")).unwrap(), b"second\n");
    assert_eq!(meta("etc/hostname").mode(), 0o100_640);
    assert_eq!(meta("etc").mtime(), 1_600_000_000);
    assert_eq!(meta("etc/hostname").mtime(), 1_700_000_000);
    assert_eq!(std::fs::read(r.join("bin/tool")).unwrap(), tool);
    let t = meta("bin/tool");
    assert_eq!(
        (t.mode(), t.uid(), t.gid(), t.nlink()),
        (0o104_755, 1000, 1000, 2)
    );
    assert_eq!(meta("bin/tool2").ino(), t.ino(), "a hard link is one inode");
    // A directory the tar implies but never lists.
    let b = meta("bin");
    assert_eq!(
        (b.mode(), b.uid(), b.mtime(), b.nlink()),
        (0o040_755, 0, 0, 2)
    );
    assert_eq!(std::fs::read(r.join("empty")).unwrap(), b"");
    assert_eq!(
        std::fs::read_link(r.join("etc/link")).unwrap(),
        Path::new("hostname")
    );
    let n = meta("dev/null");
    assert!(n.file_type().is_char_device());
    assert_eq!(n.rdev(), (1 << 8) | 3);
    let s = meta("dev/sda");
    assert!(s.file_type().is_block_device());
    assert_eq!(s.rdev(), 8 << 8);
    assert!(meta("run/fifo").file_type().is_fifo());
    let long = format!("deep/{}/{}", "d".repeat(100), "f".repeat(200));
    assert_eq!(std::fs::read(r.join(long)).unwrap(), b"long");
    assert_eq!(meta("caps").uid(), 100_000);
    if Command::new("getfattr").arg("--version").output().is_ok() {
        assert_eq!(xattr(&r.join("caps"), "user.note").unwrap(), b"hello");
        assert_eq!(
            xattr(&r.join("caps"), "security.capability").unwrap().len(),
            20
        );
    } else {
        eprintln!("{test}: getfattr (attr) missing: extended attributes not read back");
    }
    let mut names: Vec<String> = std::fs::read_dir(r.join("many"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 300);
    assert_eq!(names[0], "f000");
    assert_eq!(std::fs::read(r.join("many/f299")).unwrap(), b"299");
    // Root: its "." ".." and the subdirectories' "..".
    // (etc, bin, dev, run, deep, many).
    assert_eq!(meta("").nlink(), 2 + 6);

    // Its dm-verity tree is what veritysetup accepts.
    let hash = dir.path().join("layer.verity");
    let tree = verity::format(
        &mut &image[..],
        image.len() as u64,
        &verity::Params {
            salt: vec![],
            uuid: UUID,
        },
        &mut std::fs::File::create(&hash).unwrap(),
    )
    .unwrap();
    if let Ok(o) = Command::new("veritysetup")
        .arg("verify")
        .arg(&path)
        .arg(&hash)
        .arg(tree.root_hex())
        .output()
    {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

#[test]
fn compressed_layers_give_the_same_image_as_the_plain_tar() {
    let (tar, _) = full_layer();
    let plain = convert(&tar).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    let gz = gz.finish().unwrap();
    assert_eq!(convert(&gz).unwrap(), plain, "gzip");
    // Two gzip members (what parallel compressors write) are one stream.
    let (a, b) = tar.split_at(tar.len() / 2);
    let mut two = Vec::new();
    for part in [a, b] {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut e, part).unwrap();
        two.extend(e.finish().unwrap());
    }
    assert_eq!(convert(&two).unwrap(), plain, "two gzip members");
    let zst = zstd::stream::encode_all(&tar[..], 3).unwrap();
    assert_eq!(convert(&zst).unwrap(), plain, "zstd");
    // A truncated zstd stream is an error, not a shorter image.
    assert!(convert(&zst[..zst.len() / 2]).is_err());
}

#[test]
fn overlayfs_honours_the_whiteouts() {
    let test = "overlayfs_honours_the_whiteouts";
    let mut lower = Tar::new();
    lower
        .file("old/gone", 0o644, 0, b"x")
        .file("old/kept", 0o644, 0, b"kept")
        .file("opq/hidden", 0o644, 0, b"x");
    let mut upper = Tar::new();
    upper
        .file("old/.wh.gone", 0o644, 0, b"")
        .dir("opq/", 0o755, 0)
        .file("opq/.wh..wh..opq", 0o644, 0, b"")
        .file("opq/new", 0o644, 0, b"new");
    let (lower, upper) = (
        convert(&lower.bytes()).unwrap(),
        convert(&upper.bytes()).unwrap(),
    );
    if !can_mount(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (lp, up) = (dir.path().join("lower"), dir.path().join("upper"));
    std::fs::write(&lp, lower).unwrap();
    std::fs::write(&up, upper).unwrap();
    let (Ok(l), Ok(u)) = (Mount::erofs(&lp), Mount::erofs(&up)) else {
        eprintln!("SKIP {test}: this kernel cannot mount erofs");
        return;
    };
    // In the layer itself: a 0:0 character device and the opaque xattr.
    let w = std::fs::symlink_metadata(u.0.join("old/gone")).unwrap();
    assert!(w.file_type().is_char_device() && w.rdev() == 0);
    if Command::new("getfattr").arg("--version").output().is_ok() {
        assert_eq!(
            xattr(&u.0.join("opq"), "trusted.overlay.opaque").unwrap(),
            b"y"
        );
    }
    let merged = Mount::overlay(&[&u.0, &l.0]);
    let m = &merged.0;
    assert!(!m.join("old/gone").exists(), "the whiteout hides it");
    assert_eq!(std::fs::read(m.join("old/kept")).unwrap(), b"kept");
    assert!(
        !m.join("opq/hidden").exists(),
        "the opaque directory hides it"
    );
    assert_eq!(std::fs::read(m.join("opq/new")).unwrap(), b"new");
    drop(merged);
}

#[test]
fn bad_layers_are_refused_by_name() {
    // Not a tar at all.
    let e = convert(&pseudo_random(5000, 9)).unwrap_err().to_string();
    assert!(e.contains("not a readable tar"), "{e}");
    // A truncated file.
    let mut t = Tar::new();
    t.file("big", 0o644, 0, &pseudo_random(10_000, 1));
    let mut bytes = t.bytes();
    bytes.truncate(4096);
    let e = convert(&bytes).unwrap_err().to_string();
    assert!(e.contains("big") || e.contains("tar"), "{e}");
    // A path escaping the layer.
    let mut raw = tar::Header::new_gnu();
    raw.set_entry_type(tar::EntryType::Regular);
    raw.set_size(0);
    raw.set_mode(0o644);
    {
        let name = b"../escape";
        raw.as_old_mut().name[..name.len()].copy_from_slice(name);
    }
    raw.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&raw, &[][..]).unwrap();
    let e = convert(&b.into_inner().unwrap()).unwrap_err().to_string();
    assert!(e.contains("../escape") && e.contains("escapes"), "{e}");
    // A hard link to nothing.
    let mut t = Tar::new();
    t.link(tar::EntryType::Link, "a", "missing");
    let e = convert(&t.bytes()).unwrap_err().to_string();
    assert!(e.contains("\"a\"") && e.contains("missing"), "{e}");
    // An xattr namespace erofs cannot hold.
    let mut t = Tar::new();
    t.pax(&[("SCHILY.xattr.os2.weird", b"v")])
        .file("f", 0o644, 0, b"");
    let e = convert(&t.bytes()).unwrap_err().to_string();
    assert!(e.contains("os2.weird"), "{e}");
    // gzip is read as well.
    let mut t = Tar::new();
    t.file("f", 0o644, 0, b"zipped");
    let plain = t.bytes();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &plain).unwrap();
    assert_eq!(
        convert(&gz.finish().unwrap()).unwrap(),
        convert(&plain).unwrap()
    );
}
