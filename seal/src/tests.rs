use std::path::Path;

use crate::format::{self, ModelKey};
use crate::open::{self, OpenOptions};
use crate::seal::{self, SealOptions};
use crate::{Kind, SealError};

const URI: &str = "kbs:///default/model/demo";

fn opts(chunk: u32) -> SealOptions {
    SealOptions {
        key_uri: URI.into(),
        chunk_size: chunk,
        threads: 3,
        salt: None,
    }
}

fn open_opts() -> OpenOptions<'static> {
    OpenOptions {
        threads: 2,
        progress: None,
    }
}

/// Deterministic bytes.
fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u64)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(u64::from(seed))
                .to_le_bytes()[0]
        })
        .collect()
}

fn round_trip_file(len: usize, chunk: u32) {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("weights.bin");
    let plain = data(len, 7);
    std::fs::write(&input, &plain).unwrap();
    let key = ModelKey::generate().unwrap();
    let sealed = d.path().join("sealed");
    let s = seal::seal(&input, &sealed, &key, &opts(chunk)).unwrap();
    assert_eq!(s.header.kind, Kind::File);
    assert_eq!(std::fs::metadata(&sealed).unwrap().len(), s.sealed_len);
    // No plaintext in the sealed file (for inputs long enough to tell).
    let bytes = std::fs::read(&sealed).unwrap();
    if len >= 64 {
        assert!(!bytes.windows(64).any(|w| w == &plain[..64]));
    }
    let out = d.path().join("out");
    let mut seen = 0;
    let mut progress = |done: u64, total: u64| {
        assert!(done <= total);
        seen = done;
    };
    let h = open::open(
        &sealed,
        &key,
        Some(&out),
        OpenOptions {
            threads: 2,
            progress: Some(&mut progress),
        },
    )
    .unwrap();
    assert_eq!(seen, len as u64);
    assert_eq!(h.files[0].size, len as u64);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        plain,
        "len {len} chunk {chunk}"
    );
    assert!(!d.path().join("out.partial").exists());
}

#[test]
fn files_round_trip_at_every_edge() {
    let chunk = format::MIN_CHUNK_SIZE;
    let c = chunk as usize;
    for len in [0, 1, c - 1, c, c + 1, 3 * c, 7 * c + 5] {
        round_trip_file(len, chunk);
    }
    // Large: 100 MiB in release builds (make test), 8 MiB in debug ones.
    let big = if cfg!(debug_assertions) {
        8 << 20
    } else {
        100 << 20
    };
    round_trip_file(big, format::DEFAULT_CHUNK_SIZE);
}

fn model_dir(root: &Path) {
    std::fs::create_dir_all(root.join("tokenizer")).unwrap();
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    std::fs::write(root.join("config.json"), b"{\"layers\": 2}").unwrap();
    std::fs::write(root.join("tokenizer-config.json"), b"{}").unwrap();
    std::fs::write(
        root.join("model-00001-of-00002.safetensors"),
        data(70_000, 1),
    )
    .unwrap();
    std::fs::write(root.join("model-00002-of-00002.safetensors"), data(8192, 2)).unwrap();
    std::fs::write(root.join("tokenizer/vocab.txt"), b"").unwrap();
    std::fs::write(root.join("run.sh"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        root.join("run.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    // A symlink to a regular file (as model caches link shards to blobs).
    std::fs::write(root.join("../blob"), b"linked").unwrap();
    std::os::unix::fs::symlink("../blob", root.join("linked.bin")).unwrap();
}

#[test]
fn directories_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("model");
    model_dir(&input);
    let key = ModelKey::generate().unwrap();
    let sealed = d.path().join("model.sealed");
    let s = seal::seal(&input, &sealed, &key, &opts(4096)).unwrap();
    assert_eq!(s.header.kind, Kind::Directory);
    let paths: Vec<&str> = s.header.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "config.json",
            "linked.bin",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "run.sh",
            "tokenizer-config.json",
            "tokenizer/vocab.txt"
        ]
    );
    assert_eq!(open::read_header_file(&sealed).unwrap(), s.header);
    let out = d.path().join("opened");
    open::open(&sealed, &key, Some(&out), open_opts()).unwrap();
    for p in paths {
        let want = std::fs::read(input.join(p)).unwrap();
        assert_eq!(std::fs::read(out.join(p)).unwrap(), want, "{p}");
    }
    let mode = |p: &str| {
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(out.join(p)).unwrap().permissions(),
        ) & 0o777
    };
    assert_eq!(mode("run.sh"), 0o755);
    assert_eq!(mode("config.json"), 0o644);
    assert!(!out.join("linked.bin").is_symlink());
    // Verification alone writes nothing.
    open::open(&sealed, &key, None, open_opts()).unwrap();
}

/// Seals a small three-chunk file and returns (dir, sealed path, key,
/// offset of the first data chunk).
fn sealed_sample() -> (tempfile::TempDir, std::path::PathBuf, ModelKey, usize) {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("m.bin");
    std::fs::write(&input, data(3 * 4096, 9)).unwrap();
    let key = ModelKey::generate().unwrap();
    let sealed = d.path().join("m.sealed");
    seal::seal(&input, &sealed, &key, &opts(4096)).unwrap();
    let bytes = std::fs::read(&sealed).unwrap();
    let len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    (d, sealed, key, format::PREFIX_LEN + len + format::TAG_LEN)
}

fn open_err(sealed: &Path, key: &ModelKey) -> (SealError, bool) {
    let out = sealed.with_extension("out");
    let e = open::open(sealed, key, Some(&out), open_opts()).unwrap_err();
    let left = out.exists() || sealed.with_extension("out.partial").exists();
    (e, left)
}

#[test]
fn tampering_is_detected_and_leaves_nothing() {
    let (_d, sealed, key, data_at) = sealed_sample();
    let orig = std::fs::read(&sealed).unwrap();
    let chunk = 4096 + format::TAG_LEN;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "header edit (chunk size)",
            {
                let text = String::from_utf8_lossy(&orig[16..data_at - 16])
                    .replace("\"chunk_size\":4096", "\"chunk_size\":8192");
                let mut b = orig[..12].to_vec();
                b.extend_from_slice(&u32::try_from(text.len()).unwrap().to_le_bytes());
                b.extend_from_slice(text.as_bytes());
                b.extend_from_slice(&orig[data_at - 16..]);
                b
            },
            "the key does not open this model",
        ),
        (
            "header edit (key URI)",
            {
                let mut b = orig.clone();
                let at = b.windows(4).position(|w| w == b"demo").unwrap();
                b[at] = b'x';
                b
            },
            "the key does not open this model",
        ),
        (
            "swapped chunks",
            {
                let mut b = orig.clone();
                let (c0, c1) = (data_at, data_at + chunk);
                let first = b[c0..c1].to_vec();
                b.copy_within(c1..c1 + chunk, c0);
                b[c1..c1 + chunk].copy_from_slice(&first);
                b
            },
            "chunk 0 of \"m.bin\" does not authenticate",
        ),
        (
            "flipped ciphertext bit",
            {
                let mut b = orig.clone();
                b[data_at + 2 * chunk + 100] ^= 1;
                b
            },
            "chunk 2 of \"m.bin\" does not authenticate",
        ),
        (
            "truncated by one chunk",
            orig[..orig.len() - chunk].to_vec(),
            "truncated",
        ),
        (
            "truncated by a byte",
            orig[..orig.len() - 1].to_vec(),
            "truncated",
        ),
        (
            "extended",
            {
                let mut b = orig.clone();
                b.extend_from_slice(&[0; 32]);
                b
            },
            "extended: 32 bytes",
        ),
        (
            "unknown format version",
            {
                let mut b = orig.clone();
                b[8] = 2;
                b
            },
            "format version 2",
        ),
        (
            "not sealed",
            b"PK\x03\x04 a zip file".to_vec(),
            "not a Cocoon sealed model",
        ),
        ("header cut short", orig[..40].to_vec(), "cut short"),
    ];
    for (what, bytes, want) in cases {
        std::fs::write(&sealed, &bytes).unwrap();
        let (e, left) = open_err(&sealed, &key);
        assert!(e.to_string().contains(want), "{what}: {e}");
        assert!(!left, "{what}: output left behind");
    }
    std::fs::write(&sealed, &orig).unwrap();
    let other = ModelKey::generate().unwrap();
    let (e, left) = open_err(&sealed, &other);
    assert!(matches!(e, SealError::WrongKey), "{e}");
    assert!(!left);
    // A chunk that fails late (after earlier files were written) removes
    // everything written so far.
    let mut b = orig.clone();
    let last = b.len() - 5;
    b[last] ^= 0x80;
    std::fs::write(&sealed, &b).unwrap();
    let (e, left) = open_err(&sealed, &key);
    assert!(e.to_string().contains("chunk 2"), "{e}");
    assert!(!left);
}

#[test]
fn bad_input_is_refused_clearly() {
    let d = tempfile::tempdir().unwrap();
    let key = ModelKey::generate().unwrap();
    // A special file in the model directory.
    let dir = d.path().join("m");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("a"), b"a").unwrap();
    nix_mkfifo(&dir.join("pipe"));
    let e = seal::seal(&dir, &d.path().join("o"), &key, &opts(4096)).unwrap_err();
    assert!(
        e.to_string().contains("pipe") && e.to_string().contains("not a regular file"),
        "{e}"
    );
    assert!(!d.path().join("o").exists() && !d.path().join("o.partial").exists());
    std::fs::remove_file(dir.join("pipe")).unwrap();
    // A symlink to a directory.
    std::os::unix::fs::symlink("/etc", dir.join("etc")).unwrap();
    let e = seal::seal(&dir, &d.path().join("o"), &key, &opts(4096)).unwrap_err();
    assert!(e.to_string().contains("symlink to a directory"), "{e}");
    std::fs::remove_file(dir.join("etc")).unwrap();
    // An output that exists is never overwritten.
    std::fs::write(d.path().join("o"), b"keep").unwrap();
    let e = seal::seal(&dir, &d.path().join("o"), &key, &opts(4096)).unwrap_err();
    assert!(matches!(e, SealError::Exists(_)), "{e}");
    assert_eq!(std::fs::read(d.path().join("o")).unwrap(), b"keep");
    // Bad key URI, chunk size, key length.
    let mut o = opts(4096);
    o.key_uri = "https://kbs/x".into();
    let e = seal::seal(&dir, &d.path().join("o2"), &key, &o).unwrap_err();
    assert!(e.to_string().contains("kbs:///"), "{e}");
    let e = seal::seal(&dir, &d.path().join("o2"), &key, &opts(100)).unwrap_err();
    assert!(e.to_string().contains("chunk size 100"), "{e}");
    assert!(!d.path().join("o2").exists() && !d.path().join("o2.partial").exists());
    assert!(ModelKey::from_bytes(&[0; 31])
        .unwrap_err()
        .to_string()
        .contains("31"));
}

fn nix_mkfifo(p: &Path) {
    let st = std::process::Command::new("mkfifo")
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn headers_with_bad_fields_are_refused() {
    let good = crate::Header {
        cipher: format::CIPHER.into(),
        kdf: format::KDF.into(),
        salt: "00".repeat(32),
        chunk_size: 4096,
        key_uri: URI.into(),
        kind: Kind::Directory,
        files: vec![
            crate::FileEntry {
                path: "a".into(),
                size: 1,
                mode: 0o644,
            },
            crate::FileEntry {
                path: "b/c".into(),
                size: 1,
                mode: 0o755,
            },
        ],
    };
    good.check().unwrap();
    type Edit = fn(&mut crate::Header);
    let edits: Vec<(Edit, &str)> = vec![
        (|h| h.cipher = "chacha20".into(), "cipher"),
        (|h| h.salt = "00".into(), "salt"),
        (
            |h| h.files[1].path = "../etc/passwd".into(),
            "clean relative path",
        ),
        (|h| h.files[1].path = "/abs".into(), "clean relative path"),
        (|h| h.files[1].path = "a".into(), "sorted or duplicated"),
        (|h| h.files[1].path = "a/b".into(), "below the file"),
        (
            |h| {
                h.files.insert(
                    1,
                    crate::FileEntry {
                        path: "a-c".into(),
                        size: 0,
                        mode: 0o644,
                    },
                );
                h.files[2].path = "a/b".into();
            },
            "below the file \"a\"",
        ),
        (|h| h.files[0].mode = 0o4755, "mode"),
        (|h| h.kind = Kind::File, "exactly one file"),
        (
            |h| h.key_uri = "kbs://other.example/a/b/c".into(),
            "authority",
        ),
    ];
    for (edit, want) in edits {
        let mut h = good.clone();
        edit(&mut h);
        let e = h.check().unwrap_err().to_string();
        assert!(e.contains(want), "{want}: {e}");
    }
}
