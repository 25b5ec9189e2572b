//! GPU inventory: the GPUs this worker's process sees (CUDA ordinals, so only those that
//! `CUDA_VISIBLE_DEVICES` / `NVIDIA_VISIBLE_DEVICES` select), with name, UUID and memory, for
//! the instance record and the logs.
//!
//! The CUDA driver is loaded at run time (cudarc's dynamic loading), so the binary builds and
//! runs where no CUDA is installed; with no driver or no GPU the inventory is empty and says
//! why, once. This is the one module that calls C: cudarc's driver calls are `unsafe`.
#![allow(unsafe_code)]

use cudarc::driver::{result, sys};
use switchyard_proto::GpuInfo;

/// What the worker found.
#[derive(Debug, Clone, Default)]
pub struct GpuInventory {
    pub gpus: Vec<GpuInfo>,
    /// Why there are none (no driver, no device, a driver error), when there are none.
    pub note: Option<String>,
}

impl GpuInventory {
    /// Asks the CUDA driver, if there is one; never panics.
    pub fn probe() -> GpuInventory {
        match std::panic::catch_unwind(probe_driver) {
            Ok(Ok(gpus)) if gpus.is_empty() => {
                GpuInventory { gpus, note: Some("the CUDA driver reports no GPU".into()) }
            }
            Ok(Ok(gpus)) => GpuInventory { gpus, note: None },
            Ok(Err(note)) => GpuInventory { gpus: Vec::new(), note: Some(note) },
            Err(_) => GpuInventory {
                gpus: Vec::new(),
                note: Some("the CUDA driver failed while listing GPUs".into()),
            },
        }
    }
}

fn probe_driver() -> Result<Vec<GpuInfo>, String> {
    // SAFETY: only tries to open the library by name; nothing is called through it.
    if !unsafe { sys::is_culib_present() } {
        return Err("no CUDA driver (libcuda) found".into());
    }
    result::init().map_err(|e| format!("the CUDA driver did not initialise: {e:?}"))?;
    let count = result::device::get_count().map_err(|e| format!("counting GPUs: {e:?}"))?;
    (0..count).map(device).collect()
}

fn device(ordinal: i32) -> Result<GpuInfo, String> {
    let err = |what: &str, e: result::DriverError| format!("GPU {ordinal}: {what}: {e:?}");
    let dev = result::device::get(ordinal).map_err(|e| err("opening", e))?;
    let name = result::device::get_name(dev).map_err(|e| err("name", e))?;
    // SAFETY: `dev` is a device handle the driver just returned.
    let total = unsafe { result::device::total_mem(dev) }.map_err(|e| err("memory", e))?;
    let uuid = result::device::get_uuid(dev).map(|u| format_uuid(&u.bytes)).unwrap_or_default();
    Ok(GpuInfo {
        index: u32::try_from(ordinal).unwrap_or(0),
        name,
        uuid,
        memory_total_bytes: total as u64,
        memory_free_bytes: free_memory(dev).unwrap_or(0) as u64,
    })
}

/// Free memory needs a context: the device's primary one, retained only for the query.
fn free_memory(dev: sys::CUdevice) -> Option<usize> {
    // SAFETY: the primary context is retained and released around the one query that uses it,
    // on this thread.
    unsafe {
        let ctx = result::primary_ctx::retain(dev).ok()?;
        let free = result::ctx::set_current(ctx).ok().and_then(|()| result::mem_get_info().ok());
        let _ = result::primary_ctx::release(dev);
        free.map(|(free, _total)| free)
    }
}

/// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, as `nvidia-smi -L` prints it.
fn format_uuid(bytes: &[std::ffi::c_char; 16]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{:02x}", *b as u8)).collect();
    format!("GPU-{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probing_never_panics_and_explains_an_empty_inventory() {
        let inventory = GpuInventory::probe();
        assert!(inventory.gpus.is_empty() == inventory.note.is_some(), "{inventory:?}");
    }

    #[test]
    fn uuids_print_as_nvidia_smi_does() {
        let bytes = [0x12u8, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 1, 2, 3, 4, 5, 6, 7, 8]
            .map(|b| b as std::ffi::c_char);
        assert_eq!(format_uuid(&bytes), "GPU-12345678-9abc-def0-0102-030405060708");
    }
}
