//! VFIO devices a pod asks for, resolved to PCI functions through sysfs.
//!
//! A request is a device node path (from the pod's OCI spec) or a CDI device
//! name (the shim reads them from the pod), resolved with the CDI specs of
//! the node:
//! - `/dev/vfio/<group>` (legacy container/group API): every function of
//!   `/sys/kernel/iommu_groups/<group>/devices/`, except host and PCI
//!   bridges (classes 0x0600, 0x0604), which stay with the host;
//! - `/dev/vfio/devices/vfio<N>` (iommufd cdev): the one function behind
//!   `/sys/class/vfio-dev/vfio<N>/device`; needs `/dev/iommu`.
//!
//! Every function passed through must be bound to `vfio-pci`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::host::HostRoots;
use crate::pci::PciBdf;

/// Errors resolving VFIO devices.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VfioError {
    /// The request names no VFIO device.
    #[error("{request}: {problem}")]
    Request {
        /// The device path or CDI name as given.
        request: String,
        /// What is wrong, and the fix.
        problem: String,
    },
    /// A function is not usable for passthrough.
    #[error("PCI device {bdf} (requested as {request}) {problem}")]
    Device {
        /// The function.
        bdf: PciBdf,
        /// The request it came from.
        request: String,
        /// What is wrong, and the fix.
        problem: String,
    },
    /// A CDI spec cannot be used.
    #[error("CDI spec {path}: {problem}")]
    CdiSpec {
        /// The spec file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// How QEMU reaches the function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// Legacy VFIO group (`host=<bdf>`).
    Group(u32),
    /// iommufd character device (`host=<bdf>,iommufd=...`).
    Iommufd(String),
}

/// What a PCI function is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Display controller: 0x0300 VGA or 0x0302 3D (NVIDIA data-center GPUs).
    Gpu,
    /// NVIDIA NVSwitch (bridge class 0x0680).
    NvSwitch,
    /// Anything else (audio functions, NICs, ...).
    Other,
}

/// One PCI function to pass through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PciFunction {
    /// Domain:bus:device.function.
    pub bdf: PciBdf,
    /// PCI vendor ID.
    pub vendor: u16,
    /// PCI device ID.
    pub device: u16,
    /// 24-bit class code.
    pub class: u32,
    /// Bound driver, if any.
    pub driver: Option<String>,
    /// IOMMU group, if the host has an IOMMU.
    pub iommu_group: Option<u32>,
    /// NUMA node (-1 if unknown).
    pub numa_node: i32,
    /// What it is.
    pub kind: Kind,
}

/// A function resolved from a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VfioDevice {
    /// The function.
    pub function: PciFunction,
    /// How QEMU opens it.
    pub backend: Backend,
    /// The request it came from (path or CDI name).
    pub request: String,
}

const CLASS_HOST_BRIDGE: u32 = 0x0600;
const CLASS_PCI_BRIDGE: u32 = 0x0604;

fn read_hex(path: &Path) -> Option<u32> {
    let s = std::fs::read_to_string(path).ok()?;
    u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

fn link_name(path: &Path) -> Option<String> {
    Some(
        std::fs::read_link(path)
            .ok()?
            .file_name()?
            .to_string_lossy()
            .into_owned(),
    )
}

/// Reads one PCI function from `/sys/bus/pci/devices/<bdf>`.
pub fn read_function(host: &HostRoots, bdf: &PciBdf) -> Option<PciFunction> {
    let dir = host.sys.join("bus/pci/devices").join(bdf);
    let vendor = u16::try_from(read_hex(&dir.join("vendor"))?).ok()?;
    let device = u16::try_from(read_hex(&dir.join("device"))?).ok()?;
    let class = read_hex(&dir.join("class"))?;
    let kind = match (vendor, class >> 8) {
        (_, 0x0300 | 0x0302) => Kind::Gpu,
        (crate::pci::NVIDIA, 0x0680) => Kind::NvSwitch,
        _ => Kind::Other,
    };
    Some(PciFunction {
        bdf: bdf.clone(),
        vendor,
        device,
        class,
        driver: link_name(&dir.join("driver")),
        iommu_group: link_name(&dir.join("iommu_group")).and_then(|g| g.parse().ok()),
        numa_node: std::fs::read_to_string(dir.join("numa_node"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(-1),
        kind,
    })
}

/// All PCI functions of the host, sorted by address.
pub fn list_functions(host: &HostRoots) -> Vec<PciFunction> {
    let mut v: Vec<PciFunction> = std::fs::read_dir(host.sys.join("bus/pci/devices"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| read_function(host, &e.file_name().to_str()?.parse().ok()?))
                .collect()
        })
        .unwrap_or_default();
    v.sort_by(|a, b| a.bdf.cmp(&b.bdf));
    v
}

/// A device node path from the pod, in the host's namespace (`/dev/...`).
fn under_dev(host: &HostRoots, path: &str) -> PathBuf {
    host.dev.join(
        path.strip_prefix("/dev/")
            .unwrap_or(path.trim_start_matches('/')),
    )
}

/// Whether a device node path is a VFIO device the pod asks to pass
/// through (not the `/dev/vfio/vfio` container node).
pub fn is_vfio_path(path: &str) -> bool {
    path.starts_with("/dev/vfio/") && path != "/dev/vfio/vfio"
}

/// Resolves one VFIO device node path to the functions to pass through.
pub fn resolve_path(
    host: &HostRoots,
    path: &str,
    request: &str,
) -> Result<Vec<VfioDevice>, VfioError> {
    let req_err = |problem: String| VfioError::Request {
        request: request.to_string(),
        problem,
    };
    let node = under_dev(host, path);
    if let Some(name) = path.strip_prefix("/dev/vfio/devices/") {
        if !name.starts_with("vfio") || name[4..].parse::<u32>().is_err() {
            return Err(req_err(format!(
                "{path} is not an iommufd VFIO device; those are /dev/vfio/devices/vfio<N>"
            )));
        }
        if !node.exists() {
            return Err(req_err(format!(
                "{path} does not exist; bind the device to vfio-pci (with iommufd support, Linux 6.6+) or use its /dev/vfio/<group> node"
            )));
        }
        if !host.dev.join("iommu").exists() {
            return Err(req_err(format!(
                "{path} is an iommufd device but /dev/iommu does not exist; load the iommufd module or use the /dev/vfio/<group> node"
            )));
        }
        let bdf: PciBdf = link_name(&host.sys.join("class/vfio-dev").join(name).join("device"))
            .and_then(|b| b.parse().ok())
            .ok_or_else(|| {
                req_err(format!(
                    "no PCI device behind {path} (/sys/class/vfio-dev/{name}/device is missing)"
                ))
            })?;
        let f = read_function(host, &bdf).ok_or_else(|| {
            req_err(format!(
                "PCI device {bdf} behind {path} cannot be read from sysfs"
            ))
        })?;
        check_bound(&f, request)?;
        return Ok(vec![VfioDevice {
            function: f,
            backend: Backend::Iommufd(name.to_string()),
            request: request.to_string(),
        }]);
    }
    let group_str = path.strip_prefix("/dev/vfio/").unwrap_or(path);
    let group: u32 = group_str.parse().map_err(|_| {
        req_err(format!(
            "{path} is not a VFIO group: the group is a number (/dev/vfio/<N>) or an iommufd device (/dev/vfio/devices/vfio<N>)"
        ))
    })?;
    if !node.exists() {
        return Err(req_err(format!(
            "{path} does not exist: IOMMU group {group} has no device bound to vfio-pci (or the group does not exist)"
        )));
    }
    let dir = host
        .sys
        .join("kernel/iommu_groups")
        .join(group.to_string())
        .join("devices");
    let mut bdfs: Vec<PciBdf> = std::fs::read_dir(&dir)
        .map_err(|_| req_err(format!("IOMMU group {group} has no {}", dir.display())))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    bdfs.sort();
    let mut out = Vec::new();
    for bdf in bdfs {
        let f = read_function(host, &bdf).ok_or_else(|| {
            req_err(format!(
                "PCI device {bdf} of IOMMU group {group} cannot be read from sysfs"
            ))
        })?;
        if matches!(f.class >> 8, CLASS_HOST_BRIDGE | CLASS_PCI_BRIDGE) {
            continue;
        }
        check_bound(&f, request)?;
        out.push(VfioDevice {
            function: f,
            backend: Backend::Group(group),
            request: request.to_string(),
        });
    }
    if out.is_empty() {
        return Err(req_err(format!(
            "IOMMU group {group} has only bridges; nothing to pass through"
        )));
    }
    Ok(out)
}

/// A group is viable for VFIO only when all its endpoints are bound to
/// vfio-pci; QEMU would fail later with a less helpful message.
fn check_bound(f: &PciFunction, request: &str) -> Result<(), VfioError> {
    match f.driver.as_deref() {
        Some("vfio-pci") => Ok(()),
        other => Err(VfioError::Device {
            bdf: f.bdf.clone(),
            request: request.to_string(),
            problem: format!(
                "is bound to {}, not vfio-pci; every endpoint of its IOMMU group must be bound to vfio-pci (e.g. `driverctl set-override {} vfio-pci`)",
                other.map_or("no driver".to_string(), |d| format!("driver {d}")),
                f.bdf
            ),
        }),
    }
}

/// CDI devices of the node: `vendor/class=name` -> device node paths.
#[derive(Debug, Default, Clone)]
pub struct CdiRegistry {
    devices: BTreeMap<String, (Vec<String>, PathBuf)>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct CdiSpec {
    cdi_version: String,
    kind: String,
    #[serde(default)]
    devices: Vec<CdiDevice>,
    #[serde(default)]
    container_edits: CdiEdits,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct CdiDevice {
    name: String,
    #[serde(default)]
    container_edits: CdiEdits,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct CdiEdits {
    #[serde(default)]
    device_nodes: Vec<CdiNode>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct CdiNode {
    path: String,
    #[serde(default)]
    host_path: Option<String>,
}

impl CdiRegistry {
    /// Loads every `*.json` / `*.yaml` / `*.yml` spec of the directories
    /// (later directories override earlier ones, as in the CDI spec). A
    /// malformed spec is an error naming the file.
    pub fn load(dirs: &[PathBuf]) -> Result<Self, VfioError> {
        let mut reg = CdiRegistry::default();
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("json" | "yaml" | "yml")
                    )
                })
                .collect();
            files.sort();
            for path in files {
                reg.add_file(&path)?;
            }
        }
        Ok(reg)
    }

    fn add_file(&mut self, path: &Path) -> Result<(), VfioError> {
        let bad = |problem: String| VfioError::CdiSpec {
            path: path.to_path_buf(),
            problem,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| bad(format!("cannot be read: {e}")))?;
        // YAML is a superset of JSON: one parser for both.
        let spec: CdiSpec =
            serde_yaml_ng::from_str(&text).map_err(|e| bad(format!("is malformed: {e}")))?;
        if !spec.cdi_version.starts_with("0.") && !spec.cdi_version.starts_with("1.") {
            return Err(bad(format!(
                "has unsupported cdiVersion {:?}",
                spec.cdi_version
            )));
        }
        let (vendor, class) = spec
            .kind
            .split_once('/')
            .filter(|(v, c)| !v.is_empty() && !c.is_empty())
            .ok_or_else(|| bad(format!("kind {:?} is not vendor/class", spec.kind)))?;
        let node_path = |n: &CdiNode| n.host_path.clone().unwrap_or_else(|| n.path.clone());
        let common: Vec<String> = spec
            .container_edits
            .device_nodes
            .iter()
            .map(node_path)
            .collect();
        for d in &spec.devices {
            if d.name.is_empty() || d.name.contains(['/', '=', ',']) {
                return Err(bad(format!("device name {:?} is not valid", d.name)));
            }
            let mut nodes: Vec<String> = d
                .container_edits
                .device_nodes
                .iter()
                .map(node_path)
                .collect();
            nodes.extend(common.iter().cloned());
            for n in &nodes {
                if !n.starts_with('/') {
                    return Err(bad(format!(
                        "device {:?} has device node {n:?}, which is not an absolute path (a PCI address such as 0000:41:00.0 is not a device node; use /dev/vfio/<group>)",
                        d.name
                    )));
                }
            }
            self.devices.insert(
                format!("{vendor}/{class}={}", d.name),
                (nodes, path.to_path_buf()),
            );
        }
        Ok(())
    }

    /// Device node paths of a fully qualified CDI device name.
    pub fn nodes(&self, name: &str) -> Result<&[String], VfioError> {
        self.devices
            .get(name)
            .map(|(n, _)| n.as_slice())
            .ok_or_else(|| VfioError::Request {
                request: name.to_string(),
                problem: if name.contains('=') && name.contains('/') {
                    format!(
                        "no CDI spec defines this device (known: {})",
                        if self.devices.is_empty() {
                            "none".to_string()
                        } else {
                            self.devices.keys().cloned().collect::<Vec<_>>().join(", ")
                        }
                    )
                } else {
                    "is not a CDI device name (vendor.com/class=name)".into()
                },
            })
    }
}

/// The VFIO device nodes behind device paths and CDI names, each with the
/// request it came from (`path`, or `name (path)`).
pub fn request_nodes(
    paths: &[String],
    cdi_names: &[String],
    cdi_dirs: &[PathBuf],
) -> Result<Vec<(String, String)>, VfioError> {
    let mut requests: Vec<(String, String)> = paths
        .iter()
        .filter(|p| is_vfio_path(p))
        .map(|p| (p.clone(), p.clone()))
        .collect();
    if !cdi_names.is_empty() {
        let reg = CdiRegistry::load(cdi_dirs)?;
        for name in cdi_names {
            for node in reg.nodes(name)? {
                if is_vfio_path(node) {
                    requests.push((node.clone(), format!("{name} ({node})")));
                }
            }
        }
    }
    Ok(requests)
}

/// Resolves everything a pod asks for: VFIO device paths and CDI names.
/// Functions reachable through more than one request appear once.
pub fn resolve(
    host: &HostRoots,
    paths: &[String],
    cdi_names: &[String],
    cdi_dirs: &[PathBuf],
) -> Result<Vec<VfioDevice>, VfioError> {
    resolve_requests(host, &request_nodes(paths, cdi_names, cdi_dirs)?)
}

/// Resolves VFIO device nodes (each with the request it came from, as
/// [`request_nodes`] returns them) to PCI functions, each once.
pub fn resolve_requests(
    host: &HostRoots,
    requests: &[(String, String)],
) -> Result<Vec<VfioDevice>, VfioError> {
    let mut out: Vec<VfioDevice> = Vec::new();
    for (path, request) in requests {
        for d in resolve_path(host, path, request)? {
            if !out.iter().any(|o| o.function.bdf == d.function.bdf) {
                out.push(d);
            }
        }
    }
    Ok(out)
}
