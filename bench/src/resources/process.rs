//! CPU and memory of processes and of the host, read from `/proc` (Linux). CPU is a rate, so
//! each series starts at its second sample; a process that exits ends its series there.

use procfs::process::Process;
use procfs::{Current, CurrentSI, KernelStats, Meminfo};

use super::{Points, ProcessSeries};

/// A process to follow: its PID and the label it is shown under (`frontend`, `worker-0`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub label: String,
    pub pid: u32,
}

impl Watched {
    pub fn new(label: impl Into<String>, pid: u32) -> Watched {
        Watched { label: label.into(), pid }
    }
}

const MB: f64 = 1024.0 * 1024.0;

struct Followed {
    series: ProcessSeries,
    process: Option<Process>,
    /// (seconds, CPU ticks) of the previous sample.
    last: Option<(f64, u64)>,
}

pub(super) struct ProcessSampler {
    followed: Vec<Followed>,
    ticks_per_s: f64,
    page_bytes: f64,
}

impl ProcessSampler {
    pub fn new(watched: &[Watched]) -> ProcessSampler {
        let followed = watched
            .iter()
            .map(|w| {
                let process = i32::try_from(w.pid).ok().and_then(|pid| Process::new(pid).ok());
                let gone = process.is_none().then(|| format!("no process {}", w.pid));
                Followed {
                    series: ProcessSeries {
                        label: w.label.clone(),
                        pid: w.pid,
                        gone,
                        ..ProcessSeries::default()
                    },
                    process,
                    last: None,
                }
            })
            .collect();
        ProcessSampler {
            followed,
            ticks_per_s: procfs::ticks_per_second() as f64,
            page_bytes: procfs::page_size() as f64,
        }
    }

    pub fn sample(&mut self, t: f64) {
        for f in &mut self.followed {
            let Some(process) = &f.process else { continue };
            let stat = match process.stat() {
                Ok(stat) => stat,
                Err(e) => {
                    f.series.gone = Some(format!("stopped being readable at {t:.1} s: {e}"));
                    f.process = None;
                    continue;
                }
            };
            let ticks = stat.utime + stat.stime;
            if let Some((t_prev, ticks_prev)) = f.last
                && t > t_prev
            {
                let cpu_s = ticks.saturating_sub(ticks_prev) as f64 / self.ticks_per_s;
                f.series.cpu_pct.push((t, cpu_s / (t - t_prev) * 100.0));
            }
            f.last = Some((t, ticks));
            f.series.rss_mb.push((t, stat.rss as f64 * self.page_bytes / MB));
        }
    }

    pub fn into_series(self) -> Vec<ProcessSeries> {
        self.followed.into_iter().map(|f| f.series).collect()
    }
}

/// The host's CPU (all cores, percent of the whole machine) and memory in use.
pub(super) struct HostSampler {
    /// (busy, total) ticks of the previous sample.
    last: Option<(u64, u64)>,
    cpus: usize,
    mem_total_mb: f64,
}

impl HostSampler {
    pub fn new() -> HostSampler {
        let cpus = KernelStats::current().map(|k| k.cpu_time.len()).unwrap_or(0);
        let mem_total_mb = Meminfo::current().map(|m| m.mem_total as f64 / MB).unwrap_or(0.0);
        HostSampler { last: None, cpus, mem_total_mb }
    }

    pub fn cpus(&self) -> usize {
        self.cpus
    }

    pub fn mem_total_mb(&self) -> f64 {
        self.mem_total_mb
    }

    pub fn sample(&mut self, t: f64, cpu: &mut Points, mem: &mut Points) {
        if let Ok(stats) = KernelStats::current() {
            let c = &stats.total;
            let idle = c.idle + c.iowait.unwrap_or(0);
            let total = c.user
                + c.nice
                + c.system
                + idle
                + c.irq.unwrap_or(0)
                + c.softirq.unwrap_or(0)
                + c.steal.unwrap_or(0);
            let busy = total - idle;
            if let Some((busy_prev, total_prev)) = self.last
                && total > total_prev
            {
                let pct =
                    busy.saturating_sub(busy_prev) as f64 / (total - total_prev) as f64 * 100.0;
                cpu.push((t, pct));
            }
            self.last = Some((busy, total));
        }
        if let Ok(m) = Meminfo::current() {
            let available = m.mem_available.unwrap_or(m.mem_free + m.cached);
            mem.push((t, m.mem_total.saturating_sub(available) as f64 / MB));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_and_host_are_sampled() {
        let mut procs = ProcessSampler::new(&[
            Watched::new("me", std::process::id()),
            Watched::new("nobody", u32::MAX - 1),
        ]);
        let mut host = HostSampler::new();
        let (mut cpu, mut mem) = (Points::new(), Points::new());
        for i in 0..3 {
            // Some work, so that CPU time moves.
            let mut x = 0u64;
            for k in 0..2_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(k);
            }
            std::hint::black_box(x);
            std::thread::sleep(std::time::Duration::from_millis(20));
            procs.sample(f64::from(i) * 0.05 + 0.05);
            host.sample(f64::from(i) * 0.05 + 0.05, &mut cpu, &mut mem);
        }
        let series = procs.into_series();
        assert_eq!(series[0].rss_mb.len(), 3);
        assert_eq!(series[0].cpu_pct.len(), 2);
        assert!(series[0].rss_mb[0].1 > 1.0, "{:?}", series[0].rss_mb);
        assert!(series[1].gone.is_some() && series[1].rss_mb.is_empty());
        assert!(host.cpus() >= 1 && host.mem_total_mb() > 100.0);
        assert_eq!((cpu.len(), mem.len()), (2, 3));
        assert!(mem[0].1 > 1.0 && mem[0].1 < host.mem_total_mb());
    }
}
