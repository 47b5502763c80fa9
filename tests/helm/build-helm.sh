#!/usr/bin/env bash
# Builds the real Helm CLI for the chart tests from the Go module proxy (Helm is not a Debian
# package). Cached outside the repository, keyed by version and by the hash of the build recipe
# (version, flags, Go version), so only the first run on a machine pays for the build (several
# minutes) and comment edits here do not rebuild. Prints the binary's path.
set -euo pipefail

HELM_VERSION=v3.22.0
PKG="helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
# As Helm's own Makefile links it: the version `helm version` prints, and the Kubernetes version
# of its client-go (v0.37 -> 1.37) that `helm template` and `helm lint` assume (else 1.20).
LDFLAGS="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    LDFLAGS+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=37"
done
KEY="$(printf '%s\n' "$PKG" "$LDFLAGS" "$(go env GOVERSION 2>/dev/null)" | sha256sum | cut -c1-12)"
CACHE="${EKS_CONNECTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/eks-connector}"
OUT="$CACHE/helm-$HELM_VERSION-$KEY"

if [[ -x "$OUT/helm" ]]; then
    echo "$OUT/helm"
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    echo "build-helm: Go is not installed; the chart tests need it to build helm $HELM_VERSION (install Go >= 1.24 from go.dev or your package manager)" >&2
    exit 1
fi

mkdir -p "$CACHE"
# One Helm build at a time per machine (its own lock: it need not wait for the control plane's).
exec 9>"$CACHE/.helm-build.lock"
flock 9
if [[ -x "$OUT/helm" ]]; then
    echo "$OUT/helm"
    exit 0
fi

echo "build-helm: building helm $HELM_VERSION into $OUT (first run on this machine: several minutes)" >&2
start=$(date +%s)
TMP="$(mktemp -d "$CACHE/.helm-build.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
# `go install module@version` builds with Helm's own go.mod and go.sum, checked against the Go
# checksum database.
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
if ! GOBIN="$TMP" CGO_ENABLED=0 go install -ldflags "$LDFLAGS" "$PKG" >&2; then
    echo "build-helm: go install failed (see above); the Go module proxy must be reachable for the first build" >&2
    exit 1
fi
rm -rf "$OUT"
mv "$TMP" "$OUT"
trap - EXIT
echo "build-helm: built in $(( $(date +%s) - start ))s" >&2
echo "$OUT/helm"
