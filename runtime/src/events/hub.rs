//! [`EventHub`]: the TCP-mode publisher. Events go into a broadcast channel, and each `Events`
//! call on the worker's gRPC service reads its own receiver of it.

use std::sync::Arc;

use async_trait::async_trait;
use futures::{Stream, stream};
use switchyard_proto::WorkerEvent;
use switchyard_proto::worker_event::Event;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{EventPublisher, SnapshotRequests};
use crate::Result;

/// Events a slow `Events` stream may fall behind by; past that it skips ahead, and the router
/// sees the gap in KV event ids.
pub const DEFAULT_HUB_CAPACITY: usize = 16_384;

/// A worker's events, fanned out to every router connected to it. Cheap to clone; clones
/// share the channel.
#[derive(Debug, Clone)]
pub struct EventHub {
    instance_id: Arc<str>,
    tx: broadcast::Sender<WorkerEvent>,
    /// Set by an `Events` call that asks for a snapshot; taken by the worker's pump. Requests
    /// made before the pump takes one collapse into one snapshot.
    snapshot: Arc<Notify>,
}

impl EventHub {
    pub fn new(instance_id: impl Into<String>) -> EventHub {
        EventHub::with_capacity(instance_id, DEFAULT_HUB_CAPACITY)
    }

    pub fn with_capacity(instance_id: impl Into<String>, capacity: usize) -> EventHub {
        let (tx, _) = broadcast::channel(capacity.max(1));
        EventHub { instance_id: Arc::from(instance_id.into()), tx, snapshot: Arc::default() }
    }

    /// Asks the worker for a KV snapshot (see [`EventPublisher::snapshot_requests`]).
    pub fn request_snapshot(&self) {
        self.snapshot.notify_one();
    }

    /// A receiver of the events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<WorkerEvent> {
        self.tx.subscribe()
    }

    /// Streams open on the hub: routers connected to this worker.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// The events from now on until `stop` fires. A receiver that fell behind skips ahead.
    pub(crate) fn stream(
        &self,
        stop: CancellationToken,
    ) -> impl Stream<Item = WorkerEvent> + use<> {
        let rx = self.subscribe();
        stream::unfold((rx, stop), |(mut rx, stop)| async move {
            loop {
                let received = tokio::select! {
                    () = stop.cancelled() => return None,
                    received = rx.recv() => received,
                };
                match received {
                    Ok(event) => return Some((event, (rx, stop))),
                    Err(RecvError::Lagged(missed)) => {
                        warn!(missed, "an events stream fell behind; events skipped");
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        })
    }
}

#[async_trait]
impl EventPublisher for EventHub {
    fn instance_id(&self) -> &str {
        &self.instance_id
    }

    async fn publish(&self, event: Event) -> Result<()> {
        let event = WorkerEvent { instance_id: self.instance_id.to_string(), event: Some(event) };
        // No receiver means no router is connected: the event is simply not needed.
        let _ = self.tx.send(event);
        Ok(())
    }

    async fn snapshot_requests(&self) -> Result<SnapshotRequests> {
        let requests = stream::unfold(self.snapshot.clone(), |notify| async move {
            notify.notified().await;
            Some(((), notify))
        });
        Ok(Box::pin(requests))
    }
}
