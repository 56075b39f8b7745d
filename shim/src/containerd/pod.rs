//! The pod's VM: launched by the first (sandbox or single) container,
//! shared by the pod's containers, stopped when that container is deleted.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cocoon_protocol::agent::CreateSandboxRequest;
use cocoon_protocol::client::GuestClient;
use cocoon_vmm::config::KbsRoute;
use cocoon_vmm::launch::{GuestRelay, HostView, LaunchPlan, LaunchRequest, PlannedNic, Share};
use cocoon_vmm::vm::Vm;
use slog::{info, warn, Logger};
use tokio::sync::{watch, Mutex};

use super::error::{Result, ShimError};
use super::request::ResolvedDevices;
use super::rootfs::DirGuard;
use crate::node::NodeConfig;

/// Queues per pod interface at most (one per vCPU up to this): beyond it
/// the MSI-X vectors and the tap's fds cost more than they spread.
const MAX_NET_QUEUES: u32 = 8;

/// virtio-fs tag of the pod's shared directory.
pub const SHARE_TAG: &str = "cocoon-shared";

/// A pod's state directory before its VM runs: `<state_dir>/<dir name>`
/// with `shared/` (exported to the guest) in it; removed with everything
/// mounted below it unless a [`Pod`] takes it over.
#[derive(Debug)]
pub struct PodDir {
    guard: DirGuard,
    /// `<dir>/shared`.
    pub shared: PathBuf,
}

impl PodDir {
    /// Creates the directory of pod `id` under `state_dir`.
    pub fn create(state_dir: &Path, id: &str) -> Result<Self> {
        let guard = DirGuard::create(&state_dir.join(dir_name(id)))?;
        let shared = guard.path().join("shared");
        cocoon_vmm::private::create_dir(&shared)
            .map_err(|e| ShimError::io(format!("create {}", shared.display()), e))?;
        Ok(Self { guard, shared })
    }

    /// The pod's state directory.
    pub fn path(&self) -> &Path {
        self.guard.path()
    }
}

/// A running pod VM.
pub struct Pod {
    /// Sandbox id.
    pub id: String,
    /// `<state_dir>/<id>`.
    pub dir: PathBuf,
    /// `<dir>/shared`, exported to the guest.
    pub shared: PathBuf,
    /// The node configuration it was launched with.
    pub config: NodeConfig,
    /// The agent.
    pub guest: GuestClient,
    /// VFIO device nodes passed through at launch (what later containers
    /// of the pod may use).
    pub device_nodes: Vec<String>,
    /// Sealed models the pod's containers get: name → path of the sealed
    /// file in the container (`io.cocoon.model.<name>` pod annotations).
    pub models: std::collections::BTreeMap<String, String>,
    /// QEMU's host PID: the PID containerd gets for every process of the
    /// pod (as with Kata), since guest PIDs mean nothing on the host —
    /// clients such as Docker open `/proc/<pid>/ns/*`.
    pub vm_pid: u32,
    paused: std::sync::atomic::AtomicBool,
    vm: Mutex<Option<Vm>>,
    dead: watch::Sender<bool>,
    dir_guard: std::sync::Mutex<Option<DirGuard>>,
    /// The pod's mirrored network, restored at shutdown.
    network: std::sync::Mutex<Option<PodNetwork>>,
    /// Its containers' verified layers (none: root filesystems over
    /// virtio-fs).
    pub layers: Option<super::layers::PodLayers>,
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

/// What a pod's VM is launched with, besides the node config.
#[derive(Debug)]
pub struct PodLaunch<'a> {
    /// Sandbox id.
    pub id: &'a str,
    /// Guest hostname.
    pub hostname: &'a str,
    /// PCI functions to pass through, and their device nodes.
    pub devices: ResolvedDevices,
    /// The pod's initdata document, measured into the launch.
    pub initdata: Option<Vec<u8>>,
    /// Secrets to fetch in the guest: file name → resource URI.
    pub secrets: std::collections::BTreeMap<String, String>,
    /// Sealed models for the pod's containers: name → path in them.
    pub models: std::collections::BTreeMap<String, String>,
    /// The pod's network namespace (its interfaces go to the VM).
    pub netns: Option<PathBuf>,
    /// containerd's API, when the pod's containers get verified layers.
    pub layers: Option<super::images::Containerd>,
    /// Why the pod may not run (its root filesystems), reported once the
    /// launch plan has checked the host and the configuration.
    pub refusal: Option<ShimError>,
}

/// The pod's network namespace and the interfaces mirrored from it.
#[derive(Debug, Clone)]
struct PodNetwork {
    netns: PathBuf,
    interfaces: Vec<String>,
}

impl PodNetwork {
    /// Removes the redirects from the pod's interfaces (the taps went
    /// with QEMU).
    async fn restore(&self, log: &Logger) {
        let me = self.clone();
        let r = tokio::task::spawn_blocking(move || {
            cocoon_vmm::net::unmirror(&me.netns, &me.interfaces)
        })
        .await;
        if let Ok(Err(e)) = r {
            warn!(log, "the pod's network namespace could not be restored"; "error" => e.to_string());
        }
    }
}

fn proto_interface(i: &cocoon_vmm::net::Interface) -> cocoon_protocol::agent::Interface {
    let mut p = cocoon_protocol::agent::Interface::new();
    p.name = i.name.clone();
    p.mac = i.mac_string();
    p.mtu = i.mtu;
    p.addresses = i
        .addresses
        .iter()
        .map(|(a, l)| format!("{a}/{l}"))
        .collect();
    p.neighbours = i
        .neighbours
        .iter()
        .map(|n| {
            let mut pn = cocoon_protocol::agent::Neighbour::new();
            pn.ip = n.ip.to_string();
            pn.mac = cocoon_vmm::net::mac_string(&n.mac);
            pn
        })
        .collect();
    p.routes = i
        .routes
        .iter()
        .map(|r| {
            let mut pr = cocoon_protocol::agent::Route::new();
            pr.destination = r
                .destination
                .map(|(d, l)| format!("{d}/{l}"))
                .unwrap_or_default();
            pr.gateway = r.gateway.map(|g| g.to_string()).unwrap_or_default();
            pr.onlink = r.onlink;
            pr
        })
        .collect();
    p
}

impl Pod {
    /// Plans and launches the VM of the pod over `dir` (whose share holds
    /// the first container's rootfs already), then creates the sandbox in
    /// the guest, handing it the initdata. On failure everything, `dir`
    /// included, is undone.
    pub async fn launch(
        p: PodLaunch<'_>,
        config: NodeConfig,
        dir: PodDir,
        log: &Logger,
    ) -> Result<Arc<Self>> {
        // The pod's interfaces, each on a tap; the fds stay open here until
        // QEMU has its copies.
        let mirrored = match (&p.netns, config.vm.qemu.network_model) {
            (Some(ns), cocoon_vmm::config::NetworkModel::Tcfilter) => {
                let ns = ns.clone();
                // A queue per vCPU (the VM is sized for the pod already).
                let queues = config.vm.qemu.vcpus.clamp(1, MAX_NET_QUEUES);
                tokio::task::spawn_blocking(move || cocoon_vmm::net::mirror(&ns, queues))
                    .await
                    .map_err(|e| ShimError::FailedPrecondition(format!("pod network: {e}")))?
                    .map_err(|e| ShimError::FailedPrecondition(format!("pod network: {e}")))?
            }
            _ => Vec::new(),
        };
        let network = p
            .netns
            .clone()
            .filter(|_| !mirrored.is_empty())
            .map(|netns| PodNetwork {
                netns,
                interfaces: mirrored.iter().map(|m| m.interface.name.clone()).collect(),
            });
        if !mirrored.is_empty() {
            info!(log, "pod network mirrored to the VM"; "netns" => p.netns.as_ref().map(|n| n.display().to_string()),
                  "interfaces" => mirrored.iter().map(|m| format!("{} {} via {}", m.interface.name, m.interface.mac_string(), m.tap_name)).collect::<Vec<_>>().join(", "));
        }
        let launched = Self::launch_vm(p, config, dir, log, &mirrored).await;
        drop(mirrored);
        match launched {
            Ok(pod) => {
                *pod.network.lock().unwrap_or_else(|e| e.into_inner()) = network;
                Ok(pod)
            }
            Err(e) => {
                if let Some(n) = network {
                    n.restore(log).await;
                }
                Err(e)
            }
        }
    }

    async fn launch_vm(
        p: PodLaunch<'_>,
        config: NodeConfig,
        dir: PodDir,
        log: &Logger,
        mirrored: &[cocoon_vmm::net::Mirrored],
    ) -> Result<Arc<Self>> {
        use std::os::fd::AsRawFd;
        let (id, hostname, devices) = (p.id, p.hostname, p.devices);
        let req = LaunchRequest {
            id: id.to_string(),
            dir: Some(dir.path().join("vm")),
            shares: vec![Share {
                tag: SHARE_TAG.into(),
                dir: dir.shared.clone(),
            }],
            devices: devices.functions,
            vsock_cid: None,
            initdata: p.initdata.clone(),
            // The guest reaches the node's KBS through a byte relay (or, with
            // kbs_via = "pod-network", over the pod's network: no relay).
            relays: config
                .vm
                .attestation
                .kbs
                .iter()
                .filter(|_| config.vm.attestation.route == KbsRoute::Relay)
                .map(|k| GuestRelay {
                    port: cocoon_protocol::KBS_RELAY_PORT,
                    target: k.authority.clone(),
                })
                .collect(),
            nics: mirrored
                .iter()
                .map(|m| PlannedNic {
                    mac: m.interface.mac_string(),
                    mtu: m.interface.mtu,
                    tap_fds: m.taps.iter().map(AsRawFd::as_raw_fd).collect(),
                })
                .collect(),
            disks: Vec::new(),
            hotplug_slots: if p.layers.is_some() {
                config.vm.image.layer_slots
            } else {
                0
            },
        };
        let started = std::time::Instant::now();
        let plan = LaunchPlan::build_blocking(&config.vm, &HostView::detect(), &req)
            .await
            .map_err(cocoon_vmm::vm::VmError::from)?;
        if let Some(e) = p.refusal {
            return Err(e);
        }
        let plan_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let vm = Vm::launch(plan, log).await?;
        let boot_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let guest = vm.guest().clone();
        let mut sb = CreateSandboxRequest::new();
        sb.sandbox_id = id.to_string();
        sb.hostname = hostname.to_string();
        sb.shared_fs_tag = SHARE_TAG.into();
        sb.initdata = p.initdata.unwrap_or_default();
        let secrets = p.secrets.len();
        sb.secrets = p.secrets.into_iter().collect();
        sb.interfaces = mirrored
            .iter()
            .map(|m| proto_interface(&m.interface))
            .collect();
        sb.kbs_over_pod_network = config.vm.attestation.route == KbsRoute::PodNetwork;
        let sandbox_started = std::time::Instant::now();
        if let Err(e) = guest.create_sandbox(sb).await {
            // Reaped before the pod directory goes with the error.
            vm.kill_all().await;
            return Err(e.into());
        }
        // boot_ms: planning (measurement, TEE, devices) to agent ready;
        // sandbox_ms: CreateSandbox (initdata check, share mount, and with
        // secrets the attestation and fetch through the relay).
        let sandbox_ms = u64::try_from(sandbox_started.elapsed().as_millis()).unwrap_or(u64::MAX);
        info!(log, "pod VM ready"; "pod" => id, "plan_ms" => plan_ms,
              "boot_ms" => boot_ms, "sandbox_ms" => sandbox_ms, "secrets" => secrets);
        let layers = match p.layers {
            Some(api) => match super::layers::PodLayers::new(&config, api, vm.qmp().clone()) {
                Ok(l) => Some(l),
                Err(e) => {
                    vm.kill_all().await;
                    return Err(e);
                }
            },
            None => None,
        };
        let exit = vm.stopped();
        let vm_pid = vm.pids().first().map_or(0, |p| p.unsigned_abs());
        let pod = Arc::new(Self {
            id: id.to_string(),
            dir: dir.path().to_path_buf(),
            shared: dir.shared.clone(),
            config,
            guest,
            device_nodes: devices.nodes,
            models: p.models,
            vm_pid,
            paused: std::sync::atomic::AtomicBool::new(false),
            vm: Mutex::new(Some(vm)),
            dead: watch::channel(false).0,
            dir_guard: std::sync::Mutex::new(Some(dir.guard)),
            network: std::sync::Mutex::new(None),
            layers,
            log: log.clone(),
        });
        tokio::spawn(Self::monitor(Arc::downgrade(&pod), exit));
        Ok(pod)
    }

    /// Learns that QEMU or one of its helpers exited; if the pod did not
    /// stop the VM, kills what is left, marks the pod dead (every task
    /// exits) and drops the VM.
    async fn monitor(
        pod: std::sync::Weak<Self>,
        stopped: impl std::future::Future<Output = cocoon_vmm::vm::Stopped>,
    ) {
        let stopped = stopped.await;
        let Some(pod) = pod.upgrade() else { return };
        let Some(vm) = pod.vm.lock().await.take() else {
            // Stopped by `shutdown`.
            return;
        };
        let status = stopped.status.map(|s| s.to_string());
        if stopped.who == "qemu" {
            warn!(pod.log, "VM exited unexpectedly"; "status" => status);
        } else {
            warn!(pod.log, "a helper of the VM died; stopping the VM"; "helper" => stopped.who, "status" => status);
        }
        // Everything is reaped before dropping the VM removes its directory.
        vm.kill_all().await;
        drop(vm);
        pod.dead.send_replace(true);
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

    /// Pauses the VM.
    pub async fn pause(&self) -> Result<()> {
        match self.vm.lock().await.as_ref() {
            Some(vm) => {
                vm.pause().await?;
                self.paused.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            }
            None => Err(ShimError::Unavailable("the pod's VM is gone".into())),
        }
    }

    /// Resumes the VM.
    pub async fn resume(&self) -> Result<()> {
        match self.vm.lock().await.as_ref() {
            Some(vm) => {
                vm.resume().await?;
                self.paused
                    .store(false, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            }
            None => Err(ShimError::Unavailable("the pod's VM is gone".into())),
        }
    }

    /// Whether the VM is paused (its guest cannot answer).
    pub fn is_paused(&self) -> bool {
        self.paused.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops the VM and removes the pod directory (unmounting whatever is
    /// still mounted in it).
    pub async fn shutdown(&self) {
        let vm = self.vm.lock().await.take();
        if let Some(vm) = vm {
            vm.shutdown().await;
        }
        self.dead.send_replace(true);
        let network = self
            .network
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(n) = network {
            n.restore(&self.log).await;
        }
        let guard = self
            .dir_guard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(dir) = guard.map(DirGuard::release) {
            // A process of the VM that was still exiting may hold a mount
            // or add a file for a moment: try a few times, then say so.
            let mut tries = 0;
            while let Err(e) = super::rootfs::remove_unmounted(&dir) {
                tries += 1;
                if tries == 10 {
                    warn!(self.log, "the pod's state directory could not be removed"; "dir" => dir.display().to_string(), "error" => e.to_string());
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
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

    #[test]
    fn a_pod_dir_is_removed_with_its_share_unless_kept() {
        let state = tempfile::tempdir().unwrap();
        let d = PodDir::create(state.path(), "p1").unwrap();
        assert!(d.shared.is_dir());
        let path = d.path().to_path_buf();
        assert!(PodDir::create(state.path(), "p1").is_err());
        drop(d);
        assert!(!path.exists());
    }
}
