//! Deployment files rendered from a topology description: the same `--topology` the bench's
//! runner takes (`agg:4`; `1p1d`, `2p2d` for prefill/decode), plus the store, request plane
//! and GPUs, becomes a Docker Compose file or Kubernetes manifests. What every service runs
//! with (its environment) is decided here once, and each target only lays it out.

pub mod compose;
pub mod k8s;
#[cfg(test)]
mod tests;

use switchyard_bench::topology::{self, TopologyKind};

use crate::cli::plane::PlaneKind;
use crate::cli::store::StoreKind;

/// Where the frontend listens and workers serve inside their containers; the same in every
/// target, so that the image's health check and the docs hold everywhere.
pub const HTTP_PORT: u16 = 8000;
pub const WORKER_PORT: u16 = 9000;
pub const STATUS_PORT: u16 = 9090;
pub const STORE_DIR: &str = "/var/lib/switchyard/store";
pub const HF_HOME: &str = "/home/switchyard/.cache/huggingface";
pub const ETCD_PORT: u16 = 2379;
pub const NATS_PORT: u16 = 4222;

/// The default images of the servers of server mode: the projects' official ones.
pub const ETCD_IMAGE: &str = "quay.io/coreos/etcd:v3.5.17";
pub const NATS_IMAGE: &str = "nats:2.10";
pub const SWITCHYARD_IMAGE: &str = "switchyard:local";

/// What a worker does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Aggregated,
    Prefill,
    Decode,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Aggregated => "worker",
            Role::Prefill => "prefill",
            Role::Decode => "decode",
        }
    }
}

/// One worker service.
#[derive(Debug, Clone)]
pub struct WorkerService {
    /// Service name, also its host name and instance id: `worker-1`, `prefill-1`, …
    pub name: String,
    pub role: Role,
    /// GPUs it is pinned to (`NVIDIA_VISIBLE_DEVICES`), e.g. `0` or `2,3`; none without GPUs.
    pub gpus: Option<String>,
}

/// A whole deployment: one frontend and its workers, and etcd and NATS in server mode.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// The command that renders it, written at the top of every file.
    pub command: String,
    pub store: StoreKind,
    pub plane: PlaneKind,
    pub workers: Vec<WorkerService>,
}

/// How to render: the flags of `switchyard deploy compose|k8s`.
#[derive(Debug, Clone)]
pub struct DeployOptions {
    pub topology: String,
    pub store: StoreKind,
    pub plane: PlaneKind,
    pub gpus_per_worker: u32,
}

impl Deployment {
    pub fn new(target: &str, options: &DeployOptions) -> anyhow::Result<Deployment> {
        let store = match options.store {
            StoreKind::Memory => anyhow::bail!(
                "--store memory lives inside one process; a deployment uses file (one host, a \
                 shared volume) or etcd"
            ),
            other => other,
        };
        let groups = parse_topology(&options.topology)?;
        let mut workers = Vec::new();
        let mut next_gpu = 0u32;
        for (role, count) in groups {
            for i in 1..=count {
                let gpus = (options.gpus_per_worker > 0).then(|| {
                    let ids: Vec<String> = (next_gpu..next_gpu + options.gpus_per_worker)
                        .map(|g| g.to_string())
                        .collect();
                    next_gpu += options.gpus_per_worker;
                    ids.join(",")
                });
                workers.push(WorkerService { name: format!("{}-{i}", role.name()), role, gpus });
            }
        }
        let command = format!(
            "switchyard deploy {target} --topology {} --store {} --request-plane {} \
             --gpus-per-worker {}",
            options.topology,
            store_name(store),
            plane_name(options.plane),
            options.gpus_per_worker
        );
        Ok(Deployment { command, store, plane: options.plane, workers })
    }

    pub fn server_mode(&self) -> (bool, bool) {
        (self.store == StoreKind::Etcd, self.plane == PlaneKind::Nats)
    }

    /// Settings every Switchyard process of the deployment shares.
    fn common_env(&self) -> Vec<EnvVar> {
        let mut env = vec![
            EnvVar::var("SWITCHYARD_LOG", "info"),
            EnvVar::var("SWITCHYARD_NAMESPACE", "default"),
            EnvVar::var("SWITCHYARD_LEASE_TTL_SECS", "10"),
            EnvVar::fixed("SWITCHYARD_STORE", store_name(self.store)),
        ];
        match self.store {
            StoreKind::Etcd => {
                env.push(EnvVar::fixed("ETCD_ENDPOINTS", &format!("http://etcd:{ETCD_PORT}")))
            }
            _ => env.push(EnvVar::fixed("SWITCHYARD_STORE_DIR", STORE_DIR)),
        }
        env.push(EnvVar::fixed("SWITCHYARD_REQUEST_PLANE", plane_name(self.plane)));
        if self.plane == PlaneKind::Nats {
            env.push(EnvVar::fixed("NATS_SERVER", &format!("nats://nats:{NATS_PORT}")));
        }
        // The frontend loads the tokenizer a worker names: a model from the HF cache must be
        // in the frontend's cache too.
        env.push(EnvVar::fixed("HF_HOME", HF_HOME));
        env
    }

    /// The frontend's environment.
    pub fn frontend_env(&self) -> Vec<EnvVar> {
        let mut env = self.common_env();
        env.extend([
            EnvVar::fixed("SWITCHYARD_HTTP_HOST", "0.0.0.0"),
            EnvVar::fixed("SWITCHYARD_HTTP_PORT", &HTTP_PORT.to_string()),
            EnvVar::var("SWITCHYARD_ROUTER_MODE", "kv"),
        ]);
        env
    }

    /// One worker's environment.
    pub fn worker_env(&self, worker: &WorkerService) -> Vec<EnvVar> {
        let mut env = self.common_env();
        env.extend([
            EnvVar::var("SWITCHYARD_ENGINE", "mocker"),
            EnvVar::var("SWITCHYARD_MODEL_PATH", "builtin:tiny"),
            EnvVar::var("SWITCHYARD_MOCKER_SPEEDUP_RATIO", "1"),
            EnvVar::fixed("SWITCHYARD_WORKER_HOST", "0.0.0.0"),
            EnvVar::fixed("SWITCHYARD_WORKER_PORT", &WORKER_PORT.to_string()),
            EnvVar::fixed("SWITCHYARD_ADVERTISE_HOST", &worker.name),
            EnvVar::fixed("SWITCHYARD_INSTANCE_ID", &worker.name),
            EnvVar::fixed("SWITCHYARD_METRICS_PORT", &STATUS_PORT.to_string()),
            EnvVar::var("SWITCHYARD_DRAIN_TIMEOUT_SECS", "30"),
        ]);
        if worker.role != Role::Aggregated {
            env.push(EnvVar::fixed("SWITCHYARD_WORKER_ROLE", worker.role.name()));
        }
        env.push(EnvVar::secret("HUGGING_FACE_HUB_TOKEN", "HF_TOKEN"));
        if let Some(gpus) = &worker.gpus {
            env.push(EnvVar::fixed("NVIDIA_VISIBLE_DEVICES", gpus));
        }
        env
    }
}

/// One environment variable of a service and where its value comes from.
#[derive(Debug, Clone)]
pub struct EnvVar {
    pub name: &'static str,
    pub value: EnvValue,
}

#[derive(Debug, Clone)]
pub enum EnvValue {
    /// Decided by the topology.
    Fixed(String),
    /// A knob: compose reads the deployer's variable of the same name, with this default;
    /// Kubernetes manifests carry the default.
    Var(String),
    /// A secret passed through from the deployer's variable of this name (compose), or a
    /// Secret (Kubernetes).
    Secret(&'static str),
}

impl EnvVar {
    fn fixed(name: &'static str, value: &str) -> EnvVar {
        EnvVar { name, value: EnvValue::Fixed(value.to_owned()) }
    }

    fn var(name: &'static str, default: &str) -> EnvVar {
        EnvVar { name, value: EnvValue::Var(default.to_owned()) }
    }

    fn secret(name: &'static str, from: &'static str) -> EnvVar {
        EnvVar { name, value: EnvValue::Secret(from) }
    }
}

/// The worker groups of one `--topology` value: `agg:N` (the bench's syntax), or `XpYd`
/// (X prefill and Y decode workers).
fn parse_topology(value: &str) -> anyhow::Result<Vec<(Role, usize)>> {
    if let Some((p, d)) = value.strip_suffix('d').and_then(|v| v.split_once('p')) {
        let count = |n: &str| n.parse::<usize>().ok().filter(|n| *n > 0);
        return match (count(p), count(d)) {
            (Some(p), Some(d)) => Ok(vec![(Role::Prefill, p), (Role::Decode, d)]),
            _ => anyhow::bail!("--topology {value:?}: XpYd needs two counts >= 1, e.g. 2p2d"),
        };
    }
    let specs = topology::parse_list(value)?;
    let [spec] = specs.as_slice() else {
        anyhow::bail!("--topology {value:?}: a deployment is one topology, not a list");
    };
    Ok(match spec.kind {
        TopologyKind::Aggregated => vec![(Role::Aggregated, spec.workers)],
    })
}

pub fn store_name(store: StoreKind) -> &'static str {
    match store {
        StoreKind::File => "file",
        StoreKind::Etcd => "etcd",
        StoreKind::Memory => "memory",
    }
}

pub fn plane_name(plane: PlaneKind) -> &'static str {
    match plane {
        PlaneKind::Tcp => "tcp",
        PlaneKind::Nats => "nats",
    }
}
