//! Every environment variable Switchyard reads, in one place. Each flag has one, so that
//! containers are configured by environment alone.

pub const LOG: &str = "SWITCHYARD_LOG";

pub const STORE: &str = "SWITCHYARD_STORE";
pub const STORE_DIR: &str = "SWITCHYARD_STORE_DIR";
pub const NAMESPACE: &str = "SWITCHYARD_NAMESPACE";
pub const LEASE_TTL_SECS: &str = "SWITCHYARD_LEASE_TTL_SECS";
pub const ETCD_ENDPOINTS: &str = "SWITCHYARD_ETCD_ENDPOINTS";
/// Read when `SWITCHYARD_ETCD_ENDPOINTS` is unset: the name existing compose files use.
pub const ETCD_ENDPOINTS_COMPAT: &str = "ETCD_ENDPOINTS";

pub const REQUEST_PLANE: &str = "SWITCHYARD_REQUEST_PLANE";
pub const NATS_URL: &str = "SWITCHYARD_NATS_URL";
/// Read when `SWITCHYARD_NATS_URL` is unset: the name existing compose files use.
pub const NATS_URL_COMPAT: &str = "NATS_SERVER";

pub const HTTP_HOST: &str = "SWITCHYARD_HTTP_HOST";
pub const HTTP_PORT: &str = "SWITCHYARD_HTTP_PORT";
pub const ROUTER_MODE: &str = "SWITCHYARD_ROUTER_MODE";
pub const KV_PREFILL_LOAD_SCALE: &str = "SWITCHYARD_KV_PREFILL_LOAD_SCALE";
pub const KV_ACTIVE_REQUEST_WEIGHT: &str = "SWITCHYARD_KV_ACTIVE_REQUEST_WEIGHT";
pub const KV_TEMPERATURE: &str = "SWITCHYARD_KV_TEMPERATURE";
pub const KV_BALANCE_RATIO: &str = "SWITCHYARD_KV_BALANCE_RATIO";
pub const KV_BALANCE_SLACK: &str = "SWITCHYARD_KV_BALANCE_SLACK";
pub const KV_DECISION_TTL_SECS: &str = "SWITCHYARD_KV_DECISION_TTL_SECS";
pub const MAX_LOCAL_PREFILL_TOKENS: &str = "SWITCHYARD_MAX_LOCAL_PREFILL_TOKENS";
pub const MAX_PREFILL_QUEUE: &str = "SWITCHYARD_MAX_PREFILL_QUEUE";
pub const PREFILL_TIMEOUT_SECS: &str = "SWITCHYARD_PREFILL_TIMEOUT_SECS";
pub const MAX_BODY_BYTES: &str = "SWITCHYARD_MAX_BODY_BYTES";
pub const REQUEST_TIMEOUT_SECS: &str = "SWITCHYARD_REQUEST_TIMEOUT_SECS";
pub const API_KEY: &str = "SWITCHYARD_API_KEY";
pub const API_KEY_FILE: &str = "SWITCHYARD_API_KEY_FILE";
pub const TLS_CERT_FILE: &str = "SWITCHYARD_TLS_CERT_FILE";
pub const TLS_KEY_FILE: &str = "SWITCHYARD_TLS_KEY_FILE";
pub const API_KEY_PROTECT_OPS: &str = "SWITCHYARD_API_KEY_PROTECT_OPS";
pub const MAX_INFLIGHT_PER_INSTANCE: &str = "SWITCHYARD_MAX_INFLIGHT_PER_INSTANCE";
pub const MAX_QUEUED_REQUESTS: &str = "SWITCHYARD_MAX_QUEUED_REQUESTS";
pub const QUEUE_TIMEOUT_SECS: &str = "SWITCHYARD_QUEUE_TIMEOUT_SECS";
pub const NATS_USER: &str = "SWITCHYARD_NATS_USER";
pub const NATS_PASSWORD: &str = "SWITCHYARD_NATS_PASSWORD";
pub const NATS_TOKEN: &str = "SWITCHYARD_NATS_TOKEN";
pub const NATS_CREDS: &str = "SWITCHYARD_NATS_CREDS";
pub const NATS_TLS_CA: &str = "SWITCHYARD_NATS_TLS_CA";
pub const NATS_TLS_CERT: &str = "SWITCHYARD_NATS_TLS_CERT";
pub const NATS_TLS_KEY: &str = "SWITCHYARD_NATS_TLS_KEY";
pub const NATS_REQUIRE_TLS: &str = "SWITCHYARD_NATS_REQUIRE_TLS";
pub const ETCD_USER: &str = "SWITCHYARD_ETCD_USER";
pub const ETCD_PASSWORD: &str = "SWITCHYARD_ETCD_PASSWORD";
pub const ETCD_TLS_CA: &str = "SWITCHYARD_ETCD_TLS_CA";
pub const ETCD_TLS_CERT: &str = "SWITCHYARD_ETCD_TLS_CERT";
pub const ETCD_TLS_KEY: &str = "SWITCHYARD_ETCD_TLS_KEY";
pub const PLANE_TLS_CA: &str = "SWITCHYARD_PLANE_TLS_CA";
pub const PLANE_TLS_CERT: &str = "SWITCHYARD_PLANE_TLS_CERT";
pub const PLANE_TLS_KEY: &str = "SWITCHYARD_PLANE_TLS_KEY";
pub const PLANE_TLS_VERIFY_CLIENTS: &str = "SWITCHYARD_PLANE_TLS_VERIFY_CLIENTS";
pub const MAX_CONNECTIONS: &str = "SWITCHYARD_MAX_CONNECTIONS";
pub const HTTP_HEADER_TIMEOUT_SECS: &str = "SWITCHYARD_HTTP_HEADER_TIMEOUT_SECS";
pub const MIGRATION_LIMIT: &str = "SWITCHYARD_MIGRATION_LIMIT";
pub const STALL_TIMEOUT_SECS: &str = "SWITCHYARD_STALL_TIMEOUT_SECS";

pub const ENGINE: &str = "SWITCHYARD_ENGINE";
pub const MODEL_PATH: &str = "SWITCHYARD_MODEL_PATH";
pub const MODEL_NAME: &str = "SWITCHYARD_MODEL_NAME";
pub const REASONING_PARSER: &str = "SWITCHYARD_REASONING_PARSER";
pub const TOOL_CALL_PARSER: &str = "SWITCHYARD_TOOL_CALL_PARSER";
pub const WORKER_HOST: &str = "SWITCHYARD_WORKER_HOST";
pub const WORKER_PORT: &str = "SWITCHYARD_WORKER_PORT";
pub const ADVERTISE_HOST: &str = "SWITCHYARD_ADVERTISE_HOST";
pub const METRICS_PORT: &str = "SWITCHYARD_METRICS_PORT";
pub const INSTANCE_ID: &str = "SWITCHYARD_INSTANCE_ID";
pub const PARENT_PID: &str = "SWITCHYARD_PARENT_PID";
pub const DRAIN_TIMEOUT_SECS: &str = "SWITCHYARD_DRAIN_TIMEOUT_SECS";
pub const WORKER_ROLE: &str = "SWITCHYARD_WORKER_ROLE";
pub const KV_TRANSFER_PORT: &str = "SWITCHYARD_KV_TRANSFER_PORT";
pub const KV_PULL_TIMEOUT_SECS: &str = "SWITCHYARD_KV_PULL_TIMEOUT_SECS";

// Engine servers wrapped by a worker (`--engine openai|vllm|sglang|trtllm|llamacpp`).
pub const ENGINE_URL: &str = "SWITCHYARD_ENGINE_URL";
pub const ENGINE_MODEL: &str = "SWITCHYARD_ENGINE_MODEL";
pub const ENGINE_READY_TIMEOUT_SECS: &str = "SWITCHYARD_ENGINE_READY_TIMEOUT_SECS";
pub const ENGINE_KV_EVENTS: &str = "SWITCHYARD_ENGINE_KV_EVENTS";
pub const ENGINE_BLOCK_SIZE: &str = "SWITCHYARD_ENGINE_BLOCK_SIZE";
pub const ENGINE_SLOT_DIR: &str = "SWITCHYARD_ENGINE_SLOT_DIR";
pub const ENGINE_LAUNCH: &str = "SWITCHYARD_ENGINE_LAUNCH";
pub const ENGINE_RESTART: &str = "SWITCHYARD_ENGINE_RESTART";
/// Passed on to a launched engine as `HUGGING_FACE_HUB_TOKEN` when that is unset.
pub const HF_TOKEN: &str = "HF_TOKEN";
pub const HUGGING_FACE_HUB_TOKEN: &str = "HUGGING_FACE_HUB_TOKEN";
/// Which GPUs the worker's process sees, as CUDA reads them (logged at start).
pub const CUDA_VISIBLE_DEVICES: &str = "CUDA_VISIBLE_DEVICES";
pub const NVIDIA_VISIBLE_DEVICES: &str = "NVIDIA_VISIBLE_DEVICES";

pub const MOCKER_BLOCK_SIZE: &str = "SWITCHYARD_MOCKER_BLOCK_SIZE";
pub const MOCKER_NUM_GPU_BLOCKS: &str = "SWITCHYARD_MOCKER_NUM_GPU_BLOCKS";
pub const MOCKER_MAX_NUM_SEQS: &str = "SWITCHYARD_MOCKER_MAX_NUM_SEQS";
pub const MOCKER_MAX_NUM_BATCHED_TOKENS: &str = "SWITCHYARD_MOCKER_MAX_NUM_BATCHED_TOKENS";
pub const MOCKER_SPEEDUP_RATIO: &str = "SWITCHYARD_MOCKER_SPEEDUP_RATIO";
pub const MOCKER_PREFIX_CACHING: &str = "SWITCHYARD_MOCKER_PREFIX_CACHING";
pub const MOCKER_EOS_PROBABILITY: &str = "SWITCHYARD_MOCKER_EOS_PROBABILITY";
pub const MOCKER_CONTEXT_LENGTH: &str = "SWITCHYARD_MOCKER_CONTEXT_LENGTH";
pub const MOCKER_KV_BYTES_PER_TOKEN: &str = "SWITCHYARD_MOCKER_KV_BYTES_PER_TOKEN";
pub const MOCKER_KV_TRANSFER_SCALE: &str = "SWITCHYARD_MOCKER_KV_TRANSFER_SCALE";
pub const MOCKER_KV_LINK: &str = "SWITCHYARD_MOCKER_KV_LINK";
pub const MOCKER_KV_LEASE_SECS: &str = "SWITCHYARD_MOCKER_KV_LEASE_SECS";
pub const MOCKER_REPLAY_OUTPUT: &str = "SWITCHYARD_MOCKER_REPLAY_OUTPUT";

pub const UP_WORKERS: &str = "SWITCHYARD_UP_WORKERS";
pub const UP_PREFILL_WORKERS: &str = "SWITCHYARD_UP_PREFILL_WORKERS";
pub const UP_DECODE_WORKERS: &str = "SWITCHYARD_UP_DECODE_WORKERS";

pub const DEPLOY_TOPOLOGY: &str = "SWITCHYARD_DEPLOY_TOPOLOGY";
pub const DEPLOY_GPUS_PER_WORKER: &str = "SWITCHYARD_DEPLOY_GPUS_PER_WORKER";

pub const HEALTH_URL: &str = "SWITCHYARD_HEALTH_URL";
pub const HEALTH_TIMEOUT_SECS: &str = "SWITCHYARD_HEALTH_TIMEOUT_SECS";

// `switchyard bench` (and `bench compare`): sglang.bench_serving's flag names.
pub const BENCH_BASE_URL: &str = "SWITCHYARD_BENCH_BASE_URL";
pub const BENCH_HOST: &str = "SWITCHYARD_BENCH_HOST";
pub const BENCH_PORT: &str = "SWITCHYARD_BENCH_PORT";
pub const BENCH_MODEL: &str = "SWITCHYARD_BENCH_MODEL";
pub const BENCH_BACKEND: &str = "SWITCHYARD_BENCH_BACKEND";
pub const BENCH_API_KEY: &str = "SWITCHYARD_BENCH_API_KEY";
pub const BENCH_DATASET_NAME: &str = "SWITCHYARD_BENCH_DATASET_NAME";
pub const BENCH_DATASET_PATH: &str = "SWITCHYARD_BENCH_DATASET_PATH";
pub const BENCH_NUM_PROMPTS: &str = "SWITCHYARD_BENCH_NUM_PROMPTS";
pub const BENCH_RANDOM_INPUT_LEN: &str = "SWITCHYARD_BENCH_RANDOM_INPUT_LEN";
pub const BENCH_RANDOM_OUTPUT_LEN: &str = "SWITCHYARD_BENCH_RANDOM_OUTPUT_LEN";
pub const BENCH_RANDOM_RANGE_RATIO: &str = "SWITCHYARD_BENCH_RANDOM_RANGE_RATIO";
pub const BENCH_SHAREGPT_OUTPUT_LEN: &str = "SWITCHYARD_BENCH_SHAREGPT_OUTPUT_LEN";
pub const BENCH_SHAREGPT_CONTEXT_LEN: &str = "SWITCHYARD_BENCH_SHAREGPT_CONTEXT_LEN";
pub const BENCH_GSP_NUM_GROUPS: &str = "SWITCHYARD_BENCH_GSP_NUM_GROUPS";
pub const BENCH_GSP_PROMPTS_PER_GROUP: &str = "SWITCHYARD_BENCH_GSP_PROMPTS_PER_GROUP";
pub const BENCH_GSP_SYSTEM_PROMPT_LEN: &str = "SWITCHYARD_BENCH_GSP_SYSTEM_PROMPT_LEN";
pub const BENCH_GSP_QUESTION_LEN: &str = "SWITCHYARD_BENCH_GSP_QUESTION_LEN";
pub const BENCH_GSP_OUTPUT_LEN: &str = "SWITCHYARD_BENCH_GSP_OUTPUT_LEN";
pub const BENCH_MULTI_TURN_TURNS: &str = "SWITCHYARD_BENCH_MULTI_TURN_TURNS";
pub const BENCH_REQUEST_RATE: &str = "SWITCHYARD_BENCH_REQUEST_RATE";
pub const BENCH_BURSTINESS: &str = "SWITCHYARD_BENCH_BURSTINESS";
pub const BENCH_MAX_CONCURRENCY: &str = "SWITCHYARD_BENCH_MAX_CONCURRENCY";
pub const BENCH_WARMUP_REQUESTS: &str = "SWITCHYARD_BENCH_WARMUP_REQUESTS";
pub const BENCH_SEED: &str = "SWITCHYARD_BENCH_SEED";
pub const BENCH_OUTPUT_FILE: &str = "SWITCHYARD_BENCH_OUTPUT_FILE";
pub const BENCH_OUTPUT_DETAILS: &str = "SWITCHYARD_BENCH_OUTPUT_DETAILS";
pub const BENCH_TAG: &str = "SWITCHYARD_BENCH_TAG";
pub const BENCH_GOODPUT: &str = "SWITCHYARD_BENCH_GOODPUT";
pub const BENCH_DISABLE_STREAM: &str = "SWITCHYARD_BENCH_DISABLE_STREAM";
pub const BENCH_DISABLE_IGNORE_EOS: &str = "SWITCHYARD_BENCH_DISABLE_IGNORE_EOS";
pub const BENCH_EXTRA_REQUEST_BODY: &str = "SWITCHYARD_BENCH_EXTRA_REQUEST_BODY";
pub const BENCH_TOKENIZER: &str = "SWITCHYARD_BENCH_TOKENIZER";
pub const BENCH_REQUEST_TIMEOUT_SECS: &str = "SWITCHYARD_BENCH_REQUEST_TIMEOUT_SECS";
pub const BENCH_DISABLE_TQDM: &str = "SWITCHYARD_BENCH_DISABLE_TQDM";
pub const BENCH_REPORT: &str = "SWITCHYARD_BENCH_REPORT";
pub const BENCH_TOPOLOGY: &str = "SWITCHYARD_BENCH_TOPOLOGY";
pub const BENCH_GPU_COST_PER_HOUR: &str = "SWITCHYARD_BENCH_GPU_COST_PER_HOUR";
pub const BENCH_GPUS: &str = "SWITCHYARD_BENCH_GPUS";
pub const BENCH_KV_BLOCK_SIZE: &str = "SWITCHYARD_BENCH_KV_BLOCK_SIZE";
pub const BENCH_ROUTER_MODE: &str = "SWITCHYARD_BENCH_ROUTER_MODE";
pub const BENCH_CSV: &str = "SWITCHYARD_BENCH_CSV";
pub const BENCH_SERVED_MODEL_NAME: &str = "SWITCHYARD_BENCH_SERVED_MODEL_NAME";
pub const BENCH_HEADER: &str = "SWITCHYARD_BENCH_HEADER";
pub const BENCH_READY_CHECK_TIMEOUT_SEC: &str = "SWITCHYARD_BENCH_READY_CHECK_TIMEOUT_SEC";
pub const BENCH_APPLY_CHAT_TEMPLATE: &str = "SWITCHYARD_BENCH_APPLY_CHAT_TEMPLATE";
pub const BENCH_PROMPT_SUFFIX: &str = "SWITCHYARD_BENCH_PROMPT_SUFFIX";
pub const BENCH_TEMPERATURE: &str = "SWITCHYARD_BENCH_TEMPERATURE";
pub const BENCH_TOP_P: &str = "SWITCHYARD_BENCH_TOP_P";
pub const BENCH_RETURN_LOGPROB: &str = "SWITCHYARD_BENCH_RETURN_LOGPROB";
pub const BENCH_TOP_LOGPROBS_NUM: &str = "SWITCHYARD_BENCH_TOP_LOGPROBS_NUM";
pub const BENCH_LORA_NAME: &str = "SWITCHYARD_BENCH_LORA_NAME";
pub const BENCH_DATASET_OFFSET: &str = "SWITCHYARD_BENCH_DATASET_OFFSET";
pub const BENCH_PD_SEPARATED: &str = "SWITCHYARD_BENCH_PD_SEPARATED";
pub const BENCH_FLUSH_CACHE: &str = "SWITCHYARD_BENCH_FLUSH_CACHE";
pub const BENCH_PROFILE: &str = "SWITCHYARD_BENCH_PROFILE";
pub const BENCH_PLOT_THROUGHPUT: &str = "SWITCHYARD_BENCH_PLOT_THROUGHPUT";
pub const BENCH_SAMPLE_INTERVAL_MS: &str = "SWITCHYARD_BENCH_SAMPLE_INTERVAL_MS";
pub const BENCH_SAMPLE_URL: &str = "SWITCHYARD_BENCH_SAMPLE_URL";
pub const BENCH_SAMPLE_METRIC: &str = "SWITCHYARD_BENCH_SAMPLE_METRIC";
pub const BENCH_SAVE_OUTPUTS: &str = "SWITCHYARD_BENCH_SAVE_OUTPUTS";
pub const BENCH_LOG_DIR: &str = "SWITCHYARD_BENCH_LOG_DIR";
pub const BENCH_SUMMARY: &str = "SWITCHYARD_BENCH_SUMMARY";
pub const BENCH_MARKDOWN: &str = "SWITCHYARD_BENCH_MARKDOWN";
pub const BENCH_RUBRIC: &str = "SWITCHYARD_BENCH_RUBRIC";
pub const BENCH_HTML: &str = "SWITCHYARD_BENCH_HTML";

/// The value of a variable other tools' deployments already set, when it is set and not empty.
pub fn compat(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every flag of every subcommand reads a `SWITCHYARD_` variable, and no two share one.
    #[test]
    fn every_flag_has_its_own_switchyard_variable() {
        fn visit(cmd: &clap::Command, seen: &mut Vec<(String, String)>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") || arg.is_positional() {
                    continue;
                }
                let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
                let env = env.unwrap_or_else(|| panic!("{} --{id} has no env var", cmd.get_name()));
                assert!(env.starts_with("SWITCHYARD_"), "{env}");
                seen.push((format!("{} --{id}", cmd.get_name()), env));
            }
            for sub in cmd.get_subcommands() {
                visit(sub, seen);
            }
        }
        let mut seen = Vec::new();
        visit(&crate::cli::Cli::command(), &mut seen);
        assert!(seen.len() > 10, "{seen:?}");
        // A flag shared by subcommands through one struct may repeat its variable; two
        // different flags may not.
        for (flag, env) in &seen {
            let name = flag.rsplit(' ').next().unwrap_or_default();
            for (other, other_env) in &seen {
                let other_name = other.rsplit(' ').next().unwrap_or_default();
                if env == other_env {
                    assert_eq!(name, other_name, "{flag} and {other} share {env}");
                }
            }
        }
    }
}
