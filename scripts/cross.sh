#!/usr/bin/env bash
# Static, stripped release binaries for x86_64 and aarch64 (musl), into dist/<arch>/.
#
#   scripts/cross.sh            # both architectures
#   scripts/cross.sh aarch64    # one (x86_64 | aarch64)
#
# First checks what each architecture needs by what it provides (scripts/lib.sh: the rustup
# target, a C compiler that compiles against the C library's headers and links static, qemu that
# runs the result) and installs what a fresh Debian machine lacks; then checks every binary:
# statically linked, stripped, and `--version` runs (the other architecture under qemu).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(x86_64 aarch64)
host="$HOST_ARCH"
pkg_version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"

prereqs=()
for a in "${archs[@]}"; do
    triple_of "$a" >/dev/null # dies on an unknown architecture
    read -ra p <<<"$(prereqs_for_arch "$a")"
    prereqs+=("${p[@]}")
done
need_prereqs "${prereqs[@]}"

build_arch() {
    local arch="$1" triple upper runner=""
    triple="$(triple_of "$arch")"
    upper="$(echo "$triple" | tr 'a-z-' 'A-Z_')"
    if [ "$arch" = "$host" ]; then
        # Native: rustc links musl itself; ring's C code wants a musl-targeting compiler.
        export "CC_${triple//-/_}=musl-gcc"
    else
        # ring's C code compiles against the cross C library's headers (libc6-dev-*-cross).
        export "CARGO_TARGET_${upper}_LINKER=$arch-linux-gnu-gcc"
        export "CC_${triple//-/_}=$arch-linux-gnu-gcc"
        export "AR_${triple//-/_}=$arch-linux-gnu-ar"
        runner="qemu-$arch"
    fi

    say "cargo build --release --target $triple"
    # Without the CARGO_MANIFEST_DIR a test process passes on: ring's build script watches it, so
    # a build from a test (image tests, the mirror test) and one from a shell would each rebuild
    # everything the other built.
    env -u CARGO_MANIFEST_DIR cargo build --release --locked --target "$triple" --bins >&2 ||
        die "cargo build for $triple failed"

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
