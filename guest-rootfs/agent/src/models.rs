//! Sealed models (docs/sealed-models.md): a container names a sealed file
//! in its own view (image or bind mount); the agent reads its header, takes
//! the key URI from it, fetches the key from the KBS the verified initdata
//! names — only if the initdata allows that URI — and decrypts into a tmpfs
//! of the guest sized for the model. Containers see the plaintext read-only
//! at `/models/<name>`. The key and the plaintext never leave guest memory.

use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use cocoon_protocol::resource::{is_dns_label, ResourceUri};
use cocoon_seal::open::{self, OpenOptions};
use cocoon_seal::{Header, Kind, ModelKey};

use crate::error::{Error, Result};
use crate::oci::{MountKind, SpecMount};
use crate::policy::PodPolicy;

/// Where decrypted models live: one tmpfs per model (guest memory).
pub const STORE: &str = "/run/cocoon/models";
/// Where containers see them: `/models/<name>`.
pub const IN_CONTAINER: &str = "models";
/// Guest memory kept free for the containers when a model is placed.
const RESERVE: u64 = 128 << 20;

fn invalid(problem: String) -> Error {
    Error::InvalidArgument {
        field: "models",
        problem,
    }
}

fn io_err(op: &str, p: &Path, e: &std::io::Error) -> Error {
    Error::sys(
        format!("{op} {}", p.display()),
        nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    )
}

/// Whether `prefix` is `path` or one of its ancestors, component-wise.
fn under<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return Some(path);
    }
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// Finds the sealed file `path` (absolute, in the container's view) on the
/// guest: below the bind mount with the longest destination that contains
/// it, else in the container's root filesystem. Symlinks are followed only
/// inside that filesystem; one that leads out of it is refused.
pub fn locate(
    rootfs: &Path,
    shared: &Path,
    mounts: &[SpecMount],
    name: &str,
    path: &str,
) -> Result<PathBuf> {
    let p = Path::new(path);
    if !p.is_absolute()
        || p.components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(invalid(format!(
            "model {name:?}: {path:?} is not a clean absolute path"
        )));
    }
    let mut best: Option<(&SpecMount, &str)> = None;
    for m in mounts {
        if let Some(rest) = under(path, &m.destination) {
            if best.is_none_or(|(b, _)| m.destination.len() >= b.destination.len()) {
                best = Some((m, rest));
            }
        }
    }
    let (base, rest) = match best {
        Some((m, rest)) => match &m.kind {
            MountKind::Bind { source, .. } => (shared.join(source), rest),
            MountKind::Fs { fstype, .. } => {
                return Err(invalid(format!(
                    "model {name:?}: {path:?} is on the container's {fstype} mount, which the host does not fill; put the sealed model in the image or a volume"
                )))
            }
            MountKind::Devpts => {
                return Err(invalid(format!("model {name:?}: {path:?} is under /dev/pts")))
            }
            MountKind::PodShm => {
                return Err(invalid(format!(
                    "model {name:?}: {path:?} is in the pod's shared memory, which the host does not fill"
                )))
            }
        },
        None => (rootfs.to_path_buf(), path),
    };
    let base = base
        .canonicalize()
        .map_err(|e| io_err("resolve", &base, &e))?;
    let found = crate::spawn::resolve_in_root(&base, rest);
    let real = found.canonicalize().map_err(|_| {
        Error::FailedPrecondition(format!(
            "model {name:?}: {path:?} does not exist in the container (its image or volumes)"
        ))
    })?;
    if !real.starts_with(&base) {
        return Err(Error::PermissionDenied(format!(
            "model {name:?}: {path:?} leads out of the filesystem it is on (a symlink escaping it)"
        )));
    }
    let meta = std::fs::metadata(&real).map_err(|e| io_err("stat", &real, &e))?;
    if !meta.is_file() {
        return Err(Error::FailedPrecondition(format!(
            "model {name:?}: {path:?} is not a regular file (a sealed model is one file made by `cocoon seal model`)"
        )));
    }
    Ok(real)
}

/// Bytes of guest memory a model may use now: MemAvailable less a reserve.
fn available() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| io_err("read", Path::new("/proc/meminfo"), &e))?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Ok((kib * 1024).saturating_sub(RESERVE))
}

/// tmpfs size for a model: its bytes, a page per file and a margin.
fn tmpfs_size(h: &Header) -> u64 {
    h.plaintext_len() + 4096 * (h.files.len() as u64 + 16) + (1 << 20)
}

/// A model checked against the policy and the guest's memory, ready to
/// fetch and decrypt.
#[derive(Debug)]
pub struct Planned {
    /// Model name.
    pub name: String,
    /// The sealed file on the guest.
    pub sealed: PathBuf,
    /// Its header.
    pub header: Header,
    /// The key's resource URI.
    pub uri: ResourceUri,
}

/// Checks a model before anything is fetched or written: its name, its
/// header, that the initdata allows its key URI and names a KBS, and that
/// it fits in guest memory.
pub fn plan(policy: Option<&PodPolicy>, name: &str, sealed: PathBuf) -> Result<Planned> {
    if !is_dns_label(name) {
        return Err(invalid(format!("{name:?} is not a DNS label")));
    }
    let header = open::read_header_file(&sealed).map_err(|e| {
        Error::FailedPrecondition(format!("model {name:?}: {}: {e}", sealed.display()))
    })?;
    let uri: ResourceUri = header
        .key_uri
        .parse()
        .map_err(|e: cocoon_protocol::resource::BadUri| invalid(format!("model {name:?}: {e}")))?;
    let Some(p) = policy else {
        return Err(Error::PermissionDenied(format!(
            "model {name:?} (key {uri}): the pod has no initdata, so no KBS and no key is allowed"
        )));
    };
    if !p.allows(&uri) {
        return Err(Error::PermissionDenied(format!(
            "model {name:?}: its key {uri} is not in the initdata's allowed_resources {:?}",
            p.allowed_resources
        )));
    }
    if p.kbs_url.is_none() {
        return Err(Error::PermissionDenied(format!(
            "model {name:?}: the initdata names no KBS ([token_configs.kbs] url in aa.toml)"
        )));
    }
    let need = tmpfs_size(&header);
    let have = available()?;
    if need > have {
        return Err(Error::FailedPrecondition(format!(
            "model {name:?} needs {} MiB of guest memory, {} MiB are free: raise the pod's memory limit (the VM grows with it)",
            need.div_ceil(1 << 20),
            have >> 20
        )));
    }
    Ok(Planned {
        name: name.to_string(),
        sealed,
        header,
        uri,
    })
}

/// Decrypts a planned model with its key into `store/<name>` (a new tmpfs),
/// logging progress; returns the directory to bind at `/models/<name>`.
/// On any error nothing is left: the tmpfs is unmounted and removed.
///
/// Blocking: call from a blocking thread.
pub fn decrypt(m: &Planned, key: &ModelKey, store: &Path) -> Result<PathBuf> {
    let dir = store.join(&m.name);
    std::fs::create_dir_all(&dir).map_err(|e| io_err("mkdir", &dir, &e))?;
    let opts = format!("size={},mode=0755", tmpfs_size(&m.header));
    nix::mount::mount(
        Some("cocoon-model"),
        &dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        Some(opts.as_str()),
    )
    .map_err(|e| Error::sys(format!("mount tmpfs on {}", dir.display()), e))?;
    let data = dir.join("data");
    let result = (|| {
        let out = match m.header.kind {
            Kind::Directory => data.clone(),
            Kind::File => {
                std::fs::create_dir(&data).map_err(|e| io_err("mkdir", &data, &e))?;
                data.join(&m.header.files[0].path)
            }
        };
        let total = m.header.plaintext_len();
        let start = Instant::now();
        let mut last_log = Instant::now();
        let mut progress = |done: u64, total: u64| {
            if last_log.elapsed().as_secs() >= 2 {
                last_log = Instant::now();
                let secs = start.elapsed().as_secs_f64().max(1e-6);
                crate::log(&format!(
                    "model {}: {} of {} MiB decrypted ({:.0} MiB/s)",
                    m.name,
                    done >> 20,
                    total >> 20,
                    done as f64 / 1048576.0 / secs
                ));
            }
        };
        open::open(
            &m.sealed,
            key,
            Some(&out),
            OpenOptions {
                threads: cocoon_seal::default_threads(),
                progress: Some(&mut progress),
            },
        )
        .map_err(|e| {
            Error::FailedPrecondition(format!("model {:?}: {}: {e}", m.name, m.sealed.display()))
        })?;
        crate::log(&format!(
            "model {}: {total} bytes decrypted in {} ms",
            m.name,
            start.elapsed().as_millis()
        ));
        Ok(data.clone())
    })();
    if result.is_err() {
        let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&dir);
    }
    result
}

/// The directory of a model decrypted earlier in this pod, if any.
pub fn decrypted(store: &Path, name: &str) -> Option<PathBuf> {
    let data = store.join(name).join("data");
    data.is_dir().then_some(data)
}

/// Unmounts every model (the pod is going away).
pub fn remove_all(store: &Path) {
    if let Ok(entries) = std::fs::read_dir(store) {
        for e in entries.flatten() {
            let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

/// The TEE default for exec into a container that mounts a model: only
/// when the policy says `exec = true` explicitly.
pub fn check_exec(policy: &PodPolicy, container: &str) -> Result<()> {
    if policy.exec == Some(true) {
        return Ok(());
    }
    Err(Error::PermissionDenied(format!(
        "exec into {container:?} is refused: it mounts sealed models; the pod's initdata policy must allow it (cocoon-policy.toml: exec = true)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(dest: &str, source: &str) -> SpecMount {
        SpecMount {
            destination: dest.into(),
            kind: MountKind::Bind {
                source: source.into(),
                recursive: false,
            },
            flags: 0,
            propagation: 0,
            data: String::new(),
        }
    }

    #[test]
    fn models_are_found_in_the_image_or_a_volume_and_never_outside() {
        let d = tempfile::tempdir().unwrap();
        let rootfs = d.path().join("rootfs");
        let shared = d.path().join("shared");
        std::fs::create_dir_all(rootfs.join("opt/m")).unwrap();
        std::fs::create_dir_all(shared.join("c1/mounts/0/sub")).unwrap();
        std::fs::write(rootfs.join("opt/m/a.sealed"), b"x").unwrap();
        std::fs::write(shared.join("c1/mounts/0/sub/b.sealed"), b"y").unwrap();
        std::fs::write(d.path().join("outside"), b"z").unwrap();
        std::os::unix::fs::symlink("/opt/m/a.sealed", rootfs.join("opt/link")).unwrap();
        std::os::unix::fs::symlink("../../../outside", shared.join("c1/mounts/0/escape")).unwrap();
        let mounts = [bind("/data", "c1/mounts/0")];
        let find = |p: &str| locate(&rootfs, &shared, &mounts, "m", p);
        assert_eq!(
            find("/opt/m/a.sealed").unwrap(),
            rootfs.canonicalize().unwrap().join("opt/m/a.sealed")
        );
        // An absolute symlink resolves inside the container's root.
        assert_eq!(
            find("/opt/link").unwrap(),
            rootfs.canonicalize().unwrap().join("opt/m/a.sealed")
        );
        assert_eq!(
            find("/data/sub/b.sealed").unwrap(),
            shared
                .canonicalize()
                .unwrap()
                .join("c1/mounts/0/sub/b.sealed")
        );
        let e = find("/data/escape").unwrap_err().to_string();
        assert!(
            e.contains("does not exist") || e.contains("leads out"),
            "{e}"
        );
        let e = find("/opt/../etc").unwrap_err().to_string();
        assert!(e.contains("clean absolute path"), "{e}");
        let e = find("/opt/m").unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = find("/nope").unwrap_err().to_string();
        assert!(e.contains("does not exist in the container"), "{e}");
        // "/data2" is not under "/data".
        assert!(find("/data2/x").is_err());
    }

    #[test]
    fn a_model_is_checked_before_anything_is_fetched() {
        let d = tempfile::tempdir().unwrap();
        let input = d.path().join("w.bin");
        std::fs::write(&input, b"weights").unwrap();
        let sealed = d.path().join("w.sealed");
        let key = ModelKey::generate().unwrap();
        cocoon_seal::seal::seal(
            &input,
            &sealed,
            &key,
            &cocoon_seal::seal::SealOptions {
                key_uri: "kbs:///default/model/w".into(),
                chunk_size: 4096,
                threads: 1,
                salt: None,
            },
        )
        .unwrap();
        let allow = |r: &[&str], kbs: bool| PodPolicy {
            kbs_url: kbs.then(|| "http://kbs:8080".into()),
            allowed_resources: r.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let p = plan(
            Some(&allow(&["kbs:///default/model/*"], true)),
            "w",
            sealed.clone(),
        )
        .unwrap();
        assert_eq!(p.uri.to_string(), "kbs:///default/model/w");
        let e = plan(None, "w", sealed.clone()).unwrap_err().to_string();
        assert!(e.contains("no initdata"), "{e}");
        let e = plan(
            Some(&allow(&["kbs:///default/secret/*"], true)),
            "w",
            sealed.clone(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("kbs:///default/model/w is not in the initdata's allowed_resources"),
            "{e}"
        );
        let e = plan(
            Some(&allow(&["kbs:///default/model/w"], false)),
            "w",
            sealed.clone(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("names no KBS"), "{e}");
        let e = plan(Some(&allow(&["*"], true)), "Bad_Name", sealed.clone())
            .unwrap_err()
            .to_string();
        assert!(e.contains("DNS label"), "{e}");
        let e = plan(Some(&allow(&["*"], true)), "w", input)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a Cocoon sealed model"), "{e}");
    }
}
