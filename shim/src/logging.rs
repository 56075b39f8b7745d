//! slog loggers: human-readable to stderr for the CLI.

use slog::{Drain, Logger};

/// A terminal logger at `level`.
pub fn stderr(level: slog::Level) -> Logger {
    let decorator = slog_term::TermDecorator::new().stderr().build();
    let drain = slog_term::CompactFormat::new(decorator).build().fuse();
    let drain = slog_async::Async::new(drain).chan_size(1024).build().fuse();
    Logger::root(drain.filter_level(level).fuse(), slog::o!())
}
