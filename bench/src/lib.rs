//! `switchyard bench`: a load generator that takes sglang.bench_serving's flags and writes its
//! JSONL, measured by a client cheap enough never to be the bottleneck.
//!
//! The pieces, in the order a run uses them: [`dataset`] builds the workload, [`arrival`]
//! schedules it, [`runner`] sends it over [`client`] connections and records every request
//! ([`record`]), [`metrics`] turns the records into figures, and [`output`] prints, writes,
//! compares and draws them. [`sweep`] ties one invocation together.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod arrival;
mod client;
pub mod config;
pub mod dataset;
mod error;
pub mod metrics;
pub mod output;
pub mod outputs;
pub mod prefix_bound;
pub mod record;
pub mod resources;
pub mod runner;
pub mod server_probe;
pub mod server_stats;
pub mod stats;
pub mod sweep;
mod tokenizer;
pub mod topology;

pub use error::Error;
pub use tokenizer::TokenCounter;
