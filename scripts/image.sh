#!/usr/bin/env bash
# The scratch image for x86_64 and arm64 as one manifest list, written as an OCI archive to dist/.
#
#   scripts/image.sh                 # cross-build (scripts/cross.sh), then both images + archive
#   scripts/image.sh --no-build      # use the binaries already in dist/x86_64 and dist/aarch64
#   scripts/image.sh --name NAME     # image name (default localhost/eks-connector)
#
# With a docker daemon that answers: `docker buildx build` for both platforms straight into the
# archive. Otherwise buildah, daemonless as root: `buildah --storage-driver vfs bud`, one image per
# architecture (NAME:VERSION-amd64, NAME:VERSION-arm64, kept in buildah's storage for
# `buildah from`/`buildah run`), a manifest list NAME:VERSION over both, pushed with --all to
#   dist/eks-connector-VERSION.oci.tar
# Prints each architecture's uncompressed size (layers without compression, plus config) against
# the 5 MiB budget, and writes it to dist/image-size.txt.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

build=1
name=localhost/eks-connector
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) build=0 ;;
        --name) name="${2:?--name needs a value}"; shift ;;
        --name=*) name="${1#--name=}" ;;
        -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (try scripts/image.sh --help)" ;;
    esac
    shift
done

need_prereqs python3

version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
[ -n "$version" ] || die "cannot read the version from Cargo.toml"
archive="dist/eks-connector-$version.oci.tar"
budget=$((5 * 1024 * 1024))

if [ "$build" = 1 ]; then
    say "release binaries for x86_64 and aarch64 (scripts/cross.sh; minutes on a first build, seconds after)"
    "$ROOT/scripts/cross.sh" x86_64 aarch64
fi

# The build context: Dockerfile.scratch and one directory per OCI architecture holding what goes
# into /usr/local/bin. When bin/eks-connector is the multi-call binary (it runs the program its
# argv[0] names), the image holds it once and the three names are symlinks to it: one copy of
# std, rustls and ring instead of four. Otherwise, the four separate binaries.
[ -x dist/x86_64/eks-connector ] || die "dist/x86_64/eks-connector is missing: run scripts/cross.sh first (or drop --no-build)"
multicall=0
case "$(bash -c 'exec -a eks-connector-init "$0" --version' dist/x86_64/eks-connector 2>/dev/null)" in
    *eks-connector-init*) multicall=1 ;;
esac
ctx="dist/image-context"
rm -rf "$ctx"
mkdir -p "$ctx"
cp Dockerfile.scratch "$ctx/Dockerfile"
# The original image's entrypoint path, /var/eks/connector: users' overrides name it. A symlink
# to the multi-call binary, which takes the original's `init …`/`server …` words whatever its name.
mkdir -p "$ctx/original"
ln -s /usr/local/bin/eks-connector "$ctx/original/connector"
for arch in x86_64 aarch64; do
    oarch="$(oci_arch_of "$arch")"
    mkdir -p "$ctx/$oarch"
    for b in $BINARIES; do
        [ -x "dist/$arch/$b" ] || die "dist/$arch/$b is missing: run scripts/cross.sh first (or drop --no-build)"
        if [ "$multicall" = 1 ] && [ "$b" != eks-connector ]; then
            ln -s eks-connector "$ctx/$oarch/$b"
        else
            cp "dist/$arch/$b" "$ctx/$oarch/$b"
        fi
    done
done
if [ "$multicall" = 1 ]; then
    say "image layout: multi-call /usr/local/bin/eks-connector, the three programs as symlinks to it"
else
    say "image layout: four separate binaries in /usr/local/bin"
fi

# Uncompressed size of an image in an OCI layout directory: its layers as unpacked tar streams
# plus its config (what the budget counts).
oci_size() {
    python3 - "$1" <<'PY'
import gzip, json, os, sys
d = sys.argv[1]
def blob(digest):
    algo, hexd = digest.split(":", 1)
    return os.path.join(d, "blobs", algo, hexd)
index = json.load(open(os.path.join(d, "index.json")))
m = json.load(open(blob(index["manifests"][0]["digest"])))
def size(path):
    # Layers may be stored compressed even when asked not to: count the bytes they unpack to.
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    if not gz:
        return os.path.getsize(path)
    n = 0
    with gzip.open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += len(chunk)
    return n
print(sum(size(blob(x["digest"])) for x in m["layers"] + [m["config"]]))
PY
}

report_size() {
    local oarch="$1" size="$2"
    local verdict="within"
    [ "$size" -le "$budget" ] || verdict="OVER"
    awk -v a="$oarch" -v s="$size" -v v="$verdict" \
        'BEGIN { printf "%s %d bytes (%.2f MiB) uncompressed, %s the 5 MiB budget\n", a, s, s / 1048576, v }' |
        tee -a dist/image-size.txt >&2
}

docker_works() { command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1; }

: > dist/image-size.txt
rm -f "$archive"
if docker_works; then
    say "docker daemon answers: docker buildx build --platform linux/amd64,linux/arm64"
    docker buildx version >/dev/null 2>&1 || die "docker buildx is needed for a multi-platform build"
    docker buildx build --platform linux/amd64,linux/arm64 -f "$ctx/Dockerfile" \
        -t "$name:$version" --output "type=oci,dest=$archive" "$ctx" >&2 ||
        die "docker buildx build failed (a multi-platform OCI export needs the docker-container driver: docker buildx create --use)"
    for arch in x86_64 aarch64; do
        oarch="$(oci_arch_of "$arch")"
        tmp="$(mktemp -d)"
        docker buildx build --platform "linux/$oarch" -f "$ctx/Dockerfile" \
            --output "type=oci,dest=$tmp/img.tar,compression=uncompressed" "$ctx" >/dev/null 2>&1 &&
            mkdir "$tmp/oci" && tar -xf "$tmp/img.tar" -C "$tmp/oci" &&
            report_size "$oarch" "$(oci_size "$tmp/oci")"
        rm -rf "$tmp"
    done
else
    # The buildah check builds and runs a tiny image holding the musl hello world.
    need_prereqs musl-gcc buildah
    bh() { buildah --storage-driver vfs "$@"; }
    # A manifest list of the same name from an earlier run would collect stale entries.
    bh manifest rm "$name:$version" >/dev/null 2>&1 || true
    bh rmi "$name:$version" >/dev/null 2>&1 || true
    bh manifest create "$name:$version" >/dev/null || die "buildah manifest create $name:$version failed"
    for arch in x86_64 aarch64; do
        oarch="$(oci_arch_of "$arch")"
        say "buildah --storage-driver vfs bud --platform linux/$oarch -t $name:$version-$oarch"
        bh bud --isolation chroot --platform "linux/$oarch" --build-arg "TARGETARCH=$oarch" \
            --format oci --layers=false -f "$ctx/Dockerfile" -t "$name:$version-$oarch" "$ctx" >&2 ||
            die "buildah bud for linux/$oarch failed"
        bh manifest add "$name:$version" "containers-storage:$name:$version-$oarch" >/dev/null ||
            die "buildah manifest add $oarch failed"
        tmp="$(mktemp -d)"
        bh push --quiet "$name:$version-$oarch" "oci:$tmp/oci" >/dev/null ||
            die "buildah push to measure $oarch failed"
        report_size "$oarch" "$(oci_size "$tmp/oci")"
        rm -rf "$tmp"
    done
    # Earlier builds' images, now untagged, would pile up in vfs storage (full copies each).
    bh rmi --prune >/dev/null 2>&1 || true
    say "buildah manifest push --all -> $archive"
    bh manifest push --all --quiet "$name:$version" "oci-archive:$archive:$name:$version" >&2 ||
        die "buildah manifest push to $archive failed"
fi
[ -s "$archive" ] || die "$archive was not written"
say "wrote $archive ($(stat -c %s "$archive") bytes, both architectures)"
if grep -q OVER dist/image-size.txt; then
    say "WARNING: over the 5 MiB budget (see dist/image-size.txt)"
fi
