# bench/common.sh — sourced by the bench scripts after they define REPO, log, die and BENCH_NAME.
# Builds the release binaries (CITRUSD, CITRUSCTL), makes the temp dir WORK with the process tag
# TAG, and installs the cleanup trap: citrusd first (graceful), then every process carrying
# BENCH_TAG=$TAG, then the temp dir. A script that runs a driver sets DRIVER_PID for the trap, and
# appends every citrusd pid it starts to $WORK/citrusd.pids.

TARGET_DIR=${CARGO_TARGET_DIR:-target}
[[ $TARGET_DIR == /* ]] || TARGET_DIR=$REPO/$TARGET_DIR
log "building: cargo build --release --bins (target dir $TARGET_DIR)"
TIME=()
[[ -x /usr/bin/time ]] && TIME=(/usr/bin/time -f 'cargo build: %e s wall, %M KB max RSS')
(cd "$REPO" && "${TIME[@]}" cargo build --release --bins >&2) || die "cargo build --release --bins failed"
CITRUSD=$TARGET_DIR/release/citrusd
CITRUSCTL=$TARGET_DIR/release/citrusctl
[[ -x $CITRUSD && -x $CITRUSCTL ]] || die "built binaries not found at $CITRUSD / $CITRUSCTL"

# --- temp dir, cleanup ---------------------------------------------------------------------------
BASE_TMP=${BENCH_TMPDIR:-${TMPDIR:-/tmp}}
WORK=$(mktemp -d "$BASE_TMP/$BENCH_NAME.XXXXXX") || die "cannot create a temp dir under $BASE_TMP"
TAG=$(basename "$WORK")-$$-$RANDOM
DRIVER_PID=""

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
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
log "temp dir $WORK (tag $TAG)"
