//! Host side of a Cocoon VM.
//!
//! - [`check`]: `cocoon check`, the host report.
//! - [`config`]: the node configuration (TOML), parsed and validated.
//! - [`firmware`]: OVMF footer table, SEV metadata, TDVF descriptor.
//! - [`measure`]: SEV-SNP and TDX launch measurements, pinning.
//! - [`gpu`]: NVIDIA GPU identification and CC mode (BAR0).
//! - [`host`]: host facts (KVM, vhost-vsock) through redirectable roots.
//! - [`pci`]: the PCI address newtype.
//! - [`qemu::argv`]: the pure QEMU command-line builder.
//! - [`qemu::qmp`]: QMP control (status, stop/cont, powerdown, quit).
//! - [`process`]: supervised child processes that cannot outlive their owner.
//! - [`agent`]: connecting to the in-guest agent (vsock or hybrid vsock).
//! - [`tee`]: SEV-SNP/TDX host support and the TEE of a launch.
//! - [`sys`]: the BAR0 register read (the crate's only mmap).
//! - `fixtures` (tests and the `fixtures` feature): recorded hosts.
//! - [`vfio`]: VFIO devices (groups, iommufd cdevs, CDI) resolved through sysfs.
//! - [`launch`]: the launch plan (every decision of a launch, as a value).
//! - [`vm`]: executing a plan; pause/resume, the exit watch, shutdown.
#![deny(missing_docs)]

pub mod agent;
pub mod check;
pub mod config;
pub mod firmware;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod gpu;
pub mod host;
pub mod kernel;
pub mod launch;
pub mod measure;
pub mod net;
pub mod pci;
pub mod private;
pub mod process;
pub mod qemu;
pub mod sys;
pub mod tee;
pub mod vfio;
pub mod vm;
