//! `--sample-url`: Prometheus endpoints (a DCGM exporter, the workers' or an engine's
//! `/metrics`) scraped at every sample, keeping the series of the chosen metric names.
//! Counters (`…_total`) are kept as per-second rates, everything else as read.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Points;
use crate::client::HttpClient;

/// One scrape may take this long before it counts as failed.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// The metric names kept when `--sample-metric` is not given: a DCGM exporter's GPU
/// utilization, framebuffer memory used and power draw.
pub const DEFAULT_METRICS: &[&str] =
    &["DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_POWER_USAGE"];

/// An endpoint and the metric names to keep from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// `http://host:port/path` (`/metrics` when no path is given).
    pub url: String,
    pub metrics: Vec<String>,
}

impl Source {
    pub fn new(url: &str, metrics: &[String]) -> Source {
        let url = url.trim_end_matches('/');
        let has_path = url.strip_prefix("http://").is_some_and(|rest| rest.contains('/'));
        let url = if has_path { url.to_owned() } else { format!("{url}/metrics") };
        let metrics = if metrics.is_empty() {
            DEFAULT_METRICS.iter().map(|m| (*m).to_owned()).collect()
        } else {
            metrics.to_vec()
        };
        Source { url, metrics }
    }
}

/// One sample line of Prometheus' text exposition: name, the labels as written, value.
pub fn parse_samples(text: &str) -> impl Iterator<Item = (&str, &str, f64)> {
    text.lines().filter_map(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(open) => {
                let close = line.rfind('}')?;
                (&line[..open], &line[open + 1..close], &line[close + 1..])
            }
            None => {
                let (name, rest) = line.split_once(char::is_whitespace)?;
                (name, "", rest)
            }
        };
        // A timestamp may follow the value.
        let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
        Some((name.trim(), labels, value))
    })
}

/// The value of label `name` in a label list as written (`a="x",b="y"`).
pub fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key.trim() == name).then(|| value.trim().trim_matches('"'))
    })
}

struct Target {
    source: Source,
    client: Option<HttpClient>,
    /// Where the series' names say they come from (`host:port`).
    origin: String,
    error: Option<String>,
}

pub(super) struct Scraper {
    targets: Vec<Target>,
    series: BTreeMap<String, Points>,
    /// Previous (seconds, value) of each counter, for rates.
    counters: BTreeMap<String, (f64, f64)>,
}

impl Scraper {
    pub async fn new(sources: &[Source]) -> Scraper {
        let mut targets = Vec::new();
        for source in sources {
            let origin = source
                .url
                .strip_prefix("http://")
                .and_then(|rest| rest.split('/').next())
                .unwrap_or(&source.url)
                .to_owned();
            let (client, error) = match HttpClient::new(&source.url, None).await {
                Ok(client) => (Some(client), None),
                Err(e) => (None, Some(format!("{}: {e}", source.url))),
            };
            targets.push(Target { source: source.clone(), client, origin, error });
        }
        Scraper { targets, series: BTreeMap::new(), counters: BTreeMap::new() }
    }

    pub async fn scrape(&mut self, t: f64) {
        for target in &mut self.targets {
            let Some(client) = &target.client else { continue };
            let body = match client.get("", SCRAPE_TIMEOUT).await {
                Ok(body) => body,
                Err(e) => {
                    target.error.get_or_insert_with(|| format!("{}: {e}", target.source.url));
                    continue;
                }
            };
            let text = String::from_utf8_lossy(&body);
            for (name, labels, value) in parse_samples(&text) {
                if !target.source.metrics.iter().any(|m| m == name) {
                    continue;
                }
                let key = if labels.is_empty() {
                    format!("{name} @ {}", target.origin)
                } else {
                    format!("{name}{{{labels}}} @ {}", target.origin)
                };
                let point = if name.ends_with("_total") {
                    let previous = self.counters.insert(key.clone(), (t, value));
                    match previous {
                        Some((t0, v0)) if t > t0 => Some((t, (value - v0).max(0.0) / (t - t0))),
                        _ => None,
                    }
                } else {
                    Some((t, value))
                };
                if let Some(point) = point {
                    self.series.entry(key).or_default().push(point);
                }
            }
        }
    }

    /// The series, and one line per endpoint that failed.
    pub fn into_series(self) -> (Vec<(String, Points)>, Vec<String>) {
        let errors = self.targets.iter().filter_map(|t| t.error.clone()).collect();
        (self.series.into_iter().collect(), errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_lines_are_read() {
        let text = "# HELP x y\n# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n\
            DCGM_FI_DEV_GPU_UTIL{gpu=\"0\",UUID=\"GPU-1\"} 87 1700000000\n\
            plain_total 12.5\n\nbad line\n";
        let samples: Vec<_> = parse_samples(text).collect();
        assert_eq!(
            samples,
            [("DCGM_FI_DEV_GPU_UTIL", "gpu=\"0\",UUID=\"GPU-1\"", 87.0), ("plain_total", "", 12.5)]
        );
        assert_eq!(label(samples[0].1, "gpu"), Some("0"));
        assert_eq!(Source::new("http://h:9400", &[]).url, "http://h:9400/metrics");
        assert_eq!(Source::new("http://h:1/m", &["a".into()]).metrics, ["a"]);
    }
}
