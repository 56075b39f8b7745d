//! `[agent]`: how the host reaches the in-guest agent.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Invalid, Problem};

/// How the host reaches the agent's vsock port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// vhost-vsock where `/dev/vhost-vsock` exists, else vhost-user-vsock.
    Auto,
    /// Kernel vhost-vsock, host connects over AF_VSOCK.
    VhostVsock,
    /// vhost-device-vsock daemon with the hybrid unix-socket handshake.
    VhostUserVsock,
}

/// `[agent]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)] // keys are documented in configs/cocoon-dev.toml
pub struct RawAgent {
    pub transport: Transport,
    pub dial_timeout: u64,
}

impl Default for RawAgent {
    fn default() -> Self {
        Self {
            transport: Transport::Auto,
            dial_timeout: 30,
        }
    }
}

/// Validated `[agent]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// Transport.
    pub transport: Transport,
    /// How long to wait for the agent.
    pub dial_timeout: Duration,
}

impl RawAgent {
    /// Validates the section.
    pub(super) fn validate(&self, invalid: &Invalid<'_>) -> Result<AgentConfig, ConfigError> {
        if !(1..=600).contains(&self.dial_timeout) {
            return Err(invalid.of(Problem::new(
                "agent.dial_timeout",
                self.dial_timeout,
                "is in seconds and must be between 1 and 600",
            )));
        }
        Ok(AgentConfig {
            transport: self.transport,
            dial_timeout: Duration::from_secs(self.dial_timeout),
        })
    }
}
