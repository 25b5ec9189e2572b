//! [`publish_engine_events`]: feeds a worker's [`EventPublisher`] from its engine's KV-event
//! broadcast and load snapshots, until shutdown.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use switchyard_proto::worker_event::Event;
use switchyard_proto::{KvEvent, LoadReport};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{EventPublisher, SnapshotRequests};

/// How load reports are sent.
#[derive(Debug, Clone)]
pub struct LoadReporting {
    /// How often the engine's load is read; a changed load is published at once.
    pub poll_interval: Duration,
    /// An unchanged load is published again this often, so a router that connected late, or
    /// lost a report, learns it.
    pub refresh_interval: Duration,
}

impl Default for LoadReporting {
    fn default() -> Self {
        LoadReporting {
            poll_interval: Duration::from_millis(100),
            refresh_interval: Duration::from_secs(1),
        }
    }
}

/// What the pump reads from the engine.
pub struct EngineEvents<L, S> {
    /// The engine's KV events, when it has them.
    pub kv_events: Option<broadcast::Receiver<KvEvent>>,
    /// The engine's load, when it can tell.
    pub load: L,
    /// Asks the engine to put a KV snapshot in `kv_events`; false when it cannot.
    pub request_snapshot: S,
}

/// Publishes every KV event the engine has and its load through `publisher`, and passes
/// routers' snapshot requests on to the engine, until `shutdown`. A publish failure is logged
/// once per outage and the pump goes on: lost KV events show as a gap in `event_id`, and the
/// router that sees it asks for a snapshot.
pub async fn publish_engine_events<L, S>(
    publisher: Arc<dyn EventPublisher>,
    engine: EngineEvents<L, S>,
    reporting: LoadReporting,
    shutdown: CancellationToken,
) where
    L: Fn() -> Option<LoadReport> + Send,
    S: Fn() -> bool + Send,
{
    let EngineEvents { mut kv_events, load, request_snapshot } = engine;
    let mut snapshot_requests = if kv_events.is_some() {
        match publisher.snapshot_requests().await {
            Ok(requests) => Some(requests),
            Err(e) => {
                warn!(instance = publisher.instance_id(), error = %e,
                    "cannot take routers' KV snapshot requests; they will wait for new events");
                None
            }
        }
    } else {
        None
    };
    let mut poll = tokio::time::interval(reporting.poll_interval.max(Duration::from_millis(1)));
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_load: Option<(LoadReport, Instant)> = None;
    let mut failing = false;
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            Some(()) = next_request(&mut snapshot_requests) => {
                if !request_snapshot() {
                    snapshot_requests = None;
                }
                continue;
            }
            received = next_kv(&mut kv_events) => match received {
                Ok(event) => Event::Kv(event),
                Err(RecvError::Lagged(missed)) => {
                    warn!(missed, "KV events published too slowly; some were skipped");
                    continue;
                }
                Err(RecvError::Closed) => {
                    kv_events = None;
                    continue;
                }
            },
            _ = poll.tick() => {
                let Some(report) = load() else { continue };
                let due = match last_load {
                    Some((last, at)) => last != report || at.elapsed() >= reporting.refresh_interval,
                    None => true,
                };
                if !due {
                    continue;
                }
                last_load = Some((report, Instant::now()));
                Event::Load(report)
            }
        };
        match publisher.publish(event).await {
            Ok(()) if failing => {
                info!(instance = publisher.instance_id(), "publishing worker events again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                warn!(instance = publisher.instance_id(), error = %e, "cannot publish worker events");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// The next snapshot request, or never when there is no source; `None` when it ended.
async fn next_request(requests: &mut Option<SnapshotRequests>) -> Option<()> {
    match requests {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

/// The next KV event, or never when there is no source.
async fn next_kv(
    kv_events: &mut Option<broadcast::Receiver<KvEvent>>,
) -> Result<KvEvent, RecvError> {
    match kv_events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
