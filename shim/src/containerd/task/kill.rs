//! `Kill`: signals a process (or, with `all`, every process of the
//! container) in the guest.

use std::time::Duration;

use cocoon_protocol::agent::SignalProcessRequest;
use cocoon_vmm::agent::ctx;
use containerd_shim_protos::api::{KillRequest, Status};
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;

use super::super::error::{Result, ShimError};
use super::super::process::Exit;
use super::super::publisher::now;
use super::Service;

pub(super) async fn kill(svc: &Service, req: &KillRequest) -> Result<Empty> {
    let (_, p) = svc.proc(&req.id, &req.exec_id)?;
    if p.status() == Status::STOPPED {
        return Err(ShimError::NotFound(format!(
            "process {:?} of {:?} (it already finished)",
            req.exec_id, req.id
        )));
    }
    let pod = svc.current_pod().await?;
    if pod.is_dead() {
        return Ok(Empty::new());
    }
    let mut sreq = SignalProcessRequest::new();
    sreq.container_id = req.id.clone();
    sreq.exec_id = req.exec_id.clone();
    sreq.signal = req.signal;
    sreq.all = req.all;
    pod.agent
        .signal_process(ctx(Duration::from_secs(10)), &sreq)
        .await
        .map_err(|e| ShimError::agent("signal the process in the guest", e))?;
    if p.status() == Status::CREATED && (req.signal == 9 || req.signal == 15) {
        // Never started, so no waiter runs: record the end here.
        p.set_exited(Exit {
            status: 128 + req.signal,
            at: now(),
        });
    }
    Ok(Empty::new())
}
