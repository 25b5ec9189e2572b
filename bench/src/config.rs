//! What one benchmark point is run with: the target, the API flavour, the arrival process and
//! the request options. Parsed from flags by the binary, validated here.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::Error;

/// Backend names as sglang.bench_serving spells them, mapped to the OpenAI endpoint each uses.
pub const BACKEND_NAMES: &[(&str, Endpoint)] = &[
    ("sglang-oai", Endpoint::Completions),
    ("vllm", Endpoint::Completions),
    ("lmdeploy", Endpoint::Completions),
    ("openai", Endpoint::Completions),
    ("switchyard", Endpoint::Completions),
    ("sglang-oai-chat", Endpoint::Chat),
    ("vllm-chat", Endpoint::Chat),
    ("lmdeploy-chat", Endpoint::Chat),
    ("openai-chat", Endpoint::Chat),
    ("switchyard-chat", Endpoint::Chat),
];

/// Which OpenAI endpoint requests go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/completions` with `prompt`.
    Completions,
    /// `POST /v1/chat/completions` with `messages`.
    Chat,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Completions => "/v1/completions",
            Endpoint::Chat => "/v1/chat/completions",
        }
    }
}

/// A backend as named on the command line; the name is kept for the JSONL `backend` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub name: String,
    pub endpoint: Endpoint,
}

impl FromStr for Backend {
    type Err = Error;

    fn from_str(name: &str) -> Result<Backend, Error> {
        if let Some((_, endpoint)) = BACKEND_NAMES.iter().find(|(n, _)| *n == name) {
            return Ok(Backend { name: name.to_owned(), endpoint: *endpoint });
        }
        let known: Vec<&str> = BACKEND_NAMES.iter().map(|(n, _)| *n).collect();
        let hint = if name == "sglang" || name == "sglang-native" {
            " (SGLang's native /generate API is not spoken; its OpenAI API is `sglang-oai`)"
        } else {
            ""
        };
        Err(Error::Config(format!("unknown backend {name:?}{hint}; known: {}", known.join(", "))))
    }
}

/// Requests per second of the arrival process; infinite sends everything at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestRate(pub f64);

impl RequestRate {
    pub const INFINITE: RequestRate = RequestRate(f64::INFINITY);

    pub fn is_infinite(self) -> bool {
        self.0.is_infinite()
    }
}

impl FromStr for RequestRate {
    type Err = Error;

    fn from_str(s: &str) -> Result<RequestRate, Error> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("inf") || t.eq_ignore_ascii_case("infinity") {
            return Ok(RequestRate::INFINITE);
        }
        match t.parse::<f64>() {
            Ok(r) if r > 0.0 => Ok(RequestRate(r)),
            _ => Err(Error::Config(format!(
                "--request-rate {s:?}: expected requests per second (> 0) or `inf`"
            ))),
        }
    }
}

impl fmt::Display for RequestRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_infinite() { f.write_str("inf") } else { write!(f, "{}", self.0) }
    }
}

/// One latency a goodput objective bounds (bench_serving's `--goodput` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SloMetric {
    Ttft,
    Tpot,
    E2el,
}

impl SloMetric {
    /// The key as bench_serving writes it (`ttft`, `tpot`, `e2el`).
    pub fn name(self) -> &'static str {
        match self {
            SloMetric::Ttft => "ttft",
            SloMetric::Tpot => "tpot",
            SloMetric::E2el => "e2el",
        }
    }
}

/// Service-level objectives for goodput (`--goodput ttft:MS tpot:MS e2el:MS`), in the order
/// given: bench_serving writes `goodput_slos_ms` and `slo_attainment_by_metric` in that order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Goodput {
    pub slos: Vec<(SloMetric, f64)>,
}

impl Goodput {
    /// Parses `KEY:MS` items, separated by spaces or commas, possibly given as several values.
    /// A key given twice keeps its first place and its last value (a Python dict's way).
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Option<Goodput>, Error> {
        let mut goodput = Goodput::default();
        for item in items.iter().flat_map(|s| {
            s.as_ref()
                .split([' ', ','])
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        }) {
            let bad = || {
                Error::Config(format!("--goodput {item:?}: expected ttft:MS, tpot:MS or e2el:MS"))
            };
            let (key, value) = item.split_once(':').ok_or_else(bad)?;
            let ms: f64 =
                value.parse().ok().filter(|v: &f64| *v > 0.0 && v.is_finite()).ok_or_else(bad)?;
            let metric = match key {
                "ttft" => SloMetric::Ttft,
                "tpot" => SloMetric::Tpot,
                "e2el" => SloMetric::E2el,
                _ => return Err(bad()),
            };
            match goodput.slos.iter_mut().find(|(m, _)| *m == metric) {
                Some(slot) => slot.1 = ms,
                None => goodput.slos.push((metric, ms)),
            }
        }
        Ok((!goodput.slos.is_empty()).then_some(goodput))
    }

    /// The objective on `metric`, if one was given.
    pub fn get(&self, metric: SloMetric) -> Option<f64> {
        self.slos.iter().find(|(m, _)| *m == metric).map(|(_, ms)| *ms)
    }
}

/// Sampling settings sent with every request (bench_serving's `--temperature`, `--top-p`,
/// `--return-logprob`/`--top-logprobs-num`).
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub temperature: f64,
    /// Sent only when below 1 (1 is every server's default).
    pub top_p: f64,
    /// `--return-logprob`: the top logprobs asked for per token (0: the sampled token's only).
    pub logprobs: Option<u32>,
}

impl Default for Sampling {
    /// Greedy, as bench_serving samples.
    fn default() -> Sampling {
        Sampling { temperature: 0.0, top_p: 1.0, logprobs: None }
    }
}

/// Everything that shapes the traffic of one benchmark point, besides the dataset.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// `http://host:port`, no trailing slash.
    pub base_url: String,
    pub backend: Backend,
    /// The `model` field of every request.
    pub model: String,
    pub request_rate: RequestRate,
    /// Gamma shape of the inter-arrival times: 1 is Poisson, below 1 burstier, above smoother.
    pub burstiness: f64,
    pub max_concurrency: Option<usize>,
    pub warmup_requests: usize,
    pub seed: u64,
    pub stream: bool,
    pub ignore_eos: bool,
    /// Merged into every request body (overrides the generated fields).
    pub extra_request_body: serde_json::Map<String, serde_json::Value>,
    /// Sent as `Authorization: Bearer …` when set (bench_serving reads `OPENAI_API_KEY`).
    pub api_key: Option<String>,
    /// Limit of one request, connect to last byte.
    pub request_timeout: Duration,
    pub goodput: Option<Goodput>,
    pub sampling: Sampling,
    /// Extra headers of every request (`--header KEY=VALUE`).
    pub headers: Vec<(String, String)>,
    /// `--lora-name`: each request names one of these adapters (drawn uniformly) as its model.
    pub lora_names: Vec<String>,
    /// `--flush-cache`: ask the server to empty its prefix cache after the warmup.
    pub flush_cache: bool,
    /// Show a progress bar (the binary decides: only when stdout is a terminal).
    pub progress: bool,
}

impl RunConfig {
    /// bench_serving's defaults against `base_url` (the model is asked of the server unless set).
    pub fn new(base_url: &str, backend: Backend) -> RunConfig {
        RunConfig {
            base_url: base_url.to_owned(),
            backend,
            model: String::new(),
            request_rate: RequestRate::INFINITE,
            burstiness: 1.0,
            max_concurrency: None,
            warmup_requests: 1,
            seed: 1,
            stream: true,
            ignore_eos: true,
            extra_request_body: serde_json::Map::new(),
            api_key: None,
            request_timeout: Duration::from_secs(600),
            goodput: None,
            sampling: Sampling::default(),
            headers: Vec::new(),
            lora_names: Vec::new(),
            flush_cache: false,
            progress: false,
        }
    }

    /// Checks what flag parsing cannot.
    pub fn validate(&self) -> Result<(), Error> {
        if !self.base_url.starts_with("http://") {
            return Err(Error::Config(format!(
                "--base-url {:?}: only http:// is spoken (put a TLS terminator in front for https)",
                self.base_url
            )));
        }
        if !(self.burstiness > 0.0 && self.burstiness.is_finite()) {
            return Err(Error::Config(format!("--burstiness {} must be > 0", self.burstiness)));
        }
        if !(self.sampling.temperature >= 0.0 && self.sampling.temperature.is_finite()) {
            return Err(Error::Config(format!(
                "--temperature {} must be >= 0",
                self.sampling.temperature
            )));
        }
        if !(self.sampling.top_p > 0.0 && self.sampling.top_p <= 1.0) {
            return Err(Error::Config(format!(
                "--top-p {} must be within (0, 1]",
                self.sampling.top_p
            )));
        }
        if self.max_concurrency == Some(0) {
            return Err(Error::Config("--max-concurrency must be at least 1".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_map_to_endpoints_and_unknown_ones_are_named() {
        assert_eq!("vllm".parse::<Backend>().unwrap().endpoint, Endpoint::Completions);
        assert_eq!("sglang-oai-chat".parse::<Backend>().unwrap().endpoint, Endpoint::Chat);
        let err = "sglang".parse::<Backend>().unwrap_err().to_string();
        assert!(err.contains("sglang-oai"), "{err}");
    }

    #[test]
    fn rates_and_goodput_parse() {
        assert!("inf".parse::<RequestRate>().unwrap().is_infinite());
        assert_eq!("2.5".parse::<RequestRate>().unwrap(), RequestRate(2.5));
        assert!("0".parse::<RequestRate>().is_err());
        let g = Goodput::parse(&["e2el:3000", "ttft:100,tpot:20", "e2el:2500"]).unwrap().unwrap();
        let order: Vec<&str> = g.slos.iter().map(|(m, _)| m.name()).collect();
        assert_eq!(order, ["e2el", "ttft", "tpot"]);
        assert_eq!((g.get(SloMetric::E2el), g.get(SloMetric::Tpot)), (Some(2500.0), Some(20.0)));
        assert_eq!(Goodput::parse::<&str>(&[]).unwrap(), None);
        assert!(Goodput::parse(&["ttft=1"]).is_err());
        assert!(Goodput::parse(&["ttft:0"]).is_err());
    }
}
