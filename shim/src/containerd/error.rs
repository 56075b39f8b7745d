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
    /// The pod's VM is gone.
    #[error("{0}")]
    Unavailable(String),
    /// Planning, launching or controlling the VM failed.
    #[error(transparent)]
    Vm(#[from] cocoon_vmm::vm::VmError),
    /// The agent returned an error, or could not be reached.
    #[error(transparent)]
    Guest(#[from] cocoon_protocol::client::GuestError),
    /// Host I/O failed.
    #[error("{op}")]
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

    /// The ttrpc code containerd sees: what the caller can do about it.
    pub fn code(&self) -> Code {
        match self {
            Self::Spec { .. }
            | Self::Invalid { .. }
            | Self::AnnotationNotAllowed { .. }
            | Self::Options(_)
            | Self::Rootfs(_) => Code::INVALID_ARGUMENT,
            Self::Config(_) | Self::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Self::NotFound(_) => Code::NOT_FOUND,
            Self::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Self::Unsupported(..) => Code::UNIMPLEMENTED,
            Self::Unavailable(_) => Code::UNAVAILABLE,
            Self::Vm(e) => vm_code(e),
            // No answer at all: the guest (or the connection) is gone.
            Self::Guest(e) => e.code.unwrap_or(Code::UNAVAILABLE),
            Self::Io { .. } => Code::INTERNAL,
        }
    }

    /// The message with every cause, `: `-separated (each error's Display
    /// names only its own step, never its source).
    pub fn full_message(&self) -> String {
        let mut msg = self.to_string();
        let mut src = std::error::Error::source(self);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        msg
    }
}

/// Codes of VM errors: problems of the host or the node configuration are
/// preconditions; a guest that stopped answering is unavailable.
fn vm_code(e: &cocoon_vmm::vm::VmError) -> Code {
    use cocoon_vmm::agent::AgentError;
    use cocoon_vmm::vm::VmError;
    match e {
        VmError::Plan(_) | VmError::DryRun(_) | VmError::Agent(AgentError::Version(_)) => {
            Code::FAILED_PRECONDITION
        }
        VmError::Exists(_) => Code::ALREADY_EXISTS,
        VmError::QemuExited { .. }
        | VmError::HelperExited { .. }
        | VmError::AgentTimeout { .. }
        | VmError::Agent(_)
        | VmError::Qmp(_) => Code::UNAVAILABLE,
        VmError::StateDir { .. } | VmError::Daemon(_) => Code::INTERNAL,
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
    use cocoon_protocol::client::GuestError;
    use cocoon_vmm::launch::PlanError;
    use cocoon_vmm::vm::VmError;

    fn status(e: ShimError) -> Status {
        let ttrpc::Error::RpcStatus(s) = ttrpc::Error::from(e) else {
            panic!("not a status")
        };
        s
    }

    #[test]
    fn codes_and_messages() {
        let s = status(ShimError::NotFound("container \"x\"".into()));
        assert_eq!(s.code(), Code::NOT_FOUND);
        assert_eq!(s.message(), "container \"x\" not found");
        let e = ShimError::io("open fifo /x", std::io::Error::from_raw_os_error(2));
        assert_eq!(
            e.full_message(),
            "open fifo /x: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn codes_say_what_the_caller_can_do() {
        let cases: Vec<(ShimError, Code)> = vec![
            (
                VmError::Plan(PlanError::KvmUnavailable).into(),
                Code::FAILED_PRECONDITION,
            ),
            (
                VmError::Plan(PlanError::TooManyFunctions(17)).into(),
                Code::FAILED_PRECONDITION,
            ),
            (
                VmError::DryRun("x".into()).into(),
                Code::FAILED_PRECONDITION,
            ),
            (VmError::Exists("/d".into()).into(), Code::ALREADY_EXISTS),
            (
                VmError::AgentTimeout {
                    secs: 1,
                    last_attempt: "x".into(),
                    console: String::new(),
                }
                .into(),
                Code::UNAVAILABLE,
            ),
            (
                VmError::Agent(cocoon_vmm::agent::AgentError::Version(
                    cocoon_protocol::VersionMismatch { ours: 1, theirs: 2 },
                ))
                .into(),
                Code::FAILED_PRECONDITION,
            ),
            (
                GuestError {
                    op: "start",
                    code: Some(Code::NOT_FOUND),
                    message: "no such file".into(),
                }
                .into(),
                Code::NOT_FOUND,
            ),
            (
                GuestError {
                    op: "start",
                    code: None,
                    message: "closed".into(),
                }
                .into(),
                Code::UNAVAILABLE,
            ),
            (
                cocoon_vmm::config::Config::from_toml("bad = 1", "t")
                    .unwrap_err()
                    .into(),
                Code::FAILED_PRECONDITION,
            ),
            (
                ShimError::Invalid {
                    field: "id".into(),
                    problem: "is empty".into(),
                },
                Code::INVALID_ARGUMENT,
            ),
            (ShimError::Unavailable("gone".into()), Code::UNAVAILABLE),
        ];
        for (e, code) in cases {
            let msg = e.full_message();
            assert_eq!(status(e).code(), code, "{msg}");
        }
    }

    #[test]
    fn the_chain_is_printed_once() {
        let e: ShimError = VmError::Daemon(cocoon_vmm::process::DaemonError::Spawn {
            name: "qemu",
            program: "/q".into(),
            source: std::io::Error::from_raw_os_error(2),
        })
        .into();
        assert_eq!(
            e.full_message(),
            "cannot start qemu (/q): No such file or directory (os error 2)"
        );
    }
}
