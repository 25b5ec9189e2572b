//! `switchyard worker --launch -- <engine command>`: the worker starts its engine server
//! itself, on a private port, forwards its logs, notices when it dies (and restarts it when
//! asked), and stops it on shutdown — one container, one worker, one engine.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::env_names as env;

/// How long a stopping engine gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// Longest pause between restarts of an engine that keeps dying.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A launched engine server.
pub struct Launched {
    /// Where it listens.
    pub url: String,
    /// Fired whenever the process exits.
    pub died: CancellationToken,
    /// Fired when the process exited and will not be restarted.
    pub gone: CancellationToken,
}

/// The engine command with `--host 127.0.0.1 --port P` added unless it names a port itself,
/// and the port it will listen on.
pub fn with_private_port(command: &[String]) -> anyhow::Result<(Vec<String>, u16)> {
    let given = command.iter().position(|a| a == "--port").and_then(|i| command.get(i + 1));
    if let Some(port) = given {
        let port = port.parse().with_context(|| format!("--port {port} in the engine command"))?;
        return Ok((command.to_vec(), port));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port for the engine")?
        .port();
    let mut command = command.to_vec();
    if !command.iter().any(|a| a == "--host") {
        command.extend(["--host".into(), "127.0.0.1".into()]);
    }
    command.extend(["--port".into(), port.to_string()]);
    Ok((command, port))
}

/// Starts `command` and supervises it in a task of `tasks` until `stop` (then it is stopped
/// with SIGTERM, and SIGKILL after a grace period).
pub fn launch(
    command: &[String],
    restart: bool,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> anyhow::Result<Launched> {
    let (command, port) = with_private_port(command)?;
    if command.is_empty() {
        anyhow::bail!("--launch needs the engine command after `--`");
    }
    let launched = Launched {
        url: format!("http://127.0.0.1:{port}"),
        died: CancellationToken::new(),
        gone: CancellationToken::new(),
    };
    let mut child = spawn(&command)?;
    info!(command = %command.join(" "), pid = child.id(), "engine launched");
    let (died, gone) = (launched.died.clone(), launched.gone.clone());
    let logs = tasks.clone();
    tasks.spawn(async move {
        let mut backoff = Duration::from_secs(1);
        loop {
            forward_logs(&mut child, &logs);
            tokio::select! {
                () = stop.cancelled() => {
                    terminate(&mut child).await;
                    return;
                }
                status = child.wait() => {
                    warn!(status = ?status.ok(), "the engine exited");
                    died.cancel();
                }
            }
            if !restart {
                gone.cancel();
                return;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            match spawn(&command) {
                Ok(next) => {
                    info!(pid = next.id(), "engine restarted");
                    child = next;
                }
                Err(e) => {
                    warn!(error = %e, "restarting the engine failed");
                    gone.cancel();
                    return;
                }
            }
        }
    });
    Ok(launched)
}

fn spawn(command: &[String]) -> anyhow::Result<Child> {
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so stopping it reaches the processes it starts too.
        .process_group(0)
        .kill_on_drop(true);
    stop_with_parent(&mut cmd);
    // The seed's deployments set HF_TOKEN; some engines read only the older name.
    if let Some(token) = env::compat(env::HF_TOKEN)
        && env::compat(env::HUGGING_FACE_HUB_TOKEN).is_none()
    {
        cmd.env(env::HUGGING_FACE_HUB_TOKEN, token);
    }
    cmd.spawn().with_context(|| format!("starting the engine `{}`", command[0]))
}

/// Has the kernel send the engine SIGTERM when this worker dies, however it dies: a worker
/// killed with SIGKILL runs no shutdown, and its engine would outlive it, holding the GPU.
/// (The signal follows the thread that forked; it is a runtime thread, which lives as long as
/// the worker.)
#[allow(unsafe_code)]
fn stop_with_parent(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: between fork and exec the closure only makes two system calls (prctl, getppid)
    // and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
            // The worker died before the prctl took effect: nobody will send the signal.
            if nix::unistd::getppid().as_raw() as u32 != parent {
                return Err(nix::errno::Errno::ESRCH.into());
            }
            Ok(())
        });
    }
}

/// Copies the engine's output lines into this process's log.
fn forward_logs(child: &mut Child, tasks: &TaskTracker) {
    fn forward(stream: impl AsyncRead + Unpin + Send + 'static, tasks: &TaskTracker) {
        tasks.spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                info!(target: "engine", "{line}");
            }
        });
    }
    if let Some(out) = child.stdout.take() {
        forward(out, tasks);
    }
    if let Some(err) = child.stderr.take() {
        forward(err, tasks);
    }
}

/// SIGTERM to the engine's process group, SIGKILL after the grace period.
async fn terminate(child: &mut Child) {
    let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else { return };
    let _ = kill(Pid::from_raw(-pid), Signal::SIGTERM);
    if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
        warn!("the engine did not stop within {}s; killing it", STOP_GRACE.as_secs());
        let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
        let _ = child.wait().await;
    }
    info!("engine stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_port_is_added_unless_the_command_names_one() {
        let cmd = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let (args, port) = with_private_port(&cmd("llama-server -m x.gguf")).expect("port");
        assert_eq!(args[3..5], ["--host".to_owned(), "127.0.0.1".to_owned()]);
        assert_eq!(args.last(), Some(&port.to_string()));
        let (args, port) = with_private_port(&cmd("vllm --port 9001")).expect("port");
        assert_eq!((args.len(), port), (3, 9001));
        assert!(with_private_port(&cmd("x --port nope")).is_err());
    }
}
