#!/usr/bin/env bash
# Builds the real Helm CLI for the chart tests from the Go module proxy (Helm is not a Debian
# package), cached per machine by tests/go-install-cached.sh (several minutes the first time).
# Prints the binary's path.
set -euo pipefail

HELM_VERSION=v3.22.0
# As Helm's own Makefile links it: the version `helm version` prints, and the Kubernetes version
# of its client-go (v0.37 -> 1.37) that `helm template` and `helm lint` assume (else 1.20).
LDFLAGS="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    LDFLAGS+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=37"
done
LDFLAGS="$LDFLAGS" exec "$(dirname "${BASH_SOURCE[0]}")/../go-install-cached.sh" helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
