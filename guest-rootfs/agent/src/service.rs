//! The ttrpc service: one method per agent RPC, each validating its request
//! and delegating to [`crate::spawn`] and [`crate::container`].

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cocoon_protocol::agent::*;
use cocoon_protocol::agent_ttrpc::Agent;
use nix::sys::signal::Signal;
use ttrpc::r#async::TtrpcContext;

use crate::container::{Container, Process};
use crate::error::{Error, Result};
use crate::oci::{ContainerSpec, MountKind, ProcessSpec};
use crate::policy::Rule;
use crate::reaper::Reaper;
use crate::spawn;

/// Where the host's shared filesystem (virtio-fs) is mounted.
pub const SHARED_DIR: &str = "/run/cocoon/shared";

#[derive(Debug, Default)]
struct State {
    sandbox_id: Option<String>,
    /// Whether a sandbox was ever created: initdata is accepted once for
    /// the VM's life, also after DestroySandbox.
    initdata_taken: bool,
    /// The pod's policy from its verified initdata (default without).
    policy: crate::policy::PodPolicy,
    /// The verified initdata document (empty: none), which attestation
    /// binds to the evidence.
    initdata: Vec<u8>,
    /// How the KBS is reached (CreateSandbox).
    kbs_route: crate::secrets::KbsRoute,
    shared_mounted: bool,
    containers: HashMap<String, Arc<Container>>,
}

/// The agent service.
#[derive(Debug)]
pub struct AgentService {
    reaper: Arc<Reaper>,
    state: Mutex<State>,
    /// Root of the shared filesystem (overridable for tests).
    shared_dir: PathBuf,
    /// Power the machine off on `Shutdown` (PID 1) or just exit.
    poweroff: bool,
    /// Container cgroups, when the guest has cgroup v2.
    cgroups: Option<crate::cgroup::Cgroups>,
    /// Serializes the decryption of sealed models (one per pod, whichever
    /// container asks first).
    models: tokio::sync::Mutex<()>,
    /// The guest's TEE (decides the policy's defaults).
    tee: crate::initdata::GuestTee,
}

fn required<'a>(field: &'static str, v: &'a str) -> Result<&'a str> {
    if v.is_empty() {
        return Err(Error::InvalidArgument {
            field,
            problem: "is empty".into(),
        });
    }
    Ok(v)
}

/// Resolves a rootfs path relative to the shared directory, refusing
/// anything that could leave it.
fn resolve_rootfs(shared: &Path, rel: &str) -> Result<PathBuf> {
    let rel_path = Path::new(rel);
    if rel_path
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(Error::InvalidArgument {
            field: "rootfs",
            problem: format!("{rel:?} must be a relative path without `..`"),
        });
    }
    Ok(shared.join(rel_path))
}

fn signal_from(n: u32) -> Result<Signal> {
    i32::try_from(n)
        .ok()
        .and_then(|n| Signal::try_from(n).ok())
        .ok_or(Error::InvalidArgument {
            field: "signal",
            problem: format!("{n} is not a signal number"),
        })
}

/// The pod's shared-memory tmpfs ([`MountKind::PodShm`]).
const POD_SHM: &str = "/run/cocoon/pod-shm";

/// Mounts the pod's shared-memory tmpfs with the options of `spec`'s
/// `/dev/shm`, unless an earlier container of the pod did.
fn pod_shm(spec: &ContainerSpec) -> Result<()> {
    let dir = Path::new(POD_SHM);
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(POD_SHM));
    if mounted {
        return Ok(());
    }
    let Some(m) = spec.mounts.iter().find(|m| m.kind == MountKind::PodShm) else {
        return Ok(());
    };
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::sys(
            format!("create {POD_SHM}"),
            nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        )
    })?;
    let flags = nix::mount::MsFlags::from_bits_truncate(
        m.flags & (libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC),
    );
    let data = (!m.data.is_empty()).then_some(m.data.as_str());
    nix::mount::mount(Some("shm"), dir, Some("tmpfs"), flags, data).map_err(|e| {
        Error::InvalidArgument {
            field: "mounts",
            problem: format!(
                "the pod's /dev/shm (tmpfs {:?}) cannot be mounted: {e}",
                m.data
            ),
        }
    })
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Error::sys("blocking task panicked", nix::errno::Errno::EIO))?
}

/// Fetches the pod's secrets from the KBS its (verified) initdata names.
async fn fetch_secrets(
    initdata: &[u8],
    wanted: &std::collections::BTreeMap<String, String>,
    route: crate::secrets::KbsRoute,
) -> Result<()> {
    let policy = if initdata.is_empty() {
        None
    } else {
        Some(crate::policy::policy(initdata)?)
    };
    let checked = crate::secrets::check(policy.as_ref(), wanted)?;
    let policy = policy.unwrap_or_default();
    let text = String::from_utf8_lossy(initdata).into_owned();
    let tee = crate::initdata::GuestRoots::default().tee();
    crate::secrets::fetch(
        &policy,
        &text,
        &checked,
        &tee,
        std::path::Path::new(crate::secrets::STORE),
        route,
    )
    .await?;
    eprintln!(
        "cocoon-agent: fetched {} secret(s) from the KBS",
        checked.len()
    );
    Ok(())
}

impl AgentService {
    /// A service rooted at `shared_dir`.
    pub fn new(
        reaper: Arc<Reaper>,
        shared_dir: PathBuf,
        poweroff: bool,
        cgroups: Option<crate::cgroup::Cgroups>,
    ) -> Self {
        Self {
            reaper,
            state: Mutex::new(State::default()),
            shared_dir,
            poweroff,
            cgroups,
            models: tokio::sync::Mutex::new(()),
            tee: crate::initdata::GuestRoots::default().tee(),
        }
    }

    /// Refuses a host request on container `c` that the pod's policy does
    /// not allow (PERMISSION_DENIED naming the rule).
    fn allow(&self, rule: Rule, c: &Container, what: &str) -> Result<()> {
        let st = self.state();
        st.policy.check(
            rule,
            &self.tee,
            c.holds_secrets,
            &format!("{what} {:?}", c.id),
        )
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn container(&self, id: &str) -> Result<Arc<Container>> {
        self.state()
            .containers
            .get(id)
            .cloned()
            .ok_or_else(|| Error::ContainerNotFound(id.to_string()))
    }

    /// The running init processes whose namespaces `spec` joins.
    fn namespace_joins(
        &self,
        spec: &ContainerSpec,
    ) -> Result<Vec<(libc::c_int, nix::unistd::Pid)>> {
        spec.joins
            .iter()
            .map(|j| {
                let c = self.container(&j.container).map_err(|_| Error::InvalidArgument {
                    field: "linux.namespaces",
                    problem: format!(
                        "shares the namespaces of container {:?}, which the pod does not have",
                        j.container
                    ),
                })?;
                if let Some(status) = c.init.exited() {
                    return Err(Error::FailedPrecondition(format!(
                        "container {:?}, whose namespaces this one shares, has exited (status {status})",
                        j.container
                    )));
                }
                Ok((j.flag, c.init.pid))
            })
            .collect()
    }

    fn process(&self, container_id: &str, exec_id: &str) -> Result<Arc<Process>> {
        self.container(container_id)?.process(exec_id)
    }

    async fn do_create_sandbox(&self, mut req: CreateSandboxRequest) -> Result<()> {
        required("sandbox_id", &req.sandbox_id)?;
        if self.state().sandbox_id.is_some() {
            return Err(Error::AlreadyExists {
                kind: "sandbox",
                id: req.sandbox_id,
            });
        }
        if std::mem::replace(&mut self.state().initdata_taken, true) && !req.initdata.is_empty() {
            return Err(Error::FailedPrecondition(
                "initdata was delivered already; it is accepted once per VM".into(),
            ));
        }
        let initdata = std::mem::take(&mut req.initdata);
        if !initdata.is_empty() {
            let doc = initdata.clone();
            let verified = blocking(move || {
                crate::initdata::accept(
                    &doc,
                    &crate::initdata::GuestRoots::default(),
                    std::path::Path::new(crate::initdata::PATH),
                )
            })
            .await?;
            match verified {
                crate::initdata::Verified::Unverified => eprintln!(
                    "cocoon-agent: initdata accepted UNVERIFIED: no TEE (tee = \"none\"), nothing to compare its digest with"
                ),
                crate::initdata::Verified::Matched(what) => {
                    eprintln!("cocoon-agent: initdata verified against {what}");
                }
            }
        }
        if !initdata.is_empty() {
            let mut st = self.state();
            st.policy = crate::policy::policy(&initdata)?;
            st.initdata.clone_from(&initdata);
        }
        crate::network::validate(&req.interfaces)?;
        crate::network::configure(&req.interfaces).await?;
        let route = match (req.kbs_over_pod_network, req.interfaces.is_empty()) {
            (false, _) => crate::secrets::KbsRoute::Relay,
            (true, false) => crate::secrets::KbsRoute::PodNetwork,
            (true, true) => crate::secrets::KbsRoute::NoPodNetwork,
        };
        self.state().kbs_route = route;
        if !req.secrets.is_empty() {
            let wanted: std::collections::BTreeMap<String, String> =
                std::mem::take(&mut req.secrets).into_iter().collect();
            fetch_secrets(&initdata, &wanted, route).await?;
        }
        if !req.hostname.is_empty() {
            nix::unistd::sethostname(&req.hostname).map_err(|e| Error::sys("sethostname", e))?;
        }
        let mut mounted = false;
        if !req.shared_fs_tag.is_empty() {
            let dir = self.shared_dir.clone();
            let tag = req.shared_fs_tag.clone();
            blocking(move || {
                std::fs::create_dir_all(&dir).map_err(|e| {
                    Error::sys(
                        format!("mkdir {}", dir.display()),
                        nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                    )
                })?;
                nix::mount::mount(
                    Some(tag.as_str()),
                    &dir,
                    Some("virtiofs"),
                    nix::mount::MsFlags::empty(),
                    None::<&str>,
                )
                .map_err(|e| Error::sys(format!("mount virtiofs {tag:?} on {}", dir.display()), e))
            })
            .await?;
            mounted = true;
        }
        let mut st = self.state();
        st.sandbox_id = Some(req.sandbox_id);
        st.shared_mounted = mounted;
        Ok(())
    }

    async fn do_destroy_sandbox(&self) -> Result<()> {
        let containers: Vec<_> = self.state().containers.drain().map(|(_, c)| c).collect();
        for c in containers {
            let _ = c.init.signal(Signal::SIGKILL);
        }
        crate::models::remove_all(std::path::Path::new(crate::models::STORE));
        let _ = nix::mount::umount2(POD_SHM, nix::mount::MntFlags::MNT_DETACH);
        let mounted = std::mem::take(&mut self.state().shared_mounted);
        if mounted {
            let dir = self.shared_dir.clone();
            blocking(move || {
                nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH)
                    .map_err(|e| Error::sys("unmount shared dir", e))
            })
            .await?;
        }
        self.state().sandbox_id = None;
        Ok(())
    }

    async fn do_create_container(
        &self,
        req: CreateContainerRequest,
    ) -> Result<(u32, Vec<ModelReport>)> {
        let id = required("container_id", &req.container_id)?.to_string();
        // containerd's identifier rule; the id also names guest paths.
        if !cocoon_protocol::resource::is_container_id(&id) {
            return Err(Error::InvalidArgument {
                field: "container_id",
                problem: format!(
                    "{id:?} is not a container identifier (A-Z a-z 0-9 . _ -, at most 76)"
                ),
            });
        }
        if self.state().sandbox_id.is_none() {
            return Err(Error::NoSandbox);
        }
        if self.state().containers.contains_key(&id) {
            return Err(Error::AlreadyExists {
                kind: "container",
                id,
            });
        }
        let policy = self.state().policy.clone();
        let layer_stack = if req.layers.is_empty() {
            if !policy.images.is_empty() {
                return Err(Error::PermissionDenied(format!(
                    "container {id:?} has no verified layers, but the pod's initdata policy allows only its [[images]] (the host offered a root filesystem over virtio-fs, which the guest cannot check): refused"
                )));
            }
            None
        } else {
            crate::layers::check(&req.layers, &policy)?;
            let (cid, layers) = (id.clone(), req.layers.clone());
            Some(blocking(move || crate::layers::assemble(&cid, &layers)).await?)
        };
        let created = self.create_on(&id, req, policy, layer_stack.as_ref()).await;
        match (created, layer_stack) {
            (Ok((container, reports)), stack) => {
                *container.layers.lock().unwrap_or_else(|p| p.into_inner()) = stack;
                let pid = container.init.pid.as_raw().unsigned_abs();
                let mut st = self.state();
                if st.containers.contains_key(&id) {
                    let _ = container.init.signal(Signal::SIGKILL);
                    return Err(Error::AlreadyExists {
                        kind: "container",
                        id,
                    });
                }
                st.containers.insert(id, container);
                Ok((pid, reports))
            }
            (Err(e), Some(stack)) => {
                let _ = blocking(move || {
                    stack.teardown();
                    Ok(())
                })
                .await;
                Err(e)
            }
            (Err(e), None) => Err(e),
        }
    }

    /// Creates container `id` on its root filesystem: verified layers, or
    /// the host's share.
    async fn create_on(
        &self,
        id: &str,
        req: CreateContainerRequest,
        policy: crate::policy::PodPolicy,
        layers: Option<&crate::layers::LayerStack>,
    ) -> Result<(Arc<Container>, Vec<ModelReport>)> {
        let id = id.to_string();
        let rootfs = match layers {
            Some(stack) => stack.root.clone(),
            None => resolve_rootfs(&self.shared_dir, required("rootfs", &req.rootfs)?)?,
        };
        let reaper = self.reaper.clone();
        let shared = self.shared_dir.clone();
        let cid = id.clone();
        let oci_spec = req.oci_spec;
        let cgroups = self.cgroups.clone();
        // Decoding compiles the seccomp filter: blocking work.
        let mut spec = blocking(move || ContainerSpec::from_json(&oci_spec)).await?;
        policy.check_privileged(spec.process.security.caps.bounding, &self.tee)?;
        if layers.is_some() {
            let points = crate::layers::host_mount_points(&spec);
            let points: Vec<&str> = points.iter().map(String::as_str).collect();
            crate::layers::check_process(&req.layers, &policy, &spec.process, &points)?;
        }
        self.unseal_env(&mut spec.process.env).await?;
        let (model_binds, reports) = self.prepare_models(&req.models, &rootfs, &spec).await?;
        let has_models = !model_binds.is_empty();
        let joins = self.namespace_joins(&spec)?;
        let (spec, spawned, cgroup, has_secrets) = blocking(move || {
            let cgroup = cgroups
                .as_ref()
                .map(|c| c.create(&cid, &spec.limits))
                .transpose()?;
            let prepared = (|| {
                match &cgroup {
                    Some(cg) => spec.device_rules.attach(&cg.fd())?,
                    None => crate::log(&format!(
                        "{cid}: no cgroup v2 in the guest: linux.resources.devices not enforced"
                    )),
                }
                if spec.mounts.iter().any(|m| m.kind == MountKind::PodShm) {
                    pod_shm(&spec)?;
                }
                let mut binds = Vec::new();
                let has_secrets = if let Some(dir) = crate::secrets::for_container(
                    std::path::Path::new(crate::secrets::STORE),
                    std::path::Path::new(crate::secrets::PER_CONTAINER),
                    &cid,
                    spec.process.uid,
                    spec.process.gid,
                )? {
                    binds.push((dir, crate::secrets::IN_CONTAINER.to_string()));
                    true
                } else {
                    false
                };
                binds.extend(model_binds);
                let place = spawn::Placement {
                    rootfs: &rootfs,
                    shared: &shared,
                    pod_shm: std::path::Path::new(POD_SHM),
                    binds: &binds,
                    cgroup: cgroup.as_ref().map(|c| c.fd()),
                    joins: &joins,
                };
                spawn::spawn_container(&reaper, &spec, &place).map(|s| (s, has_secrets))
            })();
            match prepared {
                Ok((s, has_secrets)) => Ok((spec, s, cgroup, has_secrets)),
                Err(e) => {
                    if let Some(c) = cgroup {
                        c.remove();
                    }
                    Err(e)
                }
            }
        })
        .await?;
        let init = Arc::new(Process::new(&spec.process.args[0], spawned)?);
        let container = Arc::new(Container {
            id: id.clone(),
            init,
            execs: Mutex::default(),
            seccomp: spec.process.security.seccomp.clone(),
            cgroup: cgroup.map(Arc::new),
            has_models,
            own_devpts: spec.own_devpts,
            holds_secrets: has_secrets || has_models,
            layers: Mutex::default(),
        });
        Ok((container, reports))
    }

    /// Replaces the sealed secrets among `env`'s values by their plaintext:
    /// both URIs of each checked against the policy, then the signers' keys
    /// and the secrets fetched in one attested KBS session, each signature
    /// verified.
    async fn unseal_env(&self, env: &mut [String]) -> Result<()> {
        let found = crate::sealed::find(env)?;
        if found.is_empty() {
            return Ok(());
        }
        let (policy, initdata, route) = {
            let st = self.state();
            (st.policy.clone(), st.initdata.clone(), st.kbs_route)
        };
        let var = &found[0].1.var;
        if initdata.is_empty() {
            return Err(Error::PermissionDenied(format!(
                "{var}: a sealed secret needs the pod's initdata to name a KBS and allow its resources; the pod has none"
            )));
        }
        for (_, s) in &found {
            s.check(&policy)?;
        }
        if policy.kbs_url.is_none() {
            return Err(Error::PermissionDenied(format!(
                "{var}: the initdata names no KBS ([token_configs.kbs] url in aa.toml) to unseal it with"
            )));
        }
        let uris: Vec<&cocoon_protocol::resource::ResourceUri> = found
            .iter()
            .flat_map(|(_, s)| [&s.key, &s.secret])
            .collect();
        let mut fetched = crate::secrets::fetch_resources(
            &policy,
            &String::from_utf8_lossy(&initdata),
            &uris,
            &self.tee,
            route,
        )
        .await?
        .into_iter();
        for (i, s) in &found {
            let (Some(key), Some(secret)) = (fetched.next(), fetched.next()) else {
                break;
            };
            env[*i] = format!("{}={}", s.var, s.open(&key, secret)?);
        }
        crate::log(&format!("unsealed {} environment value(s)", found.len()));
        Ok(())
    }

    /// Decrypts the sealed models `wanted` (name → path in the container)
    /// that the pod has not decrypted yet, and returns the binds of all of
    /// them at `/models/<name>` and a report per model decrypted now.
    /// Every model is checked (policy, header, memory) before a key is
    /// fetched; the keys come in one attested KBS session.
    async fn prepare_models(
        &self,
        wanted: &std::collections::HashMap<String, String>,
        rootfs: &Path,
        spec: &ContainerSpec,
    ) -> Result<(Vec<(PathBuf, String)>, Vec<ModelReport>)> {
        use crate::models;
        if wanted.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let _one_at_a_time = self.models.lock().await;
        let store = Path::new(models::STORE);
        let (policy, initdata) = {
            let st = self.state();
            (st.policy.clone(), st.initdata.clone())
        };
        let mut names: Vec<(&String, &String)> = wanted.iter().collect();
        names.sort();
        let mut binds = Vec::new();
        let mut todo = Vec::new();
        for (name, path) in names {
            let target = format!("{}/{name}", models::IN_CONTAINER);
            if let Some(dir) = models::decrypted(store, name) {
                binds.push((dir, target));
                continue;
            }
            let (root, shared, mounts) = (
                rootfs.to_path_buf(),
                self.shared_dir.clone(),
                spec.mounts.clone(),
            );
            let (name, path, policy) = (name.clone(), path.clone(), policy.clone());
            let with_initdata = !initdata.is_empty();
            let planned = blocking(move || {
                let sealed = models::locate(&root, &shared, &mounts, &name, &path)?;
                models::plan(with_initdata.then_some(&policy), &name, sealed)
            })
            .await?;
            todo.push((planned, target));
        }
        if todo.is_empty() {
            return Ok((binds, Vec::new()));
        }
        let start = std::time::Instant::now();
        let tee = crate::initdata::GuestRoots::default().tee();
        let uris: Vec<&cocoon_protocol::resource::ResourceUri> =
            todo.iter().map(|(m, _)| &m.uri).collect();
        let route = self.state().kbs_route;
        let keys = crate::secrets::fetch_resources(
            &policy,
            &String::from_utf8_lossy(&initdata),
            &uris,
            &tee,
            route,
        )
        .await?;
        let mut reports = Vec::new();
        for ((m, target), mut bytes) in todo.into_iter().zip(keys) {
            let key = cocoon_seal::ModelKey::from_bytes(&bytes);
            zeroize::Zeroize::zeroize(&mut bytes);
            let key = key.map_err(|e| {
                Error::FailedPrecondition(format!(
                    "model {:?}: the KBS resource {} is not a model key: {e}",
                    m.name, m.uri
                ))
            })?;
            let mut report = ModelReport::new();
            report.name.clone_from(&m.name);
            report.bytes = m.header.plaintext_len();
            let dir = blocking(move || models::decrypt(&m, &key, store)).await?;
            report.millis = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
            binds.push((dir, target));
            reports.push(report);
        }
        Ok((binds, reports))
    }

    async fn do_exec(&self, req: ExecProcessRequest) -> Result<u32> {
        let container = self.container(required("container_id", &req.container_id)?)?;
        self.allow(Rule::Exec, &container, "exec into")?;
        if container.has_models {
            let policy = self.state().policy.clone();
            crate::models::check_exec(&policy, &container.id)?;
        }
        let exec_id = required("exec_id", &req.exec_id)?.to_string();
        if container
            .execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&exec_id)
        {
            return Err(Error::AlreadyExists {
                kind: "process",
                id: exec_id,
            });
        }
        if container.init.exited().is_some() {
            return Err(Error::FailedPrecondition(format!(
                "container {:?} is not running",
                container.id
            )));
        }
        let mut spec = ProcessSpec::from_json(&req.oci_process)?;
        self.unseal_env(&mut spec.env).await?;
        // Like runc: an exec runs under the container's seccomp filter.
        spec.security.seccomp = container.seccomp.clone();
        let reaper = self.reaper.clone();
        let init = container.init.pid;
        let spec2 = spec.clone();
        let cgroup = container.cgroup.clone();
        let own_devpts = container.own_devpts;
        let spawned = blocking(move || {
            spawn::spawn_exec(
                &reaper,
                init,
                &spec2,
                cgroup.as_ref().map(|c| c.fd()),
                own_devpts,
            )
        })
        .await?;
        let proc_ = Arc::new(Process::new(&spec.args[0], spawned)?);
        let pid = proc_.pid.as_raw().unsigned_abs();
        container
            .execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(exec_id, proc_);
        Ok(pid)
    }

    async fn do_remove_container(&self, id: &str) -> Result<()> {
        let c = self.container(id)?;
        if c.init.exited().is_none() {
            c.init.signal(Signal::SIGKILL)?;
            c.init.wait().await;
        }
        for p in c.execs.lock().unwrap_or_else(|p| p.into_inner()).values() {
            let _ = p.signal(Signal::SIGKILL);
        }
        self.state().containers.remove(id);
        if let Some(cg) = c.cgroup.clone() {
            let _ = blocking(move || {
                cg.remove();
                Ok(())
            })
            .await;
        }
        // The container's copies of the pod's secrets (guest memory).
        let _ =
            std::fs::remove_dir_all(std::path::Path::new(crate::secrets::PER_CONTAINER).join(id));
        let stack = c.layers.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(stack) = stack {
            let _ = blocking(move || {
                stack.teardown();
                Ok(())
            })
            .await;
        }
        Ok(())
    }

    async fn do_remove_process(&self, container_id: &str, exec_id: &str) -> Result<()> {
        let c = self.container(container_id)?;
        required("exec_id", exec_id)?;
        let p = c.process(exec_id)?;
        if p.exited().is_none() {
            p.signal(Signal::SIGKILL)?;
            p.wait().await;
        }
        c.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(exec_id);
        Ok(())
    }

    fn do_shutdown(&self) {
        let poweroff = self.poweroff;
        let containers: Vec<_> = self.state().containers.values().cloned().collect();
        tokio::spawn(async move {
            for c in &containers {
                c.signal_all(Signal::SIGKILL);
            }
            // Let the reply leave before the machine goes away.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            crate::init::power_off(poweroff);
        });
    }
}

/// Guest memory (MemTotal), the limit of a container without one.
fn guest_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

#[async_trait]
impl Agent for AgentService {
    async fn version(&self, _: &TtrpcContext, _: VersionRequest) -> ttrpc::Result<VersionResponse> {
        let mut r = VersionResponse::new();
        r.protocol_version = cocoon_protocol::PROTOCOL_VERSION;
        r.agent_version = env!("CARGO_PKG_VERSION").into();
        r.kernel_release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(r)
    }

    async fn create_sandbox(
        &self,
        _: &TtrpcContext,
        req: CreateSandboxRequest,
    ) -> ttrpc::Result<CreateSandboxResponse> {
        self.do_create_sandbox(req).await?;
        Ok(CreateSandboxResponse::new())
    }

    async fn destroy_sandbox(
        &self,
        _: &TtrpcContext,
        _: DestroySandboxRequest,
    ) -> ttrpc::Result<DestroySandboxResponse> {
        self.do_destroy_sandbox().await?;
        Ok(DestroySandboxResponse::new())
    }

    async fn create_container(
        &self,
        _: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<CreateContainerResponse> {
        let mut r = CreateContainerResponse::new();
        let (pid, models) = self.do_create_container(req).await?;
        r.pid = pid;
        r.models = models;
        Ok(r)
    }

    async fn start_process(
        &self,
        _: &TtrpcContext,
        req: StartProcessRequest,
    ) -> ttrpc::Result<StartProcessResponse> {
        let p = self.process(&req.container_id, &req.exec_id)?;
        p.start().await?;
        let mut r = StartProcessResponse::new();
        r.pid = p.pid.as_raw().unsigned_abs();
        Ok(r)
    }

    async fn exec_process(
        &self,
        _: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> ttrpc::Result<ExecProcessResponse> {
        let mut r = ExecProcessResponse::new();
        r.pid = self.do_exec(req).await?;
        Ok(r)
    }

    async fn signal_process(
        &self,
        _: &TtrpcContext,
        req: SignalProcessRequest,
    ) -> ttrpc::Result<SignalProcessResponse> {
        let sig = signal_from(req.signal)?;
        let c = self.container(&req.container_id)?;
        // SIGKILL is always delivered: the host can remove the container
        // or stop the VM anyway.
        if sig != Signal::SIGKILL {
            self.allow(Rule::Signals, &c, &format!("{sig} to"))?;
        }
        if req.all {
            c.signal_all(sig);
        } else {
            c.process(&req.exec_id)?.signal(sig)?;
        }
        Ok(SignalProcessResponse::new())
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        req: WaitProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        let c = self.container(&req.container_id)?;
        let p = c.process(&req.exec_id)?;
        let mut r = WaitProcessResponse::new();
        r.exit_status = p.wait().await;
        r.oom_killed =
            req.exec_id.is_empty() && c.cgroup.as_ref().is_some_and(|cg| cg.oom_kills() > 0);
        Ok(r)
    }

    async fn remove_process(
        &self,
        _: &TtrpcContext,
        req: RemoveProcessRequest,
    ) -> ttrpc::Result<RemoveProcessResponse> {
        self.do_remove_process(&req.container_id, &req.exec_id)
            .await?;
        Ok(RemoveProcessResponse::new())
    }

    async fn remove_container(
        &self,
        _: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> ttrpc::Result<RemoveContainerResponse> {
        self.do_remove_container(&req.container_id).await?;
        Ok(RemoveContainerResponse::new())
    }

    async fn read_stream(
        &self,
        _: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        let c = self.container(&req.container_id)?;
        self.allow(Rule::Logs, &c, "reading the output of")?;
        let p = c.process(&req.exec_id)?;
        let out = match req.stream.enum_value_or_default() {
            StdioStream::STDOUT => &p.stdout,
            StdioStream::STDERR => &p.stderr,
        };
        let mut r = ReadStreamResponse::new();
        match out.read().await {
            Some(data) => r.data = data,
            None => r.eof = true,
        }
        Ok(r)
    }

    async fn write_stdin(
        &self,
        _: &TtrpcContext,
        req: WriteStdinRequest,
    ) -> ttrpc::Result<WriteStdinResponse> {
        let c = self.container(&req.container_id)?;
        self.allow(Rule::Stdin, &c, "writing to the stdin of")?;
        let p = c.process(&req.exec_id)?;
        let n = p
            .stdin
            .write_all(&req.data)
            .await
            .map_err(|e| Error::FailedPrecondition(format!("cannot write stdin: {e}")))?;
        let mut r = WriteStdinResponse::new();
        r.written = u32::try_from(n).unwrap_or(u32::MAX);
        Ok(r)
    }

    async fn close_stdin(
        &self,
        _: &TtrpcContext,
        req: CloseStdinRequest,
    ) -> ttrpc::Result<CloseStdinResponse> {
        self.process(&req.container_id, &req.exec_id)?
            .stdin
            .close()
            .await;
        Ok(CloseStdinResponse::new())
    }

    async fn resize_tty(
        &self,
        _: &TtrpcContext,
        req: ResizeTtyRequest,
    ) -> ttrpc::Result<ResizeTtyResponse> {
        let p = self.process(&req.container_id, &req.exec_id)?;
        let dim = |field: &'static str, v: u32| {
            u16::try_from(v).map_err(|_| Error::InvalidArgument {
                field,
                problem: format!("{v} is larger than 65535"),
            })
        };
        p.stdin
            .resize(dim("rows", req.rows)?, dim("cols", req.cols)?)
            .await
            .map_err(|e| Error::FailedPrecondition(format!("cannot resize the terminal: {e}")))?;
        Ok(ResizeTtyResponse::new())
    }

    async fn list_processes(
        &self,
        _: &TtrpcContext,
        req: ListProcessesRequest,
    ) -> ttrpc::Result<ListProcessesResponse> {
        let c = self.container(&req.container_id)?;
        self.allow(Rule::Stats, &c, "listing the processes of")?;
        let mut r = ListProcessesResponse::new();
        r.pids = c.pids();
        Ok(r)
    }

    async fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        let c = self.container(&req.container_id)?;
        self.allow(Rule::Stats, &c, "statistics of")?;
        let mut r = StatsResponse::new();
        let mut limit = None;
        if let Some(cg) = &c.cgroup {
            let s = cg.stats();
            limit = s.memory_limit;
            r.cpu_user_ns = s.cpu_user_ns;
            r.cpu_kernel_ns = s.cpu_system_ns;
            r.memory_rss_bytes = s.memory_anon;
            r.memory_usage_bytes = s.memory_usage;
            r.pids = s.pids;
        } else {
            let (user, kernel, rss, pids) = c.usage();
            r.cpu_user_ns = user;
            r.cpu_kernel_ns = kernel;
            r.memory_rss_bytes = rss;
            r.memory_usage_bytes = rss;
            r.pids = pids;
        }
        r.memory_limit_bytes = limit.unwrap_or_else(guest_memory);
        Ok(r)
    }

    async fn update_container(
        &self,
        _: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> ttrpc::Result<UpdateContainerResponse> {
        let c = self.container(&req.container_id)?;
        self.allow(Rule::Update, &c, "updating the resources of")?;
        let limits = crate::oci::limits_from_json(&req.oci_resources)?;
        let Some(cg) = c.cgroup.clone() else {
            return Err(Error::FailedPrecondition(
                "the guest has no cgroup v2: resources cannot be changed".into(),
            )
            .into());
        };
        blocking(move || cg.apply(&limits)).await?;
        Ok(UpdateContainerResponse::new())
    }

    async fn shutdown(
        &self,
        _: &TtrpcContext,
        _: ShutdownRequest,
    ) -> ttrpc::Result<ShutdownResponse> {
        self.do_shutdown();
        Ok(ShutdownResponse::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootfs_cannot_escape_the_share() {
        let shared = Path::new("/run/cocoon/shared");
        assert_eq!(
            resolve_rootfs(shared, "c1/rootfs").unwrap(),
            shared.join("c1/rootfs")
        );
        assert_eq!(resolve_rootfs(shared, ".").unwrap(), shared.join("."));
        for bad in ["../etc", "/etc", "a/../../b"] {
            let e = resolve_rootfs(shared, bad).unwrap_err().to_string();
            assert!(e.contains("rootfs"), "{bad}: {e}");
        }
    }

    #[test]
    fn signals_are_validated() {
        assert_eq!(signal_from(9).unwrap(), Signal::SIGKILL);
        assert!(signal_from(0).is_err());
        assert!(signal_from(1000)
            .unwrap_err()
            .to_string()
            .contains("signal"));
    }
}
