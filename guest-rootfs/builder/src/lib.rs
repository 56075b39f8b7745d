//! Builds the Cocoon guest: Debian's kernel image plus an initrd that holds
//! the static `cocoon-agent` as `/init` and the kernel modules it loads.
//!
//! The initrd is **bit-reproducible**: entries are written in sorted order,
//! with inode numbers assigned in that order, mtime 0, uid/gid 0 and fixed
//! modes, so the same inputs always give the same bytes and anyone can
//! recompute the launch measurement.
//!
//! - [`modules`]: resolving module names to files and load order (`modules.dep`).
//! - [`initrd`]: the newc cpio writer.
//! - [`build`]: the whole guest (kernel copy, initrd, manifest).
#![deny(missing_docs)]

pub mod build;
pub mod initrd;
pub mod modules;
