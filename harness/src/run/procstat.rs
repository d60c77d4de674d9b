//! CPU and memory of a service, from /proc: every process of the service counts, i.e. its
//! process group *and* every descendant of it. PostgreSQL's backends call `setsid()` (each
//! is its own process group), so a group-only sum sees the postmaster alone and reads ~0%.
//! The CPU of a second is the sum of per-process tick deltas, so a restarted service (new
//! pids) is followed as soon as the caller passes its new leader pid.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// Clock ticks per second for /proc's utime/stime (USER_HZ, 100 on Linux).
fn ticks_per_sec() -> f64 {
    procfs::ticks_per_second() as f64
}

#[derive(Debug, Clone, Copy)]
struct Proc {
    ppid: i32,
    pgrp: i32,
    /// utime + stime of the process (all its threads), not of its reaped children: those
    /// were counted while they ran.
    ticks: u64,
    rss_pages: u64,
    /// Start time in ticks since boot: tells a recycled pid apart.
    start: u64,
}

impl From<procfs::process::Stat> for Proc {
    fn from(stat: procfs::process::Stat) -> Self {
        Self { ppid: stat.ppid, pgrp: stat.pgrp, ticks: stat.utime + stat.stime, rss_pages: stat.rss, start: stat.starttime }
    }
}

/// Proportional set size in bytes (shared pages split among the processes that map them, so
/// PostgreSQL's shared buffers count once over all its backends, not once per backend).
fn pss_bytes(pid: i32) -> Option<u64> {
    let rollup = procfs::process::Process::new(pid).ok()?.smaps_rollup().ok()?;
    rollup.memory_map_rollup.0.iter().find_map(|map| map.extension.map.get("Pss").copied())
}

/// One read of every process in /proc.
struct ProcTable {
    procs: HashMap<i32, Proc>,
}

impl ProcTable {
    fn scan() -> Self {
        // A process that exits between the listing and its read is left out.
        let procs = procfs::process::all_processes()
            .map(|all| all.flatten().filter_map(|process| Some((process.pid, Proc::from(process.stat().ok()?)))).collect())
            .unwrap_or_default();
        Self { procs }
    }

    /// The pids of a service: its process group led by `leader`, and every descendant.
    fn service(&self, leader: i32) -> Vec<i32> {
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        for (pid, p) in &self.procs {
            children.entry(p.ppid).or_default().push(*pid);
        }
        let mut out: Vec<i32> = self.procs.iter().filter(|(_, p)| p.pgrp == leader).map(|(pid, _)| *pid).collect();
        if self.procs.contains_key(&leader) && !out.contains(&leader) {
            out.push(leader);
        }
        let mut i = 0;
        while i < out.len() {
            if let Some(kids) = children.get(&out[i]) {
                for kid in kids {
                    if !out.contains(kid) {
                        out.push(*kid);
                    }
                }
            }
            i += 1;
        }
        out
    }
}

/// Every process of the tree led by `leader` (its process group and every descendant), now.
pub fn process_tree(leader: i32) -> Vec<i32> {
    ProcTable::scan().service(leader)
}

/// Seconds since boot, in clock ticks (the unit of /proc's start times).
fn uptime_ticks() -> Option<u64> {
    use procfs::Current;
    Some((procfs::Uptime::current().ok()?.uptime * ticks_per_sec()) as u64)
}

/// What one sample measured for one service.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// Percent of one core since the previous sample; None on the first sample.
    pub cpu_pct: Option<f64>,
    /// Memory: proportional set size summed over the processes (RSS where PSS is unreadable).
    pub rss_mb: f64,
    pub processes: usize,
}

/// Samples between two reads of a process's PSS. `smaps_rollup` makes the kernel walk the
/// process's page tables: for Debezium's JVM, read every second, that walk was a fifth of
/// the harness's own CPU (perf, baseline at 100 ops/s). Memory moves slowly; between reads
/// a process keeps its last PSS.
const PSS_EVERY: u64 = 10;

/// CPU percent (of one core) between successive samples, per service, and memory.
pub struct CpuMeter {
    /// (pid, start) -> ticks at the previous sample, per service.
    last: HashMap<String, HashMap<(i32, u64), u64>>,
    last_at: Option<(Instant, u64)>,
    /// (pid, start) -> PSS bytes at its last read.
    pss: HashMap<(i32, u64), u64>,
    samples: u64,
    read_pss: fn(i32) -> Option<u64>,
}

impl Default for CpuMeter {
    fn default() -> Self {
        Self { last: HashMap::new(), last_at: None, pss: HashMap::new(), samples: 0, read_pss: pss_bytes }
    }
}

impl CpuMeter {
    /// Samples every service (name, leader pid) in one /proc scan. The harness itself is
    /// measured as `harness` (its own threads only: the services it started are children
    /// but are counted under their names).
    pub fn sample(&mut self, services: &[(String, i32)]) -> BTreeMap<String, Usage> {
        let table = ProcTable::scan();
        let now = Instant::now();
        let now_ticks = uptime_ticks().unwrap_or(0);
        let page = procfs::page_size();
        let me = std::process::id() as i32;
        let mut out = BTreeMap::new();
        let mut current_last = HashMap::new();
        let refresh_pss = self.samples % PSS_EVERY == 0;
        self.samples += 1;
        let mut pss = HashMap::new();
        let groups = services.iter().map(|(name, leader)| (name.clone(), table.service(*leader))).chain([("harness".to_string(), vec![me])]);
        for (name, pids) in groups {
            let mut now_ticks_by_pid = HashMap::new();
            let mut rss = 0;
            let mut delta = 0u64;
            let previous = self.last.get(&name);
            for pid in &pids {
                let Some(p) = table.procs.get(pid) else { continue };
                let known = (!refresh_pss).then(|| self.pss.get(&(*pid, p.start)).copied()).flatten();
                let process_pss = known.or_else(|| (self.read_pss)(*pid));
                if let Some(bytes) = process_pss {
                    pss.insert((*pid, p.start), bytes);
                }
                rss += process_pss.unwrap_or(p.rss_pages * page);
                now_ticks_by_pid.insert((*pid, p.start), p.ticks);
                delta += match previous.and_then(|m| m.get(&(*pid, p.start))) {
                    Some(before) => p.ticks.saturating_sub(*before),
                    // A process that started since the last sample (a restart, a new
                    // backend) counts from zero; one that was there but not ours (it
                    // joined the service) counts from now.
                    None => match self.last_at {
                        Some((_, at_ticks)) if p.start >= at_ticks => p.ticks,
                        _ => 0,
                    },
                };
            }
            let cpu_pct = match (self.last_at, previous) {
                (Some((at, _)), Some(_)) => {
                    let secs = now.duration_since(at).as_secs_f64().max(1e-3);
                    Some(delta as f64 / ticks_per_sec() / secs * 100.0)
                }
                _ => None,
            };
            out.insert(name.clone(), Usage { cpu_pct, rss_mb: rss as f64 / (1024.0 * 1024.0), processes: now_ticks_by_pid.len() });
            current_last.insert(name, now_ticks_by_pid);
        }
        self.last = current_last;
        self.pss = pss;
        self.last_at = Some((now, now_ticks));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process as the scan sees it: its parent, its group and a start time.
    #[test]
    fn the_scan_reads_this_process() {
        let table = ProcTable::scan();
        let me = table.procs.get(&(std::process::id() as i32)).expect("this process is in the scan");
        assert_eq!(me.ppid, nix::unistd::getppid().as_raw());
        assert_eq!(me.pgrp, nix::unistd::getpgrp().as_raw());
        assert!(me.start > 0 && me.rss_pages > 0, "{me:?}");
        assert!(pss_bytes(std::process::id() as i32).is_some_and(|b| b > 0), "PSS of this process");
    }

    static PSS_READS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    static WATCHED: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

    /// Counts the reads of the watched process (other tests' processes come and go).
    fn counted_pss(pid: i32) -> Option<u64> {
        if pid == WATCHED.load(std::sync::atomic::Ordering::SeqCst) {
            PSS_READS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        pss_bytes(pid)
    }

    /// PSS is read once per `PSS_EVERY` samples, not every second: between reads the
    /// process keeps the last value, so memory is still reported every sample.
    #[test]
    fn pss_is_read_once_per_window_and_kept_between_reads() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        WATCHED.store(child.id() as i32, std::sync::atomic::Ordering::SeqCst);
        let mut meter = CpuMeter { read_pss: counted_pss, ..CpuMeter::default() };
        let service = vec![("svc".to_string(), child.id() as i32)];
        let samples: Vec<Usage> = (0..PSS_EVERY + 1).map(|_| meter.sample(&service)["svc"]).collect();
        let _ = child.kill();
        let _ = child.wait();
        // Read at the first sample and at the next window's first, none in between.
        assert_eq!(PSS_READS.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert!(samples.iter().all(|u| u.processes == 1 && u.rss_mb > 0.0), "{samples:?}");
    }

    /// A child that leaves its parent's process group (as every PostgreSQL backend does)
    /// is still counted as the service's.
    #[test]
    fn descendants_in_their_own_session_count() {
        use std::os::unix::process::CommandExt;
        use std::process::Command;
        // The leader starts a child in a new session (setsid), like the postmaster does.
        let mut leader = Command::new("sh").args(["-c", "setsid sh -c 'while :; do :; done' & wait"]).process_group(0).spawn().expect("spawn sh");
        let leader_pid = leader.id() as i32;
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let mut meter = CpuMeter::default();
        let services = vec![("svc".to_string(), leader_pid)];
        meter.sample(&services);
        let mut seen = None;
        while Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(500));
            let usage = meter.sample(&services)["svc"];
            if usage.processes >= 2 && usage.cpu_pct.is_some_and(|c| c > 20.0) {
                seen = Some(usage);
                break;
            }
        }
        // The busy child is in its own session: find it through the tree before the leader
        // dies (it would be re-parented), then kill every one.
        for pid in ProcTable::scan().service(leader_pid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        let _ = leader.wait();
        let usage = seen.expect("the busy child in its own session was counted (processes >= 2, cpu > 20%)");
        assert!(usage.rss_mb > 0.0);
    }
}
