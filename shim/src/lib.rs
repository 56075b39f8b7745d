//! The Cocoon host binaries' code.
//!
//! - [`cli`]: the `cocoon` admin CLI (`run`, `config`).
//! - [`containerd`]: the `containerd-shim-cocoon-v2` shim.
//! - [`logging`]: slog setup.
//! - [`node`]: the node configuration with the shim's own policy keys.

pub mod cli;
pub mod containerd;
pub mod logging;
pub mod node;

/// The tokio runtime both binaries use: two workers (VM work is mostly
/// waiting), all drivers on.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}
