//! Routing for Switchyard: which instance serves a request, and for a prefill/decode split
//! which pair. Pure logic — no I/O, no async, no clocks (time is passed in) — so it is
//! tested and benchmarked on its own.

pub mod block_hash;
pub mod error;
pub mod kv_index;
pub mod policy;
pub mod state;

pub use block_hash::{block_hashes, block_hashes_after};
pub use error::Error;
pub use kv_index::{
    Applied, InstanceId, KvChange, KvEvent, KvIndex, KvIndexConfig, OverlapScores, ResyncReason,
};
pub use policy::{
    Candidate, KvPolicy, KvPolicyConfig, LeastLoaded, Policy, PolicyConfig, PolicyKind, PowerOfTwo,
    RandomPolicy, RequestInfo, RoundRobin,
};
pub use state::{
    Booking, DisaggConfig, InstanceLoad, InstanceSpec, LocalReason, PrefillChoice, PrefillPlace,
    Role, RouteRequest, RoutingConfig, RoutingState, Selection,
};
