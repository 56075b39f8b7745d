//! `State`, `Pids`, `Connect`, `Stats`.

use containerd_shim_protos::api::*;

use super::super::error::{Result, ShimError};
use super::Service;

pub(super) async fn state(svc: &Service, req: &StateRequest) -> Result<StateResponse> {
    let (c, p) = svc.proc(&req.id, &req.exec_id)?;
    let mut r = StateResponse::new();
    r.id = req.id.clone();
    r.exec_id = req.exec_id.clone();
    r.bundle = c.bundle.display().to_string();
    r.pid = p.pid;
    r.status = p.status().into();
    r.stdin = p.stdio.stdin.clone();
    r.stdout = p.stdio.stdout.clone();
    r.stderr = p.stdio.stderr.clone();
    r.terminal = p.stdio.terminal;
    if let Some(e) = p.exit() {
        r.exit_status = e.status;
        r.exited_at = Some(e.at).into();
    }
    Ok(r)
}

pub(super) async fn pids(svc: &Service, req: &PidsRequest) -> Result<PidsResponse> {
    let _ = svc.container(&req.id)?;
    let pod = svc.live_pod("list the processes").await?;
    let pids = pod.guest.list_processes(&req.id).await?;
    let mut r = PidsResponse::new();
    r.processes = pids
        .into_iter()
        .map(|pid| {
            let mut i = containerd_shim_protos::types::task::ProcessInfo::new();
            i.pid = pid;
            i
        })
        .collect();
    Ok(r)
}

pub(super) async fn connect(svc: &Service, req: &ConnectRequest) -> Result<ConnectResponse> {
    let c = svc.container(&req.id)?;
    let mut r = ConnectResponse::new();
    r.shim_pid = std::process::id();
    r.task_pid = c.init.pid;
    r.version = format!("cocoon {}", env!("CARGO_PKG_VERSION"));
    Ok(r)
}

/// Guest-side usage as cgroup v1 metrics (`io.containerd.cgroups.v1.Metrics`),
/// the type `ctr task metrics` and the CRI plugin decode.
pub(super) async fn stats(svc: &Service, req: &StatsRequest) -> Result<StatsResponse> {
    use containerd_shim_protos::cgroups::metrics::{
        CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
    };
    use containerd_shim_protos::protobuf::Message;
    let _ = svc.container(&req.id)?;
    let pod = svc.live_pod("read the stats").await?;
    let s = pod.guest.stats(&req.id).await?;
    let mut m = Metrics::new();
    let mut usage = CPUUsage::new();
    usage.user = s.cpu_user_ns;
    usage.kernel = s.cpu_kernel_ns;
    usage.total = s.cpu_user_ns + s.cpu_kernel_ns;
    let mut cpu = CPUStat::new();
    cpu.usage = Some(usage).into();
    m.cpu = Some(cpu).into();
    let mut entry = MemoryEntry::new();
    entry.usage = s.memory_usage_bytes;
    entry.limit = s.memory_limit_bytes;
    let mut mem = MemoryStat::new();
    mem.rss = s.memory_rss_bytes;
    mem.total_rss = s.memory_rss_bytes;
    mem.usage = Some(entry).into();
    m.memory = Some(mem).into();
    let mut pids = PidsStat::new();
    pids.current = u64::from(s.pids);
    m.pids = Some(pids).into();
    let mut any = containerd_shim_protos::protobuf::well_known_types::any::Any::new();
    any.type_url = "io.containerd.cgroups.v1.Metrics".into();
    any.value = m
        .write_to_bytes()
        .map_err(|e| ShimError::io("encode metrics", std::io::Error::other(e)))?;
    let mut r = StatsResponse::new();
    r.stats = Some(any).into();
    Ok(r)
}

/// `Update`: new `linux.resources` for the container's cgroup in the guest
/// (the VM's vCPUs and memory stay what they were at boot).
pub(super) async fn update(
    svc: &Service,
    req: &containerd_shim_protos::api::UpdateTaskRequest,
) -> Result<containerd_shim_protos::protobuf::well_known_types::empty::Empty> {
    let _ = svc.container(&req.id)?;
    let resources = req.resources.as_ref().ok_or_else(|| ShimError::Invalid {
        field: "resources".into(),
        problem: "is missing".into(),
    })?;
    // Checked here so a malformed document is refused with its field.
    let _: oci_spec::runtime::LinuxResources =
        serde_json::from_slice(&resources.value).map_err(|e| ShimError::Invalid {
            field: "resources".into(),
            problem: format!("not OCI linux.resources: {e}"),
        })?;
    let pod = svc.live_pod("update the resources").await?;
    pod.guest.update(&req.id, resources.value.clone()).await?;
    Ok(containerd_shim_protos::protobuf::well_known_types::empty::Empty::new())
}
