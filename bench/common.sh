# bench/common.sh — the bash side shared by the bench scripts. A script sets BENCH_NAME (temp dir
# prefix) and QUICK_IDLE_SECS (idle window with --quick), then sources this file with its arguments:
#   source "$(dirname "${BASH_SOURCE[0]}")/common.sh" "$@"
# That sets `set -euo pipefail`, defines log/die/usage (usage prints the script's header comment),
# parses --quick/--help into QUICK, sets IDLE_SECS (BENCH_IDLE_SECS, else QUICK_IDLE_SECS or 60),
# REPO, and checks for python3 (>= 3.8) and cargo.
#
# bench_setup then builds the release binaries (CITRUSD, CITRUSCTL; its arguments, if any, replace
# cargo's `--bins`, e.g. `bench_setup --bin citrusd --bin citrusctl`), makes the temp dir WORK with
# the process tag TAG, and installs the cleanup trap: citrusd first (graceful), then every process
# carrying BENCH_TAG=$TAG, then the temp dir. run_driver runs $WORK/driver.py (which imports
# bench/benchlib.py) with the B_* settings benchlib reads, sets DRIVER_PID for the trap meanwhile,
# and exits with the driver's code. Drivers append every citrusd pid they start to $WORK/citrusd.pids.

set -euo pipefail

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $arg" ;;
    esac
done
if [[ $QUICK == 1 ]]; then
    IDLE_SECS=${BENCH_IDLE_SECS:-$QUICK_IDLE_SECS}
else
    IDLE_SECS=${BENCH_IDLE_SECS:-60}
fi
[[ $IDLE_SECS =~ ^[0-9]+([.][0-9]+)?$ ]] || die "BENCH_IDLE_SECS must be a number of seconds, got '$IDLE_SECS'"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ -f $REPO/Cargo.toml ]] || die "cannot find Cargo.toml in $REPO (the script lives in <repo>/bench/)"

# --- tools ---------------------------------------------------------------------------------------
for tool in python3 cargo; do
    command -v "$tool" >/dev/null || die "$tool not found in PATH"
done
python3 -c 'import sys; sys.exit(sys.version_info < (3, 8))' || die "python3 >= 3.8 is required"

# --- build, temp dir, cleanup --------------------------------------------------------------------
bench_setup() {
    TARGET_DIR=${CARGO_TARGET_DIR:-target}
    [[ $TARGET_DIR == /* ]] || TARGET_DIR=$REPO/$TARGET_DIR
    # BENCH_PROFILE: the cargo profile measured (`release`, or `dist`: what hosts download).
    PROFILE=${BENCH_PROFILE:-release}
    [[ $PROFILE =~ ^[a-z][a-z0-9_-]*$ ]] || die "BENCH_PROFILE must be a cargo profile name, got '$PROFILE'"
    local targets=("${@:---bins}")
    log "building: cargo build --profile $PROFILE ${targets[*]} (target dir $TARGET_DIR)"
    TIME=()
    [[ -x /usr/bin/time ]] && TIME=(/usr/bin/time -f 'cargo build: %e s wall, %M KB max RSS')
    (cd "$REPO" && "${TIME[@]}" cargo build --profile "$PROFILE" "${targets[@]}" >&2) || die "cargo build --profile $PROFILE ${targets[*]} failed"
    CITRUSD=$TARGET_DIR/$PROFILE/citrusd
    CITRUSCTL=$TARGET_DIR/$PROFILE/citrusctl
    CITRUS_ENGINE=$TARGET_DIR/$PROFILE/citrus-engine
    [[ -x $CITRUSD && -x $CITRUSCTL ]] || die "built binaries not found at $CITRUSD / $CITRUSCTL"

    BASE_TMP=${BENCH_TMPDIR:-${TMPDIR:-/tmp}}
    WORK=$(mktemp -d "$BASE_TMP/$BENCH_NAME.XXXXXX") || die "cannot create a temp dir under $BASE_TMP"
    TAG=$(basename "$WORK")-$$-$RANDOM
    DRIVER_PID=""
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    log "temp dir $WORK (tag $TAG)"
}

# Pids of live processes whose environment carries BENCH_TAG=$TAG (never ourselves).
tagged_pids() {
    local f pid
    for f in $(grep -lzx "BENCH_TAG=$TAG" /proc/[0-9]*/environ 2>/dev/null || true); do
        pid=${f#/proc/}; pid=${pid%/environ}
        [[ $pid != "$$" && $pid != "$BASHPID" ]] && echo "$pid"
    done
}

# Waits up to $1 tenths of a second for the given pids to disappear.
wait_gone() {
    local tenths=$1 pid alive; shift
    while ((tenths-- > 0)); do
        alive=0
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || return 0
        sleep 0.1
    done
    return 1
}

cleanup() {
    local rc=$? pids daemons pid
    trap - EXIT INT TERM
    set +e
    if [[ -n $DRIVER_PID ]] && kill -0 "$DRIVER_PID" 2>/dev/null; then
        log "stopping the driver (pid $DRIVER_PID)"
        kill -TERM "$DRIVER_PID" 2>/dev/null
        wait_gone 150 "$DRIVER_PID" || kill -KILL "$DRIVER_PID" 2>/dev/null
    fi
    # citrusd first (graceful: it stops its apps), then whatever is left.
    daemons=()
    if [[ -f $WORK/citrusd.pids ]]; then
        while read -r pid; do
            kill -0 "$pid" 2>/dev/null && grep -qzx "BENCH_TAG=$TAG" "/proc/$pid/environ" 2>/dev/null && daemons+=("$pid")
        done <"$WORK/citrusd.pids"
    fi
    if ((${#daemons[@]})); then
        log "SIGTERM to leftover citrusd ${daemons[*]}"
        kill -TERM "${daemons[@]}" 2>/dev/null
        wait_gone 200 "${daemons[@]}"
    fi
    mapfile -t pids < <(tagged_pids)
    if ((${#pids[@]})); then
        log "cleaning up ${#pids[@]} leftover process(es)"
        kill -TERM "${pids[@]}" 2>/dev/null
        wait_gone 30 "${pids[@]}"
        mapfile -t pids < <(tagged_pids)
        ((${#pids[@]})) && kill -KILL "${pids[@]}" 2>/dev/null
    fi
    rm -rf "$WORK"
    exit "$rc"
}

# run_driver FAILED_WHAT [VAR=value ...]: runs python3 $WORK/driver.py in the background with the
# common B_* settings plus the given ones, waits, and exits with its code.
run_driver() {
    local what=$1 rc=0; shift
    env B_CITRUSD="$CITRUSD" B_CITRUSCTL="$CITRUSCTL" B_WORK="$WORK" B_TAG="$TAG" B_QUICK="$QUICK" \
        B_IDLE="$IDLE_SECS" B_BENCH_DIR="$REPO/bench" "$@" python3 "$WORK/driver.py" &
    DRIVER_PID=$!
    wait "$DRIVER_PID" || rc=$?
    DRIVER_PID=""
    ((rc == 0)) || log "some $what failed (driver exit $rc); see the table"
    exit "$rc"
}
