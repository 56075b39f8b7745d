//! The pod's initdata document, accepted once at `CreateSandbox`.
//!
//! The agent trusts nothing the host says: it re-checks the document,
//! computes its digest with the document's own algorithm over the exact
//! bytes, and in a TEE compares it with what the hardware recorded at
//! launch — SEV-SNP HOST_DATA (from an attestation report through
//! configfs-tsm), TDX MRCONFIGID (from the TDREPORT) — before keeping a
//! byte. Outside a TEE (`tee = "none"`) the document cannot be verified and
//! the agent says so.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where the accepted document is kept (guest tmpfs).
pub const PATH: &str = "/run/cocoon/initdata.toml";

/// Offset and length of HOST_DATA in an SEV-SNP attestation report
/// (AMD SEV-SNP ABI, "ATTESTATION_REPORT Structure").
const SNP_HOST_DATA: std::ops::Range<usize> = 0xC0..0xE0;
/// Offset and length of MRCONFIGID in a TDREPORT: REPORTMACSTRUCT (256) +
/// TEE_TCB_INFO (239) + reserved (17) = TDINFO at 512; ATTRIBUTES (8),
/// XFAM (8), MRTD (48), then MRCONFIGID (Intel TDX module ABI,
/// "TDREPORT_STRUCT").
const TDX_MRCONFIGID: std::ops::Range<usize> = 576..624;

fn invalid(problem: impl Into<String>) -> Error {
    Error::InvalidArgument {
        field: "initdata",
        problem: problem.into(),
    }
}

/// The document's digest in its own algorithm, after checking its shape.
pub fn digest(doc: &[u8]) -> Result<Vec<u8>> {
    cocoon_protocol::initdata::digest(doc).map_err(|e| invalid(e.to_string()))
}

pub use cocoon_protocol::initdata::fit;

/// The TEE the guest runs in, as the kernel shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestTee {
    /// No TEE: nothing can be verified.
    None,
    /// SEV-SNP (`/sys/devices/platform/sev-guest`).
    Snp,
    /// TDX (`/dev/tdx_guest`).
    Tdx,
}

/// Where the guest's TEE interfaces are (the real roots, or fixture trees).
#[derive(Debug, Clone)]
pub struct GuestRoots {
    /// sysfs.
    pub sys: PathBuf,
    /// devtmpfs.
    pub dev: PathBuf,
}

impl Default for GuestRoots {
    fn default() -> Self {
        Self {
            sys: "/sys".into(),
            dev: "/dev".into(),
        }
    }
}

impl GuestRoots {
    /// Which TEE this guest runs in.
    pub fn tee(&self) -> GuestTee {
        if self.sys.join("devices/platform/sev-guest").exists() {
            GuestTee::Snp
        } else if self.dev.join("tdx_guest").exists() {
            GuestTee::Tdx
        } else {
            GuestTee::None
        }
    }
}

/// HOST_DATA of an SEV-SNP attestation report.
pub fn snp_host_data(report: &[u8]) -> Result<[u8; 32]> {
    report
        .get(SNP_HOST_DATA)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "the SEV-SNP attestation report is {} bytes, too short for HOST_DATA",
                report.len()
            ))
        })
}

/// MRCONFIGID of a TDREPORT.
pub fn tdx_mrconfigid(tdreport: &[u8]) -> Result<[u8; 48]> {
    tdreport
        .get(TDX_MRCONFIGID)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "the TDREPORT is {} bytes, too short for MRCONFIGID",
                tdreport.len()
            ))
        })
}

/// How the document was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// No TEE: the digest could not be compared with anything.
    Unverified,
    /// The digest matched the TEE's launch parameter (`what`).
    Matched(&'static str),
}

/// Compares the document's digest with the launch parameter the hardware
/// recorded (`recorded`, already read for the guest's TEE).
pub fn compare(digest: &[u8], tee: &GuestTee, recorded: &[u8]) -> Result<Verified> {
    let what = match tee {
        GuestTee::None => return Ok(Verified::Unverified),
        GuestTee::Snp => "HOST_DATA",
        GuestTee::Tdx => "MRCONFIGID",
    };
    let expected = fit(digest, recorded.len());
    if expected == recorded {
        return Ok(Verified::Matched(what));
    }
    Err(Error::FailedPrecondition(format!(
        "initdata digest {} does not match the {what} this VM was launched with ({}): the host changed the document after launch",
        hex(&expected),
        hex(recorded)
    )))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Reads the launch parameter of the guest's TEE from the hardware.
pub fn read_recorded(tee: &GuestTee, roots: &GuestRoots) -> Result<Vec<u8>> {
    match tee {
        GuestTee::None => Ok(Vec::new()),
        GuestTee::Snp => {
            let report = crate::tsm::snp_report(&roots.sys, &roots.dev, &[0u8; 64])?;
            Ok(snp_host_data(&report)?.to_vec())
        }
        GuestTee::Tdx => {
            let report = crate::tsm::tdx_report(&roots.dev.join("tdx_guest"), &[0u8; 64])?;
            Ok(tdx_mrconfigid(&report)?.to_vec())
        }
    }
}

/// Checks the document against the hardware and keeps it at `keep`
/// (mode 0400). Returns how it was verified.
pub fn accept(doc: &[u8], roots: &GuestRoots, keep: &Path) -> Result<Verified> {
    let d = digest(doc)?;
    let tee = roots.tee();
    let recorded = read_recorded(&tee, roots)?;
    let verified = compare(&d, &tee, &recorded)?;
    if let Some(dir) = keep.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io_err("mkdir", dir, &e))?;
    }
    std::fs::write(keep, doc).map_err(|e| io_err("write", keep, &e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(keep, std::fs::Permissions::from_mode(0o400))
        .map_err(|e| io_err("chmod", keep, &e))?;
    Ok(verified)
}

fn io_err(op: &str, p: &Path, e: &std::io::Error) -> Error {
    Error::sys(
        format!("{op} {}", p.display()),
        nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sha2::{Digest, Sha256, Sha384};

    const DOC: &[u8] = b"version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\nk = \"v\"\n";

    #[test]
    fn digests_use_the_documents_algorithm_over_its_bytes() {
        assert_eq!(digest(DOC).unwrap(), Sha384::digest(DOC).to_vec());
        let d256 = String::from_utf8(DOC.to_vec())
            .unwrap()
            .replace("sha384", "sha256");
        assert_eq!(
            digest(d256.as_bytes()).unwrap(),
            Sha256::digest(d256.as_bytes()).to_vec()
        );
        for (bad, needle) in [
            (&b"\xff\xfe"[..], "not UTF-8"),
            (
                b"version = \"0.2.0\"\nalgorithm = \"sha384\"\n",
                "has version",
            ),
            (
                b"version = \"0.1.0\"\nalgorithm = \"md5\"\n",
                "has algorithm",
            ),
            (
                b"version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"policy.rego\" = \"x\"\n",
                "policy.rego",
            ),
            (b"nonsense", "not an initdata document"),
        ] {
            let e = digest(bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle:?} not in {e:?}");
        }
        assert!(digest(&vec![b'#'; 64 * 1024 + 1]).is_err());
    }

    #[test]
    fn digests_are_fitted_like_the_launch_did() {
        let d = digest(DOC).unwrap();
        assert_eq!(fit(&d, 32), d[..32].to_vec());
        let mut padded = d.clone();
        padded.extend([0u8; 16]);
        assert_eq!(fit(&d, 64), padded);
        // SNP: HOST_DATA is the first 32 bytes; TDX: MRCONFIGID all 48.
        assert_eq!(
            compare(&d, &GuestTee::Snp, &d[..32]).unwrap(),
            Verified::Matched("HOST_DATA")
        );
        assert_eq!(
            compare(&d, &GuestTee::Tdx, &d).unwrap(),
            Verified::Matched("MRCONFIGID")
        );
        let e = compare(&d, &GuestTee::Snp, &[0u8; 32])
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not match the HOST_DATA"), "{e}");
        assert_eq!(
            compare(&d, &GuestTee::None, &[]).unwrap(),
            Verified::Unverified
        );
    }

    /// A real SEV-SNP report (Milan), as the `sev` crate's tests ship it.
    pub(crate) fn milan_report() -> Option<Vec<u8>> {
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
        for index in std::fs::read_dir(home.join("registry/src")).ok()?.flatten() {
            let p = index
                .path()
                .join("sev-8.0.0/tests/certs_data/report_milan.hex");
            if let Ok(text) = std::fs::read_to_string(&p) {
                let hexed: String = text.split_whitespace().collect();
                return (0..hexed.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hexed[i..i + 2], 16).ok())
                    .collect();
            }
        }
        None
    }

    #[test]
    fn host_data_is_read_from_a_recorded_snp_report() {
        let Some(report) = milan_report() else {
            eprintln!("SKIP: the sev crate's report_milan.hex is not in the cargo registry");
            return;
        };
        assert_eq!(report.len(), 1184, "an SNP report is 1184 bytes");
        let host_data = snp_host_data(&report).unwrap();
        // Independent reading: the sev crate's parser of the same report.
        use sev::parser::ByteParser;
        let parsed = sev::firmware::guest::AttestationReport::from_bytes(&report).unwrap();
        assert_eq!(host_data, parsed.host_data);
        assert!(snp_host_data(&report[..100]).is_err());
    }

    #[test]
    fn the_tee_comes_from_the_guest_kernel() {
        let d = tempfile::tempdir().unwrap();
        let roots = GuestRoots {
            sys: d.path().join("sys"),
            dev: d.path().join("dev"),
        };
        assert_eq!(roots.tee(), GuestTee::None);
        std::fs::create_dir_all(d.path().join("dev")).unwrap();
        std::fs::write(d.path().join("dev/tdx_guest"), "").unwrap();
        assert_eq!(roots.tee(), GuestTee::Tdx);
        std::fs::create_dir_all(d.path().join("sys/devices/platform/sev-guest")).unwrap();
        assert_eq!(roots.tee(), GuestTee::Snp);
        // Outside a TEE the document is kept, unverified.
        let none = GuestRoots {
            sys: d.path().join("nosys"),
            dev: d.path().join("nodev"),
        };
        let keep = d.path().join("run/cocoon/initdata.toml");
        assert_eq!(accept(DOC, &none, &keep).unwrap(), Verified::Unverified);
        assert_eq!(std::fs::read(&keep).unwrap(), DOC);
    }
}
