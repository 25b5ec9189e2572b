//! `switchyard deploy compose|k8s`: prints the deployment files of a topology (see
//! [`crate::deploy`]).

use clap::{Args, Subcommand};

use super::plane::PlaneKind;
use super::store::StoreKind;
use crate::deploy::{DeployOptions, Deployment, compose, k8s};
use crate::env_names as env;

#[derive(Debug, Clone, Args)]
pub struct DeployArgs {
    #[command(subcommand)]
    pub target: DeployTarget,
}

#[derive(Debug, Clone, Subcommand)]
pub enum DeployTarget {
    /// A Docker Compose file (docker compose v2 and docker-compose 1.29).
    Compose(RenderArgs),
    /// Kubernetes manifests (Deployments, Services, etcd and NATS).
    K8s(RenderArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RenderArgs {
    /// The workers: `agg:N` (N aggregated workers), or `XpYd` (X prefill, Y decode).
    #[arg(long, env = env::DEPLOY_TOPOLOGY, default_value = "agg:2")]
    pub topology: String,

    /// Discovery store [default: file for compose (a shared volume), etcd for k8s].
    #[arg(long, env = env::STORE, value_enum)]
    pub store: Option<StoreKind>,

    /// How requests reach workers.
    #[arg(long, env = env::REQUEST_PLANE, value_enum, default_value_t = PlaneKind::Tcp)]
    pub request_plane: PlaneKind,

    /// GPUs per worker, pinned in order (0: no GPUs; the simulated engine needs none).
    #[arg(long, env = env::DEPLOY_GPUS_PER_WORKER, default_value_t = 0)]
    pub gpus_per_worker: u32,
}

impl RenderArgs {
    fn options(&self, default_store: StoreKind) -> DeployOptions {
        DeployOptions {
            topology: self.topology.clone(),
            store: self.store.unwrap_or(default_store),
            plane: self.request_plane,
            gpus_per_worker: self.gpus_per_worker,
        }
    }
}

/// The file's text for `target`.
pub fn render(target: &DeployTarget) -> anyhow::Result<String> {
    match target {
        DeployTarget::Compose(args) => {
            Ok(compose::render(&Deployment::new("compose", &args.options(StoreKind::File))?))
        }
        DeployTarget::K8s(args) => {
            k8s::render(&Deployment::new("k8s", &args.options(StoreKind::Etcd))?)
        }
    }
}

pub fn run(args: &DeployArgs) -> anyhow::Result<()> {
    print!("{}", render(&args.target)?);
    Ok(())
}
