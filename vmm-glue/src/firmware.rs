//! OVMF firmware metadata: the GUIDed footer table at the end of the image,
//! the SEV metadata (`ASEV`) it points to, and the TDVF descriptor.
//!
//! Layout (edk2 `OvmfPkg/ResetVector`, as read by sev-snp-measure and
//! TDX measurement tools): the table's footer header sits at
//! `len - 32 - 18` (`u16 size`, GUID `96b582de-…`); entries precede it, each
//! ending in `[u16 entry_len][GUID]`, walked backwards.

use std::path::{Path, PathBuf};

/// GUID of the footer table (on-disk little-endian bytes).
const FOOTER_GUID: [u8; 16] = guid_le(
    0x96b5_82de,
    0x1fb2,
    0x45f7,
    [0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d],
);
/// `OVMF_SEV_META_DATA`: u32 offset from the end of the file to "ASEV".
pub const SEV_METADATA_GUID: [u8; 16] = guid_le(
    0xdc88_6566,
    0x984a,
    0x4798,
    [0xa7, 0x5e, 0x55, 0x85, 0xa7, 0xbf, 0x67, 0xcc],
);
/// `SEV_HASH_TABLE_RV`: GPA and size of the kernel hashes table.
pub const SEV_HASH_TABLE_GUID: [u8; 16] = guid_le(
    0x7255_371f,
    0x3a3b,
    0x4b04,
    [0x92, 0x7b, 0x1d, 0xa6, 0xef, 0xa8, 0xd4, 0x54],
);
/// `SEV_ES_RESET_BLOCK`: AP reset vector.
pub const SEV_ES_RESET_GUID: [u8; 16] = guid_le(
    0x00f7_71de,
    0x1a7e,
    0x4fcb,
    [0x89, 0x0e, 0x68, 0xc7, 0x7e, 0x2f, 0xb4, 0x4e],
);
/// TDX metadata offset: u32 offset from the end of the file to the TDVF
/// descriptor.
pub const TDX_METADATA_GUID: [u8; 16] = guid_le(
    0xe47a_6535,
    0x984a,
    0x4798,
    [0x86, 0x5e, 0x46, 0x85, 0xa7, 0xbf, 0x8e, 0xc2],
);

/// SEV metadata section type of the kernel hashes page (`SNP_KERNEL_HASHES`).
pub const SNP_KERNEL_HASHES: u32 = 0x10;

const fn guid_le(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// Errors reading firmware metadata.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    /// The file could not be read.
    #[error("cannot read firmware {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The footer table is malformed.
    #[error("firmware {path}: malformed OVMF footer table ({what})")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: &'static str,
    },
}

/// One SEV metadata section (`{gpa, size, type}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SevSection {
    /// Guest physical address.
    pub gpa: u32,
    /// Size in bytes.
    pub size: u32,
    /// Section type (1 SNP_SEC_MEM, 2 SNP_SECRETS, 3 CPUID, 4 SVSM_CAA, 0x10 SNP_KERNEL_HASHES).
    pub kind: u32,
}

/// What a firmware image carries for confidential guests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirmwareInfo {
    /// Footer-table GUIDs found (on-disk bytes).
    pub entries: Vec<([u8; 16], Vec<u8>)>,
    /// SEV metadata sections, if the image has SEV metadata.
    pub sev_sections: Option<Vec<SevSection>>,
    /// Whether a TDVF descriptor is present.
    pub tdvf: bool,
    /// TDVF sections, in descriptor order, if the descriptor is present.
    pub tdvf_sections: Vec<TdvfSection>,
}

/// One TDVF section (`TDVF_SECTION`, 32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdvfSection {
    /// File offset of the raw data.
    pub data_offset: u32,
    /// Raw data size in the file.
    pub raw_size: u32,
    /// Guest physical address (4 KiB aligned).
    pub gpa: u64,
    /// Size in guest memory (4 KiB aligned, zero-filled beyond the raw data).
    pub mem_size: u64,
    /// 0 BFV, 1 CFV, 2 TD_HOB, 3 TempMem, 4 PermMem, 5 Payload, 6 PayloadParam, 7 TD_INFO.
    pub kind: u32,
    /// Bit 0 MR.EXTEND, bit 1 PAGE.AUG.
    pub attributes: u32,
}

/// `TDVF_SECTION` attribute: the VMM extends MRTD with the content.
pub const TDVF_ATTR_MR_EXTEND: u32 = 1;
/// `TDVF_SECTION` attribute: added with PAGE.AUG, not measured.
pub const TDVF_ATTR_PAGE_AUG: u32 = 2;

impl FirmwareInfo {
    /// Whether the footer has this GUID.
    pub fn has(&self, guid: &[u8; 16]) -> bool {
        self.entries.iter().any(|(g, _)| g == guid)
    }

    /// The data of a footer entry.
    pub fn entry(&self, guid: &[u8; 16]) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(g, _)| g == guid)
            .map(|(_, d)| d.as_slice())
    }

    /// The AP reset vector from `SEV_ES_RESET_BLOCK` (0 if absent).
    pub fn sev_es_reset_eip(&self) -> u32 {
        self.entry(&SEV_ES_RESET_GUID)
            .and_then(|d| u32_at(d, 0))
            .unwrap_or(0)
    }

    /// GPA and size of the SEV kernel hashes table (`SEV_HASH_TABLE_RV`),
    /// if the firmware has a non-empty one.
    pub fn sev_hash_table(&self) -> Option<(u32, u32)> {
        let d = self.entry(&SEV_HASH_TABLE_GUID)?;
        let (gpa, size) = (u32_at(d, 0)?, u32_at(d, 4)?);
        (gpa != 0 && size != 0).then_some((gpa, size))
    }

    /// Whether SNP measured direct boot (`kernel-hashes=on`) can work: SEV
    /// metadata with an `SNP_KERNEL_HASHES` section.
    pub fn has_snp_kernel_hashes(&self) -> bool {
        self.sev_sections
            .as_ref()
            .is_some_and(|s| s.iter().any(|x| x.kind == SNP_KERNEL_HASHES))
    }
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

/// Parses the footer table and what it points to.
pub fn parse(path: &Path, image: &[u8]) -> Result<FirmwareInfo, FirmwareError> {
    let bad = |what| FirmwareError::Malformed {
        path: path.to_path_buf(),
        what,
    };
    let mut info = FirmwareInfo::default();
    let Some(footer) = image.len().checked_sub(32 + 18) else {
        return Ok(info);
    };
    if image.get(footer + 2..footer + 18) != Some(&FOOTER_GUID[..]) {
        return Ok(info);
    }
    let size = usize::from(u16_at(image, footer).ok_or(bad("truncated footer"))?);
    let table_size = size.checked_sub(18).ok_or(bad("footer size below 18"))?;
    let start = footer
        .checked_sub(table_size)
        .ok_or(bad("table larger than the image"))?;
    let mut end = footer;
    while end > start {
        let hdr = end
            .checked_sub(18)
            .ok_or(bad("entry header before the table"))?;
        let len = usize::from(u16_at(image, hdr).ok_or(bad("truncated entry"))?);
        if len < 18 || len > end - start {
            return Err(bad("entry length out of range"));
        }
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&image[hdr + 2..hdr + 18]);
        let data = image[end - len..hdr].to_vec();
        info.entries.push((guid, data));
        end -= len;
    }
    let entry = |g: &[u8; 16]| {
        info.entries
            .iter()
            .find(|(x, _)| x == g)
            .map(|(_, d)| d.clone())
    };
    if let Some(d) = entry(&SEV_METADATA_GUID) {
        let off = usize::try_from(u32_at(&d, 0).ok_or(bad("short SEV metadata entry"))?)
            .map_err(|_| bad("offset"))?;
        let at = image
            .len()
            .checked_sub(off)
            .ok_or(bad("SEV metadata offset beyond the image"))?;
        if image.get(at..at + 4) != Some(b"ASEV") {
            return Err(bad("SEV metadata does not start with ASEV"));
        }
        let n = usize::try_from(u32_at(image, at + 12).ok_or(bad("truncated ASEV header"))?)
            .map_err(|_| bad("count"))?;
        let mut sections = Vec::new();
        for i in 0..n.min(64) {
            let o = at + 16 + i * 12;
            sections.push(SevSection {
                gpa: u32_at(image, o).ok_or(bad("truncated ASEV section"))?,
                size: u32_at(image, o + 4).ok_or(bad("truncated ASEV section"))?,
                kind: u32_at(image, o + 8).ok_or(bad("truncated ASEV section"))?,
            });
        }
        info.sev_sections = Some(sections);
    }
    if let Some(d) = entry(&TDX_METADATA_GUID) {
        let off = usize::try_from(u32_at(&d, 0).ok_or(bad("short TDX metadata entry"))?)
            .map_err(|_| bad("offset"))?;
        let at = image.len().checked_sub(off);
        if let Some(at) = at.filter(|&a| image.get(a..a + 4) == Some(b"TDVF")) {
            info.tdvf = true;
            let n = u32_at(image, at + 12).ok_or(bad("truncated TDVF descriptor"))?;
            if n > 64 {
                return Err(bad("TDVF descriptor with more than 64 sections"));
            }
            for i in 0..n as usize {
                let o = at + 16 + i * 32;
                let field64 = |d: usize| {
                    image
                        .get(o + d..o + d + 8)
                        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
                };
                let trunc = || bad("truncated TDVF section");
                info.tdvf_sections.push(TdvfSection {
                    data_offset: u32_at(image, o).ok_or_else(trunc)?,
                    raw_size: u32_at(image, o + 4).ok_or_else(trunc)?,
                    gpa: field64(8).ok_or_else(trunc)?,
                    mem_size: field64(16).ok_or_else(trunc)?,
                    kind: u32_at(image, o + 24).ok_or_else(trunc)?,
                    attributes: u32_at(image, o + 28).ok_or_else(trunc)?,
                });
            }
        }
    }
    Ok(info)
}

/// Reads and parses a firmware file.
pub fn read(path: &Path) -> Result<FirmwareInfo, FirmwareError> {
    let image = std::fs::read(path).map_err(|source| FirmwareError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &image)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic image: payload, ASEV at the start, TDVF, footer table
    /// with entries, 32 trailing bytes.
    fn image(with_hashes: bool) -> Vec<u8> {
        let mut img = vec![0u8; 4096];
        // ASEV at offset 0x100 with two sections.
        let asev = 0x100;
        img[asev..asev + 4].copy_from_slice(b"ASEV");
        img[asev + 12..asev + 16].copy_from_slice(&2u32.to_le_bytes());
        let kinds = [1u32, if with_hashes { SNP_KERNEL_HASHES } else { 3 }];
        for (i, k) in kinds.iter().enumerate() {
            let o = asev + 16 + i * 12;
            img[o..o + 4].copy_from_slice(&0x80_0000u32.to_le_bytes());
            img[o + 4..o + 8].copy_from_slice(&0x1000u32.to_le_bytes());
            img[o + 8..o + 12].copy_from_slice(&k.to_le_bytes());
        }
        img[0x200..0x204].copy_from_slice(b"TDVF");
        let len = 4096 + 2 * 22 + 18 + 32;
        let mut table = Vec::new();
        for (guid, target) in [(SEV_METADATA_GUID, asev), (TDX_METADATA_GUID, 0x200)] {
            table.extend_from_slice(&u32::try_from(len - target).unwrap().to_le_bytes());
            table.extend_from_slice(&22u16.to_le_bytes());
            table.extend_from_slice(&guid);
        }
        table.extend_from_slice(&u16::try_from(2 * 22 + 18).unwrap().to_le_bytes());
        table.extend_from_slice(&FOOTER_GUID);
        img.extend_from_slice(&table);
        img.extend_from_slice(&[0u8; 32]);
        assert_eq!(img.len(), len);
        img
    }

    #[test]
    fn synthetic_image_is_parsed() {
        let info = parse(Path::new("x"), &image(true)).unwrap();
        assert!(info.has(&SEV_METADATA_GUID) && info.has(&TDX_METADATA_GUID));
        assert!(info.tdvf);
        assert!(info.has_snp_kernel_hashes());
        let info = parse(Path::new("x"), &image(false)).unwrap();
        assert!(!info.has_snp_kernel_hashes());
        assert_eq!(info.sev_sections.unwrap().len(), 2);
    }

    #[test]
    fn images_without_a_footer_have_no_metadata() {
        let info = parse(Path::new("x"), &[0u8; 8192]).unwrap();
        assert_eq!(info, FirmwareInfo::default());
        let mut img = image(true);
        let n = img.len();
        // Corrupt the footer size.
        img[n - 50..n - 48].copy_from_slice(&5u16.to_le_bytes());
        assert!(parse(Path::new("fw.fd"), &img)
            .unwrap_err()
            .to_string()
            .contains("fw.fd"));
    }

    #[test]
    fn debian_ovmf_has_sev_and_tdx_metadata_but_no_kernel_hashes() {
        let p = Path::new("/usr/share/ovmf/OVMF.fd");
        if !p.exists() {
            eprintln!(
                "SKIP: {} not installed (make deps installs ovmf)",
                p.display()
            );
            return;
        }
        let info = read(p).unwrap();
        assert!(
            info.has(&SEV_HASH_TABLE_GUID) && info.has(&SEV_ES_RESET_GUID),
            "{:?}",
            info.entries.len()
        );
        assert!(info.sev_sections.is_some());
        assert!(info.tdvf, "bookworm's OvmfPkgX64 carries a TDVF descriptor");
        assert!(
            !info.has_snp_kernel_hashes(),
            "bookworm's OVMF.fd is not the AmdSev build"
        );
    }
}
