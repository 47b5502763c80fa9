# shellcheck shell=bash disable=SC2034  # sourced: ROOT, BINARIES are used by the scripts
# Shared helpers for scripts/*.sh (sourced, not run). Each script installs what it needs on a
# fresh Debian machine and fails with one clear line when it cannot.

# Repository root, whatever the caller's working directory.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

_apt_updated=""
# need_cmd COMMAND DEBIAN_PACKAGE: install the package when the command is missing.
need_cmd() {
    local cmd="$1" pkg="$2"
    command -v "$cmd" >/dev/null 2>&1 && return 0
    command -v apt-get >/dev/null 2>&1 ||
        die "$cmd is missing and there is no apt-get to install it: install the '$pkg' package"
    [ "$(id -u)" = 0 ] ||
        die "$cmd is missing: run as root so it can be installed, or: apt-get install -y $pkg"
    say "installing $pkg (for $cmd)"
    if [ -z "$_apt_updated" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 ||
            die "apt-get update failed; cannot install $pkg"
        _apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >&2 ||
        die "apt-get install $pkg failed; $cmd is needed"
    command -v "$cmd" >/dev/null 2>&1 || die "$pkg installed but $cmd is still missing"
}

# need_target TRIPLE: the Rust standard library for a target.
need_target() {
    command -v rustup >/dev/null 2>&1 || {
        command -v cargo >/dev/null 2>&1 || die "cargo is missing: install Rust (rustup) first"
        rustc --print target-libdir --target "$1" >/dev/null 2>&1 &&
            [ -d "$(rustc --print target-libdir --target "$1")" ] && return 0
        die "Rust target $1 is missing and rustup is not there to add it"
    }
    rustup target list --installed 2>/dev/null | grep -qx "$1" && return 0
    say "rustup target add $1"
    rustup target add "$1" >&2 || die "rustup target add $1 failed"
}

# Rust target triple for an architecture name used in dist/ (x86_64, aarch64).
triple_of() {
    case "$1" in
        x86_64) echo x86_64-unknown-linux-musl ;;
        aarch64) echo aarch64-unknown-linux-musl ;;
        *) die "unknown architecture '$1' (expected x86_64 or aarch64)" ;;
    esac
}

# OCI platform architecture for a dist/ architecture name.
oci_arch_of() {
    case "$1" in
        x86_64) echo amd64 ;;
        aarch64) echo arm64 ;;
        *) die "unknown architecture '$1'" ;;
    esac
}

# The binaries the image ships, entrypoint first.
BINARIES="eks-connector eks-connector-init eks-connector-proxy eks-connector-agent"
