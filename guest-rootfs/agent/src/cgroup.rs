//! One cgroup v2 per container in the guest: `linux.resources` become its
//! limits, its files are the container's statistics, and `memory.events`
//! tells an OOM kill from any other SIGKILL.
//!
//! Layout: the agent mounts cgroup2 at `/sys/fs/cgroup` (as PID 1) and
//! keeps containers under `/sys/fs/cgroup/cocoon/<id>`, with the cpu, memory
//! and pids controllers enabled down to them. A container's processes are
//! cloned straight into its cgroup (`CLONE_INTO_CGROUP`) with a cgroup
//! namespace rooted there, so a cgroup mount in the container shows only its
//! own subtree.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::error::{Error, Result};

/// Where the agent keeps container cgroups when it runs as PID 1.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup/cocoon";

/// The smallest memory limit accepted: below this a container cannot even
/// start a shell (runc's floor is the same order).
pub const MIN_MEMORY: i64 = 6 * 1024 * 1024;

fn io_err(op: String, e: &std::io::Error) -> Error {
    Error::sys(op, Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
}

/// Limits from `linux.resources`, in cgroup v2 terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// `memory.max` in bytes.
    pub memory_max: Option<i64>,
    /// `memory.low` in bytes (from `memory.reservation`).
    pub memory_low: Option<i64>,
    /// `memory.swap.max` in bytes (`memory.swap` minus `memory.limit`).
    pub swap_max: Option<i64>,
    /// `cpu.max`: quota (None: max) and period, in µs.
    pub cpu_max: Option<(Option<i64>, u64)>,
    /// `cpu.weight` (from `cpu.shares`).
    pub cpu_weight: Option<u64>,
    /// `pids.max`.
    pub pids_max: Option<i64>,
    /// `linux.resources.unified`: cgroup v2 file → value.
    pub unified: BTreeMap<String, String>,
}

impl Limits {
    /// The files to write, in order.
    pub fn files(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let max = |v: i64| {
            if v < 0 {
                "max".to_string()
            } else {
                v.to_string()
            }
        };
        if let Some(v) = self.memory_low {
            out.push(("memory.low".into(), max(v)));
        }
        if let Some(v) = self.memory_max {
            out.push(("memory.max".into(), max(v)));
        }
        if let Some(v) = self.swap_max {
            out.push(("memory.swap.max".into(), max(v)));
        }
        if let Some(w) = self.cpu_weight {
            out.push(("cpu.weight".into(), w.to_string()));
        }
        if let Some((quota, period)) = self.cpu_max {
            let q = quota
                .filter(|q| *q > 0)
                .map_or("max".to_string(), |q| q.to_string());
            out.push(("cpu.max".into(), format!("{q} {period}")));
        }
        if let Some(v) = self.pids_max {
            out.push((
                "pids.max".into(),
                if v <= 0 { "max".into() } else { v.to_string() },
            ));
        }
        for (k, v) in &self.unified {
            out.push((k.clone(), v.clone()));
        }
        out
    }
}

/// `cpu.shares` (2..262144) to `cpu.weight` (1..10000), as runc and crun
/// convert it.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

/// The container cgroups' parent.
#[derive(Debug, Clone)]
pub struct Cgroups {
    root: PathBuf,
}

fn enable_controllers(dir: &Path) -> std::io::Result<()> {
    let available = std::fs::read_to_string(dir.join("cgroup.controllers"))?;
    let wanted: Vec<String> = available
        .split_whitespace()
        .filter(|c| matches!(*c, "cpu" | "memory" | "pids" | "io"))
        .map(|c| format!("+{c}"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    std::fs::write(dir.join("cgroup.subtree_control"), wanted.join(" "))
}

impl Cgroups {
    /// Prepares `root` (created if needed) with the controllers enabled from
    /// its parent down. `None` when there is no cgroup v2 there.
    pub fn init(root: &Path) -> Option<Self> {
        let parent = root.parent()?;
        if !parent.join("cgroup.controllers").exists() {
            return None;
        }
        if let Err(e) = enable_controllers(parent)
            .and_then(|()| std::fs::create_dir_all(root))
            .and_then(|()| enable_controllers(root))
        {
            crate::log(&format!(
                "cgroups at {} unusable, containers run without limits: {e}",
                root.display()
            ));
            return None;
        }
        Some(Self {
            root: root.to_path_buf(),
        })
    }

    /// Creates the container's cgroup with its limits.
    pub fn create(&self, id: &str, limits: &Limits) -> Result<ContainerCgroup> {
        let path = self.root.join(id);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(format!("create cgroup {}", path.display()), &e)),
        }
        let cg = ContainerCgroup::open(path)?;
        if let Err(e) = cg.apply(limits) {
            cg.remove();
            return Err(e);
        }
        Ok(cg)
    }
}

/// One container's cgroup.
#[derive(Debug)]
pub struct ContainerCgroup {
    path: PathBuf,
    dir: OwnedFd,
}

impl ContainerCgroup {
    fn open(path: PathBuf) -> Result<Self> {
        let dir = nix::fcntl::open(
            &path,
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| Error::sys(format!("open cgroup {}", path.display()), e))?;
        // SAFETY: `open` just returned this fd and nothing else owns it.
        let dir = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(dir) };
        Ok(Self { path, dir })
    }

    /// The cgroup directory's fd, for `CLONE_INTO_CGROUP`.
    pub fn fd(&self) -> i32 {
        self.dir.as_raw_fd()
    }

    /// Writes the limits (also for `UpdateContainer`).
    pub fn apply(&self, limits: &Limits) -> Result<()> {
        for (file, value) in limits.files() {
            std::fs::write(self.path.join(&file), &value).map_err(|e| {
                let field = if file.starts_with("memory") {
                    "linux.resources.memory"
                } else if file.starts_with("cpu") {
                    "linux.resources.cpu"
                } else if file.starts_with("pids") {
                    "linux.resources.pids"
                } else {
                    "linux.resources.unified"
                };
                Error::InvalidArgument {
                    field,
                    problem: format!("the guest kernel refused {file} = {value:?}: {e}"),
                }
            })?;
        }
        Ok(())
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.path.join(file)).unwrap_or_default()
    }

    fn keyed(&self, file: &str, key: &str) -> u64 {
        self.read(file)
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok()).flatten()
            })
            .unwrap_or(0)
    }

    /// How many processes the kernel's OOM killer took from this cgroup.
    pub fn oom_kills(&self) -> u64 {
        self.keyed("memory.events", "oom_kill")
    }

    /// CPU user and system time (ns), memory in use and anonymous memory
    /// (bytes), the memory limit (None: unlimited) and the process count.
    pub fn stats(&self) -> CgroupStats {
        let limit = self.read("memory.max");
        CgroupStats {
            cpu_user_ns: self.keyed("cpu.stat", "user_usec") * 1000,
            cpu_system_ns: self.keyed("cpu.stat", "system_usec") * 1000,
            memory_usage: self.read("memory.current").trim().parse().unwrap_or(0),
            memory_anon: self.keyed("memory.stat", "anon"),
            memory_limit: limit.trim().parse().ok(),
            pids: self.read("pids.current").trim().parse().unwrap_or(0),
        }
    }

    /// Kills what is left in the cgroup and removes it.
    pub fn remove(&self) {
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
        for _ in 0..50 {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(_) => return,
            }
        }
        crate::log(&format!(
            "cgroup {} still busy; left in place",
            self.path.display()
        ));
    }
}

/// A container's resource use, from its cgroup.
#[derive(Debug, Clone, Copy, Default)]
pub struct CgroupStats {
    /// User CPU time.
    pub cpu_user_ns: u64,
    /// System CPU time.
    pub cpu_system_ns: u64,
    /// `memory.current`.
    pub memory_usage: u64,
    /// `anon` of `memory.stat`.
    pub memory_anon: u64,
    /// `memory.max`, when set.
    pub memory_limit: Option<u64>,
    /// `pids.current`.
    pub pids: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_become_cgroup_v2_files() {
        let l = Limits {
            memory_max: Some(64 << 20),
            memory_low: Some(-1),
            swap_max: Some(0),
            cpu_max: Some((Some(50_000), 100_000)),
            cpu_weight: Some(shares_to_weight(1024)),
            pids_max: Some(0),
            unified: [("memory.high".to_string(), "max".to_string())]
                .into_iter()
                .collect(),
        };
        assert_eq!(
            l.files(),
            vec![
                ("memory.low".to_string(), "max".to_string()),
                ("memory.max".into(), "67108864".into()),
                ("memory.swap.max".into(), "0".into()),
                ("cpu.weight".into(), "39".into()),
                ("cpu.max".into(), "50000 100000".into()),
                ("pids.max".into(), "max".into()),
                ("memory.high".into(), "max".into()),
            ]
        );
        let unlimited = Limits {
            cpu_max: Some((None, 100_000)),
            ..Default::default()
        };
        assert_eq!(
            unlimited.files(),
            vec![("cpu.max".to_string(), "max 100000".to_string())]
        );
    }

    #[test]
    fn shares_convert_like_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(0), 100);
    }
}
