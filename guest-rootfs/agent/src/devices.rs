//! Device access of a container: `linux.resources.devices` rules enforced
//! by a cgroup v2 device program (eBPF, `BPF_PROG_TYPE_CGROUP_DEVICE`)
//! attached to the container's cgroup, and the nodes of `linux.devices`.
//!
//! Semantics, as runc gives them: access is denied unless a rule allows it;
//! the spec's rules are read in order and the last one that matches a
//! request decides; the devices every container gets (`/dev/null`, `zero`,
//! `full`, `random`, `urandom`, `tty`, `console`, `ptmx`, `/dev/pts/*`,
//! `/dev/net/tun`, and `mknod` of any node) are allowed after the spec's
//! rules, so a spec cannot take them away. An allow rule matches a request
//! whose access it covers entirely; a deny rule matches a request that asks
//! for any access it names (so denying `w` also denies opening `rw`).
//!
//! The program is generated here (one block per rule, the last rule first)
//! rather than by a BPF toolchain: it uses a dozen instruction forms and
//! [`DeviceRules::allows`] is its reference, which the unit tests hold it to
//! with an interpreter for those forms.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

use crate::error::{Error, Result};

/// Device type of a rule or a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Any (`a`; rules only).
    All,
    /// Block device (`b`).
    Block,
    /// Character device (`c`, `u`).
    Char,
}

/// `BPF_DEVCG_ACC_MKNOD`.
pub const MKNOD: u32 = 1;
/// `BPF_DEVCG_ACC_READ`.
pub const READ: u32 = 2;
/// `BPF_DEVCG_ACC_WRITE`.
pub const WRITE: u32 = 4;
const ALL_ACCESS: u32 = MKNOD | READ | WRITE;

/// One `linux.resources.devices` entry, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Allow or deny.
    pub allow: bool,
    /// Device type.
    pub kind: Kind,
    /// Major number, `None` for any.
    pub major: Option<u32>,
    /// Minor number, `None` for any.
    pub minor: Option<u32>,
    /// `MKNOD | READ | WRITE` bits.
    pub access: u32,
}

impl Rule {
    const fn allow_char(major: u32, minor: Option<u32>) -> Self {
        Self {
            allow: true,
            kind: Kind::Char,
            major: Some(major),
            minor,
            access: ALL_ACCESS,
        }
    }

    #[cfg(test)]
    fn matches(&self, kind: Kind, major: u32, minor: u32, access: u32) -> bool {
        let kind_ok = self.kind == Kind::All || self.kind == kind;
        let access_ok = if self.allow {
            access & !self.access == 0
        } else {
            access & self.access != 0
        };
        kind_ok
            && access_ok
            && self.major.is_none_or(|m| m == major)
            && self.minor.is_none_or(|m| m == minor)
    }
}

/// What every container may use whatever its spec says (runc's list).
pub const DEFAULT_ALLOWED: [Rule; 12] = [
    Rule {
        allow: true,
        kind: Kind::Char,
        major: None,
        minor: None,
        access: MKNOD,
    },
    Rule {
        allow: true,
        kind: Kind::Block,
        major: None,
        minor: None,
        access: MKNOD,
    },
    Rule::allow_char(1, Some(3)),    // null
    Rule::allow_char(1, Some(5)),    // zero
    Rule::allow_char(1, Some(7)),    // full
    Rule::allow_char(1, Some(8)),    // random
    Rule::allow_char(1, Some(9)),    // urandom
    Rule::allow_char(5, Some(0)),    // tty
    Rule::allow_char(5, Some(1)),    // console
    Rule::allow_char(5, Some(2)),    // ptmx
    Rule::allow_char(136, None),     // /dev/pts/*
    Rule::allow_char(10, Some(200)), // /dev/net/tun
];

/// A container's device rules: the spec's, then [`DEFAULT_ALLOWED`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRules {
    rules: Vec<Rule>,
}

impl Default for DeviceRules {
    /// What a spec without device rules gets: the defaults only.
    fn default() -> Self {
        Self {
            rules: DEFAULT_ALLOWED.to_vec(),
        }
    }
}

/// An error naming `field` (`linux.devices`, ...) and, in `problem`, the
/// entry and key (`[2].major: ...`).
fn invalid(field: &'static str, at: String, problem: impl Into<String>) -> Error {
    Error::InvalidArgument {
        field,
        problem: format!("{at}: {}", problem.into()),
    }
}

/// A major or minor number of a rule or node: below 2^12 / 2^20, as the
/// kernel's `dev_t` holds them.
fn device_number(field: &'static str, at: String, v: i64, bits: u32) -> Result<u32> {
    if v < 0 || v >= 1i64 << bits {
        return Err(invalid(
            field,
            at,
            format!("{v} is not a device number (0..{})", (1u64 << bits) - 1),
        ));
    }
    Ok(u32::try_from(v).unwrap_or(u32::MAX))
}

impl DeviceRules {
    /// Decodes `linux.resources.devices` (possibly empty) and appends the
    /// defaults.
    pub fn from_oci(spec: &[oci_spec::runtime::LinuxDeviceCgroup]) -> Result<Self> {
        use oci_spec::runtime::LinuxDeviceType as T;
        let mut rules = Vec::with_capacity(spec.len() + DEFAULT_ALLOWED.len());
        for (i, r) in spec.iter().enumerate() {
            const F: &str = "linux.resources.devices";
            let field = |f: &str| format!("[{i}].{f}");
            let kind = match r.typ().unwrap_or(T::A) {
                T::A => Kind::All,
                T::B => Kind::Block,
                T::C | T::U => Kind::Char,
                T::P => {
                    return Err(invalid(
                        F,
                        field("type"),
                        "\"p\" (FIFO) is no device a cgroup rule can name; use a, b or c",
                    ))
                }
            };
            let mut access = 0;
            for ch in r.access().as_deref().unwrap_or("rwm").chars() {
                access |= match ch {
                    'r' => READ,
                    'w' => WRITE,
                    'm' => MKNOD,
                    other => {
                        return Err(invalid(
                            F,
                            field("access"),
                            format!("{other:?} is not one of r, w, m"),
                        ))
                    }
                };
            }
            rules.push(Rule {
                allow: r.allow(),
                kind,
                major: r
                    .major()
                    .filter(|m| *m >= 0)
                    .map(|m| device_number(F, field("major"), m, 12))
                    .transpose()?,
                minor: r
                    .minor()
                    .filter(|m| *m >= 0)
                    .map(|m| device_number(F, field("minor"), m, 20))
                    .transpose()?,
                access,
            });
        }
        rules.extend(DEFAULT_ALLOWED);
        Ok(Self { rules })
    }

    /// Whether a request is allowed (the reference the program follows).
    #[cfg(test)]
    pub fn allows(&self, kind: Kind, major: u32, minor: u32, access: u32) -> bool {
        self.rules
            .iter()
            .rev()
            .find(|r| r.matches(kind, major, minor, access))
            .is_some_and(|r| r.allow)
    }

    /// The cgroup device program.
    pub fn program(&self) -> Vec<Insn> {
        use insn::*;
        // R2 = access_type, R3 = type (low 16 bits), R4 = access (high 16),
        // R5 = major, R6 = minor.
        let mut p = vec![
            ldx_w(2, 1, 0),
            mov32_reg(3, 2),
            and32_imm(3, 0xffff),
            mov32_reg(4, 2),
            rsh32_imm(4, 16),
            ldx_w(5, 1, 4),
            ldx_w(6, 1, 8),
        ];
        for r in self.rules.iter().rev() {
            // Each check jumps past the block (to the next rule) on mismatch;
            // `skip` is filled in once the block's length is known.
            let mut block: Vec<(Insn, bool)> = Vec::new();
            match r.kind {
                Kind::All => {}
                Kind::Block => block.push((jne32_imm(3, 1, 0), true)),
                Kind::Char => block.push((jne32_imm(3, 2, 0), true)),
            }
            if r.allow && r.access != ALL_ACCESS {
                block.push((mov32_reg(7, 4), false));
                block.push((and32_imm(7, (!r.access & ALL_ACCESS) as i32), false));
                block.push((jne32_imm(7, 0, 0), true));
            } else if !r.allow {
                block.push((mov32_reg(7, 4), false));
                block.push((and32_imm(7, r.access as i32), false));
                block.push((jeq32_imm(7, 0, 0), true));
            }
            if let Some(m) = r.major {
                block.push((jne32_imm(5, m as i32, 0), true));
            }
            if let Some(m) = r.minor {
                block.push((jne32_imm(6, m as i32, 0), true));
            }
            block.push((mov64_imm(0, i32::from(r.allow)), false));
            block.push((exit(), false));
            // A rule that matches every request (`--privileged`'s allow
            // rwm on all devices) ends the program: the verifier refuses
            // the unreachable rules after it.
            let unconditional = block.iter().all(|(_, jump)| !jump);
            let len = block.len();
            for (i, (mut ins, jump)) in block.into_iter().enumerate() {
                if jump {
                    ins.off = i16::try_from(len - i - 1).unwrap_or(i16::MAX);
                }
                p.push(ins);
            }
            if unconditional {
                return p;
            }
        }
        p.push(mov64_imm(0, 0));
        p.push(exit());
        p
    }

    /// Loads the program and attaches it to the cgroup open as `cgroup`.
    /// The cgroup keeps it; no descendant cgroup can attach another.
    pub fn attach(&self, cgroup: &impl AsRawFd) -> Result<()> {
        let prog = self.program();
        let fd = load(&prog).map_err(|(e, log)| {
            Error::sys(
                format!(
                    "load the device cgroup program ({} instructions): {log}",
                    prog.len()
                ),
                e,
            )
        })?;
        let attr = AttachAttr {
            target_fd: cgroup.as_raw_fd().unsigned_abs(),
            attach_bpf_fd: fd.as_raw_fd().unsigned_abs(),
            attach_type: BPF_CGROUP_DEVICE,
            attach_flags: 0,
            replace_bpf_fd: 0,
        };
        // SAFETY: `attr` is a live bpf_attr prefix of the size passed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_ATTACH,
                &attr as *const AttachAttr,
                std::mem::size_of::<AttachAttr>(),
            )
        };
        if rc < 0 {
            return Err(Error::sys(
                "attach the device program to the container's cgroup",
                Errno::last(),
            ));
        }
        Ok(())
    }
}

/// `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u8,
    /// dst (low nibble) and src (high nibble) registers.
    pub regs: u8,
    /// Offset.
    pub off: i16,
    /// Immediate.
    pub imm: i32,
}

/// The instruction forms the program uses.
pub mod insn {
    use super::Insn;

    const fn i(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            regs: (src << 4) | dst,
            off,
            imm,
        }
    }
    /// `BPF_LDX | BPF_MEM | BPF_W`: dst = *(u32 *)(src + off).
    pub const LDX_W: u8 = 0x61;
    /// `BPF_ALU | BPF_MOV | BPF_X`.
    pub const MOV32_REG: u8 = 0xbc;
    /// `BPF_ALU | BPF_AND | BPF_K`.
    pub const AND32_IMM: u8 = 0x54;
    /// `BPF_ALU | BPF_RSH | BPF_K`.
    pub const RSH32_IMM: u8 = 0x74;
    /// `BPF_ALU64 | BPF_MOV | BPF_K`.
    pub const MOV64_IMM: u8 = 0xb7;
    /// `BPF_JMP32 | BPF_JNE | BPF_K`.
    pub const JNE32_IMM: u8 = 0x56;
    /// `BPF_JMP32 | BPF_JEQ | BPF_K`.
    pub const JEQ32_IMM: u8 = 0x16;
    /// `BPF_JMP | BPF_EXIT`.
    pub const EXIT: u8 = 0x95;

    /// dst = *(u32 *)(src + off)
    pub const fn ldx_w(dst: u8, src: u8, off: i16) -> Insn {
        i(LDX_W, dst, src, off, 0)
    }
    /// (u32) dst = (u32) src
    pub const fn mov32_reg(dst: u8, src: u8) -> Insn {
        i(MOV32_REG, dst, src, 0, 0)
    }
    /// (u32) dst &= imm
    pub const fn and32_imm(dst: u8, imm: i32) -> Insn {
        i(AND32_IMM, dst, 0, 0, imm)
    }
    /// (u32) dst >>= imm
    pub const fn rsh32_imm(dst: u8, imm: i32) -> Insn {
        i(RSH32_IMM, dst, 0, 0, imm)
    }
    /// dst = imm
    pub const fn mov64_imm(dst: u8, imm: i32) -> Insn {
        i(MOV64_IMM, dst, 0, 0, imm)
    }
    /// if (u32) dst != imm goto +off
    pub const fn jne32_imm(dst: u8, imm: i32, off: i16) -> Insn {
        i(JNE32_IMM, dst, 0, off, imm)
    }
    /// if (u32) dst == imm goto +off
    pub const fn jeq32_imm(dst: u8, imm: i32, off: i16) -> Insn {
        i(JEQ32_IMM, dst, 0, off, imm)
    }
    /// return r0
    pub const fn exit() -> Insn {
        i(EXIT, 0, 0, 0, 0)
    }
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;

/// The `BPF_PROG_LOAD` part of `union bpf_attr` up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct LoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH` part of `union bpf_attr`.
#[repr(C)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn load_with_log(prog: &[Insn], log: &mut [u8]) -> std::result::Result<OwnedFd, Errno> {
    let mut name = [0u8; 16];
    name[..12].copy_from_slice(b"cocoon_devcg");
    let attr = LoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(prog.len()).unwrap_or(u32::MAX),
        insns: prog.as_ptr() as u64,
        license: c"Apache-2.0".as_ptr() as u64,
        log_level: u32::from(!log.is_empty()),
        log_size: u32::try_from(log.len()).unwrap_or(0),
        log_buf: if log.is_empty() {
            0
        } else {
            log.as_mut_ptr() as u64
        },
        prog_name: name,
        ..LoadAttr::default()
    };
    // SAFETY: `attr` is a live bpf_attr prefix of the size passed; the
    // instructions, license and log buffer outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const LoadAttr,
            std::mem::size_of::<LoadAttr>(),
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    let fd = i32::try_from(rc).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Loads `prog`; on failure, loads it again with the verifier's log to say
/// why.
fn load(prog: &[Insn]) -> std::result::Result<OwnedFd, (Errno, String)> {
    load_with_log(prog, &mut []).map_err(|e| {
        let mut log = vec![0u8; 64 * 1024];
        let _ = load_with_log(prog, &mut log);
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        let last: Vec<&str> = text.lines().rev().take(3).collect();
        (e, last.into_iter().rev().collect::<Vec<_>>().join(" / "))
    })
}

/// A `linux.devices` node to create in the container's `/dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Absolute path in the container.
    pub path: String,
    /// `S_IFCHR`, `S_IFBLK` or `S_IFIFO` with the permission bits.
    pub mode: libc::mode_t,
    /// `makedev(major, minor)`.
    pub dev: libc::dev_t,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

impl Node {
    /// Decodes one `linux.devices` entry.
    pub fn from_oci(i: usize, d: &oci_spec::runtime::LinuxDevice) -> Result<Self> {
        use oci_spec::runtime::LinuxDeviceType as T;
        const F: &str = "linux.devices";
        let field = |f: &str| format!("[{i}].{f}");
        let path = d.path().display().to_string();
        if !path.starts_with("/dev/") || !crate::oci::is_clean_absolute(&path) {
            return Err(invalid(
                F,
                field("path"),
                format!("{path:?} is not a path below /dev without `..`"),
            ));
        }
        let kind = match d.typ() {
            T::C | T::U => libc::S_IFCHR,
            T::B => libc::S_IFBLK,
            T::P => libc::S_IFIFO,
            T::A => {
                return Err(invalid(
                    F,
                    field("type"),
                    "\"a\" names no device type; use c, b, u or p",
                ))
            }
        };
        let (major, minor) = if kind == libc::S_IFIFO {
            (0, 0)
        } else {
            (
                device_number(F, field("major"), d.major(), 12)?,
                device_number(F, field("minor"), d.minor(), 20)?,
            )
        };
        // Some producers leave the file-type bits of stat(2) in fileMode;
        // anything else beyond the permission bits is refused.
        let perm = d.file_mode().unwrap_or(0o666);
        if perm & !0o7777 & !libc::S_IFMT != 0 {
            return Err(invalid(
                F,
                field("fileMode"),
                format!("{perm:#o} has bits beyond the permission bits"),
            ));
        }
        Ok(Self {
            path,
            mode: kind | (perm & 0o7777) as libc::mode_t,
            dev: libc::makedev(major, minor),
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxDeviceCgroupBuilder, LinuxDeviceType};

    /// Runs `prog` on a `struct bpf_cgroup_dev_ctx` the way the kernel
    /// would, for the instruction forms [`DeviceRules::program`] emits.
    /// (The casts are the 32-bit ALU's truncation.)
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    fn run(prog: &[Insn], ctx: [u32; 3]) -> u64 {
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        for _ in 0..10_000 {
            let ins = prog[pc];
            let (dst, src) = (usize::from(ins.regs & 0xf), usize::from(ins.regs >> 4));
            let imm32 = ins.imm as u32;
            pc += 1;
            match ins.code {
                insn::LDX_W => {
                    assert_eq!(src, 1, "loads only from the context");
                    r[dst] = u64::from(ctx[usize::try_from(ins.off / 4).unwrap()]);
                }
                insn::MOV32_REG => r[dst] = r[src] & 0xffff_ffff,
                insn::AND32_IMM => r[dst] = (r[dst] as u32 & imm32) as u64,
                insn::RSH32_IMM => r[dst] = ((r[dst] as u32) >> imm32) as u64,
                insn::MOV64_IMM => r[dst] = ins.imm as i64 as u64,
                insn::JNE32_IMM | insn::JEQ32_IMM => {
                    let eq = r[dst] as u32 == imm32;
                    if eq == (ins.code == insn::JEQ32_IMM) {
                        pc = pc.checked_add_signed(isize::from(ins.off)).unwrap();
                    }
                }
                insn::EXIT => return r[0],
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
        panic!("no exit");
    }

    fn rule(
        allow: bool,
        t: LinuxDeviceType,
        major: i64,
        minor: i64,
        access: &str,
    ) -> oci_spec::runtime::LinuxDeviceCgroup {
        LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .typ(t)
            .major(major)
            .minor(minor)
            .access(access)
            .build()
            .unwrap()
    }

    /// Rule sets the program tests run over.
    fn sample_specs() -> Vec<Vec<oci_spec::runtime::LinuxDeviceCgroup>> {
        use LinuxDeviceType as T;
        vec![
            vec![],
            // containerd's default spec: deny everything.
            vec![LinuxDeviceCgroupBuilder::default()
                .allow(false)
                .access("rwm")
                .build()
                .unwrap()],
            // --privileged.
            vec![LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .access("rwm")
                .build()
                .unwrap()],
            vec![
                rule(false, T::A, -1, -1, "rwm"),
                rule(true, T::C, 10, 229, "rw"),
                rule(true, T::B, 8, -1, "r"),
                rule(false, T::B, 8, 3, "r"),
                rule(false, T::C, 1, 3, "w"),
            ],
            // An allow-all in the middle: what follows it in the program
            // is never reached.
            vec![
                rule(false, T::A, -1, -1, "rwm"),
                rule(true, T::A, -1, -1, "rwm"),
            ],
        ]
    }

    #[test]
    fn the_program_decides_like_the_rules() {
        for spec in sample_specs() {
            let rules = DeviceRules::from_oci(&spec).unwrap();
            let prog = rules.program();
            for kind in [Kind::Char, Kind::Block] {
                for (major, minor) in [
                    (1, 3),
                    (1, 5),
                    (1, 1),
                    (5, 2),
                    (136, 7),
                    (10, 229),
                    (10, 200),
                    (8, 0),
                    (8, 3),
                    (4095, 1048575),
                ] {
                    for access in 1..=7 {
                        let t = if kind == Kind::Block { 1 } else { 2 };
                        let got = run(&prog, [(access << 16) | t, major, minor]);
                        let want = rules.allows(kind, major, minor, access);
                        assert_eq!(
                            got,
                            u64::from(want),
                            "{spec:?}: {kind:?} {major}:{minor} access {access}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn defaults_allow_what_every_container_needs() {
        use LinuxDeviceType as T;
        let deny_all = [rule(false, T::A, -1, -1, "rwm")];
        let r = DeviceRules::from_oci(&deny_all).unwrap();
        assert!(r.allows(Kind::Char, 1, 3, READ | WRITE), "/dev/null");
        assert!(r.allows(Kind::Char, 136, 4, READ | WRITE), "a pty");
        assert!(r.allows(Kind::Block, 8, 0, MKNOD), "mknod of anything");
        assert!(!r.allows(Kind::Block, 8, 0, READ), "a disk");
        assert!(!r.allows(Kind::Char, 1, 1, READ), "/dev/mem");
        assert!(!r.allows(Kind::Char, 10, 229, READ | WRITE), "/dev/fuse");
        let fuse = [
            rule(false, T::A, -1, -1, "rwm"),
            rule(true, T::C, 10, 229, "rwm"),
        ];
        let r = DeviceRules::from_oci(&fuse).unwrap();
        assert!(r.allows(Kind::Char, 10, 229, READ | WRITE));
        // Denying writes denies read-write opens too; reads stay allowed.
        let ro = [
            rule(true, T::A, -1, -1, "rwm"),
            rule(false, T::C, 10, 229, "w"),
        ];
        let r = DeviceRules::from_oci(&ro).unwrap();
        assert!(!r.allows(Kind::Char, 10, 229, READ | WRITE));
        assert!(r.allows(Kind::Char, 10, 229, READ));
        // A partial allow does not cover more than it names.
        let r = DeviceRules::from_oci(&[rule(true, T::C, 10, 229, "r")]).unwrap();
        assert!(!r.allows(Kind::Char, 10, 229, READ | WRITE));
        // The spec cannot take the defaults away.
        let r = DeviceRules::from_oci(&[rule(false, T::C, 1, 3, "rwm")]).unwrap();
        assert!(r.allows(Kind::Char, 1, 3, READ));
    }

    #[test]
    fn bad_rules_and_nodes_name_the_field() {
        use oci_spec::runtime::LinuxDeviceBuilder;
        let bad = [rule(true, LinuxDeviceType::C, 4096, 1, "rw")];
        let e = DeviceRules::from_oci(&bad).unwrap_err().to_string();
        assert!(e.contains("`linux.resources.devices` [0].major"), "{e}");
        let bad = [rule(true, LinuxDeviceType::C, 1, 1, "rx")];
        let e = DeviceRules::from_oci(&bad).unwrap_err().to_string();
        assert!(e.contains("`linux.resources.devices` [0].access"), "{e}");
        let d = |path: &str, major: i64| {
            LinuxDeviceBuilder::default()
                .path(path)
                .typ(LinuxDeviceType::C)
                .major(major)
                .minor(229)
                .build()
                .unwrap()
        };
        let n = Node::from_oci(0, &d("/dev/fuse", 10)).unwrap();
        assert_eq!(n.mode, libc::S_IFCHR | 0o666);
        assert_eq!(n.dev, libc::makedev(10, 229));
        for (dev, needle) in [
            (d("/etc/passwd", 10), "`linux.devices` [0].path"),
            (d("/dev/../etc/x", 10), "`linux.devices` [0].path"),
            (d("/dev/x", -1), "`linux.devices` [0].major"),
        ] {
            let e = Node::from_oci(0, &dev).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    /// The kernel's verifier takes the program and enforces it: a process
    /// in the cgroup may read `/dev/null` but not `/dev/kmsg` (needs root
    /// and a cgroup2 mount; skipped with the reason otherwise).
    #[test]
    fn the_kernel_enforces_the_program() {
        if !nix::unistd::geteuid().is_root() || !std::path::Path::new("/dev/kmsg").exists() {
            eprintln!("SKIP the_kernel_enforces_the_program: needs root and /dev/kmsg");
            return;
        }
        let mnt = tempfile::tempdir().unwrap();
        if let Err(e) = nix::mount::mount(
            Some("cgroup2"),
            mnt.path(),
            Some("cgroup2"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        ) {
            eprintln!("SKIP the_kernel_enforces_the_program: cannot mount cgroup2: {e}");
            return;
        }
        let cg = mnt
            .path()
            .join(format!("cocoon-devtest-{}", std::process::id()));
        std::fs::create_dir(&cg).unwrap();
        let dir = std::fs::File::open(&cg).unwrap();
        // Every sample program passes the verifier (it refuses unreachable
        // instructions, which the interpreter above would not notice).
        let loaded: Vec<_> = sample_specs()
            .iter()
            .map(|spec| {
                let prog = DeviceRules::from_oci(spec).unwrap().program();
                (spec.clone(), load(&prog).map(drop))
            })
            .collect();
        let rules =
            DeviceRules::from_oci(&[rule(false, LinuxDeviceType::A, -1, -1, "rwm")]).unwrap();
        let attached = rules.attach(&dir);
        let out = attached.as_ref().ok().map(|()| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "echo $$ > {}/cgroup.procs && head -c0 /dev/null && echo null-ok; head -c0 /dev/kmsg && echo kmsg-ok; true",
                    cg.display()
                ))
                .output()
                .unwrap()
        });
        std::fs::remove_dir(&cg).unwrap();
        nix::mount::umount2(mnt.path(), nix::mount::MntFlags::MNT_DETACH).unwrap();
        attached.unwrap();
        for (spec, r) in loaded {
            if let Err((e, log)) = r {
                panic!("{spec:?}: the verifier refused the program: {e}: {log}");
            }
        }
        let out = out.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stdout.contains("null-ok"), "{stdout} {stderr}");
        assert!(!stdout.contains("kmsg-ok"), "{stdout} {stderr}");
        assert!(stderr.contains("Operation not permitted"), "{stderr}");
    }
}
