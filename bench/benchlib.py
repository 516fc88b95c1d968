"""bench/benchlib.py — python3 (stdlib) helpers shared by the drivers of bench/*.sh.

A driver imports it after `sys.path.insert(0, os.environ["B_BENCH_DIR"])`. On import it reads the
settings every bench script passes (B_CITRUSD, B_CITRUSCTL, B_WORK, B_TAG, B_QUICK, B_IDLE), builds
CHILD_ENV (the driver's environment with BENCH_TAG=<tag> and without the B_* variables) and turns
SIGTERM into SystemExit so that `finally` blocks stop the daemons.

Beside the citrusd `Daemon` and the table helpers it has `free_ports`, `RssSampler` (VmRSS peak of
a process while something runs) and `Load` (steady-rate HTTP load through bench/loadgen.py).
"""
import json, os, random, re, signal, socket, statistics, subprocess, sys, threading, time

E = os.environ
CITRUSD, CITRUSCTL = E["B_CITRUSD"], E["B_CITRUSCTL"]
WORK, TAG = E["B_WORK"], E["B_TAG"]
QUICK = E["B_QUICK"] == "1"
IDLE = float(E["B_IDLE"])
CLK_TCK = os.sysconf("SC_CLK_TCK")
ROWS = []          # (figure, value, notes)
FAILED = []        # figures that raised
LIVE = []          # daemons to stop on the way out
LEFTOVERS = []     # processes that outlived their citrusd
SKIP_PIDS = set()  # tagged processes of the driver's own (not supervised by citrusd)
CHILD_ENV = dict(os.environ, BENCH_TAG=TAG)
for k in list(CHILD_ENV):
    if k.startswith("B_"):
        del CHILD_ENV[k]


def on_term(signum, frame):
    raise SystemExit(128 + signum)


signal.signal(signal.SIGTERM, on_term)


# --- small helpers ------------------------------------------------------------------------------ #
def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def mono_ns():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def row(fig, value, notes=""):
    ROWS.append((fig, value, notes))


def median(xs):
    return statistics.median(xs)


def p95(xs):
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, -(-95 * len(s) // 100) - 1))]  # nearest rank


def ms(ns):
    return ns / 1e6


def fmt_ms(x):
    return f"{x:.2f} ms" if x < 100 else f"{x:.0f} ms"


def toml_str(s):
    return json.dumps(str(s))


def toml_val(v):
    """str (quoted), int/bool, list (array), dict (inline table)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_val(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_val(x)}" for k, x in v.items()) + " }"
    return toml_str(v)


DEFAULTS = {"restart_delay": "0s", "min_uptime": "1s", "max_restarts": 1000, "kill_timeout": "2s"}


def write_config(d, apps, jobs=None, daemon=None, defaults=None, sections=None):
    """Writes <d>/citrusd.toml and returns its path. apps/jobs: {name: {key: value}}; daemon: extra
    [daemon] keys; defaults: the [defaults] keys (None: DEFAULTS; env BENCH_TAG is always added);
    sections: further top-level tables, {name: {key: value}}, written last."""
    os.makedirs(d, exist_ok=True)
    out = ["[daemon]", 'state_dir = "state"', 'log_dir = "logs"']
    out += [f"{k} = {toml_val(v)}" for k, v in (daemon or {}).items()]
    dflt = DEFAULTS if defaults is None else defaults
    out += ["", "[defaults]"] + [f"{k} = {toml_val(v)}" for k, v in dflt.items()]
    out += [f"env = {{ BENCH_TAG = {toml_str(TAG)} }}"]
    for section, table in (("apps", apps), ("jobs", jobs or {})):
        for name, keys in table.items():
            out += ["", f"[{section}.{name}]"] + [f"{k} = {toml_val(v)}" for k, v in keys.items()]
    for name, keys in (sections or {}).items():
        out += ["", f"[{name}]"] + [f"{k} = {toml_val(v)}" for k, v in keys.items()]
    path = os.path.join(d, "citrusd.toml")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    return path


def recv_until(sock, marker):
    """Reads from sock until marker is in what was read (or the peer closes); returns the bytes."""
    buf = b""
    while marker not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf


def free_ports(n):
    """n free TCP ports on 127.0.0.1 below the ephemeral range (32768+), so that no client
    connection of the bench can be given one of them as its local port."""
    for _ in range(50):
        base = random.randrange(20000, 32000 - 2 * n)
        ports = []
        for p in range(base, base + 2 * n):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", p))
                ports.append(p)
            except OSError:
                pass
            finally:
                s.close()
            if len(ports) == n:
                return ports
    raise RuntimeError(f"cannot find {n} free ports")


def sleepers(n, fmt="s{:04d}", first=0):
    return {fmt.format(i): {"command": ["/bin/sleep", "100000"]} for i in range(first, first + n)}


# --- /proc -------------------------------------------------------------------------------------- #
def cpu_ticks(pid):
    """utime + stime (fields 14 + 15 of /proc/PID/stat), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])  # rest[0] is field 3


def proc_status(pid):
    """/proc/PID/status as {key: value string}."""
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, sep, v = line.partition(":")
            if sep:
                status[k] = v.strip()
    return status


def vm_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class RssSampler(threading.Thread):
    """Polls VmRSS of pid every `every` seconds until stop(); peak_kb/last_kb in kB, and VmHWM
    (the kernel's own peak since the process started) at stop."""

    def __init__(self, pid, every=0.005):
        super().__init__(daemon=True)
        self.pid, self.every, self.done = pid, every, threading.Event()
        self.samples, self.peak_kb, self.hwm_kb = 0, 0, None

    def run(self):
        while not self.done.is_set():
            try:
                kb = vm_rss_kb(self.pid)
            except OSError:
                return
            self.samples += 1
            self.peak_kb = max(self.peak_kb, kb)
            self.done.wait(self.every)

    def stop(self):
        self.done.set()
        self.join()
        try:
            self.hwm_kb = int(proc_status(self.pid)["VmHWM"].split()[0])
        except (OSError, KeyError):
            pass
        return self


def hot_section(binary):
    """[start, end) of the binary's .text.hot section (build.rs, link/<bin>.<profile>.ld), from its
    ELF section headers; (0, 0) when it has none."""
    import struct
    with open(binary, "rb") as f:
        elf = f.read()
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    def header(i):  # (name offset, address, size)
        name, _, _, addr, _, size = struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize)
        return name, addr, size
    strtab = struct.unpack_from("<Q", elf, shoff + shstrndx * shentsize + 0x18)[0]
    for i in range(shnum):
        name, addr, size = header(i)
        if elf[strtab + name:elf.index(b"\0", strtab + name)] == b".text.hot":
            return addr, addr + size
    return 0, 0


def text_resident(pid, binary):
    """Bytes of `binary`'s executable mapping resident in process `pid`, and how many of them lie
    outside its .text.hot section (the part the hot-code list did not gather)."""
    import struct
    exe = os.path.realpath(binary)
    hot = hot_section(exe)
    maps = [line.split() for line in open(f"/proc/{pid}/maps")]
    base = next(int(m[0].split("-")[0], 16) for m in maps
                if len(m) >= 6 and m[5] == exe and int(m[2], 16) == 0)
    page, total, outside = os.sysconf("SC_PAGE_SIZE"), 0, 0
    with open(f"/proc/{pid}/pagemap", "rb") as pm:
        for m in maps:
            if len(m) < 6 or m[5] != exe or "x" not in m[1]:
                continue
            start, end = (int(x, 16) for x in m[0].split("-"))
            pm.seek(start // page * 8)
            entries = pm.read((end - start) // page * 8)
            for i in range(len(entries) // 8):
                if struct.unpack_from("<Q", entries, i * 8)[0] >> 63:
                    total += page
                    if not hot[0] <= start + i * page - base < hot[1]:
                        outside += page
    return total, outside


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:80]
    except OSError:
        return "?"


def tagged_pids():
    """Live processes carrying BENCH_TAG=<tag>, except the driver and SKIP_PIDS."""
    skip = SKIP_PIDS | {os.getpid()}
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) in skip:
            continue
        try:
            with open(f"/proc/{p}/environ", "rb") as f:
                if f"BENCH_TAG={TAG}".encode() in f.read().split(b"\0"):
                    found.append(int(p))
        except OSError:
            pass
    return found


def check_leftovers(what, settle=0.2):
    """After a citrusd exited: every process it supervised should be gone. Records and kills the
    ones still there."""
    time.sleep(settle)
    pids = tagged_pids()
    if not pids:
        return
    desc = {}
    for p in pids:
        c = cmdline(p)
        desc[c] = desc.get(c, 0) + 1
    LEFTOVERS.append(f"{what}: {len(pids)} x {desc}")
    log(f"LEFTOVER after {what}: {len(pids)} process(es) still running: {desc}; killing them")
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


# --- citrusd ------------------------------------------------------------------------------------ #
class Daemon:
    """One citrusd with its own dir, config and control socket. The class attributes are the knobs
    a driver may change in a subclass."""
    PING_POLL = 0.02          # s between pings in wait_ping
    ONLINE_POLL = 0.05        # s between status polls in wait_online
    STOP_TIMEOUT = 60         # s from SIGTERM to SIGKILL in stop
    LEFTOVER_SETTLE = 0.2     # s after exit before looking for leftovers
    STOP_TIME_INCLUDES_CHECK = True  # stop()'s seconds include the leftover check
    WRAPPER = []              # argv put before citrusd's (e.g. valgrind and its options)

    def __init__(self, d, cfg):
        self.dir, self.cfg = d, cfg
        self.sock = os.path.join(d, "ctl.sock")
        self.proc = None

    def start(self):
        self.errlog = open(os.path.join(self.dir, "citrusd.stderr"), "ab")
        self.t_exec = mono_ns()
        self.proc = subprocess.Popen(
            [*self.WRAPPER, CITRUSD, "--config", self.cfg, "--socket", self.sock],
            stdin=subprocess.DEVNULL, stdout=self.errlog, stderr=self.errlog, env=CHILD_ENV)
        LIVE.append(self)
        with open(os.path.join(WORK, "citrusd.pids"), "a") as f:
            f.write(f"{self.proc.pid}\n")
        return self

    @property
    def pid(self):
        return self.proc.pid

    def check_alive(self):
        rc = self.proc.poll()
        if rc is not None:
            raise RuntimeError(f"citrusd exited early with {rc}; stderr: {self.stderr_tail()}")

    def idle(self, secs, every=1.0):
        """Sleeps `secs` seconds in steps of at most `every`, checking after each that citrusd lives."""
        end = time.monotonic() + secs
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(every, left))
            self.check_alive()

    def stderr_text(self):
        try:
            with open(os.path.join(self.dir, "citrusd.stderr"), "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stderr_tail(self, n=600):
        return self.stderr_text()[-n:].strip() or "?"

    def ctl(self, *args, check=True):
        r = subprocess.run([CITRUSCTL, "--socket", self.sock, *args], capture_output=True, env=CHILD_ENV)
        if check and r.returncode != 0:
            raise RuntimeError(f"citrusctl {' '.join(args)} -> exit {r.returncode}: "
                               f"{r.stderr.decode(errors='replace').strip()}")
        return r

    def ping(self):
        return self.ctl("ping", check=False).returncode == 0

    def status(self):
        return json.loads(self.ctl("status", "--json").stdout)

    def jobs(self):
        return json.loads(self.ctl("--json", "jobs").stdout)

    def fleet(self):
        return json.loads(self.ctl("fleet", "--json").stdout)

    def wait_ping(self, timeout=15):
        deadline = time.monotonic() + timeout
        while not self.ping():
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"citrusd did not answer ping within {timeout}s; stderr: {self.stderr_tail()}")
            time.sleep(self.PING_POLL)

    def wait_online(self, n, timeout=30):
        """Until exactly n apps are listed and all are online; returns the status."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            online = sum(1 for a in st["apps"] if a["state"] == "online")
            if online == n and len(st["apps"]) == n:
                return st
            self.check_alive()
            if time.monotonic() > deadline:
                states = {}
                for a in st["apps"]:
                    states[a["state"]] = states.get(a["state"], 0) + 1
                raise TimeoutError(f"only {online}/{n} apps online after {timeout}s: {states}")
            time.sleep(self.ONLINE_POLL)

    def wait_connected(self, timeout=30):
        """Until `citrusctl fleet --json` reports the agent connected; returns that answer."""
        deadline = time.monotonic() + timeout
        while True:
            f = self.fleet()
            if f.get("state") == "connected":
                return f
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"agent not connected after {timeout}s: {f}; stderr: {self.stderr_tail()}")
            time.sleep(0.1)

    def stop(self, timeout=None):
        """SIGTERM, wait, check for leftovers; returns (seconds to exit, exit code)."""
        timeout = self.STOP_TIMEOUT if timeout is None else timeout
        if self.proc is None or self.proc.poll() is not None:
            if self in LIVE:
                LIVE.remove(self)
            return None, self.proc.returncode if self.proc else None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"citrusd {self.pid} still running {timeout}s after SIGTERM: SIGKILL")
            self.proc.kill()
            rc = self.proc.wait()
            raise RuntimeError(f"citrusd did not exit within {timeout}s of SIGTERM")
        finally:
            if self in LIVE:
                LIVE.remove(self)
            self.errlog.close()
        secs = time.monotonic() - t0
        check_leftovers(f"citrusd {os.path.basename(self.dir)} exited (rc {rc})", self.LEFTOVER_SETTLE)
        if self.STOP_TIME_INCLUDES_CHECK:
            secs = time.monotonic() - t0
        return secs, rc


def stop_live(timeout=None, quiet=False):
    """Stops every daemon still in LIVE."""
    for dm in list(LIVE):
        try:
            dm.stop(timeout=timeout)
        except BaseException as e:
            if quiet:
                continue
            if not isinstance(e, Exception):
                raise
            log(f"stopping citrusd {dm.pid}: {e}")


# --- HTTP load -------------------------------------------------------------------------------- #
class Load:
    """bench/loadgen.py in its own process: steady-rate GETs on 127.0.0.1:port, one connection
    each, until stop(). Use as `with Load(port, rate) as load: ...`; then load.result (the JSON
    loadgen.py writes) and load.summary(t0, t1) (the outcomes of the requests sent in [t0, t1))."""
    START_TIMEOUT = 10  # s until the generator is sending

    def __init__(self, port, rate, timeout=2.0, max_secs=300, path="/"):
        self.port, self.rate, self.timeout, self.max_secs, self.path = port, rate, timeout, max_secs, path
        self.dir = os.path.join(WORK, "load")
        os.makedirs(self.dir, exist_ok=True)
        n = len(os.listdir(self.dir))
        self.out = os.path.join(self.dir, f"{n:04d}.json")
        self.ready = os.path.join(self.dir, f"{n:04d}.ready")
        self.proc, self.result = None, None

    def __enter__(self):
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "loadgen.py")
        self.errlog = open(self.out + ".stderr", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, script, "--port", str(self.port), "--rate", str(self.rate),
             "--timeout", str(self.timeout), "--out", self.out, "--ready", self.ready,
             "--max-secs", str(self.max_secs), "--path", self.path],
            stdin=subprocess.DEVNULL, stdout=self.errlog, stderr=self.errlog, env=CHILD_ENV)
        SKIP_PIDS.add(self.proc.pid)  # ours, not citrusd's
        deadline = time.monotonic() + self.START_TIMEOUT
        while not os.path.exists(self.ready):
            if self.proc.poll() is not None:
                raise RuntimeError(f"loadgen exited with {self.proc.returncode}: {self.stderr_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"loadgen was not sending within {self.START_TIMEOUT}s")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.stop()

    def stderr_tail(self, n=400):
        with open(self.out + ".stderr", "rb") as f:
            return f.read()[-n:].decode(errors="replace").strip() or "?"

    def stop(self):
        """SIGTERM; the generator waits for the requests in flight and writes its result."""
        if self.proc is None or self.result is not None:
            return self.result
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(self.timeout + 15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("loadgen did not finish within 15 s of SIGTERM")
        finally:
            SKIP_PIDS.discard(self.proc.pid)
            self.errlog.close()
        if rc != 0:
            raise RuntimeError(f"loadgen exited with {rc}: {self.stderr_tail()}")
        with open(self.out) as f:
            self.result = json.load(f)
        return self.result

    def summary(self, t0=None, t1=None):
        """Outcomes of the requests sent in [t0, t1) (CLOCK_MONOTONIC ns; None: open):
        {"sent", "ok", "failed", "by_outcome": {outcome: n}, "max_latency_ms", "p99_latency_ms",
        "bodies": {body: n} of the ok answers}."""
        reqs = [r for r in self.result["requests"]
                if (t0 is None or r[0] >= t0) and (t1 is None or r[0] < t1)]
        by, bodies = {}, {}
        for _, _, outcome, body in reqs:
            by[outcome] = by.get(outcome, 0) + 1
            if outcome == "ok":
                bodies[body] = bodies.get(body, 0) + 1
        lat = sorted(r[1] / 1e6 for r in reqs if r[2] == "ok")
        return {"sent": len(reqs), "ok": by.get("ok", 0), "failed": len(reqs) - by.get("ok", 0),
                "by_outcome": by, "max_latency_ms": lat[-1] if lat else None,
                "p99_latency_ms": lat[min(len(lat) - 1, -(-99 * len(lat) // 100) - 1)] if lat else None,
                "bodies": bodies}


# --- driver skeleton ---------------------------------------------------------------------------- #
def run_figures(figures, stop_timeout=30):
    """Runs each (name, fn); a figure that raises gets a FAILED row. LIVE daemons are stopped after
    each figure."""
    for name, fn in figures:
        log(f"=== figure {name}")
        try:
            fn()
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:
            log(f"figure {name} FAILED: {type(e).__name__}: {e}")
            FAILED.append(name)
            row(f"{name.split()[0]}. {name.split(' ', 1)[1]}", "FAILED",
                f"{type(e).__name__}: {e}".replace("\n", " ")[:400])
        finally:
            stop_live(stop_timeout)


def leftover_row(fig="leftover processes after citrusd exited"):
    row(fig, str(len(LEFTOVERS)),
        "; ".join(LEFTOVERS) or "every supervised process was gone after each SIGTERM'd citrusd exited")


def cell(s):
    return str(s).replace("|", "\\|").replace("\n", " ")


def print_table(title, key=None):
    """The title line, then ROWS as a Markdown table (sorted by key if given) on stdout."""
    print(f"\n{title}\n")
    print("| figure | value | notes |")
    print("|---|---|---|")
    for f, v, n in (sorted(ROWS, key=key) if key else ROWS):
        print(f"| {cell(f)} | {cell(v)} | {cell(n)} |")
    sys.stdout.flush()


def run_main(main, cleanup=None):
    """sys.exit(main()); on the way out stop the daemons still running, then cleanup()."""
    try:
        sys.exit(main())
    finally:
        stop_live(20, quiet=True)
        if cleanup:
            try:
                cleanup()
            except BaseException:
                pass


def figure_order(r):
    """Sort key: the leading number of the figure, rows without one last."""
    m = re.match(r"(\d+)", r[0])
    return int(m.group(1)) if m else 99
