//! A run's resource use in a few numbers: mean and peak per process, of the host, per GPU and
//! per Prometheus series — the `resources` object of the result line and the terminal rows.

use serde_json::{Map, Value, json};

use super::{ResourceRun, mean_peak};

/// The summary of one [`ResourceRun`], kept as the JSON object the result line carries.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceSummary {
    pub json: Value,
    rows: Vec<(String, String)>,
}

fn round(v: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (v * f).round() / f
}

/// `{"<name>_mean": …, "<name>_peak": …}` entries of a series, when it has points.
fn stats(map: &mut Map<String, Value>, name: &str, points: &super::Points) -> Option<(f64, f64)> {
    let (mean, peak) = mean_peak(points)?;
    map.insert(format!("{name}_mean"), json!(round(mean, 2)));
    map.insert(format!("{name}_peak"), json!(round(peak, 2)));
    Some((mean, peak))
}

impl ResourceSummary {
    pub fn of(run: &ResourceRun) -> ResourceSummary {
        let mut rows = Vec::new();
        let mut processes = Map::new();
        for p in &run.processes {
            let mut m = Map::new();
            m.insert("pid".into(), json!(p.pid));
            let cpu = stats(&mut m, "cpu_pct", &p.cpu_pct);
            let rss = stats(&mut m, "rss_mb", &p.rss_mb);
            if let Some(gone) = &p.gone {
                m.insert("note".into(), json!(gone));
            }
            if let (Some(cpu), Some(rss)) = (cpu, rss) {
                rows.push((
                    format!("{} CPU % / RSS MB:", p.label),
                    format!("{:.1} / {:.1} %, {:.0} / {:.0} MB", cpu.0, cpu.1, rss.0, rss.1),
                ));
            }
            processes.insert(p.label.clone(), Value::Object(m));
        }
        let mut host = Map::new();
        host.insert("cpus".into(), json!(run.host_cpus));
        host.insert("mem_total_mb".into(), json!(round(run.host_mem_total_mb, 0)));
        let cpu = stats(&mut host, "cpu_pct", &run.host_cpu_pct);
        let mem = stats(&mut host, "mem_used_mb", &run.host_mem_used_mb);
        if let (Some(cpu), Some(mem)) = (cpu, mem) {
            rows.push((
                "Host CPU % / memory used MB:".into(),
                format!("{:.1} / {:.1} %, {:.0} / {:.0} MB", cpu.0, cpu.1, mem.0, mem.1),
            ));
        }
        let mut gpus = Map::new();
        for g in &run.gpus {
            let mut m = Map::new();
            m.insert("name".into(), json!(g.name));
            let util = stats(&mut m, "util_pct", &g.util_pct);
            let mem = stats(&mut m, "mem_used_mb", &g.mem_used_mb);
            let power = stats(&mut m, "power_w", &g.power_w);
            if let (Some(u), Some(mm), Some(p)) = (util, mem, power) {
                rows.push((
                    format!("GPU {} util % / MB / W:", g.index),
                    format!(
                        "{:.0}/{:.0} %, {:.0}/{:.0} MB, {:.0}/{:.0} W",
                        u.0, u.1, mm.0, mm.1, p.0, p.1
                    ),
                ));
            }
            gpus.insert(g.index.to_string(), Value::Object(m));
        }
        if let Some(note) = &run.gpu_note {
            rows.push(("GPUs:".into(), note.clone()));
        }
        let mut prometheus = Map::new();
        for (name, points) in &run.prometheus {
            let mut m = Map::new();
            if let Some((mean, peak)) = stats(&mut m, "value", points) {
                rows.push((format!("{name}:"), format!("{mean:.2} / {peak:.2}")));
            }
            prometheus.insert(name.clone(), Value::Object(m));
        }
        for error in &run.prometheus_errors {
            rows.push(("Scrape failed:".into(), error.clone()));
        }
        let json = json!({
            "interval_ms": u64::try_from(run.interval.as_millis()).unwrap_or(u64::MAX),
            "samples": run.samples,
            "processes": processes,
            "host": host,
            "gpus": gpus,
            "gpu_note": run.gpu_note,
            "prometheus": prometheus,
            "prometheus_errors": run.prometheus_errors,
        });
        ResourceSummary { json, rows }
    }

    /// Label and value rows for the terminal summary.
    pub fn summary_rows(&self) -> Vec<(String, String)> {
        self.rows.clone()
    }
}

/// The highest `<stat>` of any process, GPU or the host in a line's `resources` object, e.g.
/// `peak(resources, "processes", "cpu_pct_peak")`.
pub fn peak_of(resources: &Value, group: &str, stat: &str) -> Option<f64> {
    match &resources[group] {
        Value::Object(items) if group == "host" => items.get(stat).and_then(Value::as_f64),
        Value::Object(items) => items
            .values()
            .filter_map(|item| item.get(stat).and_then(Value::as_f64))
            .reduce(f64::max),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{GpuSeries, ProcessSeries};
    use super::*;

    #[test]
    fn summary_has_mean_and_peak_per_process_and_gpu() {
        let run = ResourceRun {
            samples: 3,
            processes: vec![ProcessSeries {
                label: "frontend".into(),
                pid: 7,
                cpu_pct: vec![(1.0, 10.0), (2.0, 30.0)],
                rss_mb: vec![(0.0, 50.0), (1.0, 60.0), (2.0, 70.0)],
                gone: None,
            }],
            gpus: vec![GpuSeries {
                index: 0,
                name: "H200".into(),
                util_pct: vec![(1.0, 90.0)],
                mem_used_mb: vec![(1.0, 1000.0)],
                power_w: vec![(1.0, 400.0)],
            }],
            host_cpu_pct: vec![(1.0, 50.0)],
            host_mem_used_mb: vec![(1.0, 4000.0)],
            ..ResourceRun::default()
        };
        let s = ResourceSummary::of(&run);
        assert_eq!(s.json["processes"]["frontend"]["cpu_pct_mean"], 20.0);
        assert_eq!(s.json["processes"]["frontend"]["rss_mb_peak"], 70.0);
        assert_eq!(s.json["gpus"]["0"]["power_w_peak"], 400.0);
        assert_eq!(peak_of(&s.json, "processes", "cpu_pct_peak"), Some(30.0));
        assert_eq!(peak_of(&s.json, "host", "cpu_pct_peak"), Some(50.0));
        assert_eq!(peak_of(&s.json, "gpus", "util_pct_peak"), Some(90.0));
        assert!(s.summary_rows()[0].0.starts_with("frontend CPU"));
    }
}
