#!/usr/bin/env bash
# The proxy benchmark (not a test: it reports, it asserts nothing). Builds eks-connector-proxy in
# release mode — the static musl binary that ships, and the glibc build for comparison — and
# bench/main.rs, then runs one side-by-side measurement per binary, prints the tables and writes
# them to bench/RESULTS.md. Needs curl and openssl.
#   bench/run.sh [--seconds N]        (default 5 s per load run)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$ROOT"
need_prereqs rust curl openssl
CARGO_TARGET_DIR="$ROOT/target/bench" cargo build --release --manifest-path bench/Cargo.toml
BENCH="$ROOT/target/bench/release/proxy-bench"
OUT="$ROOT/bench/RESULTS.md"
TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT

bins=()
if rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
    cargo build --release --target x86_64-unknown-linux-musl --bin eks-connector-proxy
    bins+=("static musl (what ships)|$ROOT/target/x86_64-unknown-linux-musl/release/eks-connector-proxy")
else
    say "rustup target x86_64-unknown-linux-musl missing: measuring the glibc build only"
fi
cargo build --release --bin eks-connector-proxy
bins+=("glibc, dynamically linked|$ROOT/target/release/eks-connector-proxy")

{
    echo "# eks-connector-proxy benchmark"
    echo
    echo "Produced by \`bench/run.sh\` on $(date -u +%Y-%m-%dT%H:%MZ); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
} > "$TMP/all.md"
for entry in "${bins[@]}"; do
    label="${entry%%|*}"; bin="${entry#*|}"
    say "$label: $bin"
    "$BENCH" --proxy "$bin" --out "$TMP/one.md" "$@"
    { echo "## $label"; echo; sed '1,2d' "$TMP/one.md"; echo; } >> "$TMP/all.md"
done
if [[ -f "$ROOT/bench/NOTES.md" ]]; then cat "$ROOT/bench/NOTES.md" >> "$TMP/all.md"; fi
cp "$TMP/all.md" "$OUT"
echo "written to $OUT" >&2
