//! `cocoon config check FILE` and `cocoon config show`.

use std::path::PathBuf;

use crate::node::NodeConfig;
use anyhow::Context;
use clap::Subcommand;

use super::Cli;

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Validate a configuration file and the files it names.
    Check {
        /// The file to check.
        file: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the effective configuration (defaults filled in) as TOML.
    Show,
}

pub(crate) fn run(cli: &Cli, cmd: &ConfigCommand) -> anyhow::Result<i32> {
    match cmd {
        ConfigCommand::Check { file, json } => {
            let result = NodeConfig::from_file(file).and_then(|c| {
                c.vm.check_files()
                    .and_then(|()| c.vm.check_kernel_image())
                    .map(|()| c)
            });
            match (result, json) {
                (Ok(_), false) => {
                    println!("{}: ok", file.display());
                    Ok(0)
                }
                (Ok(_), true) => {
                    println!("{}", serde_json::json!({"file": file, "ok": true}));
                    Ok(0)
                }
                (Err(e), false) => Err(e).with_context(|| {
                    format!("{} is not a valid Cocoon configuration", file.display())
                }),
                (Err(e), true) => {
                    println!(
                        "{}",
                        serde_json::json!({"file": file, "ok": false, "error": e.to_string()})
                    );
                    Ok(1)
                }
            }
        }
        ConfigCommand::Show => {
            let c = NodeConfig::load(cli.config.as_deref())?;
            println!("# effective configuration from {}", c.vm.origin);
            print!("{}", c.to_toml());
            Ok(0)
        }
    }
}
