//! Command-line interface: one subcommand per role, each flag also read from a
//! `SWITCHYARD_…` environment variable (names in [`crate::env_names`]).

pub mod bench;
pub mod bench_files;
pub mod bench_flags;
pub mod deploy;
pub mod frontend;
pub mod health;
pub mod launch;
pub mod logging;
pub mod plane;
pub mod shutdown;
pub mod store;
pub mod up;
pub mod worker;

use clap::{Parser, Subcommand};

use crate::env_names as env;

#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about = "A router and worker fabric for LLM inference")]
pub struct Cli {
    /// Log filter, e.g. `info` or `switchyard_frontend=debug,info`.
    #[arg(long, env = env::LOG, default_value = "info", global = true)]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the OpenAI-compatible HTTP frontend.
    Frontend(frontend::FrontendArgs),
    /// Run a worker that serves one engine.
    Worker(worker::WorkerArgs),
    /// Run a whole local topology: a frontend and N simulated workers.
    Up(up::UpArgs),
    /// Benchmark a server or local topologies (sglang.bench_serving's flags and JSONL).
    Bench(Box<bench::BenchArgs>),
    /// Print the Docker Compose file or Kubernetes manifests of a topology.
    Deploy(deploy::DeployArgs),
    /// Probe a server on this host: exit 0 when healthy (container health checks).
    Health(health::HealthArgs),
}

/// Runs `command`; `log` is the `--log` filter, handed on to child processes.
pub async fn run(command: Command, log: &str) -> anyhow::Result<()> {
    match command {
        Command::Frontend(args) => frontend::run(args, shutdown::on_signal()).await,
        Command::Worker(args) => worker::run(args, shutdown::on_signal()).await,
        Command::Up(args) => up::run(args, shutdown::on_signal()).await,
        Command::Bench(args) => bench::run(*args, log, shutdown::on_signal()).await,
        Command::Health(args) => health::run(args).await,
        Command::Deploy(args) => deploy::run(&args),
    }
}
