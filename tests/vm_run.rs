//! `cocoon run` end to end: real QEMU (TCG here), Cocoon's guest kernel,
//! the static agent from the initrd, virtiofsd and vhost-device-vsock.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use cocoon_tests::{busybox_rootfs, env_or_skip, text, Sandbox, BIG_FILE_LEN};
use sha2::{Digest, Sha256};

#[test]
fn echo_and_exit_code() {
    let Some(env) = env_or_skip("echo_and_exit_code") else {
        return;
    };
    let sb = Sandbox::new(&env, |_| {});
    let o = sb.run(&["/bin/sh", "-c", "echo hi; echo to-stderr >&2; exit 3"]);
    let (out, err) = text(&o);
    assert_eq!(out, "hi\n", "stderr: {err}");
    assert!(err.contains("to-stderr"), "{err}");
    assert_eq!(o.status.code(), Some(3), "{err}");
    sb.assert_clean();
}

#[test]
fn exit_codes_zero_and_sigkill() {
    let Some(env) = env_or_skip("exit_codes_zero_and_sigkill") else {
        return;
    };
    let sb = Sandbox::new(&env, |_| {});
    let o = sb.run(&["true"]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    // The command is PID 1 of its PID namespace, which ignores SIGKILL sent
    // from inside; the kernel's RLIMIT_CPU hard-limit SIGKILL is delivered.
    let o = sb.run(&["/bin/sh", "-c", "ulimit -t 1; while :; do :; done"]);
    assert_eq!(o.status.code(), Some(137), "{:?}", text(&o));
    sb.assert_clean();
}

#[test]
fn stdin_is_piped_through() {
    let Some(env) = env_or_skip("stdin_is_piped_through") else {
        return;
    };
    let sb = Sandbox::new(&env, |_| {});
    let mut child = sb
        .cocoon()
        .args(["run", "-i", "--rootfs"])
        .arg(busybox_rootfs())
        .args(["--", "/bin/sh", "-c", "wc -l; cat >/dev/null; echo done"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for i in 0..1000 {
        writeln!(stdin, "line {i}").unwrap();
    }
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    let (out, err) = text(&o);
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["1000", "done"],
        "stderr: {err}"
    );
    assert_eq!(o.status.code(), Some(0));
    sb.assert_clean();
}

#[test]
fn ten_mib_of_stdout_arrive_intact() {
    let Some(env) = env_or_skip("ten_mib_of_stdout_arrive_intact") else {
        return;
    };
    let sb = Sandbox::new(&env, |_| {});
    let o = sb.run(&["cat", "/data/big"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    assert_eq!(o.stdout.len(), BIG_FILE_LEN);
    let expected = Sha256::digest(std::fs::read(busybox_rootfs().join("data/big")).unwrap());
    assert_eq!(
        Sha256::digest(&o.stdout),
        expected,
        "stdout differs from /data/big"
    );
    sb.assert_clean();
}

#[test]
fn two_vms_at_once() {
    let Some(env) = env_or_skip("two_vms_at_once") else {
        return;
    };
    let sb = Sandbox::new(&env, |_| {});
    let spawn = |n: &str| {
        sb.cocoon()
            .args(["run", "--hostname", n, "--rootfs"])
            .arg(busybox_rootfs())
            .args(["--", "/bin/sh", "-c", "sleep 1; hostname"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("vm-a"), spawn("vm-b"));
    // Both VMs must be up at the same time: two QEMUs under this state dir.
    let start = Instant::now();
    let mut saw_two = false;
    while start.elapsed() < Duration::from_secs(60) && !saw_two {
        let qemus = sb
            .leftover_processes()
            .iter()
            .filter(|p| p.contains("qemu-system"))
            .count();
        saw_two = qemus == 2;
        std::thread::sleep(Duration::from_millis(50));
    }
    let (oa, ob) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(saw_two, "never saw two QEMU processes at once");
    assert_eq!(text(&oa).0, "vm-a\n", "{}", text(&oa).1);
    assert_eq!(text(&ob).0, "vm-b\n", "{}", text(&ob).1);
    sb.assert_clean();
}

#[test]
fn broken_initrd_fails_with_agent_timeout() {
    let Some(env) = env_or_skip("broken_initrd_fails_with_agent_timeout") else {
        return;
    };
    let sb = Sandbox::new(&env, |_| {});
    let bad = sb.dir.path().join("broken-initrd.img");
    std::fs::write(&bad, b"this is not a cpio archive").unwrap();
    let sb2 = Sandbox::new(&env, |t| {
        t["hypervisor"]["qemu"]
            .as_table_mut()
            .unwrap()
            .insert("initrd".into(), bad.display().to_string().into());
        t["agent"]
            .as_table_mut()
            .unwrap()
            .insert("dial_timeout".into(), 20.into());
    });
    let start = Instant::now();
    let o = sb2.run(&["true"]);
    let err = text(&o).1;
    assert_ne!(o.status.code(), Some(0));
    assert!(err.contains("agent did not answer within 20 s"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(40),
        "took {:?}",
        start.elapsed()
    );
    sb2.assert_clean();
}

#[test]
fn wrong_kernel_fails_clearly() {
    let Some(env) = env_or_skip("wrong_kernel_fails_clearly") else {
        return;
    };
    let sb = Sandbox::new(&env, |t| {
        // An ELF binary that is not a kernel.
        t["hypervisor"]["qemu"]
            .as_table_mut()
            .unwrap()
            .insert("kernel".into(), "/bin/busybox".into());
        t["agent"]
            .as_table_mut()
            .unwrap()
            .insert("dial_timeout".into(), 15.into());
    });
    let start = Instant::now();
    let o = sb.run(&["true"]);
    let err = text(&o).1;
    assert_ne!(o.status.code(), Some(0));
    assert!(err.contains("agent did not answer"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(40),
        "took {:?}",
        start.elapsed()
    );
    sb.assert_clean();
}

#[test]
fn bad_input_gets_one_clear_error() {
    let Some(env) = env_or_skip("bad_input_gets_one_clear_error") else {
        return;
    };
    // A command that does not exist in the rootfs.
    let sb = Sandbox::new(&env, |_| {});
    let o = sb.run(&["/no/such/program", "arg"]);
    let err = text(&o).1;
    assert_eq!(o.status.code(), Some(127), "{err}");
    assert!(err.contains("\"/no/such/program\" not found"), "{err}");
    sb.assert_clean();

    // The rootfs is not a directory.
    let o = sb
        .cocoon()
        .args(["run", "--rootfs", "/etc/hostname", "--", "true"])
        .output()
        .unwrap();
    let err = text(&o).1;
    assert_ne!(o.status.code(), Some(0));
    assert!(
        err.contains("--rootfs /etc/hostname: not a directory"),
        "{err}"
    );

    // Missing kernel, missing QEMU.
    for (key, value, needle) in [
        (
            "kernel",
            "/nonexistent/vmlinuz",
            "`hypervisor.qemu.kernel` = \"/nonexistent/vmlinuz\"",
        ),
        (
            "path",
            "/nonexistent/qemu",
            "`hypervisor.qemu.path` = \"/nonexistent/qemu\"",
        ),
    ] {
        let sb = Sandbox::new(&env, |t| {
            t["hypervisor"]["qemu"]
                .as_table_mut()
                .unwrap()
                .insert(key.into(), value.into());
        });
        let o = sb.run(&["true"]);
        let err = text(&o).1;
        assert_ne!(o.status.code(), Some(0));
        assert!(err.contains(needle), "{err}");
        sb.assert_clean();
    }

    // An unreadable (missing) config and an invalid one.
    let o = std::process::Command::new(sb.bin_dir.join("cocoon"))
        .args(["--config", "/nonexistent/c.toml", "config", "show"])
        .output()
        .unwrap();
    assert!(
        text(&o)
            .1
            .contains("cannot read config file /nonexistent/c.toml"),
        "{:?}",
        text(&o)
    );
    let bad = sb.dir.path().join("bad.toml");
    std::fs::write(&bad, "[hypervisor.qemu]\ndefault_vcpus = 0\n").unwrap();
    let o = sb
        .cocoon()
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o)
            .1
            .contains("`hypervisor.qemu.default_vcpus` = 0: must be between 1 and 240"),
        "{:?}",
        text(&o)
    );
    let o = sb
        .cocoon()
        .args(["config", "check"])
        .arg(&sb.config)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
}

#[test]
fn a_helper_dying_during_boot_fails_the_launch_at_once() {
    let Some(env) = env_or_skip("a_helper_dying_during_boot_fails_the_launch_at_once") else {
        return;
    };
    let sb = Sandbox::new(&env, |_| {});
    let start = Instant::now();
    let child = sb
        .cocoon()
        .args(["run", "--rootfs"])
        .arg(busybox_rootfs())
        .args(["--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the vsock helper once QEMU has run for a moment (it has
    // connected to the helper then), long before the guest's agent can
    // answer (the kernel alone takes over a second under TCG).
    let killed = loop {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "QEMU never started"
        );
        let procs = sb.leftover_processes();
        let victim = procs
            .iter()
            .find(|p| p.contains("vhost-device-vsock"))
            .filter(|_| procs.iter().any(|p| p.contains("qemu-system")));
        if let Some(p) = victim {
            std::thread::sleep(Duration::from_millis(300));
            let pid = p.split(':').next().unwrap().to_string();
            std::process::Command::new("kill")
                .args(["-9", &pid])
                .status()
                .unwrap();
            break Instant::now();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        err.contains("vhost-device-vsock exited") && err.contains("before the agent answered"),
        "{err}"
    );
    // Not the 30 s agent timeout: the death is noticed within a second or two.
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "took {:?}: {err}",
        killed.elapsed()
    );
    sb.assert_clean();
}

#[test]
fn bad_arguments_are_refused_before_a_vm_boots() {
    let Some(env) = env_or_skip("bad_arguments_are_refused_before_a_vm_boots") else {
        return;
    };
    let sb = Sandbox::new(&env, |_| {});
    let long = "h".repeat(65);
    for (flags, cmd, needle) in [
        (vec!["--user", "abc"], vec!["true"], "--user \"abc\""),
        (vec!["--user", "1:2:3"], vec!["true"], "--user \"1:2:3\""),
        (
            vec!["--user", "99999999999"],
            vec!["true"],
            "--user \"99999999999\"",
        ),
        (vec!["--user", "4294967295"], vec!["true"], "no change"),
        (
            vec!["--env", "NOEQUALS"],
            vec!["true"],
            "--env \"NOEQUALS\"",
        ),
        (vec!["--env", "=x"], vec!["true"], "--env \"=x\""),
        (
            vec!["--cwd", "relative"],
            vec!["true"],
            "--cwd \"relative\"",
        ),
        (
            vec!["--hostname", long.as_str()],
            vec!["true"],
            "--hostname",
        ),
        (vec![], vec![""], "the command is empty"),
    ] {
        let start = Instant::now();
        let o = sb
            .cocoon()
            .arg("run")
            .arg("--rootfs")
            .arg(cocoon_tests::busybox_rootfs())
            .args(&flags)
            .arg("--")
            .args(&cmd)
            .output()
            .unwrap();
        let err = text(&o).1;
        assert_ne!(o.status.code(), Some(0), "{flags:?}");
        assert!(err.contains(needle), "{flags:?}: {err}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{flags:?} took {:?}: checked after a boot?",
            start.elapsed()
        );
    }
    sb.assert_clean();
}

#[test]
fn a_killed_cocoon_run_is_swept_by_the_next() {
    let Some(env) = env_or_skip("a_killed_cocoon_run_is_swept_by_the_next") else {
        return;
    };
    let sb = Sandbox::new(&env, |_| {});
    let mut child = sb
        .cocoon()
        .args(["run", "--rootfs"])
        .arg(cocoon_tests::busybox_rootfs())
        .args(["--", "sleep", "1000"])
        .spawn()
        .unwrap();
    let start = Instant::now();
    let run_dir = loop {
        let found = std::fs::read_dir(&sb.state_dir).ok().and_then(|d| {
            d.flatten()
                .map(|e| e.path())
                .find(|p| p.join("processes.json").exists())
        });
        if let Some(d) = found {
            break d;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no run directory"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // A second run while the first lives leaves its directory alone.
    let o = sb.run(&["true"]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(run_dir.exists(), "a live run's directory was swept");
    child.kill().unwrap();
    child.wait().unwrap();
    // Its QEMU and helpers die with it (parent-death signal).
    let start = Instant::now();
    while !sb.leftover_processes().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            sb.leftover_processes()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(run_dir.exists(), "kill -9 leaves the directory behind");
    // A process tearing down its memory has no command line any more but
    // is not gone yet (a 1 GiB QEMU takes a while on a loaded host); the
    // sweep rightly waits for it, so does this test.
    let start = Instant::now();
    while cocoon_vmm::vm::recorded_alive(&run_dir) > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "recorded processes never ended"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = sb.run(&["true"]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(!run_dir.exists(), "the next run sweeps it");
    sb.assert_clean();
}

/// A read-only disk: a layer image built on the host reaches the guest as
/// a virtio-blk device the kernel marks read-only, with its serial and
/// size; a disk that does not exist is refused before a VM boots, naming
/// it.
#[test]
fn a_layer_image_reaches_the_guest_as_a_read_only_disk() {
    let Some(env) = env_or_skip("a_layer_image_reaches_the_guest_as_a_read_only_disk") else {
        return;
    };
    let sb = Sandbox::new(&env, |_| {});
    let mut t = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(100_000);
    t.append_data(&mut h, "data", &vec![7u8; 100_000][..])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("layer.erofs");
    let (_, len) = cocoon_image::layer::to_erofs(
        &t.into_inner().unwrap()[..],
        std::fs::File::create(&image).unwrap(),
        cocoon_image::oci::LAYER_FS_UUID,
    )
    .unwrap();
    let o = sb
        .cocoon()
        .arg("run")
        .arg("--rootfs")
        .arg(busybox_rootfs())
        .arg("--disk")
        .arg(&image)
        .args([
            "--",
            "sh",
            "-c",
            "for f in serial ro size; do echo $(cat /sys/block/vda/$f); done",
        ])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(out, format!("disk0\n1\n{}\n", len / 512), "{err}");
    sb.assert_clean();

    let missing = dir.path().join("no-such.layer");
    let o = sb
        .cocoon()
        .arg("run")
        .arg("--rootfs")
        .arg(busybox_rootfs())
        .arg("--disk")
        .arg(&missing)
        .args(["--", "true"])
        .output()
        .unwrap();
    let err = text(&o).1;
    assert!(!o.status.success());
    assert!(
        err.contains("no-such.layer") && err.contains("cannot be read"),
        "{err}"
    );
    sb.assert_clean();
}
