//! A Create request parsed once: [`ContainerRequest`] holds everything the
//! shim needs from the bundle's OCI spec and from containerd's request —
//! kind, process, hostname, rootfs mounts, stdio, annotations, the devices
//! it asks for. Nothing downstream reads `config.json` again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cocoon_vmm::config::Config;

use crate::node::NodeConfig;
use cocoon_vmm::host::HostRoots;
use cocoon_vmm::vfio::VfioDevice;
use containerd_shim_protos::api::{CreateTaskRequest, Mount};
use oci_spec::runtime::{Process, Spec};

use super::error::{Result, ShimError};
use super::process::StdioPaths;

/// `io.kubernetes.cri.container-type`.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// `io.kubernetes.cri.sandbox-id`.
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// `io.kubernetes.cri.sandbox-name`.
pub const CRI_SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
/// `io.kubernetes.cri.sandbox-namespace`.
pub const CRI_SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
/// Annotations under this prefix are Cocoon's; each must be allow-listed.
pub const COCOON_PREFIX: &str = "io.cocoon.";
/// Kata's initdata annotation, which Cocoon also accepts when allow-listed.
pub const KATA_INITDATA: &str = "io.katacontainers.config.hypervisor.cc_init_data";
/// Prefix of CDI device annotations: whoever writes them picks host
/// devices, so they are honoured only when the node allows them.
pub const CDI_PREFIX: &str = "cdi.k8s.io/";
/// `io.cocoon.secret.<name>=kbs:///<repo>/<type>/<tag>`: a secret the guest
/// fetches from the KBS and places at `/run/secrets/cocoon/<name>`.
pub const SECRET_PREFIX: &str = "io.cocoon.secret.";
/// `io.cocoon.model.<name>=<path of a sealed model in the container>`: a
/// model the guest decrypts with a key from the KBS and binds read-only at
/// `/models/<name>` in the pod's containers.
pub const MODEL_PREFIX: &str = "io.cocoon.model.";

/// containerd's CRI: the pod's summed CPU quota (µs per period).
pub const SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
/// containerd's CRI: the CPU period of `SANDBOX_CPU_QUOTA`.
pub const SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
/// containerd's CRI: the pod's summed memory limit in bytes.
pub const SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";

/// What a pod adds to the node's default VM size, like Kata: its CPU limit
/// in whole vCPUs (rounded up) and its memory limit in MiB (rounded up).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sizing {
    /// Extra vCPUs.
    pub vcpus: u32,
    /// Extra memory, MiB.
    pub memory_mib: u32,
}

impl Sizing {
    fn from_limits(quota: i64, period: u64, memory: i64) -> Self {
        let vcpus = if quota > 0 && period > 0 {
            u32::try_from(quota.unsigned_abs().div_ceil(period)).unwrap_or(u32::MAX)
        } else {
            0
        };
        let memory_mib = if memory > 0 {
            u32::try_from(memory.unsigned_abs().div_ceil(1 << 20)).unwrap_or(u32::MAX)
        } else {
            0
        };
        Self { vcpus, memory_mib }
    }
}

/// Where a container belongs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A CRI pod sandbox (the pause container): starts the pod's VM.
    PodSandbox,
    /// A CRI container of the pod `sandbox_id`: runs in that pod's VM.
    PodContainer {
        /// The pod's sandbox id.
        sandbox_id: String,
    },
    /// Anything else (e.g. `ctr run`): its own VM.
    Single,
}

impl Kind {
    /// Whether deleting this container ends the VM.
    pub fn owns_vm(&self) -> bool {
        !matches!(self, Self::PodContainer { .. })
    }
}

/// Reads `<bundle>/config.json`.
pub fn load(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    Spec::load(&path).map_err(|e| ShimError::Spec {
        path,
        message: e.to_string(),
    })
}

/// The container's kind from its annotations.
pub fn kind(annotations: &BTreeMap<String, String>) -> Kind {
    let get = |k: &str| annotations.get(k).map(String::as_str);
    match (get(CRI_CONTAINER_TYPE), get(CRI_SANDBOX_ID)) {
        (Some("sandbox"), _) => Kind::PodSandbox,
        (Some("container"), Some(id)) if !id.is_empty() => Kind::PodContainer {
            sandbox_id: id.to_string(),
        },
        _ => Kind::Single,
    }
}

fn annotations(spec: &Spec) -> BTreeMap<String, String> {
    spec.annotations()
        .as_ref()
        .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// The grouping id: the pod's sandbox id for CRI containers, else `id`.
pub fn group_id(spec: &Spec, id: &str) -> String {
    match kind(&annotations(spec)) {
        Kind::PodContainer { sandbox_id } => sandbox_id,
        _ => id.to_string(),
    }
}

/// Refuses Cocoon (and Kata initdata, and CDI) annotations that the node
/// configuration does not allow.
pub fn check_annotations(
    annotations: &BTreeMap<String, String>,
    config: &NodeConfig,
) -> Result<()> {
    for key in annotations.keys() {
        let ours =
            key.starts_with(COCOON_PREFIX) || key == KATA_INITDATA || key.starts_with(CDI_PREFIX);
        if ours && !config.policy.allows(key) {
            return Err(ShimError::AnnotationNotAllowed {
                key: key.clone(),
                origin: config.vm.origin.clone(),
            });
        }
    }
    Ok(())
}

/// What a container asks to pass through: VFIO device node paths from
/// `linux.devices` and CDI device names from `cdi.k8s.io/*` annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceRequest {
    /// VFIO device node paths.
    pub vfio_paths: Vec<String>,
    /// Fully qualified CDI device names.
    pub cdi: Vec<String>,
}

/// Devices resolved once: the PCI functions to pass through and the VFIO
/// device nodes behind them (what later containers of the pod may use).
#[derive(Debug, Clone, Default)]
pub struct ResolvedDevices {
    /// PCI functions, each once.
    pub functions: Vec<VfioDevice>,
    /// VFIO device nodes, sorted, each once.
    pub nodes: Vec<String>,
}

/// CDI device names requested by `cdi.k8s.io/*` annotations
/// (comma-separated fully qualified names), sorted, each once.
pub fn cdi_annotation_devices(annotations: &BTreeMap<String, String>) -> Vec<String> {
    let mut out: Vec<String> = annotations
        .iter()
        .filter(|(k, _)| k.starts_with(CDI_PREFIX))
        .flat_map(|(_, v)| v.split(',').map(|s| s.trim().to_string()))
        .filter(|s| !s.is_empty())
        .collect();
    out.sort();
    out.dedup();
    out
}

impl DeviceRequest {
    fn from_spec(spec: &Spec, annotations: &BTreeMap<String, String>) -> Self {
        let mut vfio_paths: Vec<String> = spec
            .linux()
            .as_ref()
            .and_then(|l| l.devices().clone())
            .unwrap_or_default()
            .iter()
            .map(|d| d.path().display().to_string())
            .filter(|p| cocoon_vmm::vfio::is_vfio_path(p))
            .collect();
        vfio_paths.sort();
        vfio_paths.dedup();
        Self {
            vfio_paths,
            cdi: cdi_annotation_devices(annotations),
        }
    }

    /// Adds CDI names (e.g. the kubelet's allocations).
    pub fn add_cdi(&mut self, names: Vec<String>) {
        self.cdi.extend(names);
        self.cdi.sort();
        self.cdi.dedup();
    }

    /// Whether nothing is asked for.
    pub fn is_empty(&self) -> bool {
        self.vfio_paths.is_empty() && self.cdi.is_empty()
    }

    /// The VFIO device nodes behind the request (CDI names resolved with
    /// the node's specs), each with the request it came from.
    fn requests(&self, config: &Config) -> Result<Vec<(String, String)>> {
        cocoon_vmm::vfio::request_nodes(&self.vfio_paths, &self.cdi, &config.gpu.cdi_spec_dirs)
            .map_err(|e| ShimError::FailedPrecondition(e.to_string()))
    }

    /// The VFIO device nodes behind the request, sorted, each once.
    pub fn nodes(&self, config: &Config) -> Result<Vec<String>> {
        let mut v: Vec<String> = self
            .requests(config)?
            .into_iter()
            .map(|(node, _)| node)
            .collect();
        v.sort();
        v.dedup();
        Ok(v)
    }

    /// Resolves the request to PCI functions through the node's sysfs (CDI
    /// specs read once).
    pub fn resolve(&self, config: &Config) -> Result<ResolvedDevices> {
        if self.is_empty() {
            return Ok(ResolvedDevices::default());
        }
        let requests = self.requests(config)?;
        let host = HostRoots::under(&config.gpu.host_root);
        let functions = cocoon_vmm::vfio::resolve_requests(&host, &requests)
            .map_err(|e| ShimError::FailedPrecondition(e.to_string()))?;
        let mut nodes: Vec<String> = requests.into_iter().map(|(n, _)| n).collect();
        nodes.sort();
        nodes.dedup();
        Ok(ResolvedDevices { functions, nodes })
    }
}

/// Checks an OCI process the way the guest will need it, before anything
/// starts.
pub fn check_process(p: &Process) -> Result<()> {
    let invalid = |field: &str, problem: &str| ShimError::Invalid {
        field: field.into(),
        problem: problem.into(),
    };
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(invalid(
            "process.args",
            "is empty; the image or the request must give a command",
        ));
    }
    if args.iter().any(|a| a.contains('\0')) {
        return Err(invalid("process.args", "contains a NUL byte"));
    }
    if p.env().iter().flatten().any(|e| e.contains('\0')) {
        return Err(invalid("process.env", "contains a NUL byte"));
    }
    if !p.cwd().is_absolute() {
        return Err(invalid("process.cwd", "is not an absolute path"));
    }
    let u = p.user();
    for (field, id) in [("process.user.uid", u.uid()), ("process.user.gid", u.gid())]
        .into_iter()
        .chain(
            u.additional_gids()
                .iter()
                .flatten()
                .map(|g| ("process.user.additionalGids", *g)),
        )
    {
        if id == u32::MAX {
            return Err(invalid(
                field,
                "4294967295 is (uid_t)-1, which set*id(2) reads as \"no change\": use a real id",
            ));
        }
    }
    Ok(())
}

/// The Kubernetes pod a CRI sandbox belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodName {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// The root filesystem containerd prepared.
#[derive(Debug, Clone)]
pub struct RootfsSource {
    /// Mounts to perform (overlay or bind); empty when containerd put the
    /// root filesystem in the bundle (`ctr run --rootfs`).
    pub mounts: Vec<Mount>,
    /// `<bundle>/rootfs`.
    pub bundle_rootfs: PathBuf,
}

/// One Create request, parsed.
#[derive(Debug, Clone)]
pub struct ContainerRequest {
    /// Container id.
    pub id: String,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// Sandbox, pod container or single.
    pub kind: Kind,
    /// `hostname`.
    pub hostname: String,
    /// `root.readonly`.
    pub readonly_rootfs: bool,
    /// Root filesystem.
    pub rootfs: RootfsSource,
    /// stdio fifos.
    pub stdio: StdioPaths,
    /// Every annotation of the spec.
    pub annotations: BTreeMap<String, String>,
    /// Devices asked for.
    pub devices: DeviceRequest,
    /// The Kubernetes pod, for CRI sandboxes.
    pub pod: Option<PodName>,
    /// The spec the guest gets, checked, and the host binds it needs.
    pub guest: super::guest_spec::GuestSpec,
    /// The network namespace the spec joins by path (CNI's for a CRI pod,
    /// `ctr run --with-ns network:...`): its interfaces are the pod's.
    pub netns: Option<PathBuf>,
}

impl ContainerRequest {
    /// What this container's VM adds to the default size: a CRI sandbox's
    /// pod limits (containerd's sandbox annotations), a single container's
    /// own `linux.resources`; nothing for a container joining a pod.
    pub fn sizing(&self) -> Result<Sizing> {
        match self.kind {
            Kind::PodContainer { .. } => Ok(Sizing::default()),
            Kind::PodSandbox => {
                let num = |key: &str| -> Result<i64> {
                    self.annotations.get(key).map_or(Ok(0), |v| {
                        v.trim().parse::<i64>().map_err(|_| ShimError::Invalid {
                            field: format!("annotation {key}"),
                            problem: format!("{v:?} is not an integer"),
                        })
                    })
                };
                let period = num(SANDBOX_CPU_PERIOD)?;
                Ok(Sizing::from_limits(
                    num(SANDBOX_CPU_QUOTA)?,
                    period.max(0).unsigned_abs(),
                    num(SANDBOX_MEMORY)?,
                ))
            }
            Kind::Single => {
                let r = self
                    .guest
                    .spec
                    .linux()
                    .as_ref()
                    .and_then(|l| l.resources().clone())
                    .unwrap_or_default();
                let (quota, period) = r.cpu().as_ref().map_or((0, 0), |c| {
                    (c.quota().unwrap_or(0), c.period().unwrap_or(100_000))
                });
                let memory = r.memory().as_ref().and_then(|m| m.limit()).unwrap_or(0);
                Ok(Sizing::from_limits(quota, period, memory))
            }
        }
    }

    /// The pod's initdata document (exact bytes), from Kata's annotation.
    pub fn initdata(&self) -> Result<Option<Vec<u8>>> {
        self.annotations
            .get(KATA_INITDATA)
            .map(|v| super::initdata::from_annotation(v))
            .transpose()
    }

    /// The secrets the pod asks for (file name → resource URI), from
    /// `io.cocoon.secret.<name>` annotations.
    pub fn secrets(&self) -> Result<BTreeMap<String, String>> {
        self.annotation_family(SECRET_PREFIX, "a file name", |value| {
            value
                .parse::<cocoon_protocol::resource::ResourceUri>()
                .map(|uri| uri.to_string())
                .map_err(|e| e.to_string())
        })
    }

    /// The sealed models the pod asks for (name → path of the sealed file
    /// in its containers), from `io.cocoon.model.<name>` annotations.
    pub fn models(&self) -> Result<BTreeMap<String, String>> {
        self.annotation_family(MODEL_PREFIX, "a model name", |path| {
            let clean = path.starts_with('/')
                && path.len() <= 4096
                && !path.contains('\0')
                && path
                    .split('/')
                    .skip(1)
                    .all(|c| !c.is_empty() && c != "." && c != "..");
            if clean {
                Ok(path.to_string())
            } else {
                Err(format!(
                    "{path:?} is not a clean absolute path of the sealed model in the container (no `.`, `..` or empty components)"
                ))
            }
        })
    }

    /// The annotations `<prefix><name>` (name → checked value): each name
    /// a DNS label (it names a file or directory in the guest), each value
    /// trimmed and checked by `check`; errors name the annotation.
    fn annotation_family(
        &self,
        prefix: &str,
        what: &str,
        check: impl Fn(&str) -> std::result::Result<String, String>,
    ) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for (key, value) in &self.annotations {
            let Some(name) = key.strip_prefix(prefix) else {
                continue;
            };
            let invalid = |problem: String| ShimError::Invalid {
                field: format!("annotation {key}"),
                problem,
            };
            if !cocoon_protocol::resource::is_dns_label(name) {
                return Err(invalid(format!(
                    "{name:?} is not {what} Cocoon accepts: use a DNS label (a-z, 0-9, -; at most 63)"
                )));
            }
            out.insert(name.to_string(), check(value.trim()).map_err(invalid)?);
        }
        Ok(out)
    }

    /// Reads the bundle's spec and parses everything the shim needs.
    pub fn parse(req: &CreateTaskRequest) -> Result<Self> {
        if req.id.is_empty() {
            return Err(ShimError::Invalid {
                field: "id".into(),
                problem: "is empty".into(),
            });
        }
        if !cocoon_protocol::resource::is_container_id(&req.id) {
            return Err(ShimError::Invalid {
                field: "id".into(),
                problem: format!(
                    "{:?} is not a container id (A-Z a-z 0-9 . _ -, at most 76)",
                    req.id
                ),
            });
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = load(&bundle)?;
        Self::from_spec(req, &spec)
    }

    /// Parses `spec` as the spec of `req`.
    pub fn from_spec(req: &CreateTaskRequest, spec: &Spec) -> Result<Self> {
        let p = spec.process().as_ref().ok_or_else(|| ShimError::Invalid {
            field: "process".into(),
            problem: "config.json has no process".into(),
        })?;
        check_process(p)?;
        let annotations = annotations(spec);
        let pod = match (
            annotations.get(CRI_SANDBOX_NAMESPACE),
            annotations.get(CRI_SANDBOX_NAME),
        ) {
            (Some(namespace), Some(name)) => Some(PodName {
                namespace: namespace.clone(),
                name: name.clone(),
            }),
            _ => None,
        };
        let bundle = PathBuf::from(&req.bundle);
        // `root.path`, relative to the bundle unless absolute (Docker gives
        // an absolute, already mounted root and no rootfs mounts).
        let root_path = spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("rootfs"));
        let guest = super::guest_spec::prepare(spec, &req.id, req.terminal)?;
        let netns = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .and_then(|ns| {
                ns.iter()
                    .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
            })
            .and_then(|n| n.path().clone());
        Ok(Self {
            id: req.id.clone(),
            kind: kind(&annotations),
            hostname: spec.hostname().clone().unwrap_or_default(),
            readonly_rootfs: spec
                .root()
                .as_ref()
                .and_then(|r| r.readonly())
                .unwrap_or(false),
            rootfs: RootfsSource {
                mounts: req.rootfs.clone(),
                bundle_rootfs: bundle.join(root_path),
            },
            stdio: StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            },
            devices: DeviceRequest::from_spec(spec, &annotations),
            annotations,
            pod,
            bundle,
            guest,
            netns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn spec_with(ann: &[(&str, &str)]) -> Spec {
        let mut s = Spec::default();
        let map: HashMap<String, String> = ann
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        s.set_annotations(Some(map));
        s
    }

    fn map(ann: &[(&str, &str)]) -> BTreeMap<String, String> {
        annotations(&spec_with(ann))
    }

    fn create(id: &str) -> CreateTaskRequest {
        let mut r = CreateTaskRequest::new();
        r.id = id.into();
        r.bundle = "/b".into();
        r.terminal = true;
        r.stdout = "/fifo/out".into();
        r
    }

    #[test]
    fn kinds_from_cri_annotations() {
        assert_eq!(
            kind(&map(&[
                (CRI_CONTAINER_TYPE, "sandbox"),
                (CRI_SANDBOX_ID, "p1")
            ])),
            Kind::PodSandbox
        );
        let c = spec_with(&[(CRI_CONTAINER_TYPE, "container"), (CRI_SANDBOX_ID, "p1")]);
        assert_eq!(
            kind(&annotations(&c)),
            Kind::PodContainer {
                sandbox_id: "p1".into()
            }
        );
        assert_eq!(group_id(&c, "c1"), "p1");
        assert_eq!(kind(&map(&[])), Kind::Single);
        assert_eq!(group_id(&spec_with(&[]), "c1"), "c1");
        // A container whose sandbox id is empty is not a pod container.
        assert_eq!(
            kind(&map(&[
                (CRI_CONTAINER_TYPE, "container"),
                (CRI_SANDBOX_ID, "")
            ])),
            Kind::Single
        );
        assert!(Kind::Single.owns_vm() && Kind::PodSandbox.owns_vm());
        assert!(!Kind::PodContainer {
            sandbox_id: "p".into()
        }
        .owns_vm());
    }

    #[test]
    fn annotations_outside_the_allow_list_are_refused() {
        let mut config = NodeConfig::dev_defaults().unwrap();
        let s = map(&[
            ("io.cocoon.gpu", "x"),
            ("io.kubernetes.cri.sandbox-name", "p"),
        ]);
        let e = check_annotations(&s, &config).unwrap_err().to_string();
        assert!(
            e.contains("\"io.cocoon.gpu\"") && e.contains("runtime.allowed_annotations"),
            "{e}"
        );
        config = NodeConfig::from_toml("[runtime]\nallowed_annotations = [\"io.cocoon.*\"]", "t")
            .unwrap();
        check_annotations(&s, &config).unwrap();
        let k = map(&[(KATA_INITDATA, "x")]);
        assert!(check_annotations(&k, &config).is_err());
        // CDI annotations choose host devices: refused unless allowed.
        let cdi = map(&[("cdi.k8s.io/gpu", "nvidia.com/pgpu=0")]);
        let e = check_annotations(&cdi, &config).unwrap_err().to_string();
        assert!(e.contains("\"cdi.k8s.io/gpu\""), "{e}");
        config = NodeConfig::from_toml("[runtime]\nallowed_annotations = [\"cdi.k8s.io/*\"]", "t")
            .unwrap();
        check_annotations(&cdi, &config).unwrap();
    }

    #[test]
    fn process_needs_args() {
        let mut p = Process::default();
        p.set_args(Some(vec![]));
        assert!(check_process(&p)
            .unwrap_err()
            .to_string()
            .contains("process.args"));
        p.set_args(Some(vec!["sh".into()]));
        check_process(&p).unwrap();
        let named = |p: &Process| check_process(p).unwrap_err().to_string();
        let mut bad = p.clone();
        bad.set_args(Some(vec!["sh\0x".into()]));
        assert!(named(&bad).starts_with("process.args: contains a NUL"));
        let mut bad = p.clone();
        bad.set_env(Some(vec!["A=\0".into()]));
        assert!(named(&bad).starts_with("process.env: contains a NUL"));
        let mut bad = p.clone();
        bad.set_cwd("rel".into());
        assert!(named(&bad).starts_with("process.cwd"));
        let mut bad = p.clone();
        let mut u = bad.user().clone();
        u.set_gid(u32::MAX);
        bad.set_user(u);
        assert!(
            named(&bad).starts_with("process.user.gid"),
            "{}",
            named(&bad)
        );
    }

    #[test]
    fn a_request_is_parsed_once_into_every_field() {
        let mut spec = spec_with(&[
            (CRI_CONTAINER_TYPE, "sandbox"),
            (CRI_SANDBOX_NAME, "gpu-on"),
            (CRI_SANDBOX_NAMESPACE, "ml"),
            ("cdi.k8s.io/a", "nvidia.com/pgpu=1, nvidia.com/pgpu=0"),
            ("cdi.k8s.io/b", "nvidia.com/pgpu=0,"),
        ]);
        spec.set_hostname(Some("h1".into()));
        let mut root = oci_spec::runtime::Root::default();
        root.set_readonly(Some(true));
        spec.set_root(Some(root));
        let dev = oci_spec::runtime::LinuxDeviceBuilder::default()
            .path("/dev/vfio/12")
            .typ(oci_spec::runtime::LinuxDeviceType::C)
            .major(240)
            .minor(0)
            .build()
            .unwrap();
        let fuse = oci_spec::runtime::LinuxDeviceBuilder::default()
            .path("/dev/fuse")
            .typ(oci_spec::runtime::LinuxDeviceType::C)
            .major(10)
            .minor(229)
            .build()
            .unwrap();
        let mut linux = oci_spec::runtime::Linux::default();
        linux.set_devices(Some(vec![dev.clone(), fuse, dev]));
        spec.set_linux(Some(linux));
        let r = ContainerRequest::from_spec(&create("c1"), &spec).unwrap();
        assert_eq!(r.kind, Kind::PodSandbox);
        assert_eq!(r.hostname, "h1");
        assert!(r.readonly_rootfs);
        assert_eq!(
            r.guest.spec.process().as_ref().unwrap().terminal(),
            Some(true),
            "terminal comes from the request"
        );
        assert_eq!(r.stdio.stdout, "/fifo/out");
        assert_eq!(r.rootfs.bundle_rootfs, Path::new("/b/rootfs"));
        assert_eq!(r.devices.vfio_paths, vec!["/dev/vfio/12"]);
        assert_eq!(
            r.devices.cdi,
            vec!["nvidia.com/pgpu=0", "nvidia.com/pgpu=1"]
        );
        assert_eq!(
            r.pod,
            Some(PodName {
                namespace: "ml".into(),
                name: "gpu-on".into()
            })
        );
    }

    #[test]
    fn pods_and_single_containers_size_their_vm_like_kata() {
        let mut spec = spec_with(&[
            (CRI_CONTAINER_TYPE, "sandbox"),
            (SANDBOX_CPU_QUOTA, "150000"),
            (SANDBOX_CPU_PERIOD, "100000"),
            (SANDBOX_MEMORY, "268435457"),
        ]);
        let r = ContainerRequest::from_spec(&create("p"), &spec).unwrap();
        assert_eq!(
            r.sizing().unwrap(),
            Sizing {
                vcpus: 2,
                memory_mib: 257
            }
        );
        spec = spec_with(&[(CRI_CONTAINER_TYPE, "sandbox"), (SANDBOX_MEMORY, "lots")]);
        let e = ContainerRequest::from_spec(&create("p"), &spec)
            .unwrap()
            .sizing()
            .unwrap_err()
            .to_string();
        assert!(e.contains(SANDBOX_MEMORY) && e.contains("\"lots\""), "{e}");
        // A single container: its own limits.
        let mut spec = spec_with(&[]);
        let mut linux = spec.linux().clone().unwrap_or_default();
        linux.set_resources(Some(
            serde_json::from_value(serde_json::json!({
                "memory": {"limit": 33554432},
                "cpu": {"quota": 50000, "period": 100000}
            }))
            .unwrap(),
        ));
        spec.set_linux(Some(linux));
        let r = ContainerRequest::from_spec(&create("c"), &spec).unwrap();
        assert_eq!(
            r.sizing().unwrap(),
            Sizing {
                vcpus: 1,
                memory_mib: 32
            }
        );
        // A pod container adds nothing: the VM is running already.
        let spec = spec_with(&[(CRI_CONTAINER_TYPE, "container"), (CRI_SANDBOX_ID, "p")]);
        let r = ContainerRequest::from_spec(&create("c"), &spec).unwrap();
        assert_eq!(r.sizing().unwrap(), Sizing::default());
    }

    #[test]
    fn annotation_keys_are_exact_so_other_cases_change_nothing() {
        // Kubernetes annotation keys are case-sensitive: these are not
        // Cocoon's, need no allow-listing, and reach no launch input.
        let spec = spec_with(&[
            ("IO.COCOON.SECRET.key", "kbs:///a/b/c"),
            ("Io.Katacontainers.Config.Hypervisor.Cc_Init_Data", "eA=="),
            ("CDI.K8S.IO/gpu", "nvidia.com/pgpu=0"),
        ]);
        let config = NodeConfig::dev_defaults().unwrap();
        let r = ContainerRequest::from_spec(&create("c"), &spec).unwrap();
        check_annotations(&r.annotations, &config).unwrap();
        assert!(r.secrets().unwrap().is_empty());
        assert!(r.initdata().unwrap().is_none());
        assert!(r.devices.is_empty());
        assert_eq!(r.sizing().unwrap(), Sizing::default());
    }

    #[test]
    fn bad_requests_name_the_field() {
        let mut req = create("");
        let e = ContainerRequest::parse(&req).unwrap_err().to_string();
        assert_eq!(e, "id: is empty");
        let e = ContainerRequest::parse(&create("../../etc"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("id: \"../../etc\" is not a container id"),
            "{e}"
        );
        req.id = "c".into();
        req.bundle = "/nonexistent-bundle".into();
        let e = ContainerRequest::parse(&req).unwrap_err().to_string();
        assert!(
            e.contains("cannot read the OCI spec /nonexistent-bundle/config.json"),
            "{e}"
        );
        let mut spec = Spec::default();
        spec.set_process(None);
        let e = ContainerRequest::from_spec(&req, &spec)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "process: config.json has no process");
    }
}
