//! `ResizePty` and `CloseIO`.

use std::time::Duration;

use cocoon_protocol::agent::ResizeTtyRequest;
use cocoon_vmm::agent::ctx;
use containerd_shim_protos::api::{CloseIORequest, ResizePtyRequest};
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;

use super::super::error::{Result, ShimError};
use super::super::io;
use super::Service;

pub(super) async fn resize_pty(svc: &Service, req: &ResizePtyRequest) -> Result<Empty> {
    let (_, p) = svc.proc(&req.id, &req.exec_id)?;
    if !p.stdio.terminal {
        return Err(ShimError::FailedPrecondition(format!(
            "process {:?} of {:?} has no terminal",
            req.exec_id, req.id
        )));
    }
    let pod = svc.current_pod().await?;
    let mut r = ResizeTtyRequest::new();
    r.container_id = req.id.clone();
    r.exec_id = req.exec_id.clone();
    r.rows = req.height;
    r.cols = req.width;
    pod.agent
        .resize_tty(ctx(Duration::from_secs(10)), &r)
        .await
        .map_err(|e| ShimError::agent("resize the terminal in the guest", e))?;
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
        let pod = svc.current_pod().await?;
        io::close_stdin(&pod.agent, &p.target).await;
    }
    Ok(Empty::new())
}
