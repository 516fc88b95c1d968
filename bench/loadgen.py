"""bench/loadgen.py — a steady-rate HTTP load generator (python3 stdlib, asyncio), open loop.

Usage: loadgen.py --port PORT --rate N --timeout SECS --out FILE [--ready FILE] [--max-secs SECS]
                  [--max-inflight N] [--path /]

Sends `GET PATH HTTP/1.0` to 127.0.0.1:PORT at N requests per second on a fixed schedule (a late
or failed request does not delay the next one), each on a new TCP connection, until SIGTERM/SIGINT
or --max-secs. Each request must be answered in full within --timeout (connect included). When it
is sending, it creates --ready; on the way out it waits for the requests in flight (at most
--timeout), then writes FILE (JSON):
  {"rate", "timeout", "started_ns", "stopped_ns", "max_lag_ms", "requests": [[sent_ns, latency_ns,
   outcome, body], ...]}
with CLOCK_MONOTONIC stamps (comparable with the driver's). outcome is "ok" (2xx), "http_NNN"
(any other status), "refused" (ECONNREFUSED), "reset" (ECONNRESET/EPIPE, or the peer closed before
a full answer), "timeout", "skipped" (more than --max-inflight in flight: the generator's limit, not
the server's), or "error:<errno name or exception>" for anything else; body is the answer's body
(first 64 bytes) for "ok", else "".

Benchlib's `Load` runs it; it is a separate process so that the driver's own work does not skew
the schedule.
"""
import argparse, asyncio, errno, json, os, signal, time

MAX_ANSWER = 64 * 1024


def mono_ns():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def classify(exc):
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError, EOFError)):
        return "reset"
    if isinstance(exc, OSError) and exc.errno:
        return "error:" + errno.errorcode.get(exc.errno, str(exc.errno))
    return f"error:{type(exc).__name__}"


async def one(port, path, timeout):
    """One request: (outcome, body)."""
    async def exchange():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            await writer.drain()
            data = await reader.read(MAX_ANSWER)
            buf = data
            while data and len(buf) < MAX_ANSWER:
                data = await reader.read(MAX_ANSWER - len(buf))
                buf += data
            return buf
        finally:
            writer.close()

    try:
        answer = await asyncio.wait_for(exchange(), timeout)
    except Exception as e:  # every failure is an outcome
        return classify(e), ""
    head, sep, body = answer.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if not sep or len(status) < 2 or not status[1].isdigit():
        return "reset", ""  # closed before a complete answer
    code = int(status[1])
    if 200 <= code < 300:
        return "ok", body[:64].decode(errors="replace")
    return f"http_{code}", ""


async def run(args):
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    requests, tasks = [], set()
    period_ns = int(1e9 / args.rate)
    started = mono_ns()
    end = started + int(args.max_secs * 1e9)
    max_lag = 0
    if args.ready:
        with open(args.ready, "w") as f:
            f.write(str(started))

    async def fire(sent):
        outcome, body = await one(args.port, args.path, args.timeout)
        requests.append([sent, mono_ns() - sent, outcome, body])

    i = 0
    while not stop.is_set():
        due = started + i * period_ns
        if due >= end:
            break
        wait = (due - mono_ns()) / 1e9
        if wait > 0:
            try:
                await asyncio.wait_for(stop.wait(), wait)
                break
            except asyncio.TimeoutError:
                pass
        now = mono_ns()
        max_lag = max(max_lag, now - due)
        if len(tasks) >= args.max_inflight:
            requests.append([now, 0, "skipped", ""])
        else:
            t = asyncio.ensure_future(fire(now))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        i += 1
    stopped = mono_ns()
    if tasks:
        await asyncio.wait(set(tasks), timeout=args.timeout + 1)
    out = {"rate": args.rate, "timeout": args.timeout, "started_ns": started, "stopped_ns": stopped,
           "max_lag_ms": max_lag / 1e6, "requests": sorted(requests)}
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.replace(tmp, args.out)


def main():
    p = argparse.ArgumentParser(description="steady-rate HTTP/1.0 GET load on 127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rate", type=float, required=True, help="requests per second (1 to 5000)")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds per request, connect included")
    p.add_argument("--out", required=True)
    p.add_argument("--ready")
    p.add_argument("--max-secs", type=float, default=300.0)
    p.add_argument("--max-inflight", type=int, default=1000)
    p.add_argument("--path", default="/")
    args = p.parse_args()
    if not 1 <= args.rate <= 5000:
        p.error(f"--rate must be 1 to 5000 requests per second, got {args.rate}")
    if not 0 < args.timeout <= 60 or not 0 < args.max_secs <= 3600:
        p.error("--timeout must be in (0, 60] s and --max-secs in (0, 3600] s")
    if not 1 <= args.max_inflight <= 10000:
        p.error("--max-inflight must be 1 to 10000")
    if not 1 <= args.port <= 65535:
        p.error("--port must be 1 to 65535")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
