//! The root cancellation token: fired by SIGINT (Ctrl-C) or SIGTERM.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// A token cancelled on the first SIGINT or SIGTERM. The watching task lives as long as the
/// runtime; it is the one task with no other owner, since it is what stops all the others.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let fire = token.clone();
    tokio::spawn(async move {
        let (mut term, mut int) =
            match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
                (Ok(term), Ok(int)) => (term, int),
                (Err(e), _) | (_, Err(e)) => {
                    warn!(error = %e, "cannot watch signals; stop with SIGKILL");
                    return;
                }
            };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!("{name} received; shutting down");
        fire.cancel();
    });
    token
}

/// Cancels `token` once `parent` is no longer this process's parent (it exited or was
/// killed, and the process was re-parented). Polls: there is no portable notification.
pub fn with_parent(parent: i32, token: CancellationToken) {
    let parent = nix::unistd::Pid::from_raw(parent);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                _ = tick.tick() => {}
            }
            if nix::unistd::getppid() != parent {
                warn!("parent process is gone; shutting down");
                token.cancel();
                return;
            }
        }
    });
}
