#!/usr/bin/env bash
# bench/hot-code.sh — regenerates link/citrusd.<profile>.ld and link/citrusctl.<profile>.ld, the
# lists of the two binaries' hot functions that build.rs has the linker lay out together at the
# start of their text in optimised builds. One pair per profile: run it with the default
# (`release`) and with BENCH_PROFILE=dist (what hosts download), which inlines differently.
#
# Usage: bench/hot-code.sh [--help]
#
#   BENCH_PROFILE      the cargo profile built, traced and written for (default release).
#   CARGO_TARGET_DIR   respected, as in the other bench scripts.
#
# Why: the kernel maps a binary's text in runs of 64 KiB (or larger, with large page-cache folios)
# around each page touched, so citrusd's resident size follows how many runs its code touches,
# not how much code it runs. Laid out as the linker likes, the ~1 MB a supervisor runs is spread
# over most of a 9 MB text; gathered at the front, ~1.2 MB of text is mapped instead of ~5 MB.
#
# How: builds citrusd and citrusctl and runs citrusd twice under valgrind's callgrind. The first
# run starts 100 sleepers, answers `status`, `status --json` and `ping`, and idles: what every
# citrusd does, laid out first (tier 1). The second adds an app that logs on both streams, one that
# crashes every half second (restart with backoff) and one with a memory cap (the memory check),
# and answers `describe` and `restart` too: what it adds comes after (tier 2), so a host that never
# takes those paths does not map them. Shutdown is left out. Each function executed becomes one
# input-section pattern, sorted within its tier. citrusctl is traced running `status --json`,
# `status` and `ping`. Names are the mangled symbols, without their hash where that gathers no
# other instances of a generic function (a hash changes with the crates' features and versions):
# a function whose name changes, or that the optimiser stops inlining after a code change, stays
# where the linker puts it, so a stale list costs memory and page faults, never correctness. The summary on stderr says how much of what
# ran was already in the list; figure 2 of bench/supervisor.sh shows how much of citrusd's code
# is mapped outside it.
#
# Functions are named from the linker's map (build.rs writes <target>/<profile>/<bin>.map), so a
# stripped build is traced as it ships.
#
# Needs: bash, python3, cargo, valgrind. Takes a few minutes (callgrind is slow).

BENCH_NAME=citrus-hot-code
QUICK_IDLE_SECS=3
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" "$@"

for tool in valgrind callgrind_control; do
    command -v "$tool" >/dev/null || die "$tool not found in PATH (apt-get install valgrind)"
done

bench_setup --bin citrusd --bin citrusctl

cat >"$WORK/driver.py" <<'PYEOF'
import bisect, glob, os, re, subprocess, sys, time

sys.dont_write_bytecode = True
sys.path.insert(0, os.environ["B_BENCH_DIR"])
import benchlib
from benchlib import CHILD_ENV, CITRUSCTL, CITRUSD, WORK, log, sleepers, write_config

OUT_DIR, PROFILE = os.environ["B_OUT_DIR"], os.environ["B_PROFILE"]
SLEEPERS = 100


def callgrind(prefix):
    """valgrind's argv for a traced run writing callgrind.<prefix>.<pid>[.<n>] into WORK."""
    return ["valgrind", "--tool=callgrind", "--dump-instr=yes", "--compress-pos=no",
            "--compress-strings=no", f"--callgrind-out-file={WORK}/callgrind.{prefix}.%p"]


class Traced(benchlib.Daemon):
    WRAPPER = callgrind("citrusd")
    ONLINE_POLL = 0.5
    STOP_TIMEOUT = 120


# The two traced runs: what every citrusd does (its functions go first), then what busier hosts
# add: output to log, a crash loop with backoff, a memory cap, `describe` and `restart`.
COMMON = (sleepers(SLEEPERS), [["status"], ["status", "--json"], ["ping"]])
BUSY = (dict(sleepers(SLEEPERS), **{
    "talker": {"command": ["/bin/sh", "-c", "while :; do echo out; echo err >&2; sleep 0.2; done"]},
    "crasher": {"command": ["/bin/sh", "-c", "sleep 0.5; exit 3"], "restart_delay": "100ms"},
    "capped": {"command": ["/bin/sleep", "100000"], "max_memory_restart": "1G"},
}), [["status"], ["status", "--json"], ["ping"], ["describe", "s0000"], ["restart", "s0001"]])


def trace_citrusd(d, apps, commands, then=None):
    """Starts a traced citrusd with `apps`, waits until they run (the crasher, if any, has been
    restarted 3 times), runs `commands` through citrusctl, idles, dumps the profile; then calls
    `then(daemon)` and stops it. Returns the addresses executed in citrusd's binary and where
    valgrind loaded it."""
    dm = Traced(d, write_config(d, apps)).start()
    dm.wait_ping(timeout=300)
    steady = [n for n in apps if n != "crasher"]
    deadline = time.monotonic() + 300
    while True:
        st = dm.status()
        online = sum(1 for a in st["apps"] if a["state"] == "online" and a["name"] in steady)
        crashes = sum(a["restarts"] for a in st["apps"] if a["name"] == "crasher")
        if online == len(steady) and (crashes >= 3 or "crasher" not in apps):
            break
        dm.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{online} apps online, {crashes} restarts of the crasher after 300 s")
        time.sleep(0.5)
    log(f"{online} apps online, {crashes} restarts; running {len(commands)} commands, then idling")
    for args in commands:
        dm.ctl(*args)
    time.sleep(benchlib.IDLE)
    base = load_address(dm.pid, CITRUSD)
    subprocess.run(["callgrind_control", "--dump=hot", str(dm.pid)], check=True,
                   stdout=subprocess.DEVNULL, env=CHILD_ENV)
    pattern = f"{WORK}/callgrind.citrusd.{dm.pid}.*"
    deadline = time.monotonic() + 60
    while not glob.glob(pattern):
        if time.monotonic() > deadline:
            raise TimeoutError("callgrind wrote no dump within 60 s")
        time.sleep(0.2)
    time.sleep(1)  # the dump is written in one go, but let it finish
    addrs = executed(glob.glob(pattern), CITRUSD, base)
    if then:
        then(dm)
    dm.stop()
    return addrs, base


def ctl_commands(dm):
    """Runs citrusctl's everyday commands under callgrind against `dm`."""
    for args in (["status", "--json"], ["status"], ["ping"]):
        subprocess.run([*callgrind("citrusctl"), CITRUSCTL, "--socket", dm.sock, *args],
                       check=True, capture_output=True, env=CHILD_ENV)


def load_address(pid, binary):
    """Where the binary's first segment is mapped in the traced process."""
    exe = os.path.realpath(binary)
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[5] == exe and int(parts[2], 16) == 0:
                return int(parts[0].split("-")[0], 16)
    raise RuntimeError(f"{exe} is not mapped in process {pid}")


def executed(dumps, binary, base=None):
    """Addresses (relative to the binary) of the instructions the dumps say ran. Callgrind gives
    them relative for code it attributes to the binary; code it cannot attribute (an output
    section other than .text, such as .text.hot) comes as `???` with absolute addresses, which
    `base` (the load address, when known) turns relative."""
    exe, size, out = os.path.realpath(binary), os.path.getsize(binary), set()
    for dump in dumps:
        ob, calls = None, False
        with open(dump) as f:
            for line in f:
                if line.startswith("ob="):
                    ob = line[3:].strip()
                elif line.startswith("calls="):
                    calls = True  # the next cost line is the call's, not an instruction of this fn
                elif line.startswith("0x"):
                    if calls:
                        calls = False
                        continue
                    a = int(line.split(None, 1)[0], 16)
                    if ob == exe:
                        out.add(a)
                    elif ob == "???" and base is not None and base <= a < base + size:
                        out.add(a - base)
    return out


def functions(binary):
    """The binary's functions from the map the linker wrote beside it (build.rs): sorted
    addresses, and per address its size and names. The map names each function's input section,
    so a stripped binary (the `dist` profile's) is read as well as one with symbols."""
    path = f"{binary}.map"
    if not os.path.exists(path) or os.path.getmtime(path) < os.path.getmtime(binary) - 5:
        raise RuntimeError(f"{path} is missing or older than {binary} (build.rs has the linker write it)")
    by_addr = {}
    with open(path) as f:
        for line in f:
            # `VMA LMA Size Align <object>:(<section>)` for an input section of the output.
            head, sep, section = line.rstrip().rpartition(":(")
            cols = head.split(None, 4)
            if not sep or len(cols) < 5 or not section.startswith(".text."):
                continue
            name = re.sub(r"^\.text\.(?:unlikely\.|hot\.|startup\.)?", "", section[:-1])
            a, size = int(cols[0], 16), int(cols[2], 16)
            if size:
                old = by_addr.get(a, (0, []))
                by_addr[a] = (max(old[0], size), old[1] + [name])
    return sorted(by_addr), by_addr


# Bytes of functions that did not run a hash-free pattern may pull in with the ones that did.
WILDCARD_BUDGET = 2048


def patterns(names, by_addr):
    """The section-name tails matching the functions `names` across rebuilds. Always without the
    `.llvm.<hash>` suffix thin LTO gives a local it promotes (which locals it promotes, and the
    hash, change with any change to the code; the script matches both forms). And without a
    legacy symbol's hash (`17h<16 hex>E`), which changes whenever the crate's or a dependency's
    features or version change, unless that would also gather other instances of a generic
    function worth more than WILDCARD_BUDGET bytes: then the exact names."""
    plain = lambda n: re.sub(r"\.llvm\.\d+$", "", n)
    hashless = lambda n: re.sub(r"17h[0-9a-f]{16}E", "17h*E", n)
    size = {plain(n): s for s, ns in by_addr.values() for n in ns}
    family = {}
    for n in size:
        family.setdefault(hashless(n), []).append(n)
    ran = set(map(plain, names))
    out = set()
    for n in ran:
        others = sum(size[o] for o in family[hashless(n)] if o not in ran)
        out.add(hashless(n) if others <= WILDCARD_BUDGET else n)
    return out


def write_script(binary, tiers, what):
    """Writes link/<binary>.<profile>.ld from the addresses executed in `binary`, one list per tier:
    the functions of a tier that no earlier tier ran come after the earlier tiers', so what every
    run needs is packed first."""
    name = os.path.basename(binary)
    starts, by_addr = functions(binary)
    hot = benchlib.hot_section(binary)
    ran, unnamed, lists, seen = {}, 0, [], set()
    for addrs in tiers:
        tier = {}
        for a in addrs:
            i = bisect.bisect_right(starts, a) - 1
            if i < 0 or a >= starts[i] + max(by_addr[starts[i]][0], 1):
                unnamed += 1
                continue
            tier[starts[i]] = by_addr[starts[i]]
        ran.update(tier)
        ran_names = {n for _, names in tier.values() for n in names}
        pats = sorted(patterns(ran_names, by_addr) - seen)
        seen.update(pats)
        lists.append(pats)
    total = sum(s for s, _ in ran.values())
    in_hot = sum(s for a, (s, _) in ran.items() if hot[0] <= a < hot[1])
    log(f"{name} ran {len(ran)} functions, {total / 1024:.0f} KiB; {in_hot / 1024:.0f} KiB of them "
        f"were in its .text.hot ({(hot[1] - hot[0]) / 1024:.0f} KiB); {unnamed} instructions "
        f"outside any function section (assembly, crt) stay where they are")
    out = os.path.join(OUT_DIR, f"{name}.{PROFILE}.ld")
    with open(out, "w") as f:
        f.write(HEADER.format(bin=name, profile=PROFILE, n=len(ran), kib=total // 1024, what=what))
        f.write("SECTIONS\n{\n  .text.hot :\n  {\n")
        for n, pats in enumerate(lists):
            if n:
                f.write(f"    /* tier {n + 1}: run only on the busier paths */\n")
            for p in pats:
                f.write(f"    *(.text.*{p} .text.*{p}.llvm.*)\n")
        f.write("  }\n}\nINSERT BEFORE .text;\n")
    log(f"wrote {out}: {sum(map(len, lists))} patterns in {len(lists)} tier(s)")


HEADER = """\
/* {bin}'s hot code in the `{profile}` profile, laid out together before the rest of its text
   (build.rs passes this script to the linker for {profile} builds on Linux; INSERT keeps the
   default layout otherwise).

   Generated by BENCH_PROFILE={profile} bench/hot-code.sh (do not edit): the {n} functions
   ({kib} KiB) that {bin} ran under callgrind while
   {what}.

   Each line names a function's section: `.text.<mangled name>`, or `.text.unlikely.<name>` for
   one the compiler thought cold, with or without the `.llvm.<hash>` that thin LTO gives a local
   it promotes. A name's hash (`17h...E`), which changes with the features and versions of the
   crates, is left out (`17h*E`) unless that would also gather other instances of a generic
   function. A name that no longer matches leaves its function where the linker puts it: a stale
   list costs resident memory and page faults, never correctness. Regenerate it after changing
   what {bin} does on those paths. */

"""


def main():
    common, _ = trace_citrusd(os.path.join(WORK, "common"), *COMMON)
    busy, base = trace_citrusd(os.path.join(WORK, "busy"), *BUSY, then=ctl_commands)
    write_script(CITRUSD, [common, busy],
                 "tier 1: it started 100 sleepers, served status, status --json and ping, and idled;\n"
                 "   tier 2: in a second run it also ran an app that logs, one that crashes every half\n"
                 "   second and one with a memory cap, and served describe and restart")
    # valgrind loads every position-independent program at the same address.
    ctl = executed(glob.glob(f"{WORK}/callgrind.citrusctl.*"), CITRUSCTL, base)
    write_script(CITRUSCTL, [ctl], "it ran `status --json`, `status` and `ping` against 103 apps")
    return 0


if __name__ == "__main__":
    benchlib.run_main(main)
PYEOF

log "tracing citrusd and citrusctl under callgrind (a few minutes)"
run_driver "tracing" B_OUT_DIR="$REPO/link" B_PROFILE="$PROFILE"
