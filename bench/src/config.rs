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

/// Service-level objectives for goodput (vLLM's `--goodput ttft:MS tpot:MS e2el:MS`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Goodput {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub e2el_ms: Option<f64>,
}

impl Goodput {
    /// Parses `KEY:MS` items, separated by spaces or commas, possibly given as several values.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Option<Goodput>, Error> {
        let mut goodput = Goodput::default();
        let mut any = false;
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
            let ms: f64 = value.parse().ok().filter(|v: &f64| *v >= 0.0).ok_or_else(bad)?;
            match key {
                "ttft" => goodput.ttft_ms = Some(ms),
                "tpot" => goodput.tpot_ms = Some(ms),
                "e2el" => goodput.e2el_ms = Some(ms),
                _ => return Err(bad()),
            }
            any = true;
        }
        Ok(any.then_some(goodput))
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
        let g = Goodput::parse(&["ttft:100", "tpot:20,e2el:3000"]).unwrap().unwrap();
        assert_eq!((g.ttft_ms, g.tpot_ms, g.e2el_ms), (Some(100.0), Some(20.0), Some(3000.0)));
        assert_eq!(Goodput::parse::<&str>(&[]).unwrap(), None);
        assert!(Goodput::parse(&["ttft=1"]).is_err());
    }
}
