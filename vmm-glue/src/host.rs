//! Facts about the host, read through redirectable roots so tests can point
//! them at fixture trees.

use std::path::{Path, PathBuf};

/// Where host facts are read from: `/` on a real host, a fixture tree in
/// tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoots {
    /// procfs root (`/proc`).
    pub proc: PathBuf,
    /// devtmpfs root (`/dev`).
    pub dev: PathBuf,
    /// sysfs root (`/sys`).
    pub sys: PathBuf,
}

impl Default for HostRoots {
    fn default() -> Self {
        Self::under(Path::new("/"))
    }
}

impl HostRoots {
    /// Roots under a fixture directory holding `proc/`, `dev/` and `sys/`.
    pub fn under(root: &Path) -> Self {
        Self {
            proc: root.join("proc"),
            dev: root.join("dev"),
            sys: root.join("sys"),
        }
    }

    /// CPU flags of the first processor in `/proc/cpuinfo`.
    pub fn cpu_flags(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.proc.join("cpuinfo")).unwrap_or_default();
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == "flags").then(|| v.split_whitespace().map(str::to_string).collect())
            })
            .unwrap_or_default()
    }

    /// Whether KVM can run ordinary guests: `/dev/kvm` exists **and** the CPU
    /// advertises vmx or svm. Some hosts expose `/dev/kvm` without hardware
    /// virtualization (nested setups, paravirtual KVM), where guests fail.
    pub fn kvm_usable(&self) -> bool {
        let flags = self.cpu_flags();
        self.dev.join("kvm").exists() && flags.iter().any(|f| f == "vmx" || f == "svm")
    }

    /// Whether the kernel vhost-vsock device exists.
    pub fn has_vhost_vsock(&self) -> bool {
        self.dev.join("vhost-vsock").exists()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(flags: &str, kvm: bool) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("proc")).unwrap();
        std::fs::create_dir_all(d.path().join("dev")).unwrap();
        std::fs::write(
            d.path().join("proc/cpuinfo"),
            format!("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: other\n"),
        )
        .unwrap();
        if kvm {
            std::fs::write(d.path().join("dev/kvm"), "").unwrap();
        }
        d
    }

    #[test]
    fn kvm_needs_both_the_device_and_the_cpu_flag() {
        let d = fixture("fpu svm sev", true);
        assert!(HostRoots::under(d.path()).kvm_usable());
        let d = fixture("fpu vmx", false);
        assert!(!HostRoots::under(d.path()).kvm_usable());
        // /dev/kvm without vmx/svm (as on paravirtual KVM hosts).
        let d = fixture("fpu sse", true);
        assert!(!HostRoots::under(d.path()).kvm_usable());
        assert_eq!(HostRoots::under(d.path()).cpu_flags(), vec!["fpu", "sse"]);
    }
}
