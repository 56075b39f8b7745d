//! The agent's error type and its one conversion to ttrpc status codes.

use std::ffi::NulError;

use nix::errno::Errno;
use ttrpc::{Code, Status};

/// Steps of starting a process inside a container, reported by the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnStep {
    /// Setting up stdio.
    Stdio,
    /// Setting up the container's mounts or root.
    Rootfs,
    /// Joining an existing container's namespaces.
    JoinNamespaces,
    /// Setting the hostname.
    Hostname,
    /// Changing to the process user.
    User,
    /// Changing to the working directory.
    Cwd,
    /// Finding the executable.
    Lookup,
    /// Executing the program.
    Exec,
    /// Writing a sysctl.
    Sysctl,
    /// Masking or write-protecting paths.
    MaskPaths,
    /// Setting resource limits.
    Rlimits,
    /// Setting the OOM score adjustment.
    OomScoreAdj,
    /// Setting capabilities or no_new_privs.
    Capabilities,
    /// Loading the seccomp filter.
    Seccomp,
    /// Creating the `linux.devices` nodes.
    Devices,
}

impl SpawnStep {
    pub(crate) fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            1 => Self::Stdio,
            2 => Self::Rootfs,
            3 => Self::JoinNamespaces,
            4 => Self::Hostname,
            5 => Self::User,
            6 => Self::Cwd,
            7 => Self::Lookup,
            8 => Self::Exec,
            9 => Self::Sysctl,
            10 => Self::MaskPaths,
            11 => Self::Rlimits,
            12 => Self::OomScoreAdj,
            13 => Self::Capabilities,
            14 => Self::Seccomp,
            15 => Self::Devices,
            _ => return None,
        })
    }

    pub(crate) fn code(self) -> u32 {
        match self {
            Self::Stdio => 1,
            Self::Rootfs => 2,
            Self::JoinNamespaces => 3,
            Self::Hostname => 4,
            Self::User => 5,
            Self::Cwd => 6,
            Self::Lookup => 7,
            Self::Exec => 8,
            Self::Sysctl => 9,
            Self::MaskPaths => 10,
            Self::Rlimits => 11,
            Self::OomScoreAdj => 12,
            Self::Capabilities => 13,
            Self::Seccomp => 14,
            Self::Devices => 15,
        }
    }
}

impl std::fmt::Display for SpawnStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Stdio => "set up stdio",
            Self::Rootfs => "set up the container root filesystem",
            Self::JoinNamespaces => "join the container namespaces",
            Self::Hostname => "set the hostname",
            Self::User => "switch user",
            Self::Cwd => "change to the working directory",
            Self::Lookup => "find the executable",
            Self::Exec => "execute the program",
            Self::Sysctl => "write the sysctls (linux.sysctl)",
            Self::MaskPaths => "apply linux.maskedPaths / linux.readonlyPaths",
            Self::Rlimits => "set process.rlimits (the guest kernel refused a limit)",
            Self::OomScoreAdj => "set process.oomScoreAdj",
            Self::Capabilities => "apply process.capabilities / noNewPrivileges",
            Self::Seccomp => "load the seccomp filter (linux.seccomp)",
            Self::Devices => "create the device nodes (linux.devices)",
        })
    }
}

/// Everything an agent request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is missing or malformed.
    #[error("invalid request: field `{field}` {problem}")]
    InvalidArgument {
        /// Protobuf field name.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// No container with this id.
    #[error("container {0:?} not found")]
    ContainerNotFound(String),
    /// No process with this id in the container.
    #[error("process {exec_id:?} not found in container {container_id:?}")]
    ProcessNotFound {
        /// Container id.
        container_id: String,
        /// Exec id.
        exec_id: String,
    },
    /// An object with this id exists already.
    #[error("{kind} {id:?} already exists")]
    AlreadyExists {
        /// "container" or "process".
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// The operation does not fit the object's state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The child failed at one step of process start.
    #[error("cannot {step} for {what:?}: {errno}")]
    Spawn {
        /// The step.
        step: SpawnStep,
        /// The program or path concerned.
        what: String,
        /// The error the kernel gave.
        errno: Errno,
    },
    /// The executable does not exist in the container.
    #[error("executable {0:?} not found in the container's $PATH or root filesystem")]
    ExecutableNotFound(String),
    /// A system call in the agent itself failed.
    #[error("{op}: {errno}")]
    Sys {
        /// What the agent was doing.
        op: String,
        /// The error.
        errno: Errno,
    },
    /// The sandbox was not created yet.
    #[error("the sandbox is not created yet; call CreateSandbox first")]
    NoSandbox,
    /// The pod's initdata does not allow the request.
    #[error("{0}")]
    PermissionDenied(String),
    /// A service the agent needs (the KBS) cannot be reached.
    #[error("{0}")]
    Unavailable(String),
}

impl Error {
    pub(crate) fn sys(op: impl Into<String>, errno: Errno) -> Self {
        Self::Sys {
            op: op.into(),
            errno,
        }
    }

    pub(crate) fn nul(field: &'static str, _: NulError) -> Self {
        Self::InvalidArgument {
            field,
            problem: "contains a NUL byte".into(),
        }
    }

    fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } => Code::INVALID_ARGUMENT,
            Self::ContainerNotFound(_) | Self::ProcessNotFound { .. } => Code::NOT_FOUND,
            Self::AlreadyExists { .. } => Code::ALREADY_EXISTS,
            Self::FailedPrecondition(_) | Self::NoSandbox => Code::FAILED_PRECONDITION,
            Self::PermissionDenied(_) => Code::PERMISSION_DENIED,
            Self::Unavailable(_) => Code::UNAVAILABLE,
            Self::ExecutableNotFound(_) => Code::NOT_FOUND,
            Self::Spawn { .. } | Self::Sys { .. } => Code::INTERNAL,
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        let mut status = Status::new();
        status.set_code(e.code());
        status.set_message(e.to_string());
        ttrpc::Error::RpcStatus(status)
    }
}

/// Result of agent operations.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawn_step_codes_round_trip() {
        for code in 1..=15 {
            let step = SpawnStep::from_code(code).unwrap();
            assert_eq!(step.code(), code);
        }
        assert!(SpawnStep::from_code(0).is_none());
        assert!(SpawnStep::from_code(16).is_none());
    }

    #[test]
    fn errors_map_to_status_codes() {
        let e: ttrpc::Error = Error::ContainerNotFound("x".into()).into();
        match e {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), Code::NOT_FOUND);
                assert_eq!(s.message(), "container \"x\" not found");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
