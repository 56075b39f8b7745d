//! The node's layer cache: built once and reused, the file holds the
//! image and its hash device as `veritysetup verify --hash-offset` reads
//! them, the oldest entries go beyond the cap, a blob that is not the
//! digest's is refused leaving nothing, concurrent users build once.

use std::io::Read;
use std::path::Path;
use std::process::Command;

use cocoon_image::cache::LayerCache;
use sha2::{Digest, Sha256};

fn layer(seed: u8, size: usize) -> (String, Vec<u8>) {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size as u64);
    b.append_data(&mut h, format!("file{seed}"), &vec![seed; size][..])
        .unwrap();
    let bytes = b.into_inner().unwrap();
    (
        format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
        bytes,
    )
}

fn reader(bytes: &[u8]) -> impl FnOnce() -> std::io::Result<Box<dyn Read>> + '_ {
    move || Ok(Box::new(std::io::Cursor::new(bytes.to_vec())) as Box<dyn Read>)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn built_once_reused_and_verifiable() {
    let dir = tempfile::tempdir().unwrap();
    let cache = LayerCache::open(dir.path(), 1 << 30).unwrap();
    let (digest, bytes) = layer(1, 100_000);
    let (first, built) = cache.get_or_build(&digest, reader(&bytes)).unwrap();
    assert!(built);
    let (again, built) = cache
        .get_or_build(&digest, || panic!("a cached layer is not read again"))
        .unwrap();
    assert!(!built);
    assert_eq!(again, first);
    assert_eq!(std::fs::metadata(&first.path).unwrap().len(), first.len);
    // The root hash is the layer's policy hash.
    let oci = dir.path().join("oci");
    let blob = oci
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
    std::fs::write(&blob, &bytes).unwrap();
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": bytes.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": bytes.len()}]})
    .to_string();
    let mhex = hex::encode(Sha256::digest(manifest.as_bytes()));
    std::fs::write(oci.join("blobs/sha256").join(&mhex), &manifest).unwrap();
    std::fs::write(
        oci.join("index.json"),
        serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{mhex}"), "size": manifest.len()}]})
        .to_string(),
    )
    .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let policy = cocoon_image::oci::layer_hashes(&oci, scratch.path()).unwrap();
    assert_eq!(policy[0].root_hash, first.root_hash);
    // veritysetup reads the image and, at its end, the hash device.
    let offset = (first.data_blocks * 4096).to_string();
    match Command::new("veritysetup")
        .arg("verify")
        .arg(&first.path)
        .arg(&first.path)
        .arg(&first.root_hash)
        .args(["--hash-offset", &offset])
        .output()
    {
        Ok(o) => assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr)),
        Err(_) => eprintln!("veritysetup missing (cryptsetup-bin): the file layout is not checked"),
    }
}

#[test]
fn the_oldest_entries_go_beyond_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let layers: Vec<_> = (1..=3).map(|i| layer(i, 200_000)).collect();
    // Room for two entries (each ~204 KiB of image plus its tree).
    let cache = LayerCache::open(dir.path(), 500_000).unwrap();
    let mut paths = Vec::new();
    for (digest, bytes) in &layers {
        let (e, _) = cache.get_or_build(digest, reader(bytes)).unwrap();
        paths.push(e.path);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!paths[0].exists(), "the oldest is evicted");
    assert!(paths[1].exists() && paths[2].exists());
    // Using an entry makes it the newest: the next build evicts the other.
    let _ = cache
        .get_or_build(&layers[1].0, || panic!("cached"))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let (d4, b4) = layer(4, 200_000);
    cache.get_or_build(&d4, reader(&b4)).unwrap();
    assert!(paths[1].exists(), "used recently");
    assert!(!paths[2].exists(), "least recently used");
}

#[test]
fn a_blob_that_is_not_its_digest_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = LayerCache::open(dir.path(), 1 << 30).unwrap();
    let (digest, _) = layer(1, 10_000);
    let (_, other) = layer(2, 10_000);
    let e = cache
        .get_or_build(&digest, reader(&other))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&digest) && e.contains("the blob read has digest"),
        "{e}"
    );
    let hex = digest.trim_start_matches("sha256:");
    assert_eq!(names(dir.path()), vec![format!("{hex}.lock")]);
    // A corrupt tar with the right digest: refused, nothing left either.
    let junk = vec![0x42u8; 3000];
    let jd = format!("sha256:{}", hex::encode(Sha256::digest(&junk)));
    let e = cache
        .get_or_build(&jd, reader(&junk))
        .unwrap_err()
        .to_string();
    assert!(e.contains("tar"), "{e}");
    assert!(names(dir.path()).iter().all(|n| n.ends_with(".lock")));
    for bad in [
        "sha256:abc",
        "md5:00",
        &format!("sha256:{}", "A".repeat(64)),
    ] {
        let e = cache
            .get_or_build(bad, reader(&other))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sha256:<64 hex digits>"), "{e}");
    }
}

#[test]
fn concurrent_users_build_once() {
    let dir = tempfile::tempdir().unwrap();
    let (digest, bytes) = layer(7, 300_000);
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let cache = LayerCache::open(dir.path(), 1 << 30).unwrap();
                let (digest, bytes) = (&digest, &bytes);
                s.spawn(move || cache.get_or_build(digest, reader(bytes)).unwrap())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|(_, built)| *built).count(), 1);
    assert!(results.windows(2).all(|w| w[0].0 == w[1].0));
}
