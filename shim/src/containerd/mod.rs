//! `containerd-shim-cocoon-v2`: the containerd shim v2.
//!
//! - [`args`]: containerd's flag syntax.
//! - [`bootstrap`]: the `start` action (address, one shim per pod).
//! - [`cleanup`]: the `delete` action (after a dead shim).
//! - [`server`]: the Task API server.
//! - [`task`]: the Task RPCs, one file per verb.
//! - [`pod`]: the pod's VM; [`process`]: containers and processes.
//! - [`request`]: a Create request parsed once (OCI spec, annotations,
//!   devices); [`options`]: containerd's runtime options; [`rootfs`]:
//!   mounting container root filesystems, the cleanup guard.
//! - [`initdata`]: the pod's initdata document from Kata's annotation.
//! - [`io`]: fifo ↔ agent stdio; [`publisher`]: task events.
//! - [`record`]: what `delete` needs, kept in the bundle.

pub mod args;
pub mod bootstrap;
pub mod cleanup;
pub mod error;
pub mod guest_spec;
pub mod images;
pub mod initdata;
pub mod io;
pub mod layers;
pub mod options;
pub mod pod;
pub mod podresources;
pub mod process;
pub mod publisher;
pub mod record;
pub mod request;
pub mod rootfs;
pub mod server;
pub mod syscalls;
pub mod task;

use std::io::Write;

use slog::{Drain, Logger};

/// Logs to the bundle's `log` fifo (which containerd copies into its own
/// log), as JSON lines.
fn fifo_logger(level: slog::Level) -> Logger {
    let path = std::path::Path::new("log");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags_nonblock()
        .open(path)
        .ok();
    let out: Box<dyn Write + Send> = match file {
        Some(f) => Box::new(f),
        None => Box::new(std::io::sink()),
    };
    let drain = slog_json::Json::new(out).add_default_keys().build().fuse();
    let drain = slog_async::Async::new(drain).chan_size(4096).build().fuse();
    Logger::root(
        drain.filter_level(level).fuse(),
        slog::o!("runtime" => "io.containerd.cocoon.v2"),
    )
}

trait NonBlockOpen {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlockOpen for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        // Fails with ENXIO instead of blocking when nobody reads the fifo.
        self.custom_flags(libc::O_NONBLOCK)
    }
}

/// The shim's entry point; returns the exit code.
pub fn main() -> i32 {
    let args = match args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("containerd-shim-cocoon-v2: {e}");
            return 2;
        }
    };
    if args.version {
        println!(
            "containerd-shim-cocoon-v2 {} (agent protocol {})",
            env!("CARGO_PKG_VERSION"),
            cocoon_protocol::PROTOCOL_VERSION
        );
        return 0;
    }
    match args.action.as_str() {
        "start" => match bootstrap::start(&args) {
            Ok(addr) => {
                print!("{addr}");
                0
            }
            Err(e) => {
                eprint!("cocoon: start: {e:#}");
                1
            }
        },
        "delete" => match cleanup::delete(&args) {
            Ok(bytes) => {
                let _ = std::io::stdout().write_all(&bytes);
                0
            }
            Err(e) => {
                eprintln!("cocoon: delete: {e:#}");
                1
            }
        },
        "serve" => {
            let level = match cocoon_vmm::config::Config::load(None) {
                _ if args.debug => slog::Level::Debug,
                Ok(c) => c.runtime.log_level.to_slog(),
                Err(_) => slog::Level::Info,
            };
            let log = fifo_logger(level);
            let rt = match crate::runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    slog::error!(log, "cannot start the runtime"; "error" => e.to_string());
                    return 1;
                }
            };
            let r = rt.block_on(server::serve(&args, log.clone()));
            if let Err(e) = &r {
                slog::error!(log, "shim failed"; "error" => format!("{e:#}"));
            }
            // Give the async logger a moment to flush.
            drop(log);
            std::thread::sleep(std::time::Duration::from_millis(50));
            i32::from(r.is_err())
        }
        "" => {
            eprintln!(
                "containerd-shim-cocoon-v2: no action; containerd runs it with `start` or `delete`"
            );
            2
        }
        other => {
            eprintln!("containerd-shim-cocoon-v2: unknown action {other:?}");
            2
        }
    }
}
