#!/usr/bin/env bash
# bench/engine.sh — citrus-engine under a simulated fleet: memory, CPU, status throughput, command
# round trips and the reconnect after an engine restart, for 1,000 and 10,000 agents; the same
# with the web panel's live streams open, and (with --panel) the panel pages' time to first byte.
#
# Usage: bench/engine.sh [--quick] [--panel] [--help]
#
#   --quick            fast sanity run: 200 agents only, 10 s runs (unless BENCH_IDLE_SECS is set).
#   --panel            also time the panel's pages under the load (needs the panel: POST /login).
#   BENCH_IDLE_SECS    length of each measured run in seconds (default 30, 10 with --quick).
#   BENCH_AGENTS       fleet sizes, space-separated (default "1000 10000", "200" with --quick).
#   BENCH_LIVE_STREAMS panel live streams of the `live` run (default 50; 0 skips that run).
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
#   live     the steady run on a fresh engine (its own dir, DB and port, the N agents enrolled
#            anew: an engine's command p99 grows over successive runs as its history table
#            grows, streams or not, so only first runs compare) with `--live-streams 50`: 50
#            panel streams (GET /admin/live, Server-Sent Events) opened when the measured part
#            starts and read by the load generator as fast as they come; command round trips,
#            engine CPU and RSS as in the steady run, and what the streams carried (messages,
#            MB, reloads).
#   panel    (--panel) the steady run on a fresh engine, while the driver logs in (POST /login with the
#            admin token, the session cookie) and, once all agents are connected, GETs `/` and
#            `/agents/{id}` one after the other with the cookie for the whole run: time to the
#            response head (TTFB) p50/p99 of each, and the size of `/` (as sent, and gzipped when
#            the engine compresses). Without a panel (POST /login 404) it says so and goes on.
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
# --panel is this script's own; common.sh parses the rest.
PANEL=0
ARGS=()
for arg in "$@"; do
    if [[ $arg == --panel ]]; then PANEL=1; else ARGS+=("$arg"); fi
done
# (A `source` without arguments would see this script's own, --panel among them.)
set -- ${ARGS[@]+"${ARGS[@]}"}
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" "$@"
LIVE_STREAMS=${BENCH_LIVE_STREAMS:-50}
[[ $LIVE_STREAMS =~ ^[0-9]+$ && $LIVE_STREAMS -le 256 ]] || die "BENCH_LIVE_STREAMS must be a whole number from 0 to 256 (the engine's cap), got '$LIVE_STREAMS'"

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
import gzip, http.client, json, os, secrets, signal, socket, subprocess, sys, threading, time
import urllib.error, urllib.parse, urllib.request

sys.dont_write_bytecode = True
sys.path.insert(0, os.environ["B_BENCH_DIR"])
import benchlib
from benchlib import CHILD_ENV, CLK_TCK, QUICK, WORK, cpu_ticks, log, proc_status

ENGINE_BIN, LOADGEN = os.environ["B_ENGINE"], os.environ["B_LOADGEN"]
SIZES = [int(x) for x in os.environ["B_SIZES"].split()]
RUN = int(os.environ["B_RUN"])
LIVE_STREAMS = int(os.environ["B_LIVE_STREAMS"])
PANEL = os.environ["B_PANEL"] == "1"
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


def measured_run(engine, keys, n, extra=(), beside=None):
    """One steady run (engine_load run with `extra` arguments) with the engine sampled; returns
    (loadgen summary, steady figures). `beside(ready_file)` runs in a thread meanwhile."""
    ready = os.path.join(engine.dir, f"ready-{time.monotonic_ns()}")
    sampler = Sampler(engine)
    t_start = time.monotonic()
    sampler.start()
    thread = None
    if beside is not None:
        thread = threading.Thread(target=beside, args=(ready,), daemon=True)
        thread.start()
    try:
        summary = loadgen(run_args(engine, keys, n, RUN) + ["--ready-file", ready, *extra],
                          timeout=RUN + RAMP_TIMEOUT + 90)
    finally:
        sampler.stop()
        if thread is not None:
            thread.join(timeout=30)
    engine.check_alive()
    return summary, steady_figures(sampler.samples, t_start, summary)


class NoPanel(Exception):
    """The engine serves no panel (POST /login is not there)."""


def login(engine):
    """POST /login with the admin token; the session cookie (`citrus_session=…`)."""
    conn = http.client.HTTPConnection("127.0.0.1", engine.port, timeout=10)
    try:
        conn.request("POST", "/login", urllib.parse.urlencode({"token": TOKEN}),
                     {"Content-Type": "application/x-www-form-urlencoded"})
        resp = conn.getresponse()
        resp.read()
    finally:
        conn.close()
    if resp.status == 404:
        raise NoPanel("POST /login answered 404: this engine has no web panel")
    if resp.status != 303:
        raise RuntimeError(f"POST /login answered {resp.status}, not 303")
    for header in resp.headers.get_all("Set-Cookie") or []:
        if header.startswith("citrus_session="):
            return header.split(";")[0]
    raise RuntimeError("POST /login set no citrus_session cookie")


def page_sampler(engine, cookie, paths, out, stop):
    """GETs each of `paths` in turn on one keep-alive connection until `stop` is set: per path
    the times to the response head (ms), and the last body's size."""
    conn = http.client.HTTPConnection("127.0.0.1", engine.port, timeout=10)
    try:
        while not stop.is_set():
            for path in paths:
                t0 = time.perf_counter()
                conn.request("GET", path, headers={"Cookie": cookie})
                resp = conn.getresponse()
                ttfb = (time.perf_counter() - t0) * 1000
                body = resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"GET {path} answered {resp.status}: {body[:200]!r}")
                out[path]["ms"].append(ttfb)
                out[path]["bytes"] = len(body)
            time.sleep(0.05)
    finally:
        conn.close()


def page_size_gzip(engine, cookie, path):
    """The size of `path` as sent to a browser that accepts gzip (None: sent uncompressed)."""
    conn = http.client.HTTPConnection("127.0.0.1", engine.port, timeout=10)
    try:
        conn.request("GET", path, headers={"Cookie": cookie, "Accept-Encoding": "gzip"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.getheader("Content-Encoding", "") != "gzip":
            return None
        gzip.decompress(body)
        return len(body)
    finally:
        conn.close()


def panel_run(engine, keys, n):
    """The steady run while the panel's pages are timed (see the header)."""
    cookie = login(engine)
    with open(keys) as f:
        agent = f.readline().split()[0]
    paths = ["/", f"/agents/{agent}"]
    out = {p: {"ms": [], "bytes": None} for p in paths}
    errors = []

    def beside(ready):
        deadline = time.monotonic() + RAMP_TIMEOUT + 30
        while not os.path.exists(ready) and time.monotonic() < deadline:
            time.sleep(0.1)
        stop = threading.Event()
        timer = threading.Timer(max(RUN - 2, 1), stop.set)
        timer.start()
        try:
            page_sampler(engine, cookie, paths, out, stop)
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
        finally:
            timer.cancel()

    summary, figures = measured_run(engine, keys, n, beside=beside)
    if errors:
        raise RuntimeError(errors[0])
    result = {"summary": summary, "figures": figures, "gzip_bytes": page_size_gzip(engine, cookie, "/")}
    for path in paths:
        ms = sorted(out[path]["ms"])
        result[path] = {"count": len(ms), "bytes": out[path]["bytes"],
                        "p50": benchlib_pct(ms, 50), "p99": benchlib_pct(ms, 99)}
    return result


def benchlib_pct(sorted_ms, p):
    """Nearest-rank percentile, as the load generator computes its own."""
    if not sorted_ms:
        return None
    rank = max(1, min(len(sorted_ms), -(-len(sorted_ms) * p // 100)))
    return sorted_ms[int(rank) - 1]


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


def fresh_engine(n, name):
    """A new engine (its own dir, DB and port) with N agents enrolled; (engine, keys, enroll summary)."""
    d = os.path.join(WORK, f"n{n}-{name}")
    engine = Engine(d, free_port())
    start_secs = engine.start()
    try:
        keys = os.path.join(d, "keys.txt")
        log(f"[{n}] {name}: enrolling {n} agents")
        e = loadgen(["enroll", "--url", engine.url, "--agents", str(n), "--out", keys,
                     "--name-prefix", f"bench{n}-"], timeout=900)
    except BaseException:
        engine.stop()
        raise
    return engine, keys, dict(e, start_secs=start_secs)


def on_fresh_engine(n, name, r, work):
    """`work(engine, keys)` on a fresh engine, its result in r[name] (r[name + "_error"] if it
    failed: the other parts still run)."""
    try:
        engine, keys, _ = fresh_engine(n, name)
        try:
            r[name] = work(engine, keys)
        finally:
            engine.stop()
    except (KeyboardInterrupt, SystemExit):
        raise
    except NoPanel as e:
        log(f"[{n}] {name} run skipped: {e}")
        r[f"{name}_error"] = f"not measured: {e} (it is built on the UI branch)"
    except Exception as e:
        log(f"[{n}] {name} run FAILED: {type(e).__name__}: {e}")
        r[f"{name}_error"] = f"FAILED: {type(e).__name__}: {e}".replace("\n", " ")[:400]


def live_work(n):
    def work(engine, keys):
        log(f"[{n}] live run: the steady run with {LIVE_STREAMS} panel live streams open")
        summary, figures = measured_run(engine, keys, n, ["--live-streams", str(LIVE_STREAMS)])
        return dict(figures, summary=summary, hwm_mb=vm_kb(engine.pid, "VmHWM") * 1024 / 1e6)
    return work


def panel_work(n):
    def work(engine, keys):
        log(f"[{n}] panel run: the steady run while GET / and /agents/{{id}} are timed")
        return panel_run(engine, keys, n)
    return work


def bench_size(n):
    engine, keys, e = fresh_engine(n, "steady")
    r = {"n": n, "start_secs": e["start_secs"], "enroll_secs": e["enroll_secs"]}
    try:
        log(f"[{n}] steady run: {RUN} s, status every {INTERVAL}, {CPS} commands/s")
        r["steady"], figures = measured_run(engine, keys, n)
        r["hwm_mb"] = vm_kb(engine.pid, "VmHWM") * 1024 / 1e6
        r.update(figures)
        try:
            restart_run(engine, keys, n, r)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:
            log(f"[{n}] restart run FAILED: {type(e).__name__}: {e}")
            r["restart_error"] = f"{type(e).__name__}: {e}".replace("\n", " ")[:400]
    finally:
        engine.stop()
    if LIVE_STREAMS > 0:
        on_fresh_engine(n, "live", r, live_work(n))
    if PANEL:
        on_fresh_engine(n, "panel", r, panel_work(n))
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
    live_table(results)
    panel_table(results)
    sys.stdout.flush()
    return 1 if failed else 0


def live_table(results):
    rows = [r for r in results if "live" in r or "live_error" in r]
    if not rows:
        return
    print(f"\nWith the panel's live streams: the same steady run on a fresh engine with {LIVE_STREAMS} "
          "GET /admin/live streams open and read for all of it.\n")
    print("| agents | cmd p99 ms without | cmd p99 ms with | cmd p50 ms with | engine RSS peak MB without | "
          "with | engine CPU % with | messages/s per stream | MB/s per stream | reloads |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "live" not in r:
            print(f"| {r['n']} | {fmt(r['steady'].get('rtt_p99_ms'))} | FAILED | | | | | | | |")
            continue
        lv, s = r["live"], r["live"]["summary"]
        secs = max(s["steady_secs"], 1e-9)
        streams = max(s.get("live_open") or 0, 1)
        print(f"| {r['n']} | {fmt(r['steady'].get('rtt_p99_ms'))} | {fmt(s.get('rtt_p99_ms'))} "
              f"| {fmt(s.get('rtt_p50_ms'))} | {r['rss_peak_mb']:.0f} | {lv['rss_peak_mb']:.0f} "
              f"| {lv['cpu']:.0f} | {s.get('live_messages', 0) / streams / secs:.0f} "
              f"| {s.get('live_mb', 0) / streams / secs:.2f} | {s.get('live_reloads')} |")
    print()
    for r in rows:
        if "live_error" in r:
            print(f"- {r['n']} agents, live run: {r['live_error']}")
            continue
        lv, s = r["live"], r["live"]["summary"]
        print(f"- {r['n']} agents, live run: {s.get('live_open')}/{s.get('live_streams')} streams open "
              f"({s.get('live_refused')} refused), {s.get('live_messages')} messages and {s.get('live_mb')} MB "
              f"read in {s['steady_secs']:.0f} s, {s.get('live_reloads')} reloads; commands {s['commands']} "
              f"({s['command_failures']} failed, max {fmt(s['rtt_max_ms'])} ms); engine RSS end "
              f"{lv['rss_end_mb']:.0f} MB (steady run: {r['rss_end_mb']:.0f} MB), VmHWM {lv['hwm_mb']:.0f} MB; "
              f"engine CPU {lv['cpu']:.0f} % (steady run: {r['cpu']:.0f} %); load generator "
              f"{s['loadgen_cpu_secs'] / max(s['run_secs'], 1e-9) * 100:.0f} % CPU, timer lag p99 "
              f"{fmt(s.get('loadgen_lag_p99_ms'))} ms")
    print("Target: command p99 still under 50 ms with the streams open.")


def panel_table(results):
    rows = [r for r in results if "panel" in r or "panel_error" in r]
    if not rows:
        return
    print("\nPanel pages under the load (one client, the session cookie, one request at a time; "
          "TTFB = until the response head):\n")
    print("| agents | GET / TTFB p50 ms | p99 ms | GET /agents/{id} TTFB p50 ms | p99 ms | size of / KB | gzipped KB | cmd p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "panel" not in r:
            print(f"| {r['n']} | {r['panel_error']} | | | | | | |")
            continue
        p = r["panel"]
        home = p["/"]
        agent = next(v for k, v in p.items() if k.startswith("/agents/"))
        gz = p["gzip_bytes"]
        print(f"| {r['n']} | {fmt(home['p50'])} | {fmt(home['p99'])} | {fmt(agent['p50'])} | {fmt(agent['p99'])} "
              f"| {home['bytes'] / 1000:.1f} | {'not compressed' if gz is None else format(gz / 1000, '.1f')} "
              f"| {fmt(p['summary'].get('rtt_p99_ms'))} |")
    for r in rows:
        if "panel" in r:
            p = r["panel"]
            print(f"- {r['n']} agents, panel run: {p['/']['count']} GET / and "
                  f"{next(v for k, v in p.items() if k.startswith('/agents/'))['count']} agent pages timed")


def stop_engines():
    for e in list(ENGINES):
        try:
            e.stop(20)
        except BaseException:
            pass


if __name__ == "__main__":
    benchlib.run_main(main, stop_engines)
PYEOF

log "running: agents $SIZES, ${RUN_SECS}s per run, $LIVE_STREAMS live streams$([[ $PANEL == 1 ]] && echo ', panel pages')$([[ $QUICK == 1 ]] && echo ', quick')"
run_driver runs B_ENGINE="$ENGINE" B_LOADGEN="$LOADGEN" B_SIZES="$SIZES" B_RUN="$RUN_SECS" \
    B_LIVE_STREAMS="$LIVE_STREAMS" B_PANEL="$PANEL"
