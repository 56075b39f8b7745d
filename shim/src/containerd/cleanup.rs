//! The `delete` action: containerd runs it after a shim died (or when start
//! or create failed). It must stop what the dead shim left running and
//! remove its mounts and state, then print a `DeleteResponse`.

use std::path::Path;

use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::Message;

use super::args::Args;
use super::publisher::now;
use super::record::Record;
use super::rootfs;

/// Cleans up after the container in `bundle`.
pub fn cleanup(bundle: &Path) {
    if let Some(rec) = Record::read(bundle) {
        if rec.owns_vm {
            // The VM recorded the process groups it started (QEMU, helpers).
            cocoon_vmm::vm::kill_recorded(&rec.pod_dir.join("vm"));
            drop(rootfs::DirGuard::adopt(rec.pod_dir));
        } else if let Some(parent) = rec.rootfs.parent() {
            drop(rootfs::DirGuard::adopt(parent.to_path_buf()));
        }
        let _ = std::fs::remove_file(bundle.join(super::record::FILE));
    }
    remove_stale_socket(bundle, Path::new(super::bootstrap::SOCKET_ROOT));
}

/// Removes the dead shim's socket named by the bundle's `address` file, as
/// containerd's own shims do: only a socket under `socket_root` that
/// nobody listens on any more (a pod container's address is its pod's
/// shim, which may well be alive).
pub fn remove_stale_socket(bundle: &Path, socket_root: &Path) {
    let Ok(address) = std::fs::read_to_string(bundle.join("address")) else {
        return;
    };
    let Some(path) = address.trim().strip_prefix("unix://").map(Path::new) else {
        return;
    };
    if path.parent() != Some(socket_root) {
        return;
    }
    let is_socket = std::fs::symlink_metadata(path)
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()));
    let refused = matches!(
        std::os::unix::net::UnixStream::connect(path),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    );
    if is_socket && refused {
        let _ = std::fs::remove_file(path);
    }
}

/// Runs `delete`; returns the serialized `DeleteResponse`.
pub fn delete(args: &Args) -> anyhow::Result<Vec<u8>> {
    let bundle = if args.bundle.is_empty() {
        std::env::current_dir()?
    } else {
        args.bundle.clone().into()
    };
    cleanup(&bundle);
    let mut r = DeleteResponse::new();
    r.exit_status = 137;
    r.exited_at = Some(now()).into();
    Ok(r.write_to_bytes()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    use cocoon_vmm::process::ProcessRecord;

    #[test]
    fn a_dead_shims_socket_is_removed_and_a_live_one_kept() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("s");
        std::fs::create_dir(&root).unwrap();
        let bundle = d.path().join("bundle");
        std::fs::create_dir(&bundle).unwrap();
        let address = |p: &Path| {
            std::fs::write(bundle.join("address"), format!("unix://{}", p.display())).unwrap();
        };
        // Dead: the listener is gone, the file stays behind.
        let dead = root.join("dead");
        drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
        address(&dead);
        remove_stale_socket(&bundle, &root);
        assert!(!dead.exists());
        // Alive: kept.
        let live = root.join("live");
        let _l = std::os::unix::net::UnixListener::bind(&live).unwrap();
        address(&live);
        remove_stale_socket(&bundle, &root);
        assert!(live.exists());
        // Outside the socket directory: never touched.
        let other = d.path().join("other");
        drop(std::os::unix::net::UnixListener::bind(&other).unwrap());
        address(&other);
        remove_stale_socket(&bundle, &root);
        assert!(other.exists());
    }

    #[test]
    fn cleanup_kills_what_the_vm_recorded_and_removes_the_pod() {
        let dir = tempfile::tempdir().unwrap();
        let pod_dir = dir.path().join("state/pod1");
        let vm_dir = pod_dir.join("vm");
        std::fs::create_dir_all(&vm_dir).unwrap();
        std::fs::create_dir_all(pod_dir.join("shared/pod1/rootfs")).unwrap();
        // A VM process (its own group) left by a dead shim, and an
        // unrelated one that reuses a recorded pid's number later.
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let rec = ProcessRecord {
            name: "qemu".into(),
            pid,
            start_ticks: ProcessRecord::start_ticks(Path::new("/proc"), pid).unwrap(),
        };
        let stale = ProcessRecord {
            name: "virtiofsd".into(),
            pid: i32::try_from(std::process::id()).unwrap(),
            start_ticks: 1,
        };
        std::fs::write(
            vm_dir.join(cocoon_vmm::vm::PROCESSES_FILE),
            serde_json::to_vec(&vec![stale, rec]).unwrap(),
        )
        .unwrap();
        let bundle = dir.path().join("bundle");
        std::fs::create_dir(&bundle).unwrap();
        Record {
            pod_dir: pod_dir.clone(),
            rootfs: pod_dir.join("shared/pod1/rootfs"),
            owns_vm: true,
        }
        .write(&bundle)
        .unwrap();
        cleanup(&bundle);
        let status = child.wait().unwrap();
        assert!(!status.success(), "the recorded process was not killed");
        assert!(!pod_dir.exists());
        assert!(!bundle.join(super::super::record::FILE).exists());
        // A second cleanup (containerd may retry) is harmless.
        cleanup(&bundle);
    }

    #[test]
    fn cleanup_of_a_pod_container_removes_only_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("pod/shared");
        std::fs::create_dir_all(shared.join("c1/rootfs")).unwrap();
        std::fs::create_dir_all(shared.join("c2/rootfs")).unwrap();
        let bundle = dir.path().join("bundle");
        std::fs::create_dir(&bundle).unwrap();
        Record {
            pod_dir: dir.path().join("pod"),
            rootfs: shared.join("c1/rootfs"),
            owns_vm: false,
        }
        .write(&bundle)
        .unwrap();
        cleanup(&bundle);
        assert!(!shared.join("c1").exists());
        assert!(shared.join("c2/rootfs").exists());
    }
}
