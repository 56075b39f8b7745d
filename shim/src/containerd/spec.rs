//! What the shim reads from the bundle's OCI spec: the CRI container type
//! and sandbox id, the annotation allow-list check, and the process.

use std::path::Path;

use cocoon_protocol::agent;
use cocoon_vmm::config::Config;
use oci_spec::runtime::{Process, Spec};

use super::error::{Result, ShimError};

/// `io.kubernetes.cri.container-type`.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// `io.kubernetes.cri.sandbox-id`.
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// Annotations under this prefix are Cocoon's; each must be allow-listed.
pub const COCOON_PREFIX: &str = "io.cocoon.";
/// Kata's initdata annotation, which Cocoon also accepts when allow-listed.
pub const KATA_INITDATA: &str = "io.katacontainers.config.hypervisor.cc_init_data";
/// Prefix of CDI device annotations: whoever writes them picks host
/// devices, so they are honoured only when the node allows them.
pub const CDI_PREFIX: &str = "cdi.k8s.io/";

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

/// Reads `<bundle>/config.json`.
pub fn load(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    Spec::load(&path).map_err(|e| ShimError::Spec {
        path,
        message: e.to_string(),
    })
}

/// The container's kind from its annotations.
pub fn kind(spec: &Spec) -> Kind {
    let ann = spec.annotations().as_ref();
    let get = |k: &str| ann.and_then(|a| a.get(k)).map(String::as_str);
    match (get(CRI_CONTAINER_TYPE), get(CRI_SANDBOX_ID)) {
        (Some("sandbox"), _) => Kind::PodSandbox,
        (Some("container"), Some(id)) if !id.is_empty() => Kind::PodContainer {
            sandbox_id: id.to_string(),
        },
        _ => Kind::Single,
    }
}

/// The grouping id: the pod's sandbox id for CRI containers, else `id`.
pub fn group_id(spec: &Spec, id: &str) -> String {
    match kind(spec) {
        Kind::PodContainer { sandbox_id } => sandbox_id,
        _ => id.to_string(),
    }
}

/// Refuses Cocoon (and Kata initdata) annotations that the node
/// configuration does not allow.
pub fn check_annotations(spec: &Spec, config: &Config) -> Result<()> {
    let Some(ann) = spec.annotations() else {
        return Ok(());
    };
    for key in ann.keys() {
        let ours =
            key.starts_with(COCOON_PREFIX) || key == KATA_INITDATA || key.starts_with(CDI_PREFIX);
        if ours
            && !config
                .runtime
                .allowed_annotations
                .iter()
                .any(|p| p.matches(key))
        {
            return Err(ShimError::AnnotationNotAllowed {
                key: key.clone(),
                origin: config.origin.clone(),
            });
        }
    }
    Ok(())
}

/// What a container asks to pass through: VFIO device node paths from
/// `linux.devices` and CDI device names from `cdi.k8s.io/*` annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Devices {
    /// VFIO device node paths.
    pub vfio_paths: Vec<String>,
    /// Fully qualified CDI device names.
    pub cdi: Vec<String>,
}

impl Devices {
    /// The VFIO device nodes behind the request (CDI names resolved with
    /// the node's specs).
    pub fn nodes(&self, cdi_dirs: &[std::path::PathBuf]) -> Result<Vec<String>> {
        let mut v: Vec<String> =
            cocoon_vmm::vfio::request_nodes(&self.vfio_paths, &self.cdi, cdi_dirs)
                .map_err(|e| ShimError::FailedPrecondition(e.to_string()))?
                .into_iter()
                .map(|(node, _)| node)
                .collect();
        v.sort();
        v.dedup();
        Ok(v)
    }

    /// Whether nothing is asked for.
    pub fn is_empty(&self) -> bool {
        self.vfio_paths.is_empty() && self.cdi.is_empty()
    }
}

/// The devices a spec asks to pass through.
pub fn devices(spec: &Spec) -> Devices {
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
    let cdi = spec
        .annotations()
        .as_ref()
        .map(cocoon_vmm::vfio::cdi_annotation_devices)
        .unwrap_or_default();
    Devices { vfio_paths, cdi }
}

/// Converts an OCI process to the agent's.
pub fn process(p: &Process) -> Result<agent::Process> {
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(ShimError::Invalid {
            field: "process.args".into(),
            problem: "is empty; the image or the request must give a command".into(),
        });
    }
    let mut out = agent::Process::new();
    out.args = args;
    out.env = p.env().clone().unwrap_or_default();
    out.cwd = p.cwd().display().to_string();
    out.terminal = p.terminal().unwrap_or(false);
    let mut user = agent::User::new();
    user.uid = p.user().uid();
    user.gid = p.user().gid();
    user.additional_gids = p.user().additional_gids().clone().unwrap_or_default();
    out.user = Some(user).into();
    Ok(out)
}

/// The spec's process.
pub fn spec_process(spec: &Spec) -> Result<agent::Process> {
    let p = spec.process().as_ref().ok_or_else(|| ShimError::Invalid {
        field: "process".into(),
        problem: "config.json has no process".into(),
    })?;
    process(p)
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

    #[test]
    fn kinds_from_cri_annotations() {
        assert_eq!(
            kind(&spec_with(&[
                (CRI_CONTAINER_TYPE, "sandbox"),
                (CRI_SANDBOX_ID, "p1")
            ])),
            Kind::PodSandbox
        );
        let c = spec_with(&[(CRI_CONTAINER_TYPE, "container"), (CRI_SANDBOX_ID, "p1")]);
        assert_eq!(
            kind(&c),
            Kind::PodContainer {
                sandbox_id: "p1".into()
            }
        );
        assert_eq!(group_id(&c, "c1"), "p1");
        assert_eq!(kind(&spec_with(&[])), Kind::Single);
        assert_eq!(group_id(&spec_with(&[]), "c1"), "c1");
    }

    #[test]
    fn annotations_outside_the_allow_list_are_refused() {
        let mut config = Config::dev_defaults().unwrap();
        let s = spec_with(&[
            ("io.cocoon.gpu", "x"),
            ("io.kubernetes.cri.sandbox-name", "p"),
        ]);
        let e = check_annotations(&s, &config).unwrap_err().to_string();
        assert!(
            e.contains("\"io.cocoon.gpu\"") && e.contains("runtime.allowed_annotations"),
            "{e}"
        );
        config =
            Config::from_toml("[runtime]\nallowed_annotations = [\"io.cocoon.*\"]", "t").unwrap();
        check_annotations(&s, &config).unwrap();
        let k = spec_with(&[(KATA_INITDATA, "x")]);
        assert!(check_annotations(&k, &config).is_err());
        // CDI annotations choose host devices: refused unless allowed.
        let cdi = spec_with(&[("cdi.k8s.io/gpu", "nvidia.com/pgpu=0")]);
        let e = check_annotations(&cdi, &config).unwrap_err().to_string();
        assert!(e.contains("\"cdi.k8s.io/gpu\""), "{e}");
        config =
            Config::from_toml("[runtime]\nallowed_annotations = [\"cdi.k8s.io/*\"]", "t").unwrap();
        check_annotations(&cdi, &config).unwrap();
    }

    #[test]
    fn process_needs_args() {
        let mut p = Process::default();
        p.set_args(Some(vec![]));
        assert!(process(&p)
            .unwrap_err()
            .to_string()
            .contains("process.args"));
        p.set_args(Some(vec!["sh".into()]));
        let a = process(&p).unwrap();
        assert_eq!(a.args, vec!["sh"]);
        assert_eq!(a.cwd, "/");
    }
}
