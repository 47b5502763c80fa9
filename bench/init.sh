#!/usr/bin/env bash
# Startup time of eks-connector-init (issue 3): wall time of a first start (no Vault, no state
# Secret: RSA-2048 key generation + one RegisterManagedInstance to the local SSM stand-in + Vault and
# Secret writes) and of a second start (both present: read the Secret, rewrite the Vault, no SSM),
# each run RUNS times as a separate process of the release binary. Budgets (median): < 1 s, < 50 ms.
#
#   bench/init.sh [--runs N]        # default 21
#
# Self-contained: release builds of eks-connector-init and of the SSM stand-in
# (examples/ssm-stub.rs), a real control plane (tests/kube-env/start.sh) with the shipped namespace,
# ServiceAccount and RBAC (manifests/base/{namespace,serviceaccount,role,rbac}.yaml), and a
# service-account directory holding a token minted with `kubectl create token`. Every process and
# the work directory are removed on exit, also on Ctrl-C. A figure over budget is reported as OVER;
# the exit status is non-zero only when a run fails or does something other than expected.
# Needs cargo, openssl, curl and setpriv; the first run on a machine builds kube-apiserver (Go).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$ROOT"

RUNS=21
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) [ $# -ge 2 ] || die "--runs needs a number"; RUNS="$2"; shift 2 ;;
        --runs=*) RUNS="${1#--runs=}"; shift ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (usage: bench/init.sh [--runs N])" ;;
    esac
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer, got '$RUNS'"

need_prereqs rust "$PREREQS_KUBE" control-plane

# Format-valid activation (the stub checks the lengths and that the pair matches); not a real one.
ACT_ID="2f3c8b1a-4d5e-4f60-8a7b-9c0d1e2f3a4b"
ACT_CODE="Xy7pQ2rS9tU4vW1xZ8aB3cD6"
NS=eks-connector
SECRET=eks-connector-state-0

WORK=""
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    [ -n "$WORK" ] && rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "release builds: eks-connector-init and the SSM stand-in (examples/ssm-stub.rs)"
cargo build --release --quiet --bin eks-connector-init --example ssm-stub
INIT="$ROOT/target/release/eks-connector-init"
STUB="$ROOT/target/release/examples/ssm-stub"
{ [ -x "$INIT" ] && [ -x "$STUB" ]; } || die "cargo did not produce $INIT and $STUB"

say "control-plane binaries (tests/kube-env/build-bins.sh; the first run on a machine builds them)"
KBIN="$(tests/kube-env/build-bins.sh)"
KUBECTL="$KBIN/kubectl"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/eks-connector-bench-init.XXXXXX")"
mkdir -p "$WORK/tmp"

say "starting the control plane (tests/kube-env/start.sh)"
# --pdeathsig: should this script be killed outright, start.sh still gets TERM and stops its children.
setpriv --pdeathsig TERM tests/kube-env/start.sh "$WORK/kube" >"$WORK/kube-env.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 1800); do
    [ -f "$WORK/kube/ready" ] && break
    kill -0 "${pids[0]}" 2>/dev/null || { tail -n 20 "$WORK/kube-env.log" >&2; die "the control plane did not start"; }
    sleep 0.1
done
[ -f "$WORK/kube/ready" ] || { tail -n 20 "$WORK/kube-env.log" >&2; die "the control plane was not ready in 180 s"; }
SERVER="$(cat "$WORK/kube/server-url")"
API="${SERVER#https://}"
k() { "$KUBECTL" --kubeconfig "$WORK/kube/kubeconfig" "$@"; }

say "namespace, ServiceAccount and RBAC from manifests/base/ (namespace, serviceaccount, role, rbac)"
k apply -f manifests/base/namespace.yaml -f manifests/base/serviceaccount.yaml \
    -f manifests/base/role.yaml -f manifests/base/rbac.yaml >"$WORK/apply.log" 2>&1 ||
    { cat "$WORK/apply.log" >&2; die "kubectl apply failed"; }
SA="$WORK/serviceaccount"
mkdir -p "$SA"
k create token eks-connector -n "$NS" --duration=1h >"$SA/token" || die "kubectl create token failed"
cp "$WORK/kube/ca.crt" "$SA/ca.crt"
printf '%s' "$NS" >"$SA/namespace"

say "starting the SSM stand-in"
# TMPDIR: the stub's throwaway PKI goes inside the work directory and is removed with it.
TMPDIR="$WORK/tmp" setpriv --pdeathsig TERM "$STUB" "$ACT_ID" "$ACT_CODE" "$WORK/ssm" >"$WORK/ssm.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do [ -s "$WORK/ssm/url" ] && [ -s "$WORK/ssm/ca-path" ] && break; sleep 0.1; done
[ -s "$WORK/ssm/url" ] || { cat "$WORK/ssm.log" >&2; die "the SSM stand-in did not start"; }
SSM_URL="$(cat "$WORK/ssm/url")"
SSM_CA="$(cat "$WORK/ssm/ca-path")"

VAULT="$WORK/vault"
RUN_LOG="$WORK/init.log"
# NOW = microseconds since the epoch; bash 5's EPOCHREALTIME costs no fork, `date` is the fallback.
now_us() {
    if [ -n "${EPOCHREALTIME:-}" ]; then
        NOW="${EPOCHREALTIME/[.,]/}"
    else
        NOW=$(($(date +%s%N) / 1000))
    fi
}
# One start of the release binary, as the pod runs it; prints its wall time in microseconds.
timed_init() {
    local t0 t1 rc=0
    now_us
    t0=$NOW
    env -i POD_NAME=eks-connector-0 KUBERNETES_SERVICE_HOST="${API%:*}" KUBERNETES_SERVICE_PORT="${API##*:}" \
        EKS_ACTIVATION_ID="$ACT_ID" EKS_ACTIVATION_CODE="$ACT_CODE" AWS_CA_BUNDLE="$SSM_CA" RUST_LOG=warn \
        "$INIT" --agent.endpoint="$SSM_URL" --state.baseDir="$VAULT" --serviceaccount.dir="$SA" \
        >"$RUN_LOG" 2>&1 || rc=$?
    now_us
    t1=$NOW
    if [ "$rc" != 0 ]; then
        cat "$RUN_LOG" >&2
        die "eks-connector-init exited with $rc (log above)"
    fi
    echo $((t1 - t0))
}
# Registrations the stand-in logged. It logs from a loop that wakes every 200 ms, so give it a
# moment: up to 3 s for the expected count, and never less than 0.5 s (a late extra one shows up).
registrations() { grep -c 'RegisterManagedInstance ->' "$WORK/ssm.log" || true; }
settled_registrations() {
    sleep 0.5
    for _ in $(seq 1 25); do
        [ "$(registrations)" -ge "$1" ] && break
        sleep 0.1
    done
    registrations
}
state_present() {
    [ -n "$(find "$VAULT" -type f 2>/dev/null | head -1)" ] || die "no Vault files in $VAULT after a start"
    k get secret "$SECRET" -n "$NS" -o name >/dev/null 2>&1 || die "no Secret $NS/$SECRET after a start"
}

say "$RUNS first starts (Vault and Secret deleted before each)"
first=()
for _ in $(seq 1 "$RUNS"); do
    rm -rf "$VAULT"
    k delete secret "$SECRET" -n "$NS" --ignore-not-found >/dev/null || die "kubectl delete secret failed"
    first+=("$(timed_init)")
    printf '.' >&2
done
printf '\n' >&2
state_present
seen="$(settled_registrations "$RUNS")"
[ "$seen" = "$RUNS" ] || die "expected $RUNS registrations at the SSM stand-in after the first starts, saw $seen"

say "$RUNS second starts (Vault and Secret present)"
second=()
for _ in $(seq 1 "$RUNS"); do
    second+=("$(timed_init)")
    printf '.' >&2
done
printf '\n' >&2
state_present
seen="$(settled_registrations "$RUNS")"
[ "$seen" = "$RUNS" ] || die "a second start registered again: $seen registrations for $RUNS first starts"
if grep -q 'protocol violation' "$WORK/ssm.log"; then
    grep 'protocol violation' "$WORK/ssm.log" >&2
    die "the SSM stand-in saw protocol violations"
fi

# name budget_ms us...: one table row; median and p90 are nearest-rank.
row() {
    local name="$1" budget="$2"
    shift 2
    printf '%s\n' "$@" | sort -n | awk -v name="$name" -v budget="$budget" '
        { v[NR] = $1 / 1e3 }
        END {
            n = NR; med = v[int((n + 1) / 2)]; p = int(0.9 * n); if (p < 0.9 * n) p++;
            printf "%-34s %9.1f %9.1f %9.1f %9.1f  %6s ms  %s\n", name, med, v[p], v[1], v[n],
                "<" budget, (med < budget ? "PASS" : "OVER")
        }'
}

printf '\neks-connector-init startup, %s runs each, release build, %s CPUs, load average %s\n' \
    "$RUNS" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-34s %9s %9s %9s %9s  %9s  %s\n' "wall time (ms)" median p90 min max budget ""
row "first start (register with SSM)" 1000 "${first[@]}"
row "second start (Vault + Secret)" 50 "${second[@]}"
printf 'SSM registrations: %s (one per first start, none on second starts)\n' "$(registrations)"
