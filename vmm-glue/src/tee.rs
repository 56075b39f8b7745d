//! Trusted execution environments: what the host supports (SEV-SNP, TDX),
//! and the resolved TEE of one launch.
//!
//! Host facts come through [`HostRoots`] (sysfs, dev) and a CPUID function,
//! so tests run the same code against fixture hosts.

use std::path::PathBuf;

use crate::config::{QemuConfig, Tee};
use crate::host::HostRoots;

/// CPUID: leaf → (eax, ebx, ecx, edx).
pub type Cpuid = dyn Fn(u32) -> (u32, u32, u32, u32);

/// The host's real CPUID.
pub fn host_cpuid(leaf: u32) -> (u32, u32, u32, u32) {
    #[cfg(target_arch = "x86_64")]
    {
        let r = std::arch::x86_64::__cpuid(leaf);
        (r.eax, r.ebx, r.ecx, r.edx)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = leaf;
        (0, 0, 0, 0)
    }
}

/// SEV encryption parameters from CPUID 0x8000001F (AMD APM vol. 3, "Memory
/// Encryption"): C-bit position EBX[5:0], physical address bit reduction
/// EBX[11:6].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SevCpuid {
    /// C-bit position.
    pub cbitpos: u32,
    /// Reduction of physical address bits.
    pub reduced_phys_bits: u32,
    /// EAX bit 4: SEV-SNP supported.
    pub snp: bool,
}

/// What the host offers, with the reasons for what it does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTee {
    /// CPU vendor string.
    pub vendor: String,
    /// SEV parameters (AMD only).
    pub sev: Option<SevCpuid>,
    /// Reasons SEV-SNP guests cannot run (empty: they can).
    pub snp_missing: Vec<String>,
    /// Reasons TDX guests cannot run (empty: they can).
    pub tdx_missing: Vec<String>,
}

fn vendor(cpuid: &Cpuid) -> String {
    let (_, b, c, d) = cpuid(0);
    let mut v = Vec::with_capacity(12);
    for r in [b, d, c] {
        v.extend_from_slice(&r.to_le_bytes());
    }
    String::from_utf8_lossy(&v).into_owned()
}

fn param_is_y(host: &HostRoots, module: &str, param: &str) -> Result<(), String> {
    let path = host
        .sys
        .join("module")
        .join(module)
        .join("parameters")
        .join(param);
    match std::fs::read_to_string(&path) {
        Ok(v) if v.trim_start().starts_with(['Y', 'y', '1']) => Ok(()),
        Ok(v) => Err(format!(
            "{module} parameter {param} is {:?}, not Y ({})",
            v.trim(),
            path.display()
        )),
        Err(_) => Err(format!(
            "{module} parameter {param} is missing ({}): is {module} loaded with {param}=1?",
            path.display()
        )),
    }
}

impl HostTee {
    /// Probes the host.
    pub fn detect(host: &HostRoots, cpuid: &Cpuid) -> Self {
        let vendor = vendor(cpuid);
        let kvm = host.kvm_usable();
        let mut snp_missing = Vec::new();
        let mut tdx_missing = Vec::new();
        if !kvm {
            let why = "KVM cannot run guests here (no /dev/kvm or no vmx/svm CPU flag)".to_string();
            snp_missing.push(why.clone());
            tdx_missing.push(why);
        }
        let sev = (vendor == "AuthenticAMD" && cpuid(0x8000_0000).0 >= 0x8000_001F).then(|| {
            let (eax, ebx, _, _) = cpuid(0x8000_001F);
            SevCpuid {
                cbitpos: ebx & 0x3f,
                reduced_phys_bits: (ebx >> 6) & 0x3f,
                snp: eax & (1 << 4) != 0,
            }
        });
        match (vendor.as_str(), sev) {
            ("AuthenticAMD", Some(s)) if s.snp => {}
            ("AuthenticAMD", _) => snp_missing
                .push("the CPU does not report SEV-SNP (CPUID 0x8000001F EAX bit 4)".into()),
            (v, _) => snp_missing.push(format!("the CPU is {v}, SEV-SNP needs AMD EPYC")),
        }
        if let Err(e) = param_is_y(host, "kvm_amd", "sev_snp") {
            snp_missing.push(e);
        }
        if !host.dev.join("sev").exists() {
            snp_missing.push(format!(
                "{} does not exist (the ccp/PSP driver is not loaded)",
                host.dev.join("sev").display()
            ));
        }
        if vendor != "GenuineIntel" {
            tdx_missing.push(format!(
                "the CPU is {vendor}, TDX needs Intel Xeon with TDX"
            ));
        }
        if let Err(e) = param_is_y(host, "kvm_intel", "tdx") {
            tdx_missing.push(e);
        }
        Self {
            vendor,
            sev,
            snp_missing,
            tdx_missing,
        }
    }
}

/// The TEE of one launch, with everything its QEMU object needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchTee {
    /// No TEE.
    None,
    /// SEV-SNP.
    Snp {
        /// C-bit position.
        cbitpos: u32,
        /// Physical address bit reduction.
        reduced_phys_bits: u32,
        /// Guest policy.
        policy: u64,
        /// HOST_DATA (the initdata digest), if any.
        host_data: Option<[u8; 32]>,
    },
    /// TDX.
    Tdx {
        /// MRCONFIGID (the initdata digest), if any.
        mrconfigid: Option<[u8; 48]>,
        /// Quote generation service socket.
        qgs_socket: PathBuf,
    },
}

/// A TEE that cannot be used on this host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TeeError {
    /// The host lacks what the TEE needs.
    #[error("`hypervisor.qemu.tee` = \"{tee}\" but this host cannot run {name} guests: {}", missing.join("; "))]
    HostLacks {
        /// Config value.
        tee: &'static str,
        /// "SEV-SNP" or "TDX".
        name: &'static str,
        /// What is missing.
        missing: Vec<String>,
    },
    /// `auto` found neither.
    #[error("`hypervisor.qemu.tee` = \"auto\" but this host supports neither SEV-SNP ({snp}) nor TDX ({tdx}); use tee = \"none\" for a development VM")]
    NoneAvailable {
        /// Why not SNP.
        snp: String,
        /// Why not TDX.
        tdx: String,
    },
    /// The firmware lacks the metadata the TEE needs.
    #[error("firmware {path} {problem}")]
    Firmware {
        /// The file.
        path: PathBuf,
        /// What is missing and the fix.
        problem: String,
    },
    /// A confidential guest needs firmware.
    #[error("`hypervisor.qemu.firmware` is empty: {name} guests boot from {what}; set it (see configs/cocoon-qemu-{tee}.toml)")]
    NoFirmware {
        /// "SEV-SNP" or "TDX".
        name: &'static str,
        /// Which firmware.
        what: &'static str,
        /// Config value.
        tee: &'static str,
    },
}

/// Resolves the configured TEE against the host.
pub fn resolve(q: &QemuConfig, host: &HostTee) -> Result<LaunchTee, TeeError> {
    let tee = match q.tee {
        Tee::None => return Ok(LaunchTee::None),
        Tee::Auto if host.snp_missing.is_empty() => Tee::Snp,
        Tee::Auto if host.tdx_missing.is_empty() => Tee::Tdx,
        Tee::Auto => {
            return Err(TeeError::NoneAvailable {
                snp: host.snp_missing.join("; "),
                tdx: host.tdx_missing.join("; "),
            })
        }
        t => t,
    };
    match tee {
        Tee::Snp => {
            if !host.snp_missing.is_empty() {
                return Err(TeeError::HostLacks {
                    tee: "snp",
                    name: "SEV-SNP",
                    missing: host.snp_missing.clone(),
                });
            }
            if q.firmware.is_none() {
                return Err(TeeError::NoFirmware {
                    name: "SEV-SNP",
                    what: "an AmdSev OVMF build with the SEV hashes table (OVMF.amdsev.fd)",
                    tee: "snp",
                });
            }
            let sev = host.sev.unwrap_or(SevCpuid {
                cbitpos: 0,
                reduced_phys_bits: 0,
                snp: false,
            });
            Ok(LaunchTee::Snp {
                cbitpos: sev.cbitpos,
                reduced_phys_bits: sev.reduced_phys_bits,
                policy: q.snp_guest_policy,
                host_data: None,
            })
        }
        _ => {
            if !host.tdx_missing.is_empty() {
                return Err(TeeError::HostLacks {
                    tee: "tdx",
                    name: "TDX",
                    missing: host.tdx_missing.clone(),
                });
            }
            if q.firmware.is_none() {
                return Err(TeeError::NoFirmware {
                    name: "TDX",
                    what: "a TDVF build of OVMF (OVMF.inteltdx.fd)",
                    tee: "tdx",
                });
            }
            Ok(LaunchTee::Tdx {
                mrconfigid: None,
                qgs_socket: q.tdx_quote_generation_socket.clone(),
            })
        }
    }
}

/// Checks that the firmware carries what the TEE needs: SEV metadata with
/// the kernel hashes section for SNP measured direct boot, a TDVF
/// descriptor for TDX.
pub fn check_firmware(tee: &LaunchTee, path: &std::path::Path) -> Result<(), TeeError> {
    let err = |problem: String| TeeError::Firmware {
        path: path.to_path_buf(),
        problem,
    };
    if matches!(tee, LaunchTee::None) {
        return Ok(());
    }
    let info = crate::firmware::read(path).map_err(|e| err(format!("cannot be used: {e}")))?;
    match tee {
        LaunchTee::Snp { .. } if info.sev_sections.is_none() => Err(err(
            "has no SEV metadata; SEV-SNP needs an OVMF built with SEV support, best the AmdSev build (OVMF.amdsev.fd)".into(),
        )),
        LaunchTee::Snp { .. } if !info.has_snp_kernel_hashes() => Err(err(
            "has no SNP_KERNEL_HASHES section, so kernel-hashes=on cannot measure kernel, initrd and command line; use the AmdSev build (Debian package ovmf-amdsev: OVMF.amdsev.fd)".into(),
        )),
        LaunchTee::Tdx { .. } if !info.tdvf => Err(err("has no TDVF descriptor; TDX needs a TDVF build (Debian package ovmf-inteltdx)".into())),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::fixtures::host::{cpuid_amd_snp, cpuid_intel, host};

    const KVM: [(&str, &str); 2] = [("dev/kvm", ""), ("proc/cpuinfo", "flags\t: fpu svm vmx\n")];

    #[test]
    fn snp_host_is_detected_with_cpuid_parameters() {
        let mut files = KVM.to_vec();
        files.extend([
            ("sys/module/kvm_amd/parameters/sev_snp", "Y\n"),
            ("dev/sev", ""),
        ]);
        let d = host(&files);
        let t = HostTee::detect(&HostRoots::under(d.path()), &cpuid_amd_snp);
        assert_eq!(t.vendor, "AuthenticAMD");
        assert!(t.snp_missing.is_empty(), "{:?}", t.snp_missing);
        assert_eq!(
            t.sev,
            Some(SevCpuid {
                cbitpos: 51,
                reduced_phys_bits: 1,
                snp: true
            })
        );
        let mut c = Config::from_toml(
            "[hypervisor.qemu]\ntee = \"auto\"\nfirmware = \"/fw.fd\"",
            "t",
        )
        .unwrap();
        let l = resolve(&c.qemu, &t).unwrap();
        assert_eq!(
            l,
            LaunchTee::Snp {
                cbitpos: 51,
                reduced_phys_bits: 1,
                policy: 0x30000,
                host_data: None
            }
        );
        c.qemu.firmware = None;
        assert!(resolve(&c.qemu, &t)
            .unwrap_err()
            .to_string()
            .contains("OVMF.amdsev.fd"));
    }

    #[test]
    fn firmware_metadata_is_checked() {
        let fw = std::path::Path::new("/usr/share/ovmf/OVMF.fd");
        if !fw.exists() {
            eprintln!("SKIP: {} not installed (make deps)", fw.display());
            return;
        }
        let snp = LaunchTee::Snp {
            cbitpos: 51,
            reduced_phys_bits: 1,
            policy: 0x30000,
            host_data: None,
        };
        let e = check_firmware(&snp, fw).unwrap_err().to_string();
        assert!(
            e.contains("/usr/share/ovmf/OVMF.fd has no SNP_KERNEL_HASHES section")
                && e.contains("ovmf-amdsev"),
            "{e}"
        );
        let tdx = LaunchTee::Tdx {
            mrconfigid: None,
            qgs_socket: "/q".into(),
        };
        check_firmware(&tdx, fw).unwrap();
        let e = check_firmware(&tdx, std::path::Path::new("/bin/sh"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no TDVF descriptor"), "{e}");
    }

    #[test]
    fn tdx_host_is_detected() {
        let mut files = KVM.to_vec();
        files.push(("sys/module/kvm_intel/parameters/tdx", "Y\n"));
        let d = host(&files);
        let t = HostTee::detect(&HostRoots::under(d.path()), &cpuid_intel);
        assert!(t.tdx_missing.is_empty(), "{:?}", t.tdx_missing);
        let c = Config::from_toml(
            "[hypervisor.qemu]\ntee = \"auto\"\nfirmware = \"/fw.fd\"",
            "t",
        )
        .unwrap();
        assert!(matches!(
            resolve(&c.qemu, &t).unwrap(),
            LaunchTee::Tdx { .. }
        ));
    }

    #[test]
    fn plain_host_says_what_is_missing() {
        // /dev/kvm without vmx/svm, no TEE parameters: like CI machines.
        let d = host(&[("dev/kvm", ""), ("proc/cpuinfo", "flags\t: fpu\n")]);
        let t = HostTee::detect(&HostRoots::under(d.path()), &cpuid_intel);
        let c = Config::from_toml(
            "[hypervisor.qemu]\ntee = \"snp\"\nfirmware = \"/fw.fd\"",
            "t",
        )
        .unwrap();
        let e = resolve(&c.qemu, &t).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "`hypervisor.qemu.tee` = \"snp\" but this host cannot run SEV-SNP guests"
            ),
            "{e}"
        );
        assert!(
            e.contains("KVM cannot run guests")
                && e.contains("kvm_amd parameter sev_snp is missing"),
            "{e}"
        );
        let c = Config::from_toml(
            "[hypervisor.qemu]\ntee = \"tdx\"\nfirmware = \"/fw.fd\"",
            "t",
        )
        .unwrap();
        let e = resolve(&c.qemu, &t).unwrap_err().to_string();
        assert!(e.contains("kvm_intel parameter tdx is missing"), "{e}");
        let c = Config::from_toml("[hypervisor.qemu]\ntee = \"auto\"", "t").unwrap();
        assert!(resolve(&c.qemu, &t)
            .unwrap_err()
            .to_string()
            .contains("supports neither SEV-SNP"));
        // A module parameter that is present but N.
        let d = host(&[("sys/module/kvm_amd/parameters/sev_snp", "N\n")]);
        let t = HostTee::detect(&HostRoots::under(d.path()), &cpuid_amd_snp);
        assert!(
            t.snp_missing
                .iter()
                .any(|m| m.contains("sev_snp is \"N\", not Y")),
            "{:?}",
            t.snp_missing
        );
    }
}
