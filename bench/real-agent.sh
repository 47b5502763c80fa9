#!/usr/bin/env bash
# Key-rotation latency with AWS's own SSM agent (issue 12): the pod laid out as manifests/ lays
# it out (tests/support/pod.rs), the real agent built from pinned source
# (tests/peers/fetch-build.sh) under our launcher, the real kube-apiserver, the SSM stand-in.
# The stand-in makes the agent rotate 10 times in a row (UpdateKeyPair on a token answer); for
# each, the time from SSM accepting the new public key (UpdateManagedInstancePublicKey) to the
# state Secret holding the agent's rewritten RegistrationKey byte for byte. Budget: <= 2 s.
#
#   bench/real-agent.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
cargo test --release --test real_agent ten_rotations_in_a_row_each_reach_the_secret -- \
    --exact --nocapture --test-threads=1 2>&1 |
    grep -E 'rotation-to-Secret latency|panicked|FAILED|test result' || true
