#!/usr/bin/env bash
# bench/releases.sh — the engine as release server: binary sizes and release upload/download
# throughput.
#
# Usage: bench/releases.sh [--quick] [--help]
#
#   --quick            3 repetitions instead of 10.
#   BENCH_PROFILE      the profile whose citrus-engine serves and whose citrusd is uploaded
#                      (default release; `dist` is what hosts download).
#   BENCH_TMPDIR       where the temp dir (the engine's state and releases) is made.
#   CARGO_TARGET_DIR   respected, as by bench/supervisor.sh.
#
# Builds the binaries of the profile, prints the size of citrusd in target/release and target/dist
# (each only if built), starts citrus-engine on 127.0.0.1 with a temp SQLite store, then uploads
# citrusd (POST /admin/releases, raw body) and downloads it (GET /releases/<sha256>) with curl,
# each repeated, and prints one Markdown table on stdout. Every re-upload stores the same bytes
# again (hashing, ELF check, fsync, rename); each download streams the file. Loopback only: the
# figures are the engine's cost, not a network's.
#
# Needs: bash, python3, cargo, curl, sha256sum.

BENCH_NAME=citrus-releases-bench
QUICK_IDLE_SECS=0
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" "$@"
for tool in curl sha256sum; do
    command -v "$tool" >/dev/null || die "$tool not found in PATH"
done
REPS=10
[[ $QUICK == 1 ]] && REPS=3

bench_setup
row() { printf '| %s | %s | %s |\n' "$1" "$2" "$3"; }

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
TOKEN=bench-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
cat >"$WORK/engine.toml" <<TOML
listen = "127.0.0.1:$PORT"
database_url = "sqlite://state/engine.db"
max_release_size = "512M"
TOML
BENCH_TAG=$TAG CITRUS_ADMIN_TOKEN=$TOKEN "$CITRUS_ENGINE" --config "$WORK/engine.toml" \
    >/dev/null 2>"$WORK/engine.stderr" &
ENGINE_PID=$!
for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
    kill -0 "$ENGINE_PID" 2>/dev/null || die "citrus-engine exited: $(tail -5 "$WORK/engine.stderr")"
    sleep 0.1
done

SIZE=$(stat -c %s "$CITRUSD")
SHA=$(sha256sum "$CITRUSD" | cut -d' ' -f1)
log "citrusd: $SIZE bytes, sha256 $SHA; $REPS uploads and downloads"
up=() down=()
for i in $(seq "$REPS"); do
    # curl's speed_* are bytes per second over the whole transfer.
    up+=("$(curl -fsS -o /dev/null -w '%{speed_upload}' -X POST -H "Authorization: Bearer $TOKEN" \
        -H 'content-type: application/octet-stream' --data-binary "@$CITRUSD" \
        "http://127.0.0.1:$PORT/admin/releases?version=bench-$i&arch=$(uname -m)")")
    down+=("$(curl -fsS -o "$WORK/got" -w '%{speed_download}' "http://127.0.0.1:$PORT/releases/$SHA")")
    [[ $(sha256sum "$WORK/got" | cut -d' ' -f1) == "$SHA" ]] || die "download $i differs from the upload"
done
stats() { python3 -c 'import statistics, sys; xs = sorted(float(x) / 1e6 for x in sys.argv[1:]); print(f"{statistics.median(xs):.0f} MB/s|min {xs[0]:.0f}, max {xs[-1]:.0f} MB/s")' "$@"; }

printf '\n### Releases bench (profile %s, %s, %s cores, load %s)\n\n' "$PROFILE" "$(date -u '+%Y-%m-%d %H:%M:%S')" \
    "$(nproc)" "$(cut -d' ' -f1 /proc/loadavg)"
printf '| figure | value | notes |\n|---|---|---|\n'
for p in release dist; do
    f=$TARGET_DIR/$p/citrusd
    [[ -x $f ]] && row "citrusd size, $p profile" "$(python3 -c "print(f'{$(stat -c %s "$f") / 1048576:.1f} MiB')")" \
        "$(stat -c %s "$f") bytes; $(file -b "$f" 2>/dev/null | cut -d, -f1-2 || true)"
done
IFS='|' read -r value notes <<<"$(stats "${up[@]}")"
row "upload, $((SIZE / 1048576)) MiB citrusd ($PROFILE)" "$value" "median of $REPS; $notes; POST /admin/releases on loopback: hash + ELF check + write + fsync + rename + row"
IFS='|' read -r value notes <<<"$(stats "${down[@]}")"
row "download, same file" "$value" "median of $REPS; $notes; GET /releases/<sha256> on loopback, curl to a file, checksum checked after each"
