//! What a run leaves behind: the terminal summary, the JSONL line, comparison tables, the HTML
//! report, and the one-page summary of several runs.

pub mod chart;
pub mod compare;
pub mod labels;
pub mod line;
pub mod report;
pub mod result;
pub mod summary;
pub mod summary_page;
