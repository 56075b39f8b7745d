//! The `cocoon` command line: one module per subcommand.

mod check;
mod config;
mod gpu;
mod measure;
mod policy;
mod registry;
mod run;
mod seal;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Cocoon: confidential VM-per-pod containers.
#[derive(Debug, Parser)]
#[command(name = "cocoon", version, about)]
pub struct Cli {
    /// Node configuration file (default: $COCOON_CONFIG, then
    /// /etc/cocoon/config.toml, then the built-in development defaults).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print progress logs (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot a VM with DIR as the root filesystem, run one command in it,
    /// stream its output and exit with its exit code.
    Run(run::RunArgs),
    /// Report what this host can run (KVM, SEV-SNP, TDX, IOMMU, QEMU,
    /// firmware) and whether the node configuration fits it.
    Check(check::CheckArgs),
    /// Compute launch measurements: of the node configuration (reference
    /// values, as the shim computes them before each launch), or of given
    /// files with `snp` / `tdx`.
    Measure(measure::MeasureArgs),
    /// NVIDIA GPUs of the host and their confidential-computing mode.
    #[command(subcommand)]
    Gpu(gpu::GpuCommand),
    /// Check or show the node configuration.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Encrypted models: seal a model for a pod, verify, inspect or open it.
    #[command(subcommand)]
    Seal(seal::SealCommand),
    /// Print the [[images]] tables of a pod's cocoon-policy.toml for OCI
    /// images: each layer's dm-verity root hash, bottom to top.
    Policy(policy::PolicyArgs),
}

impl Cli {
    fn log_level(&self) -> slog::Level {
        match self.verbose {
            0 => slog::Level::Warning,
            1 => slog::Level::Info,
            2 => slog::Level::Debug,
            _ => slog::Level::Trace,
        }
    }
}

/// Prints an error and its causes, one per line.
pub fn print_error(e: &anyhow::Error) {
    eprintln!("cocoon: error: {e}");
    for cause in e.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let rt = match crate::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cocoon: error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let result = rt.block_on(async {
        match &cli.command {
            Command::Run(args) => run::run(&cli, args).await,
            Command::Config(c) => config::run(&cli, c),
            Command::Check(a) => check::run(&cli, a),
            Command::Measure(a) => measure::run(&cli, a),
            Command::Gpu(c) => gpu::run(&cli, c),
            Command::Seal(c) => seal::run(&cli, c),
            Command::Policy(a) => policy::run(&cli, a).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            print_error(&e);
            e.downcast_ref::<run::ExitWith>().map_or(1, |x| x.0)
        }
    }
}
