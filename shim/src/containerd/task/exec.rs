//! `Exec`: adds a process to a running container (created, not started).

use std::sync::Arc;

use cocoon_protocol::client::ProcessRef;
use containerd_shim_protos::api::{ExecProcessRequest, Status};
use containerd_shim_protos::events::task::TaskExecAdded;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use oci_spec::runtime::Process;

use super::super::error::{Result, ShimError};
use super::super::process::{Proc, StdioPaths};
use super::super::publisher::Event;
use super::super::request;
use super::create::attach_io;
use super::Service;

pub(super) async fn exec(svc: &Service, req: &ExecProcessRequest) -> Result<Empty> {
    let c = svc.container(&req.id)?;
    if req.exec_id.is_empty() {
        return Err(ShimError::Invalid {
            field: "exec_id".into(),
            problem: "is empty".into(),
        });
    }
    if c.proc(&req.exec_id).is_some() {
        return Err(ShimError::AlreadyExists(format!(
            "exec {:?} in {:?}",
            req.exec_id, req.id
        )));
    }
    if c.init.status() != Status::RUNNING {
        return Err(ShimError::FailedPrecondition(format!(
            "container {:?} is not running",
            req.id
        )));
    }
    let spec_any = req.spec.as_ref().ok_or_else(|| ShimError::Invalid {
        field: "spec".into(),
        problem: "is missing".into(),
    })?;
    let oci: Process = serde_json::from_slice(&spec_any.value).map_err(|e| ShimError::Invalid {
        field: "spec".into(),
        problem: format!("not an OCI process: {e}"),
    })?;
    request::check_process(&oci)?;
    let mut oci = oci;
    oci.set_terminal(Some(req.terminal));
    let process = serde_json::to_vec(&oci).map_err(|e| ShimError::Invalid {
        field: "spec".into(),
        problem: e.to_string(),
    })?;
    let pod = svc.live_pod("exec").await?;
    let target = ProcessRef {
        container_id: req.id.clone(),
        exec_id: req.exec_id.clone(),
    };
    let guest_pid = pod.guest.exec(&target, process).await?;
    let p = Arc::new(Proc::new(
        target,
        pod.vm_pid,
        guest_pid,
        StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        },
    ));
    attach_io(svc, &pod, &p).await?;
    c.execs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(req.exec_id.clone(), p);
    let mut ev = TaskExecAdded::new();
    ev.container_id = req.id.clone();
    ev.exec_id = req.exec_id.clone();
    svc.publisher.publish(Event::ExecAdded(ev)).await;
    Ok(Empty::new())
}
