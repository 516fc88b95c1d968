//! Host figures for `status_update`: uptime, CPU load and cores, memory, filesystems.
//! Read from `/proc` and statvfs; the CPU load is the busy share since the previous sample.

use std::sync::Mutex;

use crate::health::disk;

/// CPU counters of the previous sample: (busy, total) jiffies.
static LAST_CPU: Mutex<Option<(u64, u64)>> = Mutex::new(None);

/// Seconds since boot.
pub fn uptime() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0, |v| v as u64)
}

/// CPU busy percent since the previous call (since boot on the first call), and the core count.
pub fn cpu() -> (f64, u32) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let Some(line) = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().next().map(str::to_string))
    else {
        return (0.0, cores);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    let busy = total.saturating_sub(idle);
    let mut last = LAST_CPU.lock().unwrap_or_else(|e| e.into_inner());
    let (b0, t0) = last.unwrap_or((0, 0));
    *last = Some((busy, total));
    let dt = total.saturating_sub(t0);
    let load = if dt == 0 {
        0.0
    } else {
        busy.saturating_sub(b0) as f64 * 100.0 / dt as f64
    };
    ((load * 10.0).round() / 10.0, cores)
}

/// Memory in bytes: (total, used, free) where used = total - available, free = available.
pub fn memory() -> (u64, u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    let total = field("MemTotal:");
    let available = field("MemAvailable:");
    (total, total.saturating_sub(available), available)
}

/// Real filesystems from `/proc/mounts` with their size, used and available bytes.
pub fn filesystems() -> Vec<(String, u64, u64, u64)> {
    const PSEUDO: &[&str] = &[
        "proc",
        "sysfs",
        "devtmpfs",
        "devpts",
        "tmpfs",
        "cgroup",
        "cgroup2",
        "securityfs",
        "debugfs",
        "tracefs",
        "pstore",
        "bpf",
        "mqueue",
        "hugetlbfs",
        "configfs",
        "fusectl",
        "autofs",
        "overlay",
        "squashfs",
        "nsfs",
        "ramfs",
        "binfmt_misc",
        "rpc_pipefs",
        "efivarfs",
    ];
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(dev), Some(at), Some(kind)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if PSEUDO.contains(&kind) || seen.contains(&dev.to_string()) {
            continue;
        }
        if let Ok(u) = disk::usage(std::path::Path::new(at)) {
            seen.push(dev.to_string());
            out.push((
                dev.to_string(),
                u.total_bytes,
                u.used_bytes,
                u.available_bytes,
            ));
        }
    }
    out
}
