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

/// Directories of the system that must never be a state directory: Cocoon
/// makes what it creates there root-only and removes it on delete.
const SYSTEM_DIRS: &[&str] = &[
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc", "/root",
    "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/var/lib", "/var/run", "/var/tmp",
];

/// A dedicated directory: not a system directory, no NUL, every component
/// a valid file name.
fn check_state_dir(dir: &std::path::Path) -> Result<(), super::Problem> {
    use std::os::unix::ffi::OsStrExt;
    let shown = format!("{dir:?}");
    let bytes = dir.as_os_str().as_bytes();
    let normalized = dir.components().collect::<std::path::PathBuf>();
    if SYSTEM_DIRS
        .iter()
        .any(|s| normalized == std::path::Path::new(s))
    {
        return Err(super::Problem::new(
            "runtime.state_dir",
            shown,
            "is a system directory; use a directory of its own such as /run/cocoon",
        ));
    }
    if bytes.contains(&0) {
        return Err(super::Problem::new(
            "runtime.state_dir",
            shown,
            "contains a NUL byte",
        ));
    }
    if dir.components().any(|c| c.as_os_str().len() > 255)
        || dir
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(super::Problem::new(
            "runtime.state_dir",
            shown,
            "must be a plain path (no `..`, each name at most 255 bytes)",
        ));
    }
    Ok(())
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
        let state_dir = invalid.absolute("runtime.state_dir", &self.state_dir)?;
        check_state_dir(&state_dir).map_err(|p| invalid.of(p))?;
        Ok(RuntimeConfig {
            state_dir,
            log_level: self.log_level,
        })
    }
}
