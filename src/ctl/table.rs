//! Human-readable output of citrusctl: the status table, `describe`, the reload plan.

use std::fmt::Write;

use crate::control::{AppStatus, Describe, JobInfo, JobRun, LastExit, ReloadPlan};

/// "3d4h", "2h5m", "4m12s", "9s", or "-" for zero.
pub fn uptime(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 if ms == 0 => "-".into(),
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// "12.3M" style sizes.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

fn exit(e: &LastExit) -> String {
    match (&e.code, &e.signal) {
        (Some(c), _) => format!("code {c}"),
        (None, Some(s)) => s.clone(),
        _ => "unknown".into(),
    }
}

/// The `status` table.
pub fn status(apps: &[AppStatus]) -> String {
    if apps.is_empty() {
        return "no apps\n".into();
    }
    let header = [
        "NAME",
        "INST",
        "PID",
        "STATE",
        "UPTIME",
        "RESTARTS",
        "MEMORY",
        "CPU",
        "LAST EXIT",
    ];
    let rows: Vec<Vec<String>> = apps
        .iter()
        .map(|a| {
            let running = |text: String| if a.pid.is_some() { text } else { "-".into() };
            vec![
                a.name.clone(),
                a.instance.to_string(),
                a.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                a.state.as_str().to_string(),
                uptime(a.uptime_ms),
                a.restarts.to_string(),
                running(size(a.memory_bytes)),
                running(format!("{:.1}%", a.cpu_percent)),
                a.last_exit.as_ref().map(exit).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    columns(&header, &rows)
}

/// Left-aligned columns separated by two spaces.
fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

/// A wall-clock time in ms as local-free UTC text, or "-".
fn when(ms: Option<u64>) -> String {
    ms.map(|ms| {
        let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        let mut s = crate::sys::time::rfc3339(t);
        s.truncate(19);
        s.replace('T', " ") + "Z"
    })
    .unwrap_or_else(|| "-".into())
}

/// The `jobs` table.
pub fn jobs(jobs: &[JobInfo]) -> String {
    if jobs.is_empty() {
        return "no jobs\n".into();
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let tz = if j.timezone == "UTC" { " UTC" } else { "" };
            let outcome = match (&j.running_since_ms, &j.last_run) {
                (Some(_), _) => "running".to_string(),
                (None, Some(r)) => r.outcome.as_str().to_string(),
                (None, None) => "-".to_string(),
            };
            vec![
                j.name.clone(),
                j.kind.clone(),
                format!("{}{tz}", j.schedule),
                when(j.last_run.as_ref().map(|r| r.started_ms)),
                outcome,
                when(j.next_run_ms),
                j.last_run
                    .as_ref()
                    .map(|r| r.summary.clone())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    columns(
        &[
            "NAME", "KIND", "SCHEDULE", "LAST RUN", "OUTCOME", "NEXT RUN", "SUMMARY",
        ],
        &rows,
    )
}

/// `citrusctl fleet`.
pub fn fleet(f: &crate::control::FleetStatus) -> String {
    let rows = [
        ("state", f.state.as_str().to_owned()),
        ("engine", f.engine_url.clone()),
        ("agent id", f.agent_id.clone()),
        ("connected since", when(f.connected_since_ms)),
        (
            "last error",
            f.last_error.clone().unwrap_or_else(|| "-".into()),
        ),
        ("queued reports", f.queued_reports.to_string()),
        ("dropped reports", f.dropped_reports.to_string()),
        ("protocol", f.protocol.to_string()),
    ];
    rows.iter().map(|(k, v)| format!("{k:<16} {v}\n")).collect()
}

/// The outcome of `job run`.
pub fn job_run(name: &str, run: &JobRun) -> String {
    let mut out = format!(
        "{name}: {} in {} ms: {}\n",
        run.outcome.as_str(),
        run.ended_ms.saturating_sub(run.started_ms),
        run.summary
    );
    if let Some(level) = run.level {
        let _ = writeln!(out, "recovery level reached: {level}");
    }
    if !run.output.is_empty() {
        out.push_str(&run.output);
        if !run.output.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// `describe` as text.
pub fn describe(d: &Describe) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} ({}; desired {})", d.name, d.source, d.desired);
    let _ = writeln!(out, "config:");
    for (k, v) in &d.config {
        if !v.is_null() {
            let _ = writeln!(out, "  {k:<26} {v}");
        }
    }
    if !d.env.is_empty() {
        let _ = writeln!(out, "env:");
        for (k, v) in &d.env {
            let _ = writeln!(out, "  {k}={v}");
        }
    }
    for i in &d.instances {
        let s = &i.status;
        let _ = writeln!(
            out,
            "instance {}: {} pid {} up {} restarts {} (unstable {}, memory {})",
            s.instance,
            s.state.as_str(),
            s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            uptime(s.uptime_ms),
            s.restarts,
            s.unstable_restarts,
            s.memory_restarts
        );
        if let Some(e) = &i.last_error {
            let _ = writeln!(out, "  last error: {e}");
        }
        if let Some(text) = &i.status_text {
            let _ = writeln!(out, "  status: {text}");
        }
        for log in [&i.out_log, &i.err_log] {
            let _ = write!(
                out,
                "  log {} ({} written",
                log.path.display(),
                size(log.bytes_written)
            );
            if log.bytes_dropped > 0 {
                let _ = write!(out, ", {} DROPPED", size(log.bytes_dropped));
            }
            let _ = writeln!(out, ")");
            if let Some(e) = &log.last_error {
                let _ = writeln!(out, "    last log error: {e}");
            }
        }
        if !i.recent_exits.is_empty() {
            let exits: Vec<String> = i.recent_exits.iter().map(exit).collect();
            let _ = writeln!(out, "  recent exits (oldest first): {}", exits.join(", "));
        }
    }
    out
}

/// The reload plan.
pub fn plan(p: &ReloadPlan) -> String {
    let mut out = String::new();
    let verb = if p.applied { "" } else { "would " };
    for (what, names) in [
        ("start", &p.start),
        ("stop", &p.stop),
        ("restart", &p.restart),
    ] {
        if !names.is_empty() {
            let _ = writeln!(out, "{verb}{what}: {}", names.join(", "));
        }
    }
    if p.start.is_empty() && p.stop.is_empty() && p.restart.is_empty() {
        let _ = writeln!(out, "no changes");
    }
    for w in &p.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

/// The `deployments` table: newest first.
pub fn deployments(list: &[crate::deploy::Deployment]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|d| {
            let kind = match d.kind {
                crate::deploy::journal::Kind::Deploy => {
                    d.git_ref.clone().unwrap_or_else(|| "-".into())
                }
                crate::deploy::journal::Kind::Rollback => format!("rollback to {}", d.release),
            };
            let took = d.duration_ms();
            let commit = d.short_commit().unwrap_or("-").to_owned();
            vec![
                d.id.clone(),
                kind,
                commit,
                d.phase.to_string(),
                when(Some(d.started_ms)),
                format!("{:.1}s", took as f64 / 1000.0),
                d.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    columns(
        &[
            "ID", "REF", "COMMIT", "PHASE", "STARTED", "DURATION", "ERROR",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(uptime(0), "-");
        assert_eq!(uptime(999), "0s");
        assert_eq!(uptime(61_000), "1m1s");
        assert_eq!(uptime(3_600_000 * 25), "1d1h");
        assert_eq!(size(512), "512B");
        assert_eq!(size(10 << 20), "10.0M");
    }
}
