//! The scheduler actor: owns the scheduler, takes commands (new sequences, KV hand-offs) from
//! a channel, runs one step at a time for its simulated duration, frees held hand-off blocks
//! when their lease expires, and publishes KV events and load.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use switchyard_proto::{ErrorKind, KvEvent, LoadReport};
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::scheduler::{HeldKv, Scheduler};
use super::sequence::{SeqId, Sequence};
use super::timing::scaled;

/// How far behind its own schedule the simulated clock may fall before it gives up
/// catching up. Timers fire up to 1 ms late, so each step starts from the previous step's
/// ideal deadline rather than from when the timer fired, or the rounding would add up over
/// thousands of steps; a real stall (an overloaded host) is not made up for, though.
const MAX_CATCH_UP: Duration = Duration::from_millis(5);

/// What the engine asks of its scheduler.
pub(crate) enum Command {
    Add(Box<Sequence>),
    /// Cache handed-over blocks; replies with how many leading ones are cached.
    Import {
        hashes: Vec<u64>,
        done: oneshot::Sender<usize>,
    },
    /// Start the pull of held blocks.
    Export {
        transfer_id: String,
        reply: oneshot::Sender<Option<HeldKv>>,
    },
    /// Free held blocks (pulled).
    Release {
        transfer_id: String,
    },
}

pub(crate) struct Actor {
    pub scheduler: Scheduler,
    pub speedup_ratio: f64,
    /// How long held hand-off blocks wait for their pull.
    pub lease: Duration,
    pub commands: mpsc::UnboundedReceiver<Command>,
    pub events: broadcast::Sender<KvEvent>,
    /// Fires when a router asked for a snapshot of the cache.
    pub snapshot: Arc<Notify>,
    pub load: watch::Sender<LoadReport>,
    /// Preemptions since start, for [`super::MockerEngine::preemptions`].
    pub preemptions: Arc<AtomicU64>,
    pub shutdown: CancellationToken,
}

impl Actor {
    pub(crate) async fn run(mut self) {
        // One future per sequence, resolved when its abort token fires.
        let mut cancels: FuturesUnordered<BoxFuture<'static, SeqId>> = FuturesUnordered::new();
        let mut next_event_id = 0u64;
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        let mut in_flight = false;
        let mut last_deadline: Option<Instant> = None;
        // Held hand-offs, soonest expiry first (every lease is as long).
        let mut leases: VecDeque<(Instant, String)> = VecDeque::new();

        loop {
            if !in_flight && self.scheduler.has_work() {
                let step = self.scheduler.schedule();
                if step.prefill_tokens + step.decodes == 0 {
                    // Cannot happen with a validated config and requests; failing the
                    // first in line keeps the engine from spinning on it.
                    if let Some(id) = self.scheduler.stuck_sequence() {
                        tracing::error!(seq = id, "mocker could not schedule a request");
                        self.scheduler.fail(
                            id,
                            ErrorKind::Engine,
                            "the mocker engine could not schedule this request",
                        );
                    }
                    self.publish(&mut next_event_id);
                    continue;
                }
                let now = Instant::now();
                let base = match last_deadline {
                    Some(d) if now.saturating_duration_since(d) <= MAX_CATCH_UP => d,
                    _ => now,
                };
                sleep.as_mut().reset(base + scaled(step.ms, self.speedup_ratio));
                in_flight = true;
                self.publish(&mut next_event_id);
            }
            if !in_flight {
                // Idle: the next step starts whenever work arrives.
                last_deadline = None;
            }

            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                () = &mut sleep, if in_flight => {
                    self.scheduler.finish_step();
                    in_flight = false;
                    last_deadline = Some(sleep.deadline());
                    let expires = Instant::now() + self.lease;
                    leases.extend(self.scheduler.take_new_holds().into_iter().map(|id| (expires, id)));
                }
                () = tokio::time::sleep_until(leases.front().map_or_else(Instant::now, |l| l.0)), if !leases.is_empty() => {
                    let now = Instant::now();
                    while leases.front().is_some_and(|(at, _)| *at <= now) {
                        if let Some((_, id)) = leases.pop_front() {
                            self.scheduler.release_hold(&id);
                        }
                    }
                }
                Some(id) = cancels.next(), if !cancels.is_empty() => {
                    self.scheduler.cancel(id);
                }
                () = self.snapshot.notified() => self.scheduler.snapshot_kv(),
                command = self.commands.recv() => {
                    let Some(command) = command else {
                        // The engine was dropped.
                        break;
                    };
                    // Everything already sent joins the next step together, as an engine
                    // drains its input queue before scheduling.
                    let mut next = Some(command);
                    while let Some(command) = next {
                        self.handle(command, &mut cancels);
                        next = self.commands.try_recv().ok();
                    }
                }
            }
            self.publish(&mut next_event_id);
        }

        // Sequences sent but not yet taken get the same clear error as the rest.
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            if let Command::Add(seq) = command {
                self.scheduler.add(*seq);
            }
        }
        self.scheduler.fail_all(
            ErrorKind::ShuttingDown,
            "the mocker engine stopped before the request finished",
        );
        self.publish(&mut next_event_id);
        tracing::debug!(preemptions = self.scheduler.preemptions(), "mocker scheduler stopped");
    }

    fn handle(
        &mut self,
        command: Command,
        cancels: &mut FuturesUnordered<BoxFuture<'static, SeqId>>,
    ) {
        match command {
            Command::Add(seq) => {
                let seq = *seq;
                let id = seq.id;
                let cancelled = seq.abort.clone().cancelled_owned();
                cancels.push(cancelled.map(move |()| id).boxed());
                self.scheduler.add(seq);
            }
            Command::Import { hashes, done } => {
                let _ = done.send(self.scheduler.import(&hashes));
            }
            Command::Export { transfer_id, reply } => {
                let _ = reply.send(self.scheduler.export_hold(&transfer_id));
            }
            Command::Release { transfer_id } => self.scheduler.release_hold(&transfer_id),
        }
    }

    /// Sends the cache's new events, numbered, and the current load.
    fn publish(&mut self, next_event_id: &mut u64) {
        for data in self.scheduler.drain_events() {
            let event = KvEvent { event_id: *next_event_id, data: Some(data) };
            *next_event_id += 1;
            // No subscriber is fine: ids still advance, so a later one sees only new ids.
            let _ = self.events.send(event);
        }
        self.preemptions.store(self.scheduler.preemptions(), Ordering::Relaxed);
        let load = self.scheduler.load();
        self.load.send_if_modified(|current| {
            let changed = *current != load;
            if changed {
                *current = load;
            }
            changed
        });
    }
}
