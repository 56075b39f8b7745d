//! `cocoon.json` in the bundle: what the `delete` action needs to clean up
//! after a shim that died (the bundle outlives the shim).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name inside the bundle.
pub const FILE: &str = "cocoon.json";

/// Cleanup facts about one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The pod's state directory (`<state_dir>/<sandbox id>`).
    pub pod_dir: PathBuf,
    /// The container's rootfs mount point on the host.
    pub rootfs: PathBuf,
    /// Whether this container's deletion ends the VM (sandbox or single).
    pub owns_vm: bool,
}

impl Record {
    /// Writes the record into `bundle`.
    pub fn write(&self, bundle: &Path) -> std::io::Result<()> {
        let tmp = bundle.join(format!("{FILE}.tmp"));
        std::fs::write(
            &tmp,
            serde_json::to_vec(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(tmp, bundle.join(FILE))
    }

    /// Reads the record from `bundle`, if any.
    pub fn read(bundle: &Path) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(bundle.join(FILE)).ok()?).ok()
    }
}
