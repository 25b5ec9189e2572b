//! One compose deployment under test: the images (built once per test run, offline, from the
//! binary this run built), `compose up` under a project name of its own, the docker commands
//! that kill, cut off and restart its containers, and `compose down`.
//!
//! Everything these tests make is named `sy11-…` (images, projects, and so containers,
//! networks and volumes), and only that is ever removed.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{self, repo_root};

/// Prefix of everything the container tests create.
pub const PREFIX: &str = "sy11";
/// Lease TTL the deployments run with: short, so that losses show quickly.
pub const LEASE_TTL: Duration = Duration::from_secs(3);
/// Longest wait for `compose up` (images present) and for a deployment to become healthy.
const UP_LIMIT: Duration = Duration::from_secs(120);
/// Longest wait for one docker command that stops or starts containers.
const DOCKER_LIMIT: Duration = Duration::from_secs(60);

/// Runs `program args` with a time limit; the output, or a panic naming the command.
pub fn run(program: &str, args: &[&str], envs: &[(&str, String)], limit: Duration) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.arg("--kill-after=5").arg(limit.as_secs().to_string()).arg(program).args(args);
    cmd.envs(envs.iter().map(|(k, v)| (k, v)));
    let out = cmd.output().unwrap_or_else(|e| panic!("{program}: {e}"));
    if out.status.code() == Some(124) {
        panic!("{program} {} took longer than {limit:?}", args.join(" "));
    }
    out
}

/// Like [`run`], and the command must succeed; its stdout.
pub fn ok(program: &str, args: &[&str], envs: &[(&str, String)], limit: Duration) -> String {
    let out = run(program, args, envs, limit);
    assert!(
        out.status.success(),
        "{program} {} failed: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn docker(args: &[&str]) -> String {
    ok("docker", args, &[], DOCKER_LIMIT)
}

/// `docker compose` (v2) where the plugin is installed, else `docker-compose` (1.29).
pub fn compose_program() -> &'static [&'static str] {
    static PROGRAM: OnceLock<&'static [&'static str]> = OnceLock::new();
    PROGRAM.get_or_init(|| {
        let v2 = Command::new("docker").args(["compose", "version"]).output();
        if v2.is_ok_and(|o| o.status.success()) {
            &["docker", "compose"]
        } else {
            &["docker-compose"]
        }
    })
}

/// The images of this test run: `(switchyard, etcd, nats)`.
pub fn images() -> &'static (String, String, String) {
    static IMAGES: OnceLock<(String, String, String)> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let out = run("docker", &["info", "--format", "{{.ServerVersion}}"], &[], DOCKER_LIMIT);
        assert!(
            out.status.success(),
            "the container tests need a Docker engine (and docker-compose): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let binary = support::bin();
        let sum = ok("sha256sum", &[binary], &[], DOCKER_LIMIT);
        let tag = format!("{PREFIX}-switchyard:{}", &sum[..12]);
        let (etcd, nats) = (format!("{PREFIX}-etcd:local"), format!("{PREFIX}-nats:local"));
        // Test processes run in parallel: one builds, the others wait on the lock and find
        // the images there. Older test images of this prefix go.
        let script = format!(
            "set -e
             if ! docker image inspect {tag} {etcd} {nats} >/dev/null 2>&1; then
               bash deploy/build-image.sh --binary {binary} --tag {tag} \
                 --base-tag {PREFIX}-base:bookworm --service-images {PREFIX} \
                 --label io.switchyard.test={PREFIX}
             fi
             docker image ls --format '{{{{.Repository}}}}:{{{{.Tag}}}}' {PREFIX}-switchyard \
               | grep -vx '{tag}' | xargs -r docker rmi >/dev/null || true"
        );
        let lock = std::env::temp_dir().join(format!("{PREFIX}-images.lock"));
        let started = Instant::now();
        let out = Command::new("timeout")
            .args(["600", "flock", &lock.display().to_string(), "bash", "-c", &script])
            .current_dir(repo_root())
            .output()
            .expect("building the images");
        assert!(
            out.status.success(),
            "building the test images failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("images ready in {:.1} s: {tag}", started.elapsed().as_secs_f64());
        (tag, etcd, nats)
    })
}

/// A compose project started from one of `deploy/compose/*.yaml`.
pub struct Deployment {
    pub project: String,
    file: PathBuf,
    env: Vec<(&'static str, String)>,
    pub base_url: String,
    down: bool,
}

impl Deployment {
    /// `compose up -d` of `deploy/compose/<name>.yaml`, then waits until the frontend's
    /// `/health` lists `workers` instances.
    pub async fn up(name: &str, workers: usize) -> Deployment {
        let (image, etcd, nats) = images().clone();
        let port = support::free_port();
        let project = format!("{PREFIX}-{name}-{}", std::process::id());
        let env = vec![
            ("SWITCHYARD_IMAGE", image),
            ("ETCD_IMAGE", etcd),
            ("NATS_IMAGE", nats),
            ("SWITCHYARD_PUBLISH_HOST", "127.0.0.1".to_owned()),
            ("SWITCHYARD_HTTP_PORT", port.to_string()),
            ("SWITCHYARD_LEASE_TTL_SECS", LEASE_TTL.as_secs().to_string()),
            ("SWITCHYARD_MOCKER_SPEEDUP_RATIO", "20".to_owned()),
            ("SWITCHYARD_DRAIN_TIMEOUT_SECS", "5".to_owned()),
            // Where the engine may not raise it to unlimited (the engine's own limit here).
            ("SWITCHYARD_ULIMIT_MEMLOCK", "65536".to_owned()),
            // Requests spread evenly, so a worker that is back is seen taking its share.
            ("SWITCHYARD_ROUTER_MODE", "round-robin".to_owned()),
        ];
        let file = repo_root().join("deploy/compose").join(format!("{name}.yaml"));
        let deployment = Deployment {
            project,
            file,
            env,
            base_url: format!("http://127.0.0.1:{port}"),
            down: false,
        };
        deployment.compose(&["up", "-d", "--no-build"], UP_LIMIT);
        let started = Instant::now();
        deployment.wait_instances(workers, UP_LIMIT).await;
        eprintln!(
            "{name}: {workers} workers serving {:.1} s after up",
            started.elapsed().as_secs_f64()
        );
        deployment
    }

    pub fn compose(&self, args: &[&str], limit: Duration) -> String {
        ok(compose_program()[0], &self.compose_args(args), &self.env, limit)
    }

    /// The container of compose service `service`.
    pub fn container(&self, service: &str) -> String {
        let id = self.compose(&["ps", "-q", service], DOCKER_LIMIT);
        let id = id.trim();
        assert!(!id.is_empty(), "{}: no container for {service}", self.project);
        id.to_owned()
    }

    pub fn network(&self) -> String {
        format!("{}_default", self.project)
    }

    pub fn kill(&self, service: &str) {
        docker(&["kill", &self.container(service)]);
    }

    pub fn start(&self, service: &str) {
        docker(&["start", &self.container(service)]);
    }

    /// `docker stop` (SIGTERM, then SIGKILL after `grace`); the container's exit code.
    pub fn stop(&self, service: &str, grace: Duration) -> i64 {
        let id = self.container(service);
        docker(&["stop", "-t", &grace.as_secs().to_string(), &id]);
        docker(&["inspect", "-f", "{{.State.ExitCode}}", &id]).trim().parse().unwrap()
    }

    pub fn restart(&self, service: &str) {
        docker(&["restart", &self.container(service)]);
    }

    /// Cuts `service` off the deployment's network (a partition), or joins it again with its
    /// name as an alias, as compose had it.
    pub fn disconnect(&self, service: &str) {
        docker(&["network", "disconnect", &self.network(), &self.container(service)]);
    }

    pub fn reconnect(&self, service: &str) {
        let id = self.container(service);
        docker(&["network", "connect", "--alias", service, &self.network(), &id]);
    }

    /// Runs `switchyard health` inside `service`: whether it exits 0.
    pub fn healthy_inside(&self, service: &str) -> bool {
        let out = run(
            "docker",
            &["exec", &self.container(service), "switchyard", "health"],
            &[],
            DOCKER_LIMIT,
        );
        out.status.success()
    }

    /// The frontend's instance count for the deployment's one model, `None` when it does
    /// not answer.
    pub async fn instance_count(&self) -> Option<usize> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().ok()?;
        let resp = http.get(format!("{}/health", self.base_url)).send().await.ok()?;
        let body: Value = resp.json().await.ok()?;
        Some(support::health_instances(&body).values().sum())
    }

    /// Waits until `/health` lists exactly `n` instances; how long that took.
    pub async fn wait_instances(&self, n: usize, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let count = self.instance_count().await;
            if count == Some(n) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < limit,
                "{}: /health lists {count:?} instances, not {n}, after {limit:?}\n{}",
                self.project,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Requests each instance took, from the frontend's metrics.
    pub async fn requests_per_instance(&self) -> std::collections::BTreeMap<String, u64> {
        let http = support::client();
        let text = http
            .get(format!("{}/metrics", self.base_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with("switchyard_frontend_instance_requests_total{"))
            .filter_map(|l| {
                let instance = l.split("instance=\"").nth(1)?.split('"').next()?;
                let value = l.rsplit(' ').next()?.parse::<f64>().ok()?;
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                Some((instance.to_owned(), value as u64))
            })
            .collect()
    }

    pub fn logs(&self) -> String {
        let out = run(
            compose_program()[0],
            &self.compose_args(&["logs", "--tail", "40"]),
            &self.env,
            DOCKER_LIMIT,
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn compose_args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all: Vec<&str> = compose_program()[1..].to_vec();
        all.extend(["-p", self.project.as_str(), "-f", self.file.to_str().unwrap()]);
        all.extend_from_slice(args);
        all
    }

    /// `compose down -v`, then asserts that no container, network or volume of the project
    /// is left.
    pub fn down(mut self) {
        self.down = true;
        self.compose(&["down", "-v", "--remove-orphans", "-t", "10"], DOCKER_LIMIT * 2);
        let label = format!("label=com.docker.compose.project={}", self.project);
        let left = [
            docker(&["ps", "-aq", "--filter", &label]),
            docker(&["network", "ls", "-q", "--filter", &label]),
            docker(&["volume", "ls", "-q", "--filter", &label]),
        ];
        assert!(
            left.iter().all(|l| l.trim().is_empty()),
            "{}: left behind: {left:?}",
            self.project
        );
    }
}

impl Drop for Deployment {
    /// A failed test still removes its project.
    fn drop(&mut self) {
        if !self.down {
            let args = self.compose_args(&["down", "-v", "--remove-orphans", "-t", "2"]);
            let _ = run(compose_program()[0], &args, &self.env, DOCKER_LIMIT * 2);
        }
    }
}
