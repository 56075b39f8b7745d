//! The guest's TEE report interfaces: configfs-tsm reports (Linux
//! `Documentation/ABI/testing/configfs-tsm-report`) and the TDX TDREPORT
//! ioctl (`include/uapi/linux/tdx-guest.h`). Only these two functions touch
//! the hardware; everything that reads a report is plain parsing.

use std::path::Path;

use nix::errno::Errno;

use crate::error::{Error, Result};

fn sys_err(op: String, e: &std::io::Error) -> Error {
    Error::sys(op, Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
}

/// An attestation report from configfs-tsm under `sys`, with `inblob` as
/// its report data, from the provider `provider` (`sev_guest`,
/// `tdx_guest`).
pub fn report(sys: &Path, inblob: &[u8], provider: &str) -> Result<Vec<u8>> {
    let config = sys.join("kernel/config");
    let root = config.join("tsm/report");
    if !root.exists() {
        // configfs is not mounted yet (the agent mounts only what it needs).
        nix::mount::mount(
            Some("configfs"),
            &config,
            Some("configfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| Error::sys(format!("mount configfs on {}", config.display()), e))?;
    }
    let entry = root.join(format!("cocoon-{}", std::process::id()));
    std::fs::create_dir(&entry).map_err(|e| {
        sys_err(
            format!("mkdir {} (is tsm_report loaded?)", entry.display()),
            &e,
        )
    })?;
    let result = (|| {
        std::fs::write(entry.join("inblob"), inblob)
            .map_err(|e| sys_err(format!("write {}/inblob", entry.display()), &e))?;
        let found = std::fs::read_to_string(entry.join("provider"))
            .map_err(|e| sys_err(format!("read {}/provider", entry.display()), &e))?;
        if found.trim() != provider {
            return Err(Error::FailedPrecondition(format!(
                "configfs-tsm reports come from {:?}, not {provider:?}",
                found.trim()
            )));
        }
        let out = std::fs::read(entry.join("outblob"))
            .map_err(|e| sys_err(format!("read {}/outblob", entry.display()), &e))?;
        let generation = std::fs::read_to_string(entry.join("generation")).unwrap_or_default();
        if generation.trim() != "1" {
            return Err(Error::FailedPrecondition(format!(
                "configfs-tsm report {} was changed by someone else while it was read (generation {})",
                entry.display(),
                generation.trim()
            )));
        }
        Ok(out)
    })();
    let _ = std::fs::remove_dir(&entry);
    result
}

/// `struct tdx_report_req` of `include/uapi/linux/tdx-guest.h`.
#[repr(C)]
struct TdxReportReq {
    reportdata: [u8; 64],
    tdreport: [u8; 1024],
}

const _: () = assert!(std::mem::size_of::<TdxReportReq>() == 1088);

// TDX_CMD_GET_REPORT0 = _IOWR('T', 1, struct tdx_report_req).
nix::ioctl_readwrite!(tdx_cmd_get_report0, b'T', 1, TdxReportReq);

/// The TDREPORT of this TD with `reportdata`, from the `tdx_guest` device.
pub fn tdx_report(device: &Path, reportdata: &[u8; 64]) -> Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(device)
        .map_err(|e| sys_err(format!("open {}", device.display()), &e))?;
    let mut req = TdxReportReq {
        reportdata: *reportdata,
        tdreport: [0; 1024],
    };
    // SAFETY: `req` is a properly sized `struct tdx_report_req` (size
    // asserted above) that lives for the whole call, and the fd is open.
    unsafe { tdx_cmd_get_report0(f.as_raw_fd(), &mut req) }
        .map_err(|e| Error::sys(format!("TDX_CMD_GET_REPORT0 on {}", device.display()), e))?;
    Ok(req.tdreport.to_vec())
}

/// `struct snp_report_req` of `include/uapi/linux/sev-guest.h`.
#[repr(C)]
struct SnpReportReq {
    user_data: [u8; 64],
    vmpl: u32,
    rsvd: [u8; 28],
}

/// `struct snp_report_resp`: status, report size, reserved, then the
/// report.
#[repr(C)]
struct SnpReportResp {
    data: [u8; 4000],
}

/// `struct snp_guest_request_ioctl`.
#[repr(C)]
struct SnpGuestRequest {
    msg_version: u8,
    req_data: u64,
    resp_data: u64,
    exitinfo2: u64,
}

const _: () = assert!(std::mem::size_of::<SnpReportReq>() == 96);
const _: () = assert!(std::mem::size_of::<SnpGuestRequest>() == 32);

// SNP_GET_REPORT = _IOWR('S', 0x0, struct snp_guest_request_ioctl).
nix::ioctl_readwrite!(snp_get_report, b'S', 0, SnpGuestRequest);

/// The report inside an `snp_report_resp`: firmware status 0, then the
/// report of the size it states (1184 bytes for versions 2–5).
fn snp_report_from_resp(resp: &[u8]) -> Result<Vec<u8>> {
    let word = |at: usize| {
        resp.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let (Some(status), Some(size)) = (word(0), word(4)) else {
        return Err(Error::FailedPrecondition(
            "SNP_GET_REPORT answered with a short response".into(),
        ));
    };
    if status != 0 {
        return Err(Error::FailedPrecondition(format!(
            "SNP_GET_REPORT: the firmware answered status {status:#x}"
        )));
    }
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    resp.get(32..32usize.saturating_add(size))
        .filter(|r| r.len() >= 1184)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "SNP_GET_REPORT: a report of {size} bytes does not fit the response"
            ))
        })
}

/// An SEV-SNP attestation report with `user_data` from the legacy
/// `sev-guest` device (`SNP_GET_REPORT`, VMPL 0), for guests whose kernel
/// has no configfs-tsm.
pub fn snp_report_ioctl(device: &Path, user_data: &[u8; 64]) -> Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(|e| sys_err(format!("open {}", device.display()), &e))?;
    let req = SnpReportReq {
        user_data: *user_data,
        vmpl: 0,
        rsvd: [0; 28],
    };
    let mut resp = SnpReportResp { data: [0; 4000] };
    let mut ioctl = SnpGuestRequest {
        msg_version: 1,
        req_data: std::ptr::addr_of!(req) as u64,
        resp_data: std::ptr::addr_of_mut!(resp) as u64,
        exitinfo2: 0,
    };
    // SAFETY: the request and response buffers have the sizes the kernel
    // ABI gives them and outlive the call; the fd is open.
    unsafe { snp_get_report(f.as_raw_fd(), &mut ioctl) }.map_err(|e| {
        Error::sys(
            format!(
                "SNP_GET_REPORT on {} (exitinfo2 {:#x})",
                device.display(),
                ioctl.exitinfo2
            ),
            e,
        )
    })?;
    snp_report_from_resp(&resp.data)
}

/// An SEV-SNP report: from configfs-tsm under `sys`, else (a kernel
/// without it) from the legacy `dev`/`sev-guest` ioctl.
pub fn snp_report(sys: &Path, dev: &Path, user_data: &[u8; 64]) -> Result<Vec<u8>> {
    match report(sys, user_data, "sev_guest") {
        Ok(r) => Ok(r),
        Err(tsm) if dev.join("sev-guest").exists() => {
            snp_report_ioctl(&dev.join("sev-guest"), user_data).map_err(|e| {
                Error::FailedPrecondition(format!(
                "no SEV-SNP report from configfs-tsm ({tsm}) nor from the sev-guest device ({e})"
            ))
            })
        }
        Err(tsm) => Err(tsm),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_snp_report_is_taken_out_of_the_ioctl_response() {
        let mut resp = vec![0u8; 4000];
        resp[4..8].copy_from_slice(&1184u32.to_le_bytes());
        resp[32] = 2; // report version
        resp[32 + 1183] = 0xaa;
        let r = snp_report_from_resp(&resp).unwrap();
        assert_eq!((r.len(), r[0], r[1183]), (1184, 2, 0xaa));
        resp[0] = 0x16;
        let e = snp_report_from_resp(&resp).unwrap_err().to_string();
        assert!(e.contains("status 0x16"), "{e}");
        resp[0] = 0;
        resp[4..8].copy_from_slice(&5000u32.to_le_bytes());
        assert!(snp_report_from_resp(&resp).is_err());
        resp[4..8].copy_from_slice(&100u32.to_le_bytes());
        assert!(snp_report_from_resp(&resp).is_err());
        assert!(snp_report_from_resp(&[0u8; 6]).is_err());
    }

    #[test]
    fn without_configfs_tsm_the_ioctl_device_is_used() {
        let d = tempfile::tempdir().unwrap();
        let (sys, dev) = (d.path().join("sys"), d.path().join("dev"));
        std::fs::create_dir_all(&dev).unwrap();
        // A plain file stands in for the device: the ioctl path is taken
        // and fails on it, naming SNP_GET_REPORT.
        std::fs::write(dev.join("sev-guest"), b"").unwrap();
        let e = snp_report(&sys, &dev, &[0; 64]).unwrap_err().to_string();
        assert!(e.contains("SNP_GET_REPORT"), "{e}");
    }
}
