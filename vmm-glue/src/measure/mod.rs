//! Launch measurements: what a relying party (a KBS, an attestation
//! service) will see in the guest's attestation evidence.
//!
//! - [`snp`]: the SEV-SNP launch digest.
//! - [`tdx`]: TDX MRTD, RTMR[1] and RTMR[2].
//! - [`for_launch`]: the reference values of a launch from the node
//!   configuration, through the same command-line and CPU-model code that
//!   builds the QEMU argv.
//! - [`check_pinned`]: `[measurement] expected`.

pub mod snp;
pub mod tdx;

use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::{Config, Expected};
use crate::firmware::FirmwareInfo;
use crate::tee::Cpuid;

/// Errors computing or checking a measurement.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// A file cannot be read.
    #[error("cannot read {what} {path}")]
    Read {
        /// Which input (a flag or config key).
        what: String,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A file is not what the measurement needs.
    #[error("{path} {problem}")]
    File {
        /// The file.
        path: String,
        /// What is wrong, and the fix.
        problem: String,
    },
    /// A flag or key has an unusable value.
    #[error("{what}: {problem}")]
    Input {
        /// The flag or key.
        what: String,
        /// What is wrong, and the fix.
        problem: String,
    },
    /// The launch measurement is not one of the pinned values.
    #[error(transparent)]
    Mismatch(Box<PinMismatch>),
}

/// A launch measurement that is not one of the pinned values.
#[derive(Debug, thiserror::Error)]
#[error("launch measurement {computed} is not in `measurement.expected` of {origin} (expected {}); the firmware, kernel, initrd, command line or VM shape differ from what was pinned: firmware sha256 {firmware}, kernel sha256 {kernel}, initrd sha256 {initrd}, cmdline {cmdline:?}; if the change is intended, pin the new value printed by `cocoon measure --config {origin}`", expected.join(" or "))]
pub struct PinMismatch {
    /// What was computed.
    pub computed: String,
    /// What is allowed.
    pub expected: Vec<String>,
    /// The config file.
    pub origin: String,
    /// Firmware sha256.
    pub firmware: String,
    /// Kernel sha256.
    pub kernel: String,
    /// Initrd sha256.
    pub initrd: String,
    /// Command line.
    pub cmdline: String,
}

/// A measured input file.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FileDigest {
    /// Where it was read.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// SHA-256 of its content (hex).
    pub sha256: String,
}

fn hex48<S: serde::Serializer>(v: &Option<[u8; 48]>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(b) => s.serialize_str(&hex::encode(b)),
        None => s.serialize_none(),
    }
}

/// The reference values of one launch, as JSON for an attestation
/// service's reference-value store.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Reference {
    /// "snp", "tdx" or "none".
    pub tee: &'static str,
    /// SEV-SNP launch digest (`MEASUREMENT` of the report).
    #[serde(serialize_with = "hex48", skip_serializing_if = "Option::is_none")]
    pub launch_digest: Option<[u8; 48]>,
    /// TDX MRTD.
    #[serde(serialize_with = "hex48", skip_serializing_if = "Option::is_none")]
    pub mrtd: Option<[u8; 48]>,
    /// TDX RTMR[0]: depends on QEMU's ACPI tables and TD HOB; not computed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtmr0: Option<&'static str>,
    /// TDX RTMR[1] (kernel).
    #[serde(serialize_with = "hex48", skip_serializing_if = "Option::is_none")]
    pub rtmr1: Option<[u8; 48]>,
    /// TDX RTMR[2] (command line and initrd).
    #[serde(serialize_with = "hex48", skip_serializing_if = "Option::is_none")]
    pub rtmr2: Option<[u8; 48]>,
    /// SEV-SNP HOST_DATA: the initdata digest fitted to 32 bytes (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_data: Option<String>,
    /// TDX MRCONFIGID: the initdata digest fitted to 48 bytes (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mrconfigid: Option<String>,
    /// The initdata document's digest in its own algorithm (hex), before
    /// it is fitted to HOST_DATA / MRCONFIGID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initdata_digest: Option<String>,
    /// What went in.
    pub inputs: Inputs,
}

/// The inputs of a [`Reference`].
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Inputs {
    /// Firmware (`-bios`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firmware: Option<FileDigest>,
    /// Kernel.
    pub kernel: FileDigest,
    /// Initrd.
    pub initrd: FileDigest,
    /// The exact kernel command line.
    pub cmdline: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// QEMU CPU model.
    pub cpu_model: String,
    /// SEV-SNP: the vCPU signature in the VMSA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcpu_sig: Option<String>,
    /// SEV-SNP: VMSA SEV_FEATURES.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_features: Option<String>,
    /// SEV-SNP: guest policy (in the report, not in the digest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snp_policy: Option<String>,
    /// TDX: MRTD page order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tdx_mrtd_order: Option<tdx::MrtdOrder>,
    /// TDX: LoadOptions layout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tdx_load_options: Option<tdx::LoadOptions>,
    /// TDX: whether QEMU's setup-header patch was replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tdx_kernel_setup_patch: Option<bool>,
    /// The initdata document, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initdata: Option<FileDigest>,
}

/// Which TEE a measurement is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No TEE: inputs only.
    None,
    /// SEV-SNP.
    Snp,
    /// TDX.
    Tdx,
}

/// Reads a whole input file.
pub fn read_input(what: &str, path: &Path) -> Result<Vec<u8>, MeasureError> {
    std::fs::read(path).map_err(|source| MeasureError::Read {
        what: what.into(),
        path: path.to_path_buf(),
        source,
    })
}

/// SHA-256 and size of a file, streamed (no copy of the file in memory).
pub fn sha256_file(what: &str, path: &Path) -> Result<([u8; 32], u64), MeasureError> {
    use std::io::Read;
    let read_err = |source| MeasureError::Read {
        what: what.into(),
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(read_err)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 18];
    let mut size = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                h.update(&buf[..n]);
                size += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_err(e)),
        }
    }
    Ok((h.finalize().into(), size))
}

fn file_digest(path: &Path, data: &[u8]) -> FileDigest {
    file_digest_of(path, data, Sha256::digest(data).into())
}

fn file_digest_of(path: &Path, data: &[u8], sha256: [u8; 32]) -> FileDigest {
    FileDigest {
        path: path.to_path_buf(),
        size: data.len() as u64,
        sha256: hex::encode(sha256),
    }
}

/// The firmware's metadata (footer table, SEV metadata, TDVF descriptor).
pub fn firmware_info(
    path: &Path,
    data: &[u8],
) -> Result<crate::firmware::FirmwareInfo, MeasureError> {
    crate::firmware::parse(path, data).map_err(|e| MeasureError::File {
        path: path.display().to_string(),
        problem: format!("has unusable metadata: {e}"),
    })
}

/// The initdata digest with the document's own `algorithm` (sha256,
/// sha384 or sha512) over its exact bytes, as the guest's attestation
/// agent and the KBS compute it.
pub fn initdata_digest(doc: &[u8], name: &str) -> Result<Vec<u8>, MeasureError> {
    cocoon_protocol::initdata::digest(doc).map_err(|e| MeasureError::File {
        path: name.into(),
        problem: e.to_string(),
    })
}

pub use cocoon_protocol::initdata::fit;

/// The QEMU CPU model of a confidential launch (always KVM).
pub fn cpu_model(config: &Config) -> String {
    config
        .qemu
        .cpu_model
        .clone()
        .unwrap_or_else(|| crate::qemu::argv::ResolvedAccel::Kvm.default_cpu().into())
}

/// The SEV-SNP vCPU signature of a QEMU CPU model; `host` is the host's
/// CPUID Fn0000_0001_EAX.
pub fn vcpu_sig(model: &str, cpuid: &Cpuid) -> Result<u32, MeasureError> {
    if model == "host" {
        return Ok(cpuid(1).0 & 0x0FFF_3FFF);
    }
    snp::cpu_type_sig(model).ok_or_else(|| MeasureError::Input {
        what: "hypervisor.qemu.cpu_model".into(),
        problem: format!(
            "{model:?} has no known CPUID signature for the SEV-SNP VMSA; use \"host\" or one of {}",
            snp::cpu_type_names()
        ),
    })
}

/// Whether QEMU patches the Linux setup header of a TDX guest's kernel:
/// versions before 10.2 do (QEMU commit a7542a38f399 stopped it).
pub fn qemu_patches_kernel(qemu: &Path) -> Result<bool, MeasureError> {
    let fail = |problem: String| MeasureError::Input {
        what: "measurement.tdx_kernel_setup_patch = \"auto\"".into(),
        problem,
    };
    let out = std::process::Command::new(qemu)
        .arg("--version")
        .output()
        .map_err(|e| {
            fail(format!(
                "cannot run {} --version ({e}); set it to \"on\" (QEMU up to 10.1) or \"off\" (10.2+)",
                qemu.display()
            ))
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .unwrap_or("");
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => Ok((major, minor) < (10, 2)),
        _ => Err(fail(format!(
            "cannot tell the QEMU version from {:?}; set it to \"on\" or \"off\"",
            text.lines().next().unwrap_or("")
        ))),
    }
}

/// The files and values a launch measures, read once.
struct LaunchInputs<'a> {
    config: &'a Config,
    cmdline: String,
    kernel: Vec<u8>,
    initrd: Vec<u8>,
    kernel_sha256: [u8; 32],
    initrd_sha256: [u8; 32],
    firmware: Option<(&'a Path, Vec<u8>)>,
    model: String,
    /// The initdata document's file digest and its own-algorithm digest.
    initdata: Option<(FileDigest, Vec<u8>)>,
}

impl<'a> LaunchInputs<'a> {
    fn read(
        config: &'a Config,
        kind: Kind,
        initdata: Option<(&Path, &[u8])>,
    ) -> Result<Self, MeasureError> {
        let q = &config.qemu;
        let initdata = match initdata {
            Some((p, d)) => Some((
                file_digest(p, d),
                initdata_digest(d, &p.display().to_string())?,
            )),
            None => None,
        };
        let kernel = read_input("hypervisor.qemu.kernel", &q.kernel)?;
        let initrd = read_input("hypervisor.qemu.initrd", &q.initrd)?;
        let firmware = match &q.firmware {
            Some(p) => Some((p.as_path(), read_input("hypervisor.qemu.firmware", p)?)),
            None => None,
        };
        Ok(Self {
            config,
            cmdline: crate::qemu::argv::kernel_cmdline(q),
            // Hashed once: the same SHA-256s go into the SEV hashes table.
            kernel_sha256: Sha256::digest(&kernel).into(),
            initrd_sha256: Sha256::digest(&initrd).into(),
            kernel,
            initrd,
            firmware,
            model: if kind == Kind::None {
                q.cpu_model.clone().unwrap_or_default()
            } else {
                cpu_model(config)
            },
            initdata,
        })
    }

    /// The reference values common to every kind (inputs only).
    fn reference(&self, kind: Kind) -> Reference {
        let q = &self.config.qemu;
        Reference {
            tee: match kind {
                Kind::None => "none",
                Kind::Snp => "snp",
                Kind::Tdx => "tdx",
            },
            launch_digest: None,
            mrtd: None,
            rtmr0: None,
            rtmr1: None,
            rtmr2: None,
            host_data: None,
            mrconfigid: None,
            initdata_digest: self.initdata.as_ref().map(|(_, d)| hex::encode(d)),
            inputs: Inputs {
                firmware: self.firmware.as_ref().map(|(p, d)| file_digest(p, d)),
                kernel: file_digest_of(&q.kernel, &self.kernel, self.kernel_sha256),
                initrd: file_digest_of(&q.initrd, &self.initrd, self.initrd_sha256),
                cmdline: self.cmdline.clone(),
                vcpus: q.vcpus,
                memory_mib: q.memory_mib,
                cpu_model: self.model.clone(),
                vcpu_sig: None,
                guest_features: None,
                snp_policy: None,
                tdx_mrtd_order: None,
                tdx_load_options: None,
                tdx_kernel_setup_patch: None,
                initdata: self.initdata.as_ref().map(|(f, _)| f.clone()),
            },
        }
    }

    /// The measured firmware, which a confidential launch needs.
    fn firmware(&self, tee: &str) -> Result<(&Path, &[u8], FirmwareInfo), MeasureError> {
        let (path, fw) = self.firmware.as_ref().ok_or_else(|| MeasureError::Input {
            what: "hypervisor.qemu.firmware".into(),
            problem: format!("is empty; a {tee} launch boots from firmware, which is measured"),
        })?;
        Ok((path, fw, firmware_info(path, fw)?))
    }

    fn snp(&self, r: &mut Reference, cpuid: &Cpuid) -> Result<(), MeasureError> {
        let (q, m) = (&self.config.qemu, &self.config.measurement);
        let (fw_path, fw, info) = self.firmware("SEV-SNP")?;
        let sig = vcpu_sig(&self.model, cpuid)?;
        let ld = snp::launch_digest(&snp::SnpInputs {
            firmware: fw,
            info: &info,
            firmware_name: &fw_path.display().to_string(),
            vcpus: q.vcpus,
            vcpu_sig: sig,
            vmm: snp::Vmm::Qemu,
            hashes: Some(snp::SevHashes {
                kernel: self.kernel_sha256,
                initrd: self.initrd_sha256,
                ..snp::SevHashes::new(&[], None, Some(&self.cmdline))
            }),
            guest_features: m.snp_guest_features,
            ovmf_hash: None,
        })?;
        r.launch_digest = Some(ld);
        r.host_data = self.initdata.as_ref().map(|(_, d)| hex::encode(fit(d, 32)));
        r.inputs.vcpu_sig = Some(format!("{sig:#x}"));
        r.inputs.guest_features = Some(format!("{:#x}", m.snp_guest_features));
        r.inputs.snp_policy = Some(format!("{:#x}", q.snp_guest_policy));
        Ok(())
    }

    /// The kernel's Authenticode digest as the firmware sees it (after
    /// QEMU's setup-header patch when `patch`).
    fn kernel_authenticode(&self, patch: bool) -> Result<[u8; 48], MeasureError> {
        let q = &self.config.qemu;
        let kname = q.kernel.display().to_string();
        if !patch {
            return tdx::authenticode_sha384(&self.kernel, &kname);
        }
        let mut k = self.kernel.clone();
        tdx::qemu_patch_setup_header(
            &mut k,
            Some(self.initrd.len() as u64),
            u64::from(q.memory_mib) << 20,
        )
        .map_err(|p| MeasureError::File {
            path: kname.clone(),
            problem: p.into(),
        })?;
        tdx::authenticode_sha384(&k, &kname)
    }

    fn tdx(&self, r: &mut Reference) -> Result<(), MeasureError> {
        let (q, m) = (&self.config.qemu, &self.config.measurement);
        let (fw_path, fw, info) = self.firmware("TDX")?;
        r.mrtd = Some(tdx::mrtd(
            fw,
            &info,
            &fw_path.display().to_string(),
            m.tdx_mrtd_order,
        )?);
        let patch = match m.tdx_kernel_setup_patch {
            Some(p) => p,
            None => qemu_patches_kernel(&q.path)?,
        };
        let digest = self.kernel_authenticode(patch)?;
        r.rtmr0 = Some("not computed: depends on QEMU's ACPI tables, the TD HOB and the firmware's variable store");
        r.rtmr1 = Some(tdx::replay(&tdx::rtmr1_events(digest)));
        let opts = tdx::load_options(&self.cmdline, true, m.tdx_load_options);
        r.rtmr2 = Some(tdx::replay(&tdx::rtmr2_events(
            opts.as_deref(),
            Some(&self.initrd),
        )));
        r.mrconfigid = self.initdata.as_ref().map(|(_, d)| hex::encode(fit(d, 48)));
        r.inputs.tdx_mrtd_order = Some(m.tdx_mrtd_order);
        r.inputs.tdx_load_options = Some(m.tdx_load_options);
        r.inputs.tdx_kernel_setup_patch = Some(patch);
        Ok(())
    }
}

/// Computes the reference values of a launch of `config` in `kind`.
pub fn for_launch(
    config: &Config,
    kind: Kind,
    initdata: Option<(&Path, &[u8])>,
    cpuid: &Cpuid,
) -> Result<Reference, MeasureError> {
    let inputs = LaunchInputs::read(config, kind, initdata)?;
    let mut r = inputs.reference(kind);
    match kind {
        Kind::None => {}
        Kind::Snp => inputs.snp(&mut r, cpuid)?,
        Kind::Tdx => inputs.tdx(&mut r)?,
    }
    Ok(r)
}

/// Refuses a launch whose measurement is not pinned in
/// `[measurement] expected` (when any value is pinned).
pub fn check_pinned(config: &Config, r: &Reference) -> Result<(), MeasureError> {
    let expected = &config.measurement.expected;
    if expected.is_empty() {
        return Ok(());
    }
    let found = expected.iter().any(|e| match e {
        Expected::Snp(d) => r.launch_digest == Some(*d),
        Expected::Tdx { mrtd, rtmr1, rtmr2 } => {
            r.mrtd == Some(*mrtd) && r.rtmr1 == Some(*rtmr1) && r.rtmr2 == Some(*rtmr2)
        }
    });
    if found {
        return Ok(());
    }
    let show = |e: &Expected| match e {
        Expected::Snp(d) => hex::encode(d),
        Expected::Tdx { mrtd, rtmr1, rtmr2 } => format!(
            "mrtd {} rtmr1 {} rtmr2 {}",
            hex::encode(mrtd),
            hex::encode(rtmr1),
            hex::encode(rtmr2)
        ),
    };
    let computed = match (r.launch_digest, r.mrtd, r.rtmr1, r.rtmr2) {
        (Some(d), ..) => hex::encode(d),
        (None, Some(m), Some(r1), Some(r2)) => format!(
            "mrtd {} rtmr1 {} rtmr2 {}",
            hex::encode(m),
            hex::encode(r1),
            hex::encode(r2)
        ),
        _ => "(none: no TEE)".into(),
    };
    Err(MeasureError::Mismatch(Box::new(PinMismatch {
        computed,
        expected: expected.iter().map(show).collect(),
        origin: config.origin.clone(),
        firmware: r
            .inputs
            .firmware
            .as_ref()
            .map_or("-".into(), |f| f.sha256.clone()),
        kernel: r.inputs.kernel.sha256.clone(),
        initrd: r.inputs.initrd.sha256.clone(),
        cmdline: r.inputs.cmdline.clone(),
    })))
}
