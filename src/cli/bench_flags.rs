//! More of `switchyard bench`'s flags: the rest of sglang.bench_serving's (taken and honoured,
//! or refused with the reason), resource sampling, and saved outputs.

use std::path::PathBuf;

use clap::Args;

use crate::env_names as env;

/// sglang.bench_serving's flags beyond the basics.
#[derive(Debug, Clone, Args)]
pub struct DropInArgs {
    /// `model` of requests when it differs from --model (which then only names the tokenizer).
    #[arg(long, env = env::BENCH_SERVED_MODEL_NAME)]
    pub served_model_name: Option<String>,
    /// Extra HTTP headers of every request: KEY=VALUE ...
    #[arg(long, env = env::BENCH_HEADER, num_args = 1..)]
    pub header: Vec<String>,
    /// Wait this long for the server to list its models before starting; 0 does not wait.
    #[arg(long, env = env::BENCH_READY_CHECK_TIMEOUT_SEC, default_value_t = 60)]
    pub ready_check_timeout_sec: u64,
    /// Render every text prompt with the model's chat template (text-completion backends).
    #[arg(long, env = env::BENCH_APPLY_CHAT_TEMPLATE)]
    pub apply_chat_template: bool,
    /// Appended to every text prompt.
    #[arg(long, env = env::BENCH_PROMPT_SUFFIX, default_value = "")]
    pub prompt_suffix: String,
    /// Sampling temperature of every request.
    #[arg(long, env = env::BENCH_TEMPERATURE, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling of every request (sent when below 1).
    #[arg(long, env = env::BENCH_TOP_P, default_value_t = 1.0)]
    pub top_p: f64,
    /// Ask for logprobs (completions: `logprobs`; chat: `logprobs` and `top_logprobs`).
    #[arg(long, env = env::BENCH_RETURN_LOGPROB)]
    pub return_logprob: bool,
    /// Top logprobs per token with --return-logprob.
    #[arg(long, env = env::BENCH_TOP_LOGPROBS_NUM, default_value_t = 0)]
    pub top_logprobs_num: u32,
    /// LoRA adapters: each request names one, drawn uniformly, as its model.
    #[arg(long, env = env::BENCH_LORA_NAME, num_args = 1.., value_delimiter = ',')]
    pub lora_name: Vec<String>,
    /// Skip this many entries of the dataset file (after the seeded shuffle) before sampling.
    #[arg(long, env = env::BENCH_DATASET_OFFSET, default_value_t = 0)]
    pub dataset_offset: usize,
    /// The server splits prefill and decode (bench_serving uses it only to profile both).
    #[arg(long, env = env::BENCH_PD_SEPARATED)]
    pub pd_separated: bool,
    /// Empty the server's prefix cache after the warmup (POST /flush_cache; vLLM:
    /// /reset_prefix_cache).
    #[arg(long, env = env::BENCH_FLUSH_CACHE)]
    pub flush_cache: bool,
    /// Refused: it drives SGLang's torch profiler, which switchyard bench does not.
    #[arg(long, env = env::BENCH_PROFILE)]
    pub profile: bool,
    /// Plot output tokens/s and requests in flight over time in the terminal.
    #[arg(long, env = env::BENCH_PLOT_THROUGHPUT)]
    pub plot_throughput: bool,
}

/// Resource sampling, saved outputs and child logs.
#[derive(Debug, Clone, Args)]
pub struct RecordArgs {
    /// Sample CPU, memory and GPUs every this many milliseconds during runs; 0 turns it off.
    #[arg(long, env = env::BENCH_SAMPLE_INTERVAL_MS, default_value_t = 500)]
    pub sample_interval_ms: u64,
    /// Prometheus endpoints to scrape at every sample (e.g. a DCGM exporter), comma list.
    #[arg(long, env = env::BENCH_SAMPLE_URL, num_args = 1.., value_delimiter = ',')]
    pub sample_url: Vec<String>,
    /// Metric names kept from --sample-url [default: DCGM_FI_DEV_GPU_UTIL,
    /// DCGM_FI_DEV_FB_USED, DCGM_FI_DEV_POWER_USAGE].
    #[arg(long, env = env::BENCH_SAMPLE_METRIC, num_args = 1.., value_delimiter = ',')]
    pub sample_metric: Vec<String>,
    /// Keep every prompt and its output in the result line (for `bench outputs`).
    #[arg(long, env = env::BENCH_SAVE_OUTPUTS)]
    pub save_outputs: bool,
    /// With --topology: directory of the frontend's and workers' logs [default:
    /// switchyard-bench-logs/<time> beside --output-file, else in the current directory].
    #[arg(long, env = env::BENCH_LOG_DIR)]
    pub log_dir: Option<PathBuf>,
}

impl DropInArgs {
    /// Flags that cannot apply, refused with the reason.
    pub fn refuse_unsupported(&self) -> anyhow::Result<()> {
        if self.profile {
            anyhow::bail!(
                "--profile starts SGLang's torch profiler on the server (/start_profile); \
                 switchyard bench does not drive it: profile the server itself"
            );
        }
        Ok(())
    }

    /// `--header` values as (name, value) pairs.
    pub fn headers(&self) -> anyhow::Result<Vec<(String, String)>> {
        self.header
            .iter()
            .map(|h| {
                let (k, v) = h
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--header {h:?}: expected KEY=VALUE"))?;
                Ok((k.trim().to_owned(), v.to_owned()))
            })
            .collect()
    }
}
