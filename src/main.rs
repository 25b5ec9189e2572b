//! The `switchyard` binary: parses the command line and hands over to the library crates.

mod cli;
mod deploy;
mod env_names;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    cli::logging::init(&cli.log);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(cli::run(cli.command))
}
