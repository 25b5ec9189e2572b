//! Switchyard workers: the [`Engine`] seam, the engines, and the service that registers a
//! worker in discovery and serves its engine over the request plane.

pub mod conformance;
pub mod engine;
pub mod error;
pub mod gpu;
pub mod kv_transfer;
pub mod metrics;
pub mod mocker;
pub mod openai;
pub mod service;
pub mod status;

pub use engine::{Engine, EngineStream, KvBytesStream, KvExport, KvTransferEngine};
pub use error::{Error, Result};
pub use service::{PlaneListener, WorkerConfig, serve};
pub use status::{WorkerStatus, serve_status};
