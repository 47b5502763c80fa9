#!/usr/bin/env bash
# Memory of the connector-agent container with AWS's own SSM agent (built from pinned source by
# tests/peers/fetch-build.sh): our launcher as PID 1, amazon-ssm-agent, ssm-agent-worker and any
# ssm-session-worker, laid out as manifests/ lays out the pod (tests/support/pod.rs), against the
# real kube-apiserver and the SSM stand-in. It runs tests/real_agent.rs's
# ten_rotations_in_a_row_each_reach_the_secret (start, authentication, then 10 key rotations, each
# saved to the Secret) and samples, every 200 ms, the summed VmRSS of that test's agent processes
# (its descendants only: other runs on the machine are not counted).
#
#   bench/agent-memory.sh
#
# Prints the first sample after the agent worker is up ("idle"), the peak (rotations), and each
# process's own peak. Sessions are not covered: the stand-in answers the MGS control channel 500.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TEST=ten_rotations_in_a_row_each_reach_the_secret
BIN="$(cargo test --release --test real_agent --no-run 2>&1 |
    sed -n 's/.*Executable tests\/real_agent.rs (\(.*\))$/\1/p' | tail -1)"
[[ -x "$BIN" ]] || { echo "agent-memory: cannot build tests/real_agent.rs" >&2; exit 1; }
LOG="$(mktemp)"
"$BIN" "$TEST" --exact --test-threads=1 --nocapture >"$LOG" 2>&1 &
TPID=$!

# pid -> ppid for every process, then the test's descendants whose program is one we count.
sample() {
    local -A parent=()
    local p pp stat
    for stat in /proc/[0-9]*/stat; do
        p="${stat#/proc/}"; p="${p%/stat}"
        # Field 4 is the parent (after the parenthesised command, which may hold spaces).
        pp="$(sed 's/^.*) [A-Za-z] \([0-9]*\) .*/\1/' "$stat" 2>/dev/null)" || continue
        parent[$p]="$pp"
    done
    local total=0 line=""
    for p in "${!parent[@]}"; do
        local a="$p" ours=0
        while [[ -n "${parent[$a]:-}" && "$a" != 1 ]]; do
            [[ "$a" == "$TPID" ]] && { ours=1; break; }
            a="${parent[$a]}"
        done
        ((ours)) || continue
        local exe
        exe="$(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline" | awk '{print $1}')" || continue
        case "${exe##*/}" in
        amazon-ssm-agent | ssm-agent-worker | ssm-session-worker | eks-connector-agent) ;;
        *) continue ;;
        esac
        local kb
        kb="$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null)" || continue
        [[ -n "$kb" ]] || continue
        total=$((total + kb))
        line+=" ${exe##*/}=$kb"
    done
    echo "$total$line"
}

idle=""
peak=0
declare -A each=()
while kill -0 "$TPID" 2>/dev/null; do
    s="$(sample)"
    total="${s%% *}"
    if [[ "$s" == *ssm-agent-worker=* && -z "$idle" ]]; then
        idle="$s"
    fi
    ((total > peak)) && peak=$total
    for kv in ${s#* }; do
        [[ "$kv" == *=* ]] || continue
        n="${kv%%=*}"; v="${kv#*=}"
        ((v > ${each[$n]:-0})) && each[$n]=$v
    done
    sleep 0.2
done
wait "$TPID" || { echo "agent-memory: the test failed:" >&2; tail -30 "$LOG" >&2; exit 1; }
grep -E 'rotation-to-Secret latency' "$LOG" || true
echo "idle (first sample with the worker up), KiB: $idle"
printf 'peak of the container (launcher + agent + worker + session workers): %d KiB (%.1f MiB)\n' "$peak" "$(echo "$peak/1024" | bc -l)"
for n in "${!each[@]}"; do printf '  peak %-20s %6d KiB\n' "$n" "${each[$n]}"; done
rm -f "$LOG"
