#!/usr/bin/env bash
# The whole flow on one machine, step by step (./build.sh demo):
#   a real control plane (etcd + kube-apiserver, ./build.sh kube-env), the shipped manifests
#   applied to it, a local SSM stand-in, then our three binaries as the pod runs them: init
#   registers and writes the Vault and the state Secret, init installs the launcher, the proxy
#   serves the socket; the launcher starts AWS's own SSM agent (built from pinned source by
#   tests/peers/fetch-build.sh, run as root in a mount namespace where the Vault is at
#   /var/lib/amazon/ssm/Vault), which authenticates with the stand-in and rotates its key once,
#   and the launcher copies the new key into the state Secret; then the launcher starts a
#   stand-in agent that runs one curl through the socket, as the SSM agent does for the EKS
#   console. Without the agent's source or root, the demo says so and skips to the stand-in.
#
#   scripts/demo.sh [--keep]     # --keep: leave the work directory for a look afterwards
#
# There is no kubelet here: the StatefulSet is accepted by the API server but its pods are run by
# this script, with the same flags, as plain processes.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

keep=0
[ "${1:-}" = "--keep" ] && keep=1

step=0
bold="" plain=""
if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; fi
STEP() { step=$((step + 1)); printf '\n%s[%d] %s%s\n' "$bold" "$step" "$*" "$plain"; }
show() { printf '    $ %s\n' "$*"; }

# What the demo runs, checked by what it provides (and installed when missing), the control plane
# last: on a fresh machine it is built here, with progress, before anything else starts.
need_prereqs "$PREREQS_DEMO"

WORK="$(mktemp -d /tmp/eks-connector-demo.XXXXXX)"
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ "$keep" = 1 ]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

STEP "Build the binaries and the SSM stand-in (cargo build --bins --example ssm-stub)"
cargo build --bins --example ssm-stub 2>&1 | sed 's/^ */    /'
BIN="$ROOT/target/debug"

STEP "Start the real control plane (./build.sh kube-env $WORK/kube)"
"$ROOT/build.sh" kube-env "$WORK/kube" >"$WORK/kube-env.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 2400); do
    [ -f "$WORK/kube/ready" ] && break
    kill -0 "${pids[0]}" 2>/dev/null || { tail -20 "$WORK/kube-env.log"; die "the control plane did not start"; }
    sleep 1
done
[ -f "$WORK/kube/ready" ] || die "the control plane was not ready in 40 minutes (see $WORK/kube-env.log)"
SERVER="$(cat "$WORK/kube/server-url")"
API="${SERVER#https://}"
KUBECTL="$("$ROOT/tests/kube-env/build-bins.sh")/kubectl"
k() { "$KUBECTL" --kubeconfig "$WORK/kube/kubeconfig" "$@"; }
echo "    API server $SERVER ($(k version -o json | sed -n 's/.*"gitVersion": "\(.*\)".*/\1/p' | tail -1))"

# The demo's own activation, embedded: format-valid and known only to the SSM stand-in below. A
# real one in manifests/activation.env is never read here; the manifests are applied from a copy.
ACT_ID=2f3c8b1a-4d5e-4f60-8a7b-9c0d1e2f3a4b
ACT_CODE=Xy7pQ2rS9tU4vW1xZ8aB3cD6

STEP "Apply the shipped manifests and the console-user example"
cp -r manifests "$WORK/manifests"
printf 'EKS_ACTIVATION_ID=%s\nEKS_ACTIVATION_CODE=%s\nAWS_REGION=us-west-2\n' "$ACT_ID" "$ACT_CODE" \
    >"$WORK/manifests/activation.env"
show "kubectl apply -k manifests/    (a copy, with the demo's activation.env)"
k apply -k "$WORK/manifests/" | sed 's/^/    /'
show "kubectl apply -k manifests/console-user/minimal/"
k apply -k manifests/console-user/minimal/ | sed 's/^/    /'
CONSOLE_USER="$(sed -n 's/^ *- \(arn:aws:[^ ]*\)$/\1/p' manifests/console-user/impersonation/impersonation.yaml | head -1)"
echo "    console user (may be impersonated): $CONSOLE_USER"

STEP "The pod's projected service-account token (kubectl create token eks-connector)"
SA="$WORK/serviceaccount"
mkdir -p "$SA"
k create token eks-connector -n eks-connector --duration=1h >"$SA/token"
cp "$WORK/kube/ca.crt" "$SA/ca.crt"
printf eks-connector >"$SA/namespace"
echo "    $SA: token, ca.crt, namespace"

STEP "Start the local SSM stand-in (strict over TLS: init's registration, the agent's RSA-signed calls)"
# Short-lived credentials: the agent asks again every 4 s, so a forced rotation comes quickly.
SSM_STUB_TOKEN_SECONDS=8 "$BIN/examples/ssm-stub" "$ACT_ID" "$ACT_CODE" "$WORK/ssm" >"$WORK/ssm.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do [ -s "$WORK/ssm/url" ] && break; sleep 0.1; done
[ -s "$WORK/ssm/url" ] || { cat "$WORK/ssm.log"; die "the SSM stand-in did not start"; }
SSM_URL="$(cat "$WORK/ssm/url")"
echo "    $SSM_URL"

POD_ENV=(POD_NAME=eks-connector-0 KUBERNETES_SERVICE_HOST="${API%:*}" KUBERNETES_SERVICE_PORT="${API##*:}" RUST_LOG=info)

STEP "init: register with SSM, write the Vault, then the state Secret"
show "EKS_ACTIVATION_ID=… EKS_ACTIVATION_CODE=… eks-connector-init --agent.endpoint=$SSM_URL …"
env -i "${POD_ENV[@]}" EKS_ACTIVATION_ID="$ACT_ID" EKS_ACTIVATION_CODE="$ACT_CODE" \
    AWS_CA_BUNDLE="$(cat "$WORK/ssm/ca-path")" \
    "$BIN/eks-connector-init" --agent.endpoint="$SSM_URL" --state.baseDir="$WORK/vault" \
    --serviceaccount.dir="$SA" 2>&1 | sed 's/^/    /'
sed 's/^/    /' "$WORK/ssm.log"
echo "    Vault: $(cd "$WORK/vault" && find . -type f | sort | tr '\n' ' ')"
show "kubectl get secret eks-connector-state-0 -n eks-connector"
k get secret eks-connector-state-0 -n eks-connector | sed 's/^/    /'

STEP "init again (a restarted pod): the registration is reused, nothing new at SSM"
env -i "${POD_ENV[@]}" EKS_ACTIVATION_ID="$ACT_ID" EKS_ACTIVATION_CODE="$ACT_CODE" \
    AWS_CA_BUNDLE="$(cat "$WORK/ssm/ca-path")" \
    "$BIN/eks-connector-init" --agent.endpoint="$SSM_URL" --state.baseDir="$WORK/vault" \
    --serviceaccount.dir="$SA" 2>&1 | sed 's/^/    /'
sleep 0.5 # the stand-in logs every 200 ms
echo "    registrations at the SSM stand-in: $(grep -c RegisterManagedInstance "$WORK/ssm.log" || true)"

STEP "init --install-launcher: put the agent launcher into the shared volume"
"$BIN/eks-connector-init" --install-launcher "$WORK/launcher" 2>&1 | sed 's/^/    /'

STEP "proxy: the unix socket the SSM agent's curl talks to"
mkdir -p "$WORK/shared"
SOCK="$WORK/shared/connector.sock"
env -i "${POD_ENV[@]}" "$BIN/eks-connector-proxy" --proxy.socketAddr="$SOCK" \
    --proxy.targetHost="$API" --serviceaccount.dir="$SA" >"$WORK/proxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
[ -S "$SOCK" ] || { cat "$WORK/proxy.log"; die "the proxy did not create $SOCK"; }
echo "    listening on $SOCK"

STEP "agent: AWS's SSM agent under our launcher authenticates, rotates its key once, the launcher syncs it"
PEER=""
if [ "$(id -u)" != 0 ]; then
    echo "    FALLING BACK to the stand-in agent only: the real SSM agent needs root here (a mount"
    echo "    namespace puts the Vault at /var/lib/amazon/ssm/Vault, where its Manifest points)"
elif ! PEER="$("$ROOT/tests/peers/fetch-build.sh" ssm-agent 2>"$WORK/peer.log")"; then
    echo "    FALLING BACK to the stand-in agent only: the SSM agent's source is not available:"
    sed 's/^/    /' "$WORK/peer.log"
    PEER=""
fi
if [ -n "$PEER" ]; then
    echo "    amazon-ssm-agent $("$PEER/bin/amazon-ssm-agent" -version | sed 's/.*: //') from $PEER"
    A="$WORK/agent"
    mkdir -p "$A/etc/amazon/ssm" "$A/var" "$A/root"
    # The shipped ConfigMap's config with SSM and MGS at the stand-in.
    sed "s|^{|{\"Ssm\":{\"Endpoint\":\"$SSM_URL\"},\"Mgs\":{\"Endpoint\":\"$SSM_URL\"},|" \
        manifests/base/agent/amazon-ssm-agent.json >"$A/etc/amazon/ssm/amazon-ssm-agent.json"
    cp manifests/base/agent/seelog.xml "$A/etc/amazon/ssm/seelog.xml"
    HEALTH_PORT=18082
    cat >"$A/container.sh" <<CONTAINER
set -e
mount --make-rprivate /
mount -t overlay overlay -o lowerdir=$PEER/bin:/usr/bin /usr/bin
mount -t overlay overlay -o lowerdir=$A/etc:/etc /etc
mount --bind $A/var /var
mount --bind $A/root /root
mkdir -p /var/lib/amazon/ssm/Vault
mount --bind $WORK/vault /var/lib/amazon/ssm/Vault
exec env -i ${POD_ENV[*]} PATH=/usr/bin:/bin HOME=/root AWS_CA_BUNDLE=$(cat "$WORK/ssm/ca-path") \
    SSL_CERT_FILE=$(cat "$WORK/ssm/ca-path") $WORK/launcher/eks-connector-agent \
    --state.baseDir=/var/lib/amazon/ssm/Vault --state.secretNamespace=eks-connector \
    --serviceaccount.dir=$SA --health.addr=127.0.0.1:$HEALTH_PORT
CONTAINER
    show "eks-connector-agent --state.baseDir=/var/lib/amazon/ssm/Vault … (PID 1 of its own pid and mount namespace) -> /usr/bin/amazon-ssm-agent"
    unshare --mount --pid --fork --mount-proc --kill-child sh "$A/container.sh" >"$A/log" 2>&1 &
    agent_pid=$!
    pids+=("$agent_pid")
    waitlog() { # pattern seconds
        for _ in $(seq 1 $(($2 * 10))); do grep -q "$1" "$WORK/ssm.log" && return 0; sleep 0.1; done
        tail -30 "$A/log"
        die "the SSM stand-in never saw: $1"
    }
    waitlog "RequestManagedInstanceRoleToken by" 60
    grep -m1 "RequestManagedInstanceRoleToken by" "$WORK/ssm.log" | sed 's/^/    /'
    echo "    forcing a key rotation: the next token answer says UpdateKeyPair: true"
    touch "$WORK/ssm/rotate"
    waitlog "UpdateManagedInstancePublicKey by" 30
    grep -m1 "UpdateManagedInstancePublicKey by" "$WORK/ssm.log" | sed 's/^/    /'
    synced=""
    for _ in $(seq 1 100); do
        if k get secret eks-connector-state-0 -n eks-connector -o jsonpath='{.data.regkey}' | base64 -d |
            cmp -s - "$WORK/vault/Store/RegistrationKey"; then
            synced=1
            break
        fi
        sleep 0.1
    done
    [ -n "$synced" ] || { tail -30 "$A/log"; die "the rotated key did not reach the state Secret"; }
    echo "    the state Secret holds the agent's rewritten Store/RegistrationKey byte for byte"
    echo "    /readyz: HTTP $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HEALTH_PORT/readyz")"
    grep -E "eks_connector::keysync" "$A/log" | sed 's/^/    /' | tail -3
    echo "    SIGTERM to the launcher (as the kubelet stops the container)"
    launcher="$(awk '{print $1}' "/proc/$agent_pid/task/$agent_pid/children")"
    kill -TERM "$launcher"
    rc=0
    wait "$agent_pid" || rc=$?
    echo "    the launcher exited $rc"
fi

STEP "agent: the launcher starts a stand-in agent that runs the console's command"
cat >"$WORK/stand-in-agent" <<AGENT
#!/bin/sh
# What the SSM agent runs for the EKS console: one curl through the socket.
echo "stand-in agent: curl --unix-socket $SOCK -H 'x-aws-eks-identity-arn: $CONSOLE_USER' http://localhost/api/v1/namespaces"
curl -sS --unix-socket "$SOCK" -H "x-aws-eks-identity-arn: $CONSOLE_USER" http://localhost/api/v1/namespaces |
    grep -o '"name": *"[^"]*"' | cut -d'"' -f4 | sort -u | sed 's/^/  namespace: /'
AGENT
chmod +x "$WORK/stand-in-agent"
show "eks-connector-agent --state.baseDir=… --serviceaccount.dir=… -- stand-in-agent"
env -i "${POD_ENV[@]}" PATH=/usr/bin:/bin "$WORK/launcher/eks-connector-agent" \
    --state.baseDir="$WORK/vault" --serviceaccount.dir="$SA" -- "$WORK/stand-in-agent" 2>&1 | sed 's/^/    /'

STEP "What the proxy refuses"
code() { curl -s -o /dev/null -w '%{http_code}' --unix-socket "$SOCK" "$@"; }
echo "    unlisted ARN           -> HTTP $(code -H 'x-aws-eks-identity-arn: arn:aws:iam::111122223333:user/mallory' http://localhost/api/v1/nodes) (RBAC: cannot impersonate)"
echo "    no identity header     -> HTTP $(code http://localhost/api/v1/nodes) (fail closed)"
echo "    GET /version, no ARN   -> HTTP $(code http://localhost/version) (the console reads the version)"
echo "    Impersonate-Group: system:masters from the client -> HTTP $(code -H "x-aws-eks-identity-arn: $CONSOLE_USER" -H 'Impersonate-Group: system:masters' http://localhost/api/v1/namespaces/kube-system/secrets) (stripped)"

STEP "Proxy audit log"
sed 's/^/    /' "$WORK/proxy.log" | tail -8

echo
if [ -n "$PEER" ]; then
    echo "Done: control plane, SSM stand-in, init, launcher with AWS's SSM agent, and proxy worked together."
else
    echo "Done: control plane, SSM stand-in, init, launcher and proxy worked together (stand-in agent only: see above)."
fi
