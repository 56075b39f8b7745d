//! Pods on verified layers through a real containerd: the node forces
//! verified layers (`image.verified_layers = "always"`, which runs the
//! confidential path under TCG), `cocoon policy` computes the root hashes
//! the pod's initdata allows, the shim converts the image's layer from
//! containerd's content store into the node cache and hot-plugs it, and
//! the guest mounts it under dm-verity. A layer the policy does not name,
//! a cached layer changed by one byte, a pod without images in its policy:
//! each refused with its own error, nothing left behind.

use std::io::Write;
use std::path::Path;

use cocoon_tests::containerd::{image_archives, out, Containerd, Flavor, IMAGE, RUNTIME};
use cocoon_tests::{env_or_skip, Sandbox};

const KATA_INITDATA: &str = "io.katacontainers.config.hypervisor.cc_init_data";

fn encode(doc: &[u8]) -> String {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(doc).unwrap();
    base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        gz.finish().unwrap(),
    )
}

fn initdata(policy: &str) -> String {
    let doc = format!(
        "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"cocoon-policy.toml\" = '''\n{policy}'''\n"
    );
    format!("{KATA_INITDATA}={}", encode(doc.as_bytes()))
}

/// `ctr run --rm` of IMAGE with `annotation`, printing the root mount and
/// proving the root is writable.
fn run(ctd: &Containerd, id: &str, annotation: &str) -> std::process::Output {
    ctd.ctr(&[
        "run",
        "--rm",
        "--annotation",
        annotation,
        "--runtime",
        RUNTIME,
        IMAGE,
        id,
        "sh",
        "-c",
        "grep ' / ' /proc/mounts; echo written > /etc/motd && cat /etc/motd; busybox | head -1",
    ])
    .unwrap()
}

fn cache_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn pods_run_only_the_verified_image_their_policy_names() {
    let test = "pods_run_only_the_verified_image_their_policy_names";
    let Some(env) = env_or_skip(test) else { return };
    let Some(flavor) = Flavor::system() else {
        eprintln!("SKIP {test}: containerd is not installed (make deps)");
        return;
    };
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("layers");
    let sb = Sandbox::new(&env, |t| {
        t["runtime"].as_table_mut().unwrap().insert(
            "allowed_annotations".into(),
            vec![toml::Value::from(KATA_INITDATA)].into(),
        );
        let mut image = toml::Table::new();
        image.insert("verified_layers".into(), "always".into());
        image.insert("layer_cache_dir".into(), cache.display().to_string().into());
        t.insert("image".into(), image.into());
    });
    let ctd = Containerd::start(&env, &sb, flavor, &["default"]);

    // The policy, computed from the image archive containerd imported:
    // the layers only, since the probes below run commands of their own.
    let o = sb
        .cocoon()
        .args(["policy", "--any-process", "--any-volume", "--name", IMAGE])
        .arg(&image_archives().0)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let fragment = String::from_utf8(o.stdout).unwrap();
    assert!(fragment.starts_with("[[images]]"), "{fragment}");
    assert!(!fragment.contains("args"), "{fragment}");
    let allowed = initdata(&fragment);

    // Runs from the verified layer: the root is the guest's overlay of the
    // layer's erofs, writable in guest memory.
    let o = run(&ctd, "v1", &allowed);
    let text = out(&o);
    eprintln!("v1: {text}");
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains("overlay / overlay") && text.contains("lowerdir=/run/cocoon/layers/v1/l0"),
        "{text}"
    );
    assert!(
        text.contains("written") && text.contains("BusyBox"),
        "{text}"
    );
    let files = cache_files(&cache);
    let layer = files
        .iter()
        .find(|f| f.ends_with(".layer"))
        .unwrap_or_else(|| panic!("no layer in the cache: {files:?}"))
        .clone();
    assert!(
        files.iter().all(|f| !f.starts_with('.')),
        "temporary files left in the cache: {files:?}"
    );

    // A second pod reuses the cached layer (not rebuilt: same inode).
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(cache.join(&layer)).unwrap().ino();
    let o = run(&ctd, "v2", &allowed);
    assert!(o.status.success(), "{}", out(&o));
    assert_eq!(std::fs::metadata(cache.join(&layer)).unwrap().ino(), ino);
    assert_eq!(cache_files(&cache), files);
    let log = ctd.log();
    assert!(
        log.contains("layer ready"),
        "no layer log in containerd's log"
    );

    // A policy naming another image: the guest refuses the layer.
    let other = fragment
        .lines()
        .map(|l| {
            if l.starts_with("layers") {
                format!("layers = [\"{}\"]", "ab".repeat(32))
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    let o = run(&ctd, "v3", &initdata(&other));
    let text = out(&o);
    assert!(!o.status.success(), "{text}");
    assert!(
        text.contains("not an image of the pod's initdata policy"),
        "{text}"
    );

    // Images in the policy with a malformed hash: one error naming it.
    let o = run(&ctd, "v4", &initdata("[[images]]\nlayers = [\"abc\"]\n"));
    let text = out(&o);
    assert!(!o.status.success(), "{text}");
    assert!(text.contains("images[0].layers[0]"), "{text}");

    // A pod without images in its policy: refused, naming the way out.
    let o = run(&ctd, "v5", &initdata("exec = true\n"));
    let text = out(&o);
    assert!(!o.status.success(), "{text}");
    assert!(
        text.contains("lists none") && text.contains("image.allow_unverified"),
        "{text}"
    );

    // A byte changed in the middle of the cached layer (file data of
    // /data/big): the container starts (superblock and metadata intact),
    // and reading that file fails with EIO in the guest — never the
    // changed bytes.
    let path = cache.join(&layer);
    let meta = std::fs::read_to_string(path.with_extension("meta")).unwrap();
    let data_blocks: usize = meta.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mid = data_blocks / 2 * 4096 + 123;
    let mut data = std::fs::read(&path).unwrap();
    data[mid] ^= 0x01;
    std::fs::write(&path, &data).unwrap();
    let o = ctd
        .ctr(&[
            "run",
            "--rm",
            "--annotation",
            &allowed,
            "--runtime",
            RUNTIME,
            IMAGE,
            "v8",
            "sh",
            "-c",
            "echo started; cat /data/big >/dev/null",
        ])
        .unwrap();
    let text = out(&o);
    assert!(!o.status.success(), "{text}");
    assert!(
        text.contains("started") && text.contains("Input/output error"),
        "{text}"
    );
    data[mid] ^= 0x01;
    std::fs::write(&path, &data).unwrap();

    // The host's copy changed by one byte after the policy was made, in
    // the layer's first block: the guest's dm-verity refuses the mount.
    data[2000] ^= 0x01;
    std::fs::write(&path, &data).unwrap();
    let o = run(&ctd, "v6", &allowed);
    let text = out(&o);
    eprintln!("v6: {text}");
    assert!(!o.status.success(), "{text}");
    assert!(text.contains("failed dm-verity verification"), "{text}");

    ctd.assert_no_shims();
    sb.assert_clean();
    drop(ctd);
    drop(cache_dir);
    if let Some(flavor) = Flavor::system() {
        pinned_processes(&env, flavor);
    }

    // The node's default (verified layers for TEE pods only; there is no
    // TEE here): the host sends the root over virtio-fs, and the guest
    // refuses it, since the pod's policy names images.
    let plain = Sandbox::new(&env, |t| {
        t["runtime"].as_table_mut().unwrap().insert(
            "allowed_annotations".into(),
            vec![toml::Value::from(KATA_INITDATA)].into(),
        );
    });
    let Some(flavor) = Flavor::system() else {
        return;
    };
    let ctd = Containerd::start(&env, &plain, flavor, &["default"]);
    let o = run(&ctd, "v7", &allowed);
    let text = out(&o);
    assert!(!o.status.success(), "{text}");
    assert!(
        text.contains(
            "has no verified layers, but the pod's initdata policy allows only its [[images]]"
        ),
        "{text}"
    );
    ctd.assert_no_shims();
    plain.assert_clean();
}

/// The image's entry pins what its containers run (`cocoon policy`'s
/// default): a second entry for the same layers allows a second command,
/// with an environment entry and a volume its patterns allow; another
/// command of the same image, an environment entry the policy does not
/// name, a host volume over the image's files and an empty file system
/// over them are each refused by the guest, with the pin named. (The image's own command, `sh`, waits for
/// input under `ctr run` with runc as with Cocoon; the CRI test runs the
/// pause image's own pinned command.)
fn pinned_processes(env: &cocoon_tests::Env, flavor: Flavor) {
    let cache_dir = tempfile::tempdir().unwrap();
    let sb = Sandbox::new(env, |t| {
        t["runtime"].as_table_mut().unwrap().insert(
            "allowed_annotations".into(),
            vec![toml::Value::from(KATA_INITDATA)].into(),
        );
        let mut image = toml::Table::new();
        image.insert("verified_layers".into(), "always".into());
        image.insert(
            "layer_cache_dir".into(),
            cache_dir.path().display().to_string().into(),
        );
        t.insert("image".into(), image.into());
    });
    let ctd = Containerd::start(env, &sb, flavor, &["default"]);
    let o = sb
        .cocoon()
        .args(["policy", "--volume", "/data/*", "--env", "MODE=fast"])
        .arg(&image_archives().0)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let fragment = String::from_utf8(o.stdout).unwrap();
    // The pins are the image config's (Cmd /bin/sh, no WorkingDir, no Env)
    // with what containerd and the kubelet add.
    let doc: toml::Table = toml::from_str(&fragment).unwrap();
    let entry = doc["images"].as_array().unwrap()[0]
        .as_table()
        .unwrap()
        .clone();
    let strings = |k: &str| -> Vec<String> {
        entry[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(strings("args"), ["/bin/sh"], "{fragment}");
    assert_eq!(entry["cwd"].as_str(), Some("/"), "{fragment}");
    let env_pins = strings("env");
    assert!(
        env_pins[0].starts_with("PATH=/usr/local/sbin:")
            && env_pins.contains(&"HOSTNAME=*".to_string())
            && env_pins.last().map(String::as_str) == Some("MODE=fast"),
        "{fragment}"
    );
    let volume_pins = strings("volumes");
    assert!(
        volume_pins.contains(&"/etc/resolv.conf".to_string())
            && volume_pins.last().map(String::as_str) == Some("/data/*"),
        "{fragment}"
    );
    // A second entry for the same layers: the probe's command.
    let probe = "grep ' / ' /proc/mounts; echo \"mode=$MODE\"";
    let mut second = entry.clone();
    second.insert(
        "args".into(),
        toml::Value::Array(
            ["sh", "-c", probe]
                .iter()
                .map(|a| toml::Value::from(*a))
                .collect(),
        ),
    );
    let mut both = doc.clone();
    both["images"].as_array_mut().unwrap().push(second.into());
    let allowed = initdata(&toml::to_string(&both).unwrap());
    let ctr_run = |id: &str, extra: &[&str], cmd: &[&str]| {
        let mut args = vec![
            "run",
            "--rm",
            "--annotation",
            &allowed,
            "--runtime",
            RUNTIME,
        ];
        args.extend_from_slice(extra);
        args.push(IMAGE);
        args.push(id);
        args.extend_from_slice(cmd);
        let o = ctd.ctr(&args).unwrap();
        (o.status.success(), out(&o))
    };

    // The second entry's command, with an allowed environment entry and a
    // volume where the policy allows one.
    let vol = tempfile::tempdir().unwrap();
    let data_mount = format!(
        "type=bind,src={},dst=/data/in,options=rbind:ro",
        vol.path().display()
    );
    let (ok, text) = ctr_run(
        "p2",
        &["--env", "MODE=fast", "--mount", &data_mount],
        &["sh", "-c", probe],
    );
    assert!(
        ok && text.contains("mode=fast") && text.contains("overlay / overlay"),
        "{text}"
    );
    // Another command of the same image.
    let (ok, text) = ctr_run("p3", &[], &["sh", "-c", "cat /proc/self/environ"]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("not what the host asks it to run")
            && text.contains("images[0] (")
            && text.contains("process.args [\"sh\", \"-c\", \"cat /proc/self/environ\"]"),
        "{text}"
    );
    // An environment entry the policy does not name (the value is not
    // echoed: the host's environment may hold sealed values).
    let (ok, text) = ctr_run(
        "p4",
        &["--env", "LD_PRELOAD=/data/in/x.so"],
        &["sh", "-c", probe],
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains("process.env entry LD_PRELOAD=… matches none of its env patterns")
            && !text.contains("x.so"),
        "{text}"
    );
    // A host volume over the image's own files.
    let over_bin = format!(
        "type=bind,src={},dst=/bin,options=rbind:ro",
        vol.path().display()
    );
    let (ok, text) = ctr_run("p5", &["--mount", &over_bin], &["sh", "-c", probe]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("a host mount at \"/bin\" matches none of its volumes patterns"),
        "{text}"
    );
    // An empty file system over the image's files (hiding, say, a
    // configuration that turns authentication on).
    let (ok, text) = ctr_run(
        "p6",
        &["--mount", "type=tmpfs,src=tmpfs,dst=/etc,options=nosuid"],
        &["sh", "-c", probe],
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains("a host mount at \"/etc\" matches none of its volumes patterns"),
        "{text}"
    );
    ctd.assert_no_shims();
    sb.assert_clean();
}

/// A CRI pod on verified layers: the sandbox (pause image) and an
/// application container, whose images share their one layer, so the pod's
/// VM gets one disk for both; the guest refuses a container the policy
/// does not allow; with the node's default (`verified_layers = "tee"`, no
/// TEE here) the host sends the root over virtio-fs, and the guest refuses
/// that too when the pod's policy names images.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cri_pod_runs_its_sandbox_and_containers_from_verified_layers() {
    cri_pod(
        "a_cri_pod_runs_its_sandbox_and_containers_from_verified_layers",
        Flavor::system(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cri_pod_on_verified_layers_with_containerd_2() {
    cri_pod(
        "a_cri_pod_on_verified_layers_with_containerd_2",
        Flavor::v2(),
    )
    .await;
}

async fn cri_pod(test: &str, flavor: Option<Flavor>) {
    use cocoon_tests::cri::{connect, container_config, exec_out, sandbox_config};
    use k8s_cri::v1::*;
    let Some(env) = env_or_skip(test) else { return };
    let Some(flavor) = flavor else {
        eprintln!("SKIP {test}: this containerd is not installed (make deps)");
        return;
    };
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("layers");
    let sb = Sandbox::new(&env, |t| {
        t["runtime"].as_table_mut().unwrap().insert(
            "allowed_annotations".into(),
            vec![toml::Value::from(KATA_INITDATA)].into(),
        );
        let mut image = toml::Table::new();
        image.insert("verified_layers".into(), "always".into());
        image.insert("layer_cache_dir".into(), cache.display().to_string().into());
        t.insert("image".into(), image.into());
    });
    let ctd = tokio::task::block_in_place(|| Containerd::start(&env, &sb, flavor, &["k8s.io"]));
    // The sandbox runs the pause image's own command, pinned; the
    // application container runs a command of the test's.
    let mut fragment = String::new();
    for (image, extra) in [
        (&image_archives().1, None),
        (&image_archives().0, Some("--any-process")),
    ] {
        let o = sb
            .cocoon()
            .arg("policy")
            .args(extra)
            .arg(image)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", out(&o));
        fragment.push_str(&String::from_utf8(o.stdout).unwrap());
    }
    assert!(fragment.contains("\"/bin/sleep\""), "{fragment}");
    let (key, value) = initdata(&fragment)
        .split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .unwrap();
    let mut cri = connect(ctd.cri_socket().to_path_buf()).await;
    let mut config = sandbox_config("vp", "default");
    config.annotations.insert(key, value);
    let pod = cri
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: "cocoon".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", ctd.log()))
        .into_inner()
        .pod_sandbox_id;
    let id = cri
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("app", "sleep 1000")),
            sandbox_config: Some(config.clone()),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", ctd.log()))
        .into_inner()
        .container_id;
    cri.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    let mounts = exec_out(&mut cri, &id, "grep ' / ' /proc/mounts; ls /sys/block").await;
    assert!(
        mounts.contains("overlay / overlay") && mounts.contains("lowerdir=/run/cocoon/layers/"),
        "{mounts}"
    );
    // The host's root filesystems are not in the share: each container's
    // rootfs there is an empty directory.
    let mut roots = Vec::new();
    let mut stack = vec![sb.state_dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if e.file_name() == "rootfs" {
                    roots.push(p);
                } else {
                    stack.push(p);
                }
            }
        }
    }
    assert_eq!(roots.len(), 2, "{roots:?}");
    for r in &roots {
        assert_eq!(
            std::fs::read_dir(r).unwrap().count(),
            0,
            "{} is not empty",
            r.display()
        );
    }
    // Both images are the same one layer: one disk, built once.
    let log = ctd.log();
    let built = log
        .lines()
        .filter(|l| l.contains("layer ready") && l.contains("\"built\":true"))
        .count();
    let verified = log
        .lines()
        .filter(|l| l.contains("\"verified layers\""))
        .count();
    assert_eq!((built, verified), (1, 2), "{log}");
    assert!(
        mounts.contains("vda") && !mounts.contains("vdb"),
        "{mounts}"
    );
    cri.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    cri.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
    tokio::task::block_in_place(|| {
        ctd.assert_no_shims();
        sb.assert_clean();
    });
}

/// `cocoon policy docker://...` reads the image from a local registry
/// (Debian's docker-registry, the image pushed by containerd) and prints
/// the same root hashes as from the image archive.
#[test]
fn cocoon_policy_reads_an_image_from_a_local_registry() {
    let test = "cocoon_policy_reads_an_image_from_a_local_registry";
    let Some((_env, sb, ctd)) = cocoon_tests::containerd::setup(test, &["default"]) else {
        return;
    };
    if !Path::new("/usr/bin/docker-registry").exists() {
        eprintln!("SKIP {test}: docker-registry is not installed (make deps)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut registry = std::process::Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("registry.log")).unwrap())
        .spawn()
        .unwrap();
    let up = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let pushed = format!("127.0.0.1:{port}/cocoon/busybox:1");
    let result = std::panic::catch_unwind(|| {
        assert!(up, "docker-registry did not listen");
        let o = ctd.ctr(&["images", "tag", IMAGE, &pushed]).unwrap();
        assert!(o.status.success(), "{}", out(&o));
        let o = ctd
            .ctr(&["images", "push", "--plain-http", &pushed])
            .unwrap();
        assert!(o.status.success(), "{}", out(&o));
        let from_registry = sb
            .cocoon()
            .args(["policy", "--name", "x"])
            .arg(format!("docker://{pushed}"))
            .output()
            .unwrap();
        assert!(from_registry.status.success(), "{}", out(&from_registry));
        let from_archive = sb
            .cocoon()
            .args(["policy", "--name", "x"])
            .arg(&image_archives().0)
            .output()
            .unwrap();
        assert!(from_archive.status.success(), "{}", out(&from_archive));
        assert_eq!(
            String::from_utf8_lossy(&from_registry.stdout),
            String::from_utf8_lossy(&from_archive.stdout)
        );
        // A tag the registry does not have: one error naming it.
        let o = sb
            .cocoon()
            .arg("policy")
            .arg(format!("docker://127.0.0.1:{port}/cocoon/busybox:nope"))
            .output()
            .unwrap();
        assert!(!o.status.success());
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            e.contains("/v2/cocoon/busybox/manifests/nope") && e.contains("404"),
            "{e}"
        );
    });
    let _ = registry.kill();
    let _ = registry.wait();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}
