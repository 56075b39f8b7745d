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
