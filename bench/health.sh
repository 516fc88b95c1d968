#!/usr/bin/env bash
# bench/health.sh — cost of liveness probes and precision of the job scheduler in citrusd,
# each figure beside a baseline measured in the same run.
#
# Usage: bench/health.sh [--quick] [--help]
#
#   --quick            fast sanity run: 10 s windows (unless BENCH_IDLE_SECS / BENCH_SCHED_SECS
#                      are set), shorter settle times.
#   BENCH_IDLE_SECS    idle window of figure 1 in seconds (default 60, 10 with --quick).
#   BENCH_SCHED_SECS   scheduler window of figure 2 in seconds (default 60, 10 with --quick).
#   BENCH_TMPDIR       where the temp dir is made (default ${TMPDIR:-/tmp}).
#   CARGO_TARGET_DIR   respected: binaries are taken from ${CARGO_TARGET_DIR:-target}/release.
#
# Figure 1: 100 apps, each `python3 -m http.server PORT` on its own 127.0.0.1 port, with
#   health = { http = "http://127.0.0.1:PORT/", interval = "1s", timeout = "2s", failures = 3 };
#   citrusd's CPU (utime+stime from /proc/PID/stat) and VmRSS over an idle window once all 100
#   are online, and the probes/s the servers logged. Baseline: the same 100 apps without health.
# Figure 2: a `* * * * * *` command job (/bin/true); firing delay = started_ms - scheduled_ms of
#   every run, collected by polling `citrusctl --json jobs` every 0.5 s (it keeps only the last
#   10 runs). Baseline: a python loop sleeping to each next whole second, measuring its lateness.
#
# Builds the release binaries (cargo build --release --bins), runs both figures from one python3
# (stdlib) driver and prints one Markdown table (figure | value | notes) on stdout. Progress goes
# to stderr. Every process started here, directly or through citrusd, carries BENCH_TAG=<random>
# in its environment; the EXIT trap stops them all by pid and removes the temp dir.
#
# Needs: bash, python3 (>= 3.8), cargo, /usr/bin/time (optional: times the build).

BENCH_NAME=citrus-health
QUICK_IDLE_SECS=10
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" "$@"
if [[ $QUICK == 1 ]]; then
    SCHED_SECS=${BENCH_SCHED_SECS:-10}
else
    SCHED_SECS=${BENCH_SCHED_SECS:-60}
fi
[[ $SCHED_SECS =~ ^[0-9]+$ && $SCHED_SECS -ge 2 ]] || die "BENCH_SCHED_SECS must be a whole number of seconds >= 2, got '$SCHED_SECS'"

# 100 apps need ~4 fds each in citrusd (2 pipes + 2 log files), plus the probes' sockets.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log "ulimit -n = $(ulimit -n)"

# --- build ---------------------------------------------------------------------------------------
bench_setup

# citrusd gives apps only PATH from its environment, so a pyenv shim found through PATH may not
# work there: use the real interpreter.
APP_PYTHON=$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')
[[ -x $APP_PYTHON ]] || die "cannot resolve python3 to an executable (got '$APP_PYTHON')"

# --- driver --------------------------------------------------------------------------------------
cat >"$WORK/driver.py" <<'PYEOF'
import json, os, socket, statistics, subprocess, sys, time

sys.dont_write_bytecode = True
sys.path.insert(0, os.environ["B_BENCH_DIR"])
import benchlib
from benchlib import (CHILD_ENV, CLK_TCK, FAILED, IDLE, QUICK, WORK, cpu_ticks, log,
                      free_ports, p95, row, vm_rss_kb, write_config)

SCHED = int(os.environ["B_SCHED"])
APP_PY = os.environ["B_APP_PYTHON"]
N_APPS = 100
SETTLE = 3.0 if QUICK else 10.0   # after all apps are online, before the idle window


class Daemon(benchlib.Daemon):
    ONLINE_POLL = 0.2
    LEFTOVER_SETTLE = 0.3


def get_latency(port, n=20):
    """Median ms from connect to the status line of a GET like citrusd's probe, from python."""
    ts = []
    for _ in range(n):
        t = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            benchlib.recv_until(s, b"\n")
        ts.append((time.monotonic() - t) * 1000)
        time.sleep(0.05)
    return statistics.median(ts)


def count_gets(logdir):
    """'GET / HTTP' lines across <log_dir>/*-err.log, and other (traceback/error) lines."""
    gets = other = 0
    for name in os.listdir(logdir):
        if not name.endswith("-err.log"):
            continue
        with open(os.path.join(logdir, name), "rb") as f:
            for line in f:
                if b"GET / HTTP" in line:
                    gets += 1
                elif line.strip():
                    other += 1
    return gets, other


# ---------------------------------------------------------------------------------------------- #
def idle_run(with_health):
    label = "probed" if with_health else "unprobed"
    d = os.path.join(WORK, f"f1-{label}")
    www = os.path.join(WORK, "www")  # empty dir: the servers answer / with a tiny listing
    os.makedirs(www, exist_ok=True)
    ports = free_ports(N_APPS)
    apps = {}
    for i, port in enumerate(ports):
        a = {"command": [APP_PY, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", www]}
        if with_health:
            a["health"] = {"http": f"http://127.0.0.1:{port}/", "interval": "1s", "timeout": "2s", "failures": 3}
        apps[f"web{i:03d}"] = a
    t_start = time.monotonic()
    dm = Daemon(d, write_config(d, apps)).start()
    dm.wait_ping()
    st = dm.wait_online(N_APPS, timeout=180)
    log(f"fig1 {label}: {N_APPS} apps online {time.monotonic() - t_start:.1f} s after citrusd was started; settling {SETTLE:g} s")
    time.sleep(SETTLE)
    st = dm.wait_online(N_APPS, timeout=30)
    restarts0 = sum(a["restarts"] for a in st["apps"])
    app_pids = [a["pid"] for a in st["apps"]]
    logdir = os.path.join(d, "logs")

    def app_ticks():
        t = 0
        for p in app_pids:
            try:
                t += cpu_ticks(p)
            except OSError:
                pass
        return t

    g0, o0 = count_gets(logdir)
    a0 = app_ticks()
    fds0 = len(os.listdir(f"/proc/{dm.pid}/fd"))
    c0, m0 = cpu_ticks(dm.pid), time.monotonic()
    rss = [vm_rss_kb(dm.pid)]
    end = m0 + IDLE
    while True:
        left = end - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(1.0, left))
        dm.check_alive()
        rss.append(vm_rss_kb(dm.pid))
    c1, m1 = cpu_ticks(dm.pid), time.monotonic()
    fds1 = len(os.listdir(f"/proc/{dm.pid}/fd"))
    a1 = app_ticks()
    g1, o1 = count_gets(logdir)
    secs = m1 - m0
    lat = get_latency(ports[0]) if with_health else None
    st = dm.status()
    restarts1 = sum(a["restarts"] for a in st["apps"])
    online1 = sum(1 for a in st["apps"] if a["state"] == "online")
    err = dm.stderr_text()
    health_lines = sum(1 for l in err.splitlines()
                       if "health probe" in l or "health_failed" in l or "unhealthy" in l.lower())
    res = {
        "cpu": (c1 - c0) / CLK_TCK / secs * 100, "ticks": c1 - c0, "secs": secs,
        "rss_end": rss[-1], "rss_max": max(rss), "rss_min": min(rss),
        "gets": g1 - g0, "gets_total": g1, "other_err_lines": o1,
        "app_cpu": (a1 - a0) / CLK_TCK / secs * 100,
        "restarts": restarts1 - restarts0, "restarts_total": restarts1, "online_end": online1,
        "health_lines": health_lines, "fds": (fds0, fds1), "lat": lat,
    }
    log(f"fig1 {label}: citrusd {res['cpu']:.2f}% ({res['ticks']} ticks in {secs:.1f} s), "
        f"RSS {res['rss_end']} kB (max {res['rss_max']}), GETs {res['gets']} ({res['gets'] / secs:.1f}/s), "
        f"apps' CPU {res['app_cpu']:.1f}%, restarts in window {res['restarts']}, other err-log lines {o1}")
    secs_stop, rc = dm.stop()
    res["stop"] = (secs_stop, rc)
    return res


def fig1_probes():
    base = idle_run(False)
    hl = idle_run(True)
    w = f"window {hl['secs']:.1f} s after all {N_APPS} online + {SETTLE:g} s settle; CLK_TCK {CLK_TCK}"
    row("1. citrusd CPU, 100 apps with 1 s HTTP health probe", f"{hl['cpu']:.2f} % of one core",
        f"{hl['ticks']} ticks of utime+stime; {w}; the 100 python servers together used {hl['app_cpu']:.1f} % "
        f"(baseline {base['app_cpu']:.1f} %); extra over baseline {hl['cpu'] - base['cpu']:.2f} points")
    row("1. baseline: same 100 apps, no health", f"{base['cpu']:.2f} % of one core",
        f"{base['ticks']} ticks in {base['secs']:.1f} s; same settle")
    row("1. citrusd VmRSS with health probes", f"{hl['rss_end'] / 1024:.1f} MiB",
        f"at window end; min {hl['rss_min'] / 1024:.1f}, max {hl['rss_max'] / 1024:.1f} MiB over 1 s samples")
    row("1. baseline VmRSS, no health", f"{base['rss_end'] / 1024:.1f} MiB",
        f"min {base['rss_min'] / 1024:.1f}, max {base['rss_max'] / 1024:.1f} MiB")
    row("1. probes served", f"{hl['gets'] / hl['secs']:.1f} /s",
        f"{hl['gets']} 'GET / HTTP' lines added to the 100 err logs in {hl['secs']:.1f} s (expected ~{N_APPS}/s; "
        f"citrusd sleeps 1 s after each probe, so a slow answer lowers the rate a little); baseline: {base['gets']} in "
        f"{base['secs']:.1f} s; other err-log lines (tracebacks etc.): {hl['other_err_lines']} with health, "
        f"{base['other_err_lines']} without"
        + (f"; mean time between two probes of one app {N_APPS * hl['secs'] / hl['gets'] * 1000:.0f} ms" if hl["gets"] else "")
        + (f" (a GET to one server from python, connect → status line: median {hl['lat']:.1f} ms over 20)" if hl["lat"] is not None else ""))
    row("1. app restarts / health lines in citrusd log", f"{hl['restarts']} in window",
        f"with health: {hl['restarts_total']} restarts since start, {hl['online_end']}/{N_APPS} online at end, "
        f"{hl['health_lines']} citrusd stderr lines about failed probes; citrusd open fds at window start/end "
        f"{hl['fds'][0]}/{hl['fds'][1]} (baseline {base['fds'][0]}/{base['fds'][1]}); baseline: {base['restarts_total']} restarts; "
        f"SIGTERM→exit {hl['stop'][0]:.2f} s (rc {hl['stop'][1]}) / {base['stop'][0]:.2f} s (rc {base['stop'][1]})")


# ---------------------------------------------------------------------------------------------- #
BASELINE_LOOP = r"""
import json, math, sys, time
n = int(sys.argv[1])
late = []
for _ in range(n):
    target = math.floor(time.time()) + 1
    time.sleep(max(0.0, target - time.time()))
    late.append((time.time() - target) * 1000)
print(json.dumps(late))
"""


def fig2_scheduler():
    d = os.path.join(WORK, "f2")
    cfg = write_config(d, {"idle": {"command": ["/bin/sleep", "100000"]}},
                       jobs={"tick": {"schedule": "* * * * * *", "kind": "command", "command": ["/bin/true"]}})
    dm = Daemon(d, cfg).start()
    dm.wait_ping()
    dm.wait_online(1, timeout=30)
    # Window: scheduled times in (w0, w1], SCHED whole seconds.
    w0 = int(time.time()) + 1           # a whole second
    w1 = w0 + SCHED
    while time.time() < w0:
        time.sleep(0.05)
    runs = {}                           # started_ms -> run
    polls, max_gap, last_poll = 0, 0.0, None
    c0, m0 = cpu_ticks(dm.pid), time.monotonic()
    rss = []
    while True:
        now = time.time()
        js = dm.jobs()
        t = time.monotonic()
        if last_poll is not None:
            max_gap = max(max_gap, t - last_poll)
        last_poll = t
        polls += 1
        for job in js["jobs"]:
            if job["name"] != "tick":
                continue
            for r in job.get("runs") or []:
                runs[r["started_ms"]] = r
            if job.get("last_run"):
                runs[job["last_run"]["started_ms"]] = job["last_run"]
        if polls % 2 == 0:
            rss.append(vm_rss_kb(dm.pid))
        dm.check_alive()
        if now > w1 + 2.5:
            break
        time.sleep(0.5)
    c1, m1 = cpu_ticks(dm.pid), time.monotonic()
    err = dm.stderr_text()
    skipped = sum(1 for l in err.splitlines() if "skipped" in l)
    dm.stop()
    inwin = [r for r in runs.values() if r["trigger"] == "schedule" and r["scheduled_ms"] is not None
             and w0 * 1000 < r["scheduled_ms"] <= w1 * 1000]
    manual = sum(1 for r in runs.values() if r["trigger"] != "schedule")
    delays = sorted(r["started_ms"] - r["scheduled_ms"] for r in inwin)
    by_sched = {}
    for r in inwin:
        by_sched.setdefault(r["scheduled_ms"], []).append(r)
    dup = sum(len(v) - 1 for v in by_sched.values())
    expected = set(range((w0 + 1) * 1000, w1 * 1000 + 1, 1000))
    off_grid = sorted(s for s in by_sched if s not in expected)
    missing = sorted(s for s in expected if s not in by_sched)
    not_ok = [r for r in inwin if r["outcome"] != "ok"]
    durs = sorted(r["ended_ms"] - r["started_ms"] for r in inwin)
    cpu = (c1 - c0) / CLK_TCK / (m1 - m0) * 100
    log(f"fig2: {len(inwin)} runs for {len(expected)} expected seconds; delays {delays[:5]}…{delays[-5:] if delays else []}; "
        f"missing {[(s // 1000 - w0) for s in missing]}; dup {dup}; polls {polls}, max gap {max_gap:.2f} s")

    log(f"fig2 baseline: python sleep loop, {SCHED} s")
    r = subprocess.run([sys.executable, "-c", BASELINE_LOOP, str(SCHED)], capture_output=True, text=True,
                       env=CHILD_ENV, check=True)
    late = sorted(json.loads(r.stdout))

    if not delays:
        raise RuntimeError(f"no scheduled runs seen in the window; citrusd stderr: {dm.stderr_tail()}")
    row("2. job firing delay (started_ms − scheduled_ms), median", f"{statistics.median(delays):.0f} ms",
        f"`* * * * * *` command job (/bin/true), window {SCHED} s; ms resolution (daemon's own stamps); "
        f"run duration (ended−started) median {statistics.median(durs):.0f} ms, max {durs[-1]} ms")
    row("2. job firing delay p95 / max", f"{p95(delays)} ms / {delays[-1]} ms",
        f"min {delays[0]} ms; distribution: " + ", ".join(
            f"{v} ms ×{delays.count(v)}" for v in sorted(set(delays))[:12]))
    row("2. runs seen vs expected", f"{len(by_sched)} / {len(expected)}",
        f"missed firings {len(missing)}"
        + (f" (seconds {', '.join(str(s // 1000 - w0) for s in missing[:20])} of the window)" if missing else "")
        + f"; duplicate runs for one scheduled second {dup}; off-grid scheduled_ms {len(off_grid)}; "
        f"outcome ≠ ok {len(not_ok)}; manual runs {manual}; 'skipped' lines in citrusd log {skipped}; "
        f"collected by {polls} polls of `--json jobs` (max gap {max_gap:.2f} s, history keeps 10); "
        f"citrusd CPU meanwhile {cpu:.2f} % of one core, VmRSS max {max(rss) / 1024 if rss else 0:.1f} MiB")
    row("2. baseline: python sleep-to-next-second lateness, median", f"{statistics.median(late):.2f} ms",
        f"{len(late)} seconds, time.sleep() then time.time() − target; max {late[-1]:.2f} ms, p95 {p95(late):.2f} ms")


# ---------------------------------------------------------------------------------------------- #
FIGURES = [
    ("1 probe cost", fig1_probes),
    ("2 scheduler delay", fig2_scheduler),
]


def main():
    load0 = os.getloadavg()
    benchlib.run_figures(FIGURES)
    row("9. machine", f"{os.cpu_count()} cores",
        f"load average at start {load0[0]:.2f}, at end {os.getloadavg()[0]:.2f} (other work adds noise); "
        f"kernel {os.uname().release}; apps run {APP_PY}")
    benchlib.leftover_row("9. leftover processes after citrusd exited")
    mode = "quick" if QUICK else "full"
    benchlib.print_table(f"citrusd health/scheduler bench ({mode} run, idle window {IDLE:g} s, scheduler window {SCHED} s, "
                         f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M:%S')})",
                         key=lambda r: r[0].split(".")[0])
    return 1 if FAILED else 0


if __name__ == "__main__":
    benchlib.run_main(main)
PYEOF

log "running the figures (idle window ${IDLE_SECS}s, scheduler window ${SCHED_SECS}s$([[ $QUICK == 1 ]] && echo ', quick'))"
run_driver figures B_SCHED="$SCHED_SECS" B_APP_PYTHON="$APP_PYTHON"
