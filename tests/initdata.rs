//! Initdata from Kata's annotation through a real containerd and the shim:
//! measured into the launch (the same digest as `cocoon measure
//! --initdata`), delivered once to the agent, which re-hashes it and — with
//! no TEE here — says it is unverified; bad documents fail Create with one
//! clear error and leave nothing behind.

use std::io::Write;
use std::time::{Duration, Instant};

use cocoon_tests::containerd::{out, Containerd, Flavor, IMAGE, RUNTIME};
use cocoon_tests::{env_or_skip, Sandbox};
use sha2::{Digest, Sha256, Sha384};

const KATA_INITDATA: &str = "io.katacontainers.config.hypervisor.cc_init_data";

const DOC: &str = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"aa.toml\" = '''\n[token_configs.kbs]\nurl = \"http://127.0.0.1:8080\"\n'''\n";

fn encode(doc: &[u8]) -> String {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(doc).unwrap();
    base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        gz.finish().unwrap(),
    )
}

#[test]
fn initdata_from_the_kata_annotation_is_measured_and_delivered() {
    let test = "initdata_from_the_kata_annotation_is_measured_and_delivered";
    let Some(env) = env_or_skip(test) else { return };
    let Some(flavor) = Flavor::system() else {
        eprintln!("SKIP {test}: containerd is not installed (make deps)");
        return;
    };
    let sb = Sandbox::new(&env, |t| {
        t["runtime"].as_table_mut().unwrap().insert(
            "allowed_annotations".into(),
            vec![toml::Value::from(KATA_INITDATA)].into(),
        );
    });
    let ctd = Containerd::start(&env, &sb, flavor, &["default"]);
    let annotation = format!("{KATA_INITDATA}={}", encode(DOC.as_bytes()));
    let o = ctd
        .ctr(&[
            "run",
            "-d",
            "--annotation",
            &annotation,
            "--runtime",
            RUNTIME,
            IMAGE,
            "i1",
            "sleep",
            "1000",
        ])
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    ctd.wait_running("i1");

    // The launch measured the document's own-algorithm digest over its
    // exact bytes, as `cocoon measure --initdata` does.
    let o = sb
        .cocoon()
        .args(["measure", "--sandbox", "i1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let want = hex::encode(Sha384::digest(DOC.as_bytes()));
    assert_eq!(m["initdata_digest"], want.as_str(), "{m}");
    assert_eq!(
        m["inputs"]["initdata"]["sha256"],
        hex::encode(Sha256::digest(DOC.as_bytes())).as_str(),
        "{m}"
    );
    let file = sb.dir.path().join("initdata.toml");
    std::fs::write(&file, DOC).unwrap();
    let o = sb
        .cocoon()
        .args(["measure", "--initdata"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let predicted: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        predicted["initdata_digest"], m["initdata_digest"],
        "{predicted}"
    );

    // The agent re-hashed it and, with no TEE, said it is unverified.
    let console = sb.state_dir.join("i1/vm/console.log");
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        if text.contains("initdata accepted UNVERIFIED") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the agent did not report the initdata; console: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The host keeps no copy of the document in the VM's state.
    assert!(!sb.state_dir.join("i1/vm/initdata.toml").exists());

    ctd.kill_and_remove("i1");

    // A pod whose initdata policy refuses exec: the agent says no, with
    // the rule, whatever the host asks.
    let closed = format!(
        "{DOC}\"cocoon-policy.toml\" = '''\nexec = false\nsignals = false\nstats = false\n'''\n"
    );
    let annotation = format!("{KATA_INITDATA}={}", encode(closed.as_bytes()));
    let o = ctd
        .ctr(&[
            "run",
            "-d",
            "--annotation",
            &annotation,
            "--runtime",
            RUNTIME,
            IMAGE,
            "i2",
            "sleep",
            "1000",
        ])
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    ctd.wait_running("i2");
    let o = ctd
        .ctr(&["task", "exec", "--exec-id", "e1", "i2", "true"])
        .unwrap();
    assert!(!o.status.success(), "{}", out(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("exec into \"i2\" is refused by the pod's policy")
            && err.contains("exec = false"),
        "{err}"
    );
    // Process lists and signals other than SIGKILL follow the policy too.
    for (args, needle) in [
        (&["task", "ps", "i2"][..], "stats = false"),
        (
            &["task", "kill", "-s", "SIGTERM", "i2"][..],
            "signals = false",
        ),
    ] {
        let o = ctd.ctr(args).unwrap();
        assert!(!o.status.success(), "{args:?}: {}", out(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(needle) && err.contains("refused"),
            "{args:?}: {err}"
        );
    }
    ctd.wait_running("i2");
    // SIGKILL is always delivered (the host can stop the VM anyway).
    ctd.kill_and_remove("i2");

    // A pod whose policy keeps output in the guest: the process runs, its
    // output never reaches the host, and the shim says why.
    let quiet = format!("{DOC}\"cocoon-policy.toml\" = 'logs = false'\n");
    let annotation = format!("{KATA_INITDATA}={}", encode(quiet.as_bytes()));
    let o = ctd
        .ctr(&[
            "run",
            "--rm",
            "--annotation",
            &annotation,
            "--runtime",
            RUNTIME,
            IMAGE,
            "i4",
            "echo",
            "kept-in-the-guest",
        ])
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    assert!(!out(&o).contains("kept-in-the-guest"), "{}", out(&o));
    let log = ctd.log();
    assert!(
        log.contains("the guest refused the process's output") && log.contains("logs = false"),
        "containerd log lacks the refusal"
    );

    // A pod whose policy refuses privileged containers: CAP_SYS_ADMIN is
    // refused by the agent, naming the capability and the rule.
    let strict = format!("{DOC}\"cocoon-policy.toml\" = 'privileged = false'\n");
    let annotation = format!("{KATA_INITDATA}={}", encode(strict.as_bytes()));
    let o = ctd
        .ctr(&[
            "run",
            "--rm",
            "--annotation",
            &annotation,
            "--cap-add",
            "CAP_SYS_ADMIN",
            "--runtime",
            RUNTIME,
            IMAGE,
            "i3",
            "true",
        ])
        .unwrap();
    assert!(!o.status.success(), "{}", out(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("CAP_SYS_ADMIN") && err.contains("privileged = false"),
        "{err}"
    );
    let _ = ctd.ctr(&["c", "rm", "i3"]);

    // Bad documents: one clear error each, nothing left.
    let mut bomb = DOC.as_bytes().to_vec();
    bomb.extend(std::iter::repeat_n(b'#', 1 << 20));
    for (id, value, needle) in [
        ("b1", "%%%".to_string(), "is not standard base64"),
        ("b2", encode(&bomb), "larger than 65536 bytes"),
        (
            "b3",
            encode(format!("{DOC}\"policy.rego\" = \"package agent_policy\"\n").as_bytes()),
            "carries `policy.rego`",
        ),
        (
            "b4",
            encode(DOC.replace("sha384", "md5").as_bytes()),
            "has algorithm \"md5\"",
        ),
    ] {
        let a = format!("{KATA_INITDATA}={value}");
        let o = ctd
            .ctr(&[
                "run",
                "--rm",
                "--annotation",
                &a,
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
    ctd.assert_no_shims();
    sb.assert_clean();
}
