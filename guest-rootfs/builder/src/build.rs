//! Builds the guest pair: `vmlinuz`, `initrd.img` and `manifest.json`.

use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::initrd::{Entry, Initrd, InitrdError};
use crate::modules::{ModuleDb, ModulesError};

/// Modules every guest loads: the virtio vsock transport the agent serves
/// on, and the TEE report interfaces the agent reads HOST_DATA / MRCONFIGID
/// and attestation evidence from (configfs-tsm, the SEV-SNP and TDX guest
/// drivers; each binds only on its own hardware). Cocoon's kernel has them
/// all built in (`modules.builtin`), so its initrd carries none.
pub const DEFAULT_MODULES: &[&str] = &[
    "vmw_vsock_virtio_transport",
    "tsm",
    "sev_guest",
    "tdx_guest",
];

/// Where the agent finds its module list (must match the agent).
pub const LOAD_ORDER_PATH: &str = "lib/modules/load-order";

/// Errors while building the guest.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No or several kernels in the tree.
    #[error("expected exactly one boot/vmlinuz-* in {dir}, found {found}; run `make kernel` (Cocoon's kernel) or `make deps` (Debian's, for KERNEL=debian)")]
    Kernel {
        /// Kernel tree.
        dir: PathBuf,
        /// How many were found.
        found: usize,
    },
    /// Reading an input failed.
    #[error("cannot read {path}")]
    Read {
        /// The input.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The agent is not a static executable.
    #[error("{path} is not a statically linked x86-64 ELF executable ({why}); build it with `-C target-feature=+crt-static` (make guest does)")]
    AgentNotStatic {
        /// The agent path.
        path: PathBuf,
        /// What is wrong.
        why: &'static str,
    },
    /// Module resolution failed.
    #[error(transparent)]
    Modules(#[from] ModulesError),
    /// Writing the archive failed.
    #[error(transparent)]
    Initrd(#[from] InitrdError),
    /// Writing an output failed.
    #[error("cannot write {path}")]
    Write {
        /// The output.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Inputs of a guest build.
#[derive(Debug, Clone)]
pub struct GuestInputs {
    /// Kernel tree (`boot/`, `lib/modules/`): Cocoon's build or an unpacked
    /// Debian package.
    pub kernel_dir: PathBuf,
    /// The static `cocoon-agent` binary.
    pub agent: PathBuf,
    /// Module names to include and load (plus their dependencies).
    pub modules: Vec<String>,
}

/// A built file and its digest.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Artifact {
    /// File name in the output directory.
    pub file: String,
    /// SHA-256, hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// `manifest.json`: what was built from what.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Manifest {
    /// Kernel release (`uname -r` in the guest).
    pub kernel_release: String,
    /// The kernel image.
    pub kernel: Artifact,
    /// The initrd.
    pub initrd: Artifact,
    /// SHA-256 of the agent binary inside the initrd.
    pub agent_sha256: String,
    /// Modules in the initrd, in load order.
    pub modules: Vec<String>,
    /// SHA-256 of the kernel's build configuration (`boot/config-<release>`),
    /// where the kernel tree has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_config_sha256: Option<String>,
    /// What the kernel was built from (`source=` of `build-info`), for a
    /// kernel Cocoon built itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_source: Option<String>,
}

fn read(path: &Path) -> Result<Vec<u8>, BuildError> {
    std::fs::read(path).map_err(|source| BuildError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Finds `boot/vmlinuz-<release>` in an unpacked kernel package.
pub fn find_kernel(kernel_dir: &Path) -> Result<(PathBuf, String), BuildError> {
    let boot = kernel_dir.join("boot");
    let entries = std::fs::read_dir(&boot).map_err(|source| BuildError::Read {
        path: boot.clone(),
        source,
    })?;
    let mut found: Vec<(PathBuf, String)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            let release = name.strip_prefix("vmlinuz-")?.to_string();
            Some((e.path(), release))
        })
        .collect();
    if found.len() != 1 {
        return Err(BuildError::Kernel {
            dir: kernel_dir.to_path_buf(),
            found: found.len(),
        });
    }
    Ok(found.remove(0))
}

/// Checks the ELF header and program headers: x86-64 executable, no
/// interpreter (so it runs without a libc in the initrd).
fn check_static_elf(path: &Path, bin: &[u8]) -> Result<(), BuildError> {
    let bad = |why| BuildError::AgentNotStatic {
        path: path.to_path_buf(),
        why,
    };
    let u16_at = |o: usize| bin.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        bin.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        bin.get(o..o + 8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    };
    // ELF64 header fields (System V ABI, "ELF Header").
    if bin.get(..4) != Some(b"\x7fELF") || bin.get(4) != Some(&2) || bin.get(5) != Some(&1) {
        return Err(bad("not a 64-bit little-endian ELF file"));
    }
    if u16_at(18) != Some(62) {
        return Err(bad("not an x86-64 binary"));
    }
    let phoff = u64_at(32)
        .and_then(|v| usize::try_from(v).ok())
        .ok_or(bad("truncated header"))?;
    let phentsize = usize::from(u16_at(54).ok_or(bad("truncated header"))?);
    let phnum = usize::from(u16_at(56).ok_or(bad("truncated header"))?);
    for i in 0..phnum {
        // PT_INTERP = 3
        match u32_at(phoff + i * phentsize) {
            Some(3) => return Err(bad("it is dynamically linked (has PT_INTERP)")),
            Some(_) => {}
            None => return Err(bad("truncated program headers")),
        }
    }
    Ok(())
}

/// Builds the initrd image bytes (no files written).
pub fn build_initrd(inputs: &GuestInputs) -> Result<(Vec<u8>, Vec<String>, String), BuildError> {
    let (_, release) = find_kernel(&inputs.kernel_dir)?;
    let mod_root = PathBuf::from(format!("lib/modules/{release}"));
    let db = ModuleDb::load(&inputs.kernel_dir.join(&mod_root))?;
    let names: Vec<&str> = inputs.modules.iter().map(String::as_str).collect();
    let order = db.load_order(&names)?;

    let agent = read(&inputs.agent)?;
    check_static_elf(&inputs.agent, &agent)?;
    let mut initrd = Initrd::new();
    initrd.add(
        "init",
        Entry::File {
            data: agent.clone(),
            mode: 0o755,
        },
    );
    initrd.add("dev/console", Entry::CharDev { major: 5, minor: 1 });
    for dir in ["proc", "sys", "run", "tmp", "root"] {
        initrd.add(dir, Entry::Dir);
    }
    let mut load_order = String::new();
    for rel in &order {
        let in_guest = mod_root.join(rel);
        let data = read(&inputs.kernel_dir.join(&in_guest))?;
        initrd.add(
            &in_guest.to_string_lossy(),
            Entry::File { data, mode: 0o644 },
        );
        load_order.push('/');
        load_order.push_str(&in_guest.to_string_lossy());
        load_order.push('\n');
    }
    initrd.add(
        LOAD_ORDER_PATH,
        Entry::File {
            data: load_order.into_bytes(),
            mode: 0o644,
        },
    );
    let bytes = initrd.write(Vec::new())?;
    Ok((bytes, order, sha256_hex(&agent)))
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), BuildError> {
    let tmp = path.with_extension("partial");
    let err = |source| BuildError::Write {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, data).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Builds `vmlinuz`, `initrd.img` and `manifest.json` into `out_dir`.
pub fn build(inputs: &GuestInputs, out_dir: &Path) -> Result<Manifest, BuildError> {
    let (kernel_path, release) = find_kernel(&inputs.kernel_dir)?;
    let kernel = read(&kernel_path)?;
    let (initrd, modules, agent_sha256) = build_initrd(inputs)?;
    std::fs::create_dir_all(out_dir).map_err(|source| BuildError::Write {
        path: out_dir.to_path_buf(),
        source,
    })?;
    write_atomic(&out_dir.join("vmlinuz"), &kernel)?;
    write_atomic(&out_dir.join("initrd.img"), &initrd)?;
    let manifest_release = release.clone();
    let manifest = Manifest {
        kernel_release: release,
        kernel: Artifact {
            file: "vmlinuz".into(),
            sha256: sha256_hex(&kernel),
            size: kernel.len() as u64,
        },
        initrd: Artifact {
            file: "initrd.img".into(),
            sha256: sha256_hex(&initrd),
            size: initrd.len() as u64,
        },
        agent_sha256,
        modules,
        kernel_config_sha256: std::fs::read(
            inputs
                .kernel_dir
                .join(format!("boot/config-{}", manifest_release)),
        )
        .ok()
        .map(|c| sha256_hex(&c)),
        kernel_source: std::fs::read_to_string(inputs.kernel_dir.join("build-info"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("source=").map(str::to_string))
            }),
    };
    let mut json = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    json.push(b'\n');
    write_atomic(&out_dir.join("manifest.json"), &json)?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake kernel tree with two modules.
    fn kernel_tree(dir: &Path) {
        let m = dir.join("lib/modules/6.1.0-test");
        std::fs::create_dir_all(m.join("kernel/net")).unwrap();
        std::fs::create_dir_all(dir.join("boot")).unwrap();
        std::fs::write(dir.join("boot/vmlinuz-6.1.0-test"), b"kernel").unwrap();
        std::fs::write(m.join("kernel/net/a.ko.xz"), b"A").unwrap();
        std::fs::write(m.join("kernel/net/b.ko.xz"), b"B").unwrap();
        std::fs::write(
            m.join("modules.dep"),
            "kernel/net/a.ko.xz:\nkernel/net/b.ko.xz: kernel/net/a.ko.xz\n",
        )
        .unwrap();
    }

    #[test]
    fn dynamic_or_foreign_binaries_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        kernel_tree(dir.path());
        std::fs::write(dir.path().join("agent"), b"#!/bin/sh\n").unwrap();
        let inputs = GuestInputs {
            kernel_dir: dir.path().into(),
            agent: dir.path().join("agent"),
            modules: vec!["b".into()],
        };
        let e = build_initrd(&inputs).unwrap_err().to_string();
        assert!(
            e.contains("not a 64-bit little-endian ELF") && e.contains("crt-static"),
            "{e}"
        );
        // /bin/sh on the build host is dynamically linked.
        let inputs = GuestInputs {
            agent: "/bin/sh".into(),
            ..inputs
        };
        let e = build_initrd(&inputs).unwrap_err().to_string();
        assert!(e.contains("dynamically linked"), "{e}");
    }

    #[test]
    fn missing_kernel_names_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("boot")).unwrap();
        let e = find_kernel(dir.path()).unwrap_err().to_string();
        assert!(e.contains("found 0") && e.contains("make deps"), "{e}");
    }

    #[test]
    fn static_elf_is_accepted() {
        // busybox-static is a static x86-64 executable.
        let bb = Path::new("/bin/busybox");
        if !bb.exists() {
            eprintln!("SKIP: /bin/busybox (busybox-static) not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        kernel_tree(dir.path());
        let inputs = GuestInputs {
            kernel_dir: dir.path().into(),
            agent: bb.into(),
            modules: vec!["b".into()],
        };
        let (a, order, _) = build_initrd(&inputs).unwrap();
        let (b, _, _) = build_initrd(&inputs).unwrap();
        assert_eq!(a, b, "two builds must be byte-identical");
        assert_eq!(order, vec!["kernel/net/a.ko.xz", "kernel/net/b.ko.xz"]);
        let m = build(&inputs, &dir.path().join("out")).unwrap();
        assert_eq!(m.kernel_release, "6.1.0-test");
        assert_eq!(m.initrd.size, a.len() as u64);
        assert_eq!(std::fs::read(dir.path().join("out/initrd.img")).unwrap(), a);
    }
}
