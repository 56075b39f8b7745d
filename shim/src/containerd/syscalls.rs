//! Linux system call names, for checking seccomp profiles: a name that no
//! architecture Linux supports has is a typo, and a typo in a deny rule
//! would leave the call allowed.

use std::str::FromStr;

/// Whether some Linux architecture has a system call called `name`.
pub fn is_linux_syscall(name: &str) -> bool {
    macro_rules! any_arch {
        ($($arch:ident),*) => {
            false $(|| syscalls::$arch::Sysno::from_str(name).is_ok())*
        };
    }
    any_arch!(
        x86_64,
        x86,
        aarch64,
        arm,
        riscv64,
        riscv32,
        s390x,
        powerpc,
        powerpc64,
        mips,
        mips64,
        loongarch64,
        sparc,
        sparc64
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_every_architecture_are_known_and_typos_are_not() {
        for name in [
            "read",
            "clone3",
            "_llseek",
            "socketcall",
            "arm_fadvise64_64",
            "s390_pci_mmio_read",
            "cachestat",
        ] {
            assert!(is_linux_syscall(name), "{name}");
        }
        for name in ["reed", "", "CLONE", "mount "] {
            assert!(!is_linux_syscall(name), "{name:?}");
        }
    }
}
