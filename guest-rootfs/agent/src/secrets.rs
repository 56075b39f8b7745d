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
use crate::policy::PodPolicy;

/// Where fetched secrets are kept (guest tmpfs).
pub const STORE: &str = "/run/cocoon/secrets";
/// Where each container's copies are kept (guest tmpfs).
pub const PER_CONTAINER: &str = "/run/cocoon/containers";
/// Where containers see them.
pub const IN_CONTAINER: &str = "run/secrets/cocoon";

/// Where the initdata's KBS URL points: `host:port` (the Host header; the
/// connection itself goes through the host's relay) and whether TLS ends
/// in the guest.
#[derive(Debug, PartialEq, Eq)]
struct KbsUrl {
    authority: String,
    https: bool,
}

impl KbsUrl {
    fn parse(url: &str) -> Result<Self> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(Error::FailedPrecondition(format!(
                "the initdata's KBS URL {url:?} is neither http:// nor https://"
            )));
        };
        let authority = rest.trim_end_matches('/').to_string();
        if authority.is_empty() || authority.contains('/') {
            return Err(Error::FailedPrecondition(format!(
                "the initdata's KBS URL {url:?} must be SCHEME://HOST[:PORT] with no path"
            )));
        }
        Ok(Self { authority, https })
    }

    /// The host name or address the KBS's certificate must name.
    fn host(&self) -> &str {
        let a = self.authority.as_str();
        if let Some(v6) = a.strip_prefix('[') {
            return v6.split(']').next().unwrap_or(v6);
        }
        a.rsplit_once(':').map_or(a, |(h, _)| h)
    }
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

/// How the guest reaches the KBS (the node's `attestation.kbs_via`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KbsRoute {
    /// The host's vsock relay, which connects to the node's KBS only.
    #[default]
    Relay,
    /// The pod's network, to the address in the initdata's KBS URL.
    PodNetwork,
    /// The pod network was asked for, but the pod has none.
    NoPodNetwork,
}

/// Where connections to the KBS go.
enum KbsPath {
    /// The host's relay over vsock (the host is CID 2).
    HostRelay,
    /// TCP over the pod's network.
    Network(std::net::SocketAddr),
}

impl KbsPath {
    fn new(route: KbsRoute, url: &KbsUrl) -> Result<Self> {
        match route {
            KbsRoute::Relay => Ok(Self::HostRelay),
            KbsRoute::PodNetwork => url.authority.parse().map(Self::Network).map_err(|_| {
                Error::FailedPrecondition(format!(
                    "the KBS {} is reached over the pod network (attestation.kbs_via = \"pod-network\"), which needs an IP address as the URL's host: the guest resolves no names",
                    url.authority
                ))
            }),
            KbsRoute::NoPodNetwork => Err(Error::FailedPrecondition(
                "the node reaches the KBS over the pod network (attestation.kbs_via = \"pod-network\") but this pod has none (its sandbox joins no network namespace): use kbs_via = \"relay\" or give the pod a network".into(),
            )),
        }
    }
}

impl Connect for KbsPath {
    fn connect(&self) -> Connecting<'_> {
        Box::pin(async move {
            match self {
                Self::HostRelay => {
                    let addr = tokio_vsock::VsockAddr::new(
                        tokio_vsock::VMADDR_CID_HOST,
                        cocoon_protocol::KBS_RELAY_PORT,
                    );
                    let s = tokio_vsock::VsockStream::connect(addr).await?;
                    Ok(Box::new(s) as Box<dyn Stream>)
                }
                Self::Network(addr) => {
                    let s = tokio::net::TcpStream::connect(addr).await?;
                    s.set_nodelay(true)?;
                    Ok(Box::new(s) as Box<dyn Stream>)
                }
            }
        })
    }
}

fn evidence_for(tee: &GuestTee) -> Box<kbs::EvidenceFn> {
    match tee {
        GuestTee::None => Box::new(|rd: &[u8; 48]| Ok(kbs::evidence::sample(rd))),
        // Reports come from configfs-tsm (`tsm_report`, with `sev-guest`
        // or `tdx-guest` providing them), the same interface for both.
        GuestTee::Snp => Box::new(|rd: &[u8; 48]| {
            let data = kbs::evidence::tee_report_data(rd);
            let report = crate::tsm::snp_report(Path::new("/sys"), Path::new("/dev"), &data)
                .map_err(|e| KbsError::Evidence(format!("SEV-SNP report: {e}")))?;
            kbs::evidence::snp(&report)
        }),
        GuestTee::Tdx => Box::new(|rd: &[u8; 48]| {
            let data = kbs::evidence::tee_report_data(rd);
            let quote = crate::tsm::report(Path::new("/sys"), &data, "tdx_guest")
                .map_err(|e| KbsError::Evidence(format!("TDX quote: {e}")))?;
            let ccel = std::fs::read("/sys/firmware/acpi/tables/data/CCEL").ok();
            Ok(kbs::evidence::tdx(&quote, ccel.as_deref()))
        }),
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

/// Attests once and fetches every resource of `uris`, in order, reaching
/// the KBS by `route`.
pub async fn fetch_resources(
    policy: &PodPolicy,
    initdata: &str,
    uris: &[&ResourceUri],
    tee: &GuestTee,
    route: KbsRoute,
) -> Result<Vec<Vec<u8>>> {
    let url = KbsUrl::parse(policy.kbs_url.as_deref().unwrap_or_default())?;
    let path = KbsPath::new(route, &url)?;
    let evidence = evidence_for(tee);
    let tee = kbs::evidence::tee_name(tee);
    if !url.https {
        return Client::new(path, &url.authority)
            .fetch(tee, &*evidence, Some(initdata), uris)
            .await
            .map_err(kbs_error);
    }
    let ca = policy.kbs_cert.as_deref().ok_or_else(|| {
        Error::FailedPrecondition(
            "the initdata names an https KBS but no certificate to trust for it (aa.toml [token_configs.kbs] cert, or cdh.toml [kbc] kbs_cert)".into(),
        )
    })?;
    let tls = kbs::tls::Tls::new(path, url.host(), ca).map_err(kbs_error)?;
    Client::new(tls, &url.authority)
        .fetch(tee, &*evidence, Some(initdata), uris)
        .await
        .map_err(kbs_error)
}

/// Attests once and fetches every secret into `store` (mode 0400).
pub async fn fetch(
    policy: &PodPolicy,
    initdata: &str,
    wanted: &[(String, ResourceUri)],
    tee: &GuestTee,
    store: &Path,
    route: KbsRoute,
) -> Result<()> {
    let uris: Vec<&ResourceUri> = wanted.iter().map(|(_, u)| u).collect();
    let data = fetch_resources(policy, initdata, &uris, tee, route).await?;
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
    use crate::policy::policy;

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
        let url = KbsUrl::parse(p.kbs_url.as_deref().unwrap()).unwrap();
        assert_eq!(
            (url.authority.as_str(), url.host(), url.https),
            ("10.0.0.5:8080", "10.0.0.5", false)
        );
        let url = KbsUrl::parse("https://kbs.example:8443/").unwrap();
        assert_eq!((url.host(), url.https), ("kbs.example", true));
        assert_eq!(
            KbsUrl::parse("https://[fd00::1]:443").unwrap().host(),
            "fd00::1"
        );
        for bad in ["ftp://x:1", "https://", "http://h:1/path"] {
            assert!(KbsUrl::parse(bad).is_err(), "{bad}");
        }
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
