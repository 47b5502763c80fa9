#!/usr/bin/env bash
# The one entry point for building, testing and trying the connector.
#   ./build.sh demo         the whole flow on this machine: control plane, SSM stand-in, all three parts
#   ./build.sh test         fmt check, clippy, and every test (including the real kube-apiserver ones)
#   ./build.sh [ARCH]       release static (musl) binaries for x86_64 and aarch64 into dist/<arch>/, sizes printed
#   ./build.sh doctor       each prerequisite, how it is checked, OK or MISSING and the fix
#   ./build.sh kube-env DIR start the real control plane on loopback (foreground, until killed)
#   ./build.sh image        the scratch image (both architectures) as an OCI archive in dist/
#   ./build.sh chart        the Helm chart (manifests/chart/eks-connector) packaged as dist/eks-connector-<version>.tgz
#   ./build.sh mirror REG   push that image and the SSM agent's into registry REG (air-gapped install)
#   ./build.sh bench        benchmarks (proxy and agent launcher), release builds
#   ./build.sh fuzz [SECS] [TARGET...]  each cargo-fuzz target (default: all) for SECS seconds
#                           (default 60; nightly)
# Each command first checks what it needs and, as root on Debian, installs what is missing.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/scripts/lib.sh"
cd "$ROOT"

build_release() {
    # scripts/cross.sh checks its prerequisites, builds, checks (static, stripped, runs) and
    # copies each architecture.
    scripts/cross.sh "$@"
    say "binaries (stripped, static):"
    for f in dist/x86_64/* dist/aarch64/*; do
        [[ -f "$f" ]] || continue
        printf '  %-40s %9d bytes\n' "$f" "$(stat -c %s "$f")"
    done
}

# Runs every fuzz target for a while (not in CI: `cargo test --test fuzz_corpus` replays the
# committed corpora on stable). New inputs go to fuzz/work/TARGET; crashes to fuzz/artifacts/.
run_fuzz() {
    local secs="${1:-60}" targets
    [[ "$secs" =~ ^[0-9]+$ ]] || die "usage: ./build.sh fuzz [SECONDS] [TARGET...]"
    shift $(($# > 0 ? 1 : 0))
    rustup toolchain list 2>/dev/null | grep -q '^nightly' \
        || die "fuzzing needs the nightly toolchain: rustup toolchain install nightly"
    command -v cargo-fuzz >/dev/null || die "cargo-fuzz is missing: cargo install cargo-fuzz"
    cd fuzz
    local failed=()
    targets="$(cargo +nightly fuzz list)"
    local list=("$@")
    ((${#list[@]})) || mapfile -t list <<<"$targets"
    for t in "${list[@]}"; do
        grep -qx "$t" <<<"$targets" || die "no fuzz target '$t' (targets: $(tr '\n' ' ' <<<"$targets"))"
    done
    for t in "${list[@]}"; do
        mkdir -p "work/$t"
        say "fuzz $t for ${secs}s"
        set +o pipefail
        cargo +nightly fuzz run -O "$t" "work/$t" "corpus/$t" -- -max_total_time="$secs" \
            -print_final_stats=1 2>&1 \
            | { grep -E '^(stat::number_of_executed_units|stat::new_units_added|==|SUMMARY|Test unit written)' || true; }
        local rc=${PIPESTATUS[0]}
        set -o pipefail
        [[ $rc == 0 ]] || failed+=("$t")
    done
    ((${#failed[@]} == 0)) || die "crashes in: ${failed[*]} (inputs in fuzz/artifacts/; add them to fuzz/corpus/ once fixed)"
}

# One closing line for the whole suite from cargo test's output (cargo's own last line is one
# target's, often 0 tests); a target that ran but printed no result line crashed.
summarize_tests() {
    awk '/^ *Running / { run++ }
         /^test result:/ { res++; for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) g += $i } }
         END { printf "total: %d passed, %d failed", p, f
               if (g > 0) printf ", %d skipped", g
               if (run > res) printf "; %d of %d test targets ended without a result (crashed: see above)", run - res, run
               printf "\n" }' "$1"
}

run_tests() {
    need_prereqs "$PREREQS_TEST"
    say "cargo fmt --check"
    cargo fmt --all -- --check
    say "cargo clippy --all-targets -- -D warnings"
    cargo clippy --locked --all-targets -- -D warnings
    say "release binaries for both architectures (the image tests put them in the image; scripts/cross.sh)"
    scripts/cross.sh
    say "cargo test --no-fail-fast: every test target runs, even after one fails"
    local log status=0
    log="$(mktemp)"
    # Two test threads per target (one per core): four real SSM agents generating RSA keys at
    # once on two cores made the key sync miss its tests' deadlines (seen in a full run).
    cargo test --locked --no-fail-fast --all-targets -- --test-threads="${TEST_THREADS:-2}" 2>&1 | tee "$log" ||
        status=$?
    summarize_tests "$log"
    rm -f "$log"
    return "$status"
}

case "${1:-release}" in
    release|build) build_release "${@:2}" ;;
    x86_64|aarch64) build_release "$@" ;;
    test) run_tests ;;
    fuzz) run_fuzz "${@:2}" ;;
    doctor)
        doctor_prereqs "$PREREQS_TEST" || die "$? prerequisite(s) missing (above: why and the fix)"
        echo "all prerequisites OK"
        ;;
    kube-env)
        [[ $# -ge 2 ]] || die "usage: ./build.sh kube-env DIR"
        need_prereqs "$PREREQS_KUBE" control-plane
        exec tests/kube-env/start.sh "$2"
        ;;
    chart)
        # helm from PATH, else the pinned one the tests build (tests/helm/build-helm.sh, cached).
        helm_bin="$(command -v helm || tests/helm/build-helm.sh)" || die "no helm: install Helm 3 or Go (to build it)"
        mkdir -p dist
        "$helm_bin" package manifests/chart/eks-connector --destination dist
        ;;
    image) exec scripts/image.sh "${@:2}" ;;
    mirror) exec scripts/mirror.sh "${@:2}" ;;
    demo) exec scripts/demo.sh "${@:2}" ;;
    bench)
        # Proxy (vs direct, side by side), agent launcher footprint, init start-up, key rotation
        # with AWS's own SSM agent: release builds.
        # The proxy: three rounds interleaved (bench/NOTES.md: how to read them).
        say "bench/run.sh --repeat 3"
        bench/run.sh --repeat 3
        for b in bench/agent.sh bench/init.sh bench/real-agent.sh; do
            say "$b"
            "$b"
        done
        ;;
    -h|--help|help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0" ;;
    *) die "unknown command $1 (try ./build.sh --help)" ;;
esac
