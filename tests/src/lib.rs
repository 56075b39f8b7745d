//! Harness for Cocoon's integration tests.
//!
//! The tests drive the real binaries (`cocoon`, later the shim under
//! containerd) against real QEMU and the guest from `make guest`. They need
//! the environment `make test` sets:
//! - `COCOON_TEST_CONFIG`: a node config using the build tree
//!   (build/cocoon-dev.toml),
//! - `COCOON_BIN_DIR`: the directory holding the built binaries.
//!
//! Without them each test prints `SKIP ...` and returns, so a plain
//! `cargo test` stays hermetic. Every test gets its own state directory and
//! finishes with [`Sandbox::assert_clean`]: no process that mentions the
//! state directory, no file left in it.

pub mod containerd;
pub mod cri;
pub mod docker;
pub mod kbs;
pub mod pod_kbs;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where `make test` put things.
#[derive(Debug, Clone)]
pub struct Env {
    /// Node config template.
    pub config: PathBuf,
    /// Built host binaries.
    pub bin_dir: PathBuf,
}

/// The environment, or `None` after printing why the test is skipped.
pub fn env_or_skip(test: &str) -> Option<Env> {
    let config = std::env::var_os("COCOON_TEST_CONFIG").map(PathBuf::from);
    let bin_dir = std::env::var_os("COCOON_BIN_DIR").map(PathBuf::from);
    match (config, bin_dir) {
        (Some(config), Some(bin_dir)) => Some(Env { config, bin_dir }),
        _ => {
            eprintln!("SKIP {test}: needs COCOON_TEST_CONFIG and COCOON_BIN_DIR (run `make test`)");
            None
        }
    }
}

/// Repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A deterministic pseudo-random byte stream (xorshift64*), so large test
/// payloads need no randomness source and are the same on every run.
pub fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Size of `/data/big` in the busybox fixture.
pub const BIG_FILE_LEN: usize = 10 * 1024 * 1024;

/// The shared busybox root filesystem (built once per test binary under
/// build/test-fixtures), with a 10 MiB `/data/big`.
pub fn busybox_rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        let dir = repo_root().join("build/test-fixtures/busybox-rootfs");
        if dir.join("data/big").exists() {
            return dir;
        }
        let tmp = dir.with_extension(format!("partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let st = Command::new(repo_root().join("tests/fixtures/make-busybox-rootfs.sh"))
            .arg(&tmp)
            .status()
            .expect("run make-busybox-rootfs.sh");
        assert!(st.success(), "make-busybox-rootfs.sh failed");
        std::fs::create_dir_all(tmp.join("data")).unwrap();
        std::fs::write(tmp.join("data/big"), pseudo_random(BIG_FILE_LEN, 42)).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).unwrap_or_else(|e| {
            // Another test binary won the race.
            let _ = std::fs::remove_dir_all(&tmp);
            assert!(dir.join("data/big").exists(), "rename fixture: {e}");
        });
        dir
    })
}

/// One test's private state directory and node configuration.
#[derive(Debug)]
pub struct Sandbox {
    /// The temp dir holding `state/` and `config.toml`.
    pub dir: tempfile::TempDir,
    /// The node config file.
    pub config: PathBuf,
    /// `runtime.state_dir`.
    pub state_dir: PathBuf,
    /// Where the binaries are.
    pub bin_dir: PathBuf,
}

impl Sandbox {
    /// A sandbox whose config is the template with `edit` applied.
    pub fn new(env: &Env, edit: impl FnOnce(&mut toml::Table)) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cocoon-test-")
            .tempdir_in("/tmp")
            .unwrap();
        let state_dir = dir.path().join("state");
        let mut table: toml::Table = std::fs::read_to_string(&env.config)
            .unwrap()
            .parse()
            .unwrap();
        table["runtime"]
            .as_table_mut()
            .unwrap()
            .insert("state_dir".into(), state_dir.display().to_string().into());
        edit(&mut table);
        let config = dir.path().join("config.toml");
        std::fs::write(&config, toml::to_string(&table).unwrap()).unwrap();
        Self {
            dir,
            config,
            state_dir,
            bin_dir: env.bin_dir.clone(),
        }
    }

    /// `cocoon --config <this sandbox's config>`.
    pub fn cocoon(&self) -> Command {
        let mut c = Command::new(self.bin_dir.join("cocoon"));
        c.arg("--config").arg(&self.config);
        c
    }

    /// Runs `cocoon run --rootfs <busybox> -- args...`.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cocoon()
            .arg("run")
            .arg("--rootfs")
            .arg(busybox_rootfs())
            .arg("--")
            .args(args)
            .output()
            .expect("spawn cocoon")
    }

    /// PIDs and command lines of live processes that mention the state dir.
    pub fn leftover_processes(&self) -> Vec<String> {
        let needle = self.state_dir.display().to_string();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| {
            let e = e.ok()?;
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            (cmd.contains(&needle) && !stat.contains(") Z")).then(|| format!("{pid}: {cmd}"))
        })
        .collect()
    }

    /// Asserts that nothing of this sandbox is left: no process (QEMU,
    /// virtiofsd, vhost-device-vsock) and nothing in the state directory.
    pub fn assert_clean(&self) {
        let start = Instant::now();
        loop {
            let procs = self.leftover_processes();
            let files: Vec<String> = std::fs::read_dir(&self.state_dir)
                .map(|d| {
                    d.filter_map(|e| Some(e.ok()?.path().display().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            if procs.is_empty() && files.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "left behind: processes {procs:?}, files {files:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sandbox {
    /// After a failed test: kill what still runs on this state directory
    /// and unmount what is mounted below it, so one failure does not leak
    /// VMs into later tests. A passing test has already asserted that
    /// nothing is left, so this finds nothing then.
    fn drop(&mut self) {
        for p in self.leftover_processes() {
            if let Some(pid) = p.split(':').next() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {}[^ ]*' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l",
                self.state_dir.display()
            ))
            .status();
    }
}

/// stdout and stderr as text, for assertion messages.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Debian's SEV-SNP firmware (ovmf-amdsev, unpacked by `make deps`), or
/// `None` after printing why the caller skips.
pub fn snp_firmware(test: &str) -> Option<PathBuf> {
    let p = repo_root().join("build/firmware/usr/share/ovmf/OVMF.amdsev.fd");
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "SKIP {test}: {} missing (make deps fetches ovmf-amdsev from Debian)",
            p.display()
        );
        None
    }
}

/// Debian's TDX firmware (ovmf-inteltdx, unpacked by `make deps`).
pub fn tdx_firmware(test: &str) -> Option<PathBuf> {
    let p = repo_root().join("build/firmware/usr/share/ovmf/OVMF.inteltdx.ms.fd");
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "SKIP {test}: {} missing (make deps fetches ovmf-inteltdx from Debian)",
            p.display()
        );
        None
    }
}

/// A recorded GPU host for shim tests: an H100 in CC mode on at
/// 0000:41:00.0 (IOMMU group 12), one in CC mode off at 0000:42:00.0
/// (group 13), and a CDI spec `nvidia.com/pgpu` naming 12, 13 and a
/// missing 99.
#[derive(Debug)]
pub struct GpuHost {
    /// Holds everything.
    pub dir: tempfile::TempDir,
    /// The CDI spec directory.
    pub cdi: PathBuf,
}

impl GpuHost {
    /// Writes the host.
    pub fn new() -> Self {
        use cocoon_vmm::fixtures::gpu::{h100, write};
        let dir = tempfile::tempdir().unwrap();
        write(
            &dir.path().join("host"),
            &[h100("0000:41:00.0", 12, 1), h100("0000:42:00.0", 13, 0)],
        );
        let cdi = dir.path().join("cdi");
        std::fs::create_dir_all(&cdi).unwrap();
        let device = |n: &str| {
            format!(
                "- name: \"{n}\"\n  containerEdits:\n    deviceNodes:\n    - path: /dev/vfio/{n}\n"
            )
        };
        std::fs::write(
            cdi.join("pgpu.yaml"),
            format!(
                "cdiVersion: 0.5.0\nkind: nvidia.com/pgpu\ndevices:\n{}{}{}",
                device("12"),
                device("13"),
                device("99")
            ),
        )
        .unwrap();
        Self { dir, cdi }
    }

    /// Node config edits: `[gpu]` reads this host with `cc_mode = "on"`,
    /// and launches stop at the QEMU argv (`dry_run`).
    pub fn configure(&self, t: &mut toml::Table) {
        let mut g = toml::Table::new();
        g.insert(
            "host_root".into(),
            self.dir.path().join("host").display().to_string().into(),
        );
        g.insert(
            "cdi_spec_dirs".into(),
            vec![toml::Value::from(self.cdi.display().to_string())].into(),
        );
        g.insert("cc_mode".into(), "on".into());
        t.insert("gpu".into(), g.into());
        t["runtime"].as_table_mut().unwrap().insert(
            "allowed_annotations".into(),
            vec![toml::Value::from("cdi.k8s.io/*")].into(),
        );
        t["hypervisor"]["qemu"]
            .as_table_mut()
            .unwrap()
            .insert("dry_run".into(), true.into());
    }
}

impl Default for GpuHost {
    fn default() -> Self {
        Self::new()
    }
}

/// PIDs of processes whose command line holds both `needle` and `also`.
pub fn pids_matching(needle: &str, also: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let cmd = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).ok()?)
                .replace('\0', " ");
            (cmd.contains(needle) && cmd.contains(also)).then_some(pid)
        })
        .collect()
}

/// Files under `dir` (not following links) whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8], found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(t) = e.file_type() else { continue };
        let p = e.path();
        if t.is_dir() {
            files_containing(&p, needle, found);
        } else if t.is_file() {
            if let Ok(data) = std::fs::read(&p) {
                if data.windows(needle.len()).any(|w| w == needle) {
                    found.push(p.display().to_string());
                }
            }
        }
    }
}
