//! The `delete` action: containerd runs it after a shim died (or when start
//! or create failed). It must stop what the dead shim left running and
//! remove its mounts and state, then print a `DeleteResponse`.

use std::path::Path;
use std::time::{Duration, Instant};

use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::Message;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::args::Args;
use super::publisher::now;
use super::record::Record;
use super::rootfs;

/// PIDs of live processes whose command line mentions `dir`.
fn processes_using(dir: &Path) -> Vec<Pid> {
    let needle = dir.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (cmd.contains(&needle) && pid != std::process::id().cast_signed())
                .then_some(Pid::from_raw(pid))
        })
        .collect()
}

/// Cleans up after the container in `bundle`.
pub fn cleanup(bundle: &Path) {
    let Some(rec) = Record::read(bundle) else {
        return;
    };
    if rec.owns_vm {
        // QEMU and the helpers name the pod directory on their command line.
        let vm_dir = rec.pod_dir.join("vm");
        for pid in processes_using(&vm_dir) {
            let _ = kill(pid, Signal::SIGKILL);
        }
        let start = Instant::now();
        while !processes_using(&vm_dir).is_empty() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = rootfs::unmount_all_under(&rec.pod_dir);
        let _ = std::fs::remove_dir_all(&rec.pod_dir);
    } else {
        let _ = rootfs::unmount_rootfs(&rec.rootfs);
        if let Some(parent) = rec.rootfs.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
    let _ = std::fs::remove_file(bundle.join(super::record::FILE));
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
