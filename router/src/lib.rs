//! Routing for Switchyard: which instance serves a request. Pure logic over a snapshot of
//! instances — no I/O, no async — so it is tested and benchmarked on its own.

pub mod block_hash;
pub mod error;
pub mod policy;

pub use block_hash::block_hashes;
pub use error::Error;
pub use policy::{Candidate, Policy, PolicyKind, RandomPolicy, RequestInfo, RoundRobin};
