//! Host side of a Cocoon VM.
//!
//! - [`check`]: `cocoon check`, the host report.
//! - [`config`]: the node configuration (TOML), parsed and validated.
//! - [`firmware`]: OVMF footer table, SEV metadata, TDVF descriptor.
//! - [`measure`]: SEV-SNP and TDX launch measurements, pinning.
//! - [`gpu`]: NVIDIA GPU identification and CC mode (BAR0).
//! - [`host`]: host facts (KVM, vhost-vsock) through redirectable roots.
//! - [`qemu::argv`]: the pure QEMU command-line builder.
//! - [`qemu::qmp`]: QMP control (status, stop/cont, powerdown, quit).
//! - [`process`]: supervised child processes that cannot outlive their owner.
//! - [`agent`]: connecting to the in-guest agent (vsock or hybrid vsock).
//! - [`tee`]: SEV-SNP/TDX host support and the TEE of a launch.
//! - [`vfio`]: VFIO devices (groups, iommufd cdevs, CDI) resolved through sysfs.
//! - [`vm`]: launching and stopping one VM.
#![deny(missing_docs)]

pub mod agent;
pub mod check;
pub mod config;
pub mod firmware;
pub mod gpu;
pub mod host;
pub mod measure;
pub mod process;
pub mod qemu;
pub mod tee;
pub mod vfio;
pub mod vm;
