//! The guest image: two builds from the same kernel and agent give
//! byte-identical initrds; the guest boots Cocoon's own kernel (built by
//! `make kernel`, checked for reproducibility by `make test-repro`), which
//! has what Cocoon's features need and also boots through OVMF's direct
//! kernel boot, as SEV-SNP and TDX guests do.

use std::path::{Path, PathBuf};
use std::process::Command;

use cocoon_tests::{env_or_skip, repo_root, text, Sandbox};

#[test]
fn initrd_is_reproducible() {
    // Debian's kernel: its vsock and TEE drivers are modules, so the
    // initrd carries them (Cocoon's kernel has them built in).
    let root = repo_root();
    let kernel = root.join("build/kernel");
    if !kernel.join("boot").exists() {
        eprintln!(
            "SKIP initrd_is_reproducible: build/kernel missing (make deps unpacks Debian's kernel)"
        );
        return;
    }
    let Some(agent) = std::env::var_os("COCOON_AGENT_BIN") else {
        eprintln!("SKIP initrd_is_reproducible: needs COCOON_AGENT_BIN (run `make test`)");
        return;
    };
    let builder = std::env::var_os("COCOON_BIN_DIR")
        .map(|d| std::path::Path::new(&d).join("cocoon-guest-build"));
    let Some(builder) = builder.filter(|b| b.exists()) else {
        eprintln!("SKIP initrd_is_reproducible: cocoon-guest-build not built (run `make test`)");
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let build = |dir: &str| {
        let st = Command::new(&builder)
            .arg("--kernel-dir")
            .arg(&kernel)
            .arg("--agent")
            .arg(&agent)
            .arg("--out")
            .arg(out.path().join(dir))
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::read(out.path().join(dir).join("initrd.img")).unwrap()
    };
    let (a, b) = (build("a"), build("b"));
    assert!(
        a.len() > 1024 * 1024,
        "initrd suspiciously small: {}",
        a.len()
    );
    assert!(a == b, "two builds differ");
    let ma = std::fs::read_to_string(out.path().join("a/manifest.json")).unwrap();
    let mb = std::fs::read_to_string(out.path().join("b/manifest.json")).unwrap();
    assert_eq!(ma, mb);
    assert!(ma.contains("vmw_vsock_virtio_transport.ko"), "{ma}");
}

/// `KEY=value` lines of Cocoon's kernel build record.
fn build_info(dir: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(dir.join("build-info")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
        .unwrap_or_else(|| panic!("no {key} in build-info: {text}"))
}

/// Cocoon's kernel tree, or `None` after printing why the test is skipped.
fn cocoon_kernel(test: &str) -> Option<PathBuf> {
    let dir = repo_root().join("build/kernel-cocoon");
    if dir.join("build-info").exists() {
        Some(dir)
    } else {
        eprintln!("SKIP {test}: build/kernel-cocoon missing (make kernel; the guest was built with KERNEL=debian)");
        None
    }
}

#[test]
fn the_guest_boots_cocoons_reproducible_kernel() {
    let test = "the_guest_boots_cocoons_reproducible_kernel";
    let (Some(env), Some(kdir)) = (env_or_skip(test), cocoon_kernel(test)) else {
        return;
    };
    let guest = repo_root().join("build/guest");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(guest.join("manifest.json")).unwrap())
            .unwrap();
    // The guest's kernel is the one build.sh recorded, byte for byte, with
    // the recorded configuration; its drivers are built in, so the initrd
    // carries no modules.
    assert_eq!(
        manifest["kernel"]["sha256"].as_str(),
        Some(build_info(&kdir, "bzimage_sha256").as_str()),
        "{manifest}"
    );
    assert_eq!(
        manifest["kernel_config_sha256"].as_str(),
        Some(build_info(&kdir, "config_sha256").as_str())
    );
    assert!(
        manifest["kernel_source"]
            .as_str()
            .is_some_and(|s| s.starts_with("linux-source-6.12=")),
        "{manifest}"
    );
    assert_eq!(manifest["modules"], serde_json::json!([]), "{manifest}");
    let release = std::fs::read_to_string(kdir.join("release")).unwrap();
    assert!(release.trim().ends_with("-cocoon"), "{release}");
    // Every fragment value is in the built configuration.
    let config =
        std::fs::read_to_string(kdir.join(format!("boot/config-{}", release.trim()))).unwrap();
    let fragment =
        std::fs::read_to_string(repo_root().join("guest-rootfs/kernel/cocoon.config")).unwrap();
    for line in fragment.lines().filter(|l| l.starts_with("CONFIG_")) {
        assert!(
            config.lines().any(|c| c == line),
            "{line} is not in the built .config"
        );
    }
    assert!(config.contains("\nCONFIG_INIT_ON_ALLOC_DEFAULT_ON=y\n"));
    // `cocoon check` names the kernel and says it is the reproducible one.
    let sb = Sandbox::new(&env, |_| {});
    let o = sb.cocoon().arg("check").output().unwrap();
    let out = text(&o).0;
    let line = out
        .lines()
        .find(|l| l.contains(" kernel "))
        .unwrap_or_else(|| panic!("no kernel finding: {out}"));
    assert!(
        line.starts_with("ok") && line.contains(release.trim()) && line.contains("reproducible"),
        "{line}"
    );
}

#[test]
fn the_kernel_has_what_cocoons_features_need() {
    let test = "the_kernel_has_what_cocoons_features_need";
    let (Some(env), Some(_)) = (env_or_skip(test), cocoon_kernel(test)) else {
        return;
    };
    let sb = Sandbox::new(&env, |_| {});
    // Probed from inside a container: what the kernel registered.
    let o = sb.run(&[
        "/bin/sh",
        "-c",
        "uname -r; cat /proc/filesystems /proc/misc /proc/devices /proc/crypto; \
         grep Seccomp /proc/self/status; cat /proc/cgroups; \
         test -d /proc/sys/net/ipv6 && echo ipv6=yes",
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        out.lines().next().unwrap_or("").ends_with("-cocoon"),
        "{out}"
    );
    let words: std::collections::HashSet<&str> = out.split_whitespace().collect();
    for need in [
        // virtio-fs root, container rootfs and mounts, verified layers
        "virtiofs",
        "fuse",
        "overlay",
        "tmpfs",
        "erofs",
        "cgroup2",
        "mqueue",
        "devpts",
        "configfs",
        "hugetlbfs",
        // dm-verity / dm-crypt
        "device-mapper",
        // the crypto NVIDIA's driver uses for SPDM with a CC-mode GPU
        "aes",
        "ghash",
        "ecdh-nist-p256",
        "ecdsa-nist-p384",
        "rsa",
        // seccomp filters (the status line exists only with SECCOMP_FILTER)
        "Seccomp_filters:",
        // IPv6 for pod networking
        "ipv6=yes",
    ] {
        assert!(
            words.contains(need),
            "{need} missing from the guest kernel:\n{out}"
        );
    }
    // cgroup controllers the OCI resources map to (/proc/cgroups: v1 names
    // such as blkio for io;
    // hierarchy, count, enabled).
    for c in ["cpuset", "cpu", "blkio", "memory", "hugetlb", "pids"] {
        assert!(
            out.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() == 4 && f[0] == c && f[3] == "1"
            }),
            "cgroup controller {c} missing:\n{out}"
        );
    }
    sb.assert_clean();
}

#[test]
fn ovmf_direct_kernel_boot_reaches_the_agent() {
    let test = "ovmf_direct_kernel_boot_reaches_the_agent";
    let Some(env) = env_or_skip(test) else {
        return;
    };
    let ovmf = Path::new("/usr/share/ovmf/OVMF.fd");
    if !ovmf.exists() {
        eprintln!(
            "SKIP {test}: {} missing (make deps installs ovmf)",
            ovmf.display()
        );
        return;
    }
    // The kernel's EFI stub, started by OVMF from fw_cfg: the path SEV-SNP
    // and TDX launches take, here without a TEE.
    let sb = Sandbox::new(&env, |t| {
        let q = t["hypervisor"]["qemu"].as_table_mut().unwrap();
        q.insert("firmware".into(), ovmf.display().to_string().into());
        t["agent"]
            .as_table_mut()
            .unwrap()
            .insert("dial_timeout".into(), 120.into());
    });
    // (/sys/firmware is masked in containers; the kernel log says it.)
    let o = sb.run(&["/bin/sh", "-c", "uname -r; dmesg | grep 'efi: EFI v'"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(
        out.contains("by EDK II"),
        "the guest did not boot through OVMF: {out}"
    );
    sb.assert_clean();
}

#[test]
fn zero_on_allocate_cannot_be_turned_off_under_tcg() {
    let test = "zero_on_allocate_cannot_be_turned_off_under_tcg";
    let Some(env) = env_or_skip(test) else {
        return;
    };
    // Without it, programs on the virtio-fs root crash under TCG: refused
    // before anything starts.
    let sb = Sandbox::new(&env, |t| {
        let q = t["hypervisor"]["qemu"].as_table_mut().unwrap();
        q.insert("accel".into(), "tcg".into());
        q.insert("kernel_params".into(), "init_on_alloc=0".into());
    });
    let o = sb.run(&["true"]);
    let err = text(&o).1;
    assert_ne!(o.status.code(), Some(0));
    assert!(
        err.contains("hypervisor.qemu.kernel_params") && err.contains("init_on_alloc=0"),
        "{err}"
    );
    sb.assert_clean();
}

#[test]
fn kernel_build_bad_input_is_refused_clearly() {
    let test = "kernel_build_bad_input_is_refused_clearly";
    let Some(kdir) = cocoon_kernel(test) else {
        return;
    };
    let script = repo_root().join("guest-rootfs/kernel/build.sh");
    let release = std::fs::read_to_string(kdir.join("release")).unwrap();
    let config = kdir.join(format!("boot/config-{}", release.trim()));
    let tmp = tempfile::tempdir().unwrap();

    // A fragment value the kernel does not know, or that does not survive
    // olddefconfig, is an error naming it.
    let fragment = tmp.path().join("fragment");
    let mut text =
        std::fs::read_to_string(repo_root().join("guest-rootfs/kernel/cocoon.config")).unwrap();
    text.push_str("CONFIG_COCOON_NO_SUCH_OPTION=y\nCONFIG_MODULES=n\n");
    std::fs::write(&fragment, text).unwrap();
    let o = Command::new(&script)
        .arg("--check-config")
        .args([&fragment, &config])
        .output()
        .unwrap();
    let err = text_of(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("CONFIG_COCOON_NO_SUCH_OPTION=y (final: absent: unknown symbol")
            && err.contains("# CONFIG_MODULES is not set (final: CONFIG_MODULES=y)"),
        "{err}"
    );
    // The repository's own fragment passes the same check.
    let o = Command::new(&script)
        .arg("--check-config")
        .arg(repo_root().join("guest-rootfs/kernel/cocoon.config"))
        .arg(&config)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text_of(&o.stderr));

    // A source version the archive does not have: a clear error, no
    // output tree and no scratch directory left.
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let out = tmp.path().join("out");
    let o = Command::new(&script)
        .arg(&out)
        .env("COCOON_KERNEL_SOURCE_VERSION", "6.12.0-0cocoon~absent")
        .env("COCOON_CACHE_DIR", "")
        .env("TMPDIR", &scratch)
        .output()
        .unwrap();
    let err = text_of(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("cannot download linux-source-6.12=6.12.0-0cocoon~absent")
            && err.contains("source-version"),
        "{err}"
    );
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);

    // A cache entry whose files no longer match its SHA256SUMS is never
    // used: an error naming the entry, and no output tree.
    let key = String::from_utf8(
        Command::new(&script)
            .arg("--print-key")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    if key.trim() != build_info(&kdir, "cache_key") {
        eprintln!("SKIP {test} (cache part): build/kernel-cocoon is not built from this tree's fragment (make kernel)");
        return;
    }
    let entry = tmp.path().join("cache/kernel").join(key.trim());
    std::fs::create_dir_all(entry.parent().unwrap()).unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .args([&kdir, &entry])
        .status()
        .unwrap();
    assert!(st.success());
    // The intact entry is used as it is.
    let o = Command::new(&script)
        .arg(&out)
        .env("COCOON_CACHE_DIR", tmp.path().join("cache"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text_of(&o.stderr));
    assert!(text_of(&o.stdout).contains("from the cache"));
    std::fs::remove_dir_all(&out).unwrap();
    let image = entry.join(format!("boot/vmlinuz-{}", release.trim()));
    let mut bytes = std::fs::read(&image).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&image, bytes).unwrap();
    let o = Command::new(&script)
        .arg(&out)
        .env("COCOON_CACHE_DIR", tmp.path().join("cache"))
        .output()
        .unwrap();
    let err = text_of(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("does not match its SHA256SUMS")
            && err.contains(&format!("rm -rf '{}'", entry.display())),
        "{err}"
    );
    assert!(!out.exists() && !tmp.path().join("out.partial").exists());
}

fn text_of(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
