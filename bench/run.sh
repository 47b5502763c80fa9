#!/usr/bin/env bash
# The proxy benchmark (not a test: it reports, it asserts nothing). Builds the static musl
# eks-connector-proxy that ships (release) from this tree ("after") and from a git worktree of
# another revision ("before", default main), then measures both side by side in one run with
# bench/main.rs (direct, each proxy, nginx), prints the tables and writes them to
# bench/RESULTS.md. Needs curl and openssl; nginx (apt-get install nginx-light) for the
# reference rows.
#   bench/run.sh [--before REF] [--seconds N]       (default: main, 5 s per load run)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$ROOT"
BEFORE=main
args=()
while (($#)); do
    case "$1" in
        --before) BEFORE="$2"; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
need_prereqs rust curl openssl
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] \
    || say "nginx is not installed: no reference rows (apt-get install nginx-light)"
CARGO_TARGET_DIR="$ROOT/target/bench" cargo build --release --manifest-path bench/Cargo.toml
BENCH="$ROOT/target/bench/release/proxy-bench"
OUT="$ROOT/bench/RESULTS.md"
TMP="$(mktemp -d)"
cleanup() { git -C "$ROOT" worktree remove --force "$TMP/before" >/dev/null 2>&1 || true; rm -rf "$TMP"; }
trap cleanup EXIT

target=()
subdir=release
if rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
    target=(--target x86_64-unknown-linux-musl)
    subdir=x86_64-unknown-linux-musl/release
    # ring's C code wants a musl-targeting compiler (as scripts/cross.sh sets it).
    if command -v musl-gcc >/dev/null; then export CC_x86_64_unknown_linux_musl=musl-gcc; fi
else
    say "rustup target x86_64-unknown-linux-musl missing: measuring glibc builds"
fi
# "before": the same build of another revision, from a worktree of its own.
rev="$(git rev-parse --short "$BEFORE")"
git worktree add --detach "$TMP/before" "$rev" >/dev/null
(cd "$TMP/before" && CARGO_TARGET_DIR="$ROOT/target/bench-before" \
    cargo build --release "${target[@]}" --bin eks-connector-proxy)
cargo build --release "${target[@]}" --bin eks-connector-proxy
cp "$ROOT/target/bench-before/$subdir/eks-connector-proxy" "$TMP/proxy-before"
cp "$ROOT/target/$subdir/eks-connector-proxy" "$TMP/proxy-after"
head="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src bin || echo '+changes')"

{
    echo "# eks-connector-proxy benchmark"
    echo
    echo "Produced by \`bench/run.sh --before $BEFORE ${args[*]:-}\` on $(date -u +%Y-%m-%dT%H:%MZ): before = $BEFORE ($rev), after = $head; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
} > "$TMP/all.md"
"$BENCH" --proxy "before=$TMP/proxy-before" --proxy "after=$TMP/proxy-after" --out "$TMP/one.md" "${args[@]}"
sed '1,2d' "$TMP/one.md" >> "$TMP/all.md"
echo >> "$TMP/all.md"
if [[ -f "$ROOT/bench/NOTES.md" ]]; then cat "$ROOT/bench/NOTES.md" >> "$TMP/all.md"; fi
cp "$TMP/all.md" "$OUT"
say "written to $OUT"
