#!/usr/bin/env bash
# Builds a test tool with `go install MODULE/CMD@VERSION` from the Go module proxy (its own go.mod
# and go.sum, checked against the Go checksum database) and caches it outside the repository,
# keyed by the package, the link flags, the build tags and the Go version: only the first run on a
# machine pays for the build, and comment edits in the callers (tests/helm/build-helm.sh,
# tests/promtool/build-promtool.sh) do not rebuild. Prints the binary's path.
#
#   go-install-cached.sh NAME PACKAGE@VERSION     environment: LDFLAGS, TAGS (optional)
#   GO_TOOL_CACHED_ONLY=1 go-install-cached.sh …  print the path if built, else say how; never build
#
# Until the cache check it runs only bash and text tools (scripts/lib.sh's cached_only relies on it).
set -euo pipefail

NAME="$1"
PKG="$2"
VERSION="${PKG##*@}"
BIN="${PKG%@*}"
BIN="${BIN##*/}"
LDFLAGS="${LDFLAGS:-}"
TAGS="${TAGS:-}"
# Without tags the key is what build-helm.sh hashed before this script existed (no rebuild).
KEY="$(printf '%s\n' "$PKG" "$LDFLAGS" ${TAGS:+"$TAGS"} "$(go env GOVERSION 2>/dev/null)" | sha256sum | cut -c1-12)"
CACHE="${EKS_CONNECTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/eks-connector}"
OUT="$CACHE/$NAME-$VERSION-$KEY"
CALLER="tests/$NAME/build-$NAME.sh"

if [[ -x "$OUT/$BIN" ]]; then
    echo "$OUT/$BIN"
    exit 0
fi
if [[ -n "${GO_TOOL_CACHED_ONLY:-}" ]]; then
    echo "build-$NAME: $NAME $VERSION is not built on this machine (no $OUT/$BIN): run $CALLER, or ./build.sh test, which builds it first (minutes, once)" >&2
    exit 3
fi

if ! command -v go >/dev/null 2>&1; then
    echo "build-$NAME: Go is not installed; the tests need it to build $NAME $VERSION (install Go >= 1.24 from go.dev or your package manager)" >&2
    exit 1
fi

mkdir -p "$CACHE"
# One build of this tool at a time per machine (its own lock: it need not wait for the others').
exec 9>"$CACHE/.$NAME-build.lock"
flock 9
if [[ -x "$OUT/$BIN" ]]; then
    echo "$OUT/$BIN"
    exit 0
fi

echo "build-$NAME: building $NAME $VERSION${TAGS:+ (tags $TAGS)} into $OUT (first run on this machine: several minutes)" >&2
start=$(date +%s)
TMP="$(mktemp -d "$CACHE/.$NAME-build.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
if ! GOBIN="$TMP" CGO_ENABLED=0 go install -ldflags "$LDFLAGS" ${TAGS:+-tags "$TAGS"} "$PKG" >&2; then
    echo "build-$NAME: go install failed (see above); the Go module proxy must be reachable for the first build" >&2
    exit 1
fi
rm -rf "$OUT"
mv "$TMP" "$OUT"
trap - EXIT
echo "build-$NAME: built in $(($(date +%s) - start))s" >&2
echo "$OUT/$BIN"
