//! [`publish_engine_events`]: feeds a worker's [`EventPublisher`] from its engine's KV-event
//! broadcast and load snapshots, until shutdown.

use std::sync::Arc;
use std::time::Duration;

use switchyard_proto::worker_event::Event;
use switchyard_proto::{KvEvent, LoadReport};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::EventPublisher;

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

/// Publishes every KV event from `kv_events` (when the engine has them) and the load read from
/// `load` (when it returns one) through `publisher`, until `shutdown`. A publish failure is
/// logged once per outage and the pump goes on: lost KV events show as a gap in `event_id`.
pub async fn publish_engine_events(
    publisher: Arc<dyn EventPublisher>,
    mut kv_events: Option<broadcast::Receiver<KvEvent>>,
    load: impl Fn() -> Option<LoadReport> + Send,
    reporting: LoadReporting,
    shutdown: CancellationToken,
) {
    let mut poll = tokio::time::interval(reporting.poll_interval.max(Duration::from_millis(1)));
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_load: Option<(LoadReport, Instant)> = None;
    let mut failing = false;
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
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

/// The next KV event, or never when there is no source.
async fn next_kv(
    kv_events: &mut Option<broadcast::Receiver<KvEvent>>,
) -> Result<KvEvent, RecvError> {
    match kv_events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
