//! What a guest kernel image is: its version string from the x86 boot
//! protocol header, and whether it is Cocoon's own reproducible build
//! (`guest-rootfs/kernel/build.sh`) or another kernel such as Debian's.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The build identity `guest-rootfs/kernel/build.sh` gives Cocoon's kernel
/// (`KBUILD_BUILD_USER@KBUILD_BUILD_HOST`).
const COCOON_BUILDER: &str = "(cocoon@cocoon)";
/// `CONFIG_LOCALVERSION` of Cocoon's kernel.
const COCOON_LOCALVERSION: &str = "-cocoon";

/// Facts about a bzImage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelImage {
    /// The whole version string (`6.12.95-cocoon (cocoon@cocoon) #1 SMP …`).
    pub version: String,
    /// The release (`uname -r` in the guest).
    pub release: String,
}

impl KernelImage {
    /// Reads the version string the boot protocol points at: the
    /// `kernel_version` field at 0x20e is an offset from 0x200 to a
    /// NUL-terminated string (boot protocol 2.00 and later).
    pub fn read(path: &Path) -> std::io::Result<Self> {
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        let mut f = std::fs::File::open(path)?;
        let mut header = [0u8; 0x210];
        f.read_exact(&mut header)
            .map_err(|_| bad("too short for a Linux boot header"))?;
        if &header[0x202..0x206] != b"HdrS" {
            return Err(bad("not a Linux kernel image (no \"HdrS\" at 0x202)"));
        }
        let offset = u16::from_le_bytes([header[0x20e], header[0x20f]]);
        if offset == 0 {
            return Err(bad("the boot header has no kernel_version string"));
        }
        f.seek(SeekFrom::Start(0x200 + u64::from(offset)))?;
        let mut text = Vec::with_capacity(256);
        f.take(512).read_to_end(&mut text)?;
        let end = text
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| bad("the kernel_version string is not terminated"))?;
        let version = String::from_utf8_lossy(&text[..end]).into_owned();
        let release = version
            .split_whitespace()
            .next()
            .ok_or_else(|| bad("the kernel_version string is empty"))?
            .to_string();
        Ok(Self { version, release })
    }

    /// Whether this is Cocoon's reproducible kernel: its release carries
    /// Cocoon's local version and it was built with Cocoon's fixed identity.
    pub fn is_cocoon_build(&self) -> bool {
        self.release.ends_with(COCOON_LOCALVERSION) && self.version.contains(COCOON_BUILDER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(version: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 0x400];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        // String at 0x300: offset 0x100 from 0x200.
        img[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        img[0x300..0x300 + version.len()].copy_from_slice(version);
        img
    }

    #[test]
    fn versions_are_read_and_classified() {
        let d = tempfile::tempdir().unwrap();
        let cases: [(&[u8], &str, bool); 3] = [
            (
                b"6.12.95-cocoon (cocoon@cocoon) #1 SMP PREEMPT_DYNAMIC Sun Jul  5 00:00:00 UTC 2026\0",
                "6.12.95-cocoon",
                true,
            ),
            (
                b"6.12.95+deb12-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC Debian 6.12.95-1~bpo12+1\0",
                "6.12.95+deb12-amd64",
                false,
            ),
            // Cocoon's name on someone else's build is not Cocoon's build.
            (b"6.12.95-cocoon (me@laptop) #3 SMP\0", "6.12.95-cocoon", false),
        ];
        for (version, release, ours) in cases {
            let p = d.path().join("k");
            std::fs::write(&p, image(version)).unwrap();
            let k = KernelImage::read(&p).unwrap();
            assert_eq!(k.release, release);
            assert_eq!(k.is_cocoon_build(), ours, "{}", k.version);
        }
    }

    #[test]
    fn non_kernels_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        std::fs::write(&p, vec![0u8; 0x400]).unwrap();
        assert!(KernelImage::read(&p)
            .unwrap_err()
            .to_string()
            .contains("HdrS"));
        std::fs::write(&p, b"short").unwrap();
        assert!(KernelImage::read(&p).is_err());
        let mut unterminated = image(b"x");
        unterminated.truncate(0x301);
        std::fs::write(&p, &unterminated).unwrap();
        assert!(KernelImage::read(&p)
            .unwrap_err()
            .to_string()
            .contains("terminated"));
    }
}
