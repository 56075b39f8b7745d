//! Secrets from a real trustee KBS into a pod, through a real containerd:
//! the node's `[attestation]` gives pods an initdata document naming the
//! KBS and the allowed resources; the guest attests (sample TEE, no TEE
//! hardware here) through the shim's vsock relay, decrypts the resource in
//! its own memory and places it at `/run/secrets/cocoon/<name>`. No host
//! artefact — state directory, logs, the virtio-fs share — holds the
//! secret or its base64.

use std::path::Path;

use base64::Engine;
use cocoon_tests::containerd::{out, Containerd, Flavor, IMAGE, RUNTIME};
use cocoon_tests::kbs::Kbs;
use cocoon_tests::pod_kbs::{attest_to, attest_to_url, kbs_or_skip};
use cocoon_tests::{env_or_skip, files_containing, Sandbox};

#[test]
fn secrets_from_a_real_kbs_reach_the_pod_and_nothing_else() {
    let test = "secrets_from_a_real_kbs_reach_the_pod_and_nothing_else";
    let Some(env) = env_or_skip(test) else { return };
    let Some(flavor) = Flavor::system() else {
        eprintln!("SKIP {test}: containerd is not installed (make deps)");
        return;
    };
    let Some(bin) = kbs_or_skip(test) else { return };
    let kbs = Kbs::start(&bin);
    let mut rnd = [0u8; 12];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut rnd).unwrap();
    let secret = format!("cocoon-secret-{}", hex::encode(rnd));
    kbs.allow_sample_and_store("default/key/demo", secret.as_bytes());
    let sb = Sandbox::new(&env, |t| {
        attest_to(
            t,
            &kbs.addr,
            &["kbs:///default/key/*"],
            &["io.cocoon.secret.*"],
        );
    });
    let ctd = Containerd::start(&env, &sb, flavor, &["default"]);
    let o = ctd
        .ctr(&[
            "run",
            "-d",
            "--annotation",
            "io.cocoon.secret.demo=kbs:///default/key/demo",
            "--runtime",
            RUNTIME,
            IMAGE,
            "s1",
            "sleep",
            "1000",
        ])
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    ctd.wait_running("s1");
    let o = ctd
        .ctr(&[
            "task",
            "exec",
            "--exec-id",
            "e1",
            "s1",
            "sh",
            "-c",
            "cat /run/secrets/cocoon/demo; echo; stat -c '%a %u' /run/secrets/cocoon/demo",
        ])
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", out(&o));
    assert_eq!(text, format!("{secret}\n400 0\n"), "{}", out(&o));

    // Nothing on the host holds the secret, in clear or in base64: the VM's
    // state (console and helper logs, measurement, sockets), the share with
    // the container's root, containerd's log with the shim's.
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret.as_bytes());
    for needle in [secret.as_bytes(), b64.as_bytes()] {
        let mut found = Vec::new();
        files_containing(&sb.state_dir, needle, &mut found);
        files_containing(sb.dir.path(), needle, &mut found);
        assert!(found.is_empty(), "the secret is on the host in {found:?}");
        assert!(
            !ctd.log()
                .as_bytes()
                .windows(needle.len())
                .any(|w| w == needle),
            "the secret is in containerd's log"
        );
    }
    ctd.kill_and_remove("s1");

    // A resource the initdata does not allow, and a bad name: refused.
    for (id, annotation, needle) in [
        (
            "s2",
            "io.cocoon.secret.demo=kbs:///default/cert/demo",
            "not in the initdata's allowed_resources",
        ),
        (
            "s3",
            "io.cocoon.secret.Demo=kbs:///default/key/demo",
            "use a DNS label",
        ),
        (
            "s4",
            "io.cocoon.secret.demo=kbs://evil.example/default/key/demo",
            "the authority must be empty",
        ),
    ] {
        let o = ctd
            .ctr(&[
                "run",
                "--rm",
                "--annotation",
                annotation,
                "--runtime",
                RUNTIME,
                IMAGE,
                id,
                "true",
            ])
            .unwrap();
        assert!(!o.status.success(), "{}", out(&o));
        let err = String::from_utf8_lossy(&o.stderr).replace("\\\"", "\"");
        assert!(err.contains(needle), "{id}: {err}");
        let _ = ctd.ctr(&["c", "rm", id]);
    }
    // The KBS down: a clear error, nothing left.
    drop(kbs);
    let o = ctd
        .ctr(&[
            "run",
            "--rm",
            "--annotation",
            "io.cocoon.secret.demo=kbs:///default/key/demo",
            "--runtime",
            RUNTIME,
            IMAGE,
            "s5",
            "true",
        ])
        .unwrap();
    assert!(!o.status.success(), "{}", out(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("KBS"), "{err}");
    let _ = ctd.ctr(&["c", "rm", "s5"]);
    ctd.assert_no_shims();
    sb.assert_clean();
}

/// Runs `cocoon seal model` (the owner's machine) and returns the key.
fn seal_model(env: &cocoon_tests::Env, input: &Path, out: &Path, uri: &str, key: &Path) -> Vec<u8> {
    let o = std::process::Command::new(env.bin_dir.join("cocoon"))
        .args(["seal", "model", "--in"])
        .arg(input)
        .arg("--out")
        .arg(out)
        .args(["--key-uri", uri, "--key-out"])
        .arg(key)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out_text(&o));
    std::fs::read(key).unwrap()
}

fn out_text(o: &std::process::Output) -> String {
    out(o)
}

#[test]
fn sealed_models_open_only_inside_the_pod() {
    let test = "sealed_models_open_only_inside_the_pod";
    let Some(env) = env_or_skip(test) else { return };
    let Some(flavor) = Flavor::system() else {
        eprintln!("SKIP {test}: containerd is not installed (make deps)");
        return;
    };
    let Some(bin) = kbs_or_skip(test) else { return };
    // The owner's machine: a model directory, sealed twice (one key URI the
    // pod's initdata allows, one it does not). Kept outside every
    // directory the node uses.
    let owner = tempfile::tempdir().unwrap();
    let model = owner.path().join("model");
    std::fs::create_dir_all(model.join("tokenizer")).unwrap();
    let weights = cocoon_tests::pseudo_random((1 << 20) + 5, 0xc0c0_5eed);
    std::fs::write(model.join("weights.safetensors"), &weights).unwrap();
    std::fs::write(model.join("tokenizer/vocab.txt"), b"cocoon\nmodel\n").unwrap();
    // The node's volume holding the sealed files (ciphertext only).
    let volume = tempfile::tempdir().unwrap();
    let key = seal_model(
        &env,
        &model,
        &volume.path().join("model.sealed"),
        "kbs:///default/model/demo",
        &owner.path().join("model.key"),
    );
    seal_model(
        &env,
        &model,
        &volume.path().join("other.sealed"),
        "kbs:///other/model/demo",
        &owner.path().join("other.key"),
    );
    std::os::unix::fs::symlink(
        "../../../../../etc/hostname",
        volume.path().join("escape.sealed"),
    )
    .unwrap();
    // A header promising 1 TiB (refused before any byte is written), and
    // a model from a newer format version.
    let huge = cocoon_seal::Header {
        cipher: cocoon_seal::format::CIPHER.into(),
        kdf: cocoon_seal::format::KDF.into(),
        salt: "00".repeat(32),
        chunk_size: 1 << 20,
        key_uri: "kbs:///default/model/demo".into(),
        kind: cocoon_seal::Kind::File,
        files: vec![cocoon_seal::FileEntry {
            path: "huge.bin".into(),
            size: 1 << 40,
            mode: 0o644,
        }],
    };
    std::fs::write(volume.path().join("huge.sealed"), huge.encode().unwrap()).unwrap();
    let mut future = std::fs::read(volume.path().join("model.sealed")).unwrap();
    future[8] = 2;
    std::fs::write(volume.path().join("future.sealed"), future).unwrap();
    let kbs = Kbs::start(&bin);
    kbs.allow_sample_and_store("default/model/demo", &key);
    let sb = Sandbox::new(&env, |t| {
        attest_to(
            t,
            &kbs.addr,
            &["kbs:///default/model/*"],
            &["io.cocoon.model.*"],
        );
    });
    let ctd = Containerd::start(&env, &sb, flavor, &["default"]);
    let mount = format!(
        "type=bind,src={},dst=/data,options=rbind:ro",
        volume.path().display()
    );
    let run = |id: &str, annotation: &str, detach: bool, cmd: &[&str]| {
        let mut args = vec!["run"];
        args.push(if detach { "-d" } else { "--rm" });
        args.extend([
            "--mount",
            &mount,
            "--annotation",
            annotation,
            "--runtime",
            RUNTIME,
            IMAGE,
            id,
        ]);
        args.extend(cmd);
        ctd.ctr(&args).unwrap()
    };

    // The model is at /models/demo, hash for hash, read-only.
    let o = run(
        "m1",
        "io.cocoon.model.demo=/data/model.sealed",
        false,
        &["sh", "-c", "cd /models/demo && sha256sum weights.safetensors tokenizer/vocab.txt; touch x 2>&1; echo touch=$?"],
    );
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", out(&o));
    use sha2::Digest;
    let want = hex::encode(sha2::Sha256::digest(&weights));
    assert!(
        text.contains(&format!("{want}  weights.safetensors")),
        "{text}"
    );
    assert!(
        text.contains(&hex::encode(sha2::Sha256::digest(b"cocoon\nmodel\n"))),
        "{text}"
    );
    assert!(
        text.contains("Read-only file system") && text.contains("touch=1"),
        "{text}"
    );
    let log = ctd.log();
    assert!(
        log.contains("sealed model decrypted in the guest") && log.contains("\"bytes\":1048594"),
        "no decryption report in the shim log"
    );

    // Exec into a container that holds a model: refused without the
    // policy's explicit consent.
    let o = run(
        "m2",
        "io.cocoon.model.demo=/data/model.sealed",
        true,
        &["sleep", "1000"],
    );
    assert!(o.status.success(), "{}", out(&o));
    ctd.wait_running("m2");
    let o = ctd
        .ctr(&["task", "exec", "--exec-id", "e1", "m2", "true"])
        .unwrap();
    assert!(!o.status.success());
    assert!(out(&o).contains("it mounts sealed models"), "{}", out(&o));
    ctd.kill_and_remove("m2");

    // No host artefact holds the plaintext or the key: the VM's state, the
    // share, containerd's root (snapshots) and log.
    for (what, needle) in [
        ("plaintext", &weights[4096..4096 + 64]),
        ("key", key.as_slice()),
    ] {
        let mut found = Vec::new();
        files_containing(&sb.state_dir, needle, &mut found);
        files_containing(sb.dir.path(), needle, &mut found);
        files_containing(ctd.dir.path(), needle, &mut found);
        files_containing(volume.path(), needle, &mut found);
        assert!(
            found.is_empty(),
            "the model's {what} is on the host in {found:?}"
        );
        assert!(
            !ctd.log()
                .as_bytes()
                .windows(needle.len())
                .any(|w| w == needle),
            "the model's {what} is in containerd's log"
        );
    }

    // Refusals, each naming the problem; nothing is left.
    for (id, annotation, needle) in [
        (
            "r1",
            "io.cocoon.model.demo=/data/other.sealed",
            "kbs:///other/model/demo is not in the initdata's allowed_resources",
        ),
        (
            "r2",
            "io.cocoon.model.Demo=/data/model.sealed",
            "not a model name",
        ),
        (
            "r3",
            "io.cocoon.model.demo=/data/../etc/passwd",
            "not a clean absolute path",
        ),
        (
            "r4",
            "io.cocoon.model.demo=/data/escape.sealed",
            "escape.sealed",
        ),
        (
            "r5",
            "io.cocoon.model.demo=/data/missing.sealed",
            "does not exist in the container",
        ),
        (
            "r6",
            "io.cocoon.model.demo=/bin/busybox",
            "not a Cocoon sealed model",
        ),
        (
            "r8",
            "io.cocoon.model.demo=/data/huge.sealed",
            "needs 1048578 MiB of guest memory",
        ),
        (
            "r9",
            "io.cocoon.model.demo=/data/future.sealed",
            "format version 2",
        ),
    ] {
        let o = run(id, annotation, false, &["true"]);
        assert!(!o.status.success(), "{id}: {}", out(&o));
        let err = String::from_utf8_lossy(&o.stderr).replace("\\\"", "\"");
        assert!(err.contains(needle), "{id}: {err}");
        let _ = ctd.ctr(&["c", "rm", id]);
    }
    // The KBS down: a clear error.
    drop(kbs);
    let o = run(
        "r7",
        "io.cocoon.model.demo=/data/model.sealed",
        false,
        &["true"],
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("KBS"),
        "{}",
        out(&o)
    );
    let _ = ctd.ctr(&["c", "rm", "r7"]);
    ctd.assert_no_shims();
    sb.assert_clean();
}

/// Seals `name` for the key at `kid` with the independent Python
/// implementation (a fresh signing key, its public JWK written to
/// `jwk_out`); `None` when the test venv is missing.
fn seal_secret(kid: &str, name: &str, jwk_out: &Path) -> Option<String> {
    let python = cocoon_tests::repo_root().join("build/measure-venv/bin/python3");
    if !python.exists() {
        return None;
    }
    let o = std::process::Command::new(python)
        .arg(cocoon_tests::repo_root().join("tests/fixtures/sealed_secret.py"))
        .args([kid, name])
        .arg(jwk_out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    Some(String::from_utf8(o.stdout).unwrap().trim().to_string())
}

#[test]
fn sealed_environment_values_are_unsealed_in_the_guest() {
    let test = "sealed_environment_values_are_unsealed_in_the_guest";
    let Some(env) = env_or_skip(test) else { return };
    let Some(flavor) = Flavor::system() else {
        eprintln!("SKIP {test}: containerd is not installed (make deps)");
        return;
    };
    let Some(bin) = kbs_or_skip(test) else { return };
    // The secret owner's side: a signing key and two sealed values, one
    // signed with a key the KBS does not hold under that kid.
    let owner = tempfile::tempdir().unwrap();
    let kid = "kbs:///default/sealing/key";
    let Some(sealed) = seal_secret(kid, "kbs:///default/secret/token", &owner.path().join("k1"))
    else {
        eprintln!("SKIP {test}: build/measure-venv with `cryptography` missing (make deps)");
        return;
    };
    let forged = seal_secret(kid, "kbs:///default/secret/token", &owner.path().join("k2")).unwrap();
    let outside = seal_secret(kid, "kbs:///other/secret/token", &owner.path().join("k3")).unwrap();
    let mut rnd = [0u8; 12];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut rnd).unwrap();
    let secret = format!("cocoon-token-{}", hex::encode(rnd));
    let kbs = Kbs::start(&bin);
    kbs.allow_sample_and_store("default/secret/token", secret.as_bytes());
    kbs.store(
        "default/sealing/key",
        &std::fs::read(owner.path().join("k1")).unwrap(),
    );
    let sb = Sandbox::new(&env, |t| {
        attest_to(t, &kbs.addr, &["kbs:///default/*"], &[]);
    });
    let ctd = Containerd::start(&env, &sb, flavor, &["default"]);
    let run = |id: &str, value: &str| {
        ctd.ctr(&[
            "run",
            "--rm",
            "--env",
            &format!("TOKEN={value}"),
            "--runtime",
            RUNTIME,
            IMAGE,
            id,
            "sh",
            "-c",
            "echo \"[$TOKEN]\"",
        ])
        .unwrap()
    };
    // The process sees the plaintext; the host only ever had the sealed
    // string.
    let o = run("v1", &sealed);
    assert!(o.status.success(), "{}", out(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("[{secret}]\n"),
        "{}",
        out(&o)
    );
    let mut found = Vec::new();
    files_containing(&sb.state_dir, secret.as_bytes(), &mut found);
    files_containing(sb.dir.path(), secret.as_bytes(), &mut found);
    assert!(found.is_empty(), "the secret is on the host in {found:?}");
    let log = ctd.log();
    assert!(
        !log.contains(&secret),
        "containerd's log holds the plaintext (it may hold the sealed value)"
    );

    // Another signer, a URI outside the policy, an unsigned value: refused.
    for (id, value, needle) in [
        ("v2", forged.as_str(), "signature does not verify"),
        (
            "v3",
            outside.as_str(),
            "not in the initdata's allowed_resources",
        ),
        (
            "v4",
            "sealed.fakejwsheader.e30.fakesignature",
            "is unsigned",
        ),
    ] {
        let o = run(id, value);
        assert!(!o.status.success(), "{id}: {}", out(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("TOKEN") && err.contains(needle), "{id}: {err}");
        let _ = ctd.ctr(&["c", "rm", id]);
    }
    ctd.assert_no_shims();
    sb.assert_clean();
}

/// A KBS that accepts connections and never answers keeps the guest in
/// CreateSandbox; virtiofsd dies meanwhile. The launch must fail as soon
/// as the helper is gone, naming it, not when CreateSandbox times out;
/// nothing is left.
#[test]
fn a_helper_dying_while_the_sandbox_is_created_fails_it_at_once() {
    let test = "a_helper_dying_while_the_sandbox_is_created_fails_it_at_once";
    let Some(env) = env_or_skip(test) else { return };
    let Some(flavor) = Flavor::system() else {
        eprintln!("SKIP {test}: containerd is not installed (make deps)");
        return;
    };
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let (accepted, first) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept() {
            held.push(s);
            let _ = accepted.send(());
        }
    });
    let sb = Sandbox::new(&env, |t| {
        attest_to(t, &addr, &["kbs:///default/*"], &["io.cocoon.secret.*"]);
    });
    let ctd = Containerd::start(&env, &sb, flavor, &["default"]);
    let mut run = ctd.ctr_ns(
        "default",
        &[
            "run",
            "-d",
            "--annotation",
            "io.cocoon.secret.demo=kbs:///default/key/demo",
            "--runtime",
            RUNTIME,
            IMAGE,
            "h1",
            "true",
        ],
    );
    let run = std::thread::spawn(move || run.output().unwrap());
    // The guest is attesting: its connection reached the silent KBS.
    first
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the guest never dialled the KBS");
    let state = sb.state_dir.display().to_string();
    let pids = cocoon_tests::pids_matching("virtiofsd", &state);
    assert!(!pids.is_empty(), "no virtiofsd running");
    let killed = std::time::Instant::now();
    for pid in pids {
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
    }
    let o = run.join().unwrap();
    let took = killed.elapsed();
    assert!(!o.status.success(), "{}", out(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("virtiofsd exited"), "{err}");
    assert!(
        took < std::time::Duration::from_secs(20),
        "the launch failed {took:?} after virtiofsd died"
    );
    let _ = ctd.ctr(&["c", "rm", "h1"]);
    assert!(cocoon_tests::pids_matching("qemu-system", &state).is_empty());
    ctd.assert_no_shims();
    sb.assert_clean();
}

/// An https KBS: the node names its CA (`attestation.kbs_cert`), which
/// reaches the guest in the measured initdata; TLS ends in the guest, so
/// the relay and the host carry only ciphertext.
#[test]
fn an_https_kbs_is_reached_with_tls_ending_in_the_guest() {
    let test = "an_https_kbs_is_reached_with_tls_ending_in_the_guest";
    let Some(env) = env_or_skip(test) else { return };
    let Some(flavor) = Flavor::system() else {
        eprintln!("SKIP {test}: containerd is not installed (make deps)");
        return;
    };
    let Some(bin) = kbs_or_skip(test) else { return };
    let kbs = Kbs::start_tls(&bin);
    let secret = format!("tls-secret-{}", std::process::id());
    kbs.allow_sample_and_store("default/key/tls", secret.as_bytes());
    let certs = tempfile::tempdir().unwrap();
    let ca = certs.path().join("kbs-ca.pem");
    std::fs::write(&ca, kbs.cert_pem.as_deref().unwrap()).unwrap();
    let sb = Sandbox::new(&env, |t| {
        attest_to_url(
            t,
            &format!("https://{}", kbs.addr),
            &["kbs:///default/key/*"],
            &["io.cocoon.secret.*"],
        );
        t["attestation"]
            .as_table_mut()
            .unwrap()
            .insert("kbs_cert".into(), ca.display().to_string().into());
    });
    let ctd = Containerd::start(&env, &sb, flavor, &["default"]);
    let o = ctd
        .ctr(&[
            "run",
            "--rm",
            "--annotation",
            "io.cocoon.secret.demo=kbs:///default/key/tls",
            "--runtime",
            RUNTIME,
            IMAGE,
            "t1",
            "cat",
            "/run/secrets/cocoon/demo",
        ])
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), secret, "{}", out(&o));
    let mut found = Vec::new();
    files_containing(&sb.state_dir, secret.as_bytes(), &mut found);
    assert!(found.is_empty(), "the secret is on the host in {found:?}");
    ctd.assert_no_shims();
    sb.assert_clean();
}
