//! The containerd Task service: `Service` holds the pod and its containers;
//! each RPC lives in its own file.

mod create;
mod delete;
mod exec;
mod kill;
mod lifecycle;
mod query;
mod stdio;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use containerd_shim_protos::api::*;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::shim_async::Task;
use slog::{debug, Logger};
use tokio::sync::watch;
use ttrpc::r#async::TtrpcContext;

use super::error::{Result, ShimError};
use super::pod::Pod;
use super::process::{Container, Proc};
use super::publisher::Publisher;

/// The shim's state: at most one pod VM and its containers.
pub struct Service {
    pub(crate) pod: tokio::sync::Mutex<Option<Arc<Pod>>>,
    pub(crate) containers: Mutex<HashMap<String, Arc<Container>>>,
    pub(crate) publisher: Publisher,
    pub(crate) log: Logger,
    /// Node config path from the runtime options, if containerd sent one.
    pub(crate) config_path: Mutex<Option<PathBuf>>,
    /// containerd's API (the image of a container, for verified layers).
    pub(crate) containerd: Option<super::images::Containerd>,
    exit: watch::Sender<bool>,
}

impl Service {
    /// A service with no pod yet.
    pub fn new(publisher: Publisher, log: Logger) -> Self {
        Self {
            pod: tokio::sync::Mutex::new(None),
            containers: Mutex::default(),
            publisher,
            log,
            config_path: Mutex::default(),
            containerd: None,
            exit: watch::channel(false).0,
        }
    }

    /// With containerd's API at `address` (the shim's `-address`), in
    /// `namespace`.
    pub fn with_containerd(mut self, address: &str, namespace: &str) -> Self {
        self.containerd = super::images::Containerd::connect(address, namespace).ok();
        self
    }

    /// Resolves when the shim should exit (after `Shutdown`).
    pub async fn exited(&self) {
        let mut rx = self.exit.subscribe();
        let _ = rx.wait_for(|e| *e).await;
    }

    pub(crate) fn container(&self, id: &str) -> Result<Arc<Container>> {
        self.containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(format!("container {id:?}")))
    }

    pub(crate) fn proc(&self, id: &str, exec_id: &str) -> Result<(Arc<Container>, Arc<Proc>)> {
        let c = self.container(id)?;
        let p = c.proc(exec_id).ok_or_else(|| {
            ShimError::NotFound(format!("process {exec_id:?} of container {id:?}"))
        })?;
        Ok((c, p))
    }

    pub(crate) async fn current_pod(&self) -> Result<Arc<Pod>> {
        self.pod
            .lock()
            .await
            .clone()
            .ok_or_else(|| ShimError::FailedPrecondition("this shim has no running VM".into()))
    }

    /// The pod, when its guest can answer: a request to a paused VM fails
    /// at once (the guest would not reply until `resume`) instead of timing
    /// out and leaving a late reply on the connection.
    pub(crate) async fn live_pod(&self, what: &str) -> Result<Arc<Pod>> {
        let pod = self.current_pod().await?;
        if pod.is_paused() {
            return Err(ShimError::FailedPrecondition(format!(
                "cannot {what}: the pod's VM is paused; resume it first (ctr task resume)"
            )));
        }
        Ok(pod)
    }

    fn request_exit(&self) {
        self.exit.send_replace(true);
    }
}

macro_rules! rpc {
    ($self:ident, $name:literal, $req:ident, $call:expr) => {{
        debug!($self.log, concat!("rpc ", $name); "id" => $req.id.clone());
        let r: Result<_> = $call.await;
        if let Err(e) = &r {
            debug!($self.log, concat!("rpc ", $name, " failed"); "error" => e.full_message());
        }
        Ok(r?)
    }};
}

#[async_trait]
impl Task for Service {
    async fn create(
        &self,
        _: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        rpc!(self, "create", req, create::create(self, &req))
    }

    async fn start(&self, _: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        rpc!(self, "start", req, lifecycle::start(self, &req))
    }

    async fn state(&self, _: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        rpc!(self, "state", req, query::state(self, &req))
    }

    async fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        rpc!(self, "wait", req, lifecycle::wait(self, &req))
    }

    async fn kill(&self, _: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        rpc!(self, "kill", req, kill::kill(self, &req))
    }

    async fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        rpc!(self, "delete", req, delete::delete(self, &req))
    }

    async fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        rpc!(self, "pids", req, query::pids(self, &req))
    }

    async fn connect(
        &self,
        _: &TtrpcContext,
        req: ConnectRequest,
    ) -> ttrpc::Result<ConnectResponse> {
        rpc!(self, "connect", req, query::connect(self, &req))
    }

    async fn shutdown(&self, _: &TtrpcContext, req: ShutdownRequest) -> ttrpc::Result<Empty> {
        rpc!(self, "shutdown", req, lifecycle::shutdown(self, &req))
    }

    async fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        rpc!(self, "exec", req, exec::exec(self, &req))
    }

    async fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        rpc!(self, "resize_pty", req, stdio::resize_pty(self, &req))
    }

    async fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        rpc!(self, "close_io", req, stdio::close_io(self, &req))
    }

    async fn pause(&self, _: &TtrpcContext, req: PauseRequest) -> ttrpc::Result<Empty> {
        rpc!(self, "pause", req, lifecycle::pause(self, &req))
    }

    async fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> ttrpc::Result<Empty> {
        rpc!(self, "resume", req, lifecycle::resume(self, &req))
    }

    async fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        rpc!(self, "stats", req, query::stats(self, &req))
    }

    async fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        rpc!(self, "update", req, query::update(self, &req))
    }

    async fn checkpoint(
        &self,
        _: &TtrpcContext,
        req: CheckpointTaskRequest,
    ) -> ttrpc::Result<Empty> {
        rpc!(self, "checkpoint", req, async {
            Err::<Empty, _>(ShimError::Unsupported(
                "checkpoint",
                "confidential VM memory cannot be exported",
            ))
        })
    }
}
