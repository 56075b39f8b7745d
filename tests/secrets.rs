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
use cocoon_tests::kbs::{kbs_binary, Kbs};
use cocoon_tests::{env_or_skip, Sandbox};

/// Files under `dir` (not following links) whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8], found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(t) = e.file_type() else { continue };
        let p = e.path();
        if t.is_dir() {
            files_containing(&p, needle, found);
        } else if t.is_file() {
            if let Ok(data) = std::fs::read(&p) {
                if data.windows(needle.len()).any(|w| w == needle) {
                    found.push(p.display().to_string());
                }
            }
        }
    }
}

#[test]
fn secrets_from_a_real_kbs_reach_the_pod_and_nothing_else() {
    let test = "secrets_from_a_real_kbs_reach_the_pod_and_nothing_else";
    let Some(env) = env_or_skip(test) else { return };
    let Some(flavor) = Flavor::system() else {
        eprintln!("SKIP {test}: containerd is not installed (make deps)");
        return;
    };
    let Some(bin) = kbs_binary(Path::new(env!("CARGO_MANIFEST_DIR"))) else {
        eprintln!("SKIP {test}: no trustee KBS (set COCOON_KBS_BIN, or `make deps` unpacks it into build/kbs)");
        return;
    };
    let kbs = Kbs::start(&bin);
    let mut rnd = [0u8; 12];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut rnd).unwrap();
    let secret = format!("cocoon-secret-{}", hex::encode(rnd));
    kbs.allow_sample_and_store("default/key/demo", secret.as_bytes());
    let kbs_url = format!("http://{}", kbs.addr);
    let sb = Sandbox::new(&env, |t| {
        let mut a = toml::Table::new();
        a.insert("kbs_url".into(), kbs_url.clone().into());
        a.insert(
            "allowed_resources".into(),
            vec![toml::Value::from("kbs:///default/key/*")].into(),
        );
        t.insert("attestation".into(), toml::Value::Table(a));
        t["runtime"].as_table_mut().unwrap().insert(
            "allowed_annotations".into(),
            vec![toml::Value::from("io.cocoon.secret.*")].into(),
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
