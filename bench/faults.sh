#!/usr/bin/env bash
# bench/faults.sh — the fault suite: runs the tests of each fault class and prints one table.
#
# Usage: bench/faults.sh [--quick] [--help]
#
#   --quick            leaves out the heavy cases (the connection floods: 3000 sockets each).
#   BENCH_FAULTS_ONLY  run only the cases whose test name contains this text.
#   CARGO_TARGET_DIR   respected (cargo's own variable).
#
# The fault tests live in the one integration test binary (tests/it); this script re-implements
# none of them. It builds the binary once (cargo test --test it --no-run), checks that every test
# named below is in it (`-- --list`), then runs each case alone:
#   cargo test --test it -- --exact MODULE::TEST --nocapture
# one after the other, so that its seconds are its own. It prints a Markdown table on stdout:
# class | case | test | result | seconds, where result is `pass`, `fail: <the panic message>`, or
# `skipped: <reason>` when the test returned early after printing a line `SKIPPED: <reason>`
# (e.g. mounting a tmpfs needs root; cgroup v2 is not writable here). Progress and the output of a
# failed case go to stderr. Exit code 1 if a case failed or a named test is missing.
# Needs: bash, cargo; root for the tmpfs, read-only, cgroup and user-switch cases (else skipped).

BENCH_NAME=citrus-faults
QUICK_IDLE_SECS=0
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" "$@"

# class | case | test (module::name) | slow
CASES=(
    "disk full|log dir full: output dropped and counted, the app never blocked|logs::a_full_disk_drops_bytes_counts_them_and_never_blocks_the_app|"
    "disk full|state dir full: stop, stop all, delete, start --name refused whole|app_validation::commands_whose_state_write_fails_change_nothing|"
    "disk full|deploy root full: the deployment fails, current untouched|deploy::a_full_disk_fails_the_deployment_and_leaves_current_alone|"
    "read-only dirs|state and log dirs turn read-only under citrusd: commands refused whole, apps run, rotation drops and counts, all works again after|faults::read_only_state_and_log_dirs_refuse_changes_whole_and_lose_nothing|"
    "read-only dirs|state or log dir read-only from the start: refused in one line naming the file|faults::dirs_read_only_from_the_start_are_refused_in_one_line|"
    "read-only dirs|reload-config with a log file that cannot be opened: nothing applied|faults::a_reload_that_cannot_open_a_log_file_changes_nothing|"
    "EMFILE spawn|no descriptor left (pipes, env_file, user lookup): backoff, then online by itself|faults::a_spawn_without_descriptors_backs_off_and_recovers_by_itself|"
    "connection flood|3000 half-sent requests on the control socket (nofile 1024)|connections::half_sent_requests_neither_starve_citrusd_nor_stay|slow"
    "connection flood|3000 half-sent requests on the engine's listener|connections::half_sent_requests_cannot_grow_the_engine|slow"
    "connection flood|a replaced agent connection that ignores the Close frame|connections::a_replaced_agent_connection_that_ignores_the_close_is_dropped_soon|"
    "deploy under SIGKILL|citrusd killed while building|deploy::a_deployment_resumes_after_citrusd_is_killed_while_building|"
    "deploy under SIGKILL|citrusd killed while the source blocks|deploy::a_deployment_resumes_after_citrusd_is_killed_while_the_source_blocks|"
    "deploy under SIGKILL|citrusd killed during the health check|deploy::a_deployment_resumes_after_citrusd_is_killed_during_the_health_check|"
    "deploy under SIGKILL|citrusd killed between the switch and the journal write|deploy::citrusd_killed_between_the_switch_and_the_journal_write_does_not_switch_twice|"
    "deploy under SIGKILL|a resumed deployment whose source vanished|deploy::a_resumed_deployment_whose_source_vanished_fails_with_the_reason|"
    "state.json|invalid entries set aside, the rest runs|app_validation::invalid_state_entries_are_set_aside_and_the_rest_runs|"
    "state.json|a truncated file kept aside, the config runs|persistence::a_truncated_state_file_is_kept_aside_and_the_config_runs|"
    "state.json|citrusd SIGKILLed: every instance runs exactly once after the restart|persistence::kill_9_then_restart_runs_every_instance_exactly_once|"
    "symlinks|a symlink planted at a log path: refused, reported, not followed|logs::a_symlink_at_a_log_path_is_refused_and_reported_not_followed|"
    "symlinks|deploy sources reaching outside (symlink, ../ in an archive)|deploy::sources_that_reach_outside_are_refused_and_nothing_is_written_outside|"
    "escapers|setsid escapee with a cleared environment: killed by stop (cgroup)|cgroups::stop_kills_a_setsid_escapee_with_a_cleared_environment|"
    "escapers|the escapee of a killed citrusd: killed by the next one (cgroup)|cgroups::a_restarted_citrusd_kills_the_escapee_of_the_previous_run|"
    "escapers|SIGTERM ignorers and double forks: the whole tree stopped|supervision::stop_kills_the_whole_tree_including_sigterm_ignorers_and_double_forks|"
)

cd "$REPO"
log "building the test binary: cargo test --test it --no-run"
cargo test --test it --no-run >&2 2>&1 || die "cargo test --test it --no-run failed"
LISTED=$(cargo test -q --test it -- --list 2>/dev/null | sed -n 's/: test$//p')

# Markdown cells: no pipe or newline inside.
cell() { printf '%s' "$*" | tr '\n' ' ' | sed 's/|/\\|/g; s/  */ /g; s/ $//'; }

ROWS=()
FAILED=0
RAN=0
SUITE_START=$EPOCHREALTIME
for entry in "${CASES[@]}"; do
    IFS='|' read -r class case test slow <<<"$entry"
    [[ -n ${BENCH_FAULTS_ONLY:-} && $test != *"$BENCH_FAULTS_ONLY"* ]] && continue
    if [[ $QUICK == 1 && $slow == slow ]]; then
        ROWS+=("| $class | $(cell "$case") | \`$test\` | skipped: --quick | – |")
        continue
    fi
    if ! grep -qxF "$test" <<<"$LISTED"; then
        ROWS+=("| $class | $(cell "$case") | \`$test\` | fail: no such test in tests/it | – |")
        FAILED=$((FAILED + 1))
        continue
    fi
    log "running $test"
    start=$EPOCHREALTIME
    rc=0
    out=$(cargo test -q --test it -- --exact "$test" --nocapture 2>&1) || rc=$?
    secs=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    RAN=$((RAN + 1))
    skipped=$(grep -iE -m1 '^skipped: ' <<<"$out" | sed -E 's/^[Ss][Kk][Ii][Pp][Pp][Ee][Dd]: //' || true)
    if ((rc != 0)); then
        why=$(grep -A1 -m1 'panicked at' <<<"$out" | tail -n1 || true)
        result="fail: $(cell "${why:-exit code $rc}")"
        FAILED=$((FAILED + 1))
        log "FAILED: $test; its output:"
        printf '%s\n' "$out" >&2
    elif ! grep -q 'test result: ok. 1 passed' <<<"$out"; then
        result="fail: the filter did not run exactly one test"
        FAILED=$((FAILED + 1))
    elif [[ -n $skipped ]]; then
        result="skipped: $(cell "$skipped")"
    else
        result=pass
    fi
    ROWS+=("| $class | $(cell "$case") | \`$test\` | $result | $secs |")
done
TOTAL=$(awk -v a="$SUITE_START" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }')

echo "# Fault suite ($(date -u +%Y-%m-%d))"
echo
echo "\`bench/faults.sh$([[ $QUICK == 1 ]] && echo ' --quick')\` at $(git rev-parse --short HEAD 2>/dev/null || echo '?')," \
    "$(uname -sr), $(nproc) cores, $([[ $(id -u) == 0 ]] && echo root || echo "uid $(id -u)");" \
    "cases run one at a time: $RAN, in ${TOTAL} s (a case's seconds include cargo's start, ~0.2 s)."
echo
echo "| class | case | test | result | seconds |"
echo "|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
echo
if ((FAILED > 0)); then
    echo "$FAILED case(s) failed."
    exit 1
fi
echo "No case failed."
