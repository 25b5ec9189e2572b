//! What a run leaves behind: the terminal summary, the JSONL line, comparison tables and the
//! HTML report.

pub mod compare;
pub mod line;
pub mod report;
pub mod result;
pub mod summary;
