#!/usr/bin/env bash
# bench/soak.sh — soak test of citrusd: is its RSS, fd count and thread count flat under churn?
#
# Usage: bench/soak.sh [--quick] [--help]
#
#   --quick            1-minute run (unless BENCH_IDLE_SECS is set); the full run is 10 minutes.
#   BENCH_IDLE_SECS    length of the soak in seconds (default 600, 60 with --quick).
#   BENCH_SOAK_APPS    number of apps (default 1000).
#   BENCH_SOAK_RATE    citrusctl restarts per second (default 2).
#   BENCH_TMPDIR       where the temp dir is made (default ${TMPDIR:-/tmp}).
#   CARGO_TARGET_DIR   respected: binaries are taken from ${CARGO_TARGET_DIR:-target}/release.
#
# One citrusd supervises N apps: 90 % are sleepers (/bin/sleep), 10 % crash at once (/bin/false)
# with restart_delay 1 to 3 s (spread, so they do not loop in lock-step), min_uptime 1s and
# max_restarts 1000000, so that they stay in their crash loop (online → backoff → online …) for
# the whole run and never reach `errored` (a 10-minute run is 200 to 600 restarts each).
# N/5 of the sleepers (20 % of all apps) are restarted through `citrusctl restart NAME`, picked
# at random, at BENCH_SOAK_RATE per second (one citrusctl at a time, no catching up).
# Every 10 s the driver samples citrusd's VmRSS, open fds (/proc/PID/fd) and threads
# (/proc/PID/status), plus the app states from `status --json`, and prints one Markdown row per
# sample, then a summary: start/end/min/max of each, and "flat" as (end − first sample after the
# warm-up) and the least-squares slope per minute over the samples after the warm-up (60 s; 20 s
# with --quick). Exit code 1 if an app ended `errored`, a citrusctl restart failed, citrusd did
# not exit 0 on SIGTERM, or a process outlived it. Progress goes to stderr.
#
# Every process started here, directly or through citrusd, carries BENCH_TAG=<random> in its
# environment; citrusd is stopped with SIGTERM at the end, leftovers are reported and killed, and
# the EXIT trap removes the temp dir. Needs: bash, python3, cargo.

BENCH_NAME=citrus-soak
QUICK_IDLE_SECS=60
[[ -z ${BENCH_IDLE_SECS:-} && " $* " != *" --quick "* ]] && BENCH_IDLE_SECS=600
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" "$@"

SOAK_APPS=${BENCH_SOAK_APPS:-1000}
SOAK_RATE=${BENCH_SOAK_RATE:-2}
[[ $SOAK_APPS =~ ^[0-9]+$ && $SOAK_APPS -ge 10 && $SOAK_APPS -le 5000 ]] \
    || die "BENCH_SOAK_APPS must be a whole number from 10 to 5000, got '$SOAK_APPS'"
[[ $SOAK_RATE =~ ^[0-9]+([.][0-9]+)?$ ]] && python3 -c "import sys; sys.exit(not 0 < float('$SOAK_RATE') <= 50)" \
    || die "BENCH_SOAK_RATE must be a number of restarts per second above 0 and at most 50, got '$SOAK_RATE'"
for tool in sleep false; do
    [[ -x /bin/$tool ]] || die "/bin/$tool not found (the apps run it)"
done

# 1000 supervised apps need ~6 fds each in citrusd (pipes, log files, pidfds): 5.6 measured.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log "ulimit -n = $(ulimit -n), ulimit -u = $(ulimit -u)"

bench_setup

cat >"$WORK/driver.py" <<'PYEOF'
import os, random, subprocess, sys, threading, time

sys.dont_write_bytecode = True
sys.path.insert(0, os.environ["B_BENCH_DIR"])
import benchlib
from benchlib import CHILD_ENV, CITRUSCTL, IDLE, QUICK, WORK, log, median, open_fds, p95, proc_status

N_APPS = int(os.environ["B_SOAK_APPS"])
RATE = float(os.environ["B_SOAK_RATE"])
EVERY = 10.0                     # s between samples
WARMUP = 20.0 if QUICK else 60.0  # s before the sample "flat" is measured from
N_CRASH = N_APPS // 10
N_RESTARTED = N_APPS // 5
# restart_delay spread over 1-3 s so that the crashers do not loop in lock-step.
def crash(i):
    return {"command": ["/bin/false"], "restart_delay": f"{1000 + i * 20 % 2000}ms", "min_uptime": "1s",
            "max_restarts": 1000000}


SLEEP = {"command": ["/bin/sleep", "100000"]}


class Restarter(threading.Thread):
    """`citrusctl restart NAME` of a random app of `names`, RATE per second, one at a time."""

    def __init__(self, sock, names):
        super().__init__(daemon=True)
        self.sock, self.names, self.done = sock, names, threading.Event()
        self.ok, self.failed, self.walls, self.errors = 0, 0, [], {}

    def run(self):
        nxt = time.monotonic()
        while not self.done.is_set():
            name = random.choice(self.names)
            t = time.monotonic()
            r = subprocess.run([CITRUSCTL, "--socket", self.sock, "restart", name],
                               capture_output=True, env=CHILD_ENV, timeout=60)
            self.walls.append(time.monotonic() - t)
            if r.returncode == 0:
                self.ok += 1
            else:
                self.failed += 1
                msg = r.stderr.decode(errors="replace").strip()[:120]
                self.errors[msg] = self.errors.get(msg, 0) + 1
            nxt = max(nxt + 1 / RATE, time.monotonic())
            self.done.wait(nxt - time.monotonic())

    def stop(self):
        self.done.set()
        self.join(90)


def sample(dm, t0):
    st = proc_status(dm.pid)
    states, restarts = {}, 0
    for a in dm.status()["apps"]:
        states[a["state"]] = states.get(a["state"], 0) + 1
        restarts += a["restarts"]
    return {"t": time.monotonic() - t0, "rss_kb": int(st["VmRSS"].split()[0]),
            "fds": open_fds(dm.pid), "threads": int(st["Threads"]), "states": states,
            "restarts": restarts}


def slope_per_min(xs, ys):
    if len(xs) < 2:
        return 0.0
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den * 60 if den else 0.0


def soak():
    d = os.path.join(WORK, "soak")
    apps = {}
    for i in range(N_APPS):
        apps[f"c{i:04d}" if i < N_CRASH else f"s{i:04d}"] = crash(i) if i < N_CRASH else SLEEP
    sleepers = [n for n in apps if n.startswith("s")]
    restarted = random.sample(sleepers, N_RESTARTED)
    cfg = benchlib.write_config(d, apps)
    dm = benchlib.Daemon(d, cfg).start()
    dm.wait_ping(30)
    deadline = time.monotonic() + 60 + N_APPS * 0.1
    while True:
        s = dm.status()["apps"]
        if sum(1 for a in s if a["name"].startswith("s") and a["state"] == "online") == len(sleepers):
            break
        dm.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"sleepers not all online within {60 + N_APPS * 0.1:.0f}s")
        time.sleep(0.2)
    log(f"{len(sleepers)} sleepers online, {N_CRASH} crashers looping; soak {IDLE:g}s, "
        f"{RATE:g} restarts/s over {N_RESTARTED} apps, sample every {EVERY:g}s")
    t0 = time.monotonic()
    cpu0 = benchlib.cpu_ticks(dm.pid)
    rest = Restarter(dm.sock, restarted)
    rest.start()
    samples = []
    try:
        k = 0
        while True:
            dm.check_alive()
            samples.append(sample(dm, t0))
            s = samples[-1]
            log(f"t={s['t']:.0f}s rss={s['rss_kb'] * 1024 / 1e6:.2f} MB fds={s['fds']} threads={s['threads']} "
                f"states={s['states']} restarts so far {rest.ok} ok / {rest.failed} failed")
            k += 1
            if k * EVERY > IDLE + 0.001:
                break
            time.sleep(max(0.0, t0 + k * EVERY - time.monotonic()))
    finally:
        rest.stop()
    cpu = (benchlib.cpu_ticks(dm.pid) - cpu0) / benchlib.CLK_TCK / (time.monotonic() - t0) * 100
    final = dm.status()["apps"]
    errored = [a["name"] for a in final if a["state"] == "errored"]
    crash_restarts = [a["restarts"] for a in final if a["name"].startswith("c")]
    secs, rc = dm.stop()
    return samples, rest, cpu, errored, crash_restarts, secs, rc


def main():
    load0 = os.getloadavg()
    samples, rest, cpu, errored, crash_restarts, secs, rc = soak()
    mode = "quick" if QUICK else "full"
    print(f"\ncitrusd soak ({mode} run: {N_APPS} apps, {N_CRASH} crash-looping, {RATE:g} `citrusctl restart`/s "
          f"over {N_RESTARTED} apps, {IDLE:g} s, sample every {EVERY:g} s, {os.cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n")
    print("| t (s) | RSS (MB) | fds | threads | apps online | backoff | errored | other | restarts (all apps) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s in samples:
        st = dict(s["states"])
        on, bo, er = st.pop("online", 0), st.pop("backoff", 0), st.pop("errored", 0)
        other = ", ".join(f"{k} {v}" for k, v in sorted(st.items())) or "0"
        print(f"| {s['t']:.0f} | {s['rss_kb'] * 1024 / 1e6:.2f} | {s['fds']} | {s['threads']} | {on} | {bo} | {er} | "
              f"{other} | {s['restarts']} |")
    after = [s for s in samples if s["t"] >= WARMUP - 0.5] or samples[-1:]
    print("\n| measure | start | end | min | max | end − first after warm-up | slope after warm-up |")
    print("|---|---|---|---|---|---|---|")
    flat_notes = []
    # RSS: start/end/min/max in MB (10^6 B), the drift in kB (VmRSS's own unit, KiB).
    for key, label, mb in (("rss_kb", "RSS", True), ("fds", "fds", False), ("threads", "threads", False)):
        vals = [s[key] for s in samples]
        xs, ys = [s["t"] for s in after], [s[key] for s in after]
        delta, slope = ys[-1] - ys[0], slope_per_min(xs, ys)
        fmt = (lambda v: f"{v * 1024 / 1e6:.2f} MB") if mb else str
        u = " kB" if mb else ""
        print(f"| {label} | {fmt(vals[0])} | {fmt(vals[-1])} | {fmt(min(vals))} | {fmt(max(vals))} | "
              f"{delta:+d}{u} (from t={after[0]['t']:.0f} s) | {slope:+.2f}{u}/min over {len(after)} samples |")
    walls = rest.walls or [0.0]
    print(f"\n- warm-up: {WARMUP:g} s; \"flat\" is the end value minus the first sample at or after the "
          f"warm-up, and the least-squares slope of the samples from then on (per minute).")
    print(f"- citrusctl restarts: {rest.ok} ok, {rest.failed} failed"
          + (f" ({rest.errors})" if rest.errors else "")
          + f"; wall time median {median(walls) * 1e3:.0f} ms, p95 {p95(walls) * 1e3:.0f} ms, max {max(walls) * 1e3:.0f} ms.")
    print(f"- crash-looping apps: restarts per app at the end min {min(crash_restarts)}, median "
          f"{median(crash_restarts):.0f}, max {max(crash_restarts)}; apps `errored` at the end: {len(errored)}"
          + (f" ({errored[:10]})" if errored else "") + ".")
    print(f"- citrusd CPU over the soak: {cpu:.1f} % of one core; SIGTERM → exit {secs:.1f} s (rc {rc}); "
          f"load average {load0[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end.")
    print(f"- leftover processes after citrusd exited: {len(benchlib.LEFTOVERS)}"
          + (f" ({'; '.join(benchlib.LEFTOVERS)})" if benchlib.LEFTOVERS else " (every supervised process was gone)") + ".")
    sys.stdout.flush()
    return 1 if (benchlib.LEFTOVERS or errored or rc != 0 or rest.failed) else 0


if __name__ == "__main__":
    benchlib.run_main(main)
PYEOF

log "soaking for ${IDLE_SECS}s$([[ $QUICK == 1 ]] && echo ' (quick)')"
run_driver soak-checks B_SOAK_APPS="$SOAK_APPS" B_SOAK_RATE="$SOAK_RATE"
