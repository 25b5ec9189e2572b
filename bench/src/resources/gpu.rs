//! GPU utilization, memory and power through NVML, loaded at run time (`libnvidia-ml.so.1`,
//! the driver's library), so the binary builds and runs on machines without a GPU or driver;
//! there the probe says so once and no GPU series are kept.

use nvml_wrapper::Nvml;

use super::{GpuSeries, Points};

/// NVML, opened once per invocation (opening loads the library and is not cheap).
pub struct GpuProbe {
    nvml: Option<Nvml>,
    /// Why there is no GPU to sample, when there is none.
    note: Option<String>,
}

impl std::fmt::Debug for GpuProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuProbe").field("note", &self.note).finish_non_exhaustive()
    }
}

impl GpuProbe {
    /// Opens NVML; `None` of GPUs is not an error, only a note.
    pub fn open() -> GpuProbe {
        // The versioned name is what a driver installs; the bare one comes with dev packages.
        let mut last_error = String::new();
        for lib in ["libnvidia-ml.so.1", "libnvidia-ml.so"] {
            match Nvml::builder().lib_path(std::ffi::OsStr::new(lib)).init() {
                Ok(nvml) => {
                    let count = nvml.device_count().unwrap_or(0);
                    let note = (count == 0).then(|| "NVML reports no GPU".to_owned());
                    return GpuProbe { nvml: (count > 0).then_some(nvml), note };
                }
                Err(e) => last_error = e.to_string(),
            }
        }
        GpuProbe { nvml: None, note: Some(format!("no NVIDIA GPU found (NVML: {last_error})")) }
    }

    /// A probe that samples no GPU (for tests, and `--sample-interval-ms 0`-like uses).
    pub fn disabled(note: &str) -> GpuProbe {
        GpuProbe { nvml: None, note: Some(note.to_owned()) }
    }

    /// Why GPUs are not sampled, if they are not.
    pub fn note(&self) -> Option<String> {
        self.note.clone()
    }

    pub(super) fn sampler(&self) -> Option<GpuSampler<'_>> {
        let nvml = self.nvml.as_ref()?;
        let count = nvml.device_count().ok()?;
        let devices = (0..count)
            .filter_map(|i| {
                let device = nvml.device_by_index(i).ok()?;
                let name = device.name().unwrap_or_else(|_| format!("GPU {i}"));
                Some((device, GpuSeries { index: i, name, ..GpuSeries::default() }))
            })
            .collect();
        Some(GpuSampler { devices })
    }
}

pub(super) struct GpuSampler<'n> {
    devices: Vec<(nvml_wrapper::Device<'n>, GpuSeries)>,
}

impl GpuSampler<'_> {
    pub fn sample(&mut self, t: f64) {
        for (device, series) in &mut self.devices {
            let push = |points: &mut Points, v: Option<f64>| {
                if let Some(v) = v {
                    points.push((t, v));
                }
            };
            push(&mut series.util_pct, device.utilization_rates().ok().map(|u| f64::from(u.gpu)));
            let mem = device.memory_info().ok().map(|m| m.used as f64 / (1024.0 * 1024.0));
            push(&mut series.mem_used_mb, mem);
            // NVML reports milliwatts.
            push(&mut series.power_w, device.power_usage().ok().map(|mw| f64::from(mw) / 1000.0));
        }
    }

    pub fn into_series(self) -> Vec<GpuSeries> {
        self.devices.into_iter().map(|(_, s)| s).collect()
    }
}
