//! The shim's error type and its single conversion to ttrpc status codes.

use std::path::PathBuf;

use ttrpc::{Code, Status};

/// Everything a Task RPC can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// The node configuration is unusable.
    #[error(transparent)]
    Config(#[from] cocoon_vmm::config::ConfigError),
    /// The bundle's config.json is missing or malformed.
    #[error("cannot read the OCI spec {path}: {message}")]
    Spec {
        /// Path of config.json.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A request or spec field is invalid.
    #[error("{field}: {problem}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// An annotation outside the node's allow-list.
    #[error("annotation {key:?} is not allowed on this node; add it to `runtime.allowed_annotations` in {origin} or remove it from the pod")]
    AnnotationNotAllowed {
        /// The key.
        key: String,
        /// Config origin.
        origin: String,
    },
    /// The runtime options from containerd are not ours.
    #[error("runtime options: {0}; Cocoon accepts only `ConfigPath` (runtimeoptions.v1.Options)")]
    Options(String),
    /// A rootfs mount failed or is not supported.
    #[error("rootfs: {0}")]
    Rootfs(String),
    /// An object does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// An object exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The object is not in a state that allows the call.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The call cannot apply to a VM-based container.
    #[error("{0} is not supported by Cocoon: {1}")]
    Unsupported(&'static str, &'static str),
    /// Launching or stopping the VM failed.
    #[error(transparent)]
    Vm(#[from] cocoon_vmm::vm::VmError),
    /// The agent returned an error.
    #[error("{op}: {message}")]
    Agent {
        /// What the shim asked.
        op: &'static str,
        /// The agent's message.
        message: String,
        /// The agent's status code, if any.
        code: Option<Code>,
    },
    /// QMP failed.
    #[error(transparent)]
    Qmp(#[from] cocoon_vmm::qemu::qmp::QmpError),
    /// Host I/O failed.
    #[error("{op}: {source}")]
    Io {
        /// What the shim was doing.
        op: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl ShimError {
    pub(crate) fn io(op: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            op: op.into(),
            source,
        }
    }

    pub(crate) fn agent(op: &'static str, e: ttrpc::Error) -> Self {
        match e {
            ttrpc::Error::RpcStatus(s) => Self::Agent {
                op,
                message: s.message().to_string(),
                code: Some(s.code()),
            },
            other => Self::Agent {
                op,
                message: other.to_string(),
                code: None,
            },
        }
    }

    fn code(&self) -> Code {
        match self {
            Self::Config(_)
            | Self::Spec { .. }
            | Self::Invalid { .. }
            | Self::AnnotationNotAllowed { .. }
            | Self::Options(_)
            | Self::Rootfs(_) => Code::INVALID_ARGUMENT,
            Self::NotFound(_) => Code::NOT_FOUND,
            Self::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Self::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Self::Unsupported(..) => Code::UNIMPLEMENTED,
            Self::Agent { code: Some(c), .. } => *c,
            Self::Vm(_) | Self::Agent { code: None, .. } | Self::Qmp(_) | Self::Io { .. } => {
                Code::INTERNAL
            }
        }
    }

    /// The message with every cause, for the status text containerd shows.
    pub fn full_message(&self) -> String {
        let mut msg = self.to_string();
        let mut src = std::error::Error::source(self);
        while let Some(s) = src {
            let text = s.to_string();
            if !msg.contains(&text) {
                msg.push_str(": ");
                msg.push_str(&text);
            }
            src = s.source();
        }
        msg
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        let mut s = Status::new();
        s.set_code(e.code());
        s.set_message(e.full_message());
        ttrpc::Error::RpcStatus(s)
    }
}

/// Result of shim operations.
pub type Result<T> = std::result::Result<T, ShimError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages() {
        let e: ttrpc::Error = ShimError::NotFound("container \"x\"".into()).into();
        let ttrpc::Error::RpcStatus(s) = e else {
            panic!()
        };
        assert_eq!(s.code(), Code::NOT_FOUND);
        assert_eq!(s.message(), "container \"x\" not found");
        let e = ShimError::io("open fifo /x", std::io::Error::from_raw_os_error(2));
        assert_eq!(
            e.full_message(),
            "open fifo /x: No such file or directory (os error 2)"
        );
    }
}
