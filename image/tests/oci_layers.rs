//! The root hashes of an OCI image's layers, from a layout directory and
//! from the same layout in a tar archive: one per layer, bottom first,
//! each what `veritysetup format` gives for the layer's erofs image; a blob
//! that does not match its digest is refused.

use std::path::Path;
use std::process::Command;

use cocoon_image::{layer, oci, verity};
use sha2::{Digest, Sha256};

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn put_blob(dir: &Path, bytes: &[u8]) -> (String, usize) {
    let hex = hex::encode(Sha256::digest(bytes));
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("blobs/sha256").join(&hex), bytes).unwrap();
    (format!("sha256:{hex}"), bytes.len())
}

/// An OCI layout with a plain and a gzip layer; returns the layers' bytes.
fn layout(dir: &Path) -> Vec<Vec<u8>> {
    let l1 = tar_of(&[("etc/hostname", b"base\n")]);
    let l2_plain = tar_of(&[("bin/tool", b"#!/bin/sh\n"), ("etc/.wh.hostname", b"")]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &l2_plain).unwrap();
    let l2 = gz.finish().unwrap();
    let (d1, s1) = put_blob(dir, &l1);
    let (d2, s2) = put_blob(dir, &l2);
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{"Entrypoint":["/bin/tool"],"Cmd":["--serve","a b"],"Env":["LANG=C"],"WorkingDir":"/srv"}}"#;
    let (dc, sc) = put_blob(dir, config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": dc, "size": sc},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d1, "size": s1},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d2, "size": s2},
        ],
    })
    .to_string();
    let (dm, sm) = put_blob(dir, manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": dm, "size": sm}],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    vec![l1, l2]
}

/// The root hash of a layer computed another way: the erofs image to a
/// file, then `veritysetup format --salt -` (or, without veritysetup, the
/// crate's own tree, which its unit tests hold to veritysetup's).
fn independent_root(layer_bytes: &[u8], scratch: &Path) -> String {
    let (mut out, len) = layer::to_erofs(
        layer_bytes,
        std::io::Cursor::new(Vec::new()),
        oci::LAYER_FS_UUID,
    )
    .unwrap();
    let image = std::mem::take(out.get_mut());
    let path = scratch.join("independent.erofs");
    std::fs::write(&path, &image).unwrap();
    if let Ok(o) = Command::new("veritysetup")
        .arg("format")
        .arg(&path)
        .arg(scratch.join("independent.hash"))
        .args(["--salt", "-"])
        .output()
    {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        return text
            .lines()
            .find_map(|l| l.strip_prefix("Root hash:"))
            .unwrap()
            .trim()
            .to_string();
    }
    verity::format(
        &mut &image[..],
        len,
        &oci::layer_params(),
        &mut std::io::sink(),
    )
    .unwrap()
    .root_hex()
}

#[test]
fn layer_root_hashes_from_a_layout_and_an_archive() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("image");
    let layers = layout(&root);
    let scratch = tempfile::tempdir().unwrap();
    let hashes = oci::layer_hashes(&root, scratch.path()).unwrap();
    assert_eq!(hashes.len(), 2);
    for (h, bytes) in hashes.iter().zip(&layers) {
        assert_eq!(
            h.digest,
            format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
        );
        assert_eq!(
            h.root_hash,
            independent_root(bytes, scratch.path()),
            "{}",
            h.digest
        );
        assert_eq!(h.image_bytes % 4096, 0);
    }
    assert_ne!(hashes[0].root_hash, hashes[1].root_hash);
    // The same layout in a tar archive (as `ctr export` writes one).
    let archive = dir.path().join("image.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    b.append_dir_all(".", &root).unwrap();
    b.finish().unwrap();
    drop(b);
    assert_eq!(oci::layer_hashes(&archive, scratch.path()).unwrap(), hashes);
    // Nothing left in the scratch directory but what this test wrote.
    let left: Vec<_> = std::fs::read_dir(scratch.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with("independent."))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn blobs_that_do_not_match_their_digest_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("image");
    let layers = layout(&root);
    let scratch = tempfile::tempdir().unwrap();
    // One byte of the first layer's file changed: still a valid tar.
    let hex = hex::encode(Sha256::digest(&layers[0]));
    let blob = root.join("blobs/sha256").join(&hex);
    let mut bytes = std::fs::read(&blob).unwrap();
    let at = bytes.windows(5).position(|w| w == b"base\n").unwrap();
    bytes[at] = b'B';
    std::fs::write(&blob, bytes).unwrap();
    let e = oci::layer_hashes(&root, scratch.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains(&hex) && e.contains("does not match"), "{e}");
    // No index: named.
    std::fs::remove_file(root.join("index.json")).unwrap();
    let e = oci::layer_hashes(&root, scratch.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("index.json"), "{e}");
    // Several manifests, none for linux/amd64.
    let arm = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{hex}"), "size": 1, "platform": {"os": "linux", "architecture": "arm64"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{hex}"), "size": 1, "platform": {"os": "linux", "architecture": "s390x"}},
        ],
    });
    std::fs::write(root.join("index.json"), arm.to_string()).unwrap();
    let e = oci::layer_hashes(&root, scratch.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("linux/amd64"), "{e}");
}

#[test]
fn the_image_config_gives_the_process_to_pin() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("image");
    layout(&root);
    let p = oci::process_of(&root).unwrap();
    assert_eq!(p.args, ["/bin/tool", "--serve", "a b"]);
    assert_eq!(p.cwd, "/srv");
    // containerd's default PATH first, as ctr and CRI set it.
    assert_eq!(p.env, [oci::DEFAULT_PATH, "LANG=C"]);
    // Only Cmd, a PATH of its own, no WorkingDir.
    let p = oci::image_process(
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{"Cmd":["sh"],"Env":["PATH=/bin"]}}"#,
        "c",
    )
    .unwrap();
    assert_eq!(
        (p.args, p.cwd, p.env),
        (
            vec!["sh".to_string()],
            "/".to_string(),
            vec!["PATH=/bin".to_string()]
        )
    );
    // No command at all, or not a config: named.
    let e = oci::image_process(
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        "sha256:cfg",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("sha256:cfg") && e.contains("neither Entrypoint nor Cmd"),
        "{e}"
    );
    let e = oci::image_process(b"[]", "sha256:cfg")
        .unwrap_err()
        .to_string();
    assert!(e.contains("sha256:cfg"), "{e}");
}
