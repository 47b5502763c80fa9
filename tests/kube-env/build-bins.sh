#!/usr/bin/env bash
# Builds the real control plane for the tests from Go modules: kube-apiserver and kubectl from
# k8s.io/kubernetes, and an embedded etcd at the version Kubernetes itself requires. The binaries
# are cached outside the repository, keyed by version and by the hash of this module's files, so
# only the first run on a machine pays for the build. Prints the cache directory on stdout.
set -euo pipefail

KUBE_VERSION=v1.37.2
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KEY="$(cat "$HERE/go.mod" "$HERE/go.sum" "$HERE/etcd/main.go" "$HERE/tools.go" "$0" | sha256sum | cut -c1-12)"
CACHE="${EKS_CONNECTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/eks-connector}"
OUT="$CACHE/kube-$KUBE_VERSION-$KEY"

if [[ -x "$OUT/kube-apiserver" && -x "$OUT/etcd" && -x "$OUT/kubectl" ]]; then
    echo "$OUT"
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    echo "build-bins: Go is not installed; the tests need it to build kube-apiserver $KUBE_VERSION (install Go >= 1.26 from go.dev or your package manager)" >&2
    exit 1
fi

mkdir -p "$CACHE"
# One build at a time per machine, even when several test binaries start together.
exec 9>"$CACHE/.build.lock"
flock 9
if [[ -x "$OUT/kube-apiserver" && -x "$OUT/etcd" && -x "$OUT/kubectl" ]]; then
    echo "$OUT"
    exit 0
fi

echo "build-bins: building kube-apiserver, kubectl $KUBE_VERSION and etcd into $OUT (first run on this machine: several minutes)" >&2
start=$(date +%s)
TMP="$(mktemp -d "$CACHE/.build.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
cd "$HERE"
V=k8s.io/component-base/version
CV=k8s.io/client-go/pkg/version
minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
LDFLAGS="-s -w"
for pkg in "$V" "$CV"; do
    LDFLAGS+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
if ! go build -ldflags "$LDFLAGS" -o "$TMP/" \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl ./etcd >&2; then
    echo "build-bins: go build failed (see above); the Go module proxy must be reachable for the first build" >&2
    exit 1
fi
rm -rf "$OUT"
mv "$TMP" "$OUT"
trap - EXIT
echo "build-bins: built in $(( $(date +%s) - start ))s" >&2
echo "$OUT"
