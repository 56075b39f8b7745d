//! Parsing and validation of every section, good and bad files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

fn err(text: &str) -> String {
    Config::from_toml(text, "test.toml")
        .unwrap_err()
        .to_string()
}

#[test]
fn dev_defaults_are_valid_and_match_the_serde_defaults_where_documented() {
    let c = Config::dev_defaults().unwrap();
    assert_eq!(c.qemu.accel, Accel::Auto);
    assert_eq!(c.qemu.vcpus, 1);
    assert_eq!(c.qemu.memory_mib, 1024);
    assert_eq!(c.agent.transport, Transport::Auto);
    assert_eq!(c.agent.dial_timeout, Duration::from_secs(30));
    assert_eq!(c.runtime.state_dir, PathBuf::from("/run/cocoon"));
    assert!(c.qemu.debug_console);
    // An empty file gives the serde defaults, which only differ in the
    // console (off unless asked for).
    let empty = Config::from_toml("", "empty").unwrap();
    assert!(!empty.qemu.debug_console);
    assert_eq!(empty.qemu.kernel, c.qemu.kernel);
}

#[test]
fn shipped_tee_configs_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let snp = Config::from_file(&root.join("cocoon-qemu-snp.toml")).unwrap();
    assert_eq!(
        (snp.qemu.tee, snp.qemu.accel, snp.qemu.debug_console),
        (Tee::Snp, Accel::Kvm, false)
    );
    assert_eq!(snp.qemu.snp_guest_policy, DEFAULT_SNP_POLICY);
    let tdx = Config::from_file(&root.join("cocoon-qemu-tdx.toml")).unwrap();
    assert_eq!(tdx.qemu.tee, Tee::Tdx);
    assert!(tdx.qemu.firmware.is_some());
    for tee in ["snp", "tdx"] {
        let c =
            Config::from_file(&root.join(format!("cocoon-qemu-nvidia-gpu-{tee}.toml"))).unwrap();
        assert_eq!(c.gpu.cc_mode, CcPolicy::Exact(CcMode::On));
        assert_eq!(c.qemu.cold_plug_vfio, ColdPlug::RootPort);
        assert!(c.qemu.tee == Tee::Snp || c.qemu.tee == Tee::Tdx);
        assert!(!c.gpu.set_cc_mode_command.is_empty());
    }
}

#[test]
fn show_round_trips() {
    let c = Config::dev_defaults().unwrap();
    let again = Config::from_toml(&c.to_toml(), "shown").unwrap();
    assert_eq!(again.raw, c.raw);
}

#[test]
fn a_full_custom_file() {
    let c = Config::from_toml(
        r#"
        [hypervisor.qemu]
        accel = "tcg"
        default_vcpus = 4
        default_memory = 2048
        kernel_params = "quiet  loglevel=3"
        firmware = "/usr/share/ovmf/OVMF.fd"
        [agent]
        transport = "vhost-user-vsock"
        dial_timeout = 5
        [runtime]
        log_level = "debug"
        "#,
        "custom",
    )
    .unwrap();
    assert_eq!(c.qemu.accel, Accel::Tcg);
    assert_eq!(c.qemu.kernel_params, vec!["quiet", "loglevel=3"]);
    assert_eq!(
        c.qemu.firmware,
        Some(PathBuf::from("/usr/share/ovmf/OVMF.fd"))
    );
    assert_eq!(c.agent.transport, Transport::VhostUserVsock);
    assert_eq!(c.runtime.log_level, LogLevel::Debug);
}

#[test]
fn bad_files_name_the_key_and_the_fix() {
    let cases: &[(&str, &[&str])] = &[
        (
            "[hypervisor.qemu]\nfoo = 1",
            &["unknown field `foo`", "test.toml"],
        ),
        (
            "[hypervisor.qemu]\naccel = \"xen\"",
            &["`hypervisor.qemu.accel`", "`xen`", "`tcg`"],
        ),
        (
            "[hypervisor.qemu]\ndefault_vcpus = 0",
            &["hypervisor.qemu.default_vcpus", "between 1 and 240"],
        ),
        (
            "[hypervisor.qemu]\ndefault_memory = 16",
            &["hypervisor.qemu.default_memory", "MiB"],
        ),
        (
            "[hypervisor.qemu]\ndefault_vcpus = \"two\"",
            &["invalid type", "`hypervisor.qemu.default_vcpus`"],
        ),
        (
            "[hypervisor.qemu]\nkernel = \"vmlinuz\"",
            &["hypervisor.qemu.kernel", "absolute path"],
        ),
        (
            "[hypervisor.qemu]\nkernel_params = \"init=/bin/sh\"",
            &["hypervisor.qemu.kernel_params", "set by Cocoon"],
        ),
        (
            "[hypervisor.qemu]\nmachine_type = \"pc\"",
            &["hypervisor.qemu.machine_type", "q35"],
        ),
        (
            "[hypervisor.qemu]\ncpu_model = \"host,+sev\"",
            &["hypervisor.qemu.cpu_model"],
        ),
        (
            "[hypervisor.qemu]\nvirtio_fs_cache = \"sometimes\"",
            &["`hypervisor.qemu.virtio_fs_cache`", "`metadata`"],
        ),
        (
            "[agent]\ntransport = \"tcp\"",
            &["`agent.transport`", "`vhost-user-vsock`"],
        ),
        (
            "[agent]\ndial_timeout = 0",
            &["agent.dial_timeout", "seconds"],
        ),
        (
            "[runtime]\nlog_level = \"loud\"",
            &["`runtime.log_level`", "`debug`"],
        ),
        (
            "[runtime]\nstate_dir = \"run\"",
            &["runtime.state_dir", "absolute"],
        ),
        (
            "[measurement]\nexpected = [\"abcd\"]",
            &["measurement.expected", "96 hex digits", "\"abcd\""],
        ),
        (
            "[measurement]\nexpected = [\"000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\"]\n[hypervisor.qemu]\ntee = \"none\"",
            &["measurement.expected", "`hypervisor.qemu.tee` = \"none\" has none"],
        ),
        (
            "[hypervisor.qemu]\ntee = \"snp\"\naccel = \"kvm\"\n[measurement]\nexpected = [{ mrtd = \"\", rtmr1 = \"\", rtmr2 = \"\" }]",
            &["measurement.expected", "mrtd must be 96 hex digits"],
        ),
        (
            "[measurement]\ntdx_mrtd_order = \"random\"",
            &["`measurement.tdx_mrtd_order`", "`per-page`"],
        ),
        (
            "[measurement]\ntdx_load_options = \"x\"",
            &["`measurement.tdx_load_options`", "`initrd-first`"],
        ),
        (
            "[measurement]\ntdx_kernel_setup_patch = \"yes\"",
            &["`measurement.tdx_kernel_setup_patch`", "`auto`, `on`, `off`"],
        ),
        (
            "[measurement]\nsnp_guest_features = 0x20",
            &["measurement.snp_guest_features", "SNPActive"],
        ),
        (
            "[hypervisor.qemu]\ntee = \"snp\"\naccel = \"kvm\"\n[gpu]\ncc_mode = \"off\"",
            &["gpu.cc_mode", "must not use a GPU outside CC mode"],
        ),
        (
            "[gpu]\ncc_mode = \"maybe\"",
            &["`gpu.cc_mode`", "`devtools`"],
        ),
        (
            "[gpu]\non_mismatch = \"set\"",
            &["gpu.on_mismatch", "needs `gpu.set_cc_mode_command`"],
        ),
        (
            "[gpu]\nextra_cc_capable_ids = [\"10de-2b85\"]",
            &["gpu.extra_cc_capable_ids", "\"10de:2b85\""],
        ),
        (
            "[gpu]\ncdi_spec_dirs = [\"cdi\"]",
            &["gpu.cdi_spec_dirs", "absolute"],
        ),
        (
            "[hypervisor.qemu]\ncold_plug_vfio = \"bridge-port\"",
            &["`hypervisor.qemu.cold_plug_vfio`", "`root-port`"],
        ),
        (
            "[hypervisor.qemu]\npcie_root_port = 17",
            &["hypervisor.qemu.pcie_root_port", "between 0 and 16"],
        ),
        (
            "[hypervisor.qemu]\npci_mmio64_mb = 1000",
            &["hypervisor.qemu.pci_mmio64_mb", "power of two"],
        ),
        (
            "[image]\nverified_layers = \"sometimes\"",
            &["`image.verified_layers`", "`tee`", "`always`"],
        ),
        (
            "[image]\nlayer_cache_dir = \"layers\"",
            &["image.layer_cache_dir", "absolute"],
        ),
        (
            "[image]\nlayer_cache_max_mib = 1",
            &["image.layer_cache_max_mib", "at least 64"],
        ),
        (
            "[image]\nlayer_slots = 13",
            &["image.layer_slots", "between 1 and 12"],
        ),
        ("[hypervisor.qemu", &["test.toml", "line 1"]),
        ("[runtimes]\nx = 1", &["unknown field `runtimes`"]),
    ];
    for (text, needles) in cases {
        let e = err(text);
        for n in *needles {
            assert!(e.contains(n), "config {text:?}: error {e:?} lacks {n:?}");
        }
        assert!(!e.contains('\n'), "one line: {e:?}");
    }
}

#[test]
fn gpu_cc_mode_auto_follows_the_tee() {
    let dev = Config::dev_defaults().unwrap();
    assert_eq!(dev.gpu.cc_mode, CcPolicy::Exact(CcMode::Off));
    assert_eq!(dev.gpu.on_mismatch, OnMismatch::Refuse);
    let snp = Config::from_toml("[hypervisor.qemu]\ntee = \"snp\"\naccel = \"kvm\"", "t").unwrap();
    assert_eq!(snp.gpu.cc_mode, CcPolicy::Exact(CcMode::On));
    let any = Config::from_toml(
        "[gpu]\ncc_mode = \"any\"\nextra_cc_capable_ids = [\"10DE:2b85\"]",
        "t",
    )
    .unwrap();
    assert_eq!(any.gpu.cc_mode, CcPolicy::Any);
    assert_eq!(any.gpu.extra_cc_capable_ids, vec![(0x10de, 0x2b85)]);
}

#[test]
fn pinned_measurements_by_tee() {
    let d = "ab".repeat(48);
    let snp = Config::from_toml(
        &format!("[hypervisor.qemu]\ntee = \"snp\"\naccel = \"kvm\"\n[measurement]\nexpected = [\"{d}\"]"),
        "t",
    )
    .unwrap();
    assert_eq!(snp.measurement.expected, vec![Expected::Snp([0xab; 48])]);
    let tdx = Config::from_toml(
        &format!("[hypervisor.qemu]\ntee = \"tdx\"\naccel = \"kvm\"\n[measurement]\nexpected = [{{ mrtd = \"{d}\", rtmr1 = \"{d}\", rtmr2 = \"{d}\" }}]"),
        "t",
    )
    .unwrap();
    assert!(matches!(tdx.measurement.expected[0], Expected::Tdx { .. }));
    let e = err(&format!(
        "[hypervisor.qemu]\ntee = \"tdx\"\naccel = \"kvm\"\n[measurement]\nexpected = [\"{d}\"]"
    ));
    assert!(
        e.contains("SEV-SNP launch-digest string but tee = \"tdx\""),
        "{e}"
    );
    // Unpinned by default.
    assert!(Config::dev_defaults()
        .unwrap()
        .measurement
        .expected
        .is_empty());
}

#[test]
fn missing_and_unreadable_files() {
    let e = Config::from_file(Path::new("/nonexistent/cocoon.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot read config file /nonexistent/cocoon.toml"),
        "{e}"
    );
    let mut c = Config::dev_defaults().unwrap();
    c.qemu.kernel = "/nonexistent/vmlinuz".into();
    c.qemu.path = "/bin/sh".into();
    c.qemu.initrd = "/bin/sh".into();
    c.qemu.virtio_fs_daemon = "/bin/sh".into();
    let e = c.check_files().unwrap_err().to_string();
    assert!(
        e.contains("hypervisor.qemu.kernel") && e.contains("make guest"),
        "{e}"
    );
}

#[test]
fn config_files_are_bounded_regular_files() {
    // A device or a pipe a containerd client names is never read.
    let e = Config::from_file(Path::new("/dev/zero"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/dev/zero") && e.contains("not a regular file"),
        "{e}"
    );
    let d = tempfile::tempdir().unwrap();
    let e = Config::from_file(d.path()).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
    let big = d.path().join("big.toml");
    let mut text = "# padding\n".repeat(110_000);
    text.push_str("[runtime]\n");
    std::fs::write(&big, text).unwrap();
    let e = Config::from_file(&big).unwrap_err().to_string();
    assert!(e.contains("larger than 1048576 bytes"), "{e}");
    let ok = d.path().join("ok.toml");
    std::fs::write(&ok, "").unwrap();
    Config::from_file(&ok).unwrap();
}

#[test]
fn dangerous_values_are_refused() {
    for dir in ["/", "/etc", "/run", "/var/lib", "/tmp/", "/usr/../etc/x/.."] {
        let e = err(&format!("[runtime]\nstate_dir = \"{dir}\"\n"));
        assert!(
            e.contains("runtime.state_dir")
                && (e.contains("system directory") || e.contains("plain path")),
            "{dir}: {e}"
        );
    }
    let e = err("[runtime]\nstate_dir = \"/run/co\\u0000coon\"\n");
    assert!(e.contains("NUL"), "{e}");
    let long = "x".repeat(300);
    let e = err(&format!("[runtime]\nstate_dir = \"/run/{long}\"\n"));
    assert!(e.contains("at most 255 bytes"), "{e}");
    Config::from_toml("[runtime]\nstate_dir = \"/run/cocoon-test\"\n", "t").unwrap();
    // Zero-on-allocate off breaks virtio-fs roots under TCG: refused unless
    // the node says it runs on KVM.
    for accel in ["auto", "tcg"] {
        let e = err(&format!(
            "[hypervisor.qemu]\naccel = \"{accel}\"\nkernel_params = \"quiet init_on_alloc=0\"\n"
        ));
        assert!(
            e.contains("hypervisor.qemu.kernel_params")
                && e.contains("\"init_on_alloc=0\"")
                && e.contains("accel = \"kvm\""),
            "{accel}: {e}"
        );
    }
    let kvm = Config::from_toml(
        "[hypervisor.qemu]\naccel = \"kvm\"\nkernel_params = \"init_on_alloc=0\"\n",
        "t",
    )
    .unwrap();
    assert_eq!(kvm.qemu.kernel_params, vec!["init_on_alloc=0"]);
    Config::from_toml(
        "[hypervisor.qemu]\nkernel_params = \"init_on_alloc=1\"\n",
        "t",
    )
    .unwrap();
    for params in ["a\\nb", "x\\u0000", "tab\\there"] {
        let e = err(&format!(
            "[hypervisor.qemu]\nkernel_params = \"{params}\"\n"
        ));
        assert!(
            e.contains("one line of printable characters"),
            "{params}: {e}"
        );
    }
}

#[test]
fn programs_must_be_executable_and_the_kernel_a_bzimage() {
    let d = tempfile::tempdir().unwrap();
    let mut kernel = vec![0u8; 0x400];
    kernel[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(d.path().join("vmlinuz"), &kernel).unwrap();
    std::fs::write(d.path().join("initrd"), b"i").unwrap();
    std::fs::write(d.path().join("not-a-kernel"), vec![0u8; 0x400]).unwrap();
    let conf = |qemu: &str, kernel: &str| {
        Config::from_toml(
            &format!(
                "[hypervisor.qemu]\npath = \"{qemu}\"\nkernel = \"{k}\"\ninitrd = \"{i}\"\nvirtio_fs_daemon = \"/bin/true\"\nvhost_user_vsock_daemon = \"/bin/true\"\n",
                k = d.path().join(kernel).display(),
                i = d.path().join("initrd").display()
            ),
            "t",
        )
        .unwrap()
    };
    conf("/bin/true", "vmlinuz").check_files().unwrap();
    conf("/bin/true", "vmlinuz").check_kernel_image().unwrap();
    let e = conf("/etc/passwd", "vmlinuz")
        .check_files()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("hypervisor.qemu.path") && e.contains("not executable"),
        "{e}"
    );
    let e = conf("/bin/true", "not-a-kernel")
        .check_kernel_image()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("hypervisor.qemu.kernel") && e.contains("bzImage"),
        "{e}"
    );
}
