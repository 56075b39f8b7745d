//! Planning a launch: [`plan::LaunchPlan`] holds every decision (reference
//! values, TEE, PCI devices, helper daemons, QEMU argv, agent address) as a
//! value that tests snapshot and `dry_run` prints; [`helpers`] describes
//! the helper daemons. Executing a plan is [`crate::vm`]'s job.

pub mod helpers;
pub mod plan;

pub use helpers::HelperSpec;
pub use plan::{
    resolve, GuestRelay, HostView, LaunchPlan, LaunchRequest, PlanError, PlannedDevice,
    PlannedDisk, PlannedNic, Resolved, Share,
};

#[cfg(test)]
mod tests;
