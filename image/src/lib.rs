//! Verified container layers for confidential pods.
//!
//! A confidential pod must run only the image its owner approved, though
//! its layers come from the host. Each layer becomes a read-only
//! filesystem image with a dm-verity hash tree; the guest checks every
//! block it reads against a root hash that comes from the pod's measured
//! initdata. This crate holds the host side: [`layer`] turns a layer's tar
//! stream into an erofs image ([`erofs`]) deterministically, and [`verity`]
//! builds its hash tree exactly as `veritysetup format` does, so root
//! hashes can be computed (and checked) with standard tools.

pub mod cache;
pub mod erofs;
pub mod layer;
pub mod oci;
pub mod verity;
