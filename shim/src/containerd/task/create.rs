//! `Create`: the first container (sandbox or single) launches the pod VM;
//! every container gets its rootfs mounted into the pod's share and its init
//! process created (not started) in the guest.

use std::path::Path;
use std::sync::Arc;

use cocoon_protocol::agent::{CreateContainerRequest, StdioStream};
use cocoon_protocol::client::ProcessRef;
use containerd_shim_protos::api::{CreateTaskRequest, CreateTaskResponse};
use containerd_shim_protos::events::task::TaskCreate;
use slog::info;

use super::super::error::{Result, ShimError};
use super::super::io;
use super::super::options;
use super::super::pod::{Pod, PodDir, PodLaunch};
use super::super::process::{Container, Proc};
use super::super::publisher::Event;
use super::super::record::Record;
use super::super::request::{check_annotations, ContainerRequest, Kind};
use super::super::rootfs::SharedRootfs;
use super::Service;
use crate::node::NodeConfig;

pub(super) async fn create(svc: &Service, req: &CreateTaskRequest) -> Result<CreateTaskResponse> {
    let started = std::time::Instant::now();
    let creq = ContainerRequest::parse(req)?;
    if svc
        .containers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains_key(&creq.id)
    {
        return Err(ShimError::AlreadyExists(format!("container {:?}", creq.id)));
    }
    let mut pod_slot = svc.pod.lock().await;
    let (pod, rootfs, new_pod) = match (&creq.kind, pod_slot.as_ref()) {
        (Kind::PodContainer { .. }, Some(pod)) => {
            check_joins(pod, &creq)?;
            warn_pod_level(&creq, &svc.log);
            // On verified layers the guest never reads the host's root.
            let rootfs = SharedRootfs::mount(
                &pod.shared,
                &creq.id,
                pod.layers.is_none().then_some(&creq.rootfs),
                &creq.guest.binds,
            )?;
            (pod.clone(), rootfs, false)
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
        (_, None) => match launch_pod(svc, req, &creq).await {
            Ok((pod, rootfs)) => (pod, rootfs, true),
            Err(e) => {
                // Everything the record names is gone already.
                let _ = std::fs::remove_file(creq.bundle.join(super::super::record::FILE));
                return Err(e);
            }
        },
    };
    let c = match create_in_pod(svc, &creq, &pod, rootfs).await {
        Ok(c) => c,
        Err(e) => {
            if new_pod {
                pod.shutdown().await;
                let _ = std::fs::remove_file(creq.bundle.join(super::super::record::FILE));
            }
            return Err(e);
        }
    };
    if new_pod {
        *pod_slot = Some(pod.clone());
    }
    drop(pod_slot);
    let (pid, c_guest_pid) = (c.init.pid, c.init.guest_pid);
    svc.containers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(creq.id.clone(), c);
    svc.publisher
        .publish(Event::Create(create_event(req, pid)))
        .await;
    let create_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    info!(svc.log, "container created"; "id" => &creq.id, "pod" => &pod.id, "pid" => pid, "guest_pid" => c_guest_pid, "create_ms" => create_ms, "new_vm" => new_pod);
    let mut r = CreateTaskResponse::new();
    r.pid = pid;
    Ok(r)
}

fn create_event(req: &CreateTaskRequest, pid: u32) -> TaskCreate {
    let mut ev = TaskCreate::new();
    ev.container_id = req.id.clone();
    ev.bundle = req.bundle.clone();
    ev.rootfs = req.rootfs.clone();
    ev.pid = pid;
    let io = ev.io.mut_or_insert_default();
    io.stdin = req.stdin.clone();
    io.stdout = req.stdout.clone();
    io.stderr = req.stderr.clone();
    io.terminal = req.terminal;
    ev
}

/// Initdata and secrets belong to the pod: its VM got them with the
/// sandbox. Say so when a later container carries them, rather than
/// ignore them silently.
fn warn_pod_level(creq: &ContainerRequest, log: &slog::Logger) {
    use super::super::request::{KATA_INITDATA, MODEL_PREFIX, SECRET_PREFIX};
    let ignored: Vec<&String> = creq
        .annotations
        .keys()
        .filter(|k| {
            *k == KATA_INITDATA || k.starts_with(SECRET_PREFIX) || k.starts_with(MODEL_PREFIX)
        })
        .collect();
    if !ignored.is_empty() {
        slog::warn!(log, "annotations of a pod container are ignored: initdata, secrets and models come from the pod sandbox (every container of the pod gets the pod's secrets and models)";
            "container" => &creq.id, "annotations" => format!("{ignored:?}"));
    }
}

/// Checks that a container may join the running pod: its annotations are
/// allowed, and it asks only for devices the VM was started with.
fn check_joins(pod: &Pod, creq: &ContainerRequest) -> Result<()> {
    check_annotations(&creq.annotations, &pod.config)?;
    let wanted = creq.devices.nodes(&pod.config.vm)?;
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|n| !pod.device_nodes.contains(n))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(ShimError::FailedPrecondition(format!(
        "container asks for {missing:?}, which the pod's VM was not started with; devices are cold-plugged at pod start (hot-plug is not supported): put them on the pod, e.g. as a cdi.k8s.io/<name> pod annotation"
    )))
}

/// Adds the pod's limits to the node's default VM size (Kata's rule:
/// default vCPUs + the limit in whole CPUs, default memory + the limit).
/// The measurement follows: it is computed from the sized config.
fn size_vm(
    config: &mut NodeConfig,
    s: super::super::request::Sizing,
    log: &slog::Logger,
) -> Result<()> {
    if s == Default::default() {
        return Ok(());
    }
    let q = &mut config.vm.qemu;
    let vcpus = q.vcpus.saturating_add(s.vcpus);
    let memory = q.memory_mib.saturating_add(s.memory_mib);
    if vcpus > 240 {
        return Err(ShimError::Invalid {
            field: "linux.resources.cpu (or io.kubernetes.cri.sandbox-cpu-quota)".into(),
            problem: format!("asks for {vcpus} vCPUs; a VM has at most 240: lower the CPU limit"),
        });
    }
    if u64::from(memory) > 4 * 1024 * 1024 {
        return Err(ShimError::Invalid {
            field: "linux.resources.memory (or io.kubernetes.cri.sandbox-memory)".into(),
            problem: format!(
                "asks for {memory} MiB; a VM has at most 4 TiB: lower the memory limit"
            ),
        });
    }
    info!(log, "VM sized for the pod"; "vcpus" => vcpus, "memory_mib" => memory, "default_vcpus" => q.vcpus, "default_memory_mib" => q.memory_mib);
    q.vcpus = vcpus;
    q.memory_mib = memory;
    Ok(())
}

/// Loads the node config, resolves the pod's devices once, mounts the
/// first rootfs into a new pod directory and launches the VM.
async fn launch_pod(
    svc: &Service,
    req: &CreateTaskRequest,
    creq: &ContainerRequest,
) -> Result<(Arc<Pod>, SharedRootfs)> {
    let path = options::config_path(req.options.as_ref())?;
    *svc.config_path.lock().unwrap_or_else(|p| p.into_inner()) = path.clone();
    let mut config = NodeConfig::load(path.as_deref())?;
    check_annotations(&creq.annotations, &config)?;
    size_vm(&mut config, creq.sizing()?, &svc.log)?;
    let mut devices = creq.devices.clone();
    if creq.kind == Kind::PodSandbox {
        devices.add_cdi(kubelet_devices(creq, &config, &svc.log).await?);
    }
    // The pod's own initdata, else the node's (when a KBS is configured).
    let initdata = match creq.initdata()? {
        Some(doc) => Some(doc),
        None => config.vm.attestation.node_initdata(),
    };
    let secrets = creq.secrets()?;
    let models = creq.models()?;
    // A refusal waits until the launch plan has checked the host and the
    // configuration (a host that cannot run the TEE says so first).
    let (layers, refusal) = match super::super::layers::decide(&config, initdata.as_deref(), &svc.log) {
        Ok(super::super::layers::RootfsSource::Shared) => (None, None),
        Ok(super::super::layers::RootfsSource::Verified) => match svc.containerd.clone() {
            Some(api) => (Some(api), None),
            None => (None, Some(ShimError::FailedPrecondition(
                "verified layers need containerd's API, and this shim was not started by containerd (no -address)".into(),
            ))),
        },
        Err(e) => (None, Some(e)),
    };
    let resolved = devices.resolve(&config.vm)?;
    let dir = PodDir::create(&config.vm.runtime.state_dir, &creq.id)?;
    let rootfs = SharedRootfs::mount(
        &dir.shared,
        &creq.id,
        (layers.is_none() && refusal.is_none()).then_some(&creq.rootfs),
        &creq.guest.binds,
    )?;
    // Recorded before the VM starts: if this shim dies during the launch,
    // containerd's `delete` finds the pod directory and the processes the
    // VM records as it starts them, and removes everything.
    Record {
        pod_dir: dir.path().to_path_buf(),
        rootfs: rootfs.target.clone(),
        owns_vm: creq.kind.owns_vm(),
    }
    .write(&creq.bundle)
    .map_err(|e| {
        ShimError::io(
            format!(
                "write {}",
                creq.bundle.join(super::super::record::FILE).display()
            ),
            e,
        )
    })?;
    let launch = PodLaunch {
        id: &creq.id,
        netns: creq.netns.clone(),
        hostname: &creq.hostname,
        devices: resolved,
        initdata,
        secrets,
        models,
        layers,
        refusal,
    };
    let pod = Pod::launch(launch, config, dir, &svc.log).await?;
    Ok((pod, rootfs))
}

async fn create_in_pod(
    svc: &Service,
    creq: &ContainerRequest,
    pod: &Arc<Pod>,
    rootfs: SharedRootfs,
) -> Result<Arc<Container>> {
    let mut guest = creq.guest.clone();
    guest.share_pod_namespaces(match &creq.kind {
        Kind::PodContainer { sandbox_id } => Some((sandbox_id.as_str(), pod.vm_pid)),
        _ => None,
    });
    let mut areq = CreateContainerRequest::new();
    areq.container_id = creq.id.clone();
    areq.rootfs = rootfs.guest_path.clone();
    areq.oci_spec = guest.to_json()?;
    // The pod's sealed models, for its application containers (a CRI
    // sandbox's pause container has no use for them).
    if creq.kind != Kind::PodSandbox {
        areq.models = pod.models.clone().into_iter().collect();
    }
    if let Some(layers) = &pod.layers {
        areq.layers = layers.for_container(&creq.id, &svc.log).await?;
    }
    for note in &guest.notes {
        slog::warn!(svc.log, "the guest differs from runc here"; "container" => &creq.id, "note" => note);
    }
    let reply = pod.guest.create_container_reply(&areq).await?;
    for m in &reply.models {
        let secs = (m.millis as f64 / 1000.0).max(0.001);
        info!(svc.log, "sealed model decrypted in the guest"; "container" => &creq.id,
              "model" => &m.name, "bytes" => m.bytes, "ms" => m.millis,
              "mib_per_s" => format!("{:.1}", m.bytes as f64 / 1048576.0 / secs));
    }
    let guest_pid = reply.pid;
    let init = Arc::new(Proc::new(
        ProcessRef::init(&creq.id),
        pod.vm_pid,
        guest_pid,
        creq.stdio.clone(),
    ));
    let attached = async {
        attach_io(svc, pod, &init).await?;
        let record = Record {
            pod_dir: pod.dir.clone(),
            rootfs: rootfs.target.clone(),
            owns_vm: creq.kind.owns_vm(),
        };
        record.write(&creq.bundle).map_err(|e| {
            ShimError::io(
                format!(
                    "write {}",
                    creq.bundle.join(super::super::record::FILE).display()
                ),
                e,
            )
        })
    };
    if let Err(e) = attached.await {
        init.abort_io();
        let _ = pod.guest.remove_container(&creq.id).await;
        return Err(e);
    }
    Ok(Arc::new(Container {
        id: creq.id.clone(),
        bundle: creq.bundle.clone(),
        kind: creq.kind.clone(),
        rootfs: rootfs.keep(),
        init,
        execs: Default::default(),
    }))
}

/// Connects a process's fifos to its agent streams.
pub(super) async fn attach_io(svc: &Service, pod: &Pod, p: &Proc) -> Result<()> {
    let mut tasks = Vec::new();
    let outputs = [
        (StdioStream::STDOUT, &p.stdio.stdout, true),
        (StdioStream::STDERR, &p.stdio.stderr, !p.stdio.terminal),
    ];
    for (stream, path, wanted) in outputs {
        if wanted && !path.is_empty() {
            tasks.push(
                io::spawn_output(
                    pod.guest.clone(),
                    p.target.clone(),
                    stream,
                    Path::new(path),
                    svc.log.clone(),
                )
                .await?,
            );
        }
    }
    *p.io_tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
    if p.stdio.stdin.is_empty() {
        let _ = pod.guest.close_stdin(&p.target).await;
    } else {
        let t = io::spawn_input(
            pod.guest.clone(),
            p.target.clone(),
            Path::new(&p.stdio.stdin),
            svc.log.clone(),
        )
        .await?;
        *p.stdin_task.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
    }
    Ok(())
}

/// Devices the kubelet's device plugins allocated to the pod, as CDI
/// names, when `runtime.pod_resources_socket` is set and exists.
async fn kubelet_devices(
    creq: &ContainerRequest,
    config: &NodeConfig,
    log: &slog::Logger,
) -> Result<Vec<String>> {
    let Some(sock) = &config.policy.pod_resources_socket else {
        return Ok(Vec::new());
    };
    if !sock.exists() {
        slog::warn!(log, "runtime.pod_resources_socket does not exist; devices come from the pod spec only"; "socket" => sock.display().to_string());
        return Ok(Vec::new());
    }
    let Some(pod) = &creq.pod else {
        return Ok(Vec::new());
    };
    let (namespace, name) = (&pod.namespace, &pod.name);
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
