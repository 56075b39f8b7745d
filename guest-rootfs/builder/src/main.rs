//! `cocoon-guest-build`: builds `vmlinuz`, `initrd.img` and `manifest.json`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use cocoon_guest_builder::build::{self, GuestInputs, DEFAULT_MODULES};

/// Build the Cocoon guest kernel + initrd pair (bit-reproducible).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// A kernel tree: boot/vmlinuz-<release> and lib/modules/<release>/ (the
    /// output of guest-rootfs/kernel/build.sh, or an unpacked Debian
    /// linux-image package).
    #[arg(long)]
    kernel_dir: PathBuf,
    /// The static cocoon-agent binary; it becomes /init.
    #[arg(long)]
    agent: PathBuf,
    /// Extra kernel modules to include and load at boot (with dependencies).
    #[arg(long = "module", value_name = "NAME")]
    modules: Vec<String>,
    /// Output directory.
    #[arg(long, default_value = "build/guest")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut modules: Vec<String> = DEFAULT_MODULES.iter().map(|s| s.to_string()).collect();
    modules.extend(args.modules);
    let inputs = GuestInputs {
        kernel_dir: args.kernel_dir,
        agent: args.agent,
        modules,
    };
    let m = build::build(&inputs, &args.out)
        .with_context(|| format!("building the guest into {}", args.out.display()))?;
    println!(
        "guest {}: kernel {} sha256 {}, initrd {} bytes sha256 {}",
        args.out.display(),
        m.kernel_release,
        m.kernel.sha256,
        m.initrd.size,
        m.initrd.sha256
    );
    Ok(())
}
