//! AMD SEV-SNP launch digest for OVMF direct boot (QEMU `-bios` +
//! `-kernel/-initrd/-append` with `kernel-hashes=on`).
//!
//! The digest is the chain of `SHA-384(PAGE_INFO)` over every page the
//! hypervisor adds with `SNP_LAUNCH_UPDATE`, in order: the firmware image,
//! the firmware's SEV metadata sections (zero, secrets, CPUID and the
//! kernel-hashes page), then one VMSA per vCPU (SEV-SNP ABI, "PAGE_INFO";
//! the order and VMSA contents as QEMU, EC2 and GCE produce them, and as
//! sev-snp-measure 0.0.13 computes them).

use sha2::{Digest, Sha256, Sha384};

use super::MeasureError;
use crate::firmware::FirmwareInfo;

/// Size of a launch digest.
pub const LD_BYTES: usize = 48;
const PAGE: usize = 4096;
/// GPA at which every VMSA is measured: `(u64)-1` page-aligned, bits above
/// 51 cleared.
const VMSA_GPA: u64 = 0xFFFF_FFFF_F000;
const BSP_EIP: u32 = 0xFFFF_FFF0;

/// `PAGE_INFO.PAGE_TYPE`.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
enum PageType {
    Normal = 1,
    Vmsa = 2,
    Zero = 3,
    Unmeasured = 4,
    Secrets = 5,
    Cpuid = 6,
}

/// Section types of the firmware's SEV metadata.
const SEC_MEM: u32 = 1;
const SECRETS: u32 = 2;
const CPUID: u32 = 3;
const SVSM_CAA: u32 = 4;
const KERNEL_HASHES: u32 = crate::firmware::SNP_KERNEL_HASHES;

/// The VMM whose launch sequence and initial register state is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Vmm {
    /// QEMU/KVM (KVM_SEV_INIT2 register defaults: MXCSR 0x1F80, FCW 0x37F).
    #[serde(rename = "QEMU")]
    Qemu,
    /// AWS EC2: CPUID pages last, different segment flags, RDX 0x600.
    #[serde(rename = "ec2")]
    Ec2,
    /// Google Compute Engine: SEC_MEM unmeasured, its own PAT, RDX 0x600.
    #[serde(rename = "gce")]
    Gce,
}

impl std::str::FromStr for Vmm {
    type Err = MeasureError;
    fn from_str(s: &str) -> Result<Self, MeasureError> {
        match s {
            "QEMU" => Ok(Vmm::Qemu),
            "ec2" => Ok(Vmm::Ec2),
            "gce" => Ok(Vmm::Gce),
            _ => Err(MeasureError::Input {
                what: "--vmm-type".into(),
                problem: format!("unknown VMM type {s:?}; use QEMU, ec2 or gce"),
            }),
        }
    }
}

/// QEMU's EPYC CPU models and their CPUID signatures (family/model/stepping
/// of QEMU's builtin_x86_defs), as sev-snp-measure 0.0.13 lists them.
pub const CPU_TYPES: &[(&str, (u32, u32, u32))] = &[
    ("EPYC", (23, 1, 2)),
    ("EPYC-v1", (23, 1, 2)),
    ("EPYC-v2", (23, 1, 2)),
    ("EPYC-IBPB", (23, 1, 2)),
    ("EPYC-v3", (23, 1, 2)),
    ("EPYC-v4", (23, 1, 2)),
    ("EPYC-Rome", (23, 49, 0)),
    ("EPYC-Rome-v1", (23, 49, 0)),
    ("EPYC-Rome-v2", (23, 49, 0)),
    ("EPYC-Rome-v3", (23, 49, 0)),
    ("EPYC-Milan", (25, 1, 1)),
    ("EPYC-Milan-v1", (25, 1, 1)),
    ("EPYC-Milan-v2", (25, 1, 1)),
    ("EPYC-Genoa", (25, 17, 0)),
    ("EPYC-Genoa-v1", (25, 17, 0)),
    ("EPYC-Turin", (26, 0, 0)),
];

/// The CPUID Fn0000_0001_EAX signature of a family/model/stepping (AMD
/// CPUID specification #25481).
pub fn cpu_sig(family: u32, model: u32, stepping: u32) -> u32 {
    let (family_low, ext_family) = if family > 0xF {
        (0xF, (family - 0xF) & 0xFF)
    } else {
        (family, 0)
    };
    ext_family << 20
        | ((model >> 4) & 0xF) << 16
        | family_low << 8
        | (model & 0xF) << 4
        | (stepping & 0xF)
}

/// The known CPU model names, comma-separated (for error messages).
pub fn cpu_type_names() -> String {
    CPU_TYPES
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The signature of a named QEMU CPU model.
pub fn cpu_type_sig(name: &str) -> Option<u32> {
    CPU_TYPES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, (f, m, s))| cpu_sig(*f, *m, *s))
}

/// Everything the launch digest depends on.
#[derive(Debug, Clone)]
pub struct SnpInputs<'a> {
    /// The firmware image (mapped ending at 4 GiB).
    pub firmware: &'a [u8],
    /// Its parsed metadata.
    pub info: &'a FirmwareInfo,
    /// Where the firmware came from (for errors).
    pub firmware_name: &'a str,
    /// Number of vCPUs (one VMSA each).
    pub vcpus: u32,
    /// vCPU signature (VMSA RDX for QEMU; ignored for EC2 and GCE).
    pub vcpu_sig: u32,
    /// The VMM.
    pub vmm: Vmm,
    /// Kernel hashes, when a kernel is booted directly.
    pub hashes: Option<SevHashes>,
    /// VMSA SEV_FEATURES.
    pub guest_features: u64,
    /// A precomputed digest of the firmware pages (`snp:ovmf-hash`), used
    /// instead of hashing the firmware content.
    pub ovmf_hash: Option<[u8; LD_BYTES]>,
}

/// SHA-256 of kernel, initrd and command line, as QEMU puts them into the
/// firmware's hashes table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SevHashes {
    /// SHA-256 of the kernel file as is.
    pub kernel: [u8; 32],
    /// SHA-256 of the initrd (of nothing without one).
    pub initrd: [u8; 32],
    /// SHA-256 of the command line bytes and a NUL, exactly as given
    /// (QEMU does not trim it).
    pub cmdline: [u8; 32],
}

impl SevHashes {
    /// Hashes the three inputs.
    pub fn new(kernel: &[u8], initrd: Option<&[u8]>, cmdline: Option<&str>) -> Self {
        let mut c = Sha256::new();
        c.update(cmdline.unwrap_or("").as_bytes());
        c.update([0u8]);
        SevHashes {
            kernel: Sha256::digest(kernel).into(),
            initrd: Sha256::digest(initrd.unwrap_or(&[])).into(),
            cmdline: c.finalize().into(),
        }
    }

    /// The SEV hashed-boot table (header GUID, length, cmdline, initrd and
    /// kernel entries), padded to a 16-byte multiple: 176 bytes.
    pub fn table(&self) -> Vec<u8> {
        const HEADER: [u8; 16] = guid("9438d606-4f22-4cc9-b479-a793d411fd21");
        const CMDLINE: [u8; 16] = guid("97d02dd8-bd20-4c94-aa78-e7714d36ab2a");
        const INITRD: [u8; 16] = guid("44baf731-3a2f-4bd7-9af1-41e29169781d");
        const KERNEL: [u8; 16] = guid("4de79437-abd2-427f-b835-d5b172d2045b");
        let mut t = Vec::with_capacity(176);
        t.extend_from_slice(&HEADER);
        t.extend_from_slice(&168u16.to_le_bytes());
        for (g, h) in [
            (CMDLINE, self.cmdline),
            (INITRD, self.initrd),
            (KERNEL, self.kernel),
        ] {
            t.extend_from_slice(&g);
            t.extend_from_slice(&50u16.to_le_bytes());
            t.extend_from_slice(&h);
        }
        t.resize(176, 0);
        t
    }
}

/// A GUID string in its on-disk (mixed-endian) byte order.
const fn guid(s: &str) -> [u8; 16] {
    const fn nib(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("bad GUID digit"),
        }
    }
    let b = s.as_bytes();
    let mut raw = [0u8; 16];
    let (mut i, mut n) = (0, 0);
    while i < b.len() {
        if b[i] != b'-' {
            raw[n / 2] |= nib(b[i]) << if n % 2 == 0 { 4 } else { 0 };
            n += 1;
        }
        i += 1;
    }
    [
        raw[3], raw[2], raw[1], raw[0], raw[5], raw[4], raw[7], raw[6], raw[8], raw[9], raw[10],
        raw[11], raw[12], raw[13], raw[14], raw[15],
    ]
}

/// The guest context: the running launch digest.
struct Gctx {
    ld: [u8; LD_BYTES],
}

impl Gctx {
    fn update(&mut self, kind: PageType, gpa: u64, contents: &[u8; LD_BYTES]) {
        let mut info = [0u8; 0x70];
        info[..48].copy_from_slice(&self.ld);
        info[0x30..0x60].copy_from_slice(contents);
        info[0x60..0x62].copy_from_slice(&0x70u16.to_le_bytes());
        info[0x62] = kind as u8;
        info[0x68..0x70].copy_from_slice(&gpa.to_le_bytes());
        self.ld = Sha384::digest(info).into();
    }

    fn normal_pages(&mut self, gpa: u64, data: &[u8]) {
        for (i, page) in data.chunks_exact(PAGE).enumerate() {
            let h: [u8; LD_BYTES] = Sha384::digest(page).into();
            self.update(PageType::Normal, gpa + (i * PAGE) as u64, &h);
        }
    }

    fn empty_pages(&mut self, kind: PageType, gpa: u64, size: u32) {
        for off in (0..u64::from(size)).step_by(PAGE) {
            self.update(kind, gpa + off, &[0; LD_BYTES]);
        }
    }
}

/// The digest of the firmware pages alone (`--mode snp:ovmf-hash`).
pub fn ovmf_hash(firmware: &[u8], name: &str) -> Result<[u8; LD_BYTES], MeasureError> {
    let mut g = Gctx { ld: [0; LD_BYTES] };
    g.normal_pages(firmware_gpa(firmware, name)?, firmware);
    Ok(g.ld)
}

fn firmware_gpa(firmware: &[u8], name: &str) -> Result<u64, MeasureError> {
    let len = firmware.len() as u64;
    if len == 0 || !len.is_multiple_of(PAGE as u64) || len > 1 << 32 {
        return Err(MeasureError::File {
            path: name.into(),
            problem: format!(
                "is {len} bytes; a firmware image is a non-empty multiple of 4096 bytes below 4 GiB"
            ),
        });
    }
    Ok((1 << 32) - len)
}

/// The SEV-SNP launch digest.
pub fn launch_digest(i: &SnpInputs<'_>) -> Result<[u8; LD_BYTES], MeasureError> {
    let fw_err = |problem: String| MeasureError::File {
        path: i.firmware_name.into(),
        problem,
    };
    let Some(sections) = &i.info.sev_sections else {
        return Err(fw_err(
            "has no SEV metadata (OVMF_SEV_META_DATA); SEV-SNP needs an OVMF built with SEV support, such as OVMF.amdsev.fd".into(),
        ));
    };
    if i.vcpus == 0 {
        return Err(MeasureError::Input {
            what: "--vcpus".into(),
            problem: "must be at least 1".into(),
        });
    }
    let mut g = Gctx { ld: [0; LD_BYTES] };
    match i.ovmf_hash {
        Some(seed) => {
            firmware_gpa(i.firmware, i.firmware_name)?;
            g.ld = seed;
        }
        None => g.normal_pages(firmware_gpa(i.firmware, i.firmware_name)?, i.firmware),
    }
    for s in sections {
        let gpa = u64::from(s.gpa);
        match s.kind {
            SEC_MEM if i.vmm == Vmm::Gce => g.empty_pages(PageType::Unmeasured, gpa, s.size),
            SEC_MEM | SVSM_CAA => g.empty_pages(PageType::Zero, gpa, s.size),
            SECRETS => g.update(PageType::Secrets, gpa, &[0; LD_BYTES]),
            CPUID if i.vmm == Vmm::Ec2 => {}
            CPUID => g.update(PageType::Cpuid, gpa, &[0; LD_BYTES]),
            KERNEL_HASHES => match &i.hashes {
                Some(h) => {
                    let (table_gpa, _) = i.info.sev_hash_table().ok_or_else(|| {
                        fw_err(
                            "has an SNP_KERNEL_HASHES section but no SEV_HASH_TABLE_RV entry"
                                .into(),
                        )
                    })?;
                    if s.size as usize != PAGE {
                        return Err(fw_err(format!(
                            "has an SNP_KERNEL_HASHES section of {:#x} bytes; it must be one 4 KiB page",
                            s.size
                        )));
                    }
                    let off = (table_gpa & 0xFFF) as usize;
                    let table = h.table();
                    let mut page = vec![0u8; PAGE];
                    if off + table.len() > PAGE {
                        return Err(fw_err(format!(
                            "places the hashes table at page offset {off:#x}, where it does not fit"
                        )));
                    }
                    page[off..off + table.len()].copy_from_slice(&table);
                    g.normal_pages(gpa, &page);
                }
                None => g.empty_pages(PageType::Zero, gpa, s.size),
            },
            other => {
                return Err(fw_err(format!(
                    "has an unknown SEV metadata section type {other:#x} at GPA {:#x}",
                    s.gpa
                )))
            }
        }
    }
    if i.vmm == Vmm::Ec2 {
        for s in sections.iter().filter(|s| s.kind == CPUID) {
            g.update(PageType::Cpuid, u64::from(s.gpa), &[0; LD_BYTES]);
        }
    }
    if i.hashes.is_some() && !i.info.has_snp_kernel_hashes() {
        return Err(fw_err(
            "has no SNP_KERNEL_HASHES section, so a directly booted kernel cannot be measured; use the AmdSev build (OVMF.amdsev.fd)".into(),
        ));
    }
    let ap_eip = i.info.sev_es_reset_eip();
    if i.vcpus > 1 && ap_eip == 0 {
        return Err(fw_err(
            "has no SEV-ES reset block (AP reset vector), so more than one vCPU cannot start"
                .into(),
        ));
    }
    let bsp = vmsa_page(BSP_EIP, i.guest_features, i.vcpu_sig, i.vmm);
    let bsp_hash: [u8; LD_BYTES] = Sha384::digest(&bsp).into();
    g.update(PageType::Vmsa, VMSA_GPA, &bsp_hash);
    if i.vcpus > 1 {
        let ap: [u8; LD_BYTES] =
            Sha384::digest(vmsa_page(ap_eip, i.guest_features, i.vcpu_sig, i.vmm)).into();
        for _ in 1..i.vcpus {
            g.update(PageType::Vmsa, VMSA_GPA, &ap);
        }
    }
    Ok(g.ld)
}

/// The initial VMSA (the SEV-ES save area) of a vCPU starting at `eip`
/// (AMD APM vol. 2, "VMCB Layout, State Save Area").
pub fn vmsa_page(eip: u32, sev_features: u64, vcpu_sig: u32, vmm: Vmm) -> Vec<u8> {
    let mut p = vec![0u8; PAGE];
    let mut put = |off: usize, bytes: &[u8]| p[off..off + bytes.len()].copy_from_slice(bytes);
    let (cs_flags, ss_flags, tr_flags, rdx, mxcsr, fcw, g_pat): (
        u16,
        u16,
        u16,
        u64,
        u32,
        u16,
        u64,
    ) = match vmm {
        Vmm::Qemu => (
            0x9B,
            0x93,
            0x8B,
            u64::from(vcpu_sig),
            0x1F80,
            0x37F,
            0x0007_0406_0007_0406,
        ),
        Vmm::Ec2 => (
            if eip == BSP_EIP { 0x9A } else { 0x9B },
            0x92,
            0x83,
            0x600,
            0,
            0,
            0x0007_0406_0007_0406,
        ),
        Vmm::Gce => (0x9B, 0x93, 0x8B, 0x600, 0, 0, 0x0007_0106),
    };
    let seg = |sel: u16, attr: u16, limit: u32, base: u64| {
        let mut s = [0u8; 16];
        s[0..2].copy_from_slice(&sel.to_le_bytes());
        s[2..4].copy_from_slice(&attr.to_le_bytes());
        s[4..8].copy_from_slice(&limit.to_le_bytes());
        s[8..16].copy_from_slice(&base.to_le_bytes());
        s
    };
    let data = seg(0, 0x93, 0xFFFF, 0);
    for off in [0x00, 0x30, 0x40, 0x50] {
        put(off, &data); // es, ds, fs, gs
    }
    put(
        0x10,
        &seg(0xF000, cs_flags, 0xFFFF, u64::from(eip & 0xFFFF_0000)),
    );
    put(0x20, &seg(0, ss_flags, 0xFFFF, 0));
    put(0x60, &seg(0, 0, 0xFFFF, 0)); // gdtr
    put(0x70, &seg(0, 0x82, 0xFFFF, 0)); // ldtr
    put(0x80, &seg(0, 0, 0xFFFF, 0)); // idtr
    put(0x90, &seg(0, tr_flags, 0xFFFF, 0));
    put(0xD0, &0x1000u64.to_le_bytes()); // efer
    put(0x148, &0x40u64.to_le_bytes()); // cr4
    put(0x158, &0x10u64.to_le_bytes()); // cr0
    put(0x160, &0x400u64.to_le_bytes()); // dr7
    put(0x168, &0xFFFF_0FF0u64.to_le_bytes()); // dr6
    put(0x170, &2u64.to_le_bytes()); // rflags
    put(0x178, &u64::from(eip & 0xFFFF).to_le_bytes()); // rip
    put(0x268, &g_pat.to_le_bytes());
    put(0x310, &rdx.to_le_bytes());
    put(0x3B0, &sev_features.to_le_bytes());
    put(0x3E8, &1u64.to_le_bytes()); // xcr0
    put(0x408, &mxcsr.to_le_bytes());
    put(0x410, &fcw.to_le_bytes());
    p
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;

    /// The 4 KiB OVMF suffixes shipped in the `sev` crate's package (the
    /// same files as sev-snp-measure's test fixtures).
    pub(crate) fn sev_crate_fixture(name: &str) -> PathBuf {
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"));
        let src = home.join("registry/src");
        for index in std::fs::read_dir(&src).unwrap().flatten() {
            let p = index.path().join("sev-8.0.0/tests/measurement").join(name);
            if p.exists() {
                return p;
            }
        }
        panic!(
            "{name} not found under {} (the sev dev-dependency unpacks it)",
            src.display()
        );
    }

    struct Case<'a> {
        fw: &'a str,
        vcpus: u32,
        sig: u32,
        vmm: Vmm,
        kernel: bool,
        append: Option<&'a str>,
        features: u64,
        seed: bool,
    }

    const AMDSEV: &str = "ovmf_AmdSev_suffix.bin";
    const X64: &str = "ovmf_OvmfX64_suffix.bin";
    const EPYC_V4: u32 = 0x800F12;

    fn run(c: &Case<'_>) -> Result<String, MeasureError> {
        let path = sev_crate_fixture(c.fw);
        let fw = std::fs::read(&path).unwrap();
        let info = crate::firmware::parse(&path, &fw).unwrap();
        let seed = ovmf_hash(&fw, c.fw).unwrap();
        let ld = launch_digest(&SnpInputs {
            firmware: &fw,
            info: &info,
            firmware_name: c.fw,
            vcpus: c.vcpus,
            vcpu_sig: c.sig,
            vmm: c.vmm,
            hashes: c.kernel.then(|| SevHashes::new(&[], Some(&[]), c.append)),
            guest_features: c.features,
            ovmf_hash: c.seed.then_some(seed),
        })?;
        Ok(hex::encode(ld))
    }

    fn case(fw: &str, vcpus: u32, kernel: bool, append: Option<&str>, features: u64) -> String {
        run(&Case {
            fw,
            vcpus,
            sig: EPYC_V4,
            vmm: Vmm::Qemu,
            kernel,
            append,
            features,
            seed: false,
        })
        .unwrap()
    }

    #[test]
    fn ovmf_hash_matches_the_published_vector() {
        let fw = std::fs::read(sev_crate_fixture(AMDSEV)).unwrap();
        assert_eq!(
            hex::encode(ovmf_hash(&fw, AMDSEV).unwrap()),
            "086e2e9149ebf45abdc3445fba5b2da8270bdbb04094d7a2c37faaa4b24af3aa16aff8c374c2a55c467a50da6d466b74"
        );
    }

    /// sev-snp-measure 0.0.13 `tests/test_guest.py`, QEMU cases.
    #[test]
    fn sev_snp_measure_qemu_vectors() {
        let k = true;
        type Vector<'a> = (&'a str, u32, bool, Option<&'a str>, u64, &'a str);
        let cases: &[Vector<'_>] = &[
            (AMDSEV, 1, k, Some(""), 0x21, "329c8ce0972ae52343b64d34a434a86f245dfd74f5ed7aae15d22efc78fb9683632b9b50e4e1d7fa41179ef98a7ef198"),
            (AMDSEV, 1, k, Some(""), 0x1, "ddc5224521617a536ee7ce9dd6224d1b58a8d4fda1c741f3ac99fc4bfa04ba6e9fc98646d4a07a9079397fa3852819b5"),
            (AMDSEV, 1, k, Some("console=ttyS0 loglevel=7"), 0x21, "803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba7e534442e7e1e17895dfe778d0228977"),
            (AMDSEV, 1, k, Some("console=ttyS0 loglevel=7"), 0x1, "6d287813eb5222d770f75005c664e34c204f385ce832cc2ce7d0d6f354454362f390ef83a92046c042e706363b4b08fa"),
            (AMDSEV, 1, false, None, 0x21, "e1e1ca029dd7973ab9513295be68198472dcd4fc834bd9af9b63f6e8a1674dbf281a9278a4a2ebe0eed9f22adbcd0e2b"),
            (AMDSEV, 1, false, None, 0x1, "19358ba9a7615534a9a1e2f0dfc29384dcd4dcb7062ff9c6013b26869a5fc6ecabe033c48dd6f6db5d6d76e7c5df632d"),
            (AMDSEV, 4, k, Some(""), 0x21, "4953b1fb416fa874980e8442b3706d345926d5f38879134e00813c5d7abcbe78eafe7b422907be0b4698e2414a631942"),
            (AMDSEV, 4, k, Some(""), 0x1, "5061fffb019493a903613d56d54b94912a1a2f9e4502385f5c194616753720a92441310ba6c4933de877c36e23046ad5"),
            (X64, 1, false, None, 0x21, "28797ae0afaba4005a81e629acebfb59e6687949d6be44007cd5506823b0dd66f146aaae26ff291eed7b493d8a64c385"),
            (X64, 1, false, None, 0x1, "da0296de8193586a5512078dcd719eccecbd87e2b825ad4148c44f665dc87df21e5b49e21523a9ad993afdb6a30b4005"),
            // Python keeps the command line as given; the sev crate trims it.
            (AMDSEV, 1, k, Some(" console=ttyS0 loglevel=7 "), 0x21, "4a0b3f6785d371e8f6ba0d95e6273798c25a48129a1bdcefc447de60327a72624f98ea694017e05d53495321a2465bde"),
        ];
        for (fw, vcpus, kernel, append, features, want) in cases {
            assert_eq!(
                &case(fw, *vcpus, *kernel, *append, *features),
                want,
                "{fw} vcpus={vcpus} kernel={kernel} append={append:?} features={features:#x}"
            );
        }
        // Seeded with the OVMF hash instead of the firmware pages.
        let seeded = run(&Case {
            fw: AMDSEV,
            vcpus: 1,
            sig: EPYC_V4,
            vmm: Vmm::Qemu,
            kernel: true,
            append: Some("console=ttyS0 loglevel=7"),
            features: 0x21,
            seed: true,
        })
        .unwrap();
        assert!(seeded.starts_with("803f691094946e42"));
    }

    #[test]
    fn other_cpu_types() {
        let milan = run(&Case {
            fw: AMDSEV,
            vcpus: 2,
            sig: cpu_type_sig("EPYC-Milan").unwrap(),
            vmm: Vmm::Qemu,
            kernel: true,
            append: None,
            features: 1,
            seed: false,
        })
        .unwrap();
        assert_eq!(milan, "07049af8d1038f7ee3b347253fe59ec782360b6580b47d300d28fe9ff28f57e7b56fc7ce06b9648b1069abce39b51e30");
        let genoa = run(&Case {
            fw: AMDSEV,
            vcpus: 2,
            sig: cpu_type_sig("EPYC-Genoa").unwrap(),
            vmm: Vmm::Qemu,
            kernel: false,
            append: None,
            features: 1,
            seed: false,
        })
        .unwrap();
        assert_eq!(genoa, "3919b210f6562c034f07a3f6177c84e96bca4dc357b80186f0adf1fea3a198d64d3d52e1ac9fd85a67fd3c0f09df026a");
        assert_eq!(cpu_sig(14, 1, 2), 0x0E12);
        assert_eq!(cpu_sig(23, 1, 2), 0x800F12);
        assert_eq!(cpu_type_sig("EPYC-Turin"), Some(0xB00F00));
        assert_eq!(cpu_type_sig("EPYC-Rome-v3"), Some(0x830F10));
        assert_eq!(cpu_type_sig("Skylake"), None);
    }

    /// EC2 (sev-snp-measure 0.0.13: RDX 0x600) and GCE.
    #[test]
    fn ec2_and_gce_vectors() {
        let cloud = |vmm, vcpus, features, sig| {
            run(&Case {
                fw: AMDSEV,
                vcpus,
                sig,
                vmm,
                kernel: true,
                append: Some(""),
                features,
                seed: false,
            })
            .unwrap()
        };
        assert_eq!(cloud(Vmm::Ec2, 1, 0x21, EPYC_V4), "0ce9ccc06bab55eebe8abc234f3df6514883977a68a591b71052498ab52b2f1aa415db338033946ef93aa8278c0d67fb");
        assert_eq!(cloud(Vmm::Ec2, 1, 0x1, EPYC_V4), "0883bd0eeb716e65b7b977a321c278d1e51b33b5c655fab985443bbcc65c086b9c15e8a0bd8811050dec7e24964e5056");
        // The vCPU signature does not matter for EC2 and GCE.
        assert_eq!(cloud(Vmm::Ec2, 1, 0x1, 0), cloud(Vmm::Ec2, 1, 0x1, EPYC_V4));
        assert_eq!(cloud(Vmm::Gce, 1, 0x1, 0), "5da7106cf14cf46b1725ebab123eb9e53bd46a1e9f400cd0c08e7827b04b688ea8b4e403c8404efed4397ea5d5d0722e");
        assert_eq!(cloud(Vmm::Gce, 4, 0x1, 0), "5c5debf100fc339f90276e761ee1f1658d08922c3b20e2a2e6c7a6c3370b2452a15a00eae11886a93d6fd1e7ab81e29d");
    }

    /// sev-snp-measure-go's binary-free vectors (seed + metadata), with the
    /// 0.0.13 EC2 VMSA.
    #[test]
    fn seeded_ec2_vectors_without_firmware_content() {
        use crate::firmware::{FirmwareInfo, SevSection, SEV_ES_RESET_GUID};
        let info = FirmwareInfo {
            entries: vec![(SEV_ES_RESET_GUID, 0x0080_B004u32.to_le_bytes().to_vec())],
            sev_sections: Some(
                [
                    (0x80_0000, 0x9000, 1),
                    (0x80_A000, 0x3000, 1),
                    (0x80_D000, 0x1000, 2),
                    (0x80_E000, 0x1000, 3),
                    (0x80_F000, 0x11000, 1),
                ]
                .iter()
                .map(|&(gpa, size, kind)| SevSection { gpa, size, kind })
                .collect(),
            ),
            ..Default::default()
        };
        let fw = vec![0u8; 4096];
        for (seed, want) in [
            ("a58211791a556a630a4319dc9e2ea96cc0e9784dd9f20a4fadf81b26c98d163fcdcb6703884bbbb80d7b1de45b3d84d0", "1c146f3083d66ad1648f842a62a65ad99b9fa4c8fe5b151b677f4923c1686004ce9ce3d1d9eda527f72bba78e6ceef67"),
            ("2027a27bb9f7acfd280e4c7bd68a73973b94bf0756e5b282e004b9395f597b8d0eb4defa7d8f6549375aa4d2b146f0f3", "ef89452c1af43e29da35f8707836be26dbdb70654e46cd81368d7e130ab583018b70319e90b5890b63e2294eed84e63d"),
        ] {
            let mut s = [0u8; LD_BYTES];
            hex::decode_to_slice(seed, &mut s).unwrap();
            let ld = launch_digest(&SnpInputs {
                firmware: &fw,
                info: &info,
                firmware_name: "seed",
                vcpus: 2,
                vcpu_sig: 0,
                vmm: Vmm::Ec2,
                hashes: None,
                guest_features: 1,
                ovmf_hash: Some(s),
            })
            .unwrap();
            assert_eq!(hex::encode(ld), want);
        }
    }

    #[test]
    fn hashes_table_and_page_match_the_derived_vector() {
        let h = SevHashes::new(&[], Some(&[]), Some("console=ttyS0 loglevel=7"));
        let table = h.table();
        assert_eq!(hex::encode(&table), concat!(
            "06d63894224fc94cb479a793d411fd21a800d82dd09720bd944caa78e7714d36ab2a3200321c8eec6a77bad179511397f913a083",
            "067ad8cb737bb260aacbfe8df70fc50a31f7ba442f3ad74b9af141e29169781d3200e3b0c44298fc1c149afbf4c8996fb92427ae",
            "41e4649b934ca495991b7852b8553794e74dd2ab7f42b835d5b172d2045b3200e3b0c44298fc1c149afbf4c8996fb92427ae41e4",
            "649b934ca495991b7852b8550000000000000000"));
        let mut page = vec![0u8; 4096];
        page[0xC00..0xC00 + 176].copy_from_slice(&table);
        assert_eq!(hex::encode(Sha384::digest(&page)), "adbef9bc7385f7a6dcb8774523cf024b403f193a47962309b277c4109aa70b4ba0355d1657b50e9625d5bd1129e7fd27");
    }

    #[test]
    fn vmsa_pages_match_the_derived_hashes() {
        let h = |eip, f, vmm| hex::encode(&Sha384::digest(vmsa_page(eip, f, EPYC_V4, vmm))[..8]);
        let ap = 0x0080_B004;
        assert_eq!(h(BSP_EIP, 1, Vmm::Qemu), "77920c4c629ff47e");
        assert_eq!(h(ap, 1, Vmm::Qemu), "8413b852790765a3");
        assert_eq!(h(BSP_EIP, 0x21, Vmm::Qemu), "ae79efa6efbe1594");
        assert_eq!(h(ap, 0x21, Vmm::Qemu), "180ef2675dc01615");
        assert_eq!(h(BSP_EIP, 1, Vmm::Ec2), "d08442e8bcdb6a5d");
        assert_eq!(h(ap, 0x21, Vmm::Ec2), "bb757c6aec783f41");
        assert_eq!(h(BSP_EIP, 1, Vmm::Gce), "f9e03177dad7f481");
        assert_eq!(h(ap, 1, Vmm::Gce), "5302d262c88780a7");
    }

    #[test]
    fn bad_firmware_is_refused_with_the_file_named() {
        let e = run(&Case {
            fw: X64,
            vcpus: 1,
            sig: EPYC_V4,
            vmm: Vmm::Qemu,
            kernel: true,
            append: Some(""),
            features: 0x21,
            seed: false,
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains(X64) && e.contains("SNP_KERNEL_HASHES"), "{e}");
        let info = crate::firmware::FirmwareInfo::default();
        let e = launch_digest(&SnpInputs {
            firmware: &[0u8; 8192],
            info: &info,
            firmware_name: "/fw/plain.fd",
            vcpus: 1,
            vcpu_sig: EPYC_V4,
            vmm: Vmm::Qemu,
            hashes: None,
            guest_features: 1,
            ovmf_hash: None,
        })
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("/fw/plain.fd has no SEV metadata"), "{e}");
        let e = ovmf_hash(&[0u8; 100], "/fw/short.fd")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/fw/short.fd") && e.contains("4096"), "{e}");
    }

    /// The `sev` crate as an independent implementation: same digests for
    /// QEMU on real files where the crate is known to be right (features
    /// 0x1, a command line without surrounding blanks).
    #[test]
    fn agrees_with_the_sev_crate_on_real_files() {
        use sev::measurement::{snp as crate_snp, vcpu_types::CpuType, vmsa::GuestFeatures};
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("k");
        let initrd = dir.path().join("i");
        std::fs::write(
            &kernel,
            (0..200_000u32)
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<_>>(),
        )
        .unwrap();
        std::fs::write(&initrd, b"initrd bytes".repeat(1000)).unwrap();
        let fw_path = sev_crate_fixture(AMDSEV);
        let fw = std::fs::read(&fw_path).unwrap();
        let info = crate::firmware::parse(&fw_path, &fw).unwrap();
        for (vcpus, cpu, name) in [
            (1, CpuType::EpycV4, "EPYC-v4"),
            (3, CpuType::EpycMilan, "EPYC-Milan"),
            (8, CpuType::EpycGenoa, "EPYC-Genoa"),
        ] {
            let append = "console=hvc0 quiet cocoon.x=1";
            let theirs = crate_snp::snp_calc_launch_digest(crate_snp::SnpMeasurementArgs {
                vcpus,
                vcpu_type: cpu,
                ovmf_file: fw_path.clone(),
                guest_features: GuestFeatures::default(),
                kernel_file: Some(kernel.clone()),
                initrd_file: Some(initrd.clone()),
                append: Some(append),
                ovmf_hash_str: None,
                vmm_type: None,
            })
            .unwrap()
            .get_hex_ld();
            let ours = launch_digest(&SnpInputs {
                firmware: &fw,
                info: &info,
                firmware_name: "fw",
                vcpus,
                vcpu_sig: cpu_type_sig(name).unwrap(),
                vmm: Vmm::Qemu,
                hashes: Some(SevHashes::new(
                    &std::fs::read(&kernel).unwrap(),
                    Some(&std::fs::read(&initrd).unwrap()),
                    Some(append),
                )),
                guest_features: 1,
                ovmf_hash: None,
            })
            .unwrap();
            assert_eq!(hex::encode(ours), theirs, "{name} x{vcpus}");
        }
    }
}
