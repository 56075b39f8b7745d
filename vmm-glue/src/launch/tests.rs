//! Snapshots of launch plans for the dev, vhost-vsock, SEV-SNP, TDX and GPU
//! configurations on recorded hosts, and the planning errors. Golden files
//! live in `golden/`; `COCOON_BLESS=1 cargo test -p cocoon-vmm launch`
//! rewrites them after an intended change.

use std::path::{Path, PathBuf};

use super::*;
use crate::config::Config;
use crate::fixtures::host::{cpuid_amd_snp, cpuid_intel, host as tree};
use crate::host::HostRoots;
use crate::tee::LaunchTee;

const STATE: &str = "/run/cocoon-plan-test";

struct Fixture {
    dir: tempfile::TempDir,
    host_dir: tempfile::TempDir,
}

impl Fixture {
    /// A directory with a kernel, an initrd and a share, and a host tree.
    fn new(host_files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vmlinuz"), b"kernel bytes").unwrap();
        std::fs::write(dir.path().join("initrd.img"), b"initrd bytes").unwrap();
        std::fs::create_dir(dir.path().join("shared")).unwrap();
        Self {
            dir,
            host_dir: tree(host_files),
        }
    }

    fn config(&self, qemu_extra: &str, rest: &str) -> Config {
        let d = self.dir.path().display();
        Config::from_toml(
            &format!(
                "[hypervisor.qemu]\npath = \"/bin/true\"\nkernel = \"{d}/vmlinuz\"\ninitrd = \"{d}/initrd.img\"\nvirtio_fs_daemon = \"/bin/true\"\nvhost_user_vsock_daemon = \"/bin/true\"\n{qemu_extra}\n[runtime]\nstate_dir = \"{STATE}\"\n{rest}"
            ),
            "plan-test.toml",
        )
        .unwrap()
    }

    fn host(&self, cpuid: fn(u32) -> (u32, u32, u32, u32), objects: &[&str]) -> HostView {
        HostView {
            roots: HostRoots::under(self.host_dir.path()),
            cpuid,
            qemu_objects: Some(objects.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn request(&self) -> LaunchRequest {
        LaunchRequest {
            id: "p1".into(),
            dir: Some(PathBuf::from(STATE).join("p1/vm")),
            shares: vec![Share {
                tag: "cocoon-shared".into(),
                dir: self.dir.path().join("shared"),
            }],
            devices: Vec::new(),
            vsock_cid: Some(1234),
            initdata: None,
            relays: Vec::new(),
            nics: Vec::new(),
            disks: Vec::new(),
            hotplug_slots: 0,
        }
    }

    /// The rendered plan with machine-specific paths replaced.
    fn render(&self, plan: &LaunchPlan, firmware: Option<&Path>) -> String {
        let mut text = plan.render();
        if let Some(fw) = firmware {
            text = text.replace(&fw.display().to_string(), "$FIRMWARE");
        }
        text.replace(&self.host_dir.path().display().to_string(), "$HOST")
            .replace(&self.dir.path().display().to_string(), "$DIR")
    }
}

fn golden(name: &str, text: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/launch/golden")
        .join(format!("{name}.txt"));
    if std::env::var_os("COCOON_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with COCOON_BLESS=1 to write it",
            path.display()
        )
    });
    assert_eq!(text, want, "plan differs from {}", path.display());
}

const TCG_HOST: &[(&str, &str)] = &[("proc/cpuinfo", "flags\t: fpu sse\n")];

#[test]
fn dev_plan_on_a_tcg_host_uses_hybrid_vsock() {
    let f = Fixture::new(TCG_HOST);
    let plan =
        LaunchPlan::build(&f.config("", ""), &f.host(cpuid_intel, &[]), &f.request()).unwrap();
    assert_eq!(plan.tee, LaunchTee::None);
    assert_eq!(plan.helpers.len(), 2, "virtiofsd and vhost-device-vsock");
    assert!(!plan.dry_run);
    golden("dev-tcg", &f.render(&plan, None));
}

#[test]
fn dev_plan_with_kernel_vhost_vsock_and_kvm() {
    let f = Fixture::new(&[
        ("dev/kvm", ""),
        ("dev/vhost-vsock", ""),
        ("proc/cpuinfo", "flags\t: fpu vmx\n"),
    ]);
    let config = f.config("debug_console = true\ndry_run = true", "");
    let plan = LaunchPlan::build(&config, &f.host(cpuid_intel, &[]), &f.request()).unwrap();
    assert_eq!(plan.helpers.len(), 1, "virtiofsd only");
    assert!(plan.dry_run);
    golden("dev-kvm-vhost", &f.render(&plan, None));
}

const SNP_HOST: &[(&str, &str)] = &[
    ("dev/kvm", ""),
    ("dev/sev", ""),
    ("dev/vhost-vsock", ""),
    ("proc/cpuinfo", "flags\t: fpu svm sev sev_es sev_snp\n"),
    ("sys/module/kvm_amd/parameters/sev_snp", "Y\n"),
];

#[test]
fn snp_plan_carries_the_launch_digest_and_the_snp_object() {
    let f = Fixture::new(SNP_HOST);
    let fw = crate::measure::snp::tests::sev_crate_fixture("ovmf_AmdSev_suffix.bin");
    let config = f.config(
        &format!(
            "firmware = \"{}\"\ntee = \"snp\"\naccel = \"kvm\"\ncpu_model = \"EPYC-v4\"",
            fw.display()
        ),
        "",
    );
    let host = f.host(cpuid_amd_snp, &["sev-snp-guest"]);
    let plan = LaunchPlan::build(&config, &host, &f.request()).unwrap();
    assert!(matches!(plan.tee, LaunchTee::Snp { cbitpos: 51, .. }));
    assert!(plan.measurement.launch_digest.is_some());
    golden("snp", &f.render(&plan, Some(&fw)));
    // The same launch with a QEMU that lacks the object is refused.
    let old = f.host(cpuid_amd_snp, &[]);
    let e = LaunchPlan::build(&config, &old, &f.request()).unwrap_err();
    assert!(
        matches!(
            e,
            PlanError::QemuTooOld {
                object: "sev-snp-guest",
                ..
            }
        ),
        "{e}"
    );
    // A wrong pin is refused before the host is asked.
    let pinned = f.config(
        &format!(
            "firmware = \"{}\"\ntee = \"snp\"\naccel = \"kvm\"\ncpu_model = \"EPYC-v4\"",
            fw.display()
        ),
        &format!("[measurement]\nexpected = [\"{}\"]", "00".repeat(48)),
    );
    let e = LaunchPlan::build(&pinned, &f.host(cpuid_intel, &[]), &f.request()).unwrap_err();
    assert!(matches!(e, PlanError::Measure(_)), "{e}");
}

/// The real TDX firmware and guest kernel (`make deps guest`), if built.
fn tdx_inputs() -> Option<(PathBuf, PathBuf, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let fw = root.join("build/firmware/usr/share/ovmf/OVMF.inteltdx.ms.fd");
    let kernel = root.join("build/guest/vmlinuz");
    let initrd = root.join("build/guest/initrd.img");
    (fw.exists() && kernel.exists() && initrd.exists()).then_some((fw, kernel, initrd))
}

#[test]
fn tdx_plan_carries_mrtd_and_rtmrs_and_the_tdx_object() {
    let Some((fw, kernel, initrd)) = tdx_inputs() else {
        eprintln!("SKIP tdx_plan: build/firmware OVMF.inteltdx.ms.fd or build/guest missing (make deps guest)");
        return;
    };
    let f = Fixture::new(&[
        ("dev/kvm", ""),
        ("proc/cpuinfo", "flags\t: fpu vmx\n"),
        ("sys/module/kvm_intel/parameters/tdx", "Y\n"),
    ]);
    let config = Config::from_toml(
        &format!(
            "[hypervisor.qemu]\npath = \"/bin/true\"\nkernel = \"{}\"\ninitrd = \"{}\"\nfirmware = \"{}\"\ntee = \"tdx\"\naccel = \"kvm\"\nvirtio_fs_daemon = \"/bin/true\"\nvhost_user_vsock_daemon = \"/bin/true\"\n[measurement]\ntdx_kernel_setup_patch = \"off\"\n[runtime]\nstate_dir = \"{STATE}\"",
            kernel.display(),
            initrd.display(),
            fw.display()
        ),
        "t",
    )
    .unwrap();
    let plan =
        LaunchPlan::build(&config, &f.host(cpuid_intel, &["tdx-guest"]), &f.request()).unwrap();
    assert!(matches!(plan.tee, LaunchTee::Tdx { .. }));
    let m = &plan.measurement;
    assert!(m.mrtd.is_some() && m.rtmr1.is_some() && m.rtmr2.is_some());
    let line = plan.qemu_command_line();
    assert!(
        line.contains("confidential-guest-support=tdx")
            && line.contains("\"qom-type\":\"tdx-guest\""),
        "{line}"
    );
}

#[test]
fn gpu_plan_checks_the_cc_mode_and_adds_root_ports() {
    let f = Fixture::new(TCG_HOST);
    let gpu_host = tempfile::tempdir().unwrap();
    crate::fixtures::gpu::write(
        gpu_host.path(),
        &[crate::fixtures::gpu::h100("0000:41:00.0", 12, 0)],
    );
    let config = f.config(
        "pcie_root_port = 2\npci_mmio64_mb = 65536",
        &format!("[gpu]\nhost_root = \"{}\"", gpu_host.path().display()),
    );
    let devices = crate::vfio::resolve(
        &HostRoots::under(gpu_host.path()),
        &["/dev/vfio/12".to_string()],
        &[],
        &[],
    )
    .unwrap();
    let mut req = f.request();
    req.devices = devices.clone();
    let plan = LaunchPlan::build(&config, &f.host(cpuid_intel, &[]), &req).unwrap();
    assert_eq!(plan.devices.len(), 1);
    assert_eq!(plan.devices[0].cc_mode, Some("off"));
    golden(
        "gpu",
        &f.render(&plan, None)
            .replace(&gpu_host.path().display().to_string(), "$GPUHOST"),
    );
    // Too many functions, and no ports at all.
    req.devices = vec![devices[0].clone(); plan::MAX_PCI_FUNCTIONS + 1];
    let e = LaunchPlan::build(&config, &f.host(cpuid_intel, &[]), &req).unwrap_err();
    assert!(matches!(e, PlanError::TooManyFunctions(17)), "{e}");
    let no_port = f.config(
        "cold_plug_vfio = \"no-port\"",
        &format!("[gpu]\nhost_root = \"{}\"", gpu_host.path().display()),
    );
    req.devices = devices;
    let e = LaunchPlan::build(&no_port, &f.host(cpuid_intel, &[]), &req).unwrap_err();
    assert!(matches!(e, PlanError::ColdPlugDisabled), "{e}");
}

#[test]
fn planning_errors_name_the_problem() {
    let f = Fixture::new(TCG_HOST);
    let host = f.host(cpuid_intel, &[]);
    // KVM asked for on a host without it.
    let e = LaunchPlan::build(&f.config("accel = \"kvm\"", ""), &host, &f.request()).unwrap_err();
    assert!(matches!(e, PlanError::KvmUnavailable), "{e}");
    // Kernel vhost-vsock asked for without the device.
    let e = LaunchPlan::build(
        &f.config("", "[agent]\ntransport = \"vhost-vsock\""),
        &host,
        &f.request(),
    )
    .unwrap_err();
    assert!(matches!(e, PlanError::NoVhostVsock), "{e}");
    // A share that is not a directory.
    let mut req = f.request();
    req.shares[0].dir = f.dir.path().join("vmlinuz");
    let e = LaunchPlan::build(&f.config("", ""), &host, &req).unwrap_err();
    assert!(matches!(e, PlanError::NotADirectory(_)), "{e}");
    // Disks: a directory, a missing file, a bad serial; a good one
    // becomes a read-only virtio-blk device.
    for (path, serial, needle) in [
        (f.dir.path().join("shared"), "disk0", "not a regular file"),
        (f.dir.path().join("missing"), "disk0", "cannot be read"),
        (f.dir.path().join("vmlinuz"), "disk 0", "serial"),
        (f.dir.path().join("vmlinuz"), "", "serial"),
    ] {
        let mut req = f.request();
        req.disks = vec![PlannedDisk {
            path,
            serial: serial.into(),
        }];
        let e = LaunchPlan::build(&f.config("", ""), &host, &req).unwrap_err();
        assert!(
            matches!(e, PlanError::BadDisk { .. }) && e.to_string().contains(needle),
            "{e}"
        );
    }
    let mut req = f.request();
    req.disks = vec![PlannedDisk {
        path: f.dir.path().join("vmlinuz"),
        serial: "disk0".into(),
    }];
    let plan = LaunchPlan::build(&f.config("", ""), &host, &req).unwrap();
    let argv: Vec<String> = plan
        .qemu_args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    assert!(
        argv.contains(&"virtio-blk-pci,drive=disk0,serial=disk0".to_string()),
        "{argv:?}"
    );
    // A state directory too deep for socket paths.
    let mut req = f.request();
    req.dir = Some(PathBuf::from(format!("/run/{}", "d".repeat(100))));
    let e = LaunchPlan::build(&f.config("", ""), &host, &req).unwrap_err();
    assert!(matches!(e, PlanError::SocketPathTooLong(_)), "{e}");
    // SNP on a host without it.
    let e = LaunchPlan::build(&f.config("tee = \"snp\"", ""), &host, &f.request()).unwrap_err();
    assert!(
        matches!(e, PlanError::Tee(_) | PlanError::Measure(_)),
        "{e}"
    );
}

#[test]
fn initdata_is_measured_into_host_data() {
    use base64::Engine;
    use sha2::Digest;
    let f = Fixture::new(SNP_HOST);
    let fw = crate::measure::snp::tests::sev_crate_fixture("ovmf_AmdSev_suffix.bin");
    let config = f.config(
        &format!(
            "firmware = \"{}\"\ntee = \"snp\"\naccel = \"kvm\"\ncpu_model = \"EPYC-v4\"",
            fw.display()
        ),
        "",
    );
    let doc = b"version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n".to_vec();
    let mut req = f.request();
    req.initdata = Some(doc.clone());
    let host = f.host(cpuid_amd_snp, &["sev-snp-guest"]);
    let plan = LaunchPlan::build(&config, &host, &req).unwrap();
    let digest = sha2::Sha384::digest(&doc);
    // HOST_DATA is the digest fitted to 32 bytes, in the argv and the
    // reference values; the launch digest does not depend on it.
    let b64 = base64::engine::general_purpose::STANDARD.encode(&digest[..32]);
    assert!(
        plan.qemu_command_line()
            .contains(&format!(",host-data={b64}")),
        "{}",
        plan.qemu_command_line()
    );
    assert_eq!(
        plan.measurement.host_data.as_deref(),
        Some(hex::encode(&digest[..32]).as_str())
    );
    assert_eq!(
        plan.measurement.initdata_digest.as_deref(),
        Some(hex::encode(digest).as_str())
    );
    let without = LaunchPlan::build(&config, &host, &f.request()).unwrap();
    assert_eq!(
        without.measurement.launch_digest,
        plan.measurement.launch_digest
    );
    assert!(!without.qemu_command_line().contains("host-data"));
    // A document the measurement code refuses stops the plan.
    req.initdata = Some(b"version = \"9\"\nalgorithm = \"sha384\"\n".to_vec());
    let e = LaunchPlan::build(&config, &host, &req).unwrap_err();
    assert!(matches!(e, PlanError::Measure(_)), "{e}");
}
