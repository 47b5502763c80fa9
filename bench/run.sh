#!/usr/bin/env bash
# The proxy benchmark (not a test: it reports, it asserts nothing). Builds the static musl
# eks-connector-proxy that ships (release) from this tree ("after") and from a git worktree of
# each other revision given ("before", default main), then measures them side by side in one run
# with bench/main.rs (direct, each proxy, nginx with 1 and 2 workers), interleaved round by
# round, and writes the tables (with this command and the load average) to OUT.
#   bench/run.sh [--before REF]... [--out FILE] [proxy-bench options: --seconds N (5)
#                --repeat N (1) --conns 1,16 --scrape --no-per-request]
#   bench/run.sh [--before REF]... [--out FILE] --profile [REQUESTS]
# With one --before its proxy is labelled "before"; with several, each by its revision.
# OUT defaults to target/bench/proxy.md; bench/RESULTS.md keeps the runs quoted in the notes.
# --profile: per request at 16 connections, kept alive and (a second table) a new TCP connection
# per request, for each proxy and nginx (1 worker): system calls
# (strace -c -f over 3*REQUESTS requests, default 2000) and instructions (valgrind's callgrind,
# which counts them exactly and repeatably on a noisy machine: the difference between a run of
# 3*REQUESTS and one of REQUESTS requests, divided by 2*REQUESTS, so start-up cancels out); and
# the instructions of one GET /metrics.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$ROOT"
BEFORES=()
OUT="$ROOT/target/bench/proxy.md"
command_line="bench/run.sh $*"
PROFILE=""
args=()
while (($#)); do
    case "$1" in
        --before) BEFORES+=("$2"); shift 2 ;;
        --out) OUT="$(realpath -m "$2")"; shift 2 ;;
        --profile)
            PROFILE=2000
            if [[ "${2:-}" =~ ^[0-9]+$ ]]; then PROFILE="$2"; shift; fi
            shift ;;
        *) args+=("$1"); shift ;;
    esac
done
((${#BEFORES[@]})) || BEFORES=(main)
need_prereqs rust curl openssl nginx "musl-target-$HOST_ARCH" musl-gcc ${PROFILE:+strace valgrind}
triple="$(triple_of "$HOST_ARCH")"
# ring's C code wants a musl-targeting compiler (as scripts/cross.sh sets it).
export "CC_${triple//-/_}=musl-gcc"
CARGO_TARGET_DIR="$ROOT/target/bench" cargo build --release --manifest-path bench/Cargo.toml
BENCH="$ROOT/target/bench/release/proxy-bench"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# built_rev REV: the proxy built from revision REV in a worktree of its own (under target/),
# kept per revision in target/bench-bin/REV so that a later run finds it.
built_rev() {
    local rev="$1" src="$ROOT/target/bench-src/$1" bin="$ROOT/target/bench-bin/$1/eks-connector-proxy"
    if [[ ! -x "$bin" ]]; then
        [[ -d "$src" ]] || git worktree add --detach "$src" "$rev" >/dev/null
        (cd "$src" && CARGO_TARGET_DIR="$ROOT/target/bench-before" \
            cargo build --release --target "$triple" --bin eks-connector-proxy) >&2
        mkdir -p "$(dirname "$bin")"
        cp "$ROOT/target/bench-before/$triple/release/eks-connector-proxy" "$bin"
    fi
    echo "$bin"
}

labels=() bins=() described=()
for ref in "${BEFORES[@]}"; do
    rev="$(git rev-parse --short "$ref")"
    label="$rev"
    ((${#BEFORES[@]} > 1)) || label=before
    labels+=("$label")
    bins+=("$(built_rev "$rev")")
    described+=("$label = $ref ($rev)")
done
cargo build --release --target "$triple" --bin eks-connector-proxy --bin eks-connector
cp "$ROOT/target/$triple/release/eks-connector-proxy" "$TMP/proxy-after"
labels+=(after) bins+=("$TMP/proxy-after")
described+=("after = $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src bin || echo '+changes')")
# What the image runs: the multi-call binary under the name eks-connector-proxy (a symlink, as
# scripts/image.sh lays it out). Same code; its footprint maps the larger file.
mkdir -p "$TMP/image"
cp "$ROOT/target/$triple/release/eks-connector" "$TMP/image/eks-connector"
ln -s eks-connector "$TMP/image/eks-connector-proxy"
labels+=(image) bins+=("$TMP/image/eks-connector-proxy")
described+=("image = after as the image runs it (multi-call binary)")
proxies=()
for i in "${!labels[@]}"; do proxies+=(--proxy "${labels[$i]}=${bins[$i]}"); done

load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
header() {
    echo "Produced by \`$command_line\` on $(date -u +%Y-%m-%dT%H:%MZ): $(printf '%s; ' "${described[@]}")load average at the start: $load_start (1, 5, 15 min)."
    echo
}

# profile_one MODE WHO BIN N TOOL...: the proxy-bench profile mode MODE (requests: exactly N
# requests at 16 keep-alive connections; reconnects: the same, each over a new connection), then
# SIGTERM, with the server (WHO: a proxy's label, or nginx1) under TOOL.
profile_one() {
    local mode="$1" who="$2" bin="$3" n="$4"
    shift 4
    BENCH_WRAP="$*" BENCH_PROFILE="$mode:$n" BENCH_TARGET="$who" \
        "$BENCH" --proxy "$who=$bin" --conns 16 --seconds 600 >>"$TMP/profile.log" 2>&1 ||
        { tail -n 20 "$TMP/profile.log" >&2; die "profiling $who ($mode) failed (log above)"; }
}

# Instructions of one callgrind run: the sum over its processes (nginx's master and worker).
callgrind_ir() { cat "$@" | awk '/^summary:/ { s += $2 } END { print s + 0 }'; }

if [[ -n "$PROFILE" ]]; then
    n1="$PROFILE" n3=$((3 * PROFILE))
    header >"$TMP/profile.md"
    for mode in requests reconnects; do
        case "$mode" in
            requests) what="Per request at 16 keep-alive connections" ;;
            reconnects) what="Per request over a new TCP connection each (16 clients at a time; the console's pattern, over TCP so that nginx is measured alike)" ;;
        esac
        {
            echo "$what; system calls: \`strace -c -f\` over $n3 requests (start-up included, < 1 %); instructions: callgrind, (Ir of $n3 requests − Ir of $n1) / $((n3 - n1)), user space only."
            echo
            echo "| server | system calls / request | of which (per request) | instructions / request (callgrind) |"
            echo "|---|---:|---|---:|"
        } >>"$TMP/profile.md"
        for i in "${!labels[@]}" nginx; do
            who=nginx1 bin="$TMP/proxy-after"
            [[ "$i" == nginx ]] || who="${labels[$i]}" bin="${bins[$i]}"
            say "profiling $who, $mode: strace"
            profile_one "$mode" "$who" "$bin" "$n3" strace -f -c -o "$TMP/strace-$mode-$who"
            calls="$(awk -v n="$n3" '$NF == "total" { printf "%.2f", $4 / n }' "$TMP/strace-$mode-$who")"
            top="$(awk -v n="$n3" '$1 ~ /^[0-9.]+$/ && $NF != "total" && $4 / n >= 0.05 {
                    printf "%s%s %.2f", sep, $NF, $4 / n; sep = ", " }' "$TMP/strace-$mode-$who")"
            say "profiling $who, $mode: callgrind, $n1 and $n3 requests"
            for n in "$n1" "$n3"; do
                mkdir -p "$TMP/cg-$mode-$who-$n"
                profile_one "$mode" "$who" "$bin" "$n" valgrind --tool=callgrind --trace-children=yes \
                    "--callgrind-out-file=$TMP/cg-$mode-$who-$n/out.%p"
            done
            ir1="$(callgrind_ir "$TMP/cg-$mode-$who-$n1"/out.*)" ir3="$(callgrind_ir "$TMP/cg-$mode-$who-$n3"/out.*)"
            per=$(((ir3 - ir1) / (n3 - n1)))
            echo "| $who | $calls | $top | $per |" >>"$TMP/profile.md"
            say "$who, $mode: $calls system calls, $per instructions per request"
        done
        echo >>"$TMP/profile.md"
    done
    # What one GET /metrics costs each proxy: 110 scrapes vs 10, no requests.
    {
        echo
        echo "| server | instructions / \`GET /metrics\` (callgrind, (Ir of 110 scrapes − Ir of 10) / 100) |"
        echo "|---|---:|"
    } >>"$TMP/profile.md"
    for i in "${!labels[@]}"; do
        who="${labels[$i]}"
        for n in 10 110; do
            mkdir -p "$TMP/cgs-$who-$n"
            BENCH_WRAP="valgrind --tool=callgrind --callgrind-out-file=$TMP/cgs-$who-$n/out.%p" \
                BENCH_PROFILE="scrapes:$n" "$BENCH" --proxy "$who=${bins[$i]}" --scrape >>"$TMP/profile.log" 2>&1 ||
                { tail -n 20 "$TMP/profile.log" >&2; die "profiling $who's scrapes failed (log above)"; }
        done
        per=$((($(callgrind_ir "$TMP/cgs-$who-110"/out.*) - $(callgrind_ir "$TMP/cgs-$who-10"/out.*)) / 100))
        echo "| $who | $per |" >>"$TMP/profile.md"
    done
    mkdir -p "$(dirname "$OUT")"
    cp "$TMP/profile.md" "$OUT"
    cat "$OUT"
    say "written to $OUT"
    exit 0
fi

"$BENCH" "${proxies[@]}" --out "$TMP/one.md" "${args[@]}"
mkdir -p "$(dirname "$OUT")"
{
    header
    sed '1,2d' "$TMP/one.md"
} >"$OUT"
say "written to $OUT"
