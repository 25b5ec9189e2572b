//! The event plane: KV events and load reports from workers to routers, behind one pair of
//! traits so a router consumes either transport the same way.
//!
//! - A worker publishes through an [`EventPublisher`] bound to its instance id:
//!   [`nats::NatsEventPublisher`] (NATS mode: one subject per instance) or [`hub::EventHub`]
//!   (TCP mode: served as the server-streaming `Events` call of the worker's gRPC service, see
//!   [`crate::plane::tcp::serve_with_events`]). [`pump::publish_engine_events`] feeds one from an
//!   engine's KV-event broadcast and load snapshots.
//! - A router reads an [`EventStream`] of every worker of a namespace from an
//!   [`EventSubscriber`]: [`nats::NatsEventSubscriber`] (a wildcard subscription) or
//!   [`tcp::TcpEventSubscriber`] (one `Events` call per instance found in discovery, reopened
//!   while the instance lives).
//!
//! Delivery is best effort on both: events published while a router is cut off are lost. A KV
//! event's `event_id` grows by one per event of a worker, so a router sees a gap at the next
//! event and resynchronises that worker; load reports are state, the latest one wins.

pub mod hub;
pub mod nats;
pub mod pump;
pub mod tcp;

use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;
use switchyard_proto::WorkerEvent;
use switchyard_proto::worker_event::Event;

use crate::Result;

pub use hub::EventHub;
pub use nats::{NatsEventPublisher, NatsEventSubscriber};
pub use pump::{EngineEvents, LoadReporting, publish_engine_events};
pub use tcp::{TcpEventConfig, TcpEventSubscriber};

/// Events of the workers of one namespace, each stamped with its worker's instance id. It ends
/// when its source stops (NATS client closed, discovery watch stopped); dropping it stops the
/// work behind it.
pub type EventStream = Pin<Box<dyn Stream<Item = WorkerEvent> + Send>>;

/// Routers' requests for a worker's KV snapshot; each item is one request.
pub type SnapshotRequests = Pin<Box<dyn Stream<Item = ()> + Send>>;

/// A worker's side: publishes that worker's events.
#[async_trait]
pub trait EventPublisher: Send + Sync + 'static {
    /// The instance whose events this publisher sends; stamped on every event.
    fn instance_id(&self) -> &str;

    /// Publishes one event. Best effort: with no router listening it is dropped; an error means
    /// the transport could not take it (e.g. NATS away for longer than a publish may wait).
    async fn publish(&self, event: Event) -> Result<()>;

    /// Routers' requests for a KV snapshot of this worker, from now on; the worker answers
    /// each by publishing one (see [`publish_engine_events`]).
    async fn snapshot_requests(&self) -> Result<SnapshotRequests>;
}

/// A router's side: the events of every worker of a namespace.
#[async_trait]
pub trait EventSubscriber: Send + Sync + 'static {
    /// Events from now on (those published before are not replayed). Once this returns, the
    /// subscription is in place for workers already known.
    async fn subscribe(&self) -> Result<EventStream>;

    /// Asks worker `instance_id` for a snapshot of its cached KV blocks, which arrives on the
    /// event streams as a `KvSnapshot` event. Best effort, like the events themselves.
    async fn request_snapshot(&self, instance_id: &str) -> Result<()>;
}
