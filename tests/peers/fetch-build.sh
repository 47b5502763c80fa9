#!/usr/bin/env bash
# Brings the source of a real peer the tests run — AWS's SSM agent or the original Go connector —
# at a pinned commit, and builds its binaries offline (the source archives carry vendor/).
#
#   tests/peers/fetch-build.sh ssm-agent|eks-connector
#
# Prints the peer's cache directory on stdout: src/ is the extracted tree (the original's Helm
# chart and manifest live there), bin/ holds the binaries (ssm-agent: amazon-ssm-agent,
# ssm-agent-worker, ssm-session-worker; eks-connector: eks-connector).
#
# The archive comes from, in order:
#   1. $SSM_AGENT_SRC / $EKS_CONNECTOR_SRC (a .tar.gz of the pinned commit);
#   2. ../shared/peers/ beside the repository (or beside its main worktree), sha256-checked;
#   3. GitHub, https://github.com/aws/<repo>/archive/<commit>.tar.gz, checked with
#      `git get-tar-commit-id`.
# An archive is accepted when its sha256 is the pinned one or git says it is the pinned commit.
# When none is available the script fails saying where to get one; it never skips.
# Builds are cached under ~/.cache/eks-connector/ keyed by commit, one build at a time (flock).
set -euo pipefail

peer="${1:-}"
case "$peer" in
ssm-agent)
    REPO=amazon-ssm-agent
    COMMIT=1c217c89b42de51d4f4063363d8ec1f2eef56055
    # aws/amazon-ssm-agent at that commit without its top-level extra/ (the build uses vendor/).
    SHA256=3d57098ff74a0e4d014bd38118ea2ab62946be16760620036bd588e7f9f01ae2
    ENV_NAME=SSM_AGENT_SRC
    BINS=(amazon-ssm-agent ssm-agent-worker ssm-session-worker)
    ;;
eks-connector)
    REPO=amazon-eks-connector
    COMMIT=0cfd7c9a891c5e7ef33d15fba15a5338cca445df
    SHA256=ed13b2d845cfa188e4cd0f3a064cb04476a1787bd66a0b579062eceab62cb6d9
    ENV_NAME=EKS_CONNECTOR_SRC
    BINS=(eks-connector)
    ;;
*)
    echo "usage: $0 ssm-agent|eks-connector" >&2
    exit 2
    ;;
esac
SHORT="${COMMIT:0:7}"
URL="https://github.com/aws/$REPO/archive/$COMMIT.tar.gz"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CACHE="${EKS_CONNECTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/eks-connector}"
# The recipe is part of the key: a change to how we build gives a new directory.
RECIPE="$(sed -n '/^build() {/,/^}/p' "$0" | sha256sum | cut -c1-8)"
OUT="$CACHE/peer-$REPO-$SHORT-$RECIPE"

built() {
    local b
    [[ -d "$OUT/src" ]] || return 1
    for b in "${BINS[@]}"; do [[ -x "$OUT/bin/$b" ]] || return 1; done
}

if built; then
    echo "$OUT"
    exit 0
fi

say() { echo "fetch-build[$peer]: $*" >&2; }

# Whether an archive is the pinned one: its sha256, or the commit id git wrote into it.
pinned() {
    local f="$1"
    [[ "$(sha256sum "$f" | cut -d' ' -f1)" == "$SHA256" ]] && return 0
    [[ "$(gzip -dc "$f" 2>/dev/null | git get-tar-commit-id 2>/dev/null)" == "$COMMIT" ]]
}

mkdir -p "$CACHE"
# One build of this peer at a time per machine; other builds (kube-env) are not held up.
exec 9>"$CACHE/.peer-$REPO.lock"
flock 9
if built; then
    echo "$OUT"
    exit 0
fi

TMP="$(mktemp -d "$CACHE/.peer-$REPO.XXXXXX")"
trap 'chmod -R u+w "$TMP" 2>/dev/null; rm -rf "$TMP"' EXIT

archive=""
tried=()
if [[ -n "${!ENV_NAME:-}" ]]; then
    if [[ ! -f "${!ENV_NAME}" ]]; then
        say "$ENV_NAME=${!ENV_NAME} is not a file; point it at $REPO's archive of commit $COMMIT ($URL)"
        exit 1
    fi
    if ! pinned "${!ENV_NAME}"; then
        say "$ENV_NAME=${!ENV_NAME} is not $REPO at commit $COMMIT (sha256 differs and git get-tar-commit-id does not name it); download $URL"
        exit 1
    fi
    archive="${!ENV_NAME}"
    say "archive from $ENV_NAME: $archive"
fi
if [[ -z "$archive" ]]; then
    # Beside the repository, or beside its main worktree when this is a linked worktree.
    common="$(git -C "$ROOT" rev-parse --path-format=absolute --git-common-dir 2>/dev/null || true)"
    for dir in "$ROOT/../shared/peers" ${common:+"$(dirname "$common")/../shared/peers"}; do
        f="$dir/$REPO-$SHORT.tar.gz"
        [[ -f "$f" ]] || { tried+=("$f (absent)"); continue; }
        if pinned "$f"; then
            archive="$f"
            say "archive $f (sha256 checked)"
            break
        fi
        tried+=("$f (sha256 is not $SHA256)")
    done
fi
if [[ -z "$archive" ]]; then
    f="$TMP/download.tar.gz"
    if curl -fsSL --retry 2 -o "$f" "$URL" 2>"$TMP/curl.err"; then
        if pinned "$f"; then
            archive="$f"
            say "archive downloaded from $URL (git get-tar-commit-id checked)"
        else
            tried+=("$URL (not commit $COMMIT)")
        fi
    else
        tried+=("$URL ($(tr '\n' ' ' <"$TMP/curl.err"))")
    fi
fi
if [[ -z "$archive" ]]; then
    say "no source archive of $REPO at commit $COMMIT. Tried: \$$ENV_NAME (unset)$(printf '; %s' "${tried[@]}")."
    say "Download $URL and set $ENV_NAME to its path (or place it as ../shared/peers/$REPO-$SHORT.tar.gz)."
    exit 1
fi

mkdir -p "$TMP/src" "$TMP/bin"
tar -xzf "$archive" -C "$TMP/src" --strip-components=1 --no-same-owner

build() {
    local src="$1" out="$2"
    if ! command -v go >/dev/null 2>&1; then
        say "Go is not installed; building $REPO needs Go (go.dev or your package manager)"
        return 1
    fi
    # Offline: everything comes from the archive's vendor/.
    export GOFLAGS="-mod=vendor -buildvcs=false" GOPROXY=off CGO_ENABLED=0 GOTOOLCHAIN=local
    cd "$src"
    case "$REPO" in
    amazon-ssm-agent)
        go build -trimpath -ldflags "-s -w" -o "$out/amazon-ssm-agent" core/agent.go core/agent_unix.go core/agent_parser.go
        go build -trimpath -ldflags "-s -w" -o "$out/ssm-agent-worker" agent/agent.go agent/agent_unix.go agent/agent_parser.go
        go build -trimpath -ldflags "-s -w" -o "$out/ssm-session-worker" agent/framework/processor/executer/outofproc/sessionworker/main.go
        ;;
    amazon-eks-connector)
        go build -trimpath -ldflags "-s -w" -o "$out/eks-connector" ./cmd
        ;;
    esac
}

say "building ${BINS[*]} into $OUT (first run on this machine: minutes)"
start=$(date +%s)
if ! (build "$TMP/src" "$TMP/bin") >&2; then
    say "go build failed (see above)"
    exit 1
fi
# The SSM agent reads its config beside its binary only when the binary is root-owned and not
# group/other writable (agent/appconfig/constants_unix.go).
chmod 0755 "$TMP"
chmod 0555 "$TMP/bin"/*
chmod -R a-w "$TMP/src"
rm -rf "$OUT"
mv "$TMP" "$OUT"
rm -f "$OUT/download.tar.gz" "$OUT/curl.err" 2>/dev/null || true
trap - EXIT
say "built in $(( $(date +%s) - start ))s"
echo "$OUT"
