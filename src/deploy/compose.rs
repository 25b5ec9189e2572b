//! A Docker Compose file for one [`Deployment`], for docker-compose 1.29 and `docker compose`
//! v2 alike (no top-level `name`, long `depends_on` syntax). Knobs are compose variables with
//! defaults, so one file serves every environment: the image (`SWITCHYARD_IMAGE`), the host
//! address and port the frontend is published on (`SWITCHYARD_PUBLISH_HOST`,
//! `SWITCHYARD_HTTP_PORT`), the images of etcd and NATS (`ETCD_IMAGE`, `NATS_IMAGE`), the
//! engine, and the container runtime of GPU workers (`SWITCHYARD_GPU_RUNTIME`).

use std::fmt::Write;

use super::{
    Deployment, ETCD_IMAGE, ETCD_PORT, EnvValue, EnvVar, HF_HOME, HTTP_PORT, NATS_IMAGE, NATS_PORT,
    Role, STORE_DIR, SWITCHYARD_IMAGE,
};

/// Seconds `docker stop` waits before SIGKILL: the workers' default drain (30 s) and some.
const STOP_GRACE: &str = "40s";

pub fn render(d: &Deployment) -> String {
    let mut out = String::new();
    header(&mut out, d);
    out.push_str("services:\n");
    let (etcd, nats) = d.server_mode();
    if etcd {
        etcd_service(&mut out);
    }
    if nats {
        nats_service(&mut out);
    }
    frontend_service(&mut out, d);
    for worker in &d.workers {
        worker_service(&mut out, d, worker);
    }
    out.push_str("volumes:\n");
    if !etcd {
        out.push_str("  store: {}\n");
    }
    out.push_str("  hf-cache: {}\n");
    out
}

fn header(out: &mut String, d: &Deployment) {
    let roles = |role: Role| d.workers.iter().filter(|w| w.role == role).count();
    let workers = match (roles(Role::Prefill), roles(Role::Decode)) {
        (0, 0) => format!("{} aggregated worker(s)", d.workers.len()),
        (p, dd) => format!("{p} prefill and {dd} decode worker(s)"),
    };
    let mode = match d.server_mode() {
        (true, true) => "server mode: etcd for discovery, NATS for requests",
        (true, false) => "etcd for discovery, direct TCP for requests",
        (false, true) => "a file store on a shared volume, NATS for requests",
        (false, false) => "local mode: a file store on a shared volume, direct TCP for requests",
    };
    let _ = writeln!(out, "# Rendered by `{}`.", d.command);
    out.push_str("# Change the command, not this file: a test renders it again and compares.\n#\n");
    let _ = writeln!(out, "# A frontend and {workers}; {mode}.");
    out.push_str(
        "# Workers run the simulated engine unless SWITCHYARD_ENGINE says otherwise.\n\
         #   docker compose -f <this file> up -d      (or docker-compose)\n\
         #   curl localhost:8000/v1/models\n\
         #   docker compose -f <this file> down -v\n\
         # Variables (defaults): SWITCHYARD_IMAGE (switchyard:local), SWITCHYARD_PUBLISH_HOST\n\
         # (0.0.0.0), SWITCHYARD_HTTP_PORT (8000), SWITCHYARD_LEASE_TTL_SECS (10),\n\
         # SWITCHYARD_GPU_RUNTIME (runc; nvidia makes NVIDIA_VISIBLE_DEVICES pin the GPUs),\n\
         # SWITCHYARD_ULIMIT_MEMLOCK (-1: unlimited, for engines that pin memory),\n\
         # HF_TOKEN, ETCD_IMAGE and NATS_IMAGE (the official images).\n\n",
    );
}

fn etcd_service(out: &mut String) {
    let _ = writeln!(
        out,
        "  etcd:\n    image: \"${{ETCD_IMAGE:-{ETCD_IMAGE}}}\"\n    command:\n      \
         [\"/usr/local/bin/etcd\", \"--name\", \"etcd\", \"--data-dir\", \"/var/lib/etcd/data\",\n       \
         \"--listen-client-urls\", \"http://0.0.0.0:{ETCD_PORT}\", \"--advertise-client-urls\", \"http://etcd:{ETCD_PORT}\",\n       \
         \"--listen-peer-urls\", \"http://0.0.0.0:2380\", \"--initial-advertise-peer-urls\", \"http://etcd:2380\",\n       \
         \"--initial-cluster\", \"etcd=http://etcd:2380\"]\n    \
         healthcheck:\n      \
         test: [\"CMD\", \"/usr/local/bin/etcdctl\", \"--endpoints=http://127.0.0.1:{ETCD_PORT}\", \"endpoint\", \"health\"]\n      \
         interval: 2s\n      timeout: 3s\n      retries: 15\n    restart: on-failure\n"
    );
}

fn nats_service(out: &mut String) {
    let _ = writeln!(
        out,
        "  nats:\n    image: \"${{NATS_IMAGE:-{NATS_IMAGE}}}\"\n    \
         command: [\"--port\", \"{NATS_PORT}\", \"--http_port\", \"8222\"]\n    restart: on-failure\n"
    );
}

fn frontend_service(out: &mut String, d: &Deployment) {
    out.push_str("  frontend:\n");
    common(out, "frontend");
    env(out, &d.frontend_env());
    let _ = writeln!(
        out,
        "    ports:\n      - \"${{SWITCHYARD_PUBLISH_HOST:-0.0.0.0}}:${{SWITCHYARD_HTTP_PORT:-{HTTP_PORT}}}:{HTTP_PORT}\""
    );
    out.push_str("    volumes:\n");
    if !d.server_mode().0 {
        let _ = writeln!(out, "      - store:{STORE_DIR}");
    }
    let _ = writeln!(out, "      - hf-cache:{HF_HOME}");
    tail(out, d);
}

fn worker_service(out: &mut String, d: &Deployment, worker: &super::WorkerService) {
    let _ = writeln!(out, "  {}:", worker.name);
    common(out, "worker");
    env(out, &d.worker_env(worker));
    out.push_str("    volumes:\n");
    if !d.server_mode().0 {
        let _ = writeln!(out, "      - store:{STORE_DIR}");
    }
    let _ = writeln!(out, "      - hf-cache:{HF_HOME}");
    out.push_str(
        "    ipc: host\n    ulimits:\n      memlock: ${SWITCHYARD_ULIMIT_MEMLOCK:--1}\n      stack: 67108864\n",
    );
    if worker.gpus.is_some() {
        out.push_str("    runtime: \"${SWITCHYARD_GPU_RUNTIME:-runc}\"\n");
    }
    tail(out, d);
}

/// The image, command and health check of a Switchyard service.
fn common(out: &mut String, command: &str) {
    let _ = writeln!(
        out,
        "    image: \"${{SWITCHYARD_IMAGE:-{SWITCHYARD_IMAGE}}}\"\n    command: [\"{command}\"]\n    \
         healthcheck:\n      test: [\"CMD\", \"switchyard\", \"health\"]\n      \
         interval: 5s\n      timeout: 3s\n      retries: 3\n      start_period: 10s"
    );
}

/// Start order, restarts and the stop grace period.
fn tail(out: &mut String, d: &Deployment) {
    let (etcd, nats) = d.server_mode();
    if etcd || nats {
        out.push_str("    depends_on:\n");
        if etcd {
            out.push_str("      etcd:\n        condition: service_healthy\n");
        }
        if nats {
            out.push_str("      nats:\n        condition: service_started\n");
        }
    }
    let _ = writeln!(out, "    restart: on-failure\n    stop_grace_period: {STOP_GRACE}\n");
}

fn env(out: &mut String, vars: &[EnvVar]) {
    out.push_str("    environment:\n");
    for var in vars {
        let value = match &var.value {
            EnvValue::Fixed(v) => v.clone(),
            EnvValue::Var(default) => format!("${{{}:-{default}}}", var.name),
            EnvValue::Secret(from) => format!("${{{from}:-}}"),
        };
        let _ = writeln!(out, "      {}: {}", var.name, quote(&value));
    }
}

/// A YAML double-quoted scalar.
pub(super) fn quote(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}
