//! `cocoon-agent`: PID 1 of a Cocoon guest.
//!
//! As PID 1 it mounts the pseudo file systems, loads the kernel modules the
//! initrd lists, reaps every process, and serves the Cocoon agent API
//! (`cocoon-protocol`) on AF_VSOCK port 1024. It can also run as an ordinary
//! process for tests: `cocoon-agent --listen unix:///path --shared-dir DIR`.
//!
//! Modules:
//! - [`init`]: PID 1 duties (mounts, modules, power-off).
//! - [`service`]: the ttrpc service, one method per RPC.
//! - [`container`]: containers and processes.
//! - [`spawn`]: creating processes in namespaces (`spawn::child` is the code
//!   between clone and exec).
//! - [`stdio`]: pumping a process's stdio.
//! - [`reaper`]: exit statuses.
//! - [`error`]: the error type and its ttrpc status mapping.

mod cgroup;
mod container;
mod devices;
mod error;
mod init;
mod initdata;
mod kbs;
mod layers;
mod models;
mod network;
mod oci;
mod policy;
mod reaper;
mod sealed;
mod secrets;
mod service;
mod spawn;
mod stdio;
mod tsm;

use std::path::PathBuf;
use std::sync::Arc;

use cocoon_protocol::AGENT_VSOCK_PORT;

/// One line to the agent's log (the guest console, which the host keeps).
pub(crate) fn log(msg: &str) {
    eprintln!("cocoon-agent: {msg}");
}

struct Args {
    listen: String,
    shared_dir: PathBuf,
    cgroup_root: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: format!("vsock://-1:{AGENT_VSOCK_PORT}"),
        shared_dir: PathBuf::from(service::SHARED_DIR),
        cgroup_root: (std::process::id() == 1).then(|| PathBuf::from(cgroup::DEFAULT_ROOT)),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--listen" => args.listen = it.next().ok_or("--listen needs an address")?,
            "--shared-dir" => args.shared_dir = it.next().ok_or("--shared-dir needs a directory")?.into(),
            "--cgroup-root" => args.cgroup_root = Some(it.next().ok_or("--cgroup-root needs a cgroup v2 directory")?.into()),
            "--version" => {
                println!("cocoon-agent {} (protocol {})", env!("CARGO_PKG_VERSION"), cocoon_protocol::PROTOCOL_VERSION);
                std::process::exit(0);
            }
            // The kernel passes unknown command-line words to init.
            _ if std::process::id() == 1 => {}
            other => return Err(format!("unknown argument {other:?}; usage: cocoon-agent [--listen ADDR] [--shared-dir DIR] [--cgroup-root DIR]")),
        }
    }
    Ok(args)
}

async fn serve(args: Args, pid1: bool) -> Result<(), String> {
    let reaper = Arc::new(reaper::Reaper::default());
    tokio::spawn(reaper.clone().run());
    let cgroups = args.cgroup_root.as_deref().and_then(cgroup::Cgroups::init);
    if cgroups.is_none() {
        eprintln!("cocoon-agent: no cgroup v2: containers run without resource limits");
    }
    let svc = service::AgentService::new(reaper, args.shared_dir, pid1, cgroups);
    let services = cocoon_protocol::agent_ttrpc::create_agent(Arc::new(svc));
    let mut server = ttrpc::r#async::Server::new()
        .bind(&args.listen)
        .map_err(|e| format!("listen on {}: {e}", args.listen))?
        .register_service(services);
    server
        .start()
        .await
        .map_err(|e| format!("start server: {e}"))?;
    eprintln!("cocoon-agent: serving on {}", args.listen);
    std::future::pending::<()>().await;
    Ok(())
}

fn main() {
    let pid1 = std::process::id() == 1;
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cocoon-agent: {e}");
            std::process::exit(2);
        }
    };
    if pid1 {
        init::early_mounts();
        init::load_modules(std::path::Path::new(init::MODULE_LOAD_ORDER));
        init::loopback_up();
        init::raise_nofile();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cocoon-agent: cannot start the runtime: {e}");
            init::power_off(pid1);
            return;
        }
    };
    if let Err(e) = rt.block_on(serve(args, pid1)) {
        eprintln!("cocoon-agent: {e}");
        init::power_off(pid1);
    }
}
