//! `Start`, `Wait`, `Pause`, `Resume`, `Shutdown`, and the waiter that turns
//! a guest exit into `TaskExit`.

use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::api::*;
use containerd_shim_protos::events::task::{
    TaskExecStarted, TaskExit, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use slog::{info, warn};

use super::super::error::{Result, ShimError};
use super::super::pod::Pod;
use super::super::process::{Exit, Proc};
use super::super::publisher::{now, Event, Publisher};
use super::Service;

/// Exit status reported when the VM died under a running process.
pub const VM_DIED_STATUS: u32 = 255;

pub(super) async fn start(svc: &Service, req: &StartRequest) -> Result<StartResponse> {
    let (_, p) = svc.proc(&req.id, &req.exec_id)?;
    if p.status() != Status::CREATED {
        return Err(ShimError::FailedPrecondition(format!(
            "process {:?} of {:?} was started already",
            req.exec_id, req.id
        )));
    }
    let pod = svc.live_pod("start the process").await?;
    pod.guest.start(&p.target).await?;
    p.set_status(Status::RUNNING);
    spawn_waiter(pod, p.clone(), svc.publisher.clone(), svc.log.clone());
    if req.exec_id.is_empty() {
        let mut ev = TaskStart::new();
        ev.container_id = req.id.clone();
        ev.pid = p.pid;
        svc.publisher.publish(Event::Start(ev)).await;
    } else {
        let mut ev = TaskExecStarted::new();
        ev.container_id = req.id.clone();
        ev.exec_id = req.exec_id.clone();
        ev.pid = p.pid;
        svc.publisher.publish(Event::ExecStarted(ev)).await;
    }
    let mut r = StartResponse::new();
    r.pid = p.pid;
    Ok(r)
}

/// Waits for the guest process (or the VM's death), lets the output drain,
/// records the exit and publishes `TaskExit`.
fn spawn_waiter(pod: Arc<Pod>, p: Arc<Proc>, publisher: Publisher, log: slog::Logger) {
    tokio::spawn(async move {
        let (status, oom) = tokio::select! {
            r = pod.guest.wait_status(&p.target) => match r {
                Ok(r) => (u32::try_from(r.exit_status).unwrap_or(VM_DIED_STATUS), r.oom_killed),
                Err(_) => (VM_DIED_STATUS, false),
            },
            () = pod.died() => (VM_DIED_STATUS, false),
        };
        if oom {
            warn!(log, "out of memory: the kernel killed a process of the container (its memory limit)"; "id" => &p.target.container_id);
            // Before the exit, as runc's shim does: CRI marks the exit
            // `OOMKilled` when the event came first.
            let mut ev = containerd_shim_protos::events::task::TaskOOM::new();
            ev.container_id = p.target.container_id.clone();
            publisher.publish(Event::Oom(ev)).await;
        }
        // Output written just before the exit is still on its way.
        let tasks: Vec<_> = p
            .io_tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for t in tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        let exit = Exit { status, at: now() };
        if p.set_exited(exit.clone()) {
            info!(log, "process exited"; "id" => &p.target.container_id, "exec" => &p.target.exec_id, "status" => status);
            let mut ev = TaskExit::new();
            ev.container_id = p.target.container_id.clone();
            ev.id = if p.target.exec_id.is_empty() {
                p.target.container_id.clone()
            } else {
                p.target.exec_id.clone()
            };
            ev.pid = p.pid;
            ev.exit_status = status;
            ev.exited_at = Some(exit.at).into();
            publisher.publish(Event::Exit(ev)).await;
        }
    });
}

pub(super) async fn wait(svc: &Service, req: &WaitRequest) -> Result<WaitResponse> {
    let (_, p) = svc.proc(&req.id, &req.exec_id)?;
    let exit = p.wait().await;
    let mut r = WaitResponse::new();
    r.exit_status = exit.status;
    r.exited_at = Some(exit.at).into();
    Ok(r)
}

pub(super) async fn pause(svc: &Service, req: &PauseRequest) -> Result<Empty> {
    let c = svc.container(&req.id)?;
    let pod = svc.current_pod().await?;
    pod.pause().await?;
    for p in c.procs() {
        if p.status() == Status::RUNNING {
            p.set_status(Status::PAUSED);
        }
    }
    let mut ev = TaskPaused::new();
    ev.container_id = req.id.clone();
    svc.publisher.publish(Event::Paused(ev)).await;
    Ok(Empty::new())
}

pub(super) async fn resume(svc: &Service, req: &ResumeRequest) -> Result<Empty> {
    let c = svc.container(&req.id)?;
    let pod = svc.current_pod().await?;
    pod.resume().await?;
    for p in c.procs() {
        if p.status() == Status::PAUSED {
            p.set_status(Status::RUNNING);
        }
    }
    let mut ev = TaskResumed::new();
    ev.container_id = req.id.clone();
    svc.publisher.publish(Event::Resumed(ev)).await;
    Ok(Empty::new())
}

/// Resumes the pod's VM and marks every paused process of every container
/// running again, with a `TaskResumed` event per container.
pub(super) async fn resume_all(svc: &Service, pod: &Pod) -> Result<()> {
    pod.resume().await?;
    let containers: Vec<_> = svc
        .containers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    for c in containers {
        let mut was_paused = false;
        for p in c.procs() {
            if p.status() == Status::PAUSED {
                p.set_status(Status::RUNNING);
                was_paused = true;
            }
        }
        if was_paused {
            let mut ev = TaskResumed::new();
            ev.container_id = c.id.clone();
            svc.publisher.publish(Event::Resumed(ev)).await;
        }
    }
    Ok(())
}

pub(super) async fn shutdown(svc: &Service, _req: &ShutdownRequest) -> Result<Empty> {
    if svc
        .containers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .is_empty()
    {
        if let Some(pod) = svc.pod.lock().await.take() {
            pod.shutdown().await;
        }
        svc.request_exit();
    }
    Ok(Empty::new())
}
