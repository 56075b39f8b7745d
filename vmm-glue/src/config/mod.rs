//! The node configuration (`/etc/cocoon/config.toml`), one file per
//! section, each in two layers: the serde form (`Raw*`, unknown keys
//! rejected, every key defaulted, enumerations as serde enums) and the
//! validated form the rest of Cocoon uses, built by the section's own
//! `validate`.
//!
//! - [`qemu`]: `[hypervisor.qemu]`; [`agent`]: `[agent]`;
//!   [`runtime`]: `[runtime]` (the shim owns some of its keys);
//!   [`measurement`]: `[measurement]`; [`gpu`]: `[gpu]`;
//!   [`attestation`]: `[attestation]`; [`image`]: `[image]`.

pub mod agent;
pub mod attestation;
pub mod gpu;
pub mod image;
pub mod measurement;
pub mod qemu;
pub mod runtime;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use agent::{AgentConfig, RawAgent, Transport};
pub use attestation::{AttestationConfig, KbsAddress, KbsRoute, RawAttestation};
pub use gpu::{CcMode, CcPolicy, GpuConfig, OnMismatch, RawCcMode, RawGpu};
pub use image::{ImageConfig, RawImage, VerifiedLayers};
pub use measurement::{
    Expected, LoadOptions, MeasurementConfig, MrtdOrder, RawExpected, RawMeasurement, SetupPatch,
};
pub use qemu::{
    Accel, ColdPlug, FsCache, NetworkModel, QemuConfig, RawQemu, Tee, DEFAULT_SNP_POLICY,
    SNP_POLICY_DEBUG,
};
pub use runtime::{LogLevel, RawRuntime, RuntimeConfig};

/// The built-in development defaults (the text of `configs/cocoon-dev.toml`).
pub const DEV_DEFAULTS: &str = include_str!("../../../configs/cocoon-dev.toml");

/// Default location of the node configuration.
pub const DEFAULT_PATH: &str = "/etc/cocoon/config.toml";

/// Environment variable overriding the configuration path.
pub const ENV_PATH: &str = "COCOON_CONFIG";

/// Errors of loading or validating a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause (part of the message: it is the fix's hint).
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key, wrong type or unknown value.
    #[error("{origin}: {}{message}", key.as_deref().map(|k| format!("`{k}`: ")).unwrap_or_default())]
    Parse {
        /// File name (or "built-in defaults").
        origin: String,
        /// The dotted key where parsing failed, if known.
        key: Option<String>,
        /// The parser's message, naming the position and what is allowed.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{origin}: `{key}` = {value}: {problem}")]
    Invalid {
        /// File name.
        origin: String,
        /// Dotted key, e.g. `hypervisor.qemu.default_vcpus`.
        key: &'static str,
        /// The offending value as written.
        value: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// A file named by the configuration does not exist.
    #[error("`{key}` = {path:?}: {problem}")]
    MissingFile {
        /// Dotted key.
        key: &'static str,
        /// The path.
        path: PathBuf,
        /// What to do.
        problem: &'static str,
    },
}

/// A value a section's validation refuses: key, value as written, and the
/// fix. [`Invalid::of`] adds the file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    key: &'static str,
    value: String,
    problem: String,
}

impl Problem {
    /// A problem with a value shown as is.
    pub fn new(key: &'static str, value: impl ToString, problem: impl Into<String>) -> Self {
        Self {
            key,
            value: value.to_string(),
            problem: problem.into(),
        }
    }

    /// A problem with a string value, shown quoted.
    pub fn quoted(key: &'static str, value: &str, problem: impl Into<String>) -> Self {
        Self::new(key, format!("{value:?}"), problem)
    }
}

/// Turns section problems into [`ConfigError::Invalid`] for one file.
#[derive(Debug, Clone, Copy)]
pub struct Invalid<'a> {
    origin: &'a str,
}

impl<'a> Invalid<'a> {
    /// Errors of the file `origin`.
    pub fn new(origin: &'a str) -> Self {
        Self { origin }
    }

    /// The error for `p`.
    pub fn of(&self, p: Problem) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.to_string(),
            key: p.key,
            value: p.value,
            problem: p.problem,
        }
    }

    /// `p` if it is absolute.
    pub fn absolute(&self, key: &'static str, p: &Path) -> Result<PathBuf, ConfigError> {
        if p.is_absolute() {
            Ok(p.to_path_buf())
        } else {
            Err(self.of(Problem::new(
                key,
                format!("{p:?}"),
                "must be an absolute path",
            )))
        }
    }
}

/// `[hypervisor]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)] // keys are documented in configs/cocoon-dev.toml
pub struct RawHypervisor {
    pub qemu: RawQemu,
}

/// The whole file as written; every key has a default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)] // keys are documented in configs/cocoon-dev.toml
pub struct RawConfig {
    pub hypervisor: RawHypervisor,
    pub agent: RawAgent,
    pub runtime: RawRuntime,
    pub measurement: RawMeasurement,
    pub gpu: RawGpu,
    pub attestation: RawAttestation,
    pub image: RawImage,
}

/// The validated node configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where it came from (a path, or "built-in defaults").
    pub origin: String,
    /// The file as written, with defaults filled in (for `config show`).
    pub raw: RawConfig,
    /// `[hypervisor.qemu]`.
    pub qemu: QemuConfig,
    /// `[agent]`.
    pub agent: AgentConfig,
    /// `[runtime]`.
    pub runtime: RuntimeConfig,
    /// `[measurement]`.
    pub measurement: MeasurementConfig,
    /// `[gpu]`.
    pub gpu: GpuConfig,
    /// `[attestation]`.
    pub attestation: AttestationConfig,
    /// `[image]`.
    pub image: ImageConfig,
}

impl RawConfig {
    /// Parses TOML text; errors name the dotted key and the line where they
    /// happened.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let line = inner
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let message = match line {
                Some(l) => format!("line {l}: {}", inner.message().trim_end()),
                None => inner.message().trim_end().to_string(),
            };
            ConfigError::Parse {
                origin: origin.to_string(),
                key: (path != "." && !path.is_empty()).then_some(path),
                message: message.replace('\n', " "),
            }
        })
    }

    /// Validates every section and resolves choices.
    pub fn validate(self, origin: &str) -> Result<Config, ConfigError> {
        let invalid = Invalid::new(origin);
        let qemu = self.hypervisor.qemu.validate(&invalid)?;
        let agent = self.agent.validate(&invalid)?;
        let runtime = self.runtime.validate(&invalid)?;
        let measurement = self.measurement.validate(qemu.tee, &invalid)?;
        let gpu = self.gpu.validate(qemu.tee, &invalid)?;
        let attestation = self.attestation.validate(&invalid)?;
        let image = self.image.validate(&invalid)?;
        Ok(Config {
            origin: origin.to_string(),
            raw: self,
            qemu,
            agent,
            runtime,
            measurement,
            gpu,
            attestation,
            image,
        })
    }
}

/// Files the configuration names, with the key and the fix.
const FILE_FIXES: [(&str, &str); 4] = [
    (
        "hypervisor.qemu.path",
        "install QEMU 10 (make deps) or fix the path",
    ),
    (
        "hypervisor.qemu.kernel",
        "build the guest (make guest) and install it (make install), or fix the path",
    ),
    (
        "hypervisor.qemu.initrd",
        "build the guest (make guest) and install it (make install), or fix the path",
    ),
    (
        "hypervisor.qemu.virtio_fs_daemon",
        "install virtiofsd (make deps install) or fix the path",
    ),
];

/// The largest configuration file read.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

impl Config {
    /// Parses and validates TOML text.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        RawConfig::parse(text, origin)?.validate(origin)
    }

    /// Reads and validates a file: a regular file of at most
    /// [`MAX_CONFIG_BYTES`] (any containerd client can name the path).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        use std::io::Read;
        let read_err = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let meta = file.metadata().map_err(read_err)?;
        if !meta.is_file() {
            return Err(read_err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        let mut text = String::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read_err)?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(read_err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("larger than {MAX_CONFIG_BYTES} bytes"),
            )));
        }
        Self::from_toml(&text, &path.display().to_string())
    }

    /// The built-in development defaults.
    pub fn dev_defaults() -> Result<Self, ConfigError> {
        Self::from_toml(DEV_DEFAULTS, "built-in defaults")
    }

    /// Loads the configuration the way every Cocoon binary does: `explicit`
    /// (a flag or the containerd `ConfigPath` option), else `$COCOON_CONFIG`,
    /// else `/etc/cocoon/config.toml` if it exists, else the built-in
    /// development defaults.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        if let Some(p) = explicit {
            return Self::from_file(p);
        }
        if let Some(p) = std::env::var_os(ENV_PATH).filter(|v| !v.is_empty()) {
            return Self::from_file(Path::new(&p));
        }
        let default = Path::new(DEFAULT_PATH);
        if default.exists() {
            return Self::from_file(default);
        }
        Self::dev_defaults()
    }

    /// Checks that the files the configuration names exist.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        let q = &self.qemu;
        let mut files: Vec<(&'static str, &Path, &'static str)> = FILE_FIXES
            .iter()
            .zip([&q.path, &q.kernel, &q.initrd, &q.virtio_fs_daemon])
            .map(|((key, fix), path)| (*key, path.as_path(), *fix))
            .collect();
        if let Some(fw) = &q.firmware {
            files.push((
                "hypervisor.qemu.firmware",
                fw,
                "install the firmware package or fix the path",
            ));
        }
        if self.agent.transport != Transport::VhostVsock {
            files.push((
                "hypervisor.qemu.vhost_user_vsock_daemon",
                &q.vhost_user_vsock_daemon,
                "install vhost-device-vsock (make deps install) or fix the path",
            ));
        }
        for (key, path, problem) in files {
            if !path.is_file() {
                return Err(ConfigError::MissingFile {
                    key,
                    path: path.to_path_buf(),
                    problem,
                });
            }
        }
        // Programs must be executable.
        let programs = [
            ("hypervisor.qemu.path", &q.path),
            ("hypervisor.qemu.virtio_fs_daemon", &q.virtio_fs_daemon),
        ];
        for (key, path) in programs {
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(path)
                    .map(|m| m.permissions())
                    .map_err(|source| ConfigError::Read {
                        path: path.clone(),
                        source,
                    })?,
            );
            if mode & 0o111 == 0 {
                return Err(ConfigError::MissingFile {
                    key,
                    path: path.clone(),
                    problem: "is not executable; name the program's binary",
                });
            }
        }
        Ok(())
    }

    /// Checks that `hypervisor.qemu.kernel` is a Linux bzImage (the x86
    /// boot protocol's "HdrS" at 0x202), not just any readable file: what
    /// `cocoon config check` adds to [`Config::check_files`].
    pub fn check_kernel_image(&self) -> Result<(), ConfigError> {
        let q = &self.qemu;
        let mut header = [0u8; 0x206];
        let is_bzimage = std::fs::File::open(&q.kernel)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header))
            .is_ok()
            && &header[0x202..0x206] == b"HdrS";
        if !is_bzimage {
            return Err(ConfigError::MissingFile {
                key: "hypervisor.qemu.kernel",
                path: q.kernel.clone(),
                problem: "is not a Linux kernel image (bzImage); name the guest's vmlinuz",
            });
        }
        Ok(())
    }

    /// The effective configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(&self.raw).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
