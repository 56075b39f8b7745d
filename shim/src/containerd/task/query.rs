//! `State`, `Pids`, `Connect`, `Stats`.

use std::time::Duration;

use cocoon_protocol::agent::ListProcessesRequest;
use cocoon_vmm::agent::ctx;
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
    let pod = svc.current_pod().await?;
    let mut l = ListProcessesRequest::new();
    l.container_id = req.id.clone();
    let pids = pod
        .agent
        .list_processes(ctx(Duration::from_secs(10)), &l)
        .await
        .map_err(|e| ShimError::agent("list processes in the guest", e))?
        .pids;
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

pub(super) async fn stats(svc: &Service, req: &StatsRequest) -> Result<StatsResponse> {
    let _ = svc.container(&req.id)?;
    Err(ShimError::Unsupported(
        "stats",
        "guest metrics are not collected yet",
    ))
}
