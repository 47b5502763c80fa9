#!/usr/bin/env bash
# Puts both images the manifests run into a private registry (air-gapped install), every
# architecture of each, with `skopeo copy --all` (Debian's skopeo, installed when missing), and
# prints the `images:` entries (by digest) for manifests/kustomization.yaml.
#
#   scripts/mirror.sh REGISTRY[/PATH]              # e.g. registry.corp.example:5000/eks
#   scripts/mirror.sh REGISTRY --insecure          # plain-HTTP registry (or one with no trusted TLS)
#   scripts/mirror.sh REGISTRY --skip-agent        # only ours (the SSM agent's from elsewhere)
#   scripts/mirror.sh REGISTRY --agent-source REF  # the agent image from a skopeo REF, e.g.
#                                                  # oci-archive:amazon-ssm-agent.oci.tar (default:
#                                                  # docker://<the image manifests/kustomization.yaml names>)
#
# Ours comes from ./build.sh image's archive, dist/eks-connector-<version>.oci.tar, and keeps its
# digests (--preserve-digests): the digest printed is the manifest list's in the archive. A
# registry with a private CA: put the CA in /etc/containers/certs.d/<registry>/ca.crt. Credentials:
# `skopeo login REGISTRY` first.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

registry=""
insecure=0
skip_agent=0
agent_source=""
while [ $# -gt 0 ]; do
    case "$1" in
        --insecure) insecure=1 ;;
        --skip-agent) skip_agent=1 ;;
        --agent-source) agent_source="${2:?--agent-source needs a value}"; shift ;;
        --agent-source=*) agent_source="${1#--agent-source=}" ;;
        -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option $1 (try scripts/mirror.sh --help)" ;;
        *) [ -z "$registry" ] || die "one registry only (got $registry and $1)"; registry="${1%/}" ;;
    esac
    shift
done
[ -n "$registry" ] || die "usage: scripts/mirror.sh REGISTRY[/PATH] [--insecure] [--skip-agent] [--agent-source REF]"

need_prereqs "$PREREQS_MIRROR"

version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
archive="dist/eks-connector-$version.oci.tar"
[ -f "$archive" ] || die "$archive is missing: run ./build.sh image first"
# The one place both images are named: the `images:` of manifests/kustomization.yaml. The agent's
# entry: its name (as manifests/base writes it), where it is pulled from now, and its tag.
read -r agent_name agent_from agent_tag < <(awk '
    /^images:/ { on = 1; next }
    on && /^[^ #]/ { on = 0 }
    on && /- name:/ { if (name ~ /amazon-ssm-agent/) exit; name = $NF; from = $NF; tag = "" }
    on && /newName:/ { from = $NF }
    on && /newTag:/ { tag = $NF; gsub(/"/, "", tag) }
    END { if (name ~ /amazon-ssm-agent/) print name, from, tag }' manifests/kustomization.yaml) || true
[ -n "${agent_tag:-}" ] || die "no SSM agent image with a newTag in the images: of manifests/kustomization.yaml"
agent_image="$agent_from:$agent_tag"

dest_tls=()
[ "$insecure" = 0 ] || dest_tls=(--dest-tls-verify=false)
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# copy SRC DEST: every architecture, digests kept; prints the digest of what DEST now holds.
copy() {
    say "skopeo copy --all $1 $2"
    skopeo copy --all --preserve-digests --quiet "${dest_tls[@]}" --digestfile "$tmp/digest" "$1" "$2" >&2 ||
        die "skopeo copy $1 → $2 failed (see above)"
    cat "$tmp/digest"
}

ours="$(copy "oci-archive:$archive" "docker://$registry/eks-connector:$version")"
agent_line="newTag: \"$agent_tag\""
if [ "$skip_agent" = 1 ]; then
    say "not mirroring $agent_image (--skip-agent): copy it to $registry/amazon-ssm-agent:$agent_tag yourself"
else
    agent="$(copy "${agent_source:-docker://$agent_image}" "docker://$registry/amazon-ssm-agent:$agent_tag")"
    agent_line="digest: $agent"
fi

say "mirrored; put these entries in manifests/kustomization.yaml (images:)"
cat <<OUT
images:
  - name: eks-connector
    newName: $registry/eks-connector
    digest: $ours
  - name: $agent_name
    newName: $registry/amazon-ssm-agent
    $agent_line
OUT
