//! The API between the Cocoon shim (host) and `cocoon-agent` (guest PID 1).
//!
//! - [`agent`]: protobuf messages generated from `proto/agent.proto`.
//! - [`agent_ttrpc`]: the async ttrpc client ([`agent_ttrpc::AgentClient`]) and
//!   service trait ([`agent_ttrpc::Agent`]).
//! - [`resource`]: KBS resource URIs (`kbs:///repo/type/tag`) and secret
//!   names.
//! - [`initdata`]: the initdata document, its checks and digest.
//! - [`layers`]: the images a pod's policy allows, as layer root hashes.
//! - [`client`]: [`client::GuestClient`], the typed client with named
//!   timeouts that the shim and `cocoon run` use.
//!
//! The agent listens on AF_VSOCK port [`AGENT_VSOCK_PORT`]. The first call of a
//! client is `Version`; a shim and an agent whose [`PROTOCOL_VERSION`] differ
//! refuse to talk (see [`check_version`]).
#![deny(missing_docs)]

#[allow(
    missing_docs,
    non_upper_case_globals,
    non_camel_case_types,
    unused_results,
    unused_mut,
    unused_imports,
    unknown_lints,
    clippy::all,
    clippy::pedantic,
    clippy::undocumented_unsafe_blocks,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]
pub mod agent {
    //! Generated protobuf messages.
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

#[allow(
    missing_docs,
    non_upper_case_globals,
    non_camel_case_types,
    unused_results,
    unused_mut,
    unused_imports,
    unknown_lints,
    clippy::all,
    clippy::pedantic,
    clippy::undocumented_unsafe_blocks,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]
pub mod agent_ttrpc {
    //! Generated ttrpc client and service.
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

pub mod client;
pub mod initdata;
pub mod layers;
pub mod resource;

pub use protobuf;
pub use ttrpc;

/// Version of this API. Bump on every incompatible change to `agent.proto`
/// or to how the agent reads the OCI spec it carries (4:
/// `CreateContainerRequest.models`, which an older agent would ignore; 5:
/// shared pod namespaces and shared memory, [`POD_SHM_SOURCE`] and
/// [`NS_CONTAINER_PREFIX`], device rules and nodes,
/// `CreateSandboxRequest.interfaces`; 6: `Interface.neighbours`; 7:
/// `CreateSandboxRequest.kbs_over_pod_network`; 8:
/// `CreateContainerRequest.layers`).
pub const PROTOCOL_VERSION: u32 = 8;

/// In the guest's OCI spec, the `source` of a `tmpfs` mount that means the
/// pod's shared memory: one tmpfs for every container of the pod, which
/// share an IPC namespace (the shim writes the pod's `/dev/shm` so).
pub const POD_SHM_SOURCE: &str = "cocoon-pod-shm";

/// In the guest's OCI spec, a `linux.namespaces[].path` of
/// `container:<id>` joins that namespace of container `<id>` of the pod
/// (its init process's). The shim writes it for the namespaces a CRI pod
/// shares with its sandbox (IPC, UTS, and PID with `shareProcessNamespace`);
/// no host path reaches the guest.
pub const NS_CONTAINER_PREFIX: &str = "container:";

/// AF_VSOCK port the agent serves on.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// Host vsock port the guest dials to reach the KBS through the shim's
/// byte relay (the host is CID 2).
pub const KBS_RELAY_PORT: u32 = 1025;

/// The error of a peer speaking another protocol version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionMismatch {
    /// Version spoken by this side.
    pub ours: u32,
    /// Version spoken by the peer.
    pub theirs: u32,
}

impl std::fmt::Display for VersionMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "agent protocol mismatch: this side speaks version {}, the peer speaks version {}; \
             rebuild the guest image (`make guest`) with the same Cocoon release as the shim",
            self.ours, self.theirs
        )
    }
}

impl std::error::Error for VersionMismatch {}

/// Checks that a peer speaks [`PROTOCOL_VERSION`].
///
/// ```
/// assert!(cocoon_protocol::check_version(cocoon_protocol::PROTOCOL_VERSION).is_ok());
/// assert!(cocoon_protocol::check_version(999).is_err());
/// ```
pub fn check_version(theirs: u32) -> Result<(), VersionMismatch> {
    if theirs == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message;

    #[test]
    fn mismatch_message_names_both_versions_and_the_fix() {
        let msg = check_version(PROTOCOL_VERSION + 1).unwrap_err().to_string();
        assert!(
            msg.contains(&format!("version {PROTOCOL_VERSION}"))
                && msg.contains(&format!("version {}", PROTOCOL_VERSION + 1)),
            "{msg}"
        );
        assert!(msg.contains("make guest"), "{msg}");
    }

    #[test]
    fn messages_round_trip() {
        let mut req = agent::CreateContainerRequest::new();
        req.container_id = "c1".into();
        req.oci_spec = br#"{"ociVersion":"1.0.2"}"#.to_vec();
        let bytes = req.write_to_bytes().unwrap();
        let back = agent::CreateContainerRequest::parse_from_bytes(&bytes).unwrap();
        assert_eq!(back.container_id, "c1");
        assert_eq!(back.oci_spec, req.oci_spec);
    }
}
