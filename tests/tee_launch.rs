//! Confidential launch without TEE hardware: the SEV-SNP command line Cocoon
//! builds is accepted by the real QEMU up to the point where KVM must create
//! the SNP VM, and a confidential configuration on a host without SNP fails
//! with a clear error and leaves nothing behind.

use std::path::PathBuf;
use std::process::Command;

use cocoon_tests::{env_or_skip, repo_root, snp_firmware, text, Sandbox};
use cocoon_vmm::qemu::argv::{PciArgs, ResolvedAccel, VfioArg, VmArgs, VsockDevice};
use cocoon_vmm::tee::LaunchTee;

fn snp_args(dir: &std::path::Path) -> VmArgs {
    VmArgs {
        name: "cocoon-snp-parse".into(),
        accel: ResolvedAccel::Kvm,
        machine_type: "q35".into(),
        cpu_model: "EPYC-v4".into(),
        vcpus: 1,
        memory_mib: 512,
        kernel: repo_root().join("build/guest/vmlinuz"),
        initrd: repo_root().join("build/guest/initrd.img"),
        firmware: Some("/usr/share/ovmf/OVMF.fd".into()),
        cmdline: "quiet".into(),
        // Kernel vhost-vsock and no vhost-user sockets, so nothing before
        // the accelerator needs a peer.
        vsock: VsockDevice::Vhost { cid: 7 },
        shares: vec![],
        console_log: None,
        qmp_socket: dir.join("qmp.sock"),
        tee: LaunchTee::Snp {
            cbitpos: 51,
            reduced_phys_bits: 1,
            policy: 0x30000,
            host_data: Some([0x5a; 32]),
        },
        pci: PciArgs::default(),
        nics: vec![],
        disks: vec![],
    }
}

fn run_qemu(args: &VmArgs) -> String {
    let out = Command::new("qemu-system-x86_64")
        .args(args.to_argv())
        .output()
        .expect("run qemu");
    assert!(
        !out.status.success(),
        "QEMU cannot succeed without SNP hardware"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn real_qemu_accepts_the_snp_command_line() {
    let test = "real_qemu_accepts_the_snp_command_line";
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
        || !PathBuf::from("/usr/share/ovmf/OVMF.fd").exists()
    {
        eprintln!("SKIP {test}: qemu-system-x86_64 or /usr/share/ovmf/OVMF.fd missing (make deps)");
        return;
    }
    if !repo_root().join("build/guest/vmlinuz").exists() {
        eprintln!("SKIP {test}: build/guest missing (make guest)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let err = run_qemu(&snp_args(dir.path()));
    // QEMU parsed every option and created the sev-snp-guest object; it
    // stops where KVM must create an SNP VM (or open /dev/sev).
    let hw = ["SEV-SNP not supported by KVM", "/dev/sev", "KVM"];
    assert!(
        hw.iter().any(|h| err.contains(h)),
        "expected a hardware error, got: {err}"
    );
    for parse_error in [
        "Parameter",
        "Invalid parameter",
        "not found",
        "unknown",
        "invalid",
    ] {
        assert!(
            !err.contains(parse_error),
            "QEMU rejected the syntax: {err}"
        );
    }
    // The check can fail: a malformed object is reported as a parse error.
    let mut bad = snp_args(dir.path());
    bad.tee = LaunchTee::Snp {
        cbitpos: 51,
        reduced_phys_bits: 1,
        policy: 0x30000,
        host_data: None,
    };
    let argv: Vec<String> = bad
        .to_argv()
        .iter()
        .map(|a| {
            a.to_string_lossy()
                .replace("kernel-hashes=on", "kernel-hashes=maybe")
        })
        .collect();
    let out = Command::new("qemu-system-x86_64")
        .args(&argv)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kernel-hashes"), "{err}");
}

#[test]
fn confidential_config_on_a_plain_host_fails_clearly() {
    let Some(env) = env_or_skip("confidential_config_on_a_plain_host_fails_clearly") else {
        return;
    };
    let Some(fw) = snp_firmware("confidential_config_on_a_plain_host_fails_clearly") else {
        return;
    };
    let snp = |firmware: &str, expected: Option<&str>| {
        Sandbox::new(&env, |t| {
            let q = t["hypervisor"]["qemu"].as_table_mut().unwrap();
            q.insert("tee".into(), "snp".into());
            q.insert("firmware".into(), firmware.into());
            q.insert("accel".into(), "auto".into());
            if let Some(e) = expected {
                let mut m = toml::Table::new();
                m.insert("expected".into(), vec![toml::Value::from(e)].into());
                t.insert("measurement".into(), m.into());
            }
        })
    };
    let fw = fw.display().to_string();
    // Measured first: the launch digest is computed, then the host refuses.
    let sb = snp(&fw, None);
    let o = sb.run(&["true"]);
    let err = text(&o).1;
    assert_ne!(o.status.code(), Some(0));
    assert!(
        err.contains("`hypervisor.qemu.tee` = \"snp\" but this host cannot run SEV-SNP guests"),
        "{err}"
    );
    sb.assert_clean();
    // The right pinned value passes the pin check (and the host refuses).
    let m = sb.cocoon().arg("measure").output().unwrap();
    assert!(m.status.success(), "{:?}", text(&m));
    let v: serde_json::Value = serde_json::from_slice(&m.stdout).unwrap();
    let ld = v["launch_digest"].as_str().unwrap().to_string();
    let sb = snp(&fw, Some(&ld));
    let err = text(&sb.run(&["true"])).1;
    assert!(err.contains("this host cannot run SEV-SNP guests"), "{err}");
    sb.assert_clean();
    // A pinned value that does not match refuses the launch, naming both.
    let wrong = "ab".repeat(48);
    let sb = snp(&fw, Some(&wrong));
    let o = sb.run(&["true"]);
    let err = text(&o).1;
    assert_ne!(o.status.code(), Some(0));
    assert!(
        err.contains(&format!(
            "launch measurement {ld} is not in `measurement.expected`"
        )) && err.contains(&wrong),
        "{err}"
    );
    sb.assert_clean();
    // Firmware without the kernel hashes table cannot measure direct boot.
    let sb = snp("/usr/share/ovmf/OVMF.fd", None);
    let err = text(&sb.run(&["true"])).1;
    assert!(
        err.contains("/usr/share/ovmf/OVMF.fd has no SNP_KERNEL_HASHES section"),
        "{err}"
    );
    sb.assert_clean();
}

#[test]
fn cocoon_check_reports_the_host() {
    let Some(env) = env_or_skip("cocoon_check_reports_the_host") else {
        return;
    };
    let sb = Sandbox::new(&env, |_| {});
    let o = sb.cocoon().args(["check", "--json"]).output().unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {:?}", text(&o)));
    let findings = v["findings"].as_array().unwrap();
    for check in [
        "cpu",
        "kvm",
        "snp",
        "tdx",
        "iommu",
        "vhost-vsock",
        "qemu",
        "config",
    ] {
        assert!(
            findings.iter().any(|f| f["check"] == check),
            "no {check} finding: {v}"
        );
    }
    // The development config runs anywhere (KVM or TCG): no errors.
    assert!(matches!(o.status.code(), Some(0 | 1)), "{v}");
    assert_eq!(o.status.code().map(i64::from), v["exit_status"].as_i64());
    // The shipped SNP config on a host without SNP is an error (exit 2).
    let snp_ok = findings
        .iter()
        .any(|f| f["check"] == "snp" && f["severity"] == "ok");
    if snp_ok {
        eprintln!("SKIP part of cocoon_check_reports_the_host: this host runs SEV-SNP guests");
        return;
    }
    let o = std::process::Command::new(sb.bin_dir.join("cocoon"))
        .arg("--config")
        .arg(repo_root().join("configs/cocoon-qemu-snp.toml"))
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    assert!(text(&o).0.contains("ERROR snp"), "{:?}", text(&o));
}

/// The VFIO part of the argv (root ports, vfio-pci, iommufd, the 64-bit
/// MMIO window) is accepted by real QEMU up to opening the missing device.
#[test]
fn real_qemu_accepts_the_vfio_command_line() {
    let test = "real_qemu_accepts_the_vfio_command_line";
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIP {test}: qemu-system-x86_64 missing (make deps)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut a = snp_args(dir.path());
    a.accel = ResolvedAccel::Tcg;
    a.cpu_model = "max".into();
    a.firmware = None;
    a.tee = LaunchTee::None;
    a.pci = PciArgs {
        vfio: vec![VfioArg {
            bdf: "0000:41:00.0".parse().unwrap(),
            iommufd: false,
        }],
        root_ports: 2,
        hotplug_ports: 2,
        mmio64_mb: 65536,
    };
    let err = run_qemu(&a);
    assert!(
        err.contains("vfio") && err.contains("0000:41:00.0"),
        "{err}"
    );
    assert!(
        !err.contains("Property") && !err.contains("invalid"),
        "{err}"
    );
    // A misspelt property is a parse error, so the check above means
    // something.
    let bad: Vec<String> = a
        .to_argv()
        .iter()
        .map(|x| x.to_string_lossy().replace("chassis=", "chasis="))
        .collect();
    let out = Command::new("qemu-system-x86_64")
        .args(&bad)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("chasis"), "{e}");
    // iommufd: QEMU needs /dev/iommu first.
    a.pci.vfio[0].iommufd = true;
    let err = run_qemu(&a);
    assert!(err.contains("iommu"), "{err}");
}
