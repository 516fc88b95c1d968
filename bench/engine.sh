#!/usr/bin/env bash
# bench/engine.sh — citrus-engine under a simulated fleet: memory, CPU, status throughput, command
# round trips and the reconnect after an engine restart, for 1,000 and 10,000 agents.
#
# Usage: bench/engine.sh [--quick] [--help]
#
#   --quick            fast sanity run: 200 agents only, 10 s runs (unless BENCH_IDLE_SECS is set).
#   BENCH_IDLE_SECS    length of each measured run in seconds (default 30, 10 with --quick).
#   BENCH_AGENTS       fleet sizes, space-separated (default "1000 10000", "200" with --quick).
#   BENCH_TMPDIR       where the temp dir is made (default ${TMPDIR:-/tmp}).
#   CARGO_TARGET_DIR   respected: binaries are taken from ${CARGO_TARGET_DIR:-target}/release.
#
# For each fleet size N, a fresh engine (its own temp dir, SQLite DB and port on 127.0.0.1, admin
# token in CITRUS_ADMIN_TOKEN, status_history_retention = "7d", status_interval = "1s" like the
# simulated agents) and the load generator examples/engine_load.rs:
#   enroll   N agents through POST /admin/agents + POST /agent/enroll (64 in flight);
#   steady   `engine_load run`: N WebSockets (the ramp: until all are connected, at most 120 s),
#            then the measured part, the run length: one status_update per agent per second and
#            20 create_site commands/s to random agents, each timed from its POST until the
#            long-poll GET /admin/operations/{id}?wait=5s says `completed`. Every second the
#            driver reads the engine's VmRSS (/proc/PID/status) and utime+stime (/proc/PID/stat
#            fields 14+15) and GET /admin/stats. CPU % (of one core; 200 % = both cores) and
#            stored status updates/s (the statusUpdates delta) are taken over the measured part
#            (from its second second); RSS peak is over the whole run, ramp included.
#   restart  a second `engine_load run --exit-after-reconnect`: once all N agents are connected
#            (at most 120 s) and 3 s have passed, SIGTERM the engine, wait for it to exit, start
#            it again on the same port and DB; the agents reconnect with full-jitter backoff (base
#            1 s, cap 30 s) and the load generator reports the time from the mass disconnect
#            (its first disconnect) until all N are connected again.
#
# The load generator runs on the same machine (same 2 cores): its own CPU and RSS are listed under
# the table. Builds `cargo build --release --bin citrus-engine --example engine_load`, runs
# everything from one python3 (stdlib) driver and prints one Markdown table on stdout. Progress
# goes to stderr. Every process started here carries BENCH_TAG=<random> in its environment; the
# EXIT trap stops them all by pid (engines first, with SIGTERM) and removes the temp dir.
#
# Needs: bash, python3 (>= 3.8), cargo, an open-files hard limit above N + 1000 (one socket per
# agent in the engine and in the load generator, each its own process).

BENCH_NAME=citrus-bench-engine
QUICK_IDLE_SECS=10
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" "$@"

if [[ $QUICK == 1 ]]; then
    RUN_SECS=$IDLE_SECS
    SIZES=${BENCH_AGENTS:-200}
else
    RUN_SECS=${BENCH_IDLE_SECS:-30}
    SIZES=${BENCH_AGENTS:-1000 10000}
fi
[[ $RUN_SECS =~ ^[0-9]+$ && $RUN_SECS -ge 5 ]] || die "BENCH_IDLE_SECS must be a whole number of seconds >= 5, got '$RUN_SECS'"
[[ $SIZES =~ ^[0-9]+( [0-9]+)*$ ]] || die "BENCH_AGENTS must be space-separated numbers, got '$SIZES'"

# One socket per agent in the engine and in the load generator (separate processes).
ulimit -Sn 65536 2>/dev/null || ulimit -Sn "$(ulimit -Hn)" || true
MAX_N=0
for n in $SIZES; do if ((n > MAX_N)); then MAX_N=$n; fi; done
FDS=$(ulimit -Sn)
if [[ $FDS != unlimited ]] && ((FDS < MAX_N + 1000)); then
    die "the open-files limit is $FDS, $MAX_N agents need $((MAX_N + 1000)): raise the hard limit (ulimit -Hn) or set BENCH_AGENTS"
fi

# --- build, temp dir, cleanup (as bench_setup, for the engine's targets) --------------------------
TARGET_DIR=${CARGO_TARGET_DIR:-target}
[[ $TARGET_DIR == /* ]] || TARGET_DIR=$REPO/$TARGET_DIR
log "building: cargo build --release --bin citrus-engine --example engine_load (target dir $TARGET_DIR)"
TIME=()
[[ -x /usr/bin/time ]] && TIME=(/usr/bin/time -f 'cargo build: %e s wall, %M KB max RSS')
(cd "$REPO" && "${TIME[@]}" cargo build --release --bin citrus-engine --example engine_load >&2) ||
    die "cargo build --release --bin citrus-engine --example engine_load failed"
ENGINE=$TARGET_DIR/release/citrus-engine
LOADGEN=$TARGET_DIR/release/examples/engine_load
[[ -x $ENGINE && -x $LOADGEN ]] || die "built binaries not found at $ENGINE / $LOADGEN"
# run_driver passes these to benchlib, which only reads the names; this bench uses neither.
CITRUSD=$TARGET_DIR/release/citrusd
CITRUSCTL=$TARGET_DIR/release/citrusctl

BASE_TMP=${BENCH_TMPDIR:-${TMPDIR:-/tmp}}
WORK=$(mktemp -d "$BASE_TMP/$BENCH_NAME.XXXXXX") || die "cannot create a temp dir under $BASE_TMP"
TAG=$(basename "$WORK")-$$-$RANDOM
DRIVER_PID=""
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
log "temp dir $WORK (tag $TAG); open-files limit $FDS"

# --- driver --------------------------------------------------------------------------------------
cat >"$WORK/driver.py" <<'PYEOF'
import json, os, secrets, signal, socket, subprocess, sys, threading, time
import urllib.error, urllib.request

sys.dont_write_bytecode = True
sys.path.insert(0, os.environ["B_BENCH_DIR"])
import benchlib
from benchlib import CHILD_ENV, CLK_TCK, QUICK, WORK, cpu_ticks, log, proc_status

ENGINE_BIN, LOADGEN = os.environ["B_ENGINE"], os.environ["B_LOADGEN"]
SIZES = [int(x) for x in os.environ["B_SIZES"].split()]
RUN = int(os.environ["B_RUN"])
INTERVAL, CPS = "1s", 20
RAMP_TIMEOUT = 120  # s: longest wait for all agents to connect before measuring anyway
TOKEN = secrets.token_hex(24)
ENV = dict(CHILD_ENV, CITRUS_ADMIN_TOKEN=TOKEN)
ENGINES = []  # running Engine objects, stopped on the way out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_kb(pid, key):
    try:
        return int(proc_status(pid).get(key, "0 kB").split()[0])
    except OSError:
        return 0


class Engine:
    """One citrus-engine with its own dir, config and SQLite DB; restartable on the same port."""

    def __init__(self, d, port):
        self.dir, self.port = d, port
        self.url = f"http://127.0.0.1:{port}"
        os.makedirs(d, exist_ok=True)
        self.cfg = os.path.join(d, "engine.toml")
        with open(self.cfg, "w") as f:
            f.write(f'listen = "127.0.0.1:{port}"\n'
                    f'public_url = "{self.url}"\n'
                    'database_url = "sqlite://engine.db"\n'
                    'status_history_retention = "7d"\n'
                    f'status_interval = "{INTERVAL}"\n')  # the agents' interval: 3 missed = offline
        self.proc = None

    def start(self, timeout=60):
        """Starts the engine and waits until GET /admin/stats answers; returns the seconds taken."""
        t0 = time.monotonic()
        self.errlog = open(os.path.join(self.dir, "engine.stderr"), "ab")
        self.proc = subprocess.Popen([ENGINE_BIN, "--config", self.cfg], cwd=self.dir, env=ENV,
                                     stdin=subprocess.DEVNULL, stdout=self.errlog, stderr=self.errlog)
        ENGINES.append(self)
        with open(os.path.join(WORK, "citrusd.pids"), "a") as f:  # common.sh: SIGTERM'd first
            f.write(f"{self.proc.pid}\n")
        deadline = t0 + timeout
        while True:
            self.check_alive()
            try:
                self.stats(timeout=1)
                return time.monotonic() - t0
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the engine did not answer GET /admin/stats within {timeout}s; "
                                   f"stderr: {self.stderr_tail()}")
            time.sleep(0.05)

    @property
    def pid(self):
        return self.proc.pid

    def check_alive(self):
        rc = self.proc.poll()
        if rc is not None:
            raise RuntimeError(f"citrus-engine exited with {rc}; stderr: {self.stderr_tail()}")

    def stderr_tail(self, n=600):
        try:
            with open(os.path.join(self.dir, "engine.stderr"), "rb") as f:
                return f.read().decode(errors="replace")[-n:].strip() or "?"
        except OSError:
            return "?"

    def stats(self, timeout=2):
        req = urllib.request.Request(f"{self.url}/admin/stats",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.load(r)

    def stop(self, timeout=30):
        """SIGTERM, wait; SIGKILL after timeout. Returns (seconds to exit, exit code, killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return None, self.proc.returncode if self.proc else None, False
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        killed = False
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"citrus-engine {self.pid} still running {timeout}s after SIGTERM: SIGKILL")
            self.proc.kill()
            rc, killed = self.proc.wait(), True
        finally:
            if self in ENGINES:
                ENGINES.remove(self)
            self.errlog.close()
        return time.monotonic() - t0, rc, killed


class Sampler(threading.Thread):
    """Every second: (t, VmRSS kB, utime+stime ticks, /admin/stats or None) of the engine."""

    def __init__(self, engine):
        super().__init__(daemon=True)
        self.engine, self.samples, self.done = engine, [], threading.Event()

    def run(self):
        next_t = time.monotonic()
        while not self.done.is_set():
            try:
                t, rss, ticks = time.monotonic(), vm_kb(self.engine.pid, "VmRSS"), cpu_ticks(self.engine.pid)
            except OSError:
                return
            try:
                st = self.engine.stats()
            except (OSError, ValueError):
                st = None
            self.samples.append((t, rss, ticks, st))
            next_t += 1.0
            self.done.wait(max(0.0, next_t - time.monotonic()))

    def stop(self):
        self.done.set()
        self.join()


def loadgen(args, timeout):
    """Runs engine_load with args (progress on our stderr); returns its JSON summary."""
    p = subprocess.Popen([LOADGEN, *args], env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise TimeoutError(f"engine_load {args[0]} did not finish within {timeout}s")
    if p.returncode != 0:
        raise RuntimeError(f"engine_load {args[0]} exited with {p.returncode}")
    return json.loads(out.decode().strip().splitlines()[-1])


def start_loadgen(args):
    return subprocess.Popen([LOADGEN, *args], env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)


def run_args(engine, keys, n, duration):
    return ["run", "--url", engine.url, "--keys", keys, "--agents", str(n), "--interval", INTERVAL,
            "--duration", f"{duration}s", "--commands-per-sec", str(CPS),
            "--ramp-timeout", f"{RAMP_TIMEOUT}s"]


def steady_figures(samples, t_start, summary):
    """Engine CPU % and stored status/s over the measured part of the run (from 1 s after it
    started, i.e. after all agents connected), RSS peak and end over the whole run."""
    if not samples:
        raise RuntimeError("no sample of the engine was taken")
    lo, hi = t_start + summary["steady_from_secs"] + 1, t_start + summary["run_secs"] + 0.5
    window = [s for s in samples if lo <= s[0] <= hi] or samples
    if len(window) < 2:
        window = samples[-2:] if len(samples) >= 2 else samples * 2
    (t0, _, c0, _), (t1, _, c1, _) = window[0], window[-1]
    dt = max(t1 - t0, 1e-9)
    cpu = (c1 - c0) / CLK_TCK / dt * 100
    whole_dt = max(samples[-1][0] - samples[0][0], 1e-9)
    cpu_whole = (samples[-1][2] - samples[0][2]) / CLK_TCK / whole_dt * 100
    with_stats = [s for s in window if s[3] is not None and "statusUpdates" in s[3]]
    stored = None
    if len(with_stats) >= 2:
        a, b = with_stats[0], with_stats[-1]
        stored = (b[3]["statusUpdates"] - a[3]["statusUpdates"]) / max(b[0] - a[0], 1e-9)
    online = [s[3].get("agents", {}).get("online") for s in samples if s[3]]
    return {
        "rss_peak_mb": max(s[1] for s in samples) * 1024 / 1e6,
        "rss_end_mb": samples[-1][1] * 1024 / 1e6,
        "cpu": cpu, "cpu_whole": cpu_whole, "window_secs": dt,
        "stored_per_sec": stored, "online_max": max((o for o in online if o is not None), default=None),
    }


def wait_ready(p, ready, timeout):
    """Until engine_load (process p) creates its --ready-file: all its agents are connected, or
    its ramp timed out. (The engine's own online count can still hold the previous run's agents.)"""
    deadline = time.monotonic() + timeout
    while not os.path.exists(ready):
        if p.poll() is not None:
            raise RuntimeError(f"engine_load run (restart) exited with {p.returncode} before its agents connected")
        if time.monotonic() > deadline:
            raise TimeoutError(f"engine_load's agents were not connected within {timeout}s")
        time.sleep(0.1)


def bench_size(n):
    d = os.path.join(WORK, f"n{n}")
    engine = Engine(d, free_port())
    r = {"n": n}
    r["start_secs"] = engine.start()
    try:
        keys = os.path.join(d, "keys.txt")
        log(f"[{n}] enrolling {n} agents")
        e = loadgen(["enroll", "--url", engine.url, "--agents", str(n), "--out", keys,
                     "--name-prefix", f"bench{n}-"], timeout=900)
        r["enroll_secs"] = e["enroll_secs"]

        log(f"[{n}] steady run: {RUN} s, status every {INTERVAL}, {CPS} commands/s")
        sampler = Sampler(engine)
        t_start = time.monotonic()
        sampler.start()
        try:
            r["steady"] = loadgen(run_args(engine, keys, n, RUN), timeout=RUN + RAMP_TIMEOUT + 90)
        finally:
            sampler.stop()
        engine.check_alive()
        r["hwm_mb"] = vm_kb(engine.pid, "VmHWM") * 1024 / 1e6
        r.update(steady_figures(sampler.samples, t_start, r["steady"]))

        try:
            restart_run(engine, keys, n, r)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:
            log(f"[{n}] restart run FAILED: {type(e).__name__}: {e}")
            r["restart_error"] = f"{type(e).__name__}: {e}".replace("\n", " ")[:400]
    finally:
        engine.stop()
    return r


def restart_run(engine, keys, n, r):
    budget = 90 if QUICK else 150
    log(f"[{n}] restart run: SIGTERM the engine 3 s after all {n} agents connected, start it again")
    ready = os.path.join(engine.dir, "restart.ready")
    p = start_loadgen(run_args(engine, keys, n, budget) + ["--exit-after-reconnect", "--ready-file", ready])
    try:
        wait_ready(p, ready, timeout=RAMP_TIMEOUT + 30)
        time.sleep(3)
        t_kill = time.monotonic()
        r["stop"] = engine.stop()
        engine.start()
        r["down_secs"] = time.monotonic() - t_kill
        out, _ = p.communicate(timeout=budget + RAMP_TIMEOUT + 90)
        if p.returncode != 0:
            raise RuntimeError(f"engine_load run (restart) exited with {p.returncode}")
        r["restart"] = json.loads(out.decode().strip().splitlines()[-1])
        r["restart_hwm_mb"] = vm_kb(engine.pid, "VmHWM") * 1024 / 1e6
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()


def fmt(x, spec=".1f", none="n/a"):
    return none if x is None else format(x, spec)


def main():
    load0 = os.getloadavg()
    results, failed = [], []
    for n in SIZES:
        log(f"=== {n} agents")
        try:
            results.append(bench_size(n))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:
            log(f"{n} agents FAILED: {type(e).__name__}: {e}")
            failed.append(n)
            results.append({"n": n, "error": f"{type(e).__name__}: {e}".replace("\n", " ")[:400]})

    mode = "quick" if QUICK else "full"
    print(f"\ncitrus-engine load bench ({mode} run, {RUN} s per run, status every {INTERVAL} per agent, "
          f"{CPS} commands/s, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
    print("| agents | engine RSS peak MB | engine CPU % | status stored/s | cmd p50 ms | cmd p99 ms | reconnect s |")
    print("|---|---|---|---|---|---|---|")
    notes = []
    for r in results:
        n = r["n"]
        if "error" in r:
            print(f"| {n} | FAILED | | | | | |")
            notes.append(f"- {n} agents: {r['error']}")
            continue
        s, rs = r["steady"], r.get("restart")
        if rs is None:
            reconnect = "FAILED"
        elif rs.get("connect_secs") is None:
            reconnect = f"n/a (not all connected within {RAMP_TIMEOUT} s)"
        elif rs.get("reconnect_secs") is not None:
            reconnect = f"{rs['reconnect_secs']:.1f}"
        elif rs.get("reconnect_fraction") is not None:
            reconnect = f"> {rs['run_secs'] - (rs.get('outage_at_secs') or 0):.0f} ({rs['reconnect_fraction'] * 100:.0f} % back)"
        else:
            reconnect = "no outage seen"
        stored = fmt(r["stored_per_sec"], ".0f", f"n/a (sent {s['status_per_sec']:.0f})")
        print(f"| {n} | {r['rss_peak_mb']:.0f} | {r['cpu']:.0f} | {stored} | {fmt(s['rtt_p50_ms'], '.1f')} "
              f"| {fmt(s['rtt_p99_ms'], '.1f')} | {reconnect} |")
        notes.append(
            f"- {n} agents: enrolled in {r['enroll_secs']:.1f} s; {'all connected in ' + format(s['connect_secs'], '.2f') + ' s' if s['connect_secs'] is not None else f'NOT all connected within {RAMP_TIMEOUT} s'} "
            f"({s['connected']}/{n} at the end, {s['connect_failures']} failed attempts); status sent {s['status_per_sec']:.0f}/s; "
            f"commands {s['commands']} ({s['command_failures']} failed, max {fmt(s['rtt_max_ms'], '.1f')} ms); "
            f"engine RSS end {r['rss_end_mb']:.0f} MB (VmHWM {r['hwm_mb']:.0f} MB), CPU over the whole run incl. ramp "
            f"{r['cpu_whole']:.0f} %, steady window {r['window_secs']:.0f} s; load generator "
            f"{s['loadgen_cpu_secs'] / max(s['run_secs'], 1e-9) * 100:.0f} % CPU, {s['loadgen_rss_peak_mb']:.0f} MB RSS peak, "
            f"timer lag p99 {fmt(s.get('loadgen_lag_p99_ms'))} ms (a high value: the load generator itself was short of CPU)")
        if "stop" in r:
            stop_secs, rc, killed = r["stop"]
            line = (f"- {n} agents, restart: SIGTERM → exit {fmt(stop_secs, '.2f')} s (rc {rc}{', SIGKILLed' if killed else ''}), "
                    f"engine back (answering) {r['down_secs']:.2f} s after the SIGTERM")
            if rs is not None:
                line += (f"; reconnect measured from the mass disconnect at {fmt(rs.get('outage_at_secs'), '.1f')} s, "
                         f"{rs['connect_failures']} refused/failed attempts meanwhile, commands {rs['commands']} "
                         f"({rs['command_failures']} failed); restarted engine VmHWM {r['restart_hwm_mb']:.0f} MB")
            notes.append(line)
        if "restart_error" in r:
            notes.append(f"- {n} agents, restart: FAILED: {r['restart_error']}")
            failed.append(n)
    print()
    print("Targets: 10,000 agents on 2 cores, command round trip p99 < 50 ms, engine RSS < 300 MB.")
    print("CPU % is of one core (200 % = both), over the measured part of the run (after all agents connected);")
    print("status stored/s is the engine's statusUpdates delta over it (expected: agents / interval);")
    print("a command round trip runs from just before its POST until the long-poll GET says `completed`.")
    print("The load generator shares the 2 cores with the engine; other work on the machine adds noise "
          f"(load average {load0[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end).")
    big = [r for r in results if r["n"] >= 10000 and "steady" in r]
    for r in big:
        p99 = r["steady"].get("rtt_p99_ms")
        ok = r["rss_peak_mb"] < 300 and p99 is not None and p99 < 50 and r["steady"]["connected"] == r["n"]
        print(f"{r['n']} agents: targets {'met' if ok else 'NOT met'} "
              f"(RSS peak {r['rss_peak_mb']:.0f} MB, p99 {fmt(p99)} ms, {r['steady']['connected']}/{r['n']} connected).")
    print()
    for line in notes:
        print(line)
    sys.stdout.flush()
    return 1 if failed else 0


def stop_engines():
    for e in list(ENGINES):
        try:
            e.stop(20)
        except BaseException:
            pass


if __name__ == "__main__":
    benchlib.run_main(main, stop_engines)
PYEOF

log "running: agents $SIZES, ${RUN_SECS}s per run$([[ $QUICK == 1 ]] && echo ', quick')"
run_driver runs B_ENGINE="$ENGINE" B_LOADGEN="$LOADGEN" B_SIZES="$SIZES" B_RUN="$RUN_SECS"
