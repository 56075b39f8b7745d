//! `Kill`: signals a process (or, with `all`, every process of the
//! container) in the guest.

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
    if pod.is_paused() {
        // As runc thaws a frozen container to kill it: the signal can only
        // be delivered by a running guest (`ctr task rm -f` of a paused
        // task works).
        slog::info!(svc.log, "resuming the paused VM to deliver a signal"; "id" => &req.id, "signal" => req.signal);
        super::lifecycle::resume_all(svc, &pod).await?;
    }
    pod.guest.signal(&p.target, req.signal, req.all).await?;
    if p.status() == Status::CREATED && (req.signal == 9 || req.signal == 15) {
        // Never started, so no waiter runs: record the end here.
        p.set_exited(Exit {
            status: 128 + req.signal,
            at: now(),
        });
    }
    Ok(Empty::new())
}
