//! What a Switchyard frontend says about where it sent requests: the
//! `switchyard_frontend_instance_requests_total` counters of its `/metrics`, read before and
//! after a run so that the run's share of each worker shows how evenly the router spread it.
//! Other servers have no such counters; their runs simply report none.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::client::HttpClient;
use crate::config::RunConfig;
use crate::resources::prometheus::{label, parse_samples};

const METRIC: &str = "switchyard_frontend_instance_requests_total";
const LIMIT: Duration = Duration::from_secs(5);

/// Requests each instance accepted, by instance id (models summed).
pub type InstanceRequests = BTreeMap<String, u64>;

/// The counters of `run`'s server now, or `None` when it exposes none.
pub(crate) async fn instance_requests(run: &RunConfig) -> Option<InstanceRequests> {
    let client = HttpClient::new(&run.base_url, run.api_key.as_deref()).await.ok()?;
    let body = client.get("/metrics", LIMIT).await;
    client.close().await;
    let body = body.ok()?;
    let text = std::str::from_utf8(&body).ok()?;
    let counts = parse(text);
    (!counts.is_empty()).then_some(counts)
}

/// `after − before` per instance; instances that received nothing in between are left out.
pub fn delta(before: &InstanceRequests, after: &InstanceRequests) -> InstanceRequests {
    after
        .iter()
        .map(|(id, n)| (id.clone(), n.saturating_sub(before.get(id).copied().unwrap_or(0))))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// The largest count over the mean of `counts` over `instances` instances (those that got
/// nothing count too): 1 is a perfect spread.
pub fn max_over_mean(counts: &InstanceRequests, instances: usize) -> Option<f64> {
    let total: u64 = counts.values().sum();
    let max = counts.values().copied().max()?;
    let n = instances.max(counts.len());
    (total > 0).then(|| max as f64 * n as f64 / total as f64)
}

/// Reads the metric's samples out of Prometheus text exposition.
fn parse(text: &str) -> InstanceRequests {
    let mut out = InstanceRequests::new();
    for (name, labels, value) in parse_samples(text) {
        if name != METRIC {
            continue;
        }
        let Some(instance) = label(labels, "instance") else {
            continue;
        };
        // Counters print as floats; the counts are whole.
        if value.is_finite() && value >= 0.0 {
            *out.entry(instance.to_owned()).or_default() += value as u64;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_per_instance_and_differenced() {
        let text = "# TYPE switchyard_frontend_instance_requests_total counter\n\
            switchyard_frontend_instance_requests_total{model=\"m\",instance=\"a\"} 10\n\
            switchyard_frontend_instance_requests_total{model=\"n\",instance=\"a\"} 2\n\
            switchyard_frontend_instance_requests_total{model=\"m\",instance=\"b\"} 3\n\
            switchyard_frontend_requests_total{model=\"m\"} 15\n";
        let before = parse(text);
        assert_eq!(before, InstanceRequests::from([("a".into(), 12), ("b".into(), 3)]));
        let after = InstanceRequests::from([("a".into(), 20), ("b".into(), 3), ("c".into(), 4)]);
        let d = delta(&before, &after);
        assert_eq!(d, InstanceRequests::from([("a".into(), 8), ("c".into(), 4)]));
        // 8 of 12 over 3 instances: the mean is 4.
        assert_eq!(max_over_mean(&d, 3), Some(2.0));
        assert_eq!(max_over_mean(&InstanceRequests::new(), 3), None);
    }
}
