//! The pod's secrets: fetched from the KBS named in the (verified) initdata,
//! only when the initdata allows their resource URI, kept in guest memory,
//! and placed at `/run/secrets/cocoon/<name>` in each container, owned by
//! the container's user, mode 0400. The host names which secrets a pod
//! wants; it cannot choose the KBS or a resource the initdata does not
//! allow.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cocoon_protocol::resource::{is_dns_label, ResourceUri};

use crate::error::{Error, Result};
use crate::initdata::GuestTee;
use crate::kbs::{self, Client, Connect, Connecting, KbsError, Stream};

/// Where fetched secrets are kept (guest tmpfs).
pub const STORE: &str = "/run/cocoon/secrets";
/// Where each container's copies are kept (guest tmpfs).
pub const PER_CONTAINER: &str = "/run/cocoon/containers";
/// Where containers see them.
pub const IN_CONTAINER: &str = "run/secrets/cocoon";

/// What the pod's initdata says about the KBS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodPolicy {
    /// `aa.toml` `[token_configs.kbs] url`.
    pub kbs_url: Option<String>,
    /// `cocoon-policy.toml` `allowed_resources` (a trailing `*` matches
    /// the rest).
    pub allowed_resources: Vec<String>,
    /// `cocoon-policy.toml` `exec`: whether the host may run new processes
    /// in the pod's containers (unset: yes without a TEE, no in one).
    pub exec: Option<bool>,
    /// `cocoon-policy.toml` `privileged`: whether a container may hold
    /// capabilities that own the guest kernel ([`GUEST_OWNING_CAPS`]; unset:
    /// yes without a TEE, no in one).
    pub privileged: Option<bool>,
}

/// Capabilities that give a container the guest kernel (and with it every
/// secret in the TEE): mounting anything, loading modules, raw I/O and
/// `/dev/mem`, rebooting, BPF and perf.
pub const GUEST_OWNING_CAPS: &[(u8, &str)] = &[
    (16, "CAP_SYS_MODULE"),
    (17, "CAP_SYS_RAWIO"),
    (21, "CAP_SYS_ADMIN"),
    (22, "CAP_SYS_BOOT"),
    (38, "CAP_PERFMON"),
    (39, "CAP_BPF"),
];

impl PodPolicy {
    /// Whether the initdata allows fetching `uri`.
    pub fn allows(&self, uri: &ResourceUri) -> bool {
        let canonical = uri.to_string();
        self.allowed_resources
            .iter()
            .any(|a| matches(a, &canonical))
    }

    /// Refuses a container whose bounding set holds a capability that owns
    /// the guest kernel, unless the policy (or, unset, the lack of a TEE)
    /// allows it.
    pub fn check_privileged(&self, bounding: u64, tee: &GuestTee) -> Result<()> {
        let held: Vec<&str> = GUEST_OWNING_CAPS
            .iter()
            .filter(|(bit, _)| bounding & (1u64 << bit) != 0)
            .map(|(_, name)| *name)
            .collect();
        if held.is_empty() {
            return Ok(());
        }
        match (self.privileged, tee) {
            (Some(true), _) | (None, GuestTee::None) => Ok(()),
            (Some(false), _) => Err(Error::PermissionDenied(format!(
                "process.capabilities.bounding holds {}: refused by the pod's policy (cocoon-policy.toml in its initdata: privileged = false)",
                held.join(", ")
            ))),
            (None, _) => Err(Error::PermissionDenied(format!(
                "process.capabilities.bounding holds {}, which would own the guest kernel: refused in a confidential pod by default; its initdata's cocoon-policy.toml may allow it with privileged = true",
                held.join(", ")
            ))),
        }
    }

    /// Refuses `ExecProcess` unless the policy (or, unset, the guest's TEE
    /// default) allows it.
    pub fn check_exec(&self, tee: &GuestTee) -> Result<()> {
        match (self.exec, tee) {
            (Some(true), _) | (None, GuestTee::None) => Ok(()),
            (Some(false), _) => Err(Error::PermissionDenied(
                "exec is refused by the pod's policy (cocoon-policy.toml in its initdata: exec = false)".into(),
            )),
            (None, _) => Err(Error::PermissionDenied(
                "exec is refused in a confidential pod by default; its initdata's cocoon-policy.toml may allow it with exec = true".into(),
            )),
        }
    }
}

fn bad(problem: String) -> Error {
    Error::InvalidArgument {
        field: "initdata",
        problem,
    }
}

/// Reads the KBS URL and the allowed resources from an initdata document.
pub fn policy(initdata: &[u8]) -> Result<PodPolicy> {
    #[derive(serde::Deserialize)]
    struct Doc {
        #[serde(default)]
        data: BTreeMap<String, String>,
    }
    #[derive(serde::Deserialize)]
    struct Aa {
        token_configs: Option<TokenConfigs>,
    }
    #[derive(serde::Deserialize)]
    struct TokenConfigs {
        kbs: Option<KbsConfig>,
    }
    #[derive(serde::Deserialize)]
    struct KbsConfig {
        url: String,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Cocoon {
        #[serde(default)]
        allowed_resources: Vec<String>,
        exec: Option<bool>,
        privileged: Option<bool>,
    }
    let text = std::str::from_utf8(initdata).map_err(|_| bad("is not UTF-8".into()))?;
    let doc: Doc = toml::from_str(text).map_err(|e| bad(e.message().to_string()))?;
    let kbs_url = match doc.data.get("aa.toml") {
        Some(aa) => {
            let aa: Aa =
                toml::from_str(aa).map_err(|e| bad(format!("aa.toml: {}", e.message())))?;
            aa.token_configs.and_then(|t| t.kbs).map(|k| k.url)
        }
        None => None,
    };
    let cocoon = match doc.data.get("cocoon-policy.toml") {
        Some(p) => toml::from_str::<Cocoon>(p)
            .map_err(|e| bad(format!("cocoon-policy.toml: {}", e.message())))?,
        None => Cocoon {
            allowed_resources: Vec::new(),
            exec: None,
            privileged: None,
        },
    };
    Ok(PodPolicy {
        kbs_url,
        allowed_resources: cocoon.allowed_resources,
        exec: cocoon.exec,
        privileged: cocoon.privileged,
    })
}

/// Whether `pattern` (a URI, or a prefix ending in `*`) allows `uri`.
fn matches(pattern: &str, uri: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => uri.starts_with(prefix),
        None => pattern == uri,
    }
}

/// `host:port` of an `http://` KBS URL (the Host header; the connection
/// itself goes through the host's relay).
fn kbs_host(url: &str) -> Result<String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        Error::FailedPrecondition(format!(
            "the initdata's KBS URL {url:?} is not http://; TLS to the KBS is not supported yet"
        ))
    })?;
    Ok(rest.trim_end_matches('/').to_string())
}

/// Checks every requested secret against the policy before anything is
/// fetched: names, URIs, allowed resources, a KBS.
pub fn check(
    policy: Option<&PodPolicy>,
    secrets: &BTreeMap<String, String>,
) -> Result<Vec<(String, ResourceUri)>> {
    let mut out = Vec::new();
    for (name, uri) in secrets {
        if !is_dns_label(name) {
            return Err(Error::InvalidArgument {
                field: "secrets",
                problem: format!("{name:?} is not a DNS label"),
            });
        }
        let parsed: ResourceUri =
            uri.parse().map_err(
                |e: cocoon_protocol::resource::BadUri| Error::InvalidArgument {
                    field: "secrets",
                    problem: e.to_string(),
                },
            )?;
        let Some(p) = policy else {
            return Err(Error::PermissionDenied(format!(
                "secret {name:?} ({uri}): the pod has no initdata, so no KBS and no resource is allowed"
            )));
        };
        let canonical = parsed.to_string();
        if !p.allows(&parsed) {
            return Err(Error::PermissionDenied(format!(
                "secret {name:?}: {canonical} is not in the initdata's allowed_resources {:?}",
                p.allowed_resources
            )));
        }
        if p.kbs_url.is_none() {
            return Err(Error::PermissionDenied(format!(
                "secret {name:?}: the initdata names no KBS ([token_configs.kbs] url in aa.toml)"
            )));
        }
        out.push((name.clone(), parsed));
    }
    Ok(out)
}

/// Dials the host's KBS relay over vsock (the host is CID 2).
struct HostRelay;

impl Connect for HostRelay {
    fn connect(&self) -> Connecting<'_> {
        Box::pin(async {
            let addr = tokio_vsock::VsockAddr::new(
                tokio_vsock::VMADDR_CID_HOST,
                cocoon_protocol::KBS_RELAY_PORT,
            );
            let s = tokio_vsock::VsockStream::connect(addr).await?;
            Ok(Box::new(s) as Box<dyn Stream>)
        })
    }
}

fn evidence_for(tee: &GuestTee) -> Box<kbs::EvidenceFn> {
    match tee {
        GuestTee::None => Box::new(|rd: &[u8; 48]| Ok(kbs::evidence::sample(rd))),
        other => {
            let name = kbs::evidence::tee_name(other);
            Box::new(move |_: &[u8; 48]| {
                Err(KbsError::Evidence(format!(
                    "{name} evidence for the KBS is not implemented yet"
                )))
            })
        }
    }
}

fn kbs_error(e: KbsError) -> Error {
    match e {
        KbsError::Unreachable { .. } | KbsError::Http { .. } => Error::Unavailable(e.to_string()),
        other => Error::FailedPrecondition(other.to_string()),
    }
}

fn io_err(op: &str, p: &Path, e: &std::io::Error) -> Error {
    Error::sys(
        format!("{op} {}", p.display()),
        nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    )
}

/// Attests once and fetches every resource of `uris`, in order.
pub async fn fetch_resources(
    policy: &PodPolicy,
    initdata: &str,
    uris: &[&ResourceUri],
    tee: &GuestTee,
) -> Result<Vec<Vec<u8>>> {
    let url = policy.kbs_url.as_deref().unwrap_or_default();
    let client = Client::new(HostRelay, &kbs_host(url)?);
    let evidence = evidence_for(tee);
    let session = client
        .attest(kbs::evidence::tee_name(tee), &*evidence, Some(initdata))
        .await
        .map_err(kbs_error)?;
    let mut out = Vec::with_capacity(uris.len());
    for uri in uris {
        out.push(client.resource(&session, uri).await.map_err(kbs_error)?);
    }
    Ok(out)
}

/// Attests once and fetches every secret into `store` (mode 0400).
pub async fn fetch(
    policy: &PodPolicy,
    initdata: &str,
    wanted: &[(String, ResourceUri)],
    tee: &GuestTee,
    store: &Path,
) -> Result<()> {
    let uris: Vec<&ResourceUri> = wanted.iter().map(|(_, u)| u).collect();
    let data = fetch_resources(policy, initdata, &uris, tee).await?;
    std::fs::create_dir_all(store).map_err(|e| io_err("mkdir", store, &e))?;
    for ((name, _), data) in wanted.iter().zip(data) {
        write_private(&store.join(name), &data, None)?;
    }
    Ok(())
}

fn write_private(path: &Path, data: &[u8], owner: Option<(u32, u32)>) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)
        .map_err(|e| io_err("create", path, &e))?;
    f.write_all(data).map_err(|e| io_err("write", path, &e))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(|e| io_err("chown", path, &e))?;
    }
    Ok(())
}

/// Copies the pod's secrets for container `id`, owned by its user, and
/// returns the directory to bind at [`IN_CONTAINER`] (`None`: no secrets).
pub fn for_container(
    store: &Path,
    base: &Path,
    id: &str,
    uid: u32,
    gid: u32,
) -> Result<Option<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(store) else {
        return Ok(None);
    };
    let dir = base.join(id).join("secrets");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| io_err("mkdir", &dir, &e))?;
    for e in entries.flatten() {
        let data = std::fs::read(e.path()).map_err(|err| io_err("read", &e.path(), &err))?;
        write_private(&dir.join(e.file_name()), &data, Some((uid, gid)))?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o500))
        .map_err(|e| io_err("chmod", &dir, &e))?;
    std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|e| io_err("chown", &dir, &e))?;
    Ok(Some(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"aa.toml\" = '''\n[token_configs.kbs]\nurl = \"http://10.0.0.5:8080\"\n'''\n\"cocoon-policy.toml\" = '''\nallowed_resources = [\"kbs:///default/key/*\", \"kbs:///other/x/y\"]\n'''\n";

    fn want(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_policy_comes_from_initdata() {
        let p = policy(DOC.as_bytes()).unwrap();
        assert_eq!(p.kbs_url.as_deref(), Some("http://10.0.0.5:8080"));
        assert_eq!(p.allowed_resources.len(), 2);
        assert_eq!(
            kbs_host(p.kbs_url.as_deref().unwrap()).unwrap(),
            "10.0.0.5:8080"
        );
        let ok = check(
            Some(&p),
            &want(&[
                ("demo", "kbs:///default/key/demo"),
                ("y", "kbs:///other/x/y"),
            ]),
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        for (w, needle) in [
            (
                want(&[("demo", "kbs:///default/cert/demo")]),
                "not in the initdata's allowed_resources",
            ),
            (
                want(&[("demo", "kbs:///other/x/z")]),
                "not in the initdata's allowed_resources",
            ),
            (want(&[("Demo", "kbs:///default/key/demo")]), "DNS label"),
            (
                want(&[("demo", "kbs:///default/key/../x")]),
                "not a KBS resource URI",
            ),
        ] {
            let e = check(Some(&p), &w).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        let e = check(None, &want(&[("demo", "kbs:///default/key/demo")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no initdata"), "{e}");
        let no_kbs = policy(b"version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"cocoon-policy.toml\" = 'allowed_resources = [\"kbs:///a/b/c\"]'\n").unwrap();
        let e = check(Some(&no_kbs), &want(&[("c", "kbs:///a/b/c")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("names no KBS"), "{e}");
        assert!(kbs_host("https://kbs:443").is_err());
        assert!(policy(b"version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"cocoon-policy.toml\" = 'debug = true'\n").is_err());
    }

    #[test]
    fn exec_follows_the_policy_and_the_tee() {
        let open = PodPolicy::default();
        open.check_exec(&GuestTee::None).unwrap();
        let e = open.check_exec(&GuestTee::Snp).unwrap_err();
        assert!(
            e.to_string()
                .contains("refused in a confidential pod by default"),
            "{e}"
        );
        let closed = PodPolicy {
            exec: Some(false),
            ..PodPolicy::default()
        };
        let e = closed.check_exec(&GuestTee::None).unwrap_err().to_string();
        assert!(e.contains("exec = false"), "{e}");
        let allowed = PodPolicy {
            exec: Some(true),
            ..PodPolicy::default()
        };
        allowed.check_exec(&GuestTee::Tdx).unwrap();
        let p = policy(b"version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"cocoon-policy.toml\" = 'exec = false'\n").unwrap();
        assert_eq!(p.exec, Some(false));
    }

    #[test]
    fn guest_owning_capabilities_follow_the_policy_and_the_tee() {
        // containerd's default set (no CAP_SYS_ADMIN) is always fine.
        let default_caps: u64 = 0xa804_25fb;
        let admin = default_caps | (1 << 21) | (1 << 16);
        let open = PodPolicy::default();
        open.check_privileged(default_caps, &GuestTee::Snp).unwrap();
        open.check_privileged(admin, &GuestTee::None).unwrap();
        let e = open
            .check_privileged(admin, &GuestTee::Tdx)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("CAP_SYS_MODULE, CAP_SYS_ADMIN") && e.contains("privileged = true"),
            "{e}"
        );
        let closed = PodPolicy {
            privileged: Some(false),
            ..PodPolicy::default()
        };
        let e = closed
            .check_privileged(admin, &GuestTee::None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("privileged = false"), "{e}");
        let allowed = PodPolicy {
            privileged: Some(true),
            ..PodPolicy::default()
        };
        allowed.check_privileged(u64::MAX, &GuestTee::Snp).unwrap();
        let p = policy(b"version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"cocoon-policy.toml\" = 'privileged = true'\n").unwrap();
        assert_eq!(p.privileged, Some(true));
    }

    #[test]
    fn containers_get_private_copies() {
        let d = tempfile::tempdir().unwrap();
        let store = d.path().join("store");
        std::fs::create_dir(&store).unwrap();
        write_private(&store.join("demo"), b"s3cret", None).unwrap();
        let dir = for_container(&store, &d.path().join("c"), "c1", 1000, 1000)
            .unwrap()
            .unwrap();
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(dir.join("demo")).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (1000, 1000, 0o400));
        assert_eq!(std::fs::read(dir.join("demo")).unwrap(), b"s3cret");
        assert!(for_container(&d.path().join("none"), d.path(), "c2", 0, 0)
            .unwrap()
            .is_none());
    }
}
