#!/usr/bin/env bash
# bench/deploy.sh — deployments and restarts of an HTTP app under load, with and without socket
# activation; the deploy phases of a 10,000-file app; citrusd's RSS meanwhile.
#
# Usage: bench/deploy.sh [--quick] [--help]
#
#   --quick            fast sanity run: fewer deploys and restarts, shorter load windows.
#   BENCH_TMPDIR       where the temp dir is made (default ${TMPDIR:-/tmp}).
#   CARGO_TARGET_DIR   respected: binaries are taken from ${CARGO_TARGET_DIR:-target}/release.
#
# Figures:
#   1. time per deploy phase (queued → pulling_source → building → copying_files →
#      creating_symlinks → restarting → health_check → completed, from the journal's
#      phases[].at_ms) for an app of 10,000 small files, (a) `source = { path }`, (b) `source =
#      { git = "file://…" }` (a local repository holding the same files); build = touch; the app
#      takes its socket from citrusd and the deploy's health probe is an http GET. Floor, right after
#      each path deploy: `cp -a` of the same tree, then `sync -f` (citrusd syncs the file system too).
#   2. citrusd's RSS idle before those deploys, and its peak during them (VmRSS polled every 5 ms,
#      and the kernel's VmHWM).
#   3. failed requests while a steady load (bench/loadgen.py: open loop, one connection per
#      request, 2 s timeout) runs through `citrusctl restart`, `citrusctl deploy` (and
#      `citrusctl reload`) of one small python app in three setups: one instance binding its port
#      itself; one instance with `listen` (socket activation: fd 3 from citrusd); two instances
#      binding with SO_REUSEPORT, with a `ready` http probe (the deploy then reloads them one at a
#      time). The app stops gracefully on SIGTERM: it stops accepting, finishes the requests in
#      hand, exits.
#   4. time from running `citrusctl deploy` to the first request answered by the new release
#      (tight GET loop, 1 ms apart, bounded), same three setups, without load.
#
# Builds the release binaries (cargo build --release --bins), runs everything from one python3
# (stdlib) driver and prints one Markdown table (figure | value | notes) on stdout. Progress goes
# to stderr. Traffic goes to 127.0.0.1 only. Every process started here, directly or through
# citrusd, carries BENCH_TAG=<random> in its environment; the EXIT trap stops them all by pid and
# removes the temp dir.
#
# Needs: bash, python3 (>= 3.8), cargo, git, coreutils (cp, sync, touch), /usr/bin/time (optional:
# times the build).

BENCH_NAME=citrus-bench-deploy
QUICK_IDLE_SECS=0
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" "$@"

command -v git >/dev/null || die "git not found in PATH (figure 1b deploys from a local git repository)"
TOUCH=$(command -v touch) || die "touch not found in PATH"
# citrusd gives apps a clean environment, so a shim (pyenv) found through PATH would not work
# there; use the real executable.
APP_PYTHON=$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')

# --- build ---------------------------------------------------------------------------------------
bench_setup

# --- the app -------------------------------------------------------------------------------------
cat >"$WORK/server.py" <<'PYEOF'
"""The bench's app: GET / answers version.txt (read at start), /health answers "ok". Its socket:
fd 3 when citrusd passes one (LISTEN_FDS), else it binds 127.0.0.1:$PORT itself (with SO_REUSEPORT
when REUSEPORT=1). SIGTERM: stop accepting, finish the requests in hand, exit 0."""
import http.server, os, signal, socket, sys, threading

VERSION = open("version.txt", "rb").read()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok" if self.path == "/health" else VERSION
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024   # listen() backlog when binding itself (citrusd uses SOMAXCONN)
    daemon_threads = False      # server_close() waits for the requests in hand
    block_on_close = True


port = int(os.environ["PORT"])
srv = Server(("127.0.0.1", port), Handler, bind_and_activate=False)
if os.environ.get("LISTEN_FDS"):
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        sys.exit(f"LISTEN_PID {os.environ.get('LISTEN_PID')!r} is not my pid {os.getpid()}")
    srv.socket.close()
    srv.socket = socket.socket(fileno=3)
else:
    if os.environ.get("REUSEPORT") == "1":
        srv.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    srv.server_bind()
    srv.server_activate()
# shutdown() waits for serve_forever() to return, so it cannot run in the handler's thread.
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=srv.shutdown).start())
srv.serve_forever(poll_interval=0.1)
srv.server_close()   # closes our copy of the socket only: citrusd keeps its own
PYEOF

# --- driver --------------------------------------------------------------------------------------
cat >"$WORK/driver.py" <<'PYEOF'
import json, os, shutil, socket, subprocess, sys, time

sys.dont_write_bytecode = True
sys.path.insert(0, os.environ["B_BENCH_DIR"])
import benchlib
from benchlib import (CHILD_ENV, QUICK, WORK, Load, RssSampler, free_ports, log, median, mono_ns,
                      row, vm_rss_kb, write_config)

SERVER, APP_PY, TOUCH = os.environ["B_SERVER"], os.environ["B_APP_PYTHON"], os.environ["B_TOUCH"]
NFILES = 10_000
DEPLOYS = 2 if QUICK else 5           # timed deploys per source after the first (figure 1)
REPS = 1 if QUICK else 3              # restarts / deploys under load per setup (figure 3)
FIRST_REPS = 2 if QUICK else 5        # deploys timed to the first new answer (figure 4)
RATE = 250                            # requests per second (figure 3)
REQ_TIMEOUT = 2.0                     # s per request, connect included
PRE, POST = (0.5, 1.0) if QUICK else (1.0, 2.0)  # s of load before the action and after it ends
CTL_TIMEOUT = 120                     # s for one citrusctl command
PHASES = ["queued", "pulling_source", "building", "copying_files", "creating_symlinks",
          "restarting", "health_check"]


class Daemon(benchlib.Daemon):
    STOP_TIMEOUT = 30

    def ctl_timed(self, *args):
        """citrusctl with a time bound; (seconds, CompletedProcess). Raises on a non-zero exit."""
        t0 = time.monotonic()
        r = subprocess.run([benchlib.CITRUSCTL, "--socket", self.sock, *args], capture_output=True,
                           env=CHILD_ENV, timeout=CTL_TIMEOUT)
        took = time.monotonic() - t0
        if r.returncode != 0:
            raise RuntimeError(f"citrusctl {' '.join(args)} -> exit {r.returncode}: "
                               f"{r.stderr.decode(errors='replace').strip()[-600:]}")
        return took, r

    def deploy(self, app):
        """`citrusctl --json deploy APP`; (client seconds, the deployment record)."""
        took, r = self.ctl_timed("--json", "deploy", app)
        return took, json.loads(r.stdout)["deployment"]


def http_get(port, timeout=1.0):
    """(status, body) of GET / on 127.0.0.1:port, or raises OSError."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        answer = benchlib.recv_until(s, b"\0")  # until the server closes
    head, _, body = answer.partition(b"\r\n\r\n")
    parts = head.split(b"\r\n", 1)[0].split()
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0), body.decode(errors="replace")


def joined(xs, spec=".0f"):
    return ", ".join(format(x, spec) for x in xs)


def wait_serving(port, want, timeout=30):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = http_get(port)
            if last == (200, want):
                return
        except OSError as e:
            last = e
        time.sleep(0.02)
    raise TimeoutError(f"127.0.0.1:{port} did not serve {want!r} within {timeout}s (last: {last})")


def write_source(src, version, nfiles=0):
    """The app's source tree: server.py, version.txt and nfiles files of ~100 B in 100 dirs."""
    os.makedirs(src, exist_ok=True)
    shutil.copy(SERVER, os.path.join(src, "server.py"))
    with open(os.path.join(src, "version.txt"), "w") as f:
        f.write(version)
    for i in range(nfiles):
        d = os.path.join(src, "files", f"d{i // 100:03d}")
        if i % 100 == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:05d}.txt"), "w") as f:
            f.write(f"file {i}: " + "x" * 90 + "\n")


def git(repo, *args):
    r = subprocess.run(["git", "-C", repo, "-c", "user.name=citrus-bench", "-c",
                        "user.email=bench@citrus.invalid", "-c", "init.defaultBranch=main", *args],
                       capture_output=True, env=CHILD_ENV, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} in {repo}: {r.stderr.decode(errors='replace').strip()}")
    return r.stdout.decode().strip()


def set_version(src, version, repo=False):
    with open(os.path.join(src, "version.txt"), "w") as f:
        f.write(version)
    if repo:
        git(src, "commit", "-qam", version)


def app_keys(port, setup, source=None, health=False):
    """An app's keys: the bench's server from <root>/current in one of the setups "plain" (binds
    its port), "listen" (fd 3 from citrusd), "reuseport2" (2 instances, SO_REUSEPORT, ready probe)."""
    url = f"http://127.0.0.1:{port}/health"
    deploy = {"root": f"www-{port}", "source": source or {"path": f"src-{port}"},
              "build": [TOUCH, "built.txt"]}
    if health:
        deploy["health"] = {"http": url, "interval": "50ms"}
    keys = {"command": [APP_PY, "server.py"], "env": {"PORT": str(port)}, "kill_timeout": "5s",
            "restart_delay": "100ms", "deploy": deploy}
    if setup == "listen":
        keys["listen"] = [f"tcp://127.0.0.1:{port}"]
    elif setup == "reuseport2":
        keys["instances"] = 2
        keys["env"]["REUSEPORT"] = "1"
        keys["ready"] = {"http": url, "interval": "50ms", "timeout": "10s"}
    return keys


def floor_copy(src, dst):
    """The floor of a path source's `pulling_source`: `cp -a` of the tree, then `sync -f` (syncfs,
    as citrusd does before anything points at a release); (cp ms, sync ms). dst is removed after."""
    t0 = time.monotonic()
    for cmd in (["cp", "-a", src, dst], ["sync", "-f", dst]):
        r = subprocess.run(cmd, capture_output=True, env=CHILD_ENV, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.decode(errors='replace').strip()}")
        if cmd[0] == "cp":
            t1 = time.monotonic()
    t2 = time.monotonic()
    shutil.rmtree(dst)
    return (t1 - t0) * 1000, (t2 - t1) * 1000


def phase_ms(d):
    """{phase: ms spent in it} and the total (queued → completed) of a completed deployment."""
    if d["phase"] != "completed":
        raise RuntimeError(f"deployment {d['id']} ended {d['phase']}: {d.get('error')}")
    at = [(p["phase"], p["at_ms"]) for p in d["phases"]]
    spent = {name: nxt - t for (name, t), (_, nxt) in zip(at, at[1:])}
    return spent, at[-1][1] - at[0][1]


# --- figures 1 and 2 ---------------------------------------------------------------------------- #
def fig12():
    d = os.path.join(WORK, "phases")
    p_path, p_git = free_ports(2)
    log(f"writing two source trees of {NFILES} files (path source, git repository)")
    src, repo = os.path.join(d, f"src-{p_path}"), os.path.join(d, "repo")
    write_source(src, "path-v0", NFILES)
    write_source(repo, "git-v0", NFILES)
    t = time.monotonic()
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "v0")
    log(f"git repository committed in {time.monotonic() - t:.1f}s")
    files = sum(len(fs) for _, _, fs in os.walk(src))
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(src) for f in fs)
    apps = {"pathapp": app_keys(p_path, "listen", health=True),
            "gitapp": app_keys(p_git, "listen", {"git": f"file://{repo}", "branch": "main"}, health=True)}
    dm = Daemon(d, write_config(d, apps, defaults={})).start()
    dm.wait_ping()
    time.sleep(1.0)
    idle_kb, idle_hwm = vm_rss_kb(dm.pid), int(benchlib.proc_status(dm.pid)["VmHWM"].split()[0])
    log(f"citrusd idle RSS {idle_kb} kB (VmHWM {idle_hwm} kB), no release yet")
    results, floors = {}, []
    for app, port, where, is_git in (("pathapp", p_path, src, False), ("gitapp", p_git, repo, True)):
        runs = []
        for i in range(DEPLOYS + 1):
            version = f"{app}-v{i}"
            set_version(where, version, repo=is_git)
            sampler = RssSampler(dm.pid)
            sampler.start()
            try:
                took, dep = dm.deploy(app)
            finally:
                sampler.stop()
            spent, total = phase_ms(dep)
            wait_serving(port, version)
            runs.append({"client_s": took, "spent": spent, "total": total, "peak_kb": sampler.peak_kb,
                         "samples": sampler.samples, "hwm_kb": sampler.hwm_kb,
                         "out": (dep["phases"][1].get("output") or "").strip()})
            if not is_git and i > 0:  # the floor right after each timed deploy: same noise
                floors.append(floor_copy(src, os.path.join(d, "floor-copy")))
                log(f"floor: cp -a {floors[-1][0]:.0f} ms, sync -f {floors[-1][1]:.0f} ms")
            log(f"{app} deploy {i}: {total} ms ({', '.join(f'{k} {v}' for k, v in spent.items())}); "
                f"peak RSS {sampler.peak_kb} kB")
        results[app] = runs
    end_kb = vm_rss_kb(dm.pid)
    dm.stop()

    for fig, app, label in (("1a", "pathapp", "path source"), ("1b", "gitapp", "git source (file://)")):
        runs = results[app]
        first, rest = runs[0], runs[1:]
        for ph in PHASES:
            vals = [r["spent"].get(ph, 0) for r in rest]
            row(f"{fig}. deploy phase `{ph}`, {label}, {NFILES:,} files",
                f"{median(vals):.0f} ms",
                f"median of {len(rest)}; min {min(vals)} / max {max(vals)} ms; first deploy: "
                f"{first['spent'].get(ph, 0)} ms")
        totals = [r["total"] for r in rest]
        client = [r["client_s"] * 1000 for r in rest]
        extra = ("the first deploy clones into the deploy root's git cache, later ones fetch a new "
                 "commit" if app == "gitapp" else "the first deploy also starts the app (no release before)")
        row(f"{fig}. deploy total (queued → completed), {label}, {NFILES:,} files",
            f"{median(totals):.0f} ms",
            f"median of {len(rest)} (all: {', '.join(str(t) for t in totals)} ms); first deploy {first['total']} ms "
            f"({extra}); `citrusctl deploy` wall time median {median(client):.0f} ms; pulling_source said: "
            f"{rest[-1]['out'][:160]!r}; source {files:,} files, {size / 1e6:.1f} MB; build = touch; "
            f"health = http probe")
        if app == "pathapp":
            cp, sy = [f[0] for f in floors], [f[1] for f in floors]
            tot = [a + b for a, b in floors]
            pulls = [r["spent"]["pulling_source"] for r in results["pathapp"][1:]]
            row("1a. floor: `cp -a` of the same tree, then `sync -f`", f"{median(tot):.0f} ms",
                f"median of {len(tot)} (all: {joined(tot)} ms), each right after a timed deploy; cp -a median "
                f"{median(cp):.0f} ms, sync -f median {median(sy):.0f} ms (syncfs flushes the whole file system, so "
                f"other writers on the machine count); `pulling_source`/floor ratio {median(pulls) / max(median(tot), 1e-9):.1f}")
    row("2. citrusd RSS idle, before the deploys", f"{idle_kb / 1000:.1f} MB",
        f"VmRSS 1 s after start, 2 apps configured with [deploy], no release yet (VmHWM then {idle_hwm / 1000:.1f} MB); "
        f"right after the last of all {2 * (DEPLOYS + 1)} deploys (path, then git): {end_kb / 1000:.1f} MB")
    for fig, app, label in (("2a", "pathapp", "path source"), ("2b", "gitapp", "git source")):
        runs = results[app]
        peak = max(r["peak_kb"] for r in runs)
        row(f"{fig}. citrusd peak RSS during a deploy, {label}", f"{peak / 1000:.1f} MB",
            f"max VmRSS over {len(runs)} deploys, polled every 5 ms ({sum(r['samples'] for r in runs)} samples); "
            f"per deploy: {joined((r['peak_kb'] / 1000 for r in runs), '.1f')} MB; VmHWM after the last: "
            f"{runs[-1]['hwm_kb'] / 1000:.1f} MB")


# --- figures 3 and 4 ---------------------------------------------------------------------------- #
SETUPS = [
    ("plain", "1 instance, binds its port itself (no `listen`)"),
    ("listen", "1 instance, `listen` (socket activation)"),
    ("reuseport2", "`instances = 2`, SO_REUSEPORT, `ready` http probe, no `listen`"),
]


def under_load(dm, port, action, version, src):
    """One action under load; the load's summary plus the action's time and more."""
    with Load(port, RATE, timeout=REQ_TIMEOUT, max_secs=120) as load:
        time.sleep(PRE)
        t0 = mono_ns()
        if action == "deploy":
            set_version(src, version)
            took, dep = dm.deploy("web")
            phase_ms(dep)
        else:
            took, _ = dm.ctl_timed(action, "web")
        t1 = mono_ns()
        time.sleep(POST)
    s = load.summary()
    s.update(action_s=took, lag_ms=load.result["max_lag_ms"])
    if action == "deploy":
        new = [r for r in load.result["requests"] if r[2] == "ok" and r[3] == version]
        s["first_new_ms"] = (new[0][0] + new[0][1] - t0) / 1e6 if new else None
        old_after = [r for r in load.result["requests"] if r[2] == "ok" and r[3] != version and r[0] > t1]
        s["old_after_return"] = len(old_after)
    # failures: when, relative to the action's start
    fails = [r for r in load.result["requests"] if r[2] != "ok"]
    s["fail_window_ms"] = ((fails[0][0] - t0) / 1e6, (fails[-1][0] - t0) / 1e6) if fails else None
    return s


def first_answer(dm, port, version, src):
    """Deploy `version`; ms from running `citrusctl deploy` to the first answer with it, ms until
    citrusctl returned, and the failed polls meanwhile."""
    set_version(src, version)
    t0 = mono_ns()
    p = subprocess.Popen([benchlib.CITRUSCTL, "--socket", dm.sock, "deploy", "web"], env=CHILD_ENV,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first, polls, failed, returned = None, 0, 0, None
    deadline = t0 + 60 * 10**9
    try:
        while polls < 200_000 and mono_ns() < deadline:
            polls += 1
            try:
                status, body = http_get(port, timeout=1.0)
                if status == 200 and body == version:
                    first = mono_ns()
                    break
                if status != 200:
                    failed += 1
            except OSError:
                failed += 1
            if returned is None and p.poll() is not None:
                returned = mono_ns()
            time.sleep(0.001)
        _, err = p.communicate(timeout=CTL_TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    if returned is None:
        returned = mono_ns()
    if p.returncode != 0:
        raise RuntimeError(f"citrusctl deploy web -> exit {p.returncode}: {err.decode(errors='replace').strip()[-400:]}")
    if first is None:
        raise TimeoutError(f"no answer {version!r} within 60 s ({polls} polls)")
    return (first - t0) / 1e6, (returned - t0) / 1e6, failed, polls


def fig34_setup(setup, label, fig3, fig4):
    d = os.path.join(WORK, setup)
    (port,) = free_ports(1)
    src = os.path.join(d, f"src-{port}")
    write_source(src, f"{setup}-v0")
    dm = Daemon(d, write_config(d, {"web": app_keys(port, setup)}, defaults={})).start()
    try:
        dm.wait_ping()
        dm.deploy("web")
        wait_serving(port, f"{setup}-v0")
        actions = ["restart", "deploy"] + (["reload"] if setup == "reuseport2" else [])
        n = 0
        for action in actions:
            runs = []
            for i in range(REPS):
                n += 1
                s = under_load(dm, port, action, f"{setup}-v{n}", src)
                log(f"{setup} {action} {i + 1}/{REPS}: sent {s['sent']}, failed {s['failed']} {s['by_outcome']}, "
                    f"action {s['action_s'] * 1000:.0f} ms, max latency {s['max_latency_ms']} ms")
                runs.append(s)
            fig3[(setup, action)] = runs
        firsts = []
        for i in range(FIRST_REPS):
            n += 1
            firsts.append(first_answer(dm, port, f"{setup}-v{n}", src))
            log(f"{setup} deploy → first new answer: {firsts[-1][0]:.0f} ms (citrusctl returned at "
                f"{firsts[-1][1]:.0f} ms, {firsts[-1][2]} failed polls)")
        fig4[setup] = firsts
    finally:
        dm.stop()


def fig34():
    fig3, fig4 = {}, {}
    for setup, label in SETUPS:
        log(f"--- setup {setup}: {label}")
        try:
            fig34_setup(setup, label, fig3, fig4)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:
            log(f"setup {setup} FAILED: {type(e).__name__}: {e}")
            benchlib.FAILED.append(setup)
            row(f"3/4. {label}", "FAILED", f"{type(e).__name__}: {e}".replace("\n", " ")[:400])
        finally:
            benchlib.stop_live(30)
    verbs = {"restart": "`citrusctl restart`", "deploy": "`citrusctl deploy`", "reload": "`citrusctl reload`"}
    for action in ("restart", "deploy", "reload"):
        for setup, label in SETUPS:
            runs = fig3.get((setup, action))
            if not runs:
                continue
            sent, failed = sum(r["sent"] for r in runs), sum(r["failed"] for r in runs)
            by = {}
            for r in runs:
                for k, v in r["by_outcome"].items():
                    if k != "ok":
                        by[k] = by.get(k, 0) + v
            notes = [f"{sent - failed} ok"
                     + (f" ({', '.join(f'{k} {v}' for k, v in sorted(by.items()))})" if by else ""),
                     f"per {action}: {', '.join(str(r['failed']) for r in runs)} failed",
                     f"{action} took {joined(r['action_s'] * 1000 for r in runs)} ms",
                     f"max latency of an ok answer {max(r['max_latency_ms'] or 0 for r in runs):.0f} ms"]
            wins = [r["fail_window_ms"] for r in runs if r["fail_window_ms"]]
            if wins:
                notes.append("failed requests were sent from " + ", ".join(f"{a:.0f} to {b:.0f}" for a, b in wins)
                             + " ms after the command started")
            if action == "deploy":
                fn = [r["first_new_ms"] for r in runs if r["first_new_ms"] is not None]
                if fn:
                    notes.append(f"first answer by the new release {joined(fn)} ms after "
                                 "`citrusctl deploy` started")
                notes.append(f"old-release answers to requests sent after citrusctl returned: "
                             f"{sum(r['old_after_return'] for r in runs)}")
            notes.append(f"generator lag max {max(r['lag_ms'] for r in runs):.1f} ms")
            row(f"3. failed requests under {RATE} req/s, {verbs[action]} × {len(runs)}, {label}",
                f"{failed} failed of {sent} sent", "; ".join(notes))
    for setup, label in SETUPS:
        firsts = fig4.get(setup)
        if not firsts:
            continue
        ms_first = [f[0] for f in firsts]
        row(f"4. `citrusctl deploy` → first answer by the new release, {label}", f"{median(ms_first):.0f} ms",
            f"median of {len(firsts)} (all: {joined(ms_first)} ms); citrusctl returned "
            f"after {joined(f[1] for f in firsts)} ms; failed polls (refused/reset/timeout/non-200) "
            f"{', '.join(str(f[2]) for f in firsts)} of {', '.join(str(f[3]) for f in firsts)}; "
            f"GET / every ~1 ms, 1 s timeout, no other load; small app (3 files), build = touch; no deploy "
            f"health probe here, so `health_check` passes once the instances are online (with `ready`: ready)")


def main():
    load0 = os.getloadavg()
    t0 = time.monotonic()
    benchlib.run_figures([("1 deploy phases and RSS (10,000 files)", fig12)])
    fig34()
    row("load generator", f"{RATE} req/s",
        f"bench/loadgen.py (python3 asyncio, open loop: a fixed schedule, a slow or failed request does not "
        f"delay the next), one TCP connection per HTTP/1.0 GET, {REQ_TIMEOUT:g} s timeout (connect included); "
        f"failed = refused, reset/closed early, timeout, non-2xx or another socket error; load runs {PRE:g} s "
        f"before the command and {POST:g} s after it returned; the app: python http.server (threads), "
        f"graceful SIGTERM (stops accepting, finishes the requests in hand)")
    row("machine", f"{os.cpu_count()} cores",
        f"load average at start {load0[0]:.2f}, at end {os.getloadavg()[0]:.2f} (other work on the machine adds "
        f"noise); kernel {os.uname().release}; python {sys.version.split()[0]}; whole run {time.monotonic() - t0:.0f} s")
    benchlib.leftover_row()
    mode = "quick" if QUICK else "full"
    benchlib.print_table(f"citrusd deploy bench ({mode} run, {os.cpu_count()} cores, "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S')})", key=benchlib.figure_order)
    return 1 if benchlib.FAILED else 0


if __name__ == "__main__":
    benchlib.run_main(main)
PYEOF

log "running$([[ $QUICK == 1 ]] && echo ' (quick)')"
run_driver runs B_SERVER="$WORK/server.py" B_APP_PYTHON="$APP_PYTHON" B_TOUCH="$TOUCH"
