#!/usr/bin/env bash
# Static, stripped release binaries for x86_64 and aarch64 (musl), into dist/<arch>/.
#
#   scripts/cross.sh            # both architectures
#   scripts/cross.sh aarch64    # one (x86_64 | aarch64)
#
# Installs what a fresh Debian machine lacks (musl-tools, gcc-aarch64-linux-gnu, qemu-user, file,
# the rustup targets), then checks every binary: statically linked, stripped, and `--version`
# runs (aarch64 under qemu-aarch64).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(x86_64 aarch64)
host="$(uname -m)"
pkg_version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"

need_cmd cargo cargo
need_cmd file file

build_arch() {
    local arch="$1" triple upper runner=""
    triple="$(triple_of "$arch")"
    upper="$(echo "$triple" | tr 'a-z-' 'A-Z_')"
    need_target "$triple"
    if [ "$arch" = "$host" ]; then
        # Native: rustc links musl itself; ring's C code wants a musl-targeting compiler.
        need_cmd musl-gcc musl-tools
        export "CC_${triple//-/_}=musl-gcc"
    elif [ "$arch" = aarch64 ]; then
        need_cmd aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu
        need_cmd qemu-aarch64 qemu-user
        export "CARGO_TARGET_${upper}_LINKER=aarch64-linux-gnu-gcc"
        export "CC_${triple//-/_}=aarch64-linux-gnu-gcc"
        export "AR_${triple//-/_}=aarch64-linux-gnu-ar"
        runner=qemu-aarch64
    else
        need_cmd x86_64-linux-gnu-gcc gcc-x86-64-linux-gnu
        need_cmd qemu-x86_64 qemu-user
        export "CARGO_TARGET_${upper}_LINKER=x86_64-linux-gnu-gcc"
        export "CC_${triple//-/_}=x86_64-linux-gnu-gcc"
        export "AR_${triple//-/_}=x86_64-linux-gnu-ar"
        runner=qemu-x86_64
    fi

    say "cargo build --release --target $triple"
    cargo build --release --locked --target "$triple" --bins >&2 || die "cargo build for $triple failed"

    local out="target/$triple/release" dist="dist/$arch"
    mkdir -p "$dist"
    local b desc
    for b in $BINARIES; do
        [ -x "$out/$b" ] || die "$out/$b was not built (is it a [[bin]] in Cargo.toml?)"
        cp -f "$out/$b" "$dist/$b.tmp" && mv -f "$dist/$b.tmp" "$dist/$b"
        desc="$(file -b "$dist/$b")"
        case "$desc" in
            *"statically linked"* | *"static-pie linked"*) ;;
            *) die "$dist/$b is not static: $desc" ;;
        esac
        case "$desc" in
            *"not stripped"* | *"with debug_info"*) die "$dist/$b is not stripped: $desc" ;;
            *", stripped"*) ;;
            *) die "$dist/$b: cannot tell whether it is stripped: $desc" ;;
        esac
        local version
        version="$($runner "$dist/$b" --version 2>&1)" ||
            die "$dist/$b --version failed${runner:+ under $runner}: $version"
        case "$version" in
            *"$pkg_version"*) ;;
            *) die "$dist/$b --version printed '$version', not its version $pkg_version" ;;
        esac
        say "$dist/$b  $(stat -c %s "$dist/$b") bytes  static, stripped  '${version}'${runner:+ (under $runner)}"
    done
}

for a in "${archs[@]}"; do
    build_arch "$a"
done
