//! NVIDIA GPUs for confidential guests: architecture, CC capability, and
//! the confidential-computing mode read from BAR0.
//!
//! The mode is a firmware (FSP) setting that becomes active after a GPU
//! reset; its current value is visible in a BAR0 register (Hopper
//! `0x1182cc`, Blackwell `0x590`, bits [1:0]: 0 off, 1 on, 3 devtools), as
//! NVIDIA's gpu-admin-tools reads it. Cocoon maps sysfs `resource0`
//! read-only and reads that register; switching the mode is left to the
//! admin's tool (`[gpu] set_cc_mode_command`).

use serde::Serialize;

use crate::host::HostRoots;
use crate::pci::PciBdf;
use crate::vfio::{Kind, PciFunction};

pub use crate::pci::NVIDIA;

/// Hopper CC mode register in BAR0.
pub const HOPPER_CC_REG: u64 = 0x0011_82cc;
/// Blackwell CC mode register in BAR0.
pub const BLACKWELL_CC_REG: u64 = 0x590;

/// GPU architecture, from the device ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// GH100 / GH200 family.
    Hopper,
    /// GB1xx / GB2xx family.
    Blackwell,
    /// Anything else (no CC support).
    Other,
}

/// Hopper device IDs with confidential computing (H100, H200, GH200, H800,
/// H20 SKUs named in NVIDIA's gpu-admin-tools).
const HOPPER_CC_IDS: &[u16] = &[
    0x2313, 0x2321, 0x2330, 0x2331, 0x2336, 0x2337, 0x2338, 0x2339, 0x233D, // H100
    0x2335, 0x233B, // H200
    0x2342, 0x2343, 0x2345, 0x2348, // GH200
    0x2322, 0x2324, 0x233A, // H800
    0x2328, 0x2329, 0x2309, 0x230C, 0x230E, 0x232C, // H20
];

/// Blackwell data-center chips (GB100, GB102, GB110, GB112) by device-ID
/// range.
const BLACKWELL_DC: &[(u16, u16)] = &[
    (0x2900, 0x297F),
    (0x2980, 0x29FF),
    (0x3180, 0x31FF),
    (0x3200, 0x327F),
];

/// Blackwell client/workstation chips (GB20x).
const BLACKWELL_CLIENT: &[(u16, u16)] = &[
    (0x2B80, 0x2BFF),
    (0x2C00, 0x2C7F),
    (0x2D00, 0x2D7F),
    (0x2D80, 0x2DFF),
    (0x2F00, 0x2F7F),
];

fn in_ranges(id: u16, r: &[(u16, u16)]) -> bool {
    r.iter().any(|&(a, b)| (a..=b).contains(&id))
}

/// The architecture of an NVIDIA device ID.
pub fn arch(vendor: u16, device: u16) -> Arch {
    if vendor != NVIDIA {
        Arch::Other
    } else if (0x2300..=0x23FF).contains(&device) {
        Arch::Hopper
    } else if in_ranges(device, BLACKWELL_DC) || in_ranges(device, BLACKWELL_CLIENT) {
        Arch::Blackwell
    } else {
        Arch::Other
    }
}

/// Whether a device is a CC-capable GPU: a listed Hopper SKU, a Blackwell
/// data-center chip, or one the admin added (`[gpu] extra_cc_capable_ids`).
pub fn cc_capable(vendor: u16, device: u16, extra: &[(u16, u16)]) -> bool {
    extra.contains(&(vendor, device))
        || (vendor == NVIDIA
            && (HOPPER_CC_IDS.contains(&device) || in_ranges(device, BLACKWELL_DC)))
}

pub use crate::config::CcMode;

/// Errors reading or changing the CC mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    /// BAR0 cannot be read.
    #[error("GPU {bdf}: cannot read the CC mode from {path}: {problem}")]
    Bar0 {
        /// The GPU.
        bdf: PciBdf,
        /// The BAR0 file.
        path: String,
        /// What went wrong.
        problem: String,
    },
    /// The GPU has no CC mode register Cocoon knows.
    #[error("GPU {bdf} ({vendor:04x}:{device:04x}) has no confidential-computing mode (Hopper or newer is needed)")]
    NoCcMode {
        /// The GPU.
        bdf: PciBdf,
        /// Vendor ID.
        vendor: u16,
        /// Device ID.
        device: u16,
    },
    /// The register holds a value that is no mode.
    #[error("GPU {bdf}: CC mode register {reg:#x} = {value:#010x} has mode bits {bits:#04b}, which is no known mode")]
    UnknownMode {
        /// The GPU.
        bdf: PciBdf,
        /// Register offset.
        reg: u64,
        /// Raw value.
        value: u32,
        /// Bits [1:0].
        bits: u32,
    },
    /// The device does not satisfy `[gpu]` for this launch.
    #[error("GPU {bdf} ({request}) {problem}")]
    Policy {
        /// The device.
        bdf: PciBdf,
        /// The request it came from.
        request: String,
        /// What is wrong, and the fix.
        problem: String,
    },
    /// Setting the mode failed.
    #[error("GPU {bdf}: setting CC mode {mode} failed: {problem}")]
    Set {
        /// The GPU.
        bdf: PciBdf,
        /// The wanted mode.
        mode: &'static str,
        /// What went wrong.
        problem: String,
    },
}

/// The BAR0 register holding the CC mode of a GPU, if it has one.
pub fn cc_register(f: &PciFunction) -> Option<u64> {
    match arch(f.vendor, f.device) {
        Arch::Hopper => Some(HOPPER_CC_REG),
        Arch::Blackwell => Some(BLACKWELL_CC_REG),
        Arch::Other => None,
    }
}

/// Reads the CC mode of a GPU from its BAR0.
pub fn read_cc_mode(host: &HostRoots, f: &PciFunction) -> Result<CcMode, GpuError> {
    let reg = cc_register(f).ok_or(GpuError::NoCcMode {
        bdf: f.bdf.clone(),
        vendor: f.vendor,
        device: f.device,
    })?;
    let path = host
        .sys
        .join("bus/pci/devices")
        .join(&f.bdf)
        .join("resource0");
    let value = crate::sys::read_mmio_u32(&path, reg).map_err(|problem| GpuError::Bar0 {
        bdf: f.bdf.clone(),
        path: path.display().to_string(),
        problem,
    })?;
    match value & 0b11 {
        0 => Ok(CcMode::Off),
        1 => Ok(CcMode::On),
        3 => Ok(CcMode::Devtools),
        bits => Err(GpuError::UnknownMode {
            bdf: f.bdf.clone(),
            reg,
            value,
            bits,
        }),
    }
}

/// Runs the admin's mode-switch command (`{bdf}` and `{mode}` replaced),
/// then reads the mode again.
pub fn set_cc_mode(
    host: &HostRoots,
    f: &PciFunction,
    mode: CcMode,
    command: &[String],
) -> Result<CcMode, GpuError> {
    let fail = |problem: String| GpuError::Set {
        bdf: f.bdf.clone(),
        mode: mode.as_str(),
        problem,
    };
    let argv: Vec<String> = command
        .iter()
        .map(|a| {
            a.replace("{bdf}", f.bdf.as_str())
                .replace("{mode}", mode.as_str())
        })
        .collect();
    let Some((prog, args)) = argv.split_first() else {
        return Err(fail(
            "`gpu.set_cc_mode_command` is empty; set it (e.g. to NVIDIA gpu-admin-tools' nvidia_gpu_tools.py --gpu-bdf={bdf} --set-cc-mode={mode} --reset-after-cc-mode-switch)".into(),
        ));
    };
    let out = std::process::Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| fail(format!("cannot run {prog}: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(fail(format!(
            "{} exited with {}: {}",
            argv.join(" "),
            out.status,
            err.trim().lines().last().unwrap_or("")
        )));
    }
    read_cc_mode(host, f)
}

/// Checks the devices of a launch against `[gpu]`: CC capability for
/// confidential guests and the CC mode of every GPU (switching it with the
/// admin's command when `on_mismatch = "set"`). Returns the modes found.
pub fn check_launch(
    host: &HostRoots,
    devices: &[crate::vfio::VfioDevice],
    cfg: &crate::config::GpuConfig,
    confidential: bool,
) -> Result<Vec<(PciBdf, Option<CcMode>)>, GpuError> {
    use crate::config::{CcPolicy, OnMismatch};
    let mut out = Vec::new();
    for d in devices {
        let f = &d.function;
        let policy = |problem: String| GpuError::Policy {
            bdf: f.bdf.clone(),
            request: d.request.clone(),
            problem,
        };
        if f.kind != Kind::Gpu {
            out.push((f.bdf.clone(), None));
            continue;
        }
        let capable = cc_capable(f.vendor, f.device, &cfg.extra_cc_capable_ids);
        if confidential && !capable {
            return Err(policy(format!(
                "({:04x}:{:04x}, {:?}) is not a confidential-computing capable GPU; a confidential guest only takes Hopper or Blackwell data-center GPUs (add the ID to `gpu.extra_cc_capable_ids` if NVIDIA lists it as CC-capable)",
                f.vendor, f.device, arch(f.vendor, f.device)
            )));
        }
        let want = match cfg.cc_mode {
            CcPolicy::Any => {
                out.push((f.bdf.clone(), read_cc_mode(host, f).ok()));
                continue;
            }
            CcPolicy::Exact(m) => m,
        };
        if want == CcMode::Off && !capable {
            // A GPU without CC support is always "off".
            out.push((f.bdf.clone(), None));
            continue;
        }
        let mut mode = read_cc_mode(host, f)?;
        if mode != want && cfg.on_mismatch == OnMismatch::Set {
            mode = set_cc_mode(host, f, want, &cfg.set_cc_mode_command)?;
        }
        if mode != want {
            return Err(policy(format!(
                "is in CC mode {} but `gpu.cc_mode` requires {}{}; switch it (`cocoon gpu cc-mode --set {} {}` runs `gpu.set_cc_mode_command`) or set `gpu.on_mismatch` = \"set\"",
                mode.as_str(),
                want.as_str(),
                if cfg.on_mismatch == OnMismatch::Set { " even after `gpu.set_cc_mode_command`" } else { "" },
                want.as_str(),
                f.bdf
            )));
        }
        out.push((f.bdf.clone(), Some(mode)));
    }
    Ok(out)
}

/// A GPU as `cocoon gpu list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct GpuInfo {
    /// The function.
    #[serde(flatten)]
    pub function: PciFunction,
    /// Architecture.
    pub arch: Arch,
    /// Whether it supports CC.
    pub cc_capable: bool,
    /// CC mode, or why it could not be read.
    pub cc_mode: Result<CcMode, String>,
}

/// NVIDIA GPUs and NVSwitches of the host.
pub fn list(host: &HostRoots, extra: &[(u16, u16)]) -> Vec<GpuInfo> {
    crate::vfio::list_functions(host)
        .into_iter()
        .filter(|f| f.vendor == NVIDIA && matches!(f.kind, Kind::Gpu | Kind::NvSwitch))
        .map(|f| {
            let cc_mode = if f.kind == Kind::Gpu {
                read_cc_mode(host, &f).map_err(|e| e.to_string())
            } else {
                Err("not a GPU".into())
            };
            GpuInfo {
                arch: arch(f.vendor, f.device),
                cc_capable: cc_capable(f.vendor, f.device, extra),
                cc_mode,
                function: f,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::gpu::{h100, write, Func};
    use crate::vfio::{resolve, Backend};

    fn host(funcs: &[Func]) -> (tempfile::TempDir, HostRoots) {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), funcs);
        let h = HostRoots::under(d.path());
        (d, h)
    }

    fn paths(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn cc_mode_is_read_from_bar0_for_each_mode() {
        let (_d, h) = host(&[
            h100("0000:41:00.0", 12, 1),
            h100("0000:42:00.0", 13, 0),
            h100("0000:43:00.0", 14, 3),
            Func {
                bdf: "0000:44:00.0",
                device: 0x2901, // B200
                bar0: Some((BLACKWELL_CC_REG, 1)),
                group: 15,
                ..h100("", 0, 0)
            },
            h100("0000:45:00.0", 16, 2),
        ]);
        let f = |bdf: &str| crate::vfio::read_function(&h, &bdf.parse().unwrap()).unwrap();
        assert_eq!(read_cc_mode(&h, &f("0000:41:00.0")), Ok(CcMode::On));
        assert_eq!(read_cc_mode(&h, &f("0000:42:00.0")), Ok(CcMode::Off));
        assert_eq!(read_cc_mode(&h, &f("0000:43:00.0")), Ok(CcMode::Devtools));
        let b200 = f("0000:44:00.0");
        assert_eq!(arch(b200.vendor, b200.device), Arch::Blackwell);
        assert!(cc_capable(b200.vendor, b200.device, &[]));
        assert_eq!(read_cc_mode(&h, &b200), Ok(CcMode::On));
        let e = read_cc_mode(&h, &f("0000:45:00.0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no known mode"), "{e}");
        let list = list(&h, &[]);
        assert_eq!(list.len(), 5);
        assert_eq!(list[0].cc_mode, Ok(CcMode::On));
        assert_eq!(list[0].arch, Arch::Hopper);
    }

    #[test]
    fn an_unreadable_bar_is_a_clear_error() {
        let (d, h) = host(&[Func {
            bar0: None,
            ..h100("0000:41:00.0", 12, 1)
        }]);
        let f = crate::vfio::read_function(&h, &"0000:41:00.0".parse().unwrap()).unwrap();
        let e = read_cc_mode(&h, &f).unwrap_err().to_string();
        assert!(
            e.contains("GPU 0000:41:00.0: cannot read the CC mode from") && e.contains("resource0"),
            "{e}"
        );
        // A BAR too small for the register.
        std::fs::write(
            d.path().join("sys/bus/pci/devices/0000:41:00.0/resource0"),
            [0u8; 64],
        )
        .unwrap();
        let e = read_cc_mode(&h, &f).unwrap_err().to_string();
        assert!(e.contains("too small for the register at 0x1182cc"), "{e}");
    }

    #[test]
    fn groups_skip_bridges_and_need_every_endpoint_on_vfio_pci() {
        let bridge = Func {
            bdf: "0000:40:01.0",
            vendor: 0x1022,
            device: 0x1483,
            class: 0x060400,
            driver: Some("pcieport"),
            group: 12,
            bar0: None,
            cdev: None,
        };
        let audio = Func {
            bdf: "0000:41:00.1",
            device: 0x22ba,
            class: 0x040300,
            driver: Some("snd_hda_intel"),
            bar0: None,
            ..h100("", 12, 0)
        };
        let (_d, h) = host(&[bridge.clone(), h100("0000:41:00.0", 12, 1)]);
        let v = resolve(&h, &paths(&["/dev/vfio/12", "/dev/vfio/vfio"]), &[], &[]).unwrap();
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].function.bdf, "0000:41:00.0");
        assert_eq!(v[0].backend, Backend::Group(12));
        let (_d, h) = host(&[bridge, h100("0000:41:00.0", 12, 1), audio]);
        let e = resolve(&h, &paths(&["/dev/vfio/12"]), &[], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("PCI device 0000:41:00.1 (requested as /dev/vfio/12) is bound to driver snd_hda_intel, not vfio-pci"),
            "{e}"
        );
    }

    #[test]
    fn bad_paths_are_refused_by_name() {
        let (_d, h) = host(&[h100("0000:41:00.0", 12, 1)]);
        for (p, needle) in [
            ("/dev/vfio/99", "/dev/vfio/99 does not exist"),
            ("/dev/vfio/abc", "/dev/vfio/abc is not a VFIO group"),
            (
                "/dev/vfio/devices/vfio7",
                "/dev/vfio/devices/vfio7 does not exist",
            ),
            ("/dev/vfio/devices/nvme0", "is not an iommufd VFIO device"),
        ] {
            let e = resolve(&h, &paths(&[p]), &[], &[]).unwrap_err().to_string();
            assert!(e.contains(needle), "{p}: {e}");
        }
        // Not VFIO at all: ignored (ordinary device nodes of the pod).
        assert!(resolve(&h, &paths(&["/dev/fuse"]), &[], &[])
            .unwrap()
            .is_empty());
    }

    #[test]
    fn iommufd_cdevs_resolve_through_vfio_dev() {
        let (_d, h) = host(&[Func {
            cdev: Some("vfio3"),
            ..h100("0000:41:00.0", 12, 1)
        }]);
        let v = resolve(&h, &paths(&["/dev/vfio/devices/vfio3"]), &[], &[]).unwrap();
        assert_eq!(v[0].function.bdf, "0000:41:00.0");
        assert_eq!(v[0].backend, Backend::Iommufd("vfio3".into()));
    }

    #[test]
    fn nvswitches_are_identified() {
        let (_d, h) = host(&[Func {
            bdf: "0000:05:00.0",
            device: 0x22a3,
            class: 0x068000,
            bar0: None,
            ..h100("", 20, 0)
        }]);
        let v = resolve(&h, &paths(&["/dev/vfio/20"]), &[], &[]).unwrap();
        assert_eq!(v[0].function.kind, Kind::NvSwitch);
    }

    #[test]
    fn cdi_names_resolve_through_specs_and_malformed_specs_are_named() {
        let (d, h) = host(&[h100("0000:41:00.0", 12, 1), h100("0000:42:00.0", 13, 1)]);
        let etc = d.path().join("etc-cdi");
        let run = d.path().join("run-cdi");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(
            run.join("pgpu.yaml"),
            "cdiVersion: 0.5.0\nkind: nvidia.com/pgpu\ndevices:\n- name: \"12\"\n  containerEdits:\n    deviceNodes:\n    - path: /dev/vfio/12\ncontainerEdits:\n  deviceNodes:\n  - path: /dev/vfio/vfio\n",
        )
        .unwrap();
        std::fs::write(
            etc.join("other.json"),
            r#"{"cdiVersion":"0.6.0","kind":"nvidia.com/pgpu","devices":[{"name":"13","containerEdits":{"deviceNodes":[{"path":"/dev/vfio/13"}]}}]}"#,
        )
        .unwrap();
        let dirs = vec![etc.clone(), run.clone()];
        let v = resolve(
            &h,
            &[],
            &paths(&["nvidia.com/pgpu=12", "nvidia.com/pgpu=13"]),
            &dirs,
        )
        .unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].request, "nvidia.com/pgpu=12 (/dev/vfio/12)");
        let e = resolve(&h, &[], &paths(&["nvidia.com/pgpu=14"]), &dirs)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nvidia.com/pgpu=14: no CDI spec defines this device"),
            "{e}"
        );
        // A spec whose device node is a PCI address.
        std::fs::write(
            etc.join("bad.json"),
            r#"{"cdiVersion":"0.6.0","kind":"nvidia.com/pgpu","devices":[{"name":"x","containerEdits":{"deviceNodes":[{"path":"0000:41:00.0"}]}}]}"#,
        )
        .unwrap();
        let e = resolve(&h, &[], &paths(&["nvidia.com/pgpu=12"]), &dirs)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bad.json") && e.contains("\"0000:41:00.0\", which is not an absolute path"),
            "{e}"
        );
        std::fs::write(etc.join("bad.json"), "{not json").unwrap();
        let e = resolve(&h, &[], &paths(&["nvidia.com/pgpu=12"]), &dirs)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("CDI spec ") && e.contains("bad.json: is malformed"),
            "{e}"
        );
    }

    #[test]
    fn cc_capability_table() {
        assert!(cc_capable(NVIDIA, 0x2330, &[]));
        assert!(cc_capable(NVIDIA, 0x2941, &[])); // GB200
        assert!(!cc_capable(NVIDIA, 0x2684, &[])); // RTX 4090
        assert!(!cc_capable(NVIDIA, 0x2B85, &[])); // GB202 client
        assert!(cc_capable(NVIDIA, 0x2B85, &[(NVIDIA, 0x2B85)]));
        assert_eq!(arch(NVIDIA, 0x20B0), Arch::Other); // A100
        assert_eq!(arch(0x1002, 0x2330), Arch::Other);
    }

    #[test]
    fn setting_the_mode_runs_the_command_and_reads_again() {
        let (d, h) = host(&[h100("0000:41:00.0", 12, 0)]);
        let f = crate::vfio::read_function(&h, &"0000:41:00.0".parse().unwrap()).unwrap();
        let bar = d.path().join("sys/bus/pci/devices/0000:41:00.0/resource0");
        // A stand-in for the admin's tool: writes mode 1 into the register.
        let script = format!(
            "printf '\\001' | dd of={} bs=1 seek={} conv=notrunc status=none; echo {{bdf}}={{mode}} > /dev/null",
            bar.display(),
            HOPPER_CC_REG
        );
        let cmd = vec![
            "sh".into(),
            "-c".into(),
            script,
            "{bdf}".into(),
            "{mode}".into(),
        ];
        assert_eq!(set_cc_mode(&h, &f, CcMode::On, &cmd), Ok(CcMode::On));
        let e = set_cc_mode(&h, &f, CcMode::On, &["false".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("setting CC mode on failed: false exited"), "{e}");
        let e = set_cc_mode(&h, &f, CcMode::On, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("gpu.set_cc_mode_command"), "{e}");
    }
}
