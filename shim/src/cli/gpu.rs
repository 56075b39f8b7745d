//! `cocoon gpu`: NVIDIA GPUs of the host and their confidential-computing
//! mode.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Subcommand, ValueEnum};
use cocoon_vmm::config::Config;
use cocoon_vmm::gpu::{self, CcMode};
use cocoon_vmm::host::HostRoots;
use cocoon_vmm::vfio::Kind;

use super::Cli;

#[derive(Debug, Subcommand)]
pub(crate) enum GpuCommand {
    /// NVIDIA GPUs and NVSwitches: address, IDs, architecture, driver,
    /// IOMMU group, CC mode.
    List(ListArgs),
    /// Show the CC mode of GPUs, or switch it with `--set` (runs
    /// `gpu.set_cc_mode_command`, then reads the mode again).
    CcMode(CcModeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Read /sys under this directory (a recorded host).
    #[arg(long, hide = true, value_name = "DIR")]
    host_root: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    On,
    Off,
    Devtools,
}

#[derive(Debug, Args)]
pub(crate) struct CcModeArgs {
    /// GPUs by PCI address (default: every NVIDIA GPU).
    #[arg(value_name = "BDF")]
    bdfs: Vec<cocoon_vmm::pci::PciBdf>,
    /// Switch to this mode (takes effect after the GPU reset the command
    /// performs).
    #[arg(long, value_enum)]
    set: Option<Mode>,
    /// Read /sys under this directory (a recorded host).
    #[arg(long, hide = true, value_name = "DIR")]
    host_root: Option<PathBuf>,
}

fn host(config: &Config, explicit: Option<&PathBuf>) -> HostRoots {
    HostRoots::under(explicit.unwrap_or(&config.gpu.host_root))
}

pub(crate) fn run(cli: &Cli, cmd: &GpuCommand) -> anyhow::Result<i32> {
    let config = crate::node::NodeConfig::load(cli.config.as_deref())?.vm;
    match cmd {
        GpuCommand::List(a) => list(&config, a),
        GpuCommand::CcMode(a) => cc_mode(&config, a),
    }
}

fn gpu_json(g: &gpu::GpuInfo) -> serde_json::Value {
    let mut v = serde_json::to_value(&g.function).unwrap_or_default();
    v["arch"] = serde_json::to_value(g.arch).unwrap_or_default();
    v["cc_capable"] = g.cc_capable.into();
    match &g.cc_mode {
        Ok(m) => v["cc_mode"] = m.as_str().into(),
        Err(e) => v["cc_mode_error"] = e.clone().into(),
    }
    v
}

fn list(config: &Config, a: &ListArgs) -> anyhow::Result<i32> {
    let host = host(config, a.host_root.as_ref());
    let gpus = gpu::list(&host, &config.gpu.extra_cc_capable_ids);
    if a.json {
        let v: Vec<serde_json::Value> = gpus.iter().map(gpu_json).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    if gpus.is_empty() {
        println!("no NVIDIA GPU or NVSwitch found");
        return Ok(0);
    }
    println!(
        "{:<13} {:<9} {:<9} {:<9} {:<10} {:<5} {:<5} CC",
        "BDF", "ID", "KIND", "ARCH", "DRIVER", "GROUP", "CAP"
    );
    for g in &gpus {
        let f = &g.function;
        println!(
            "{:<13} {:04x}:{:04x} {:<9} {:<9} {:<10} {:<5} {:<5} {}",
            f.bdf,
            f.vendor,
            f.device,
            format!("{:?}", f.kind).to_lowercase(),
            format!("{:?}", g.arch).to_lowercase(),
            f.driver.as_deref().unwrap_or("-"),
            f.iommu_group.map_or("-".into(), |x| x.to_string()),
            if g.cc_capable { "yes" } else { "no" },
            match &g.cc_mode {
                Ok(m) => m.as_str().to_string(),
                Err(e) if f.kind == Kind::Gpu => format!("? ({e})"),
                Err(_) => "-".into(),
            }
        );
    }
    Ok(0)
}

fn cc_mode(config: &Config, a: &CcModeArgs) -> anyhow::Result<i32> {
    let host = host(config, a.host_root.as_ref());
    let all: Vec<_> = gpu::list(&host, &config.gpu.extra_cc_capable_ids)
        .into_iter()
        .filter(|g| g.function.kind == Kind::Gpu)
        .collect();
    let mut chosen = Vec::new();
    for b in &a.bdfs {
        match all.iter().find(|g| &g.function.bdf == b) {
            Some(g) => chosen.push(g.clone()),
            None => bail!("{b}: no NVIDIA GPU at this address (`cocoon gpu list` shows them)"),
        }
    }
    if a.bdfs.is_empty() {
        chosen = all;
    }
    let mut status = 0;
    for g in &chosen {
        let f = &g.function;
        let Some(m) = a.set else {
            match &g.cc_mode {
                Ok(m) => println!("{} {}", f.bdf, m.as_str()),
                Err(e) => {
                    eprintln!("cocoon: error: {e}");
                    status = 1;
                }
            }
            continue;
        };
        let mode = match m {
            Mode::On => CcMode::On,
            Mode::Off => CcMode::Off,
            Mode::Devtools => CcMode::Devtools,
        };
        let now = gpu::set_cc_mode(&host, f, mode, &config.gpu.set_cc_mode_command)?;
        if now != mode {
            bail!(
                "GPU {}: still in CC mode {} after `gpu.set_cc_mode_command`",
                f.bdf,
                now.as_str()
            );
        }
        println!("{} {}", f.bdf, now.as_str());
    }
    Ok(status)
}
