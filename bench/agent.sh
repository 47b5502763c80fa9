#!/usr/bin/env bash
# Footprint of eks-connector-agent (issue 5): the launcher's RSS (VmRSS) while supervising a fake
# SSM agent and syncing rotated keys, and the latency from the agent's last write of a rotated
# key to the state Secret holding it, against the real kube-apiserver of tests/common.
# Release build. Budgets: <= 2 MiB RSS, <= 2 s latency.
#
#   bench/agent.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo test --release --test agent bench_footprint -- --ignored --nocapture --test-threads=1 2>&1 |
    grep -E '^(launcher VmRSS|sync latency)|panicked|FAILED|test result'
