#!/usr/bin/env bash
# Builds the oldest Kubernetes the tests run against, like build-bins.sh builds the newest (and
# kept apart from it, so that changing this file never invalidates the newest build's cache key):
#   build-older.sh v1.29     kube-apiserver and kubectl of the release pinned in v1.29/go.mod,
#                            plus the newest build's etcd (same etcd v3 API; etcd 3.5's embed API
#                            differs from etcd/main.go). Prints the cache directory on stdout.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NAME="${1:?usage: build-older.sh v1.NN (a module directory next to this script)}"
MOD="$HERE/$NAME"
[[ -f "$MOD/go.mod" ]] || { echo "build-older: no module $MOD/go.mod" >&2; exit 1; }
# sed, not awk: scripts/lib.sh probes the cache with only a few text tools on PATH.
KUBE_VERSION="$(sed -n 's/^require k8s\.io\/kubernetes \(v[0-9.]*\)$/\1/p' "$MOD/go.mod")"
KEY="$(cat "$MOD/go.mod" "$MOD/go.sum" "$MOD/tools.go" "$0" | sha256sum | cut -c1-12)"
CACHE="${EKS_CONNECTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/eks-connector}"
OUT="$CACHE/kube-$KUBE_VERSION-$KEY"

done_already() { [[ -x "$OUT/kube-apiserver" && -x "$OUT/etcd" && -x "$OUT/kubectl" ]]; }
if done_already; then
    echo "$OUT"
    exit 0
fi
ETCD_FROM="$("$HERE/build-bins.sh")"
command -v go >/dev/null 2>&1 || { echo "build-older: Go is not installed; it is needed to build kube-apiserver $KUBE_VERSION" >&2; exit 1; }

mkdir -p "$CACHE"
# One build of this version at a time per machine.
exec 9>"$CACHE/.build-$NAME.lock"
flock 9
if done_already; then
    echo "$OUT"
    exit 0
fi
echo "build-older: building kube-apiserver, kubectl $KUBE_VERSION into $OUT (first run on this machine: several minutes)" >&2
start=$(date +%s)
TMP="$(mktemp -d "$CACHE/.build.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
cd "$MOD"
minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    LDFLAGS+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
# providerless: k8s.io/legacy-cloud-providers of that release is not on the module proxy, and the
# in-tree cloud providers play no part in the tests.
if ! go build -tags=providerless -ldflags "$LDFLAGS" -o "$TMP/" \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl >&2; then
    echo "build-older: go build failed (see above); the Go module proxy must be reachable for the first build" >&2
    exit 1
fi
cp "$ETCD_FROM/etcd" "$TMP/etcd"
rm -rf "$OUT"
mv "$TMP" "$OUT"
trap - EXIT
echo "build-older: built in $(( $(date +%s) - start ))s" >&2
echo "$OUT"
