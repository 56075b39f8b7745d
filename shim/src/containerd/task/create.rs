//! `Create`: the first container (sandbox or single) launches the pod VM;
//! every container gets its rootfs mounted into the pod's share and its init
//! process created (not started) in the guest.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cocoon_protocol::agent::{CreateContainerRequest, StdioStream};
use cocoon_vmm::agent::ctx;
use cocoon_vmm::config::Config;
use containerd_shim_protos::api::{CreateTaskRequest, CreateTaskResponse};
use containerd_shim_protos::events::task::TaskCreate;
use slog::info;

use super::super::error::{Result, ShimError};
use super::super::io::{self, Target};
use super::super::pod::Pod;
use super::super::process::{Container, Proc, StdioPaths};
use super::super::publisher::Event;
use super::super::record::Record;
use super::super::spec::{self, Kind};
use super::super::{options, rootfs};
use super::Service;

pub(super) async fn create(svc: &Service, req: &CreateTaskRequest) -> Result<CreateTaskResponse> {
    let started = std::time::Instant::now();
    if req.id.is_empty() {
        return Err(ShimError::Invalid {
            field: "id".into(),
            problem: "is empty".into(),
        });
    }
    if svc
        .containers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains_key(&req.id)
    {
        return Err(ShimError::AlreadyExists(format!("container {:?}", req.id)));
    }
    let bundle = PathBuf::from(&req.bundle);
    let spec = spec::load(&bundle)?;
    let kind = spec::kind(&spec);
    let process = spec::spec_process(&spec)?;
    let hostname = spec.hostname().clone().unwrap_or_default();
    let readonly = spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);

    let mut pod_slot = svc.pod.lock().await;
    let (pod, new_pod) = match (&kind, pod_slot.as_ref()) {
        (Kind::PodContainer { .. }, Some(pod)) => {
            spec::check_annotations(&spec, &pod.config)?;
            let wanted = spec::devices(&spec).nodes(&pod.config.gpu.cdi_spec_dirs)?;
            let missing: Vec<&String> = wanted
                .iter()
                .filter(|n| !pod.device_nodes.contains(n))
                .collect();
            if !missing.is_empty() {
                return Err(ShimError::FailedPrecondition(format!(
                    "container asks for {missing:?}, which the pod's VM was not started with; devices are cold-plugged at pod start (hot-plug is not supported): put them on the pod, e.g. as a cdi.k8s.io/<name> pod annotation"
                )));
            }
            let (target, _) = rootfs::shared_paths(&pod.shared, &req.id);
            rootfs::mount_rootfs(&req.rootfs, &bundle.join("rootfs"), &target)?;
            (pod.clone(), false)
        }
        (Kind::PodContainer { sandbox_id }, None) => {
            return Err(ShimError::FailedPrecondition(format!(
                "pod sandbox {sandbox_id:?} has no VM in this shim; create the sandbox first"
            )))
        }
        (_, Some(pod)) => {
            return Err(ShimError::AlreadyExists(format!(
                "a VM ({}) in this shim",
                pod.id
            )))
        }
        (_, None) => {
            let path = options::config_path(req.options.as_ref())?;
            *svc.config_path.lock().unwrap_or_else(|p| p.into_inner()) = path.clone();
            let config = Config::load(path.as_deref())?;
            spec::check_annotations(&spec, &config)?;
            let id = req.id.clone();
            let mounts = req.rootfs.clone();
            let bundle_rootfs = bundle.join("rootfs");
            let prepare = move |shared: &Path| {
                let (target, _) = rootfs::shared_paths(shared, &id);
                rootfs::mount_rootfs(&mounts, &bundle_rootfs, &target)
            };
            let mut devices = spec::devices(&spec);
            if kind == Kind::PodSandbox {
                devices
                    .cdi
                    .extend(kubelet_devices(&spec, &config, &svc.log).await?);
                devices.cdi.sort();
                devices.cdi.dedup();
            }
            let pod = Pod::launch(&req.id, config, &hostname, devices, prepare, &svc.log).await?;
            (pod, true)
        }
    };
    let result = create_in_pod(svc, req, &pod, &kind, process, &hostname, readonly).await;
    match result {
        Ok(c) => {
            if new_pod {
                *pod_slot = Some(pod.clone());
            }
            drop(pod_slot);
            let pid = c.init.pid;
            svc.containers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(req.id.clone(), c);
            let mut ev = TaskCreate::new();
            ev.container_id = req.id.clone();
            ev.bundle = req.bundle.clone();
            ev.rootfs = req.rootfs.clone();
            ev.pid = pid;
            ev.io = Some(Default::default()).into();
            if let Some(io) = ev.io.as_mut() {
                io.stdin = req.stdin.clone();
                io.stdout = req.stdout.clone();
                io.stderr = req.stderr.clone();
                io.terminal = req.terminal;
            }
            svc.publisher.publish(Event::Create(ev)).await;
            let create_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            info!(svc.log, "container created"; "id" => &req.id, "pod" => &pod.id, "pid" => pid, "create_ms" => create_ms, "new_vm" => new_pod);
            let mut r = CreateTaskResponse::new();
            r.pid = pid;
            Ok(r)
        }
        Err(e) => {
            let (target, _) = rootfs::shared_paths(&pod.shared, &req.id);
            let _ = rootfs::unmount_rootfs(&target);
            let _ = std::fs::remove_dir_all(pod.shared.join(&req.id));
            if new_pod {
                pod.shutdown().await;
            }
            Err(e)
        }
    }
}

async fn create_in_pod(
    svc: &Service,
    req: &CreateTaskRequest,
    pod: &Arc<Pod>,
    kind: &Kind,
    mut process: cocoon_protocol::agent::Process,
    hostname: &str,
    readonly: bool,
) -> Result<Arc<Container>> {
    let (target, rel) = rootfs::shared_paths(&pod.shared, &req.id);
    process.terminal = req.terminal;
    let mut creq = CreateContainerRequest::new();
    creq.container_id = req.id.clone();
    creq.rootfs = rel;
    creq.hostname = hostname.to_string();
    creq.readonly_rootfs = readonly;
    creq.process = Some(process).into();
    let pid = pod
        .agent
        .create_container(ctx(Duration::from_secs(60)), &creq)
        .await
        .map_err(|e| ShimError::agent("create the container in the guest", e))?
        .pid;
    let stdio = StdioPaths {
        stdin: req.stdin.clone(),
        stdout: req.stdout.clone(),
        stderr: req.stderr.clone(),
        terminal: req.terminal,
    };
    let t = Target {
        container_id: req.id.clone(),
        exec_id: String::new(),
    };
    let proc_ = Arc::new(Proc::new(t, pid, stdio));
    attach_io(svc, pod, &proc_).await?;
    let record = Record {
        pod_dir: pod.dir.clone(),
        rootfs: target.clone(),
        owns_vm: !matches!(kind, Kind::PodContainer { .. }),
    };
    record.write(Path::new(&req.bundle)).map_err(|e| {
        ShimError::io(
            format!("write {}/{}", req.bundle, super::super::record::FILE),
            e,
        )
    })?;
    Ok(Arc::new(Container {
        id: req.id.clone(),
        bundle: PathBuf::from(&req.bundle),
        kind: kind.clone(),
        rootfs: target,
        init: proc_,
        execs: Default::default(),
    }))
}

/// Connects a process's fifos to its agent streams.
pub(super) async fn attach_io(svc: &Service, pod: &Pod, p: &Proc) -> Result<()> {
    let mut tasks = Vec::new();
    if !p.stdio.stdout.is_empty() {
        tasks.push(
            io::spawn_output(
                pod.agent.clone(),
                p.target.clone(),
                StdioStream::STDOUT,
                Path::new(&p.stdio.stdout),
                svc.log.clone(),
            )
            .await?,
        );
    }
    if !p.stdio.stderr.is_empty() && !p.stdio.terminal {
        tasks.push(
            io::spawn_output(
                pod.agent.clone(),
                p.target.clone(),
                StdioStream::STDERR,
                Path::new(&p.stdio.stderr),
                svc.log.clone(),
            )
            .await?,
        );
    }
    *p.io_tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
    if p.stdio.stdin.is_empty() {
        io::close_stdin(&pod.agent, &p.target).await;
    } else {
        let t = io::spawn_input(
            pod.agent.clone(),
            p.target.clone(),
            Path::new(&p.stdio.stdin),
        )
        .await?;
        *p.stdin_task.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
    }
    Ok(())
}

/// Devices the kubelet's device plugins allocated to the pod, as CDI
/// names, when `runtime.pod_resources_socket` is set and exists.
async fn kubelet_devices(
    spec: &oci_spec::runtime::Spec,
    config: &Config,
    log: &slog::Logger,
) -> Result<Vec<String>> {
    let Some(sock) = &config.runtime.pod_resources_socket else {
        return Ok(Vec::new());
    };
    if !sock.exists() {
        slog::warn!(log, "runtime.pod_resources_socket does not exist; devices come from the pod spec only"; "socket" => sock.display().to_string());
        return Ok(Vec::new());
    }
    let ann = spec.annotations().clone().unwrap_or_default();
    let (Some(name), Some(namespace)) = (
        ann.get("io.kubernetes.cri.sandbox-name"),
        ann.get("io.kubernetes.cri.sandbox-namespace"),
    ) else {
        return Ok(Vec::new());
    };
    let names = crate::containerd::podresources::pod_devices(sock, namespace, name, std::time::Duration::from_secs(10))
        .await
        .map_err(|e| ShimError::FailedPrecondition(format!(
            "cannot ask the kubelet for the devices of pod {namespace}/{name} at {} (`runtime.pod_resources_socket`): {e}",
            sock.display()
        )))?;
    if !names.is_empty() {
        slog::info!(log, "devices allocated by the kubelet"; "pod" => format!("{namespace}/{name}"), "devices" => names.join(","));
    }
    Ok(names)
}
