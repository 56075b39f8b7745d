//! `ResizePty` and `CloseIO`.

use std::time::Duration;

use containerd_shim_protos::api::{CloseIORequest, ResizePtyRequest};
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;

use super::super::error::{Result, ShimError};
use super::Service;

pub(super) async fn resize_pty(svc: &Service, req: &ResizePtyRequest) -> Result<Empty> {
    let (_, p) = svc.proc(&req.id, &req.exec_id)?;
    if !p.stdio.terminal {
        return Err(ShimError::FailedPrecondition(format!(
            "process {:?} of {:?} has no terminal",
            req.exec_id, req.id
        )));
    }
    let pod = svc.live_pod("resize the terminal").await?;
    pod.guest.resize(&p.target, req.height, req.width).await?;
    Ok(Empty::new())
}

pub(super) async fn close_io(svc: &Service, req: &CloseIORequest) -> Result<Empty> {
    let (_, p) = svc.proc(&req.id, &req.exec_id)?;
    if req.stdin {
        // Let the copy finish what it read, then close the guest side.
        let task = p
            .stdin_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(t) = task {
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        let pod = svc.live_pod("close stdin").await?;
        let _ = pod.guest.close_stdin(&p.target).await;
    }
    Ok(Empty::new())
}
