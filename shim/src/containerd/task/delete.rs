//! `Delete`: removes an exec, or a stopped container (its guest state, its
//! rootfs mount and directory); deleting the container that owns the VM
//! (the pod sandbox, or a single container) stops the VM.

use containerd_shim_protos::api::{DeleteRequest, DeleteResponse, Status};
use containerd_shim_protos::events::task::TaskDelete;
use slog::{info, warn};

use super::super::error::{Result, ShimError};
use super::super::publisher::Event;
use super::super::request::Kind;
use super::super::rootfs;
use super::Service;

pub(super) async fn delete(svc: &Service, req: &DeleteRequest) -> Result<DeleteResponse> {
    let (c, p) = svc.proc(&req.id, &req.exec_id)?;
    let exit = match p.exit() {
        Some(e) => e,
        None if p.status() == Status::CREATED => super::super::process::Exit {
            status: 0,
            at: super::super::publisher::now(),
        },
        None => {
            return Err(ShimError::FailedPrecondition(format!(
                "process {:?} of {:?} is still running; kill it first",
                req.exec_id, req.id
            )))
        }
    };
    let pod = svc.current_pod().await?;
    p.abort_io();
    if !req.exec_id.is_empty() {
        if !pod.is_dead() {
            let _ = pod.guest.remove_process(&p.target).await;
        }
        c.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&req.exec_id);
    } else {
        for e in c.procs() {
            e.abort_io();
        }
        if !pod.is_dead() {
            if let Err(e) = pod.guest.remove_container(&req.id).await {
                warn!(svc.log, "removing the container in the guest"; "id" => &req.id, "error" => e.to_string());
            }
        }
        svc.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&req.id);
        if matches!(c.kind, Kind::PodContainer { .. }) {
            rootfs::remove_unmounted(&pod.shared.join(&req.id))?;
        } else {
            // The VM goes with the sandbox: stop it, then unmount everything.
            let leftovers: Vec<String> = svc
                .containers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .cloned()
                .collect();
            if !leftovers.is_empty() {
                warn!(svc.log, "stopping the VM with containers left"; "containers" => format!("{leftovers:?}"));
            }
            pod.shutdown().await;
            svc.pod.lock().await.take();
        }
        let _ = std::fs::remove_file(c.bundle.join(super::super::record::FILE));
        let mut ev = TaskDelete::new();
        ev.container_id = req.id.clone();
        ev.id = req.id.clone();
        ev.pid = p.pid;
        ev.exit_status = exit.status;
        ev.exited_at = Some(exit.at.clone()).into();
        svc.publisher.publish(Event::Delete(ev)).await;
        info!(svc.log, "container deleted"; "id" => &req.id);
    }
    let mut r = DeleteResponse::new();
    r.pid = p.pid;
    r.exit_status = exit.status;
    r.exited_at = Some(exit.at).into();
    Ok(r)
}
