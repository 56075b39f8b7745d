//! The few system calls Cocoon's host side makes without a safe wrapper,
//! kept in one place so the unsafe code stays small and auditable.

use std::path::Path;

/// Reads a 32-bit register from a BAR file by mapping the page that holds
/// it read-only (sysfs `resource0` supports mmap, not read).
pub fn read_mmio_u32(path: &Path, offset: u64) -> Result<u32, String> {
    use std::os::fd::AsFd;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    if size < offset + 4 {
        return Err(format!(
            "the BAR is {size:#x} bytes, too small for the register at {offset:#x}"
        ));
    }
    let page = 4096u64;
    let base = offset & !(page - 1);
    let within = usize::try_from(offset - base).map_err(|e| e.to_string())?;
    let len = std::num::NonZeroUsize::new(4096).ok_or("zero length")?;
    let base = i64::try_from(base).map_err(|e| e.to_string())?;
    // SAFETY: a fresh read-only shared mapping of one page of the file; it
    // is unmapped below and never aliased as a Rust reference.
    let ptr = unsafe {
        nix::sys::mman::mmap(
            None,
            len,
            nix::sys::mman::ProtFlags::PROT_READ,
            nix::sys::mman::MapFlags::MAP_SHARED,
            file.as_fd(),
            base,
        )
    }
    .map_err(|e| format!("mmap: {e}"))?;
    let value = if within % 4 == 0 && within + 4 <= 4096 {
        // SAFETY: `within` is 4-byte aligned and `within + 4 <= 4096`, so
        // the u32 lies inside the one-page mapping; MMIO is read with one
        // volatile access.
        let v =
            unsafe { std::ptr::read_volatile(ptr.as_ptr().cast::<u8>().add(within).cast::<u32>()) };
        Ok(v)
    } else {
        Err(format!("unaligned register offset {offset:#x}"))
    };
    // SAFETY: unmaps exactly the mapping created above.
    let _ = unsafe { nix::sys::mman::munmap(ptr, 4096) };
    value.map(u32::from_le)
}
