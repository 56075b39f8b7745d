//! `cocoon check`: what this host can run, and whether the node
//! configuration fits it. Every fact is read through [`HostRoots`], a CPUID
//! function and a KVM VM-type probe, so fixture hosts exercise the same code.

use std::path::Path;

use serde::Serialize;

use crate::config::{Config, Tee};
use crate::host::HostRoots;
use crate::tee::{Cpuid, HostTee, LaunchTee};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Fine.
    Ok,
    /// Worth knowing, not a problem for this configuration.
    Info,
    /// Works, but degraded (e.g. emulation instead of KVM).
    Warn,
    /// The configuration cannot run here.
    Error,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Short name of the check.
    pub check: &'static str,
    /// Severity.
    pub severity: Severity,
    /// What was found, and the fix if any.
    pub detail: String,
}

/// `KVM_CAP_VM_TYPES` of a recorded host: the ioctl's answer, kept in
/// `<dev>/kvm.vm_types` of a fixture tree.
pub fn recorded_vm_types(host: &HostRoots) -> Option<u64> {
    std::fs::read_to_string(host.dev.join("kvm.vm_types"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `KVM_CAP_VM_TYPES` of this host: bit n set = VM type n supported.
pub fn kvm_vm_types() -> Option<u64> {
    let kvm = kvm_ioctls::Kvm::new().ok()?;
    let r = kvm.check_extension_raw(libc::c_ulong::from(kvm_bindings::KVM_CAP_VM_TYPES));
    u64::try_from(r).ok()
}

fn qemu_facts(qemu: &Path) -> Option<(String, bool, bool)> {
    let v = std::process::Command::new(qemu)
        .arg("--version")
        .output()
        .ok()?;
    let version = String::from_utf8_lossy(&v.stdout)
        .lines()
        .next()?
        .trim_start_matches("QEMU emulator version ")
        .to_string();
    let o = std::process::Command::new(qemu)
        .args(["-object", "help"])
        .output()
        .ok()?;
    let objects = String::from_utf8_lossy(&o.stdout).into_owned();
    let has = |t: &str| objects.lines().any(|l| l.trim() == t);
    Some((version, has("sev-snp-guest"), has("tdx-guest")))
}

/// Where findings go.
type Add<'a> = dyn FnMut(&'static str, Severity, String) + 'a;

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// CPU, KVM and its VM types.
fn kvm_findings(host: &HostRoots, vm_types: Option<u64>, add: &mut Add<'_>) {
    let flags = host.cpu_flags();
    let virt = flags.iter().find(|x| *x == "vmx" || *x == "svm").cloned();
    match (host.dev.join("kvm").exists(), virt) {
        (true, Some(v)) => add("kvm", Severity::Ok, format!("/dev/kvm usable ({v})")),
        (true, None) => add("kvm", Severity::Warn, "/dev/kvm exists but the CPU has no vmx/svm flag: guests run under TCG emulation (slow, never confidential)".into()),
        (false, _) => add("kvm", Severity::Warn, "no /dev/kvm: guests run under TCG emulation (slow, never confidential); load kvm_intel or kvm_amd".into()),
    }
    match vm_types {
        Some(mask) => {
            let bit = |n: u32| mask & (1 << n) != 0;
            add(
                "kvm-vm-types",
                Severity::Ok,
                format!(
                    "KVM_CAP_VM_TYPES = {mask:#x} (SEV-SNP VM type {}, TDX VM type {})",
                    yes_no(bit(kvm_bindings::KVM_X86_SNP_VM)),
                    yes_no(bit(kvm_bindings::KVM_X86_TDX_VM)),
                ),
            );
        }
        None => add(
            "kvm-vm-types",
            Severity::Info,
            "KVM_CAP_VM_TYPES not available (no /dev/kvm or an older kernel)".into(),
        ),
    }
}

/// SEV-SNP and TDX host support, against what the config wants.
fn tee_findings(tee: &HostTee, wants: Tee, add: &mut Add<'_>) {
    for (name, check, missing, wanted) in [
        ("SEV-SNP", "snp", &tee.snp_missing, wants == Tee::Snp),
        ("TDX", "tdx", &tee.tdx_missing, wants == Tee::Tdx),
    ] {
        if missing.is_empty() {
            let extra = match (check, tee.sev) {
                ("snp", Some(s)) => format!(
                    " (cbitpos {}, reduced-phys-bits {})",
                    s.cbitpos, s.reduced_phys_bits
                ),
                _ => String::new(),
            };
            add(check, Severity::Ok, format!("{name} guests can run{extra}"));
        } else {
            let sev = if wanted {
                Severity::Error
            } else {
                Severity::Info
            };
            add(check, sev, format!("no {name}: {}", missing.join("; ")));
        }
    }
    if wants == Tee::Auto && !tee.snp_missing.is_empty() && !tee.tdx_missing.is_empty() {
        add(
            "tee",
            Severity::Error,
            "`hypervisor.qemu.tee` = \"auto\" but neither SEV-SNP nor TDX is available".into(),
        );
    }
}

/// IOMMU, vfio-pci and the kernel vsock device.
fn device_findings(host: &HostRoots, add: &mut Add<'_>) {
    let iommu = std::fs::read_dir(host.sys.join("class/iommu"))
        .map(|d| d.count())
        .unwrap_or(0);
    if iommu > 0 {
        add(
            "iommu",
            Severity::Ok,
            format!("{iommu} IOMMU unit(s) enabled"),
        );
    } else {
        add("iommu", Severity::Info, "no IOMMU enabled: VFIO device passthrough is unavailable (enable VT-d/AMD-Vi and intel_iommu=on / amd_iommu=on)".into());
    }
    if host.sys.join("module/vfio_pci").exists() {
        add("vfio", Severity::Ok, "vfio-pci loaded".into());
    } else {
        add(
            "vfio",
            Severity::Info,
            "vfio-pci not loaded (modprobe vfio-pci for GPU passthrough)".into(),
        );
    }
}

fn vsock_finding(host: &HostRoots, add: &mut Add<'_>) {
    if host.has_vhost_vsock() {
        add(
            "vhost-vsock",
            Severity::Ok,
            "/dev/vhost-vsock present: kernel vsock transport".into(),
        );
    } else {
        add(
            "vhost-vsock",
            Severity::Info,
            "no /dev/vhost-vsock: the agent is reached through vhost-device-vsock (hybrid vsock)"
                .into(),
        );
    }
}

/// The QEMU binary, its version and TEE objects.
fn qemu_findings(config: &Config, wants: Tee, add: &mut Add<'_>) {
    let Some((version, snp, tdx)) = qemu_facts(&config.qemu.path) else {
        add(
            "qemu",
            Severity::Error,
            format!(
                "cannot run {} (`hypervisor.qemu.path`)",
                config.qemu.path.display()
            ),
        );
        return;
    };
    let known = |k: bool| if k { "known" } else { "unknown" };
    add(
        "qemu",
        Severity::Ok,
        format!(
            "{} {version}; sev-snp-guest {}, tdx-guest {}",
            config.qemu.path.display(),
            known(snp),
            known(tdx)
        ),
    );
    if wants == Tee::Snp && !snp {
        add(
            "qemu",
            Severity::Error,
            "this QEMU does not know sev-snp-guest (QEMU 9.1 or newer needed)".into(),
        );
    }
    if wants == Tee::Tdx && !tdx {
        add(
            "qemu",
            Severity::Error,
            "this QEMU does not know tdx-guest (QEMU 10.1 or newer needed)".into(),
        );
    }
}

/// The firmware's metadata, against what the TEE needs.
fn firmware_findings(config: &Config, wants: Tee, add: &mut Add<'_>) {
    let Some(fw) = &config.qemu.firmware else {
        if wants != Tee::None {
            add(
                "firmware",
                Severity::Error,
                "`hypervisor.qemu.firmware` is empty; confidential guests boot from OVMF".into(),
            );
        }
        return;
    };
    let info = match crate::firmware::read(fw) {
        Ok(info) => info,
        Err(e) => return add("firmware", Severity::Error, e.to_string()),
    };
    add(
        "firmware",
        Severity::Ok,
        format!(
            "{}: SEV metadata {}, SNP kernel hashes section {}, TDVF descriptor {}",
            fw.display(),
            yes_no(info.sev_sections.is_some()),
            yes_no(info.has_snp_kernel_hashes()),
            yes_no(info.tdvf)
        ),
    );
    let needed = match wants {
        Tee::Snp => LaunchTee::Snp {
            cbitpos: 0,
            reduced_phys_bits: 0,
            policy: 0,
            host_data: None,
        },
        Tee::Tdx => LaunchTee::Tdx {
            mrconfigid: None,
            qgs_socket: Default::default(),
        },
        _ => return,
    };
    if let Err(e) = crate::tee::check_firmware(&needed, fw) {
        add("firmware", Severity::Error, e.to_string());
    }
}

/// Which guest kernel the configuration boots, and whether it is Cocoon's
/// reproducible build (which a third party can rebuild bit for bit to
/// recompute the launch measurement).
fn kernel_finding(config: &Config, wants: Tee, add: &mut Add<'_>) {
    let path = &config.qemu.kernel;
    let image = match crate::kernel::KernelImage::read(path) {
        Ok(image) => image,
        // A missing or unreadable file is the config check's finding.
        Err(e) if e.kind() != std::io::ErrorKind::InvalidData => return,
        Err(e) => {
            return add(
                "kernel",
                Severity::Error,
                format!("{}: {e}; name the guest's vmlinuz", path.display()),
            )
        }
    };
    if image.is_cocoon_build() {
        add(
            "kernel",
            Severity::Ok,
            format!(
                "{}: Cocoon's reproducible guest kernel {} (rebuild it with `make kernel` to check)",
                path.display(),
                image.release
            ),
        );
    } else {
        add(
            "kernel",
            if wants == Tee::None {
                Severity::Info
            } else {
                Severity::Warn
            },
            format!(
                "{}: {} is not Cocoon's reproducible guest kernel: a verifier cannot rebuild it bit for bit to recompute the measurement, and it boots about twice as slowly; `make guest` builds Cocoon's",
                path.display(),
                image.release
            ),
        );
    }
}

/// Runs every check. `vm_types` is the host's `KVM_CAP_VM_TYPES`
/// ([`kvm_vm_types`], or a recorded value).
pub fn run(
    config: &Config,
    host: &HostRoots,
    cpuid: &Cpuid,
    vm_types: Option<u64>,
) -> Vec<Finding> {
    let mut f = Vec::new();
    let mut add = |check, severity, detail: String| {
        f.push(Finding {
            check,
            severity,
            detail,
        })
    };
    let tee = HostTee::detect(host, cpuid);
    add("cpu", Severity::Ok, format!("vendor {}", tee.vendor));
    kvm_findings(host, vm_types, &mut add);
    let wants = config.qemu.tee;
    tee_findings(&tee, wants, &mut add);
    device_findings(host, &mut add);
    gpu_findings(config, host, &mut add);
    vsock_finding(host, &mut add);
    qemu_findings(config, wants, &mut add);
    kernel_finding(config, wants, &mut add);
    match config.check_files() {
        Ok(()) => add(
            "config",
            Severity::Ok,
            format!("{}: files present", config.origin),
        ),
        Err(e) => add("config", Severity::Error, e.to_string()),
    }
    if matches!(wants, Tee::Snp | Tee::Tdx) {
        measurement_finding(config, wants, cpuid, &mut add);
    }
    firmware_findings(config, wants, &mut add);
    image_finding(config, wants, &mut add);
    f
}

/// Where pods' root filesystems come from (`[image]`).
fn image_finding(config: &Config, wants: Tee, add: &mut Add<'_>) {
    let image = &config.image;
    let verifies = image.verifies(wants);
    let (severity, detail) = match (verifies, image.allow_unverified) {
        (true, false) => (
            Severity::Ok,
            format!(
                "pods run verified layers only (image.verified_layers = \"{}\"); layer cache {}",
                match image.verified_layers {
                    crate::config::VerifiedLayers::Tee => "tee",
                    crate::config::VerifiedLayers::Always => "always",
                },
                image.layer_cache_dir.display()
            ),
        ),
        (true, true) => (
            Severity::Warn,
            "image.allow_unverified = true: a pod whose initdata lists no images runs with its root filesystem from the host, unverified — the host can change what the pod executes; set it to false outside development".into(),
        ),
        (false, _) => (
            Severity::Info,
            "no TEE: root filesystems come from the host over virtio-fs (image.verified_layers = \"always\" verifies them anyway)".into(),
        ),
    };
    add("image", severity, detail);
}

/// The launch measurement of the configuration, and whether it is one of
/// the pinned values.
fn measurement_finding(
    config: &Config,
    tee: Tee,
    cpuid: &Cpuid,
    add: &mut dyn FnMut(&'static str, Severity, String),
) {
    use crate::measure::{self, Kind};
    let kind = if tee == Tee::Snp {
        Kind::Snp
    } else {
        Kind::Tdx
    };
    let r = match measure::for_launch(config, kind, None, cpuid) {
        Ok(r) => r,
        Err(e) => return add("measurement", Severity::Error, e.to_string()),
    };
    let value = match (r.launch_digest, r.mrtd, r.rtmr1, r.rtmr2) {
        (Some(ld), ..) => format!("launch digest {}", hex::encode(ld)),
        (None, Some(m), Some(r1), Some(r2)) => format!(
            "MRTD {} RTMR1 {} RTMR2 {}",
            hex::encode(m),
            hex::encode(r1),
            hex::encode(r2)
        ),
        _ => "none".into(),
    };
    match measure::check_pinned(config, &r) {
        Ok(()) if config.measurement.expected.is_empty() => add(
            "measurement",
            Severity::Info,
            format!("{value}; not pinned (`measurement.expected` is empty)"),
        ),
        Ok(()) => add(
            "measurement",
            Severity::Ok,
            format!("{value}; matches `measurement.expected`"),
        ),
        Err(e) => add("measurement", Severity::Error, e.to_string()),
    }
}

/// One finding per NVIDIA GPU / NVSwitch: identity, driver, group, CC
/// mode, and whether a launch with this configuration would take it.
fn gpu_findings(
    config: &Config,
    host: &HostRoots,
    add: &mut dyn FnMut(&'static str, Severity, String),
) {
    use crate::config::{CcPolicy, OnMismatch};
    let gpus = crate::gpu::list(host, &config.gpu.extra_cc_capable_ids);
    if gpus.is_empty() {
        add(
            "gpu",
            Severity::Info,
            "no NVIDIA GPU or NVSwitch found".into(),
        );
        return;
    }
    let confidential = matches!(config.qemu.tee, Tee::Snp | Tee::Tdx);
    for g in gpus {
        let f = &g.function;
        let mut sev = Severity::Ok;
        let mut notes = Vec::new();
        if f.driver.as_deref() != Some("vfio-pci") {
            sev = sev.max(Severity::Info);
            notes.push("not bound to vfio-pci, so it cannot be passed through".to_string());
        }
        if f.kind == crate::vfio::Kind::Gpu {
            if confidential && !g.cc_capable {
                sev = sev.max(Severity::Warn);
                notes.push("not CC-capable: confidential guests refuse it".into());
            }
            match (&g.cc_mode, config.gpu.cc_mode) {
                (Ok(m), CcPolicy::Exact(want)) if *m != want && g.cc_capable => {
                    sev = sev.max(if config.gpu.on_mismatch == OnMismatch::Set {
                        Severity::Info
                    } else {
                        Severity::Warn
                    });
                    notes.push(format!(
                        "CC mode {} but `gpu.cc_mode` requires {}: launches {}",
                        m.as_str(),
                        want.as_str(),
                        if config.gpu.on_mismatch == OnMismatch::Set {
                            "switch it first"
                        } else {
                            "refuse it"
                        }
                    ));
                }
                (Err(e), _) if g.cc_capable => {
                    sev = sev.max(Severity::Warn);
                    notes.push(e.clone());
                }
                _ => {}
            }
        }
        add(
            "gpu",
            sev,
            format!(
                "{} {:04x}:{:04x} {:?} {:?}, driver {}, IOMMU group {}, CC mode {}{}{}",
                f.bdf,
                f.vendor,
                f.device,
                f.kind,
                g.arch,
                f.driver.as_deref().unwrap_or("none"),
                f.iommu_group.map_or("none".into(), |x| x.to_string()),
                g.cc_mode.as_ref().map_or("unknown", |m| m.as_str()),
                if notes.is_empty() { "" } else { ": " },
                notes.join("; ")
            ),
        );
    }
}

/// The worst severity, as the process exit status: 0 ok/info, 1 warn, 2 error.
pub fn exit_status(findings: &[Finding]) -> i32 {
    match findings.iter().map(|f| f.severity).max() {
        Some(Severity::Error) => 2,
        Some(Severity::Warn) => 1,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::host::{cpuid_amd_snp as amd, cpuid_intel as intel, host as tree};

    /// A bzImage header with a version string, in a directory that lives
    /// as long as the test process.
    fn kernel_image(version: &str) -> std::path::PathBuf {
        static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
        let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
        let mut img = vec![0u8; 0x400];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        img[0x300..0x300 + version.len()].copy_from_slice(version.as_bytes());
        let path = dir.path().join(version.split(' ').next().unwrap());
        std::fs::write(&path, img).unwrap();
        path
    }

    fn config_with_kernel(kernel: &Path, extra: &str) -> Config {
        // Files that exist on any Linux host, so only host facts vary.
        Config::from_toml(
            &format!("[hypervisor.qemu]\npath = \"/bin/true\"\nkernel = \"{}\"\ninitrd = \"/bin/sh\"\nvirtio_fs_daemon = \"/bin/sh\"\nvhost_user_vsock_daemon = \"/bin/sh\"\n{extra}", kernel.display()),
            "fixture.toml",
        )
        .unwrap()
    }

    fn config(extra: &str) -> Config {
        config_with_kernel(
            &kernel_image("6.12.95-cocoon (cocoon@cocoon) #1 SMP PREEMPT_DYNAMIC"),
            extra,
        )
    }

    #[test]
    fn the_kernel_in_use_is_named_and_classified() {
        let d = tree(&[("dev/kvm", "")]);
        let host = HostRoots::under(d.path());
        let f = run(&config(""), &host, &intel, None);
        let k = find(&f, "kernel");
        assert_eq!(k.severity, Severity::Ok);
        assert!(
            k.detail.contains("6.12.95-cocoon") && k.detail.contains("reproducible"),
            "{}",
            k.detail
        );
        let debian = kernel_image("6.12.95+deb12-amd64 (debian-kernel@lists.debian.org) #1 SMP");
        let f = run(&config_with_kernel(&debian, ""), &host, &intel, None);
        let k = find(&f, "kernel");
        assert_eq!(k.severity, Severity::Info);
        assert!(
            k.detail
                .contains("6.12.95+deb12-amd64 is not Cocoon's reproducible"),
            "{}",
            k.detail
        );
        let f = run(
            &config_with_kernel(&debian, "tee = \"snp\"\naccel = \"kvm\""),
            &host,
            &amd,
            None,
        );
        assert_eq!(find(&f, "kernel").severity, Severity::Warn);
        let f = run(
            &config_with_kernel(Path::new("/bin/sh"), ""),
            &host,
            &intel,
            None,
        );
        let k = find(&f, "kernel");
        assert_eq!(k.severity, Severity::Error);
        assert!(
            k.detail.contains("/bin/sh") && k.detail.contains("HdrS"),
            "{}",
            k.detail
        );
    }

    fn find<'a>(f: &'a [Finding], check: &str) -> &'a Finding {
        f.iter().find(|x| x.check == check).unwrap()
    }

    #[test]
    fn unverified_images_are_a_warning() {
        let d = tree(&[("dev/kvm", "")]);
        let host = HostRoots::under(d.path());
        let f = run(&config(""), &host, &intel, None);
        assert_eq!(find(&f, "image").severity, Severity::Info);
        let f = run(
            &config("[image]\nverified_layers = \"always\""),
            &host,
            &intel,
            None,
        );
        let i = find(&f, "image");
        assert_eq!(i.severity, Severity::Ok, "{i:?}");
        assert!(i.detail.contains("\"always\""), "{i:?}");
        let f = run(
            &config("tee = \"snp\"\n[image]\nallow_unverified = true"),
            &host,
            &amd,
            None,
        );
        let i = find(&f, "image");
        assert_eq!(i.severity, Severity::Warn, "{i:?}");
        assert!(i.detail.contains("image.allow_unverified = true"), "{i:?}");
    }

    #[test]
    fn plain_ci_host() {
        let d = tree(&[("dev/kvm", ""), ("proc/cpuinfo", "flags\t: fpu sse\n")]);
        let f = run(&config(""), &HostRoots::under(d.path()), &intel, None);
        assert_eq!(find(&f, "kvm").severity, Severity::Warn);
        assert!(find(&f, "kvm").detail.contains("TCG"));
        assert_eq!(find(&f, "snp").severity, Severity::Info);
        assert_eq!(find(&f, "vhost-vsock").severity, Severity::Info);
        assert_eq!(exit_status(&f), 1);
    }

    #[test]
    fn snp_host_with_an_snp_config() {
        let d = tree(&[
            ("dev/kvm", ""),
            ("dev/sev", ""),
            ("dev/vhost-vsock", ""),
            ("dev/kvm.vm_types", "29\n"),
            ("proc/cpuinfo", "flags\t: fpu svm sev sev_es sev_snp\n"),
            ("sys/module/kvm_amd/parameters/sev_snp", "Y\n"),
            ("sys/module/vfio_pci/refcnt", "0\n"),
            ("sys/class/iommu/ivhd0/x", ""),
        ]);
        let host = HostRoots::under(d.path());
        let f = run(
            &config("tee = \"snp\"\naccel = \"kvm\""),
            &host,
            &amd,
            recorded_vm_types(&host),
        );
        assert_eq!(find(&f, "snp").severity, Severity::Ok, "{f:?}");
        assert!(find(&f, "snp").detail.contains("cbitpos 51"));
        assert!(
            find(&f, "kvm-vm-types")
                .detail
                .contains("SEV-SNP VM type yes"),
            "{f:?}"
        );
        assert_eq!(find(&f, "iommu").severity, Severity::Ok);
        // /bin/true is no QEMU: it knows no sev-snp-guest; firmware unset.
        assert!(f
            .iter()
            .any(|x| x.check == "firmware" && x.severity == Severity::Error));
        assert_eq!(exit_status(&f), 2);
    }

    #[test]
    fn tdx_host() {
        let d = tree(&[
            ("dev/kvm", ""),
            ("dev/kvm.vm_types", "33\n"),
            ("proc/cpuinfo", "flags\t: fpu vmx\n"),
            ("sys/module/kvm_intel/parameters/tdx", "Y\n"),
        ]);
        let host = HostRoots::under(d.path());
        let f = run(&config(""), &host, &intel, recorded_vm_types(&host));
        assert_eq!(find(&f, "tdx").severity, Severity::Ok, "{f:?}");
        assert!(find(&f, "kvm-vm-types").detail.contains("TDX VM type yes"));
        assert_eq!(find(&f, "snp").severity, Severity::Info);
    }

    #[test]
    fn broken_host_for_a_confidential_config() {
        let d = tree(&[
            ("proc/cpuinfo", "flags\t: fpu\n"),
            ("sys/module/kvm_amd/parameters/sev_snp", "N\n"),
        ]);
        let f = run(
            &config("tee = \"snp\"\nfirmware = \"/nonexistent/OVMF.amdsev.fd\""),
            &HostRoots::under(d.path()),
            &amd,
            None,
        );
        let snp = find(&f, "snp");
        assert_eq!(snp.severity, Severity::Error);
        assert!(
            snp.detail.contains("sev_snp is \"N\", not Y"),
            "{}",
            snp.detail
        );
        assert!(
            f.iter()
                .any(|x| x.check == "config" && x.detail.contains("hypervisor.qemu.firmware")),
            "{f:?}"
        );
        assert_eq!(exit_status(&f), 2);
    }
}
