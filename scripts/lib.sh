# shellcheck shell=bash disable=SC2034  # sourced: ROOT, BINARIES are used by the scripts
# The one home of the shell helpers that build.sh, scripts/*.sh and bench/*.sh source: say/die,
# the prerequisites (each checked by what it provides, not by a command's name), the one package
# installer, and progress for long steps.
#
#   need_prereqs NAME...    check; install what is missing (Debian packages as root, rustup
#                           parts, the control plane); else die with one line saying what to do
#   doctor_prereqs NAME...  check only: one line per prerequisite (OK / MISSING, how, fix)

# Repository root, whatever the caller's working directory.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf '%s: %s\n' "${0##*/}" "$*" >&2; exit 1; }

# Where the checks compile and keep their small test programs (per checkout, no cleanup needed).
PROBE_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/prereq"
# The control plane's cache, as tests/kube-env/build-bins.sh computes it.
KUBE_CACHE="${EKS_CONNECTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/eks-connector}"

HOST_ARCH="$(uname -m)"
# The architecture that is cross-built (and run under qemu) on this host.
case "$HOST_ARCH" in
    x86_64) CROSS_ARCH=aarch64 ;;
    aarch64) CROSS_ARCH=x86_64 ;;
    *) CROSS_ARCH="" ;;
esac

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

# Debian's name for an architecture in cross packages (libc6-dev-arm64-cross).
deb_arch_of() {
    case "$1" in
        x86_64) echo amd64 ;;
        aarch64) echo arm64 ;;
        *) die "unknown architecture '$1'" ;;
    esac
}

# The binaries the image ships, entrypoint first.
BINARIES="eks-connector eks-connector-init eks-connector-proxy eks-connector-agent"

# ---------------------------------------------------------------------------------------------
# Prerequisite groups, by step. Names are those `./build.sh doctor` prints.

# Release binaries of one architecture (scripts/cross.sh ARCH).
prereqs_for_arch() {
    if [ "$1" = "$HOST_ARCH" ]; then
        echo "rust file musl-target-$1 musl-gcc"
    else
        echo "rust file musl-target-$1 cc-$1 qemu-$1"
    fi
}
PREREQS_RELEASE="$(prereqs_for_arch "$HOST_ARCH") $(prereqs_for_arch "$CROSS_ARCH" | cut -d' ' -f3-)"
# The control plane (tests/kube-env): built from Go modules, started with openssl certificates.
PREREQS_KUBE="go openssl curl setpriv flock python3"
PREREQS_IMAGE="$PREREQS_RELEASE python3 buildah"
PREREQS_DEMO="rust $PREREQS_KUBE control-plane"
# The air-gapped install (scripts/mirror.sh, tests/airgap.rs): the mirror step, a registry, the
# corporate proxies.
PREREQS_MIRROR="skopeo"
PREREQS_AIRGAP="$PREREQS_MIRROR docker-registry tinyproxy squid-ssl-bump"
PREREQS_TEST="rust rustfmt+clippy $PREREQS_RELEASE $PREREQS_KUBE tar buildah control-plane control-plane-oldest helm promtool peer-ssm-agent peer-eks-connector $PREREQS_AIRGAP"

# ---------------------------------------------------------------------------------------------
# Each prerequisite: how it is checked (P_HOW); what the scripts do when it is missing: install
# Debian packages (P_APT) or run a command (P_RUN), neither when only the user can (Rust, Go); and
# the fix in words (P_FIX, for doctor and for the error).
prereq_info() {
    P_HOW="" P_APT="" P_RUN="" P_FIX=""
    case "$1" in
        rust) P_HOW="cargo --version and rustc --version answer"
            P_FIX="install Rust with rustup (https://rustup.rs), then open a new shell" ;;
        rustfmt+clippy) P_HOW="cargo fmt --version and cargo clippy --version answer"
            P_RUN="rustup component add rustfmt clippy"; P_FIX="$P_RUN" ;;
        musl-target-*) P_HOW="rustc has the standard library for $(triple_of "${1#musl-target-}")"
            P_RUN="rustup target add $(triple_of "${1#musl-target-}")"; P_FIX="$P_RUN" ;;
        musl-gcc) P_HOW="musl-gcc compiles a C file including <stdint.h>, links it static, and it runs"
            P_APT="musl-tools" ;;
        cc-*) P_HOW="${1#cc-}-linux-gnu-gcc compiles a C file including <stdint.h> and links it static"
            P_APT="gcc-${1#cc-}-linux-gnu libc6-dev-$(deb_arch_of "${1#cc-}")-cross"
            P_APT="${P_APT//_/-}" ;;
        qemu-*) P_HOW="qemu-${1#qemu-} runs that static ${1#qemu-} program"
            P_APT="qemu-user" ;;
        file) P_HOW="file tells a static binary from a dynamic one"; P_APT="file" ;;
        buildah) P_HOW="buildah (vfs storage) builds a FROM scratch image holding the static musl program and runs it (chroot isolation)"
            P_APT="buildah" ;;
        go) P_HOW="go version is at least the go directive of tests/kube-env/go.mod ($(go_wanted))"
            P_FIX="install Go >= $(go_wanted) from https://go.dev/dl and put it on PATH (Debian 12's golang-go is 1.19, too old)" ;;
        openssl) P_HOW="openssl makes a self-signed RSA certificate"; P_APT="openssl" ;;
        curl) P_HOW="curl -V lists UnixSockets"; P_APT="curl" ;;
        strace) P_HOW="strace -c counts the system calls of a command"; P_APT="strace" ;;
        valgrind) P_HOW="valgrind --tool=callgrind runs a command"; P_APT="valgrind" ;;
        nginx) P_HOW="nginx -V lists the SSL module (the bench's reference reverse proxy: TLS upstream)"
            P_APT="nginx-light" ;;
        setpriv) P_HOW="setpriv --pdeathsig TERM true runs"; P_APT="util-linux" ;;
        flock) P_HOW="flock FILE true runs"; P_APT="util-linux" ;;
        tar) P_HOW="tar -c and -x round-trip a file"; P_APT="tar" ;;
        python3) P_HOW="python3 imports socket, gzip and json"; P_APT="python3" ;;
        skopeo) P_HOW="skopeo copies a small OCI image between two layouts and reads back the same manifest"
            P_APT="skopeo" ;;
        docker-registry) P_HOW="docker-registry (the CNCF distribution registry) serves /v2/ on loopback"
            P_APT="docker-registry" ;;
        tinyproxy) P_HOW="tinyproxy -v names its version"; P_APT="tinyproxy" ;;
        squid-ssl-bump) P_HOW="squid is built with OpenSSL (ssl_bump) and its security_file_certgen makes a certificate store"
            P_APT="squid-openssl" ;;
        control-plane) P_HOW="kube-apiserver, kubectl and etcd are cached in $KUBE_CACHE (tests/kube-env/build-bins.sh)"
            P_RUN="build_control_plane"; P_FIX="./build.sh demo or ./build.sh test builds it" ;;
        control-plane-oldest) P_HOW="the oldest Kubernetes tested (v1.29: kube-apiserver, kubectl) is cached (tests/kube-env/build-older.sh v1.29)"
            P_RUN="build_control_plane_oldest"; P_FIX="./build.sh test builds it" ;;
        helm) P_HOW="helm, built from the Go modules, is cached (tests/helm/build-helm.sh)"
            P_RUN="build_helm"; P_FIX="./build.sh test builds it" ;;
        promtool) P_HOW="Prometheus's promtool, built from the Go modules, is cached (tests/promtool/build-promtool.sh)"
            P_RUN="build_promtool"; P_FIX="./build.sh test builds it, or tests/promtool/build-promtool.sh" ;;
        peer-ssm-agent) P_HOW="AWS's SSM agent, built from its pinned source, is cached (tests/peers/fetch-build.sh ssm-agent)"
            P_RUN="build_peer ssm-agent"; P_FIX="./build.sh test builds it" ;;
        peer-eks-connector) P_HOW="the original connector, built from its pinned source, is cached (tests/peers/fetch-build.sh eks-connector)"
            P_RUN="build_peer eks-connector"; P_FIX="./build.sh test builds it" ;;
        *) die "unknown prerequisite '$1'" ;;
    esac
    [ -z "$P_APT" ] || P_FIX="apt-get install -y $P_APT (./build.sh installs it when run as root)"
}

go_wanted() { sed -n 's/^go \([0-9.]*\)$/\1/p' "$ROOT/tests/kube-env/go.mod"; }

# A C program that needs the C library's headers (as ring's C code does) and prints "hello 42".
hello_c() {
    mkdir -p "$PROBE_DIR"
    printf '#include <stdint.h>\n#include <stdio.h>\nint main(void) { uint32_t n = 42; printf("hello %%u\\n", n); return 0; }\n' \
        >"$PROBE_DIR/hello.c"
    echo "$PROBE_DIR/hello.c"
}

# prereq_probe NAME: succeeds when the prerequisite works; its output (the reason when it does
# not) goes to stdout.
prereq_probe() {
    local d="$PROBE_DIR" out
    mkdir -p "$d"
    case "$1" in
        rust) cargo --version && rustc --version ;;
        rustfmt+clippy) cargo fmt --version && cargo clippy --version ;;
        musl-target-*)
            local libdir
            libdir="$(rustc --print target-libdir --target "$(triple_of "${1#musl-target-}")")" || return 1
            compgen -G "$libdir/libstd-*.rlib" >/dev/null || { echo "no standard library in $libdir"; return 1; } ;;
        musl-gcc)
            rm -f "$d/hello-musl"
            musl-gcc -static -o "$d/hello-musl" "$(hello_c)" 2>&1 || return 1
            out="$("$d/hello-musl" 2>&1)" || { echo "the musl program failed: $out"; return 1; }
            [ "$out" = "hello 42" ] || { echo "the musl program printed '$out'"; return 1; } ;;
        cc-*)
            rm -f "$d/hello-${1#cc-}"
            "${1#cc-}-linux-gnu-gcc" -static -o "$d/hello-${1#cc-}" "$(hello_c)" 2>&1 ;;
        qemu-*)
            [ -x "$d/hello-${1#qemu-}" ] || { echo "no ${1#qemu-} program to run: cc-${1#qemu-} is missing"; return 1; }
            out="$("qemu-${1#qemu-}" "$d/hello-${1#qemu-}" 2>&1)" || { echo "$out"; return 1; }
            [ "$out" = "hello 42" ] || { echo "qemu-${1#qemu-} printed '$out'"; return 1; } ;;
        file) out="$(file -b "$(command -v bash)")" && echo "$out" ;;
        buildah) probe_buildah ;;
        go)
            local have
            have="$(go env GOVERSION 2>&1)" || { echo "$have"; return 1; }
            have="${have#go}"
            echo "go $have"
            [ "$(printf '%s\n%s\n' "$(go_wanted)" "$have" | sort -V | head -1)" = "$(go_wanted)" ] ||
                { echo "go $have is older than $(go_wanted)"; return 1; } ;;
        openssl)
            openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=prereq -days 1 \
                -keyout "$d/key.pem" -out "$d/cert.pem" 2>&1 ;;
        curl) curl -V | grep -q UnixSockets || { curl -V; echo "curl without unix socket support"; return 1; } ;;
        strace) strace -c -o /dev/null true ;;
        valgrind) valgrind -q --tool=callgrind --callgrind-out-file=/dev/null true ;;
        nginx)
            out="$(PATH="$PATH:/usr/sbin:/usr/local/sbin" nginx -V 2>&1)" || { echo "$out"; return 1; }
            [[ "$out" == *http_ssl_module* ]] || { echo "nginx without the SSL module: $out"; return 1; } ;;
        setpriv) setpriv --pdeathsig TERM true ;;
        flock) flock "$d/lock" true ;;
        tar) echo x >"$d/tar.in" && tar -cf "$d/t.tar" -C "$d" tar.in && tar -xOf "$d/t.tar" tar.in | grep -qx x ;;
        python3) python3 -c 'import socket, gzip, json' ;;
        skopeo) probe_skopeo ;;
        docker-registry) probe_registry ;;
        tinyproxy) tinyproxy -v ;;
        squid-ssl-bump)
            squid -v | grep -q -- --with-openssl || { squid -v; echo "this squid has no OpenSSL (ssl_bump): Debian's squid-openssl has"; return 1; }
            rm -rf "$d/ssl_db" && /usr/lib/squid/security_file_certgen -c -s "$d/ssl_db" -M 4MB ;;
        control-plane) cached_only "$ROOT/tests/kube-env/build-bins.sh" ;;
        control-plane-oldest) cached_only "$ROOT/tests/kube-env/build-older.sh" v1.29 ;;
        helm) cached_only "$ROOT/tests/helm/build-helm.sh" ;;
        promtool) cached_only "$ROOT/tests/promtool/build-promtool.sh" ;;
        peer-*) cached_only "$ROOT/tests/peers/fetch-build.sh" "${1#peer-}" ;;
        *) die "unknown prerequisite '$1'" ;;
    esac
}

probe_buildah() {
    [ "$(id -u)" = 0 ] || { echo "buildah without a docker daemon needs root here (vfs storage, chroot isolation)"; return 1; }
    buildah --version || return 1
    [ -x "$PROBE_DIR/hello-musl" ] || { echo "no static program to put in the image: musl-gcc is missing"; return 1; }
    local ctx="$PROBE_DIR/buildah" ref=localhost/eks-connector-prereq:check ctr out status=0
    rm -rf "$ctx" && mkdir -p "$ctx" && cp "$PROBE_DIR/hello-musl" "$ctx/hello"
    printf 'FROM scratch\nCOPY hello /hello\n' >"$ctx/Containerfile"
    { buildah --storage-driver vfs bud --quiet --isolation chroot --layers=false -t "$ref" "$ctx" >/dev/null; } 2>&1 ||
        return 1
    ctr="$(buildah --storage-driver vfs from "$ref" 2>&1)" || { echo "$ctr"; return 1; }
    out="$(buildah --storage-driver vfs run --isolation chroot "$ctr" /hello 2>&1)" || status=1
    [ "$out" = "hello 42" ] || { echo "buildah run printed: $out"; status=1; }
    buildah --storage-driver vfs rm "$ctr" >/dev/null 2>&1
    buildah --storage-driver vfs rmi "$ref" >/dev/null 2>&1
    return "$status"
}

# A small OCI image (a config, no layers) copied layout to layout; the copy's manifest is the
# original's, byte for byte.
probe_skopeo() {
    skopeo --version || return 1
    local d="$PROBE_DIR/skopeo" config manifest digest
    rm -rf "$d" && mkdir -p "$d/src/blobs/sha256"
    blob() { # TEXT: stores it, prints its descriptor's digest and size
        digest="$(printf '%s' "$1" | sha256sum | cut -d' ' -f1)"
        printf '%s' "$1" >"$d/src/blobs/sha256/$digest"
        printf '"digest":"sha256:%s","size":%d' "$digest" "${#1}"
    }
    config="$(blob '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}')"
    manifest='{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json",'"$config"'},"layers":[]}'
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json",%s,"annotations":{"org.opencontainers.image.ref.name":"probe"}}]}' \
        "$(blob "$manifest")" >"$d/src/index.json"
    printf '{"imageLayoutVersion":"1.0.0"}' >"$d/src/oci-layout"
    skopeo copy --quiet "oci:$d/src:probe" "oci:$d/dst:probe" 2>&1 || return 1
    [ "$(skopeo inspect --raw "oci:$d/dst:probe" 2>&1)" = "$manifest" ] || { echo "the copy's manifest differs"; return 1; }
}

# The registry on a free loopback port, asked for /v2/, stopped.
probe_registry() {
    command -v docker-registry >/dev/null || { echo "docker-registry: command not found"; return 1; }
    local d="$PROBE_DIR/registry" pid addr="" i status=0
    rm -rf "$d" && mkdir -p "$d/data"
    printf 'version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:0\n' \
        "$d/data" >"$d/config.yml"
    docker-registry serve "$d/config.yml" >"$d/log" 2>&1 &
    pid=$!
    for i in $(seq 50); do
        addr="$(sed -n 's/.*listening on \(127\.0\.0\.1:[0-9]*\).*/\1/p' "$d/log" | head -1)"
        [ -z "$addr" ] || break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$addr" ]; then
        tail -n 3 "$d/log"; echo "docker-registry did not say where it listens"; status=1
    elif ! curl -fsS "http://$addr/v2/" 2>&1; then
        echo "docker-registry does not answer /v2/ on $addr"; status=1
    fi
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return "$status"
}

# cached_only SCRIPT ARGS...: whether a cached build (tests/kube-env/build-bins.sh,
# tests/helm/build-helm.sh, tests/promtool/build-promtool.sh, tests/peers/fetch-build.sh) is there, without building or waiting for
# another process's build. Those scripts compute their cache key with text tools (and `go env`),
# print the cache directory and exit when it is complete; with a PATH of just those tools they
# fail at their first other command (mkdir) when it is not. (A flag for this in build-bins.sh
# would change its cache key, which hashes the script, and rebuild it on every machine.)
cached_only() {
    local path="$PROBE_DIR/text-tools-only" c
    rm -rf "$path" && mkdir -p "$path"
    for c in bash cat sha256sum cut dirname sed printf go; do
        if command -v "$c" >/dev/null 2>&1; then ln -s "$(command -v "$c")" "$path/$c"; fi
    done
    PATH="$path" "$@" 2>/dev/null ||
        { echo "not built yet"; return 1; }
}

# The control plane, with progress: the first build on a machine takes minutes.
build_control_plane() {
    say "building the control plane the tests and the demo run: kube-apiserver, kubectl and etcd from Go modules (tests/kube-env/build-bins.sh)"
    say "first run on a machine: about 10-15 minutes on 2 cores; later runs find it in $KUBE_CACHE and take seconds"
    mkdir -p "$KUBE_CACHE"
    if ! flock -n "$KUBE_CACHE/.build.lock" true 2>/dev/null; then
        say "another process is building it right now: waiting for that build"
    fi
    # -v: go build names each package as it compiles it, which the progress lines show.
    GOFLAGS="${GOFLAGS:-} -v" run_with_progress "control plane build" "$PROBE_DIR/control-plane.log" \
        "$ROOT/tests/kube-env/build-bins.sh"
}

# The oldest Kubernetes the manifests are tested on (minutes the first time; needs the newest's etcd).
build_control_plane_oldest() {
    say "building the oldest Kubernetes the manifests are tested on (tests/kube-env/build-older.sh v1.29; minutes the first time, cached after)"
    run_with_progress "v1.29 control plane build" "$PROBE_DIR/control-plane-oldest.log" \
        "$ROOT/tests/kube-env/build-older.sh" v1.29
}

# The Helm CLI the chart tests run, built from the Go modules (minutes, the first time).
build_helm() {
    say "building helm for the chart tests (tests/helm/build-helm.sh; minutes the first time, cached after)"
    run_with_progress "helm build" "$PROBE_DIR/helm.log" "$ROOT/tests/helm/build-helm.sh"
}

# Prometheus's promtool for the metrics tests, built from the Go modules (minutes, the first time).
build_promtool() {
    say "building promtool for the metrics tests (tests/promtool/build-promtool.sh; minutes the first time, cached after)"
    # -v: go build names each package as it compiles it, which the progress lines show.
    GOFLAGS="${GOFLAGS:-} -v" run_with_progress "promtool build" "$PROBE_DIR/promtool.log" \
        "$ROOT/tests/promtool/build-promtool.sh"
}

# A real peer the tests run, built from its pinned source archive (minutes, the first time).
build_peer() {
    say "building $1 from its pinned source for the tests (tests/peers/fetch-build.sh $1; minutes the first time, cached after)"
    run_with_progress "$1 build" "$PROBE_DIR/peer-$1.log" "$ROOT/tests/peers/fetch-build.sh" "$1"
}

# run_with_progress LABEL LOG COMMAND...: runs COMMAND with its output in LOG; every 20 s says
# the elapsed time and LOG's last line; on failure shows LOG's tail. Returns COMMAND's status.
run_with_progress() {
    local label="$1" log="$2" t0=$SECONDS next=20 pid status=0 last
    shift 2
    mkdir -p "$(dirname "$log")"
    "$@" >"$log" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        if ((SECONDS - t0 >= next)); then
            next=$((next + 20))
            last="$(tail -n 1 "$log" | cut -c1-100)"
            say "  $label: $(elapsed $((SECONDS - t0))) so far, $(wc -l <"$log") lines of output${last:+, last: $last}"
        fi
    done
    wait "$pid" || status=$?
    if [ "$status" = 0 ]; then
        say "  $label: done in $(elapsed $((SECONDS - t0)))"
    else
        tail -n 30 "$log" >&2
        say "  $label: FAILED after $(elapsed $((SECONDS - t0))) (exit $status; whole log: $log)"
    fi
    return "$status"
}

elapsed() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# ---------------------------------------------------------------------------------------------
# The one package installer: Debian packages, as root, `apt-get update` once per run.
apt_install() {
    command -v apt-get >/dev/null 2>&1 ||
        die "missing Debian packages $* and there is no apt-get here: install their equivalents and retry"
    [ "$(id -u)" = 0 ] ||
        die "missing: $* (install as root: apt-get install -y $*; or run this as root and it installs them)"
    if [ -z "${EKS_CONNECTOR_APT_UPDATED:-}" ]; then
        say "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq >&2 ||
            die "apt-get update failed; cannot install $*"
        export EKS_CONNECTOR_APT_UPDATED=1
    fi
    say "apt-get install -y --no-install-recommends $*"
    mkdir -p "$PROBE_DIR"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "$@" \
        >"$PROBE_DIR/apt.log" 2>&1 || { tail -n 20 "$PROBE_DIR/apt.log" >&2; die "apt-get install $* failed"; }
}

# The words given, each once, in their first order.
uniq_words() { printf '%s\n' "$@" | tr ' ' '\n' | awk 'NF && !seen[$0]++'; }

# The last line a probe printed: why it failed.
probe_reason() { prereq_probe "$1" 2>&1 | sed "s/^.*: line [0-9]*: //" | grep -v "^[[:space:]]*$" | tail -n 1; }

# need_prereqs NAME...: every named prerequisite works afterwards, or this dies saying what to do.
need_prereqs() {
    local name missing=() apt=() runs=() manual=() p
    for name in $(uniq_words "$@"); do
        prereq_probe "$name" >/dev/null 2>&1 || missing+=("$name")
    done
    if [ ${#missing[@]} = 0 ]; then
        say "prerequisites OK: $(uniq_words "$@" | tr '\n' ' ')(./build.sh doctor tells how each is checked)"
        return 0
    fi
    say "missing: ${missing[*]}"
    for name in "${missing[@]}"; do
        prereq_info "$name"
        for p in $P_APT; do
            [[ " ${apt[*]} " == *" $p "* ]] || apt+=("$p")
        done
        [ -z "$P_RUN" ] || runs+=("$P_RUN")
        [ -n "$P_APT$P_RUN" ] || manual+=("$name: $(probe_reason "$name"); $P_FIX")
    done
    if [ ${#manual[@]} -gt 0 ]; then
        for p in "${manual[@]:1}"; do say "$p"; done
        die "${manual[0]}"
    fi
    [ ${#apt[@]} = 0 ] || apt_install "${apt[@]}"
    for p in "${runs[@]}"; do
        [ "$p" = build_control_plane ] || say "$p"
        $p >&2 || die "'$p' failed"
    done
    for name in "${missing[@]}"; do
        prereq_probe "$name" >/dev/null 2>&1 ||
            die "$name still does not work after installing it ($(prereq_info "$name"; echo "${P_APT:-$P_RUN}")): $(probe_reason "$name")"
        say "now OK: $name"
    done
}

# doctor_prereqs NAME...: one line per prerequisite (and why/fix for a missing one); the number
# missing as the status.
doctor_prereqs() {
    local name nmissing=0
    for name in $(uniq_words "$@"); do
        prereq_info "$name"
        if prereq_probe "$name" >/dev/null 2>&1; then
            printf 'OK       %-20s %s\n' "$name" "$P_HOW"
        else
            nmissing=$((nmissing + 1))
            printf 'MISSING  %-20s %s\n         why: %s\n         fix: %s\n' "$name" "$P_HOW" "$(probe_reason "$name")" "$P_FIX"
        fi
    done
    return "$nmissing"
}
