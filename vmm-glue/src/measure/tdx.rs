//! Intel TDX: MRTD from the TDVF metadata, RTMR[1] (kernel) and RTMR[2]
//! (command line, initrd) for OVMF/TDVF direct boot.
//!
//! - MRTD is one running SHA-384 over what the TDX module sees:
//!   `TDH.MEM.PAGE.ADD` (a 128-byte block naming the GPA) for every page of
//!   every TDVF section, and `TDH.MR.EXTEND` (a 128-byte block and 256 bytes
//!   of content) for every 256-byte chunk of sections with MR.EXTEND.
//! - RTMRs are extended as `RTMR = SHA-384(RTMR || digest)` with the event
//!   digests TDVF and the Linux EFI stub log (UEFI 2.10 §38.4.1 maps PCRs
//!   2-6 to RTMR[1], 8-15 to RTMR[2]).

use sha2::{Digest, Sha384};

use super::MeasureError;
use crate::firmware::{FirmwareInfo, TDVF_ATTR_MR_EXTEND, TDVF_ATTR_PAGE_AUG};

/// Size of a TDX measurement register.
pub const MR_BYTES: usize = 48;
const PAGE: u64 = 4096;

pub use crate::config::{LoadOptions, MrtdOrder};

/// MRTD of a TDVF image.
pub fn mrtd(
    firmware: &[u8],
    info: &FirmwareInfo,
    name: &str,
    order: MrtdOrder,
) -> Result<[u8; MR_BYTES], MeasureError> {
    let fw_err = |problem: String| MeasureError::File {
        path: name.into(),
        problem,
    };
    if !info.tdvf {
        return Err(fw_err(
            "has no TDVF descriptor; TDX needs a TDVF build of OVMF (Debian package ovmf-inteltdx)"
                .into(),
        ));
    }
    let mut h = Sha384::new();
    let add = |h: &mut Sha384, gpa: u64| {
        let mut b = [0u8; 128];
        b[..12].copy_from_slice(b"MEM.PAGE.ADD");
        b[16..24].copy_from_slice(&gpa.to_le_bytes());
        h.update(b);
    };
    let extend = |h: &mut Sha384, gpa: u64, page: &[u8]| {
        for (i, chunk) in page.chunks(256).enumerate() {
            let mut b = [0u8; 128];
            b[..9].copy_from_slice(b"MR.EXTEND");
            b[16..24].copy_from_slice(&(gpa + 256 * i as u64).to_le_bytes());
            h.update(b);
            h.update(chunk);
        }
    };
    for s in &info.tdvf_sections {
        if s.gpa % PAGE != 0 || s.mem_size % PAGE != 0 || u64::from(s.raw_size) > s.mem_size {
            return Err(fw_err(format!(
                "has a malformed TDVF section (GPA {:#x}, memory size {:#x}, raw size {:#x})",
                s.gpa, s.mem_size, s.raw_size
            )));
        }
        let start = s.data_offset as usize;
        let raw = firmware
            .get(start..start + s.raw_size as usize)
            .ok_or_else(|| {
                fw_err(format!(
                    "has a TDVF section at file offset {start:#x} beyond the end of the image"
                ))
            })?;
        let pages = s.mem_size / PAGE;
        let measured = s.attributes & TDVF_ATTR_MR_EXTEND != 0;
        let added = s.attributes & TDVF_ATTR_PAGE_AUG == 0;
        let page_content = |p: u64| {
            const LEN: usize = 4096;
            let mut page = [0u8; LEN];
            let off = usize::try_from(p).map_or(usize::MAX, |p| p.saturating_mul(LEN));
            if off < raw.len() {
                let n = raw.len().min(off + LEN) - off;
                page[..n].copy_from_slice(&raw[off..off + n]);
            }
            page
        };
        match order {
            MrtdOrder::PerPage => {
                for p in 0..pages {
                    let gpa = s.gpa + p * PAGE;
                    if added {
                        add(&mut h, gpa);
                    }
                    if measured {
                        extend(&mut h, gpa, &page_content(p));
                    }
                }
            }
            MrtdOrder::TwoPass => {
                if added {
                    for p in 0..pages {
                        add(&mut h, s.gpa + p * PAGE);
                    }
                }
                if measured {
                    for p in 0..pages {
                        extend(&mut h, s.gpa + p * PAGE, &page_content(p));
                    }
                }
            }
        }
    }
    Ok(h.finalize().into())
}

/// Extends a register with event digests.
pub fn replay(events: &[[u8; MR_BYTES]]) -> [u8; MR_BYTES] {
    let mut r = [0u8; MR_BYTES];
    for e in events {
        let mut h = Sha384::new();
        h.update(r);
        h.update(e);
        r = h.finalize().into();
    }
    r
}

fn sha384(data: &[u8]) -> [u8; MR_BYTES] {
    Sha384::digest(data).into()
}

/// RTMR[1] event digests for a directly booted kernel: the kernel's PE
/// Authenticode SHA-384, then the fixed boot-manager and ExitBootServices
/// events TDVF logs.
pub fn rtmr1_events(kernel_authenticode: [u8; MR_BYTES]) -> Vec<[u8; MR_BYTES]> {
    vec![
        kernel_authenticode,
        sha384(b"Calling EFI Application from Boot Option"),
        sha384(&[0, 0, 0, 0]),
        sha384(b"Exit Boot Services Invocation"),
        sha384(b"Exit Boot Services Returned with Success"),
    ]
}

/// The LoadOptions string the firmware passes to the kernel.
pub fn load_options(cmdline: &str, has_initrd: bool, style: LoadOptions) -> Option<String> {
    match (cmdline.is_empty(), has_initrd, style) {
        (true, false, _) => None,
        (_, false, _) => Some(cmdline.to_string()),
        (true, true, _) => Some("initrd=initrd".into()),
        (false, true, LoadOptions::InitrdFirst) => Some(format!("initrd=initrd {cmdline}")),
        (false, true, LoadOptions::CmdlineFirst) => Some(format!("{cmdline} initrd=initrd")),
    }
}

/// RTMR[2] event digests: the LoadOptions as UTF-16LE with its NUL, then
/// the initrd, as the Linux EFI stub measures them.
pub fn rtmr2_events(load_options: Option<&str>, initrd: Option<&[u8]>) -> Vec<[u8; MR_BYTES]> {
    let mut ev = Vec::new();
    if let Some(opts) = load_options {
        let mut utf16: Vec<u8> = opts.encode_utf16().flat_map(u16::to_le_bytes).collect();
        utf16.extend_from_slice(&[0, 0]);
        ev.push(sha384(&utf16));
    }
    if let Some(i) = initrd {
        ev.push(sha384(i));
    }
    ev
}

/// Replays QEMU's patch of the Linux setup header (x86 `load_linux`), which
/// QEMU up to 10.1 applies before serving a TDX guest's kernel over fw_cfg;
/// the firmware measures the patched image.
pub fn qemu_patch_setup_header(
    kernel: &mut [u8],
    initrd_size: Option<u64>,
    memory_bytes: u64,
) -> Result<(), &'static str> {
    if kernel.len() < 0x240 || &kernel[0x202..0x206] != b"HdrS" {
        return Err("is not a Linux bzImage (no HdrS setup header)");
    }
    let u16_at = |k: &[u8], o: usize| u16::from_le_bytes([k[o], k[o + 1]]);
    let u32_at = |k: &[u8], o: usize| u32::from_le_bytes([k[o], k[o + 1], k[o + 2], k[o + 3]]);
    let protocol = u16_at(kernel, 0x206);
    let (real_addr, cmdline_addr): (u32, u32) = if protocol < 0x200 || kernel[0x211] & 1 == 0 {
        (0x90000, 0x9A000)
    } else {
        (0x10000, 0x20000)
    };
    if protocol >= 0x200 {
        kernel[0x210] = 0xB0;
    }
    if protocol >= 0x201 {
        kernel[0x211] |= 0x80;
        kernel[0x224..0x228].copy_from_slice(&(cmdline_addr - real_addr - 0x200).to_le_bytes());
    }
    if protocol >= 0x202 {
        kernel[0x228..0x22C].copy_from_slice(&cmdline_addr.to_le_bytes());
    } else {
        kernel[0x20..0x22].copy_from_slice(&0xA33Fu16.to_le_bytes());
        let off = u16::try_from(cmdline_addr - real_addr).map_err(|_| "cmdline offset")?;
        kernel[0x22..0x24].copy_from_slice(&off.to_le_bytes());
    }
    if let Some(size) = initrd_size {
        const ACPI_SIZE: u64 = 0x28000;
        let mut initrd_max: u64 = if protocol >= 0x20C {
            if u16_at(kernel, 0x236) & 0x40 != 0 {
                u64::from(u32::MAX)
            } else {
                0x37FF_FFFF
            }
        } else if protocol >= 0x203 {
            match u32_at(kernel, 0x22C) {
                0 => 0x37FF_FFFF,
                v => u64::from(v),
            }
        } else {
            0x37FF_FFFF
        };
        let lowmem: u64 = if memory_bytes < 0xB000_0000 {
            0xB000_0000
        } else {
            0x8000_0000
        };
        let below_4g = memory_bytes.min(lowmem);
        if initrd_max >= below_4g - ACPI_SIZE {
            initrd_max = below_4g - ACPI_SIZE - 1;
        }
        let addr = initrd_max
            .checked_sub(size)
            .ok_or("initrd larger than the memory below its limit")?
            & !0xFFF;
        let addr = u32::try_from(addr).map_err(|_| "initrd address")?;
        let size = u32::try_from(size).map_err(|_| "initrd larger than 4 GiB")?;
        kernel[0x218..0x21C].copy_from_slice(&addr.to_le_bytes());
        kernel[0x21C..0x220].copy_from_slice(&size.to_le_bytes());
    }
    Ok(())
}

/// The PE/COFF Authenticode SHA-384 of an EFI image (the kernel's EFI
/// stub), hashed the way edk2's `MeasureBootPeCoff` does.
pub fn authenticode_sha384(image: &[u8], name: &str) -> Result<[u8; MR_BYTES], MeasureError> {
    use object::read::pe::{PeFile32, PeFile64};
    let not_pe = |e: &dyn std::fmt::Display| MeasureError::File {
        path: name.into(),
        problem: format!("is not a PE/COFF (EFI) image, so TDVF cannot measure it: {e}"),
    };
    let mut h = Sha384::new();
    match object::FileKind::parse(image).map_err(|e| not_pe(&e))? {
        object::FileKind::Pe64 => {
            let pe = PeFile64::parse(image).map_err(|e| not_pe(&e))?;
            authenticode::authenticode_digest(&pe, &mut h).map_err(|e| not_pe(&e))?;
        }
        object::FileKind::Pe32 => {
            let pe = PeFile32::parse(image).map_err(|e| not_pe(&e))?;
            authenticode::authenticode_digest(&pe, &mut h).map_err(|e| not_pe(&e))?;
        }
        other => return Err(not_pe(&format!("file kind {other:?}"))),
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_event_digests_match_the_published_values() {
        let ev = rtmr1_events([0; MR_BYTES]);
        assert_eq!(hex::encode(ev[1]), "77a0dab2312b4e1e57a84d865a21e5b2ee8d677a21012ada819d0a98988078d3d740f6346bfe0abaa938ca20439a8d71");
        assert_eq!(hex::encode(ev[2]), "394341b7182cd227c5c6b07ef8000cdfd86136c4292b8e576573ad7ed9ae41019f5818b4b971c9effc60e1ad9f1289f0");
        assert_eq!(hex::encode(ev[3]), "214b0bef1379756011344877743fdc2a5382bac6e70362d624ccf3f654407c1b4badf7d8f9295dd3dabdef65b27677e0");
        assert_eq!(hex::encode(ev[4]), "0a2e01c85deae718a530ad8c6d20a84009babe6c8989269e950d8cf440c6e997695e64d455c4174a652cd080f6230b74");
    }

    #[test]
    fn load_options_are_utf16_with_a_nul_in_either_edk2_layout() {
        let old = load_options("console=ttyS0", true, LoadOptions::CmdlineFirst).unwrap();
        assert_eq!(old, "console=ttyS0 initrd=initrd");
        let ev = rtmr2_events(Some(&old), None);
        assert_eq!(hex::encode(ev[0]), "1d26f8aff8992fdfc37e88b4fdf4a1a0ebb815a2ce925ea3046b3ba1f24a933e75a163af2af579268c20ca5f476f5386");
        assert_eq!(
            load_options("console=ttyS0", true, LoadOptions::InitrdFirst).as_deref(),
            Some("initrd=initrd console=ttyS0")
        );
        assert_eq!(load_options("", false, LoadOptions::InitrdFirst), None);
        assert_eq!(
            load_options("a", false, LoadOptions::InitrdFirst).as_deref(),
            Some("a")
        );
        assert!(rtmr2_events(None, None).is_empty());
        assert_eq!(replay(&[]), [0; MR_BYTES]);
    }

    #[test]
    fn mrtd_orders_differ_and_need_a_tdvf_descriptor() {
        let p = std::path::Path::new("/usr/share/ovmf/OVMF.fd");
        if !p.exists() {
            eprintln!(
                "SKIP: {} not installed (make deps installs ovmf)",
                p.display()
            );
            return;
        }
        let fw = std::fs::read(p).unwrap();
        let info = crate::firmware::parse(p, &fw).unwrap();
        assert_eq!(info.tdvf_sections.len(), 6, "{:?}", info.tdvf_sections);
        assert_eq!(info.tdvf_sections[0].gpa, 0xFFE2_0000);
        assert_eq!(info.tdvf_sections[0].attributes, TDVF_ATTR_MR_EXTEND);
        let a = mrtd(&fw, &info, "OVMF.fd", MrtdOrder::PerPage).unwrap();
        let b = mrtd(&fw, &info, "OVMF.fd", MrtdOrder::TwoPass).unwrap();
        assert_ne!(a, b);
        let e = mrtd(
            &fw,
            &FirmwareInfo::default(),
            "/fw/x.fd",
            MrtdOrder::PerPage,
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("/fw/x.fd has no TDVF descriptor"), "{e}");
    }

    #[test]
    fn non_pe_kernels_and_non_bzimages_are_refused() {
        let e = authenticode_sha384(&[0u8; 4096], "/k/initrd.img")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/k/initrd.img is not a PE/COFF (EFI) image"),
            "{e}"
        );
        let mut k = vec![0u8; 4096];
        assert!(qemu_patch_setup_header(&mut k, None, 1 << 31).is_err());
        // A minimal setup header, protocol 2.15, LOADED_HIGH, no XLF_CAN_BE_LOADED_ABOVE_4G.
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k[0x206..0x208].copy_from_slice(&0x20Fu16.to_le_bytes());
        k[0x211] = 1;
        qemu_patch_setup_header(&mut k, Some(0x1234), 2048 << 20).unwrap();
        assert_eq!(k[0x210], 0xB0);
        assert_eq!(k[0x211], 0x81);
        assert_eq!(&k[0x224..0x228], &0xFE00u32.to_le_bytes());
        assert_eq!(&k[0x228..0x22C], &0x20000u32.to_le_bytes());
        // initrd_max 0x37FFFFFF is below 2 GiB - ACPI: placed under it.
        assert_eq!(
            &k[0x218..0x21C],
            &((0x37FF_FFFFu32 - 0x1234) & !0xFFF).to_le_bytes()
        );
        assert_eq!(&k[0x21C..0x220], &0x1234u32.to_le_bytes());
    }
}
