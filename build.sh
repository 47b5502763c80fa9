#!/usr/bin/env bash
# The one entry point for building, testing and trying the connector.
#   ./build.sh [ARCH]       release static (musl) binaries for x86_64 and aarch64 into dist/<arch>/, sizes printed
#   ./build.sh test         fmt check, clippy, and every test (including the real kube-apiserver ones)
#   ./build.sh kube-env DIR start the real control plane on loopback (foreground, until killed)
#   ./build.sh image        the scratch image (both architectures) as an OCI archive in dist/
#   ./build.sh chart        the Helm chart (manifests/chart/eks-connector) packaged as dist/eks-connector-<version>.tgz
#   ./build.sh bench        benchmarks (proxy and agent launcher), release builds
#   ./build.sh fuzz [SECS]  every cargo-fuzz target for SECS seconds each (default 60; nightly)
#   ./build.sh demo         the whole flow on this machine: control plane, SSM stand-in, all three parts
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT="$PWD"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

# Installs Debian packages for the commands given as "command:package" when missing.
need_commands() {
    local missing=()
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    ((${#missing[@]} == 0)) && return 0
    if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
        say "installing ${missing[*]}"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
            || die "could not install ${missing[*]} with apt-get; install them and retry"
    else
        die "missing: ${missing[*]} (install these packages and retry)"
    fi
}

need_rust() {
    command -v cargo >/dev/null || die "cargo is missing: install Rust with rustup (https://rustup.rs)"
}

build_release() {
    need_rust
    # scripts/cross.sh builds, checks (static, stripped, runs) and copies each architecture.
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
    local secs="${1:-60}"
    [[ "$secs" =~ ^[0-9]+$ ]] || die "usage: ./build.sh fuzz [SECONDS]"
    rustup toolchain list 2>/dev/null | grep -q '^nightly' \
        || die "fuzzing needs the nightly toolchain: rustup toolchain install nightly"
    command -v cargo-fuzz >/dev/null || die "cargo-fuzz is missing: cargo install cargo-fuzz"
    cd fuzz
    local failed=()
    for t in $(cargo +nightly fuzz list); do
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

run_tests() {
    need_rust
    need_commands go:golang-go openssl:openssl curl:curl setpriv:util-linux flock:util-linux python3:python3
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
    say "cargo fmt --check"
    cargo fmt --all -- --check
    say "cargo clippy --all-targets -- -D warnings"
    cargo clippy --locked --all-targets -- -D warnings
    say "building the test control plane (cached after the first run)"
    local t0=$SECONDS
    tests/kube-env/build-bins.sh >/dev/null
    say "control plane binaries ready in $((SECONDS - t0))s"
    t0=$SECONDS
    tests/helm/build-helm.sh >/dev/null
    say "helm ready in $((SECONDS - t0))s"
    say "cargo test"
    local log
    log="$(mktemp)"
    set +e
    cargo test --locked --all-targets -- --test-threads="${TEST_THREADS:-4}" 2>&1 | tee "$log"
    local status=${PIPESTATUS[0]}
    set -e
    # One closing line for the whole suite (cargo's own last line is a target's, often 0 tests).
    awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) g += $i } }
         END { if (g > 0) printf "total: %d passed, %d failed, %d skipped\n", p, f, g; else printf "total: %d passed, %d failed\n", p, f }' "$log"
    rm -f "$log"
    return "$status"
}

case "${1:-release}" in
    release|build) build_release "${@:2}" ;;
    x86_64|aarch64) build_release "$@" ;;
    test) run_tests ;;
    fuzz) run_fuzz "${@:2}" ;;
    kube-env)
        [[ $# -ge 2 ]] || die "usage: ./build.sh kube-env DIR"
        need_commands go:golang-go openssl:openssl curl:curl setpriv:util-linux flock:util-linux
        exec tests/kube-env/start.sh "$2"
        ;;
    chart)
        # helm from PATH, else the pinned one the tests build (tests/helm/build-helm.sh, cached).
        helm_bin="$(command -v helm || tests/helm/build-helm.sh)" || die "no helm: install Helm 3 or Go (to build it)"
        mkdir -p dist
        "$helm_bin" package manifests/chart/eks-connector --destination dist
        ;;
    image) [[ -x scripts/image.sh ]] || die "scripts/image.sh is missing"; exec scripts/image.sh "${@:2}" ;;
    demo) [[ -x scripts/demo.sh ]] || die "scripts/demo.sh is missing"; exec scripts/demo.sh "${@:2}" ;;
    bench)
        # Proxy (vs direct, side by side), agent launcher footprint, init start-up: release builds.
        for b in bench/run.sh bench/agent.sh bench/init.sh; do
            [[ -x "$b" ]] || die "$b is missing"
            say "$b"
            "$b"
        done
        ;;
    -h|--help|help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) die "unknown command $1 (try ./build.sh --help)" ;;
esac
