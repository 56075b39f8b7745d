//! The shim under a real containerd, driven by `ctr`: containerd 1.6
//! (Debian bookworm) always, containerd 2.x where `make deps` could unpack
//! it. Each test starts its own containerd and checks that no shim, VM,
//! helper, mount or state is left.

use std::process::Command;
use std::time::{Duration, Instant};

use cocoon_tests::containerd::{out, output_with_timeout, Containerd, Flavor, IMAGE, RUNTIME};
use cocoon_tests::{env_or_skip, pids_matching, snp_firmware, Env, GpuHost, Sandbox};

fn setup(test: &str) -> Option<(Env, Sandbox, Containerd)> {
    cocoon_tests::containerd::setup(test, &["default"])
}

fn task_status(ctd: &Containerd, id: &str) -> String {
    let o = ctd.ctr(&["task", "ls"]).unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
        .unwrap_or_default()
}

fn wait_status(ctd: &Containerd, id: &str, want: &str) {
    let start = Instant::now();
    while task_status(ctd, id) != want {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{id} never became {want} (is {})",
            task_status(ctd, id)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ctr run -d ... ID sleep 1000`, then waits until the task runs.
fn run_sleeping(ctd: &Containerd, id: &str) {
    let o = ctd
        .ctr(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            IMAGE,
            id,
            "sleep",
            "1000",
        ])
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    wait_status(ctd, id, "RUNNING");
}

fn run_echo(ctd: &Containerd) {
    let o = ctd
        .ctr(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            IMAGE,
            "t1",
            "echo",
            "hello",
        ])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hello\n", "{}", out(&o));
    assert!(o.status.success(), "{}", out(&o));
    let o = ctd
        .ctr(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            IMAGE,
            "t2",
            "sh",
            "-c",
            "exit 3",
        ])
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", out(&o));
}

#[test]
fn ctr_run_echo_and_exit_code_containerd_1_6() {
    let Some((_env, sb, ctd)) = setup("ctr_run_echo_and_exit_code_containerd_1_6") else {
        return;
    };
    run_echo(&ctd);
    ctd.assert_no_shims();
    sb.assert_clean();
}

#[test]
fn ctr_run_echo_and_exit_code_containerd_2() {
    let test = "ctr_run_echo_and_exit_code_containerd_2";
    let Some(env) = env_or_skip(test) else { return };
    let Some(flavor) = Flavor::v2() else {
        eprintln!("SKIP {test}: containerd 2.x not unpacked in build/containerd2 (make deps fetches it from Debian's unstable suite)");
        return;
    };
    let sb = Sandbox::new(&env, |_| {});
    let ctd = Containerd::start(&env, &sb, flavor, &["default"]);
    run_echo(&ctd);
    ctd.assert_no_shims();
    sb.assert_clean();
}

#[test]
fn ctr_run_with_a_terminal() {
    let Some((_env, sb, ctd)) = setup("ctr_run_with_a_terminal") else {
        return;
    };
    // `script` gives ctr a pseudo-terminal; the size must reach the guest.
    let line = format!(
        "stty rows 33 cols 101; {} -a {} run -t --rm --runtime {RUNTIME} {IMAGE} tty1 sh -c 'sleep 1; tty; stty size; exit 4'",
        ctd.flavor.ctr.display(),
        ctd.sock.display()
    );
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"]);
    let o = output_with_timeout(cmd, Duration::from_secs(120)).unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("/dev/pts/"), "{}", out(&o));
    assert!(text.contains("33 101"), "{}", out(&o));
    assert_eq!(o.status.code(), Some(4), "{}", out(&o));
    ctd.assert_no_shims();
    sb.assert_clean();
}

#[test]
fn exec_pause_resume_kill_and_remove() {
    let Some((_env, sb, ctd)) = setup("exec_pause_resume_kill_and_remove") else {
        return;
    };
    run_sleeping(&ctd, "t3");
    let o = ctd
        .ctr(&[
            "task",
            "exec",
            "--exec-id",
            "e1",
            "t3",
            "sh",
            "-c",
            "echo from-exec; ps -o pid,args; exit 5",
        ])
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("from-exec") && text.contains("sleep 1000"),
        "{}",
        out(&o)
    );
    assert_eq!(o.status.code(), Some(5));
    let o = ctd.ctr(&["task", "ps", "t3"]).unwrap();
    assert!(o.status.success(), "{}", out(&o));
    // The sandbox's reference values, recorded at launch.
    let o = sb
        .cocoon()
        .args(["measure", "--sandbox", "t3"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["tee"], "none", "{m}");
    assert_eq!(
        m["inputs"]["kernel"]["sha256"].as_str().map(str::len),
        Some(64),
        "{m}"
    );
    let o = sb
        .cocoon()
        .args(["measure", "--sandbox", "nope"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no running sandbox \"nope\""),
        "{}",
        out(&o)
    );
    // Metrics come from the guest: one process, some memory, a limit of
    // about the VM's RAM.
    let o = ctd.ctr(&["task", "metrics", "t3"]).unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("pids.current             1"), "{}", out(&o));
    let limit: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("memory.limit_in_bytes"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(limit > 512 << 20 && limit <= 1 << 30, "{}", out(&o));
    assert!(ctd.ctr(&["task", "pause", "t3"]).unwrap().status.success());
    wait_status(&ctd, "t3", "PAUSED");
    assert!(ctd.ctr(&["task", "resume", "t3"]).unwrap().status.success());
    wait_status(&ctd, "t3", "RUNNING");
    // Deleting a running task is refused.
    let o = ctd.ctr(&["task", "rm", "t3"]).unwrap();
    assert!(!o.status.success());
    let o = ctd.ctr(&["task", "kill", "-s", "KILL", "t3"]).unwrap();
    assert!(o.status.success(), "{}", out(&o));
    wait_status(&ctd, "t3", "STOPPED");
    assert!(ctd.ctr(&["task", "rm", "t3"]).unwrap().status.success());
    assert!(ctd.ctr(&["c", "rm", "t3"]).unwrap().status.success());
    ctd.assert_no_shims();
    sb.assert_clean();
}

#[test]
fn two_tasks_at_once() {
    let Some((_env, sb, ctd)) = setup("two_tasks_at_once") else {
        return;
    };
    for id in ["a", "b"] {
        run_sleeping(&ctd, id);
    }
    let qemus = sb
        .leftover_processes()
        .iter()
        .filter(|p| p.contains("qemu-system"))
        .count();
    assert_eq!(qemus, 2, "one VM per task");
    assert_eq!(ctd.shims().len(), 2, "one shim per task");
    for id in ["a", "b"] {
        assert!(ctd.ctr(&["task", "rm", "-f", id]).unwrap().status.success());
        assert!(ctd.ctr(&["c", "rm", id]).unwrap().status.success());
    }
    ctd.assert_no_shims();
    sb.assert_clean();
}

#[test]
fn killed_shim_leaves_no_vm() {
    let Some((_env, sb, ctd)) = setup("killed_shim_leaves_no_vm") else {
        return;
    };
    run_sleeping(&ctd, "ks");
    for pid in ctd.shims() {
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
    }
    let _ = ctd.ctr(&["task", "rm", "-f", "ks"]);
    let _ = ctd.ctr(&["c", "rm", "ks"]);
    ctd.assert_no_shims();
    sb.assert_clean();
    let socket = cocoon_shim::containerd::bootstrap::socket_path(
        &ctd.sock.display().to_string(),
        "default",
        "ks",
    );
    // containerd runs the `delete` action when it notices the dead shim,
    // which may finish just after `ctr` returns.
    let start = Instant::now();
    while socket.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the dead shim's socket {} is left\n{}",
            socket.display(),
            ctd.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_shim_killed_while_its_vm_boots_leaves_nothing() {
    let Some((_env, sb, ctd)) = setup("a_shim_killed_while_its_vm_boots_leaves_nothing") else {
        return;
    };
    let mut run = std::process::Command::new(&ctd.flavor.ctr);
    run.arg("-a")
        .arg(&ctd.sock)
        .args(["run", "--rm", "--runtime", RUNTIME, IMAGE, "kb", "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let child = run.spawn().unwrap();
    // The VM records its processes as it starts them; the agent is not
    // up yet: kill the shim now, in the middle of Create.
    let processes = sb.state_dir.join("kb/vm/processes.json");
    let start = Instant::now();
    while !processes.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the VM never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    for pid in ctd.shims() {
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert!(
        !o.status.success(),
        "Create cannot succeed without its shim"
    );
    let _ = ctd.ctr(&["task", "rm", "-f", "kb"]);
    let _ = ctd.ctr(&["c", "rm", "kb"]);
    ctd.assert_no_shims();
    // No VM process, no mount of the rootfs, no pod directory.
    sb.assert_clean();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&sb.state_dir.display().to_string()),
        "a mount under the state dir is left"
    );
}

#[test]
fn killed_qemu_reports_exit_and_cleans_up() {
    let Some((_env, sb, ctd)) = setup("killed_qemu_reports_exit_and_cleans_up") else {
        return;
    };
    run_sleeping(&ctd, "kq");
    let qemu = pids_matching("qemu-system", &sb.state_dir.display().to_string());
    assert_eq!(qemu.len(), 1);
    Command::new("kill")
        .args(["-9", &qemu[0].to_string()])
        .status()
        .unwrap();
    wait_status(&ctd, "kq", "STOPPED");
    let o = ctd.ctr(&["task", "rm", "kq"]).unwrap();
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("exit code 255") || o.stderr.is_empty(),
        "{}",
        out(&o)
    );
    assert!(ctd.ctr(&["c", "rm", "kq"]).unwrap().status.success());
    ctd.assert_no_shims();
    sb.assert_clean();
}

#[test]
fn tasks_survive_a_containerd_restart() {
    let test = "tasks_survive_a_containerd_restart";
    let Some((_env, sb, mut ctd)) = cocoon_tests::containerd::setup(test, &["default"]) else {
        return;
    };
    let o = ctd
        .ctr(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            IMAGE,
            "r1",
            "sleep",
            "1000",
        ])
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    ctd.wait_running("r1");
    let shims = ctd.shims();
    // The shim and the VM outlive containerd; the new containerd
    // reconnects to the shim from its state, and every verb still works.
    ctd.restart();
    assert_eq!(ctd.shims(), shims, "the shim did not survive the restart");
    ctd.wait_running("r1");
    let o = ctd
        .ctr(&[
            "task",
            "exec",
            "--exec-id",
            "after",
            "r1",
            "sh",
            "-c",
            "echo alive",
        ])
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "alive\n");
    ctd.kill_and_remove("r1");
    ctd.assert_no_shims();
    sb.assert_clean();
}

#[test]
fn a_pods_state_is_private_to_root() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let Some((_env, sb, ctd)) = setup("a_pods_state_is_private_to_root") else {
        return;
    };
    run_sleeping(&ctd, "priv");
    let pod = sb.state_dir.join("priv");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for dir in [pod.clone(), pod.join("shared"), pod.join("vm")] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    for file in ["measurement.json", "processes.json"] {
        assert_eq!(mode(&pod.join("vm").join(file)), 0o600, "{file}");
    }
    // Another local user reads neither the container's files nor the VM's
    // records.
    for target in [
        pod.join("shared/priv/rootfs/bin/busybox"),
        pod.join("vm/measurement.json"),
    ] {
        assert!(target.exists(), "{}", target.display());
        let o = Command::new("cat")
            .arg(&target)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert!(!o.status.success(), "nobody read {}", target.display());
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("Permission denied"),
            "{}",
            out(&o)
        );
    }
    ctd.kill_and_remove("priv");
    ctd.assert_no_shims();
    sb.assert_clean();
}

#[test]
fn calls_to_a_paused_task_fail_fast_and_rm_f_works() {
    let Some((_env, sb, ctd)) = setup("calls_to_a_paused_task_fail_fast_and_rm_f_works") else {
        return;
    };
    run_sleeping(&ctd, "pz");
    assert!(ctd.ctr(&["task", "pause", "pz"]).unwrap().status.success());
    wait_status(&ctd, "pz", "PAUSED");
    for args in [
        vec!["task", "ps", "pz"],
        vec!["task", "exec", "--exec-id", "e1", "pz", "true"],
        vec!["task", "metrics", "pz"],
    ] {
        let start = Instant::now();
        let o = ctd.ctr(&args).unwrap();
        assert!(!o.status.success(), "{args:?}: {}", out(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("the pod's VM is paused")
                || err.contains("\"pz\" is not running")
                // containerd hides the Stats error behind its own message.
                || (args[1] == "metrics" && err.contains("no metrics")),
            "{args:?}: {}",
            out(&o)
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{args:?}: {:?}",
            start.elapsed()
        );
    }
    // The connection is still good after resume.
    assert!(ctd.ctr(&["task", "resume", "pz"]).unwrap().status.success());
    wait_status(&ctd, "pz", "RUNNING");
    let o = ctd
        .ctr(&["task", "exec", "--exec-id", "e2", "pz", "echo", "alive"])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "alive\n", "{}", out(&o));
    // rm -f of a paused task: the VM is resumed to deliver SIGKILL.
    assert!(ctd.ctr(&["task", "pause", "pz"]).unwrap().status.success());
    wait_status(&ctd, "pz", "PAUSED");
    let o = ctd.ctr(&["task", "rm", "-f", "pz"]).unwrap();
    assert!(o.status.success(), "{}", out(&o));
    assert!(ctd.ctr(&["c", "rm", "pz"]).unwrap().status.success());
    ctd.assert_no_shims();
    sb.assert_clean();
}

#[test]
fn a_dead_helper_ends_the_task_cleanly() {
    let Some((_env, sb, ctd)) = setup("a_dead_helper_ends_the_task_cleanly") else {
        return;
    };
    // virtiofsd, then vhost-device-vsock: each death must stop the VM and
    // report the task exited within a bounded time.
    for (id, helper) in [("kv", "virtiofsd"), ("ks", "vhost-device-vsock")] {
        run_sleeping(&ctd, id);
        let pids = pids_matching(helper, &sb.state_dir.display().to_string());
        assert!(!pids.is_empty(), "no {helper} running");
        for pid in pids {
            Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .unwrap();
        }
        let start = Instant::now();
        wait_status(&ctd, id, "STOPPED");
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{helper}: {:?}",
            start.elapsed()
        );
        assert!(
            ctd.log().contains("a helper of the VM died") || helper == "vhost-device-vsock",
            "{}",
            ctd.log()
        );
        let o = ctd.ctr(&["task", "rm", id]).unwrap();
        assert!(o.status.success(), "{helper}: {}", out(&o));
        assert!(ctd.ctr(&["c", "rm", id]).unwrap().status.success());
        assert!(
            pids_matching("qemu-system", &sb.state_dir.display().to_string()).is_empty(),
            "QEMU is gone after {helper} died"
        );
    }
    ctd.assert_no_shims();
    sb.assert_clean();
}

/// `ctr run --rm FLAGS... IMAGE ID CMD...` must fail with `needle` in the
/// error ctr prints (containerd may quote it with escaped quotes); the
/// container record is removed afterwards.
fn run_fails(ctd: &Containerd, id: &str, flags: &[&str], cmd: &[&str], needle: &str) {
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--runtime", RUNTIME, IMAGE, id]);
    args.extend_from_slice(cmd);
    let o = ctd.ctr(&args).unwrap();
    assert!(!o.status.success(), "{}", out(&o));
    let err = String::from_utf8_lossy(&o.stderr).replace("\\\"", "\"");
    assert!(err.contains(needle), "{id}: {err}");
    let _ = ctd.ctr(&["c", "rm", id]);
}

#[test]
fn bad_input_fails_create_cleanly() {
    let Some((_env, sb, ctd)) = setup("bad_input_fails_create_cleanly") else {
        return;
    };
    // An annotation outside the node's allow-list.
    run_fails(
        &ctd,
        "b1",
        &["--annotation", "io.cocoon.debug=1"],
        &["true"],
        "annotation \"io.cocoon.debug\" is not allowed",
    );
    // A config path option that does not exist.
    run_fails(
        &ctd,
        "b2",
        &["--runtime-config-path", "/nonexistent/cocoon.toml"],
        &["true"],
        "cannot read config file /nonexistent/cocoon.toml",
    );
    if let Some(fw) = snp_firmware("bad_input_fails_create_cleanly (SEV-SNP part)") {
        let snp_config = |name: &str, expected: Option<&str>| {
            let path = sb.dir.path().join(name);
            let mut table: toml::Table = std::fs::read_to_string(&sb.config)
                .unwrap()
                .parse()
                .unwrap();
            let q = table["hypervisor"]["qemu"].as_table_mut().unwrap();
            q.insert("tee".into(), "snp".into());
            q.insert("firmware".into(), fw.display().to_string().into());
            if let Some(e) = expected {
                let mut m = toml::Table::new();
                m.insert("expected".into(), vec![toml::Value::from(e)].into());
                table.insert("measurement".into(), m.into());
            }
            std::fs::write(&path, toml::to_string(&table).unwrap()).unwrap();
            path.display().to_string()
        };
        // A confidential configuration on a host without SEV-SNP.
        let snp = snp_config("snp.toml", None);
        run_fails(
            &ctd,
            "b4",
            &["--runtime-config-path", &snp],
            &["true"],
            "this host cannot run SEV-SNP guests",
        );
        // A pinned launch measurement that does not match: refused before
        // anything starts.
        let pinned = snp_config("pinned.toml", Some(&"00".repeat(48)));
        run_fails(
            &ctd,
            "b5",
            &["--runtime-config-path", &pinned],
            &["true"],
            "is not in `measurement.expected`",
        );
    }
    // A command that does not exist in the image.
    run_fails(
        &ctd,
        "b3",
        &[],
        &["/no/such/cmd"],
        "\"/no/such/cmd\" not found",
    );
    ctd.assert_no_shims();
    sb.assert_clean();
}

#[test]
fn shim_start_without_a_valid_spec_fails_clearly() {
    let Some(env) = env_or_skip("shim_start_without_a_valid_spec_fails_clearly") else {
        return;
    };
    let bundle = tempfile::tempdir().unwrap();
    let shim = env.bin_dir.join("containerd-shim-cocoon-v2");
    let start = |dir: &std::path::Path| {
        Command::new(&shim)
            .args([
                "-namespace",
                "t",
                "-address",
                "/nonexistent.sock",
                "-id",
                "x",
                "start",
            ])
            .current_dir(dir)
            .output()
            .unwrap()
    };
    let o = start(bundle.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot read the OCI spec"),
        "{}",
        out(&o)
    );
    std::fs::write(bundle.path().join("config.json"), "{ not json").unwrap();
    let o = start(bundle.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("config.json"),
        "{}",
        out(&o)
    );
    // Nothing was started: no address file, no server.
    assert!(!bundle.path().join("address").exists());
    // `delete` on a bundle without state still answers with a DeleteResponse.
    let o = Command::new(&shim)
        .args(["-namespace", "t", "-address", "/x", "-id", "x", "-bundle"])
        .arg(bundle.path())
        .arg("delete")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    assert!(!o.stdout.is_empty());
}

/// GPUs on a recorded host (sysfs tree with BAR0 files, CDI specs): the pod
/// asks for a GPU through a CDI annotation; the shim resolves it, reads the
/// CC mode from BAR0 and refuses a GPU in the wrong mode, or builds the argv
/// (the launch stops there with `dry_run`, since no device exists here).
#[test]
fn gpu_pods_check_cc_mode_before_launch() {
    let test = "gpu_pods_check_cc_mode_before_launch";
    let Some(env) = env_or_skip(test) else {
        return;
    };
    let Some(flavor) = Flavor::system() else {
        eprintln!("SKIP {test}: containerd is not installed (make deps)");
        return;
    };
    let gpus = GpuHost::new();
    let cdi = gpus.cdi.clone();
    let sb = Sandbox::new(&env, |t| gpus.configure(t));
    let ctd = Containerd::start(&env, &sb, flavor, &["default"]);
    let gpu = |n: &str| format!("cdi.k8s.io/gpu=nvidia.com/pgpu={n}");
    // CC off: refused, naming the GPU, its mode and the fix.
    run_fails(
        &ctd,
        "g1",
        &["--annotation", &gpu("13")],
        &["true"],
        "GPU 0000:42:00.0 (nvidia.com/pgpu=13 (/dev/vfio/13)) is in CC mode off but `gpu.cc_mode` requires on",
    );
    // CC on: the device is cold-plugged behind a root port.
    run_fails(
        &ctd,
        "g2",
        &["--annotation", &gpu("12")],
        &["true"],
        "-device pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=0,multifunction=off -device vfio-pci,host=0000:41:00.0,bus=rp0,id=vfio0",
    );
    // A device node that does not exist on the host.
    run_fails(
        &ctd,
        "g3",
        &["--annotation", &gpu("99")],
        &["true"],
        "/dev/vfio/99 does not exist",
    );
    // An unknown CDI device and a malformed spec.
    run_fails(
        &ctd,
        "g4",
        &["--annotation", &gpu("7")],
        &["true"],
        "nvidia.com/pgpu=7: no CDI spec defines this device",
    );
    std::fs::write(cdi.join("broken.json"), "{\"cdiVersion\": ").unwrap();
    run_fails(
        &ctd,
        "g5",
        &["--annotation", &gpu("12")],
        &["true"],
        "broken.json: is malformed",
    );
    ctd.assert_no_shims();
    sb.assert_clean();
}
