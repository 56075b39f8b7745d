//! Sealed models on the host: the published test vector, agreement with a
//! second implementation written separately in Python
//! (`tests/fixtures/sealed_model.py`, `cryptography` package), and the
//! `cocoon seal` command line with its bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

use cocoon_seal::open::{self, OpenOptions};
use cocoon_seal::seal::{self, SealOptions};
use cocoon_seal::ModelKey;
use cocoon_tests::{repo_root, text};
use sha2::{Digest, Sha256};

/// The published vector (docs/sealed-models.md): key 00 01 .. 1f, salt
/// 20 21 .. 3f, chunk size 4096, key URI kbs:///default/model/vector, and
/// the directory [`vector_model`] makes.
const VECTOR_SHA256: &str = "f06e9e486aecd9d15ac862f6939e6054d45c7d4d541ed075d8d79b36e17e4452";

fn vector_key() -> ModelKey {
    ModelKey::from_bytes(&(0u8..32).collect::<Vec<_>>()).unwrap()
}

fn vector_salt() -> [u8; 32] {
    let mut salt = [0u8; 32];
    for (b, v) in salt.iter_mut().zip(0x20u8..) {
        *b = v;
    }
    salt
}

fn vector_model(root: &Path) {
    std::fs::create_dir_all(root.join("dir")).unwrap();
    std::fs::write(root.join("a.txt"), b"cocoon\n").unwrap();
    std::fs::write(
        root.join("dir/b.bin"),
        (0..5000u32)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
}

fn python() -> Option<PathBuf> {
    let p = repo_root().join("build/measure-venv/bin/python3");
    let ok = p.exists()
        && Command::new(&p)
            .args(["-c", "import cryptography"])
            .status()
            .is_ok_and(|s| s.success());
    ok.then_some(p)
}

fn py(args: &[&dyn AsRef<std::ffi::OsStr>]) -> std::process::Output {
    let mut c = Command::new(python().unwrap());
    c.arg(repo_root().join("tests/fixtures/sealed_model.py"));
    for a in args {
        c.arg(a);
    }
    c.output().unwrap()
}

fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

#[test]
fn the_published_vector_and_the_python_implementation_agree() {
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("model");
    vector_model(&model);
    let sealed = d.path().join("vector.sealed");
    let opts = SealOptions {
        key_uri: "kbs:///default/model/vector".into(),
        chunk_size: 4096,
        threads: 2,
        salt: Some(vector_salt()),
    };
    seal::seal(&model, &sealed, &vector_key(), &opts).unwrap();
    assert_eq!(
        sha256_file(&sealed),
        VECTOR_SHA256,
        "the published vector changed"
    );

    let Some(_) = python() else {
        eprintln!(
            "SKIP the Python half: build/measure-venv with `cryptography` missing (make deps)"
        );
        return;
    };
    let key = d.path().join("key");
    std::fs::write(&key, vector_key().as_bytes()).unwrap();
    // Python seals the same inputs to the same bytes.
    let py_sealed = d.path().join("py.sealed");
    let salt = hex::encode(vector_salt());
    let o = py(&[
        &"seal",
        &"--key",
        &key,
        &"--salt",
        &salt,
        &"--uri",
        &"kbs:///default/model/vector",
        &"--chunk",
        &"4096",
        &model,
        &py_sealed,
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(sha256_file(&py_sealed), VECTOR_SHA256);

    // Each opens what the other sealed with a fresh salt and a larger,
    // multi-chunk tree.
    std::fs::write(
        model.join("dir/big.bin"),
        cocoon_tests::pseudo_random(3 << 20, 7),
    )
    .unwrap();
    let rust_sealed = d.path().join("rust2.sealed");
    let opts = SealOptions {
        salt: None,
        chunk_size: 65536,
        ..opts
    };
    seal::seal(&model, &rust_sealed, &vector_key(), &opts).unwrap();
    let py_out = d.path().join("py-opened");
    let o = py(&[&"open", &"--key", &key, &rust_sealed, &py_out]);
    assert!(o.status.success(), "{:?}", text(&o));
    for f in ["a.txt", "dir/b.bin", "dir/big.bin", "empty"] {
        assert_eq!(
            sha256_file(&py_out.join(f)),
            sha256_file(&model.join(f)),
            "{f}"
        );
    }
    let py_sealed2 = d.path().join("py2.sealed");
    let o = py(&[
        &"seal",
        &"--key",
        &key,
        &"--salt",
        &"ab".repeat(32),
        &"--uri",
        &"kbs:///default/model/vector",
        &"--chunk",
        &"65536",
        &model,
        &py_sealed2,
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    let rust_out = d.path().join("rust-opened");
    let opts = OpenOptions {
        threads: 2,
        progress: None,
    };
    open::open(&py_sealed2, &vector_key(), Some(&rust_out), opts).unwrap();
    for f in ["a.txt", "dir/b.bin", "dir/big.bin", "empty"] {
        assert_eq!(
            sha256_file(&rust_out.join(f)),
            sha256_file(&model.join(f)),
            "{f}"
        );
    }
    // Python refuses what Rust refuses: a flipped bit.
    let mut b = std::fs::read(&rust_sealed).unwrap();
    let n = b.len();
    b[n - 20] ^= 4;
    std::fs::write(&rust_sealed, b).unwrap();
    let o = py(&[&"verify", &"--key", &key, &rust_sealed]);
    assert!(
        !o.status.success() && text(&o).1.contains("chunk"),
        "{:?}",
        text(&o)
    );
}

fn cocoon() -> Option<Command> {
    let bin = std::env::var_os("COCOON_BIN_DIR")
        .map(PathBuf::from)?
        .join("cocoon");
    bin.exists().then(|| Command::new(bin))
}

#[test]
fn cocoon_seal_command_line() {
    let Some(_) = cocoon() else {
        eprintln!("SKIP cocoon_seal_command_line: needs COCOON_BIN_DIR (run `make test`)");
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("model");
    vector_model(&model);
    let sealed = d.path().join("m.sealed");
    let key = d.path().join("m.key");
    let o = cocoon()
        .unwrap()
        .args(["seal", "model", "--in"])
        .arg(&model)
        .arg("--out")
        .arg(&sealed)
        .args(["--key-uri", "kbs:///default/model/demo", "--key-out"])
        .arg(&key)
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    // The upload commands name the resource and the key file.
    assert!(
        out.contains("set-resource --path default/model/demo --resource-file"),
        "{out}"
    );
    assert!(out.contains("/kbs/v0/resource/default/model/demo"), "{out}");
    let meta = std::fs::metadata(&key).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    assert_eq!(meta.len(), 32);
    // The key is not printed, and no key byte sequence is in the sealed file.
    let k = std::fs::read(&key).unwrap();
    assert!(!out.contains(&hex::encode(&k)) && !err.contains(&hex::encode(&k)));
    assert!(!std::fs::read(&sealed)
        .unwrap()
        .windows(32)
        .any(|w| w == k.as_slice()));

    let run = |args: &[&str]| cocoon().unwrap().args(args).output().unwrap();
    let s = sealed.to_str().unwrap();
    let k = key.to_str().unwrap();
    let o = run(&["seal", "verify", "--key", k, "--in", s]);
    assert!(
        o.status.success() && text(&o).0.starts_with("ok:"),
        "{:?}",
        text(&o)
    );
    let o = run(&["seal", "inspect", "--in", s]);
    assert!(
        text(&o)
            .0
            .contains("\"key_uri\": \"kbs:///default/model/demo\""),
        "{:?}",
        text(&o)
    );
    let out_dir = d.path().join("opened");
    let o = run(&[
        "seal",
        "open",
        "--key",
        k,
        "--in",
        s,
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(std::fs::read(out_dir.join("a.txt")).unwrap(), b"cocoon\n");

    // Bad input: one clear error each, nothing written.
    let other_key = d.path().join("other.key");
    std::fs::write(&other_key, [7u8; 32]).unwrap();
    let short_key = d.path().join("short.key");
    std::fs::write(&short_key, [7u8; 16]).unwrap();
    let fresh = d.path().join("fresh.sealed");
    let fresh_key = d.path().join("fresh.key");
    let f = fresh.to_str().unwrap();
    let fk = fresh_key.to_str().unwrap();
    let m = model.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "seal",
                "verify",
                "--key",
                other_key.to_str().unwrap(),
                "--in",
                s,
            ],
            "the key does not open this model",
        ),
        (
            vec![
                "seal",
                "verify",
                "--key",
                short_key.to_str().unwrap(),
                "--in",
                s,
            ],
            "32 bytes, this one has 16",
        ),
        (
            vec![
                "seal",
                "model",
                "--in",
                m,
                "--out",
                f,
                "--key-uri",
                "kbs://evil/a/b/c",
                "--key-out",
                fk,
            ],
            "--key-uri",
        ),
        (
            vec![
                "seal",
                "model",
                "--in",
                m,
                "--out",
                f,
                "--key-uri",
                "kbs:///a/b/c",
                "--key-out",
                k,
            ],
            "never overwritten",
        ),
        (
            vec![
                "seal",
                "model",
                "--in",
                m,
                "--out",
                s,
                "--key-uri",
                "kbs:///a/b/c",
                "--key-out",
                fk,
            ],
            "exists",
        ),
        (
            vec![
                "seal",
                "model",
                "--in",
                "/nonexistent",
                "--out",
                f,
                "--key-uri",
                "kbs:///a/b/c",
                "--key-out",
                fk,
            ],
            "/nonexistent",
        ),
        (
            vec![
                "seal",
                "model",
                "--in",
                m,
                "--out",
                f,
                "--key-uri",
                "kbs:///a/b/c",
                "--key-out",
                fk,
                "--chunk-size",
                "12",
            ],
            "chunk size 12",
        ),
        (
            vec!["seal", "inspect", "--in", k],
            "not a Cocoon sealed model",
        ),
    ];
    for (args, want) in cases {
        let o = run(&args);
        let err = text(&o).1;
        assert!(!o.status.success(), "{args:?}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            !fresh.exists() && !fresh_key.exists(),
            "{args:?} left output behind"
        );
    }
    // Nothing but what the good runs made.
    let mut left: Vec<String> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "m.key",
            "m.sealed",
            "model",
            "opened",
            "other.key",
            "short.key"
        ]
    );
}
