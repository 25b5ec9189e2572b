//! The worker service: serves one engine over the request plane and registers it in
//! discovery; on shutdown it deregisters first, then drains in-flight requests.
//!
//! Prefill/decode split: a prefill worker also serves `KvTransfer` on its own TCP listener
//! (in NATS mode too) and writes where in its record and in every KV handle it returns; a
//! worker given a request with a handle pulls the KV and imports it into its engine first,
//! and when that fails sends the request on without the handle (the engine then prefills
//! itself: the client gets the same tokens).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use switchyard_proto::{
    ErrorKind, FinishReason, GenerateChunk, GenerateRequest, GpuInfo, InstanceRecord, Role,
    WorkerError,
};
use switchyard_runtime::events::{
    EngineEvents, EventHub, EventPublisher, LoadReporting, NatsEventPublisher,
    publish_engine_events,
};
use switchyard_runtime::plane::nats::{self, NatsListener, NatsServerConfig};
use switchyard_runtime::plane::tcp::{self, TcpServerConfig};
use switchyard_runtime::plane::tls::PlaneTls;
use switchyard_runtime::{ChunkStream, Discovery, GenerateHandler, Registration};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::kv_transfer::{self, KvPuller};
use crate::metrics::{TransferFailure, WorkerMetrics};
use crate::{Engine, Error, Result, WorkerStatus};

/// How a worker presents itself and how long it waits on the way out.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Unique id in the namespace; generated when `None`.
    pub instance_id: Option<String>,
    /// Host written into the instance record; the listener's IP when `None`. Set it when the
    /// listener binds 0.0.0.0 (containers) so routers get a reachable address.
    pub advertise_host: Option<String>,
    pub role: Role,
    /// Lease TTL: how long a dead worker stays in routing at most.
    pub lease_ttl: Duration,
    /// Longest wait for in-flight requests to finish on shutdown; they are cancelled after.
    pub drain_timeout: Duration,
    /// GPUs this worker sees, published in its record.
    pub gpus: Vec<GpuInfo>,
    /// Told when the worker serves and when it drains, for its status port.
    pub status: Option<Arc<WorkerStatus>>,
    /// Longest wait for one KV pull from a prefill worker (connection included); after it
    /// the request is prefilled here.
    pub kv_pull_timeout: Duration,
    /// Output parsers the frontend applies to this model's text, published in the card
    /// (`--reasoning-parser`, `--tool-call-parser`); `None` keeps the engine's card as it is.
    pub reasoning_parser: Option<String>,
    pub tool_call_parser: Option<String>,
    /// TLS of the TCP request plane, event stream and KV transfer.
    pub plane_tls: Option<PlaneTls>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            instance_id: None,
            advertise_host: None,
            role: Role::Aggregated,
            lease_ttl: switchyard_runtime::store::DEFAULT_LEASE_TTL,
            drain_timeout: Duration::from_secs(30),
            gpus: Vec::new(),
            status: None,
            kv_pull_timeout: Duration::from_secs(10),
            reasoning_parser: None,
            tool_call_parser: None,
            plane_tls: None,
        }
    }
}

/// A generated instance id: short, unique enough within a namespace, readable in logs.
pub fn new_instance_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// Where a worker takes requests from, bound before it registers so that no router can send
/// to it early.
pub enum PlaneListener {
    /// A TCP listener for the gRPC request plane.
    Tcp(TcpListener),
    /// Subscriptions on the instance's NATS subject, and where its events go.
    Nats { listener: Box<NatsListener>, events: Box<NatsEventPublisher> },
}

impl PlaneListener {
    /// The address routers use, as written in the instance record.
    fn address(&self, advertise_host: Option<&str>) -> Result<String> {
        Ok(match self {
            PlaneListener::Tcp(listener) => {
                advertised_address(listener.local_addr()?, advertise_host)?
            }
            PlaneListener::Nats { listener, .. } => listener.subject().to_owned(),
        })
    }

    fn transport(&self) -> &'static str {
        match self {
            PlaneListener::Tcp(_) => "tcp",
            PlaneListener::Nats { .. } => "nats",
        }
    }

    /// Splits into the server task and the publisher of this instance's events (in TCP mode
    /// the events are served by the same gRPC server, as its `Events` stream).
    fn start(
        self,
        instance_id: &str,
        handler: Arc<dyn GenerateHandler>,
        tls: Option<PlaneTls>,
        stop: CancellationToken,
    ) -> (ServerFuture, Arc<dyn EventPublisher>) {
        match self {
            PlaneListener::Tcp(listener) => {
                let hub = EventHub::new(instance_id);
                let server = tcp::serve_with_events(
                    listener,
                    handler,
                    hub.clone(),
                    stop,
                    TcpServerConfig { tls, ..TcpServerConfig::default() },
                );
                (Box::pin(server), Arc::new(hub))
            }
            PlaneListener::Nats { listener, events } => {
                let server =
                    nats::serve_listener(*listener, handler, stop, NatsServerConfig::default());
                (Box::pin(server), Arc::new(*events))
            }
        }
    }
}

type ServerFuture =
    std::pin::Pin<Box<dyn Future<Output = switchyard_runtime::Result<()>> + Send + 'static>>;

/// Serves `engine` on `listener` until `shutdown`, registered in `discovery` meanwhile.
/// A prefill worker (`config.role`) serves `KvTransfer` on `kv_transfer`, which it needs.
/// Returns once the worker has deregistered, drained and stopped its servers.
pub async fn serve(
    listener: PlaneListener,
    kv_transfer: Option<TcpListener>,
    engine: Arc<dyn Engine>,
    discovery: Discovery,
    config: WorkerConfig,
    shutdown: CancellationToken,
) -> Result<()> {
    let instance_id = config.instance_id.clone().unwrap_or_else(new_instance_id);
    if config.role == Role::Prefill && !engine.serves_prefill() {
        return Err(Error::Config(format!(
            "the {} engine serves no prefill-only requests; it cannot take the prefill role",
            engine.card().engine
        )));
    }
    let kv_transfer = match kv_transfer {
        Some(listener) if config.role == Role::Prefill && engine.kv_transfer().is_some() => {
            Some(listener)
        }
        _ if config.role == Role::Prefill && engine.kv_transfer().is_some() => {
            return Err(Error::Config(
                "a prefill worker needs a listener for its KvTransfer service".into(),
            ));
        }
        _ => None,
    };
    let kv_transfer_address = match &kv_transfer {
        Some(listener) => {
            advertised_address(listener.local_addr()?, config.advertise_host.as_deref())?
        }
        None => String::new(),
    };
    let mut card = engine.card().clone();
    if let Some(parser) = &config.reasoning_parser {
        card.reasoning_parser.clone_from(parser);
    }
    if let Some(parser) = &config.tool_call_parser {
        card.tool_call_parser.clone_from(parser);
    }
    let record = InstanceRecord {
        instance_id: instance_id.clone(),
        namespace: discovery.namespace().to_owned(),
        role: config.role.into(),
        address: listener.address(config.advertise_host.as_deref())?,
        card: Some(card),
        transport: listener.transport().to_owned(),
        kv_transfer_address: kv_transfer_address.clone(),
        gpus: config.gpus.clone(),
    };

    let model = record.card.as_ref().map(|c| c.model.as_str()).unwrap_or_default();
    let metrics = Arc::new(WorkerMetrics::new(&instance_id, model, &config.gpus));
    let handler = Arc::new(WorkerHandler {
        engine,
        metrics,
        instance_id: instance_id.clone(),
        kv_transfer_address,
        puller: KvPuller::new(config.kv_pull_timeout, config.plane_tls.clone()),
        draining: CancellationToken::new(),
        cancel_all: CancellationToken::new(),
        in_flight: TaskTracker::new(),
    });
    let plane_stop = CancellationToken::new();
    // The KvTransfer server stops with the request plane: after the drain, so decode workers
    // can still pull what this worker's last prefills left.
    let transfer_server = kv_transfer.map(|listener| {
        let tls = config.plane_tls.clone();
        let server = kv_transfer::serve(listener, handler.engine.clone(), tls, plane_stop.clone());
        tokio::spawn(server)
    });
    let tls = config.plane_tls.clone();
    let (server, publisher) =
        listener.start(&instance_id, handler.clone(), tls, plane_stop.clone());
    let server = tokio::spawn(server);
    // KV events and load reports go out from before registration until the server stops.
    let events_stop = plane_stop.child_token();
    let (engine, snapshots) = (handler.engine.clone(), handler.engine.clone());
    let source = EngineEvents {
        kv_events: engine.kv_events(),
        load: move || engine.load(),
        request_snapshot: move || snapshots.request_kv_snapshot(),
    };
    let events = tokio::spawn(publish_engine_events(
        publisher,
        source,
        LoadReporting::default(),
        events_stop.clone(),
    ));
    let _events_guard = events_stop.drop_guard();
    let server = ServerTask { handle: Some(server), stop: plane_stop };

    let registration =
        discovery.register(record.clone(), config.lease_ttl, shutdown.child_token()).await?;
    info!(
        instance = %record.instance_id,
        address = %record.address,
        model = %record.card.as_ref().map(|c| c.model.as_str()).unwrap_or_default(),
        "worker serving"
    );
    if let Some(status) = &config.status {
        let (engine, in_flight) = (handler.engine.clone(), handler.in_flight.clone());
        let lease = registration.lease_health();
        let metrics = handler.metrics.clone();
        status.serving(&record.instance_id, lease, engine, in_flight, metrics, &config.gpus);
    }

    let mut registration = Some(registration);
    let mut up = handler.engine.up();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            state = next_state(&mut up) => {
                registration =
                    follow_engine(state, registration, &discovery, &record, &config, &shutdown)
                        .await;
            }
        }
    }
    info!(instance = %record.instance_id, "shutting down: deregistering, then draining");
    if let Some(status) = &config.status {
        status.draining();
    }
    if let Some(registration) = registration
        && let Err(e) = registration.deregister().await
    {
        warn!(error = %e, "deregistration failed; the record expires with its lease");
    }
    handler.draining.cancel();
    handler.in_flight.close();
    let left = handler.in_flight.len();
    if tokio::time::timeout(config.drain_timeout, handler.in_flight.wait()).await.is_err() {
        warn!(left = handler.in_flight.len(), "drain timed out; cancelling what is left");
        handler.cancel_all.cancel();
        // Cancelled requests end with a final chunk promptly; bound the wait all the same.
        let _ = tokio::time::timeout(Duration::from_secs(5), handler.in_flight.wait()).await;
    } else if left > 0 {
        info!(drained = left, "in-flight requests finished");
    }
    let result = server.stop().await;
    let _ = events.await;
    if let Some(transfer) = transfer_server {
        match transfer.await {
            Ok(Err(e)) => warn!(error = %e, "KvTransfer server failed"),
            Err(e) => warn!(error = %e, "KvTransfer server task failed"),
            Ok(Ok(())) => {}
        }
    }
    result
}

/// The engine's next up/down state; pending forever for an engine that reports none.
async fn next_state(up: &mut Option<watch::Receiver<bool>>) -> bool {
    if let Some(rx) = up {
        if rx.changed().await.is_ok() {
            return *rx.borrow_and_update();
        }
        // The engine dropped its sender: no more changes will come.
        *up = None;
    }
    std::future::pending().await
}

/// Leaves discovery when the engine went down, registers again when it came back.
async fn follow_engine(
    up: bool,
    registration: Option<Registration>,
    discovery: &Discovery,
    record: &InstanceRecord,
    config: &WorkerConfig,
    shutdown: &CancellationToken,
) -> Option<Registration> {
    match (up, registration) {
        (false, Some(registration)) => {
            warn!(instance = %record.instance_id, "engine is down: leaving discovery");
            if let Err(e) = registration.deregister().await {
                warn!(error = %e, "deregistration failed; the record expires with its lease");
            }
            None
        }
        (true, None) => {
            match discovery.register(record.clone(), config.lease_ttl, shutdown.child_token()).await
            {
                Ok(registration) => {
                    info!(instance = %record.instance_id, "engine is up again: registered");
                    Some(registration)
                }
                Err(e) => {
                    warn!(error = %e, "registering again failed; retrying on the next change");
                    None
                }
            }
        }
        (_, registration) => registration,
    }
}

/// The address written into the instance record: never a wildcard (0.0.0.0, ::), which
/// no router could reach.
fn advertised_address(local: SocketAddr, host: Option<&str>) -> Result<String> {
    match host {
        Some(host) => Ok(format!("{host}:{}", local.port())),
        None if local.ip().is_unspecified() => Err(Error::Config(format!(
            "the worker binds {local}, an address routers cannot reach: give the address they \
             reach it by with --advertise-host (SWITCHYARD_ADVERTISE_HOST)"
        ))),
        None => Ok(local.to_string()),
    }
}

/// Owns the request-plane server task; stops it when asked or when dropped on an error path.
struct ServerTask {
    handle: Option<tokio::task::JoinHandle<switchyard_runtime::Result<()>>>,
    stop: CancellationToken,
}

impl ServerTask {
    async fn stop(mut self) -> Result<()> {
        self.stop.cancel();
        match self.handle.take() {
            Some(handle) => match handle.await {
                Ok(result) => Ok(result?),
                Err(e) => Err(Error::Engine(format!("request-plane server task failed: {e}"))),
            },
            None => Ok(()),
        }
    }
}

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Adapts an [`Engine`] to the request plane: numbers chunks, turns engine errors into error
/// chunks, refuses new work while draining, and cancels the engine's work when the client
/// goes away.
struct WorkerHandler {
    engine: Arc<dyn Engine>,
    /// This worker's metrics page, shown on the status port.
    metrics: Arc<WorkerMetrics>,
    instance_id: String,
    /// Where this worker's KvTransfer service is; empty when it serves none.
    kv_transfer_address: String,
    puller: KvPuller,
    /// Fired on shutdown: new requests are refused with SHUTTING_DOWN (routers retry elsewhere).
    draining: CancellationToken,
    /// Fired when the drain timed out: cancels every request still running.
    cancel_all: CancellationToken,
    /// One token per live response stream, so shutdown can wait for them.
    in_flight: TaskTracker,
}

#[async_trait]
impl GenerateHandler for WorkerHandler {
    async fn generate(&self, mut request: GenerateRequest) -> ChunkStream {
        if self.draining.is_cancelled() {
            return error_stream(&Error::ShuttingDown);
        }
        if request.embed && !self.engine.card().embeddings {
            return error_stream(&Error::InvalidRequest(
                "this worker's engine does not serve embeddings".to_owned(),
            ));
        }
        let in_flight = self.in_flight.token();
        self.take_handed_over_kv(&mut request).await;
        let cancel = self.cancel_all.child_token();
        let engine_stream = match self.engine.generate(request, cancel.clone()).await {
            Ok(stream) => stream,
            Err(e) => return error_stream(&e),
        };
        // Dropping the response stream (client gone) drops this guard, which cancels the
        // request in the engine; the tracker token goes with it.
        let guard = (cancel.drop_guard(), in_flight);
        let mut seq = 0u64;
        let (instance_id, address) = (self.instance_id.clone(), self.kv_transfer_address.clone());
        let stream = engine_stream.map(move |mut chunk| {
            let _held = &guard;
            chunk.seq = seq;
            seq += 1;
            if let Some(handle) = &mut chunk.kv_handle
                && !handle.transfer_id.is_empty()
            {
                handle.instance_id.clone_from(&instance_id);
                handle.address.clone_from(&address);
            }
            Ok(chunk)
        });
        Box::pin(stream)
    }
}

impl WorkerHandler {
    /// For a request carrying a KV handle that Switchyard moves (a transfer id): pulls the
    /// KV from the prefill worker and imports it into the engine. When that fails, the
    /// handle is taken off the request, so the engine computes the prompt itself.
    async fn take_handed_over_kv(&self, request: &mut GenerateRequest) {
        let Some(transfer) = self.engine.kv_transfer() else {
            return;
        };
        let Some(disaggregated) = &mut request.disaggregated else {
            return;
        };
        let Some(handle) = disaggregated.kv_handle.as_ref().filter(|h| !h.transfer_id.is_empty())
        else {
            return;
        };
        let started = Instant::now();
        let result = match self.puller.pull(handle).await {
            Ok((data, pulled_in)) => {
                let bytes = data.len() as u64;
                match transfer.import_kv(handle, data, pulled_in).await {
                    Ok(()) => Ok(bytes),
                    Err(e) => Err((TransferFailure::Import, e)),
                }
            }
            Err(e) => Err((TransferFailure::Pull, e)),
        };
        match result {
            Ok(bytes) => self.metrics.transfer_done(bytes, started.elapsed()),
            Err((cause, e)) => {
                warn!(
                    request = %request.request_id,
                    from = %handle.address,
                    error = %e,
                    "KV hand-off failed; prefilling here"
                );
                self.metrics.transfer_failed(cause);
                disaggregated.kv_handle = None;
            }
        }
    }
}

fn error_stream(error: &Error) -> ChunkStream {
    let kind: ErrorKind = error.kind();
    let chunk = GenerateChunk {
        seq: 0,
        finish_reason: FinishReason::Error.into(),
        error: Some(WorkerError {
            kind: kind.into(),
            message: error.to_string(),
            param: error.param_name().unwrap_or_default().to_owned(),
        }),
        ..Default::default()
    };
    Box::pin(futures::stream::iter([Ok(chunk)]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod advertise_tests {
    use super::*;

    #[test]
    fn a_wildcard_bind_is_never_advertised() {
        let any: SocketAddr = "0.0.0.0:9000".parse().unwrap();
        let err = advertised_address(any, None).unwrap_err().to_string();
        assert!(err.contains("--advertise-host"), "{err}");
        assert!(advertised_address("[::]:9000".parse().unwrap(), None).is_err());
        assert_eq!(advertised_address(any, Some("worker-1")).unwrap(), "worker-1:9000");
        let local: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        assert_eq!(advertised_address(local, None).unwrap(), "127.0.0.1:9000");
    }
}
