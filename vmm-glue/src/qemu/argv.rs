//! A pure builder of QEMU's command line: no file is opened and nothing is
//! started here, so every option is unit-tested, and the integration tests
//! hand the very same argv to real QEMU.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use base64::Engine;

use crate::config::QemuConfig;
use crate::pci::PciBdf;
use crate::tee::LaunchTee;

/// Kernel parameters Cocoon always passes: fail fast instead of rebooting,
/// skip hardware probes that a VM does not need and that are slow under
/// emulation.
pub const BASE_KERNEL_PARAMS: &[&str] = &[
    "reboot=k",
    "panic=-1",
    "quiet",
    "i8042.noaux=1",
    "i8042.nopnp=1",
    "i8042.dumbkbd=1",
    "cryptomgr.notests",
    "no_timer_check",
    "rcupdate.rcu_expedited=1",
];

/// The accelerator chosen for one VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedAccel {
    /// KVM.
    Kvm,
    /// TCG (software emulation).
    Tcg,
}

impl ResolvedAccel {
    fn as_str(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        }
    }

    /// CPU model used when the config sets none.
    pub fn default_cpu(self) -> &'static str {
        match self {
            Self::Kvm => "host",
            Self::Tcg => "max",
        }
    }
}

/// The vsock device carrying the agent connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VsockDevice {
    /// Kernel vhost-vsock with this guest CID.
    Vhost {
        /// Guest context id (≥ 3).
        cid: u32,
    },
    /// vhost-user-vsock served by vhost-device-vsock on this socket.
    VhostUser {
        /// The vhost-user socket.
        socket: PathBuf,
    },
}

/// QOM id of hot-plug root port `i` (the `bus` of a disk plugged there).
pub fn hotplug_port(i: u32) -> String {
    format!("hp{i}")
}

/// QOM id of the vsock device (for QMP queries).
pub const VSOCK_DEVICE_ID: &str = "vsock0";

/// One virtio-fs share served by a virtiofsd on `socket`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsShare {
    /// virtiofsd's vhost-user socket.
    pub socket: PathBuf,
    /// Mount tag seen by the guest.
    pub tag: String,
}

/// A PCI function passed through with VFIO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfioArg {
    /// Host PCI address.
    pub bdf: PciBdf,
    /// Opened through iommufd (a `/dev/vfio/devices/vfioN` cdev) rather
    /// than its legacy group.
    pub iommufd: bool,
}

/// PCI passthrough: devices, root ports, MMIO window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PciArgs {
    /// Devices, each cold-plugged behind its own pcie-root-port.
    pub vfio: Vec<VfioArg>,
    /// Root ports to create at least (free ones stay empty).
    pub root_ports: u32,
    /// Empty root ports for hot-plugged disks ([`hotplug_port`]), with
    /// native PCIe hot-plug (the guest kernel has no ACPI PCI hot-plug).
    pub hotplug_ports: u32,
    /// 64-bit MMIO window in MiB (0: firmware default).
    pub mmio64_mb: u64,
}

/// A virtio-net device on a tap whose queues QEMU inherits as `fds`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicArg {
    /// The fd numbers in QEMU (3, 4, ...), one per queue.
    pub fds: Vec<i32>,
    /// MAC address (the pod interface's).
    pub mac: String,
    /// MTU the guest driver uses (virtio `host_mtu`).
    pub mtu: u32,
}

/// A read-only virtio-blk disk backed by a host file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskArg {
    /// The file (or block device).
    pub path: PathBuf,
    /// The guest's `/sys/block/vdX/serial` (at most 20 bytes).
    pub serial: String,
}

/// Everything that goes on one VM's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmArgs {
    /// VM name (shown by QEMU, used in thread names).
    pub name: String,
    /// Accelerator.
    pub accel: ResolvedAccel,
    /// Machine type.
    pub machine_type: String,
    /// CPU model.
    pub cpu_model: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Guest initrd.
    pub initrd: PathBuf,
    /// Firmware for -bios.
    pub firmware: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Agent transport device.
    pub vsock: VsockDevice,
    /// virtio-fs shares.
    pub shares: Vec<FsShare>,
    /// Serial console log file, if the console is on.
    pub console_log: Option<PathBuf>,
    /// QMP socket.
    pub qmp_socket: PathBuf,
    /// Trusted execution environment.
    pub tee: LaunchTee,
    /// PCI passthrough.
    pub pci: PciArgs,
    /// The pod's network interfaces.
    pub nics: Vec<NicArg>,
    /// Read-only disks.
    pub disks: Vec<DiskArg>,
}

/// The kernel command line for a VM of this configuration.
pub fn kernel_cmdline(q: &QemuConfig) -> String {
    let mut params: Vec<&str> = BASE_KERNEL_PARAMS.to_vec();
    if q.debug_console {
        params.push("console=ttyS0");
    }
    params.extend(q.kernel_params.iter().map(String::as_str));
    params.join(" ")
}

/// Escapes a value for QEMU's option syntax, where `,` separates options
/// and a literal comma is written `,,`.
pub fn escape(v: &OsStr) -> OsString {
    let s = v.to_string_lossy();
    OsString::from(s.replace(',', ",,"))
}

fn opt(parts: &[&OsStr]) -> OsString {
    let mut s = OsString::new();
    for p in parts {
        s.push(p);
    }
    s
}

fn path_opt(prefix: &str, p: &Path, suffix: &str) -> OsString {
    opt(&[
        OsStr::new(prefix),
        &escape(p.as_os_str()),
        OsStr::new(suffix),
    ])
}

impl VmArgs {
    /// The `-object` of the TEE, if any.
    fn tee_object(&self) -> Option<OsString> {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        match &self.tee {
            LaunchTee::None => None,
            // QEMU's `sev-snp-guest` (qapi/qom.json, SevSnpGuestProperties).
            LaunchTee::Snp {
                cbitpos,
                reduced_phys_bits,
                policy,
                host_data,
            } => {
                let mut o = format!("sev-snp-guest,id=snp,cbitpos={cbitpos},reduced-phys-bits={reduced_phys_bits},kernel-hashes=on,policy={policy:#x}");
                if let Some(h) = host_data {
                    o.push_str(&format!(",host-data={}", b64(h)));
                }
                Some(o.into())
            }
            // QEMU 10.1's `tdx-guest` (qapi/qom.json, TdxGuestProperties);
            // the JSON form because the QGS address is a struct.
            LaunchTee::Tdx {
                mrconfigid,
                qgs_socket,
            } => {
                let mut o = serde_json::json!({
                    "qom-type": "tdx-guest",
                    "id": "tdx",
                    "sept-ve-disable": true,
                    "quote-generation-socket": {"type": "unix", "path": qgs_socket.display().to_string()},
                });
                if let Some(m) = mrconfigid {
                    o["mrconfigid"] = b64(m).into();
                }
                Some(o.to_string().into())
            }
        }
    }

    /// Name, defaults off, machine with the TEE, CPU, memory.
    fn machine(&self, a: &mut Vec<OsString>) {
        a.push("-name".into());
        a.push(format!("{},debug-threads=on", self.name.replace(',', ",,")).into());
        for s in [
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ] {
            a.push(s.into());
        }
        a.push("-machine".into());
        let cgs = match &self.tee {
            LaunchTee::None => "",
            LaunchTee::Snp { .. } => ",confidential-guest-support=snp,kernel_irqchip=split",
            LaunchTee::Tdx { .. } => ",confidential-guest-support=tdx,kernel_irqchip=split",
        };
        a.push(
            format!(
                "{},accel={},memory-backend=mem0{cgs}",
                self.machine_type,
                self.accel.as_str()
            )
            .into(),
        );
        if let Some(object) = self.tee_object() {
            a.push("-object".into());
            a.push(object);
        }
        a.push("-cpu".into());
        a.push(self.cpu_model.clone().into());
        a.push("-smp".into());
        a.push(self.vcpus.to_string().into());
        a.push("-m".into());
        a.push(format!("{}M", self.memory_mib).into());
        // vhost-user devices (virtiofsd, vhost-device-vsock) map guest RAM,
        // so it must be a shareable memfd.
        a.push("-object".into());
        a.push(
            format!(
                "memory-backend-memfd,id=mem0,size={}M,share=on",
                self.memory_mib
            )
            .into(),
        );
    }

    /// Firmware, kernel, initrd, command line.
    fn boot(&self, a: &mut Vec<OsString>) {
        if let Some(fw) = &self.firmware {
            a.push("-bios".into());
            a.push(fw.clone().into_os_string());
        }
        a.push("-kernel".into());
        a.push(self.kernel.clone().into_os_string());
        a.push("-initrd".into());
        a.push(self.initrd.clone().into_os_string());
        a.push("-append".into());
        a.push(self.cmdline.clone().into());
    }

    /// VFIO: one pcie-root-port per device on pcie.0 (chassis/slot unique),
    /// the device cold-plugged behind it before the guest boots.
    fn pci(&self, a: &mut Vec<OsString>) {
        let ports = self
            .pci
            .root_ports
            .max(u32::try_from(self.pci.vfio.len()).unwrap_or(u32::MAX));
        for i in 0..ports {
            a.push("-device".into());
            a.push(
                format!(
                    "pcie-root-port,id=rp{i},bus=pcie.0,chassis={},slot={i},multifunction=off",
                    i + 1
                )
                .into(),
            );
        }
        for i in 0..self.pci.hotplug_ports {
            let n = ports + i;
            a.push("-device".into());
            a.push(
                format!(
                    "pcie-root-port,id={},bus=pcie.0,chassis={},slot={n},multifunction=off",
                    hotplug_port(i),
                    n + 1
                )
                .into(),
            );
        }
        if self.pci.hotplug_ports > 0 {
            // q35 hands root-port hot-plug to ACPI by default; native
            // PCIe hot-plug (pciehp) needs no ACPI PCI hot-plug support in
            // the guest and adds the device at once.
            a.push("-global".into());
            a.push("ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off".into());
        }
        if self.pci.vfio.iter().any(|d| d.iommufd) {
            a.push("-object".into());
            a.push("iommufd,id=iommufd0".into());
        }
        for (i, d) in self.pci.vfio.iter().enumerate() {
            a.push("-device".into());
            let iommufd = if d.iommufd { ",iommufd=iommufd0" } else { "" };
            a.push(format!("vfio-pci,host={},bus=rp{i},id=vfio{i}{iommufd}", d.bdf).into());
        }
        if self.pci.mmio64_mb > 0 {
            // OVMF sizes its 64-bit aperture from this fw_cfg file; the q35
            // host bridge's hole must be as large.
            a.push("-fw_cfg".into());
            a.push(format!("name=opt/ovmf/X-PciMmio64Mb,string={}", self.pci.mmio64_mb).into());
            a.push("-global".into());
            a.push(format!("q35-pcihost.pci-hole64-size={}M", self.pci.mmio64_mb).into());
        }
    }

    /// The agent's vsock device and the virtio-fs shares.
    fn vsock_and_shares(&self, a: &mut Vec<OsString>) {
        match &self.vsock {
            VsockDevice::Vhost { cid } => {
                a.push("-device".into());
                a.push(format!("vhost-vsock-pci,id=vsock0,guest-cid={cid}").into());
            }
            VsockDevice::VhostUser { socket } => {
                a.push("-chardev".into());
                a.push(path_opt("socket,id=vsock0,path=", socket, ""));
                a.push("-device".into());
                a.push("vhost-user-vsock-pci,chardev=vsock0,id=vsock0".into());
            }
        }
        for (i, share) in self.shares.iter().enumerate() {
            a.push("-chardev".into());
            a.push(path_opt(
                &format!("socket,id=fs{i},path="),
                &share.socket,
                "",
            ));
            a.push("-device".into());
            a.push(
                format!(
                    "vhost-user-fs-pci,chardev=fs{i},tag={},queue-size=1024",
                    share.tag.replace(',', ",,")
                )
                .into(),
            );
        }
    }

    /// One virtio-net device per pod interface, on its tap's fds; no
    /// option ROM (the guest boots its kernel directly). Several queues:
    /// `mq=on` and an MSI-X vector per queue pair direction plus config and
    /// control.
    fn nics(&self, a: &mut Vec<OsString>) {
        for (i, n) in self.nics.iter().enumerate() {
            let fds: Vec<String> = n.fds.iter().map(ToString::to_string).collect();
            a.push("-netdev".into());
            if fds.len() > 1 {
                a.push(format!("tap,id=net{i},fds={}", fds.join(":")).into());
            } else {
                a.push(format!("tap,id=net{i},fd={}", fds.join("")).into());
            }
            let mq = if fds.len() > 1 {
                format!(",mq=on,vectors={}", 2 * fds.len() + 2)
            } else {
                String::new()
            };
            a.push("-device".into());
            a.push(
                format!(
                    "virtio-net-pci,netdev=net{i},mac={},host_mtu={}{mq},romfile=",
                    n.mac, n.mtu
                )
                .into(),
            );
        }
    }

    /// Read-only disks: a `file` node under a `raw` node (both read-only,
    /// written as JSON so that no path needs QEMU's comma escaping) and a
    /// virtio-blk device the guest finds by its serial.
    fn disks(&self, a: &mut Vec<OsString>) {
        for (i, d) in self.disks.iter().enumerate() {
            let file = serde_json::json!({
                "driver": "file",
                "node-name": format!("file{i}"),
                "filename": d.path,
                "read-only": true,
            });
            let raw = serde_json::json!({
                "driver": "raw",
                "node-name": format!("disk{i}"),
                "file": format!("file{i}"),
                "read-only": true,
            });
            a.push("-blockdev".into());
            a.push(file.to_string().into());
            a.push("-blockdev".into());
            a.push(raw.to_string().into());
            a.push("-device".into());
            a.push(format!("virtio-blk-pci,drive=disk{i},serial={}", d.serial).into());
        }
    }

    /// Serial console and QMP.
    fn control(&self, a: &mut Vec<OsString>) {
        match &self.console_log {
            Some(log) => {
                a.push("-chardev".into());
                a.push(path_opt("file,id=console0,path=", log, ""));
                a.push("-serial".into());
                a.push("chardev:console0".into());
            }
            None => {
                a.push("-serial".into());
                a.push("none".into());
            }
        }
        a.push("-qmp".into());
        a.push(path_opt("unix:", &self.qmp_socket, ",server=on,wait=off"));
    }

    /// The argv after the binary name.
    pub fn to_argv(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        self.machine(&mut a);
        self.boot(&mut a);
        self.pci(&mut a);
        self.vsock_and_shares(&mut a);
        self.nics(&mut a);
        self.disks(&mut a);
        self.control(&mut a);
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn args() -> VmArgs {
        VmArgs {
            name: "cocoon-t1".into(),
            accel: ResolvedAccel::Tcg,
            machine_type: "q35".into(),
            cpu_model: "max".into(),
            vcpus: 2,
            memory_mib: 512,
            kernel: "/k/vmlinuz".into(),
            initrd: "/k/initrd.img".into(),
            firmware: None,
            cmdline: "quiet".into(),
            vsock: VsockDevice::VhostUser {
                socket: "/run/c/vhu.sock".into(),
            },
            shares: vec![FsShare {
                socket: "/run/c/fs.sock".into(),
                tag: "cocoon".into(),
            }],
            console_log: Some("/run/c/console.log".into()),
            qmp_socket: "/run/c/qmp.sock".into(),
            tee: LaunchTee::None,
            pci: PciArgs::default(),
            nics: vec![],
            disks: vec![],
        }
    }

    #[test]
    fn golden_vfio() {
        let mut a = snp(None);
        a.pci = PciArgs {
            vfio: vec![
                VfioArg {
                    bdf: "0000:41:00.0".parse().unwrap(),
                    iommufd: false,
                },
                VfioArg {
                    bdf: "0000:c1:00.0".parse().unwrap(),
                    iommufd: true,
                },
            ],
            root_ports: 3,
            hotplug_ports: 0,
            mmio64_mb: 262_144,
        };
        let s = joined(&a);
        assert!(
            s.contains(
                "-device pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=0,multifunction=off \
                 -device pcie-root-port,id=rp1,bus=pcie.0,chassis=2,slot=1,multifunction=off \
                 -device pcie-root-port,id=rp2,bus=pcie.0,chassis=3,slot=2,multifunction=off \
                 -object iommufd,id=iommufd0 \
                 -device vfio-pci,host=0000:41:00.0,bus=rp0,id=vfio0 \
                 -device vfio-pci,host=0000:c1:00.0,bus=rp1,id=vfio1,iommufd=iommufd0 \
                 -fw_cfg name=opt/ovmf/X-PciMmio64Mb,string=262144 \
                 -global q35-pcihost.pci-hole64-size=262144M"
            ),
            "{s}"
        );
        // No devices: no root ports, no iommufd object.
        let s = joined(&snp(None));
        assert!(
            !s.contains("pcie-root-port") && !s.contains("iommufd"),
            "{s}"
        );
    }

    fn snp(host_data: Option<[u8; 32]>) -> VmArgs {
        let mut a = args();
        a.accel = ResolvedAccel::Kvm;
        a.cpu_model = "EPYC-v4".into();
        a.firmware = Some("/usr/share/ovmf/OVMF.amdsev.fd".into());
        a.console_log = None;
        a.tee = LaunchTee::Snp {
            cbitpos: 51,
            reduced_phys_bits: 1,
            policy: 0x30000,
            host_data,
        };
        a
    }

    #[test]
    fn golden_snp() {
        let s = joined(&snp(None));
        assert!(
            s.contains(
                "-machine q35,accel=kvm,memory-backend=mem0,confidential-guest-support=snp,kernel_irqchip=split \
                 -object sev-snp-guest,id=snp,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on,policy=0x30000 \
                 -cpu EPYC-v4"
            ),
            "{s}"
        );
        assert!(s.contains("-bios /usr/share/ovmf/OVMF.amdsev.fd"), "{s}");
        assert!(s.contains("-serial none"), "{s}");
        let s = joined(&snp(Some([0xab; 32])));
        assert!(
            s.contains(",policy=0x30000,host-data=q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s= "),
            "{s}"
        );
    }

    #[test]
    fn golden_tdx() {
        let mut a = args();
        a.accel = ResolvedAccel::Kvm;
        a.tee = LaunchTee::Tdx {
            mrconfigid: None,
            qgs_socket: "/var/run/tdx-qgs/qgs.socket".into(),
        };
        let s = joined(&a);
        assert!(
            s.contains(
                "-machine q35,accel=kvm,memory-backend=mem0,confidential-guest-support=tdx,kernel_irqchip=split \
                 -object {\"id\":\"tdx\",\"qom-type\":\"tdx-guest\",\"quote-generation-socket\":{\"path\":\"/var/run/tdx-qgs/qgs.socket\",\"type\":\"unix\"},\"sept-ve-disable\":true} "
            ),
            "{s}"
        );
        a.tee = LaunchTee::Tdx {
            mrconfigid: Some([1; 48]),
            qgs_socket: "/q".into(),
        };
        assert!(joined(&a).contains(
            "\"mrconfigid\":\"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB\""
        ));
    }

    fn joined(a: &VmArgs) -> String {
        a.to_argv()
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn golden_tcg_vhost_user() {
        assert_eq!(
            joined(&args()),
            "-name cocoon-t1,debug-threads=on -nodefaults -no-user-config -display none -no-reboot \
             -machine q35,accel=tcg,memory-backend=mem0 -cpu max -smp 2 -m 512M \
             -object memory-backend-memfd,id=mem0,size=512M,share=on \
             -kernel /k/vmlinuz -initrd /k/initrd.img -append quiet \
             -chardev socket,id=vsock0,path=/run/c/vhu.sock -device vhost-user-vsock-pci,chardev=vsock0,id=vsock0 \
             -chardev socket,id=fs0,path=/run/c/fs.sock -device vhost-user-fs-pci,chardev=fs0,tag=cocoon,queue-size=1024 \
             -chardev file,id=console0,path=/run/c/console.log -serial chardev:console0 \
             -qmp unix:/run/c/qmp.sock,server=on,wait=off"
        );
    }

    #[test]
    fn kernel_vsock_firmware_no_console() {
        let mut a = args();
        a.accel = ResolvedAccel::Kvm;
        a.cpu_model = "host".into();
        a.vsock = VsockDevice::Vhost { cid: 7 };
        a.firmware = Some("/usr/share/ovmf/OVMF.fd".into());
        a.console_log = None;
        a.shares.clear();
        let s = joined(&a);
        assert!(
            s.contains("-machine q35,accel=kvm,memory-backend=mem0 -cpu host"),
            "{s}"
        );
        assert!(
            s.contains("-device vhost-vsock-pci,id=vsock0,guest-cid=7"),
            "{s}"
        );
        assert!(s.contains("-bios /usr/share/ovmf/OVMF.fd"), "{s}");
        assert!(s.contains("-serial none"), "{s}");
        assert!(!s.contains("vhost-user"), "{s}");
    }

    #[test]
    fn commas_in_paths_are_escaped() {
        let mut a = args();
        a.qmp_socket = "/run/a,b/qmp.sock".into();
        assert!(joined(&a).contains("-qmp unix:/run/a,,b/qmp.sock,server=on,wait=off"));
    }

    #[test]
    fn cmdline_from_config() {
        let mut c = Config::dev_defaults().unwrap();
        c.qemu.kernel_params = vec!["loglevel=7".into()];
        let line = kernel_cmdline(&c.qemu);
        assert!(line.starts_with("reboot=k panic=-1 quiet"), "{line}");
        assert!(line.ends_with("console=ttyS0 loglevel=7"), "{line}");
        c.qemu.debug_console = false;
        assert!(!kernel_cmdline(&c.qemu).contains("console="));
    }

    #[test]
    fn hotplug_ports_follow_the_vfio_ports_with_native_hotplug() {
        let mut a = args();
        a.pci.root_ports = 3;
        a.pci.hotplug_ports = 2;
        let s = joined(&a);
        assert!(s.contains("-device pcie-root-port,id=rp2,bus=pcie.0,chassis=3,slot=2,multifunction=off -device pcie-root-port,id=hp0,bus=pcie.0,chassis=4,slot=3,multifunction=off -device pcie-root-port,id=hp1,bus=pcie.0,chassis=5,slot=4,multifunction=off -global ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off"), "{s}");
        a.pci.hotplug_ports = 0;
        assert!(!joined(&a).contains("acpi-pci-hotplug"));
    }

    #[test]
    fn disks_are_read_only_virtio_blk_with_serials() {
        let mut a = args();
        a.disks = vec![DiskArg {
            path: "/var/lib/cocoon/layers/ab,c.layer".into(),
            serial: "disk0".into(),
        }];
        let argv: Vec<String> = a
            .to_argv()
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let at = argv.iter().position(|s| s == "-blockdev").unwrap();
        let file: serde_json::Value = serde_json::from_str(&argv[at + 1]).unwrap();
        assert_eq!(file["driver"], "file");
        assert_eq!(file["filename"], "/var/lib/cocoon/layers/ab,c.layer");
        assert_eq!(file["read-only"], true);
        let raw: serde_json::Value = serde_json::from_str(&argv[at + 3]).unwrap();
        assert_eq!(raw["driver"], "raw");
        assert_eq!(raw["file"], "file0");
        assert_eq!(raw["read-only"], true);
        assert_eq!(argv[at + 5], "virtio-blk-pci,drive=disk0,serial=disk0");
    }

    #[test]
    fn pod_interfaces_become_virtio_net_on_inherited_taps() {
        let mut a = args();
        a.nics = vec![
            NicArg {
                fds: vec![3],
                mac: "02:42:0a:58:00:05".into(),
                mtu: 1450,
            },
            NicArg {
                fds: vec![4, 5],
                mac: "02:42:0a:59:00:07".into(),
                mtu: 9000,
            },
        ];
        let argv: Vec<String> = a
            .to_argv()
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let joined = argv.join(" ");
        assert!(
            joined.contains(
                "-netdev tap,id=net0,fd=3 -device virtio-net-pci,netdev=net0,mac=02:42:0a:58:00:05,host_mtu=1450,romfile= \
                 -netdev tap,id=net1,fds=4:5 -device virtio-net-pci,netdev=net1,mac=02:42:0a:59:00:07,host_mtu=9000,mq=on,vectors=6,romfile="
            ),
            "{joined}"
        );
    }
}
