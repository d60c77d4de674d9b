//! CPU and memory of a service, from /proc: every process of the service counts, i.e. its
//! process group *and* every descendant of it. PostgreSQL's backends call `setsid()` (each
//! is its own process group), so a group-only sum sees the postmaster alone and reads ~0%.
//! The CPU of a second is the sum of per-process tick deltas, so a restarted service (new
//! pids) is followed as soon as the caller passes its new leader pid.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// Clock ticks per second for /proc's utime/stime (USER_HZ, 100 on Linux).
fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 { v as f64 } else { 100.0 }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 { v as u64 } else { 4096 }
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

fn parse_stat(stat: &str) -> Option<Proc> {
    // The command name (field 2) may contain spaces and parens; fields after the last ')' are plain.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state(0) ppid(1) pgrp(2) ... utime(11) stime(12) ... starttime(19) vsize(20) rss(21)
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(Proc { ppid: f.get(1)?.parse().ok()?, pgrp: f.get(2)?.parse().ok()?, ticks: num(11)? + num(12)?, rss_pages: num(21).unwrap_or(0), start: num(19)? })
}

/// Proportional set size in bytes (shared pages split among the processes that map them, so
/// PostgreSQL's shared buffers count once over all its backends, not once per backend).
fn pss_bytes(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let kb: u64 = text.lines().find(|l| l.starts_with("Pss:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// One read of every process in /proc.
struct ProcTable {
    procs: HashMap<i32, Proc>,
}

impl ProcTable {
    fn scan() -> Self {
        let mut procs = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
                if let Some(p) = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().as_deref().and_then(parse_stat) {
                    procs.insert(pid, p);
                }
            }
        }
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
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some((secs * ticks_per_sec()) as u64)
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
        let page = page_size();
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

    #[test]
    fn stat_lines_with_spaces_in_the_command_parse() {
        let line = "1234 (postgres: walsender (x) ) S 1000 1234 1234 0 -1 4194560 1 0 0 0 17 5 0 0 20 0 1 0 98765 1000000 321 18446744073709551615";
        let p = parse_stat(line).expect("parses");
        assert_eq!((p.ppid, p.pgrp, p.ticks, p.start, p.rss_pages), (1000, 1234, 22, 98765, 321));
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
