//! The node configuration as the shim and the CLI read it: the VM side
//! ([`cocoon_vmm::config::Config`]) plus the shim's own policy from
//! `[runtime]` — which pod annotations are honoured and where the kubelet's
//! PodResources socket is. vmm-glue knows nothing of containerd or
//! Kubernetes; these keys are parsed and checked here, in the same file.

use std::fmt;
use std::path::{Path, PathBuf};

use cocoon_vmm::config::{Config, ConfigError, Invalid, Problem};
use serde::{Deserialize, Serialize};

/// An annotation allow-list entry: exact key, or prefix when it ends in `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationPattern(String);

impl AnnotationPattern {
    /// Parses an entry (`key` or `prefix*`).
    pub fn parse(p: &str) -> Option<Self> {
        let star = p.find('*');
        (!p.is_empty() && star.is_none_or(|i| i == p.len() - 1)).then(|| Self(p.to_string()))
    }

    /// Whether `key` matches.
    pub fn matches(&self, key: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix),
            None => key == self.0,
        }
    }
}

impl fmt::Display for AnnotationPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The shim's keys of `[runtime]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPolicy {
    allowed_annotations: Vec<String>,
    pod_resources_socket: PathBuf,
}

/// The shim's policy, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Annotation allow-list (`runtime.allowed_annotations`).
    pub allowed_annotations: Vec<AnnotationPattern>,
    /// The kubelet's PodResources socket (`runtime.pod_resources_socket`).
    pub pod_resources_socket: Option<PathBuf>,
}

impl Policy {
    /// Whether the node allows the annotation `key`.
    pub fn allows(&self, key: &str) -> bool {
        self.allowed_annotations.iter().any(|p| p.matches(key))
    }
}

/// The whole node configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// Everything about the VM.
    pub vm: Config,
    /// The shim's policy.
    pub policy: Policy,
}

fn policy(vm: &Config) -> Result<Policy, ConfigError> {
    let other = toml::Value::Table(vm.raw.runtime.other.clone());
    let raw: RawPolicy = serde_path_to_error::deserialize(other).map_err(|e| {
        let path = e.path().to_string();
        ConfigError::Parse {
            origin: vm.origin.clone(),
            key: Some(format!("runtime.{}", path.trim_start_matches('.'))),
            message: e.into_inner().to_string(),
        }
    })?;
    let invalid = Invalid::new(&vm.origin);
    let mut allowed = Vec::new();
    for p in &raw.allowed_annotations {
        allowed.push(AnnotationPattern::parse(p).ok_or_else(|| {
            invalid.of(Problem::quoted(
                "runtime.allowed_annotations",
                p,
                "entries are annotation keys, optionally ending in `*` (e.g. \"io.cocoon.*\")",
            ))
        })?);
    }
    let socket = &raw.pod_resources_socket;
    Ok(Policy {
        allowed_annotations: allowed,
        pod_resources_socket: if socket.as_os_str().is_empty() {
            None
        } else {
            Some(invalid.absolute("runtime.pod_resources_socket", socket)?)
        },
    })
}

impl NodeConfig {
    fn with_policy(vm: Config) -> Result<Self, ConfigError> {
        Ok(Self {
            policy: policy(&vm)?,
            vm,
        })
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        Self::with_policy(Config::from_toml(text, origin)?)
    }

    /// Reads and validates a file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Self::with_policy(Config::from_file(path)?)
    }

    /// Loads the configuration as [`Config::load`] finds it.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        Self::with_policy(Config::load(explicit)?)
    }

    /// The built-in development defaults.
    pub fn dev_defaults() -> Result<Self, ConfigError> {
        Self::with_policy(Config::dev_defaults()?)
    }

    /// The effective configuration as TOML, the shim's keys included.
    pub fn to_toml(&self) -> String {
        let mut raw = self.vm.raw.clone();
        let p = &self.policy;
        let shown = RawPolicy {
            allowed_annotations: p
                .allowed_annotations
                .iter()
                .map(|a| a.to_string())
                .collect(),
            pod_resources_socket: p.pod_resources_socket.clone().unwrap_or_default(),
        };
        if let Ok(toml::Value::Table(t)) = toml::Value::try_from(&shown) {
            raw.runtime.other = t;
        }
        toml::to_string_pretty(&raw).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        NodeConfig::from_toml(text, "test.toml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn policy_keys_are_checked_here() {
        let cases: &[(&str, &[&str])] = &[
            (
                "[runtime]\nallowed_annotations = [\"io.*.x\"]",
                &["`runtime.allowed_annotations`", "ending in `*`"],
            ),
            (
                "[runtime]\npod_resources_socket = \"kubelet.sock\"",
                &["`runtime.pod_resources_socket`", "absolute"],
            ),
            (
                "[runtime]\nallowed_annotation = [\"x\"]",
                &["test.toml", "unknown field `allowed_annotation`"],
            ),
            (
                "[runtime]\nallowed_annotations = \"io.cocoon.*\"",
                &["`runtime.allowed_annotations`", "invalid type"],
            ),
        ];
        for (text, needles) in cases {
            let e = err(text);
            for n in *needles {
                assert!(e.contains(n), "config {text:?}: error {e:?} lacks {n:?}");
            }
        }
    }

    #[test]
    fn allow_list_patterns() {
        let c = NodeConfig::from_toml(
            "[runtime]\nallowed_annotations = [\"io.cocoon.*\", \"io.katacontainers.config.hypervisor.cc_init_data\"]\npod_resources_socket = \"/var/lib/kubelet/pod-resources/kubelet.sock\"",
            "t",
        )
        .unwrap();
        let p = &c.policy;
        assert!(p.allows("io.cocoon.gpu"));
        assert!(!p.allows("io.other"));
        assert!(p.allows("io.katacontainers.config.hypervisor.cc_init_data"));
        assert!(!p.allows("io.katacontainers.config.hypervisor.cc_init_data2"));
        assert!(p.pod_resources_socket.is_some());
        // `config show` keeps the shim's keys, and what it prints loads again.
        let shown = c.to_toml();
        assert!(shown.contains("allowed_annotations"), "{shown}");
        let again = NodeConfig::from_toml(&shown, "shown").unwrap();
        assert_eq!(again.policy, c.policy);
        let dev = NodeConfig::dev_defaults().unwrap();
        assert!(dev.policy.allowed_annotations.is_empty());
    }
}
