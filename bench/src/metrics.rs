//! The figures of one run, computed from its request records as sglang.bench_serving computes
//! them, plus Switchyard's own: latency from the scheduled send time (free of coordinated
//! omission), errors by kind, the client's CPU time and the cost of the tokens.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{Goodput, SloMetric};
use crate::record::RequestRecord;
use crate::runner::RunOutput;
use crate::server_stats::InstanceRequests;
use crate::stats::Distribution;
use crate::{Error, TokenCounter};

/// Goodput as bench_serving computes it (`sglang.benchmark.goodput`).
#[derive(Debug, Clone, PartialEq)]
pub struct GoodputMetrics {
    /// The objectives, in the order given.
    pub slos: Goodput,
    /// Requests per second that succeeded and met every objective.
    pub request_goodput: f64,
    /// Those requests over every request sent (failed ones included).
    pub slo_attainment: f64,
    /// Per objective: requests that met it over every request sent.
    pub by_metric: Vec<(SloMetric, f64)>,
}

impl GoodputMetrics {
    fn compute(slos: Goodput, records: &[RequestRecord], duration_s: f64) -> GoodputMetrics {
        let mut met = vec![0usize; slos.slos.len()];
        let mut good = 0usize;
        for r in records.iter().filter(|r| r.succeeded()) {
            // A one-token output has no inter-token gap: its TPOT counts as 0.
            let observed = |metric: SloMetric| match metric {
                SloMetric::Ttft => r.ttft().map_or(0.0, ms),
                SloMetric::Tpot => r.tpot().map_or(0.0, ms),
                SloMetric::E2el => ms(r.e2e()),
            };
            let mut all = true;
            for (i, (metric, slo)) in slos.slos.iter().enumerate() {
                if observed(*metric) <= *slo {
                    met[i] += 1;
                } else {
                    all = false;
                }
            }
            good += usize::from(all);
        }
        let sent = records.len().max(1) as f64;
        GoodputMetrics {
            request_goodput: good as f64 / duration_s,
            slo_attainment: good as f64 / sent,
            by_metric: slos.slos.iter().zip(met).map(|((m, _), n)| (*m, n as f64 / sent)).collect(),
            slos,
        }
    }
}

/// What GPUs cost, for cost per token and per request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuCost {
    /// Price of one GPU for one hour.
    pub per_hour: f64,
    /// GPUs behind the served endpoint.
    pub gpus: f64,
}

/// Cost of a run's output at the load it ran.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    pub gpus: f64,
    pub gpu_cost_per_hour: f64,
    pub per_1m_output_tokens: Option<f64>,
    pub per_request: Option<f64>,
}

#[derive(Debug, Clone, Default)]
pub struct RunMetrics {
    pub duration_s: f64,
    pub num_requests: usize,
    pub completed: usize,
    pub failed: usize,
    /// Failed requests per kind (`http_503`, `timeout`, …).
    pub error_counts: BTreeMap<String, usize>,
    /// The first failure's message, to show what went wrong.
    pub first_error: Option<String>,
    /// Prompt tokens of the completed requests, as the client counted them.
    pub total_input: u64,
    /// Prompt tokens as the server reported them in `usage` (none if it never did).
    pub total_input_server: Option<u64>,
    /// Output tokens of the completed requests, from `usage`.
    pub total_output: u64,
    /// The same outputs re-tokenized by the client (a cross-check of `usage`).
    pub total_output_retokenized: u64,
    /// Re-tokenized output length per request, in workload order (0 when failed).
    pub retokenized: Vec<usize>,
    pub request_throughput: f64,
    pub input_throughput: f64,
    pub output_throughput: f64,
    pub total_throughput: f64,
    pub e2e: Distribution,
    pub ttft: Distribution,
    pub tpot: Distribution,
    pub itl: Distribution,
    /// Mean requests in flight: the sum of latencies over the duration.
    pub concurrency: f64,
    /// Most output tokens received in one whole second of the run.
    pub max_output_tokens_per_s: f64,
    /// Exact peak of requests in flight at once.
    pub max_concurrent_requests: usize,
    /// `--goodput`: what met the objectives, as bench_serving reports it.
    pub goodput: Option<GoodputMetrics>,
    pub ttft_from_scheduled: Distribution,
    pub e2e_from_scheduled: Distribution,
    /// How late requests were sent after their scheduled time (waits for a concurrency slot
    /// included).
    pub send_lag: Distribution,
    pub client_cpu: Option<Duration>,
    /// CPU time of the whole client process (every thread: sending, parsing, re-tokenizing,
    /// sampling) from the start of the point to its figures, set by the sweep.
    pub process_cpu: Option<Duration>,
    pub cost: Option<Cost>,
    /// Prompt tokens served from the prefix cache, from `usage` (none if never reported).
    pub total_cached_server: Option<u64>,
    /// `total_cached_server` over the prompt tokens the server counted.
    pub prefix_cache_hit_rate: Option<f64>,
    /// The best hit rate the workload allows ([`crate::prefix_bound`]).
    pub prefix_cache_hit_rate_bound: Option<f64>,
    /// Requests each worker received during the run, from a Switchyard frontend's metrics.
    pub instance_requests: Option<InstanceRequests>,
    /// The busiest worker's requests over the mean per worker (1 is an even spread).
    pub instance_requests_max_over_mean: Option<f64>,
    /// What the machine spent during the run, when sampled.
    pub resources: Option<crate::resources::ResourceSummary>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl RunMetrics {
    pub fn compute(
        output: &RunOutput,
        tokenizer: &TokenCounter,
        goodput: Option<Goodput>,
        cost: Option<GpuCost>,
    ) -> Result<RunMetrics, Error> {
        let records = &output.records;
        let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.succeeded()).collect();
        let counts = tokenizer.count_batch(ok.iter().map(|r| r.text.as_str()).collect())?;
        let mut next_count = counts.iter().copied();
        let retokenized = records
            .iter()
            .map(|r| if r.succeeded() { next_count.next().unwrap_or(0) } else { 0 })
            .collect();
        let dur = output.duration.as_secs_f64().max(f64::MIN_POSITIVE);
        let mut m = RunMetrics {
            duration_s: output.duration.as_secs_f64(),
            num_requests: records.len(),
            completed: ok.len(),
            failed: records.len() - ok.len(),
            retokenized,
            total_output_retokenized: counts.iter().map(|&n| n as u64).sum(),
            client_cpu: output.client_cpu,
            ..RunMetrics::default()
        };
        for r in records {
            if let Some(f) = &r.failure {
                *m.error_counts.entry(f.kind.key()).or_default() += 1;
                m.first_error.get_or_insert_with(|| f.message.clone());
            }
        }
        m.total_input = ok.iter().map(|r| r.prompt_len as u64).sum();
        m.total_input_server =
            ok.iter().map(|r| r.usage_prompt_tokens.map(u64::from)).sum::<Option<u64>>();
        m.total_output = ok.iter().map(|r| r.output_tokens() as u64).sum();
        let cached: Vec<u64> =
            ok.iter().filter_map(|r| r.usage_cached_tokens.map(u64::from)).collect();
        if !cached.is_empty() {
            let cached: u64 = cached.iter().sum();
            let prompt = m.total_input_server.unwrap_or(m.total_input);
            m.total_cached_server = Some(cached);
            m.prefix_cache_hit_rate = (prompt > 0).then(|| cached as f64 / prompt as f64);
        }
        m.request_throughput = m.completed as f64 / dur;
        m.input_throughput = m.total_input as f64 / dur;
        m.output_throughput = m.total_output as f64 / dur;
        m.total_throughput = (m.total_input + m.total_output) as f64 / dur;

        let mut e2e: Vec<f64> = ok.iter().map(|r| ms(r.e2e())).collect();
        m.concurrency = e2e.iter().sum::<f64>() / 1000.0 / dur;
        m.e2e = Distribution::of(&mut e2e);
        m.ttft =
            Distribution::of(&mut ok.iter().filter_map(|r| r.ttft()).map(ms).collect::<Vec<_>>());
        m.tpot =
            Distribution::of(&mut ok.iter().filter_map(|r| r.tpot()).map(ms).collect::<Vec<_>>());
        m.itl = Distribution::of(&mut ok.iter().flat_map(|r| r.itls()).map(ms).collect::<Vec<_>>());
        let from_sched = |r: &&RequestRecord, t: Duration| ms(t.saturating_sub(r.scheduled));
        m.ttft_from_scheduled = Distribution::of(
            &mut ok
                .iter()
                .filter_map(|r| r.chunk_times.first().map(|t| from_sched(r, *t)))
                .collect::<Vec<_>>(),
        );
        m.e2e_from_scheduled =
            Distribution::of(&mut ok.iter().map(|r| from_sched(r, r.end)).collect::<Vec<_>>());
        m.send_lag = Distribution::of(
            &mut records.iter().map(|r| ms(r.sent.saturating_sub(r.scheduled))).collect::<Vec<_>>(),
        );
        m.max_output_tokens_per_s = peak_tokens_per_second(&ok);
        m.max_concurrent_requests = peak_in_flight(records);
        m.goodput = goodput.map(|g| GoodputMetrics::compute(g, records, dur));
        m.cost = cost.map(|c| {
            let run_cost = c.per_hour * c.gpus * output.duration.as_secs_f64() / 3600.0;
            Cost {
                gpus: c.gpus,
                gpu_cost_per_hour: c.per_hour,
                per_1m_output_tokens: (m.total_output > 0)
                    .then(|| run_cost / m.total_output as f64 * 1e6),
                per_request: (m.completed > 0).then(|| run_cost / m.completed as f64),
            }
        });
        Ok(m)
    }

    /// CPU of the client's measuring thread per request, in milliseconds.
    pub fn client_cpu_ms_per_request(&self) -> Option<f64> {
        self.per_request(self.client_cpu?)
    }

    /// CPU of the whole client process per request, in milliseconds.
    pub fn process_cpu_ms_per_request(&self) -> Option<f64> {
        self.per_request(self.process_cpu?)
    }

    fn per_request(&self, cpu: Duration) -> Option<f64> {
        (self.num_requests > 0).then(|| ms(cpu) / self.num_requests as f64)
    }
}

/// Most text chunks (tokens) received within one whole second of the run.
fn peak_tokens_per_second(ok: &[&RequestRecord]) -> f64 {
    let mut per_second: BTreeMap<u64, usize> = BTreeMap::new();
    for r in ok {
        for t in &r.chunk_times {
            *per_second.entry(t.as_secs()).or_default() += 1;
        }
    }
    per_second.values().copied().max().unwrap_or(0) as f64
}

/// The most requests in flight (between send and end) at any instant.
fn peak_in_flight(records: &[RequestRecord]) -> usize {
    let mut events: Vec<(Duration, i32)> = Vec::with_capacity(records.len() * 2);
    for r in records {
        events.push((r.sent, 1));
        events.push((r.end, -1));
    }
    // Ends sort before starts at the same instant: back-to-back requests do not overlap.
    events.sort_unstable();
    let (mut now, mut peak) = (0i32, 0i32);
    for (_, delta) in events {
        now += delta;
        peak = peak.max(now);
    }
    usize::try_from(peak).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Failure, FailureKind};

    fn at(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn record(index: usize, sent: u64, chunks: &[u64], end: u64) -> RequestRecord {
        RequestRecord {
            index,
            prompt_len: 10,
            scheduled: at(sent.saturating_sub(5)),
            sent: at(sent),
            chunk_times: chunks.iter().map(|&c| at(c)).collect(),
            chunk_text_ends: (1..=chunks.len() as u32).collect(),
            text: "x".repeat(chunks.len()),
            end: at(end),
            usage_completion_tokens: Some(chunks.len() as u32),
            usage_prompt_tokens: Some(10),
            usage_cached_tokens: Some(index as u32 * 4),
            ..RequestRecord::default()
        }
    }

    #[test]
    fn figures_of_a_small_run() {
        let mut failed = record(2, 0, &[], 1);
        failed.failure = Some(Failure { kind: FailureKind::Status(503), message: "busy".into() });
        let output = RunOutput {
            records: vec![
                record(0, 0, &[100, 110, 120], 130),
                record(1, 50, &[250, 270], 300),
                failed,
            ],
            duration: Duration::from_secs(1),
            client_cpu: Some(Duration::from_millis(3)),
        };
        let tok = TokenCounter::load("builtin:tiny").unwrap();
        let goodput = Goodput::parse(&["ttft:150", "tpot:20"]).unwrap();
        let cost = GpuCost { per_hour: 3.6, gpus: 2.0 };
        let m = RunMetrics::compute(&output, &tok, goodput, Some(cost)).unwrap();
        assert_eq!((m.completed, m.failed, m.total_input, m.total_output), (2, 1, 20, 5));
        assert_eq!(m.error_counts.get("http_503"), Some(&1));
        assert_eq!((m.ttft.mean, m.ttft.median), (150.0, 150.0));
        assert_eq!(m.itl.median, 10.0);
        // TPOTs: (130−100)/2 = 15 and (250−200)/1 = 50.
        assert_eq!(m.tpot.mean, 32.5);
        assert_eq!(m.e2e.max, 250.0);
        // The first was sent on time (scheduled at 0), the second 5 ms late.
        assert_eq!(m.ttft_from_scheduled.mean, 152.5);
        assert_eq!(m.max_concurrent_requests, 2);
        assert_eq!(m.max_output_tokens_per_s, 5.0);
        // TTFTs 100 and 200 ms against 150; TPOTs 15 and 50 ms against 20: one request meets
        // both, of three sent (one failed).
        let g = m.goodput.as_ref().unwrap();
        assert_eq!(g.request_goodput, 1.0);
        assert!((g.slo_attainment - 1.0 / 3.0).abs() < 1e-12);
        let by: Vec<(&str, f64)> = g.by_metric.iter().map(|(k, v)| (k.name(), *v)).collect();
        assert_eq!(by, [("ttft", 1.0 / 3.0), ("tpot", 1.0 / 3.0)]);
        assert!((m.concurrency - 0.38).abs() < 1e-9);
        assert_eq!(m.client_cpu_ms_per_request(), Some(1.0));
        // 0 + 4 cached of the completed requests' 20 prompt tokens.
        assert_eq!((m.total_cached_server, m.prefix_cache_hit_rate), (Some(4), Some(0.2)));
        // 3.6 $/h × 2 GPUs × 1 s = 0.002 $ for 5 tokens and 2 requests.
        let c = m.cost.unwrap();
        assert!((c.per_1m_output_tokens.unwrap() - 400.0).abs() < 1e-9);
        assert!((c.per_request.unwrap() - 0.001).abs() < 1e-12);
    }
}
