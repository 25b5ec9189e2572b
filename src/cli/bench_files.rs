//! `switchyard bench compare` and `switchyard bench outputs`: what is done with result files
//! (switchyard bench's or sglang.bench_serving's JSONL) after the runs.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use switchyard_bench::output::{compare, summary_page};
use switchyard_bench::outputs::{self, rubric::Rubric, view};

use crate::env_names as env;

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// JSONL files; every line is one run.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// CSV (one row per run; objects flattened into `key.sub` columns, lists left out).
    #[arg(long, env = env::BENCH_CSV)]
    pub csv: bool,
    /// Write the one-page summary (HTML, with charts) here.
    #[arg(long, env = env::BENCH_SUMMARY)]
    pub summary: Option<PathBuf>,
    /// Write the summary as Markdown here.
    #[arg(long, env = env::BENCH_MARKDOWN)]
    pub markdown: Option<PathBuf>,
    /// Score saved outputs (--save-outputs) with this rubric (YAML) for the summary.
    #[arg(long, env = env::BENCH_RUBRIC)]
    pub rubric: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct OutputsArgs {
    /// JSONL files of runs made with --save-outputs; every line is one run.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Criteria with weights (YAML); automatic ones are scored, judgment ones left to fill.
    #[arg(long, env = env::BENCH_RUBRIC)]
    pub rubric: Option<PathBuf>,
    /// Write the side-by-side page (HTML) here.
    #[arg(long, env = env::BENCH_HTML)]
    pub html: Option<PathBuf>,
    /// Write it as Markdown here [default: Markdown on stdout when no --html is given].
    #[arg(long, env = env::BENCH_MARKDOWN)]
    pub markdown: Option<PathBuf>,
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    println!("written to {}", path.display());
    Ok(())
}

fn rubric(path: Option<&Path>) -> anyhow::Result<Option<Rubric>> {
    Ok(path.map(Rubric::load).transpose()?)
}

pub fn compare(args: &CompareArgs) -> anyhow::Result<()> {
    let runs = compare::read_files(&args.files)?;
    let rubric = rubric(args.rubric.as_deref())?;
    if args.csv {
        let left_out = compare::csv_left_out(&runs);
        if !left_out.is_empty() {
            eprintln!("CSV leaves out the lists {}", left_out.join(", "));
        }
        print!("{}", compare::csv(&runs));
    } else if args.summary.is_none() && args.markdown.is_none() {
        print!("{}", compare::table(&runs));
    }
    if let Some(path) = &args.summary {
        write(path, &summary_page::html(&runs, rubric.as_ref())?)?;
    }
    if let Some(path) = &args.markdown {
        write(path, &summary_page::markdown(&runs, rubric.as_ref()))?;
    }
    Ok(())
}

pub fn outputs(args: &OutputsArgs) -> anyhow::Result<()> {
    let runs = compare::read_files(&args.files)?;
    let saved = outputs::of_lines(&runs)?;
    let rubric = rubric(args.rubric.as_deref())?;
    for (key, values) in outputs::settings_differences(&saved) {
        eprintln!("WARNING: the runs differ in {key}: {}", values.join(" vs "));
    }
    if let Some(path) = &args.html {
        write(path, &view::html(&saved, rubric.as_ref()))?;
    }
    match &args.markdown {
        Some(path) => write(path, &view::markdown(&saved, rubric.as_ref()))?,
        None if args.html.is_none() => print!("{}", view::markdown(&saved, rubric.as_ref())),
        None => {}
    }
    Ok(())
}
