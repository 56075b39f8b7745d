//! The Cocoon host binaries' code.
//!
//! - [`cli`]: the `cocoon` admin CLI (`run`, `config`).
//! - [`containerd`]: the `containerd-shim-cocoon-v2` shim.
//! - [`logging`]: slog setup.

pub mod cli;
pub mod containerd;
pub mod logging;
