//! CPU and memory of a service, from /proc: summed over its process group (postgres'
//! backends, the JVM's threads are one process).

use std::collections::HashMap;

/// Clock ticks per second for /proc's utime/stime (USER_HZ, 100 on Linux).
fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 { v as f64 } else { 100.0 }
}

/// (cpu ticks, rss bytes) of every process whose process group is `pgid`.
pub fn group_usage(pgid: i32) -> (u64, u64) {
    let page = 4096u64;
    let mut ticks = 0;
    let mut rss = 0;
    let Ok(dir) = std::fs::read_dir("/proc") else { return (0, 0) };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After the command: state(0) ppid(1) pgrp(2) ... utime(11) stime(12) ... rss(21)
        if fields.get(2).and_then(|p| p.parse::<i32>().ok()) != Some(pgid) {
            continue;
        }
        let num = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        ticks += num(11) + num(12);
        rss += num(21) * page;
    }
    (ticks, rss)
}

/// CPU percent (of one core) between successive calls, per service.
#[derive(Default)]
pub struct CpuMeter {
    last: HashMap<String, (u64, std::time::Instant)>,
}

impl CpuMeter {
    /// Returns (cpu percent, rss MiB) of the group, or None on the first call for it.
    pub fn sample(&mut self, service: &str, pgid: i32) -> (Option<f64>, f64) {
        let (ticks, rss) = group_usage(pgid);
        let now = std::time::Instant::now();
        let cpu = self.last.insert(service.to_string(), (ticks, now)).map(|(prev, at)| {
            let secs = now.duration_since(at).as_secs_f64().max(1e-3);
            ticks.saturating_sub(prev) as f64 / ticks_per_sec() / secs * 100.0
        });
        (cpu, rss as f64 / (1024.0 * 1024.0))
    }
}
