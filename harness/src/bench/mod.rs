//! `harness bench ...`: throughput of the pipeline's parts, each next to a raw baseline
//! measured in the same run on the same machine, so figures read as a share of the limit.

pub mod sink;
pub mod verify;

/// Peak resident set size of this process so far, in MiB (`VmHWM`); None where /proc
/// does not tell (never a 0 that reads as measured).
pub fn peak_rss_mb() -> Option<f64> {
    let kb = procfs::process::Process::myself().ok()?.status().ok()?.vmhwm?;
    Some(kb as f64 / 1024.0)
}
