//! The pod's VM: launched by the first (sandbox or single) container,
//! shared by the pod's containers, stopped when that container is deleted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cocoon_protocol::agent::CreateSandboxRequest;
use cocoon_protocol::agent_ttrpc::AgentClient;
use cocoon_vmm::agent::ctx;
use cocoon_vmm::config::Config;
use cocoon_vmm::host::HostRoots;
use cocoon_vmm::qemu::qmp::Qmp;
use cocoon_vmm::vm::{Share, Vm, VmRequest};
use slog::{info, warn, Logger};
use tokio::sync::{watch, Mutex};

use super::error::{Result, ShimError};
use super::rootfs;

/// virtio-fs tag of the pod's shared directory.
pub const SHARE_TAG: &str = "cocoon-shared";

/// A running pod VM.
pub struct Pod {
    /// Sandbox id.
    pub id: String,
    /// `<state_dir>/<id>`.
    pub dir: PathBuf,
    /// `<dir>/shared`, exported to the guest.
    pub shared: PathBuf,
    /// The node configuration it was launched with.
    pub config: Config,
    /// Agent client.
    pub agent: AgentClient,
    /// QMP client.
    pub qmp: Qmp,
    /// VFIO device nodes passed through at launch (what later containers
    /// of the pod may use).
    pub device_nodes: Vec<String>,
    vm: Mutex<Option<Vm>>,
    dead: watch::Sender<bool>,
    log: Logger,
}

impl std::fmt::Debug for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pod")
            .field("id", &self.id)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Removes a pod directory on failure paths.
struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = rootfs::unmount_all_under(&d.join("shared"));
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// The pod's directory name: the id itself when short, else a prefix of it
/// and a hash, so unix socket paths below it stay under 108 bytes even for
/// 64-character CRI sandbox ids.
pub fn dir_name(id: &str) -> String {
    use sha2::{Digest, Sha256};
    let safe = id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !id.starts_with('.');
    if safe && id.len() <= 24 {
        return id.to_string();
    }
    let prefix: String = id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect();
    let hash = hex::encode(Sha256::digest(id.as_bytes()));
    format!("{prefix}-{}", &hash[..11])
}

impl Pod {
    /// Creates the pod directory and hands `prepare` the shared directory
    /// (to mount the first container's rootfs), then launches the VM.
    /// Everything is undone if any step fails.
    pub async fn launch(
        id: &str,
        config: Config,
        hostname: &str,
        devices: crate::containerd::spec::Devices,
        prepare: impl FnOnce(&Path) -> Result<()>,
        log: &Logger,
    ) -> Result<Arc<Self>> {
        let dir = config.runtime.state_dir.join(dir_name(id));
        std::fs::create_dir_all(&config.runtime.state_dir).map_err(|e| {
            ShimError::io(format!("create {}", config.runtime.state_dir.display()), e)
        })?;
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(ShimError::AlreadyExists(format!(
                    "pod state directory {}",
                    dir.display()
                )))
            }
            Err(e) => return Err(ShimError::io(format!("create {}", dir.display()), e)),
        }
        let mut guard = DirGuard(Some(dir.clone()));
        let shared = dir.join("shared");
        std::fs::create_dir(&shared)
            .map_err(|e| ShimError::io(format!("create {}", shared.display()), e))?;
        prepare(&shared)?;
        let req = VmRequest {
            id: id.to_string(),
            dir: Some(dir.join("vm")),
            shares: vec![Share {
                tag: SHARE_TAG.into(),
                dir: shared.clone(),
            }],
            devices: devices.vfio_paths.clone(),
            cdi_devices: devices.cdi.clone(),
        };
        let vm = Vm::launch(&config, &HostRoots::default(), &req, log).await?;
        let agent = vm.agent().clone();
        let mut sb = CreateSandboxRequest::new();
        sb.sandbox_id = id.to_string();
        sb.hostname = hostname.to_string();
        sb.shared_fs_tag = SHARE_TAG.into();
        agent
            .create_sandbox(ctx(Duration::from_secs(30)), &sb)
            .await
            .map_err(|e| ShimError::agent("create the sandbox in the guest", e))?;
        let qmp = vm.qmp().clone();
        info!(log, "pod VM ready"; "pod" => id, "boot_ms" => u64::try_from(vm.boot_time().as_millis()).unwrap_or(u64::MAX));
        guard.0 = None;
        let config_dirs = config.gpu.cdi_spec_dirs.clone();
        let pod = Arc::new(Self {
            id: id.to_string(),
            dir,
            shared,
            config,
            agent,
            qmp,
            device_nodes: devices.nodes(&config_dirs).unwrap_or_default(),
            vm: Mutex::new(Some(vm)),
            dead: watch::channel(false).0,
            log: log.clone(),
        });
        tokio::spawn(Self::monitor(Arc::downgrade(&pod)));
        Ok(pod)
    }

    /// Watches QEMU; when it exits on its own, marks the pod dead.
    async fn monitor(pod: std::sync::Weak<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let Some(pod) = pod.upgrade() else { return };
            let mut vm = pod.vm.lock().await;
            let Some(v) = vm.as_mut() else { return };
            if let Some(status) = v.exited() {
                warn!(pod.log, "VM exited unexpectedly"; "status" => status.to_string());
                // Dropping the VM stops the helpers and removes its directory.
                vm.take();
                pod.dead.send_replace(true);
                return;
            }
        }
    }

    /// Resolves once the VM died on its own.
    pub async fn died(&self) {
        let mut rx = self.dead.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Whether the VM died on its own.
    pub fn is_dead(&self) -> bool {
        *self.dead.borrow()
    }

    /// Stops the VM and removes the pod directory (unmounting whatever is
    /// still mounted in it).
    pub async fn shutdown(&self) {
        let vm = self.vm.lock().await.take();
        if let Some(vm) = vm {
            vm.shutdown().await;
        }
        self.dead.send_replace(true);
        if let Err(e) = rootfs::unmount_all_under(&self.shared) {
            warn!(self.log, "unmounting leftovers"; "error" => e.to_string());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        info!(self.log, "pod stopped"; "pod" => &self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_names_are_short_and_distinct() {
        assert_eq!(dir_name("t1"), "t1");
        let a = dir_name(&"ab".repeat(32));
        let b = dir_name(&format!("{}c", "ab".repeat(31)));
        assert!(a.len() <= 24 && b.len() <= 24);
        assert_ne!(a, b);
        assert_ne!(dir_name("../x"), "../x");
    }
}
