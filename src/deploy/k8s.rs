//! Kubernetes manifests for one [`Deployment`]: the frontend as a Deployment and a Service,
//! the workers as one Deployment per role (each pod advertises its own IP and names itself
//! after the pod), etcd and NATS as minimal single-replica servers (replace them with your
//! cluster's own by editing `ETCD_ENDPOINTS` / `NATS_SERVER`), probes on the frontend's and
//! the workers' status ports, and GPUs as `nvidia.com/gpu` resources.

use std::fmt::Write;

use super::compose::quote;
use super::{
    Deployment, ETCD_IMAGE, ETCD_PORT, EnvValue, EnvVar, HF_HOME, HTTP_PORT, NATS_IMAGE, NATS_PORT,
    Role, STATUS_PORT, SWITCHYARD_IMAGE, WORKER_PORT, WorkerService,
};
use crate::cli::store::StoreKind;

/// The Secret that may hold a Hugging Face token (key `token`), for gated models.
const HF_SECRET: &str = "hf-token";
/// Kubernetes' grace period before SIGKILL: the workers' default drain (30 s) and some.
const GRACE_SECS: u32 = 40;

pub fn render(d: &Deployment) -> anyhow::Result<String> {
    if d.store != StoreKind::Etcd {
        anyhow::bail!(
            "pods on several nodes share no directory: Kubernetes deployments use --store etcd"
        );
    }
    let mut out = String::new();
    let _ = writeln!(out, "# Rendered by `{}`.", d.command);
    out.push_str(
        "# Change the command, not this file: a test renders it again and compares.\n\
         # Not yet run on a cluster: checked for consistency with the binary's flags only.\n\
         #   kubectl apply -f <this file>\n",
    );
    etcd(&mut out);
    if d.server_mode().1 {
        nats(&mut out);
    }
    frontend(&mut out, d);
    for role in [Role::Aggregated, Role::Prefill, Role::Decode] {
        let group: Vec<&WorkerService> = d.workers.iter().filter(|w| w.role == role).collect();
        if let Some(first) = group.first() {
            workers(&mut out, d, first, group.len());
        }
    }
    Ok(out)
}

fn etcd(out: &mut String) {
    let _ = write!(
        out,
        "---
apiVersion: v1
kind: Service
metadata:
  name: etcd
  labels: {{app.kubernetes.io/name: etcd, app.kubernetes.io/part-of: switchyard}}
spec:
  clusterIP: None
  selector: {{app.kubernetes.io/name: etcd}}
  ports:
    - {{name: client, port: {ETCD_PORT}}}
    - {{name: peer, port: 2380}}
"
    );
    workload_head(out, "StatefulSet", "etcd", 1, "  serviceName: etcd\n", "", "etcd", ETCD_IMAGE);
    let _ = write!(
        out,
        "          command:
            [/usr/local/bin/etcd, --name, etcd-0, --data-dir, /var/lib/etcd/data,
             --listen-client-urls, \"http://0.0.0.0:{ETCD_PORT}\", --advertise-client-urls, \"http://etcd:{ETCD_PORT}\",
             --listen-peer-urls, \"http://0.0.0.0:2380\", --initial-advertise-peer-urls, \"http://etcd-0.etcd:2380\",
             --initial-cluster, \"etcd-0=http://etcd-0.etcd:2380\"]
          ports:
            - {{name: client, containerPort: {ETCD_PORT}}}
            - {{name: peer, containerPort: 2380}}
          readinessProbe:
            exec:
              command: [/usr/local/bin/etcdctl, \"--endpoints=http://127.0.0.1:{ETCD_PORT}\", endpoint, health]
            periodSeconds: 5
          volumeMounts:
            - {{name: data, mountPath: /var/lib/etcd}}
      volumes:
        - {{name: data, emptyDir: {{}}}}
"
    );
}

fn nats(out: &mut String) {
    let _ = write!(
        out,
        "---
apiVersion: v1
kind: Service
metadata:
  name: nats
  labels: {{app.kubernetes.io/name: nats, app.kubernetes.io/part-of: switchyard}}
spec:
  selector: {{app.kubernetes.io/name: nats}}
  ports:
    - {{name: client, port: {NATS_PORT}}}
"
    );
    workload_head(out, "Deployment", "nats", 1, "", "", "nats", NATS_IMAGE);
    let _ = write!(
        out,
        "          args: [--port, \"{NATS_PORT}\", --http_port, \"8222\"]
          ports:
            - {{name: client, containerPort: {NATS_PORT}}}
          readinessProbe:
            httpGet: {{path: /healthz, port: 8222}}
            periodSeconds: 5
"
    );
}

fn frontend(out: &mut String, d: &Deployment) {
    let name = "switchyard-frontend";
    let _ = write!(
        out,
        "---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  labels: {{app.kubernetes.io/name: {name}, app.kubernetes.io/part-of: switchyard}}
spec:
  selector: {{app.kubernetes.io/name: {name}}}
  ports:
    - {{name: http, port: {HTTP_PORT}, targetPort: http}}
"
    );
    pod_head(out, name, 1);
    let _ = write!(
        out,
        "          args: [frontend]
          ports:
            - {{name: http, containerPort: {HTTP_PORT}}}
"
    );
    env(out, &d.frontend_env());
    probes(out, "http");
    hf_cache(out);
}

fn workers(out: &mut String, d: &Deployment, first: &WorkerService, replicas: usize) {
    let name = match first.role {
        Role::Aggregated => "switchyard-worker",
        Role::Prefill => "switchyard-prefill",
        Role::Decode => "switchyard-decode",
    };
    pod_head(out, name, replicas);
    let _ = write!(
        out,
        "          args: [worker]
          ports:
            - {{name: request-plane, containerPort: {WORKER_PORT}}}
            - {{name: status, containerPort: {STATUS_PORT}}}
"
    );
    // Per pod: its own address and name instead of the compose service name; GPUs are the
    // scheduler's to pin, through the resource below.
    let vars: Vec<EnvVar> = d
        .worker_env(first)
        .into_iter()
        .filter(|v| {
            !matches!(v.name, "SWITCHYARD_ADVERTISE_HOST" | "SWITCHYARD_INSTANCE_ID")
                && v.name != "NVIDIA_VISIBLE_DEVICES"
        })
        .collect();
    out.push_str(
        "          env:
            - name: SWITCHYARD_ADVERTISE_HOST
              valueFrom: {fieldRef: {fieldPath: status.podIP}}
            - name: SWITCHYARD_INSTANCE_ID
              valueFrom: {fieldRef: {fieldPath: metadata.name}}
",
    );
    env_entries(out, &vars);
    probes(out, "status");
    let gpus = first.gpus.as_ref().map(|g| g.split(',').count());
    if let Some(gpus) = gpus {
        let _ =
            write!(out, "          resources:\n            limits: {{nvidia.com/gpu: {gpus}}}\n");
    }
    hf_cache(out);
}

fn pod_head(out: &mut String, name: &str, replicas: usize) {
    let pod = format!(
        "      terminationGracePeriodSeconds: {GRACE_SECS}\n      securityContext: \
         {{runAsNonRoot: true, runAsUser: 10001, runAsGroup: 10001, fsGroup: 10001}}\n"
    );
    workload_head(out, "Deployment", name, replicas, "", &pod, "switchyard", SWITCHYARD_IMAGE);
}

/// A Deployment or StatefulSet up to its one container's image; `spec` and `pod` are extra
/// lines of the workload's and the pod's spec.
#[allow(clippy::too_many_arguments)]
fn workload_head(
    out: &mut String,
    kind: &str,
    name: &str,
    replicas: usize,
    spec: &str,
    pod: &str,
    container: &str,
    image: &str,
) {
    let _ = write!(
        out,
        "---
apiVersion: apps/v1
kind: {kind}
metadata:
  name: {name}
  labels: {{app.kubernetes.io/name: {name}, app.kubernetes.io/part-of: switchyard}}
spec:
{spec}  replicas: {replicas}
  selector:
    matchLabels: {{app.kubernetes.io/name: {name}}}
  template:
    metadata:
      labels: {{app.kubernetes.io/name: {name}, app.kubernetes.io/part-of: switchyard}}
    spec:
{pod}      containers:
        - name: {container}
          image: {image}
"
    );
}

/// The Hugging Face cache (an emptyDir: use a PersistentVolumeClaim to keep downloads), the
/// last part of a pod.
fn hf_cache(out: &mut String) {
    let _ = write!(
        out,
        "          volumeMounts:
            - {{name: hf-cache, mountPath: {HF_HOME}}}
      volumes:
        - {{name: hf-cache, emptyDir: {{}}}}
"
    );
}

fn probes(out: &mut String, port: &str) {
    let _ = write!(
        out,
        "          livenessProbe:
            httpGet: {{path: /live, port: {port}}}
            periodSeconds: 10
          readinessProbe:
            httpGet: {{path: /health, port: {port}}}
            periodSeconds: 5
"
    );
}

fn env(out: &mut String, vars: &[EnvVar]) {
    out.push_str("          env:\n");
    env_entries(out, vars);
}

fn env_entries(out: &mut String, vars: &[EnvVar]) {
    for var in vars {
        match &var.value {
            EnvValue::Fixed(v) | EnvValue::Var(v) => {
                let _ = writeln!(out, "            - {{name: {}, value: {}}}", var.name, quote(v));
            }
            EnvValue::Secret(_) => {
                let _ = writeln!(
                    out,
                    "            - name: {}\n              valueFrom: {{secretKeyRef: {{name: {HF_SECRET}, key: token, optional: true}}}}",
                    var.name
                );
            }
        }
    }
}
