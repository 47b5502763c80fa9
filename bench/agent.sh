#!/usr/bin/env bash
# Footprint of eks-connector-agent (issue 5), against the real kube-apiserver of tests/common:
# - the launcher's RSS (/proc/<pid>/status VmRSS, split into anonymous and file-backed pages, and
#   the peak VmHWM) while it supervises a fake SSM agent and syncs 10 rotated keys;
# - the latency from the agent's last write of a rotated key to the state Secret holding it.
# Budgets: <= 2 MiB RSS, <= 2 s latency.
#
# Measured on the static musl release binary that ships (when musl-gcc and the Rust target are
# installed, as scripts/cross.sh needs anyway), and on the glibc release build for reference.
#
#   bench/agent.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
arch="$(uname -m)"
triple="$arch-unknown-linux-musl"

run() { # label binary
    echo "== $1"
    EKS_CONNECTOR_AGENT_BIN="$2" cargo test --release --test agent bench_footprint -- \
        --ignored --nocapture --test-threads=1 2>&1 |
        grep -E 'launcher VmRSS|sync latenc|launcher: |panicked|FAILED' || true
}

if command -v musl-gcc >/dev/null && rustup target list --installed 2>/dev/null | grep -qx "$triple"; then
    env "CC_${arch}_unknown_linux_musl=musl-gcc" cargo build --release --target "$triple" \
        --bin eks-connector-agent
    run "static musl release build ($triple): what ships" "$ROOT/target/$triple/release/eks-connector-agent"
else
    echo "== static musl build skipped: needs musl-gcc and 'rustup target add $triple'"
fi
cargo build --release --bin eks-connector-agent
run "glibc release build (target/release), for reference" "$ROOT/target/release/eks-connector-agent"
