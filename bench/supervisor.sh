#!/usr/bin/env bash
# bench/supervisor.sh — supervisor benchmarks for citrusd, each figure beside its floor.
#
# Usage: bench/supervisor.sh [--quick] [--help]
#
#   --quick            fast sanity run: idle window 5 s (unless BENCH_IDLE_SECS is set), fewer
#                      repetitions everywhere.
#   BENCH_IDLE_SECS    idle window of figure 2 in seconds (default 60, 5 with --quick).
#   BENCH_TMPDIR       where the temp dir is made (default ${TMPDIR:-/tmp}); the log-throughput
#                      figure writes 2 x 500 MiB there, so keep it on the same filesystem as the repo.
#   CARGO_TARGET_DIR   respected: binaries are taken from ${CARGO_TARGET_DIR:-target}/<profile>.
#   BENCH_PROFILE      the cargo profile built and measured (default release; `dist` is what hosts
#                      download, see the README's "Releases").
#   BENCH_FIGURES      only these figures, by number, comma-separated (e.g. "2" for the idle cost
#                      at 1/100/1000 apps); default all.
#
# Builds the binaries (cargo build --profile <profile> --bins), compiles a tiny C stamp helper in the
# temp dir, runs every figure from one python3 (stdlib) driver, and prints one Markdown table
# (figure | value | notes) on stdout. Progress goes to stderr. Every process started here, directly
# or through citrusd, carries BENCH_TAG=<random> in its environment; the EXIT trap stops them all by
# pid and removes the temp dir.
#
# Needs: bash, python3, cc/gcc, cargo, hyperfine (installed with apt-get when missing and root;
# otherwise figure 3 is skipped with a note), /usr/bin/time (optional: times the build).

BENCH_NAME=citrus-bench
QUICK_IDLE_SECS=5
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" "$@"

# --- tools ---------------------------------------------------------------------------------------
CC=${CC:-}
if [[ -z $CC ]]; then
    if command -v cc >/dev/null; then CC=cc
    elif command -v gcc >/dev/null; then CC=gcc
    else die "no C compiler (cc/gcc) found; install gcc"; fi
fi
HYPERFINE=$(command -v hyperfine || true)
HYPERFINE_NOTE=""
if [[ -z $HYPERFINE ]]; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        log "hyperfine missing: installing it with apt-get"
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y hyperfine >&2; then
            DEBIAN_FRONTEND=noninteractive apt-get update >&2 || true
            DEBIAN_FRONTEND=noninteractive apt-get install -y hyperfine >&2 || true
        fi
        HYPERFINE=$(command -v hyperfine || true)
        [[ -n $HYPERFINE ]] || HYPERFINE_NOTE="apt-get install hyperfine failed"
    else
        HYPERFINE_NOTE="hyperfine not installed and not root (or no apt-get): install it to get this figure"
    fi
fi
[[ -n $HYPERFINE ]] || log "warning: no hyperfine ($HYPERFINE_NOTE); figure 3 will be skipped"

# 1000 supervised apps need ~4 fds each in citrusd (2 pipes + 2 log files).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log "ulimit -n = $(ulimit -n), ulimit -u = $(ulimit -u)"

# --- build ---------------------------------------------------------------------------------------
bench_setup

# --- C stamp helper ------------------------------------------------------------------------------
cat >"$WORK/stamp.c" <<'EOF'
/* First thing in main: append "<CLOCK_MONOTONIC ns> <pid>\n" to argv[1] (one write, O_APPEND),
 * then pause() forever. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (argc < 2) return 2;
    char buf[64];
    int n = snprintf(buf, sizeof buf, "%lld %d\n",
                     (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec, (int)getpid());
    int fd = open(argv[1], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, buf, (size_t)n) != n) return 1;
    close(fd);
    for (;;) pause();
}
EOF
HELPER_LINK=static
if ! "$CC" -O2 -static -o "$WORK/stamp" "$WORK/stamp.c" 2>"$WORK/cc.err"; then
    HELPER_LINK=dynamic
    "$CC" -O2 -o "$WORK/stamp" "$WORK/stamp.c" 2>"$WORK/cc.err" || { cat "$WORK/cc.err" >&2; die "cannot compile the C stamp helper"; }
fi
log "stamp helper compiled ($HELPER_LINK)"

# Interpreter for the python app of figure 6: citrusd clears the environment of apps, so a shim
# (pyenv) found through PATH would not work there; use the real executable.
APP_PYTHON=$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')

# --- driver --------------------------------------------------------------------------------------
cat >"$WORK/driver.py" <<'PYEOF'
import json, os, re, shlex, signal, subprocess, sys, time
from datetime import datetime, timezone

sys.dont_write_bytecode = True
sys.path.insert(0, os.environ["B_BENCH_DIR"])
import benchlib
from benchlib import (CHILD_ENV, CITRUSCTL, CITRUSD, CLK_TCK, FAILED, IDLE, QUICK, WORK, cpu_ticks, fmt_ms,
                      log, median, mono_ns, ms, open_fds, p95, proc_status, row, sleepers, write_config)

HELPER, REPO = os.environ["B_HELPER"], os.environ["B_REPO"]
HYPERFINE, HF_NOTE = os.environ["B_HYPERFINE"], os.environ["B_HF_NOTE"]
APP_PY = os.environ["B_APP_PYTHON"]
HELPER_LINK = os.environ["B_HELPER_LINK"]


class Daemon(benchlib.Daemon):
    PING_POLL = 0.005


def read_lines(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def wait_lines(path, n, timeout, daemon=None):
    """Polls until `path` has at least n complete lines."""
    deadline = time.monotonic() + timeout
    while True:
        lines = read_lines(path)
        if len(lines) >= n:
            return lines
        if daemon:
            daemon.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: {len(lines)} lines after {timeout}s, waited for {n}")
        time.sleep(0.001)


def rss_cpu(pid):
    """VmRSS with its anonymous and file-backed parts (bytes), CPU ticks, threads, open fds."""
    st = proc_status(pid)
    kb = {k: int(st[k].split()[0]) * 1024 for k in ("VmRSS", "RssAnon", "RssFile")}
    return kb, cpu_ticks(pid), int(st["Threads"]), open_fds(pid)


LOG_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z \[citrus\] (.*)$")


def parse_ts(s):
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp()


def citrus_events(text_lines):
    out = []
    for l in text_lines:
        m = LOG_TS.match(l)
        if m:
            out.append((parse_ts(m.group(1)), m.group(2)))
    return out


# ---------------------------------------------------------------------------------------------- #
def fig1_restart():
    n = 10 if QUICK else 30
    d = os.path.join(WORK, "f1")
    stamps = os.path.join(d, "stamps")
    cfg = write_config(d, {"stamp": {"command": [HELPER, stamps]}})
    dm = Daemon(d, cfg).start()
    dm.wait_ping()
    lines = wait_lines(stamps, 1, 10, dm)
    dm.wait_online(1, 10)
    lat = []
    for i in range(n):
        time.sleep(0.02)
        k = len(lines)
        pid = int(lines[-1].split()[1])
        t0 = mono_ns()
        os.kill(pid, signal.SIGKILL)
        lines = wait_lines(stamps, k + 1, 10, dm)
        ns, newpid = map(int, lines[k].split())
        if newpid == pid:
            raise RuntimeError("replacement has the killed pid")
        lat.append(ns - t0)
    time.sleep(0.05)
    st = dm.status()["apps"][0]
    dm.stop()
    log(f"fig1 restart latencies (ms): {[round(ms(x), 2) for x in lat]}")

    # floor: the same driver fork+execs the helper (posix_spawn, new session like citrusd does)
    fstamps = os.path.join(d, "floor-stamps")
    floor = []
    env = [f"{k}={v}".encode() for k, v in CHILD_ENV.items()]
    for i in range(n):
        time.sleep(0.02)
        k = len(read_lines(fstamps))
        t0 = mono_ns()
        pid = os.posix_spawn(HELPER, [HELPER, fstamps], CHILD_ENV, setsid=True)
        try:
            ls = wait_lines(fstamps, k + 1, 10)
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        floor.append(int(ls[k].split()[0]) - t0)
    log(f"fig1 floor latencies (ms): {[round(ms(x), 2) for x in floor]}")
    note = (f"{n} SIGKILLs, restart_delay 0s; kill → replacement's first instruction in main "
            f"(C helper, {HELPER_LINK}); status after: state={st['state']} restarts={st['restarts']} "
            f"unstable_restarts={st['unstable_restarts']}")
    row("1. restart after SIGKILL, median", fmt_ms(ms(median(lat))), note)
    row("1. restart after SIGKILL, p95", fmt_ms(ms(p95(lat))), f"max {fmt_ms(ms(max(lat)))}")
    row("1. floor: posix_spawn → first instruction, median", fmt_ms(ms(median(floor))),
        f"same python driver, {n} spawns of the same helper (setsid)")
    row("1. floor: posix_spawn → first instruction, p95", fmt_ms(ms(p95(floor))),
        f"restart/floor median ratio {median(lat) / median(floor):.1f}x")


# ---------------------------------------------------------------------------------------------- #
def hyperfine_median(d, name, cmd):
    out = os.path.join(d, f"hf-{name}.json")
    r = subprocess.run([HYPERFINE, "-N", "--runs", "20", "--warmup", "3", "--export-json", out,
                        " ".join(shlex.quote(c) for c in cmd)],
                       stdout=sys.stderr, stderr=sys.stderr, env=CHILD_ENV)
    if r.returncode != 0:
        raise RuntimeError(f"hyperfine {name} failed (exit {r.returncode})")
    with open(out) as f:
        res = json.load(f)["results"][0]
    return res["median"], res


def fig2_idle(n, with_fig3):
    d = os.path.join(WORK, f"f2-{n}")
    cfg = write_config(d, sleepers(n))
    dm = Daemon(d, cfg).start()
    dm.wait_ping()
    dm.wait_online(n, 60 + n * 0.1)
    t_online = mono_ns() - dm.t_exec
    time.sleep(1)  # settle
    rss0, ticks0, thr0, fds0 = rss_cpu(dm.pid)
    t0 = time.monotonic()
    log(f"fig2: {n} apps online ({ms(t_online):.0f} ms after exec); idle window {IDLE:g}s")
    time.sleep(IDLE)
    rss1, ticks1, thr1, fds1 = rss_cpu(dm.pid)
    text, text_cold = benchlib.text_resident(dm.pid, CITRUSD)
    win = time.monotonic() - t0
    dm.check_alive()
    cpu = (ticks1 - ticks0) / CLK_TCK / win * 100
    st = dm.status()
    online = sum(1 for a in st["apps"] if a["state"] == "online")
    apps = f"{n} app{'s' if n > 1 else ''}"
    row(f"2. citrusd RSS, {apps} idle", f"{rss1['VmRSS'] / 1e6:.1f} MB",
        f"VmRSS at end of window (start {rss0['VmRSS'] / 1e6:.1f} MB); {thr1} threads, {fds1} fds; "
        f"{online}/{n} online at end; all online {ms(t_online):.0f} ms after exec")
    row(f"2. citrusd RssAnon / RssFile, {apps} idle",
        f"{rss1['RssAnon'] / 1e6:.1f} / {rss1['RssFile'] / 1e6:.1f} MB",
        "the two parts of VmRSS (/proc/PID/status): heap, stacks and relocated data / pages mapped "
        f"from citrusd's binary and shared libraries (libc's among them); of citrusd's code "
        f"{text / 1e6:.2f} MB is mapped, {text_cold / 1e6:.2f} MB of it outside the hot section "
        "(link/citrusd.<profile>.ld: regenerate it with bench/hot-code.sh when this grows)")
    row(f"2. citrusd CPU, {n} app{'s' if n > 1 else ''} idle", f"{cpu:.3f} % of one core",
        f"utime+stime {ticks1 - ticks0} ticks (1/{CLK_TCK} s) over {win:.1f} s")
    extra = {}
    if n >= 1000:
        walls = []
        for _ in range(5):
            t = time.monotonic()
            dm.status()
            walls.append(time.monotonic() - t)
        extra["status1000"] = median(walls)
    if with_fig3:
        if not HYPERFINE:
            row("3. `citrusctl status --json`, 100 apps, median", "skipped", HF_NOTE)
        else:
            med, res = hyperfine_median(d, "status", [CITRUSCTL, "--socket", dm.sock, "status", "--json"])
            fmed, _ = hyperfine_median(d, "true", ["/bin/true"])
            row("3. `citrusctl status --json`, 100 apps, median", fmt_ms(med * 1e3),
                f"hyperfine -N, 20 runs, 3 warmup; min {fmt_ms(res['min'] * 1e3)}, max {fmt_ms(res['max'] * 1e3)}; "
                f"{med / fmed:.1f}x the floor; load average {os.getloadavg()[0]:.2f}")
            row("3. floor: hyperfine /bin/true, median", fmt_ms(fmed * 1e3), "same hyperfine options")
    secs, rc = dm.stop()
    extra["stop"] = (secs, rc)
    return extra


def fig2_all():
    stops = []
    for n in (1, 100, 1000):
        extra = fig2_idle(n, n == 100)
        stops.append((n, extra["stop"]))
        if "status1000" in extra:
            row("2b. `status --json` wall time, 1000 apps", fmt_ms(extra["status1000"] * 1e3),
                "median of 5, timed from python (incl. citrusctl spawn); not a floor comparison")
    row("2c. SIGTERM → citrusd exit", ", ".join(f"{n}: {s:.2f} s (rc {rc})" for n, (s, rc) in stops),
        "apps: /bin/sleep, kill_timeout 2s; time for citrusd to stop N sleepers and exit")


# ---------------------------------------------------------------------------------------------- #
def fig4_startup():
    runs = 2 if QUICK else 5
    online, pings, rcs = [], [], []
    for r in range(runs):
        d = os.path.join(WORK, f"f4-{r}")
        cfg = write_config(d, sleepers(100))
        dm = Daemon(d, cfg).start()
        deadline = time.monotonic() + 30
        while not dm.ping():
            dm.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError("no ping answer within 30s")
        t_ping = mono_ns() - dm.t_exec
        while True:
            st = dm.status()
            if sum(1 for a in st["apps"] if a["state"] == "online") == 100:
                break
            dm.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError("100 apps not online within 30s")
        t_on = mono_ns() - dm.t_exec
        _, rc = dm.stop()
        rcs.append(rc)
        online.append(t_on)
        pings.append(t_ping)
        log(f"fig4 run {r + 1}/{runs}: ping {ms(t_ping):.1f} ms, 100 online {ms(t_on):.1f} ms")
    row("4. citrusd exec → 100 apps online, median", fmt_ms(ms(median(online))),
        f"{runs} runs, fresh state dir each; tight poll of status --json; all runs: "
        + ", ".join(f"{ms(x):.0f}" for x in online) + " ms")
    row("4. citrusd exec → first ping answered, median", fmt_ms(ms(median(pings))),
        "tight loop of `citrusctl ping` (each try costs one citrusctl spawn); citrusd exit codes after "
        f"SIGTERM (sent right after all 100 were online): {rcs}")


# ---------------------------------------------------------------------------------------------- #
DD_BYTES = 64 * 1024 * 8000


def scan_log(path):
    """(file size, NUL bytes, non-NUL text) of a dd-from-/dev/zero log."""
    size = os.path.getsize(path)
    nul, text, last_nul_end, first_exit = 0, bytearray(), 0, None
    off = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(8 << 20)
            if not chunk:
                break
            c = chunk.count(0)
            nul += c
            if c != len(chunk):
                t = chunk.translate(None, b"\0")
                text += t
                # where does the "exited" line start?
                i = chunk.find(b"[citrus] pid ")
                if i >= 0 and first_exit is None:
                    first_exit = off + i
                r = chunk.rfind(b"\0")
                if r >= 0:
                    last_nul_end = off + r + 1
            else:
                last_nul_end = off + len(chunk)
            off += len(chunk)
    return size, nul, bytes(text), last_nul_end, first_exit


def same_fs(a, b):
    return os.stat(a).st_dev == os.stat(b).st_dev


def fig5_logs():
    runs = 1 if QUICK else 3
    d = os.path.join(WORK, "f5")
    os.makedirs(d, exist_ok=True)
    dd = ["dd", "if=/dev/zero", "bs=64k", "count=8000", "status=none"]
    dd_path = subprocess.run(["sh", "-c", "command -v dd"], capture_output=True, text=True).stdout.strip() or "/bin/dd"
    dd[0] = dd_path
    fstype = subprocess.run(["stat", "-f", "-c", "%T", d], capture_output=True, text=True).stdout.strip()
    rates, floors, lost, notes = [], [], [], []
    def floor_run():
        # floor: dd straight to a file in the same directory
        out = os.path.join(d, "floor.bin")
        os.sync()
        t0 = time.monotonic()
        subprocess.run(dd + [f"of={out}"], check=True, env=CHILD_ENV)
        fsecs = time.monotonic() - t0
        fsize = os.path.getsize(out)
        os.unlink(out)
        floors.append(DD_BYTES / 1e6 / fsecs)
        if fsize != DD_BYTES:
            raise RuntimeError(f"floor dd wrote {fsize} bytes")

    for r in range(runs):
        if r % 2 == 0:  # alternate the order: the VM's disk/page cache state drifts
            floor_run()
        rd = os.path.join(d, f"run{r}")
        # log_max_size = 0: no size rotation (the default, 10 MiB x 5 kept, would drop most of the 500 MiB)
        cfg = write_config(rd, {"dd": {"command": dd, "restart": "never", "log_max_size": 0}})
        dm = Daemon(rd, cfg)
        os.sync()
        dm.start()
        dm.wait_ping()
        deadline = time.monotonic() + 300
        while True:
            a = dm.status()["apps"][0]
            if a["state"] == "stopped" and a.get("last_exit"):
                break
            if a["state"] in ("errored", "backoff"):
                raise RuntimeError(f"dd app is {a['state']}: {a}")
            dm.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"dd app not stopped after 300s: {a}")
            time.sleep(0.02)
        t_done = mono_ns() - dm.t_exec
        time.sleep(0.2)  # let any trailing drain finish before reading sizes
        last_exit = a["last_exit"]
        logpath = os.path.join(rd, "logs", "dd-out.log")
        size, nul, text, last_nul_end, first_exit = scan_log(logpath)
        dm.stop()
        tlines = text.decode(errors="replace").split("\n")
        ev = citrus_events(tlines)
        foreign = [l for l in tlines if l and not LOG_TS.match(l)]
        sp = [t for t, m in ev if m.startswith("spawned pid")]
        ex = [(t, m) for t, m in ev if re.match(r"pid \d+ exited", m)]
        if not sp or not ex:
            raise RuntimeError(f"spawned/exited lines not found in {logpath}: {tlines}")
        secs = ex[0][0] - sp[0]
        rates.append(DD_BYTES / 1e6 / secs if secs > 0 else float("inf"))
        b_lost = DD_BYTES + len(text) - size
        lost.append((b_lost, DD_BYTES - nul))
        errsize = os.path.getsize(os.path.join(rd, "logs", "dd-err.log")) if os.path.exists(os.path.join(rd, "logs", "dd-err.log")) else 0
        order = ("exited line after all data" if first_exit is None or first_exit >= last_nul_end
                 else f"exited line at byte {first_exit}, before {last_nul_end - first_exit} bytes of data")
        notes.append(f"run {r + 1}: spawn→exit {secs * 1e3:.0f} ms, exec→stopped {ms(t_done):.0f} ms, "
                     f"exit code {last_exit.get('code')}, {order}, err log {errsize} B"
                     + (f", foreign text lines: {foreign[:3]}" if foreign else ""))
        log(f"fig5 run {r + 1}/{runs}: citrusd {rates[-1]:.0f} MB/s, "
            f"size {size}, NULs {nul}, citrus text {len(text)} B; {notes[-1]}")
        with open(os.path.join(d, f"run{r}-text.log"), "wb") as f:
            f.write(text)
        os.unlink(logpath)
        if r % 2 == 1:
            floor_run()
        log(f"fig5 run {r + 1}/{runs}: floor {floors[-1]:.0f} MB/s")
    rate, frate = median(rates), median(floors)
    where = (f"dir {d} ({fstype}; same filesystem as the repo: {'yes' if same_fs(d, REPO) else 'NO'})")
    row("5. log throughput, dd 500 MiB via citrusd", f"{rate:.0f} MB/s",
        f"median of {runs} (all: {', '.join(f'{x:.0f}' for x in rates)}); log_max_size = 0 (no rotation); "
        f"spawned→exited log stamps (ms resolution), MB = 10^6 B; " + "; ".join(notes))
    row("5. floor: same dd → file in the same dir", f"{frate:.0f} MB/s",
        f"median of {runs} (all: {', '.join(f'{x:.0f}' for x in floors)}); os.sync() before every run, order alternated; {where}")
    row("5. throughput ratio citrusd/floor", f"{rate / frate:.2f}", "")
    worst = max(lost, key=lambda x: abs(x[0]))
    row("5. bytes lost", f"{worst[0]}",
        f"per run (size check, NUL-count check): {lost}; expected {DD_BYTES} B of data + citrusd's lines")


# ---------------------------------------------------------------------------------------------- #
MEM_APP = r"""
import os, sys, time
def stamp(kind):
    with open(sys.argv[1], "a") as f:
        f.write(f"{kind} {time.clock_gettime_ns(time.CLOCK_MONOTONIC)} {time.time_ns()} {os.getpid()}\n")
stamp("start")
time.sleep(1)
b = b"x" * (200 * 1024 * 1024)
stamp("alloc")
while True:
    time.sleep(3600)
"""


def fig6_memcap():
    cycles = 2 if QUICK else 5
    d = os.path.join(WORK, "f6")
    stamps = os.path.join(d, "stamps")
    cfg = write_config(d, {"mem": {"command": [APP_PY, "-c", MEM_APP, stamps], "max_memory_restart": "100M"}},
                       daemon={"memory_check_interval": "1s"})
    dm = Daemon(d, cfg).start()
    dm.wait_ping()
    deadline = time.monotonic() + 20 + cycles * 10
    while True:
        lines = read_lines(stamps)
        if sum(1 for l in lines if l.startswith("start")) >= cycles + 1:
            break
        dm.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {lines} after waiting for {cycles} memory restarts; stderr: {dm.stderr_tail()}")
        time.sleep(0.05)
    st = dm.status()["apps"][0]
    time.sleep(0.1)
    outlog = read_lines(os.path.join(d, "logs", "mem-out.log"))
    dm.stop()
    recs = [l.split() for l in lines]
    spawned, over = {}, []
    for t, m in citrus_events(outlog):
        mm = re.match(r"spawned pid (\d+)", m)
        if mm:
            spawned[int(mm.group(1))] = t
        elif m.startswith("memory ") and "max_memory_restart" in m:
            over.append(t)
    lat, lat_first, detect = [], [], []
    for i, rec in enumerate(recs):
        if rec[0] != "alloc":
            continue
        nxt = next((r for r in recs[i + 1:] if r[0] == "start"), None)
        if nxt is None:
            continue
        newpid = int(nxt[3])
        if newpid not in spawned:
            raise RuntimeError(f"no spawned line for pid {newpid}")
        lat.append(spawned[newpid] - int(rec[2]) / 1e9)
        det = [t for t in over if int(rec[2]) / 1e9 - 0.002 <= t <= spawned[newpid]]
        if det:
            detect.append(det[0] - int(rec[2]) / 1e9)
        lat_first.append((int(nxt[1]) - int(rec[1])) / 1e9)
        if len(lat) == cycles:
            break
    log(f"fig6 alloc→spawned (s): {[round(x, 3) for x in lat]}; alloc→new python's first line: {[round(x, 3) for x in lat_first]}")
    row("6. memory cap reaction (alloc → replacement spawned), median", f"{median(lat) * 1e3:.0f} ms",
        f"{len(lat)} cycles, 200 MB over a 100M cap, memory_check_interval 1s (detection should take at most one interval); "
        f"all: {', '.join(f'{x * 1e3:.0f}' for x in lat)} ms (spawned-line stamps, ms resolution); "
        f"to the new python's first line: median {median(lat_first) * 1e3:.0f} ms; "
        + (f"alloc → 'memory … restarting' line: median {median(detect) * 1e3:.0f} ms (detection), the rest is stop + respawn; "
           if detect else "no 'memory … restarting' line found; ")
        + "the app's 1 s sleep after each respawn phase-locks it to the 1 s check, so the spread is small; "
        f"memory_restarts={st['memory_restarts']}")


# ---------------------------------------------------------------------------------------------- #
FIGURES = [
    ("1 restart latency", fig1_restart),
    ("2+3 idle cost, status wall time", fig2_all),
    ("4 startup", fig4_startup),
    ("5 log throughput", fig5_logs),
    ("6 memory cap", fig6_memcap),
]


def main():
    load0 = os.getloadavg()
    only = [f.strip() for f in os.environ.get("B_FIGURES", "").split(",") if f.strip()]
    chosen = [f for f in FIGURES if not only or any(n in only for n in f[0].split()[0].split("+"))]
    benchlib.run_figures(chosen)
    import resource
    row("machine", f"{os.cpu_count()} cores", f"load average at start {load0[0]:.2f}, at end {os.getloadavg()[0]:.2f} "
        f"(other work on the machine adds noise); ulimit -n {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}; "
        f"kernel {os.uname().release}; helper {HELPER_LINK}")
    benchlib.leftover_row()
    mode = "quick" if QUICK else "full"
    benchlib.print_table(f"citrusd supervisor bench ({mode} run, profile {os.environ['B_PROFILE']}, idle window {IDLE:g} s, {os.cpu_count()} cores, "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S')})", key=benchlib.figure_order)
    return 1 if FAILED else 0


if __name__ == "__main__":
    benchlib.run_main(main)
PYEOF

log "running the figures (idle window ${IDLE_SECS}s$([[ $QUICK == 1 ]] && echo ', quick'))"
run_driver figures B_HELPER="$WORK/stamp" B_REPO="$REPO" B_HYPERFINE="$HYPERFINE" \
    B_HF_NOTE="$HYPERFINE_NOTE" B_APP_PYTHON="$APP_PYTHON" B_HELPER_LINK="$HELPER_LINK" \
    B_FIGURES="${BENCH_FIGURES:-}" B_PROFILE="$PROFILE"
