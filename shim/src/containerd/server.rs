//! The long-running shim server: serves the Task API on the socket `start`
//! bound, as both `containerd.task.v2.Task` (containerd 1.6/1.7) and
//! `containerd.task.v3.Task` (containerd 2.x).

use std::sync::Arc;

use containerd_shim_protos::shim_async::create_task;
use slog::{info, Logger};

use super::args::Args;
use super::bootstrap::{LISTEN_FD, LISTEN_FD_ENV};
use super::publisher::Publisher;
use super::task::Service;

const V3: &str = "containerd.task.v3.Task";
const V2: &str = "containerd.task.v2.Task";

/// Serves until `Shutdown`.
pub async fn serve(args: &Args, log: Logger) -> anyhow::Result<()> {
    if std::env::var(LISTEN_FD_ENV).ok().as_deref() != Some(&LISTEN_FD.to_string()) {
        anyhow::bail!("serve is started by `start` with {LISTEN_FD_ENV}={LISTEN_FD}");
    }
    let publisher = Publisher::start(
        std::env::var("TTRPC_ADDRESS").ok(),
        args.namespace.clone(),
        log.clone(),
    );
    let svc = Arc::new(
        Service::new(publisher, log.clone()).with_containerd(&args.address, &args.namespace),
    );
    let mut services = create_task(svc.clone());
    if let Some(v3) = services.remove(V3) {
        let again = create_task(svc.clone()).remove(V3);
        services.insert(V2.into(), v3);
        if let Some(v3) = again {
            services.insert(V3.into(), v3);
        }
    }
    // Not inherited by QEMU and the helpers: the socket must stop
    // listening when this process dies (containerd's `delete` then removes
    // it).
    // SAFETY: fcntl on fd 3, which this process owns.
    unsafe { libc::fcntl(LISTEN_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: fd 3 is the listening socket `start` bound and passed to this
    // process alone; the server takes ownership of it.
    let server = unsafe { ttrpc::r#async::Server::new().add_unix_listener(LISTEN_FD) }?;
    let mut server = server.register_service(services);
    server.start().await?;
    info!(log, "shim serving"; "id" => &args.id, "namespace" => &args.namespace);
    svc.exited().await;
    info!(log, "shim exiting");
    let _ = server.shutdown().await;
    let _ = std::fs::remove_file(super::bootstrap::socket_path(
        &args.address,
        &args.namespace,
        &args.id,
    ));
    Ok(())
}
