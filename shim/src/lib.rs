//! The Cocoon host binaries' code.
//!
//! - [`cli`]: the `cocoon` admin CLI (`run`, `config`).
//! - [`logging`]: slog setup.

pub mod cli;
pub mod logging;
