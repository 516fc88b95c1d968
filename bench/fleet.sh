#!/usr/bin/env bash
# bench/fleet.sh — idle cost of citrusd's fleet agent, beside the same citrusd without [fleet].
#
# Usage: bench/fleet.sh [--quick] [--help]
#
#   --quick            fast sanity run: idle window 10 s (unless BENCH_IDLE_SECS is set), shorter
#                      settle time.
#   BENCH_IDLE_SECS    idle window in seconds (default 60, 10 with --quick).
#   BENCH_FLEET_CASES  the runs to make, comma-separated (default
#                      "baseline,agent-60s,agent-1s,drain").
#   BENCH_CITRUSD      measure this citrusd binary instead of the one built (e.g. an older build,
#                      for a before/after figure); citrusctl is still the one built.
#   BENCH_TMPDIR       where the temp dir is made (default ${TMPDIR:-/tmp}).
#   CARGO_TARGET_DIR   respected: binaries are taken from ${CARGO_TARGET_DIR:-target}/release.
#
# Three citrusd runs, one after the other, each with the same 10 apps (/bin/sleep 100000):
#   baseline   no [fleet] section;
#   agent 60s  [fleet] towards a stand-in engine, status_interval = "60s" (the default);
#   agent 1s   the same with status_interval = "1s" (shows the cost of one status update).
# Once all apps are online (and the agent reports `connected` in `citrusctl fleet --json`) and a
# settle time has passed, citrusd's utime+stime (/proc/PID/stat fields 14+15) and VmRSS are read at
# the start and the end of the idle window: CPU as % of one core, RSS in MB (10^6 B). The engine
# counts the status_update frames it received inside the window (by CLOCK_MONOTONIC stamps).
#
# Then the drain run: a citrusd without apps starts with 1,000 reports queued in its outbox
# (`event` frames of ~200 B, written as the whole-array `fleet-outbox.json` that every citrusd
# version reads) while the engine holds it off (503). Once `citrusctl fleet --json` shows the 1,000
# queued, citrusd's /proc/PID/io is read (and, when `perf` can, its fsync/fdatasync calls are
# counted with `perf stat -p`), the engine lets it in, and the figures are: the time from the
# connection's upgrade to the 1,000th report received; the bytes citrusd wrote meanwhile through
# write(2) (wchar: the outbox file and log lines; WebSocket frames go out through send(2), which
# wchar does not count) and to storage (write_bytes); the syncs.
#
# The engine is a minimal WebSocket server in python3 stdlib (RFC 6455, embedded below) on
# 127.0.0.1:<free port>: it checks x-agent-key against the key written to the agent's key_file
# (0600) and answers 401 otherwise, answers pings, counts text frames by their JSON "type", and
# writes its counts to a JSON file every second. One thread per connection.
#
# Builds the release binaries (cargo build --release --bins), runs everything from one python3
# (stdlib) driver and prints one Markdown table (figure | value | notes) on stdout. Progress goes
# to stderr. Every process started here, directly or through citrusd, carries BENCH_TAG=<random>
# in its environment; the EXIT trap stops them all by pid and removes the temp dir.
#
# Needs: bash, python3 (>= 3.8), cargo, /usr/bin/time (optional: times the build).

BENCH_NAME=citrus-bench-fleet
QUICK_IDLE_SECS=10
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" "$@"

# --- build ---------------------------------------------------------------------------------------
bench_setup

# --- stand-in engine -----------------------------------------------------------------------------
cat >"$WORK/engine.py" <<'PYEOF'
"""Minimal fleet engine: a WebSocket server (RFC 6455, python3 stdlib) that counts frames.

Usage: engine.py KEY_FILE PORT_FILE COUNTS_FILE
Listens on 127.0.0.1:<free port> (written to PORT_FILE once listening). A connection upgrades only
with x-agent-key equal to the content of KEY_FILE (else 401), and not while COUNTS_FILE.hold exists
(503). Text frames are counted by their JSON "type"; status_update frames and `event` frames of
kind "bench" are stamped with CLOCK_MONOTONIC, and each connection counts the bytes read from its
socket (frame headers included). COUNTS_FILE is rewritten (atomically) every second, and at once
when a connection opens or closes.
"""
import base64, hashlib, json, os, signal, socket, struct, sys, threading, time

KEY_FILE, PORT_FILE, COUNTS_FILE = sys.argv[1:4]
HOLD_FILE = COUNTS_FILE + ".hold"
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
MAX_HEAD = 16384
MAX_PAYLOAD = 8 << 20

LOCK = threading.Lock()
STATE = {
    "connections": [],      # one dict per upgraded connection
    "refused": [],          # handshakes answered with an error status
    "types": {},            # JSON "type" -> text frames
    "bytes": {},            # JSON "type" -> payload bytes
    "other_frames": {},     # binary / ping / pong / close / unparsable text
    "status_updates": [],   # [mono_ns, payload bytes, connection id]
    "bench_reports": [],    # [mono_ns, connection id] of each event frame of kind "bench"
}


def mono_ns():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def bump(d, k, n=1):
    d[k] = d.get(k, 0) + n


def dump():
    with LOCK:
        data = json.dumps(dict(STATE, mono_ns=mono_ns(), pid=os.getpid()))
    tmp = COUNTS_FILE + ".tmp"
    with open(tmp, "w") as f:
        f.write(data)
    os.replace(tmp, COUNTS_FILE)


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("peer closed the TCP connection")
        buf += chunk
    return bytes(buf)


def send_frame(conn, opcode, payload=b""):
    """Server frames are not masked."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    with conn["send_lock"]:
        conn["sock"].sendall(head + payload)


def read_frame(sock):
    """(fin, opcode, payload, bytes on the wire) of one client frame; clients must mask (RFC 6455
    5.1)."""
    b0, b1 = recv_exact(sock, 2)
    wire = 6
    fin, opcode = bool(b0 & 0x80), b0 & 0x0F
    if b0 & 0x70:
        raise ValueError("reserved bits set (no extension was negotiated)")
    masked, n = bool(b1 & 0x80), b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", recv_exact(sock, 2))
        wire += 2
    elif n == 127:
        (n,) = struct.unpack("!Q", recv_exact(sock, 8))
        wire += 8
    if not masked:
        raise ValueError("unmasked client frame")
    if n > MAX_PAYLOAD:
        raise ValueError(f"frame of {n} bytes")
    mask = recv_exact(sock, 4)
    data = recv_exact(sock, n)
    # XOR with the 4-byte mask, repeated: one big-int XOR instead of a python loop.
    reps = mask * (n // 4 + 1)
    payload = (int.from_bytes(data, "big") ^ int.from_bytes(reps[:n], "big")).to_bytes(n, "big") if n else b""
    return fin, opcode, payload, wire + n


def handshake(sock, addr):
    """Reads the HTTP upgrade; returns (conn dict) or None after answering an error."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            return None
        head += chunk
        if len(head) > MAX_HEAD:
            sock.sendall(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return None
    head, _, rest = head.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    request = lines[0]
    headers = {}
    for line in lines[1:]:
        k, sep, v = line.partition(":")
        if sep:
            headers[k.strip().lower()] = v.strip()

    def refuse(status, why):
        with LOCK:
            STATE["refused"].append({"status": status, "why": why, "request": request,
                                     "agent_id": headers.get("x-agent-id"), "mono_ns": mono_ns()})
        body = why.encode() + b"\n"
        sock.sendall(f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                     f"Connection: close\r\n\r\n".encode() + body)
        return None

    parts = request.split()
    if len(parts) != 3 or parts[0] != "GET":
        return refuse("400 Bad Request", f"not a GET request: {request!r}")
    try:
        with open(KEY_FILE) as f:
            key = f.read().strip()
    except OSError as e:
        return refuse("500 Internal Server Error", f"cannot read the key file: {e}")
    if headers.get("x-agent-key") != key:
        return refuse("401 Unauthorized", "x-agent-key missing or wrong")
    if os.path.exists(HOLD_FILE):
        return refuse("503 Service Unavailable", "held off (the hold file exists)")
    ws_key = headers.get("sec-websocket-key")
    if "websocket" not in headers.get("upgrade", "").lower() or not ws_key:
        return refuse("400 Bad Request", "not a WebSocket upgrade")
    accept = base64.b64encode(hashlib.sha1((ws_key + GUID).encode()).digest()).decode()
    sock.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())
    if rest:
        raise ValueError("client sent frame bytes before the 101 answer")
    conn = {"id": None, "sock": sock, "send_lock": threading.Lock(), "info": {
        "path": parts[1], "peer": f"{addr[0]}:{addr[1]}",
        "agent_id": headers.get("x-agent-id"), "client_type": headers.get("x-client-type"),
        "protocol": headers.get("x-citrus-protocol"),
        "opened_ns": mono_ns(), "closed_ns": None, "end": None, "close_code": None,
        "text_frames": 0, "pings": 0, "wire_bytes": 0}}
    with LOCK:
        conn["id"] = len(STATE["connections"])
        STATE["connections"].append(conn["info"])
    return conn


def serve(sock, addr):
    conn = None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = handshake(sock, addr)
        if conn is None:
            return
        dump()
        info, parts, first_op = conn["info"], [], None
        while True:
            fin, op, payload, wire = read_frame(sock)
            with LOCK:
                info["wire_bytes"] += wire
            if op == 0x9:                                     # ping
                with LOCK:
                    info["pings"] += 1
                send_frame(conn, 0xA, payload)
                continue
            if op == 0xA:                                     # pong
                with LOCK:
                    bump(STATE["other_frames"], "pong")
                continue
            if op == 0x8:                                     # close: echo the code, then hang up
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                with LOCK:
                    info["close_code"] = code
                    info["end"] = "close frame"
                try:
                    send_frame(conn, 0x8, payload[:2])
                except OSError:
                    pass
                return
            if op in (0x1, 0x2):
                parts, first_op = [payload], op
            elif op == 0x0 and first_op is not None:
                parts.append(payload)
            else:
                raise ValueError(f"unexpected opcode {op:#x}")
            if not fin:
                continue
            message, op, first_op = b"".join(parts), first_op, None
            now, kind = mono_ns(), None
            with LOCK:
                if op == 0x2:
                    bump(STATE["other_frames"], "binary")
                    continue
                info["text_frames"] += 1
                try:
                    obj = json.loads(message)
                    kind = str(obj.get("type"))
                except (ValueError, AttributeError):
                    bump(STATE["other_frames"], "unparsable text")
                    continue
                if kind == "event" and obj.get("kind") == "bench":
                    STATE["bench_reports"].append([now, conn["id"]])
                bump(STATE["types"], kind)
                bump(STATE["bytes"], kind, len(message))
                if kind == "status_update":
                    STATE["status_updates"].append([now, len(message), conn["id"]])
                    last = message
            if op == 0x1 and kind == "status_update":
                with open(COUNTS_FILE + ".last_status.tmp", "wb") as f:
                    f.write(last)
                os.replace(COUNTS_FILE + ".last_status.tmp", COUNTS_FILE + ".last_status")
    except (EOFError, ConnectionError) as e:
        if conn:
            with LOCK:
                conn["info"]["end"] = conn["info"]["end"] or f"EOF without a close frame ({e})"
    except Exception as e:  # protocol violation: report it, close with 1002
        if conn:
            with LOCK:
                conn["info"]["end"] = f"protocol error: {e}"
            try:
                send_frame(conn, 0x8, struct.pack("!H", 1002))
            except OSError:
                pass
        else:
            print(f"engine: handshake from {addr} failed: {e}", file=sys.stderr, flush=True)
    finally:
        if conn:
            with LOCK:
                conn["info"]["closed_ns"] = mono_ns()
        try:
            sock.close()
        except OSError:
            pass
        dump()


def main():
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    dump()
    with open(PORT_FILE + ".tmp", "w") as f:
        f.write(str(srv.getsockname()[1]))
    os.replace(PORT_FILE + ".tmp", PORT_FILE)

    def ticker():
        while True:
            time.sleep(1)
            dump()

    threading.Thread(target=ticker, daemon=True).start()
    while True:
        sock, addr = srv.accept()
        threading.Thread(target=serve, args=(sock, addr), daemon=True).start()


main()
PYEOF

# --- driver --------------------------------------------------------------------------------------
cat >"$WORK/driver.py" <<'PYEOF'
import json, os, subprocess, sys, time

sys.dont_write_bytecode = True
sys.path.insert(0, os.environ["B_BENCH_DIR"])
import benchlib
from benchlib import (CHILD_ENV, CLK_TCK, IDLE, QUICK, WORK, cpu_ticks, log, mono_ns,
                      proc_status, row)

ENGINE = os.environ["B_ENGINE"]
SETTLE = 2.0 if QUICK else 5.0
NAPPS = 10
AGENT_ID = "bench-agent-1"
ENGINE_PROC = None


# ---------------------------------------------------------------------------------------------- #
class Engine:
    def __init__(self):
        self.dir = os.path.join(WORK, "engine")
        os.makedirs(self.dir)
        self.key = os.urandom(24).hex()
        self.key_file = os.path.join(self.dir, "expected.key")
        with open(self.key_file, "w") as f:
            f.write(self.key + "\n")
        self.counts_file = os.path.join(self.dir, "counts.json")
        port_file = os.path.join(self.dir, "port")
        self.errlog = open(os.path.join(self.dir, "engine.stderr"), "ab")
        self.proc = subprocess.Popen([sys.executable, ENGINE, self.key_file, port_file, self.counts_file],
                                     stdin=subprocess.DEVNULL, stdout=self.errlog, stderr=self.errlog,
                                     env=CHILD_ENV)
        benchlib.SKIP_PIDS.add(self.proc.pid)  # not supervised by citrusd: no leftover
        deadline = time.monotonic() + 10
        while not os.path.exists(port_file):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the engine exited with {self.proc.returncode}: {self.stderr_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError("the engine did not start listening within 10s")
            time.sleep(0.02)
        with open(port_file) as f:
            self.port = int(f.read())
        self.url = f"ws://127.0.0.1:{self.port}/agent"
        log(f"engine listening on {self.url} (pid {self.proc.pid})")

    def stderr_tail(self, n=600):
        with open(os.path.join(self.dir, "engine.stderr"), "rb") as f:
            return f.read()[-n:].decode(errors="replace").strip()

    def counts(self, fresh_after_ns=None, timeout=5):
        """The counts file; with fresh_after_ns, one written after that CLOCK_MONOTONIC instant."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the engine died ({self.proc.returncode}): {self.stderr_tail()}")
            try:
                with open(self.counts_file) as f:
                    c = json.load(f)
                if fresh_after_ns is None or c["mono_ns"] > fresh_after_ns:
                    return c
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the engine's counts file is not being refreshed")
            time.sleep(0.1)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.errlog.close()


def engine_selftest(engine):
    """Checks the stand-in engine itself: 401 on a wrong key; with the right key the 101 answer's
    Sec-WebSocket-Accept, a ping answered by a pong, a 64-bit-length frame and a fragmented message
    counted, a close echoed. Returns a short description; raises on failure."""
    import base64, hashlib, socket, struct

    def connect(key):
        s = socket.create_connection(("127.0.0.1", engine.port), timeout=5)
        nonce = base64.b64encode(os.urandom(16)).decode()
        s.sendall((f"GET /agent HTTP/1.1\r\nHost: 127.0.0.1:{engine.port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {nonce}\r\nSec-WebSocket-Version: 13\r\n"
                   f"x-agent-id: selftest\r\nx-agent-key: {key}\r\n\r\n").encode())
        return s, nonce, benchlib.recv_until(s, b"\r\n\r\n").decode("latin-1")

    def frame(op, payload, fin=True):
        mask = os.urandom(4)
        n = len(payload)
        b0 = (0x80 if fin else 0) | op
        if n < 126:
            h = struct.pack("!BB", b0, 0x80 | n)
        elif n < 1 << 16:
            h = struct.pack("!BBH", b0, 0x80 | 126, n)
        else:
            h = struct.pack("!BBQ", b0, 0x80 | 127, n)
        return h + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    def read(s):
        def exact(n):
            b = b""
            while len(b) < n:
                c = s.recv(n - len(b))
                if not c:
                    raise EOFError
                b += c
            return b
        b0, b1 = exact(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", exact(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", exact(8))
        return b0 & 0x0F, exact(n)

    s, _, head = connect("wrong-" + engine.key)
    s.close()
    if not head.startswith("HTTP/1.1 401"):
        raise RuntimeError(f"engine self-test: a wrong key got {head.splitlines()[:1]}, not 401")
    s, nonce, head = connect(engine.key)
    want = base64.b64encode(hashlib.sha1((nonce + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
    if not head.startswith("HTTP/1.1 101") or f"Sec-WebSocket-Accept: {want}" not in head:
        raise RuntimeError(f"engine self-test: bad upgrade answer {head!r}")
    s.sendall(frame(0x9, b"hi"))
    if read(s) != (0xA, b"hi"):
        raise RuntimeError("engine self-test: ping not answered by a pong")
    big = json.dumps({"type": "selftest", "pad": "x" * 70000}).encode()
    small = json.dumps({"type": "selftest"}).encode()
    s.sendall(frame(0x1, big) + frame(0x1, small[:5], fin=False) + frame(0x0, small[5:]))
    s.sendall(frame(0x8, struct.pack("!H", 1000)))
    op, payload = read(s)
    s.close()
    if op != 0x8 or payload != struct.pack("!H", 1000):
        raise RuntimeError(f"engine self-test: close not echoed ({op}, {payload!r})")
    c = engine.counts(fresh_after_ns=mono_ns())
    if c["types"].get("selftest") != 2:
        raise RuntimeError(f"engine self-test: selftest frames counted {c['types']}")
    return "engine self-test passed (401 on a wrong key, accept hash, ping/pong, 64-bit length, fragments, close echo)"


def write_config(d, fleet=None):
    return benchlib.write_config(d, benchlib.sleepers(NAPPS, "s{:02d}", 1), defaults={},
                                 sections={"fleet": fleet} if fleet else None)


class Daemon(benchlib.Daemon):
    STOP_TIMEOUT = 30
    STOP_TIME_INCLUDES_CHECK = False


# ---------------------------------------------------------------------------------------------- #
def sample(pid):
    """(mono_ns, utime+stime ticks, VmRSS bytes, VmHWM bytes, threads, sum of task schedstat ns)."""
    t = mono_ns()
    ticks = cpu_ticks(pid)                          # fields 14 and 15
    status = proc_status(pid)
    kb = lambda k: int(status[k].split()[0]) * 1024
    sched = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                sched += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return {"t": t, "ticks": ticks, "rss": kb("VmRSS"), "hwm": kb("VmHWM"),
            "threads": int(status["Threads"]), "sched_ns": sched}


def run_case(engine, name, interval):
    d = os.path.join(WORK, name)
    fleet = None
    if interval:
        os.makedirs(d, exist_ok=True)
        key_path = os.path.join(d, "agent.key")
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(engine.key + "\n")
        fleet = {"engine_url": engine.url, "agent_id": AGENT_ID, "key_file": "agent.key",
                 "status_interval": interval, "reconnect_delay": "1s"}
    cfg = write_config(d, fleet)
    dm = Daemon(d, cfg).start()
    res = {"name": name, "interval": interval}
    try:
        dm.wait_ping()
        dm.wait_online(NAPPS)
        if interval:
            f = dm.wait_connected()
            res["fleet"] = f
            conns = engine.counts(fresh_after_ns=mono_ns())["connections"]
            res["conn_index"] = len(conns) - 1
        log(f"{name}: citrusd pid {dm.pid}, {NAPPS} apps online"
            + (", agent connected" if interval else "") + f"; settling {SETTLE:g}s")
        time.sleep(SETTLE)
        dm.check_alive()
        s0 = sample(dm.pid)
        rss_max, rss_min = s0["rss"], s0["rss"]
        log(f"{name}: idle window {IDLE:g}s")
        end = s0["t"] + int(IDLE * 1e9)
        while True:
            left = (end - mono_ns()) / 1e9
            if left <= 0:
                break
            time.sleep(min(1.0, left))
            if mono_ns() < end:
                with open(f"/proc/{dm.pid}/status") as fh:
                    for line in fh:
                        if line.startswith("VmRSS:"):
                            r = int(line.split()[1]) * 1024
                            rss_max, rss_min = max(rss_max, r), min(rss_min, r)
        s1 = sample(dm.pid)
        dm.check_alive()
        rss_max, rss_min = max(rss_max, s1["rss"]), min(rss_min, s1["rss"])
        wall = (s1["t"] - s0["t"]) / 1e9
        res.update(s0=s0, s1=s1, wall=wall, rss_max=rss_max, rss_min=rss_min,
                   cpu=(s1["ticks"] - s0["ticks"]) / CLK_TCK / wall * 100,
                   cpu_sched=(s1["sched_ns"] - s0["sched_ns"]) / 1e9 / wall * 100)
        c = engine.counts(fresh_after_ns=s1["t"])
        ups = [u for u in c["status_updates"] if s0["t"] <= u[0] <= s1["t"]]
        res["updates"] = len(ups)
        if interval:
            mine = [u[0] for u in c["status_updates"] if u[2] == res["conn_index"]]
            gaps = [(b - a) / 1e6 for a, b in zip(mine, mine[1:])]
            res["gaps"] = gaps
            with open(engine.counts_file + ".last_status") as fh:
                last = json.load(fh)
            apps = last.get("status", {}).get("apps", [])
            st = {}
            for a in apps:
                st[a.get("state")] = st.get(a.get("state"), 0) + 1
            res["last_apps"] = (len(apps), st)
        res["update_bytes"] = (sum(u[1] for u in ups) / len(ups)) if ups else None
        if interval:
            conn = c["connections"][res["conn_index"]]
            res["conn_frames"] = conn["text_frames"]
            res["connections_total"] = len(c["connections"])
            res["refused"] = len(c["refused"])
        log(f"{name}: CPU {res['cpu']:.3f}% ({s1['ticks'] - s0['ticks']} ticks; schedstat {res['cpu_sched']:.3f}%), "
            f"RSS {s0['rss'] / 1e6:.2f} → {s1['rss'] / 1e6:.2f} MB, threads {s0['threads']} → {s1['threads']}, "
            f"status_update frames in window: {res['updates']}")
    finally:
        t_stop = mono_ns()
        secs, rc = dm.stop()
        res["stop"] = (secs, rc)
        res["stderr"] = dm.stderr_text()
        if interval:
            # how did the connection end when citrusd stopped?
            deadline = time.monotonic() + 3
            while True:
                c = engine.counts(fresh_after_ns=mono_ns())
                conn = c["connections"][res.get("conn_index", -1)] if c["connections"] else None
                if conn is None or conn["closed_ns"] is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            res["conn_end"] = conn and conn["end"]
            res["conn_end_after_ms"] = conn and conn["closed_ns"] and (conn["closed_ns"] - t_stop) / 1e6
            res["conn_info"] = conn
    return res


DRAIN_REPORTS = 1000
DRAIN_AGENT = "bench-agent-drain"


def proc_io(pid):
    """/proc/PID/io as a dict of ints (wchar, syscw, write_bytes, ...)."""
    with open(f"/proc/{pid}/io") as f:
        return {k: int(v) for k, v in (line.split(":") for line in f)}


def start_perf(pid, out):
    """`perf stat` counting pid's fsync and fdatasync calls until SIGINT; None when perf cannot."""
    import shutil, signal
    perf = shutil.which("perf")
    if not perf:
        return None
    p = subprocess.Popen([perf, "stat", "-x", ",", "-o", out, "-e",
                          "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync", "-p", str(pid)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=CHILD_ENV)
    benchlib.SKIP_PIDS.add(p.pid)
    time.sleep(0.5)  # attached before the drain starts
    if p.poll() is not None:
        return None
    p.send = lambda: p.send_signal(signal.SIGINT)
    return p


def stop_perf(p, out):
    """{event: count} from a perf started by start_perf, or None."""
    if p is None:
        return None
    p.send()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        return None
    counts = {}
    with open(out) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) > 2 and parts[2].startswith("syscalls:") and parts[0].isdigit():
                counts[parts[2].split(":", 1)[1].replace("sys_enter_", "")] = int(parts[0])
    return counts or None


def run_drain(engine):
    """The drain run (see the script's header)."""
    d = os.path.join(WORK, "drain")
    state = os.path.join(d, "state")
    os.makedirs(state)
    key_path = os.path.join(d, "agent.key")
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(engine.key + "\n")
    frames = [json.dumps({"type": "event", "kind": "bench",
                          "message": f"queued report {i:04d} " + "x" * 150}, separators=(",", ":"))
              for i in range(DRAIN_REPORTS)]
    with open(os.path.join(state, "fleet-outbox.json"), "w") as f:
        json.dump(frames, f)
    hold = engine.counts_file + ".hold"
    open(hold, "w").close()
    fleet = {"engine_url": engine.url, "agent_id": DRAIN_AGENT, "key_file": "agent.key",
             "status_interval": "60s", "reconnect_delay": "100ms"}
    cfg = benchlib.write_config(d, {}, defaults={}, sections={"fleet": fleet})
    dm = Daemon(d, cfg).start()
    res = {"name": "drain", "frame_bytes": sum(map(len, frames)) / len(frames)}
    perf_out = os.path.join(d, "perf.txt")
    try:
        dm.wait_ping()
        deadline = time.monotonic() + 30
        while True:
            f = dm.fleet()
            if f.get("queued_reports") == DRAIN_REPORTS and f.get("state") == "waiting":
                break
            dm.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the agent did not show {DRAIN_REPORTS} queued reports while held off: {f}")
            time.sleep(0.05)
        perf = start_perf(dm.pid, perf_out)
        io0 = proc_io(dm.pid)
        os.unlink(hold)
        log(f"drain: citrusd pid {dm.pid}, {DRAIN_REPORTS} reports queued; engine lets it in")
        deadline = time.monotonic() + 600
        while True:
            c = engine.counts(fresh_after_ns=mono_ns())
            conns = [i for i, x in enumerate(c["connections"]) if x["agent_id"] == DRAIN_AGENT]
            got = [m for m in c["bench_reports"] if conns and m[1] == conns[-1]]
            if len(got) >= DRAIN_REPORTS:
                break
            dm.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(got)} of {DRAIN_REPORTS} reports reached the engine")
        # Until citrusd has marked everything sent (its last write to the outbox).
        deadline = time.monotonic() + 60
        while dm.fleet().get("queued_reports") != 0:
            if time.monotonic() > deadline:
                raise TimeoutError("the outbox did not empty after every report was received")
            time.sleep(0.02)
        io1 = proc_io(dm.pid)
        res["syncs"] = stop_perf(perf, perf_out)
        c = engine.counts(fresh_after_ns=mono_ns())
        conn = c["connections"][conns[-1]]
        stamps = sorted(m[0] for m in got)
        res.update(connections=len(conns), reports=len(got),
                   drain_ms=(stamps[-1] - conn["opened_ns"]) / 1e6,
                   first_ms=(stamps[0] - conn["opened_ns"]) / 1e6,
                   wchar=io1["wchar"] - io0["wchar"], syscw=io1["syscw"] - io0["syscw"],
                   write_bytes=io1["write_bytes"] - io0["write_bytes"], socket=conn["wire_bytes"])
        log(f"drain: {res['drain_ms']:.0f} ms, wchar {res['wchar']} B (socket {res['socket']} B), "
            f"write_bytes {res['write_bytes']} B, syncs {res['syncs']}")
    finally:
        if os.path.exists(hold):
            os.unlink(hold)
        secs, rc = dm.stop()
        res["stop"] = (secs, rc)
        res["stderr"] = dm.stderr_text()
    return res


def drain_rows(r):
    n = r["reports"]
    syncs = r["syncs"]
    sync_text = (", ".join(f"{k} {v}" for k, v in sorted(syncs.items())) if syncs
                 else "not counted (`perf stat -e syscalls:…` unavailable)")
    row(f"6. drain of {DRAIN_REPORTS} queued reports", f"{r['drain_ms']:.0f} ms",
        f"from the engine's 101 answer to its {n}th report received (the first at {r['first_ms']:.0f} ms; "
        f"reports of {r['frame_bytes']:.0f} B, after agent_connected and status_update); "
        f"{r['connections']} connection(s); {n / r['drain_ms'] * 1000:.0f} reports/s")
    row("7. bytes citrusd wrote during the drain", f"{r['wchar'] / 1e6:.3f} MB",
        f"wchar: bytes through write(2), i.e. the outbox file and log lines (the {r['socket']} B of "
        f"WebSocket frames the engine read go through send(2), not counted); {r['syscw']} write calls; "
        f"write_bytes (to storage, page-granular) {r['write_bytes']} B")
    row("8. syncs during the drain", str(sum(syncs.values())) if syncs else "n/a", sync_text)


def mb(b):
    return f"{b / 1e6:.2f} MB"


def main():
    global ENGINE_PROC
    load0 = os.getloadavg()
    ENGINE_PROC = engine = Engine()
    selftest = engine_selftest(engine)
    log(selftest)
    wanted = os.environ.get("B_CASES", "baseline,agent-60s,agent-1s,drain").split(",")
    known = ["baseline", "agent-60s", "agent-1s", "drain"]
    if not wanted or any(w not in known for w in wanted):
        raise SystemExit(f"BENCH_FLEET_CASES must be a comma-separated list of {', '.join(known)}; got {wanted}")
    cases = [(n, i) for n, i in [("baseline", None), ("agent-60s", "60s"), ("agent-1s", "1s")] if n in wanted]
    results = {}
    failed = []
    for name, interval in cases + ([("drain", None)] if "drain" in wanted else []):
        log(f"=== {name}")
        try:
            results[name] = run_drain(engine) if name == "drain" else run_case(engine, name, interval)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:
            log(f"{name} FAILED: {type(e).__name__}: {e}")
            failed.append(name)
            row(f"{name}", "FAILED", f"{type(e).__name__}: {e}".replace("\n", " ")[:500])
        finally:
            benchlib.stop_live()
    final = engine.counts(fresh_after_ns=mono_ns())
    engine.stop()

    tick_res = 1 / CLK_TCK / IDLE * 100
    label = {"baseline": "no [fleet]", "agent-60s": 'agent idle, status_interval "60s"',
             "agent-1s": 'agent idle, status_interval "1s"'}
    base = results.get("baseline")
    for name, _ in cases:
        r = results.get(name)
        if not r:
            continue
        s0, s1 = r["s0"], r["s1"]
        vs = ""
        if base and name != "baseline":
            vs = f"; Δ vs no [fleet]: {r['cpu'] - base['cpu']:+.3f} % (schedstat {r['cpu_sched'] - base['cpu_sched']:+.3f} %)"
        row(f"1. citrusd CPU, {label[name]}", f"{r['cpu']:.3f} % of one core",
            f"utime+stime {s1['ticks'] - s0['ticks']} ticks over {r['wall']:.1f} s (1 tick = {tick_res:.3f} %); "
            f"sum of per-thread schedstat run time: {r['cpu_sched']:.3f} %{vs}; threads {s0['threads']} → {s1['threads']}")
    for name, _ in cases:
        r = results.get(name)
        if not r:
            continue
        s0, s1 = r["s0"], r["s1"]
        vs = ""
        if base and name != "baseline":
            vs = f"; Δ vs no [fleet] at window end: {(s1['rss'] - base['s1']['rss']) / 1e6:+.2f} MB"
        row(f"2. citrusd RSS, {label[name]}", mb(s1["rss"]),
            f"VmRSS at window end; start {mb(s0['rss'])}, min/max over 1 s polls {mb(r['rss_min'])} / {mb(r['rss_max'])}, "
            f"VmHWM {mb(s1['hwm'])}{vs}")
    for name in ("agent-60s", "agent-1s"):
        r = results.get(name)
        if not r:
            continue
        per = float(r["interval"].rstrip("s"))
        expect = r["wall"] / per
        row(f"3. status_update frames received in window, {label[name]}", str(r["updates"]),
            f"expected ≈ {expect:.1f} ({r['wall']:.1f} s / {r['interval']}); "
            + (f"mean {r['update_bytes']:.0f} B each; " if r["update_bytes"] else "")
            + f"text frames on this connection in all: {r['conn_frames']}"
            + (f"; gaps between this connection's status_updates: min {min(r['gaps']):.0f} / median "
               f"{sorted(r['gaps'])[len(r['gaps']) // 2]:.0f} / max {max(r['gaps']):.0f} ms" if r["gaps"] else "")
            + f"; last status_update listed {r['last_apps'][0]} apps {r['last_apps'][1]}")
    a60, a1 = results.get("agent-60s"), results.get("agent-1s")
    if a60 and a1 and a1["updates"] > a60["updates"]:
        n = a1["updates"] - a60["updates"]
        cpu_ms = (a1["cpu"] - a60["cpu"]) / 100 * a1["wall"] * 1000 / n
        sch_ms = (a1["cpu_sched"] - a60["cpu_sched"]) / 100 * a1["wall"] * 1000 / n
        row("4. CPU per status update", f"{sch_ms:.2f} ms",
            f"(CPU 1s − CPU 60s) × window / ({a1['updates']} − {a60['updates']}) frames, from the per-thread "
            f"schedstat run time (ns resolution, user+system; citrusd has {a1['s1']['threads']} thread(s), so none "
            f"is lost to an exited thread); from utime+stime ticks: {cpu_ms:.2f} ms (coarse: {1000 / CLK_TCK:.0f} ms "
            f"per tick, {a1['s1']['ticks'] - a1['s0']['ticks']} vs {a60['s1']['ticks'] - a60['s0']['ticks']} ticks)")
    # connections, 401s, stop behaviour
    notes = []
    for name in ("agent-60s", "agent-1s"):
        r = results.get(name)
        if r and "conn_end" in r:
            notes.append(f"{name}: after SIGTERM the engine saw '{r['conn_end']}'"
                         + (f" {r['conn_end_after_ms']:.0f} ms later" if r.get("conn_end_after_ms") is not None else ""))
    frames = ", ".join(f"{k} {v}" for k, v in sorted(final["types"].items()))
    other = ", ".join(f"{k} {v}" for k, v in sorted(final["other_frames"].items()))
    agent_conns = [c for c in final["connections"] if c["agent_id"] == AGENT_ID]
    agent_refused = [c for c in final["refused"] if c["agent_id"] == AGENT_ID]
    hdr = agent_conns[0] if agent_conns else {}
    if any(n in results for n in ("agent-60s", "agent-1s")):
        row("5. engine totals", f"{len(agent_conns)} agent connections, {len(agent_refused)} refused",
            f"text frames by type: {frames or 'none'}; other frames: {other or 'none'}; "
            f"one connection per agent run expected (2); handshake headers of the first: path {hdr.get('path')}, x-agent-id {hdr.get('agent_id')}, "
            f"x-client-type {hdr.get('client_type')}, x-citrus-protocol {hdr.get('protocol')}; "
            + "; ".join(notes + [selftest + " (its frames are in the totals)"]))
    if results.get("drain"):
        drain_rows(results["drain"])
    for name in results:
        r = results.get(name)
        if not r:
            continue
        warn = [l.strip() for l in r["stderr"].splitlines() if " WARN " in l or " ERROR " in l]
        if warn:
            row(f"citrusd warnings/errors ({name})", str(len(warn)), " / ".join(w[-220:] for w in warn[:4]))
    stops = ", ".join(f"{n}: {r['stop'][0]:.2f} s (rc {r['stop'][1]})" for n, r in results.items()
                      if r.get("stop") and r["stop"][0] is not None)
    row("SIGTERM → citrusd exit", stops, f"{NAPPS} /bin/sleep apps each (the drain run: none)")
    row("machine", f"{os.cpu_count()} cores",
        f"load average at start {load0[0]:.2f}, at end {os.getloadavg()[0]:.2f} (other work on the machine adds noise); "
        f"kernel {os.uname().release}; CLK_TCK {CLK_TCK}; settle {SETTLE:g} s after connect before each window")
    benchlib.leftover_row()
    mode = "quick" if QUICK else "full"
    benchlib.print_table(f"citrusd fleet agent bench ({mode} run, idle window {IDLE:g} s, {NAPPS} apps, "
                         f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M:%S')})")
    return 1 if failed else 0


if __name__ == "__main__":
    benchlib.run_main(main, lambda: ENGINE_PROC and ENGINE_PROC.stop())
PYEOF

if [[ -n ${BENCH_CITRUSD:-} ]]; then
    [[ -x $BENCH_CITRUSD ]] || die "BENCH_CITRUSD=$BENCH_CITRUSD is not an executable file"
    CITRUSD=$BENCH_CITRUSD
    log "measuring $CITRUSD (BENCH_CITRUSD), not the citrusd just built"
fi

log "running (idle window ${IDLE_SECS}s$([[ $QUICK == 1 ]] && echo ', quick'))"
run_driver runs B_ENGINE="$WORK/engine.py" B_CASES="${BENCH_FLEET_CASES:-baseline,agent-60s,agent-1s,drain}"
