//! QEMU: the command line ([`argv`]) and the QMP control socket ([`qmp`]).

pub mod argv;
pub mod qmp;
