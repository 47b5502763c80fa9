#!/usr/bin/env bash
# Footprint of eks-connector-agent (issue 5), against the real kube-apiserver of tests/common:
# - the launcher's RSS (/proc/<pid>/status VmRSS, split into anonymous and file-backed pages, and
#   the peak VmHWM) while it supervises a fake SSM agent and syncs 10 rotated keys;
# - the latency from the agent's last write of a rotated key to the state Secret holding it.
# Budgets: <= 2 MiB RSS, <= 2 s latency.
#
# Measured on the static musl release builds (when musl-gcc and the Rust target are installed, as
# scripts/cross.sh needs anyway): the multi-call `eks-connector` that the image ships and
# `--install-launcher` copies, started as eks-connector-agent (argv[0]), and the stand-alone
# `eks-connector-agent`; then the glibc release build for reference.
#
#   bench/agent.sh
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$ROOT"
need_prereqs rust "$PREREQS_KUBE" control-plane
arch="$(uname -m)"
triple="$arch-unknown-linux-musl"

run() { # label binary
    echo "== $1"
    EKS_CONNECTOR_AGENT_BIN="$2" cargo test --release --test agent repeated_rotations_all_reach_the_secret_and_footprint_is_reported -- \
        --exact --nocapture --test-threads=1 2>&1 |
        grep -E 'launcher VmRSS|sync latenc|launcher: |panicked|FAILED' || true
}

if command -v musl-gcc >/dev/null && rustup target list --installed 2>/dev/null | grep -qx "$triple"; then
    env "CC_${arch}_unknown_linux_musl=musl-gcc" cargo build --release --target "$triple" \
        --bin eks-connector --bin eks-connector-agent
    link_dir="$(mktemp -d)"
    trap 'rm -rf "$link_dir"' EXIT
    ln -s "$ROOT/target/$triple/release/eks-connector" "$link_dir/eks-connector-agent"
    run "multi-call static musl eks-connector as eks-connector-agent ($triple): what ships" \
        "$link_dir/eks-connector-agent"
    run "stand-alone static musl eks-connector-agent ($triple)" \
        "$ROOT/target/$triple/release/eks-connector-agent"
else
    echo "== static musl builds skipped: needs musl-gcc and 'rustup target add $triple'"
fi
cargo build --release --bin eks-connector-agent
run "glibc release build (target/release/eks-connector-agent), for reference" \
    "$ROOT/target/release/eks-connector-agent"
