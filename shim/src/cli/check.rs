//! `cocoon check`: the host report (human or `--json`), exit status by
//! severity (0 ok, 1 warnings, 2 errors).

use std::path::PathBuf;

use clap::Args;
use cocoon_vmm::check::{self, Severity};
use cocoon_vmm::host::HostRoots;

use super::Cli;

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// Print the findings as JSON.
    #[arg(long)]
    json: bool,
    /// Read /proc, /sys and /dev under this directory (a recorded host).
    #[arg(long, hide = true, value_name = "DIR")]
    host_root: Option<PathBuf>,
}

pub(crate) fn run(cli: &Cli, args: &CheckArgs) -> anyhow::Result<i32> {
    let config = crate::node::NodeConfig::load(cli.config.as_deref())?.vm;
    let host = args
        .host_root
        .as_deref()
        .map_or_else(HostRoots::default, HostRoots::under);
    let vm_types = match &args.host_root {
        Some(_) => check::recorded_vm_types(&host),
        None => check::kvm_vm_types(),
    };
    let findings = check::run(&config, &host, &cocoon_vmm::tee::host_cpuid, vm_types);
    let status = check::exit_status(&findings);
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "config": config.origin, "findings": findings, "exit_status": status })
        );
    } else {
        println!("cocoon check ({})", config.origin);
        for f in &findings {
            let tag = match f.severity {
                Severity::Ok => "ok   ",
                Severity::Info => "info ",
                Severity::Warn => "WARN ",
                Severity::Error => "ERROR",
            };
            println!("{tag} {:<13} {}", f.check, f.detail);
        }
    }
    Ok(status)
}
