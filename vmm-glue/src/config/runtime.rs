//! `[runtime]`: where VM state lives and how verbose the logs are. (The
//! shim's own keys of this section — the annotation allow-list and the
//! kubelet socket — are read and checked by the shim.)

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Invalid};

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Progress.
    Info,
    /// Details.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The slog level.
    pub fn to_slog(self) -> slog::Level {
        match self {
            Self::Error => slog::Level::Error,
            Self::Warn => slog::Level::Warning,
            Self::Info => slog::Level::Info,
            Self::Debug => slog::Level::Debug,
            Self::Trace => slog::Level::Trace,
        }
    }
}

/// `[runtime]` as written. Keys this crate does not own are kept in
/// `other` for the shim, which rejects unknown ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[allow(missing_docs)] // keys are documented in configs/cocoon-dev.toml
pub struct RawRuntime {
    pub state_dir: PathBuf,
    pub log_level: LogLevel,
    #[serde(flatten)]
    pub other: toml::Table,
}

impl Default for RawRuntime {
    fn default() -> Self {
        Self {
            state_dir: "/run/cocoon".into(),
            log_level: LogLevel::Info,
            other: toml::Table::new(),
        }
    }
}

/// Validated `[runtime]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// State directory.
    pub state_dir: PathBuf,
    /// Log level.
    pub log_level: LogLevel,
}

impl RawRuntime {
    /// Validates the section.
    pub(super) fn validate(&self, invalid: &Invalid<'_>) -> Result<RuntimeConfig, ConfigError> {
        Ok(RuntimeConfig {
            state_dir: invalid.absolute("runtime.state_dir", &self.state_dir)?,
            log_level: self.log_level,
        })
    }
}
