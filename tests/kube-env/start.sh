#!/usr/bin/env bash
# Starts a real control plane (etcd + kube-apiserver) on loopback, in the foreground until killed.
#   start.sh DIR            the newest Kubernetes we test (build-bins.sh)
#   start.sh DIR v1.29      the oldest (build-older.sh v1.29)
# Writes DIR/kubeconfig (admin, system:masters), DIR/ca.crt, DIR/admin/{token,ca.crt} (an admin
# "service-account directory" for our own client), DIR/server-url, and DIR/ready when the API
# server answers /readyz. Used by the Rust test harness (tests/common) and `./build.sh kube-env`.
# Children die with this script (also on SIGKILL: setpriv --pdeathsig), so nothing is left behind.
set -euo pipefail

DIR="${1:?usage: start.sh DIR [v1.NN]}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -n "${2:-}" ]]; then
    BIN="$("$HERE/build-older.sh" "$2")"
else
    BIN="$("$HERE/build-bins.sh")"
fi
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
PKI="$DIR/pki"
rm -rf "$PKI" "$DIR/etcd-data" "$DIR/ready"
mkdir -p "$PKI" "$DIR/admin" "$DIR/etcd-data"

command -v openssl >/dev/null || { echo "start.sh: openssl is needed to make the test certificates (apt-get install openssl)" >&2; exit 1; }

free_port() {
    python3 - <<'PY' 2>/dev/null || { echo $(( 20000 + RANDOM % 20000 )); }
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
PY
}

# Certificates: a CA, a serving certificate valid for 127.0.0.1 and the in-cluster names, an admin
# client certificate in system:masters (for kubectl), and the service-account signing key.
(
    cd "$PKI"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 \
        -subj "/CN=eks-connector-test-ca" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr \
        -subj "/CN=kube-apiserver" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\nextendedKeyUsage=serverAuth\n' > server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt \
        -days 2 -extfile server.ext 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr \
        -subj "/O=system:masters/CN=admin" 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' > admin.ext
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out admin.crt \
        -days 2 -extfile admin.ext 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
)
ADMIN_TOKEN="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
printf '%s,admin,admin-uid,"system:masters"\n' "$ADMIN_TOKEN" > "$PKI/tokens.csv"
printf '%s' "$ADMIN_TOKEN" > "$DIR/admin/token"
cp "$PKI/ca.crt" "$DIR/admin/ca.crt"
cp "$PKI/ca.crt" "$DIR/ca.crt"

ETCD_PORT="$(free_port)"; PEER_PORT="$(free_port)"; API_PORT="$(free_port)"
SERVER="https://127.0.0.1:$API_PORT"

pids=()
# Stop politely, then for sure: kube-apiserver can hang in shutdown once etcd is gone.
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for _ in $(seq 1 50); do
        alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        ((alive)) || return 0
        sleep 0.1
    done
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 0' TERM INT

setpriv --pdeathsig KILL "$BIN/etcd" --data-dir "$DIR/etcd-data" \
    --listen-client-url "http://127.0.0.1:$ETCD_PORT" --listen-peer-url "http://127.0.0.1:$PEER_PORT" \
    >"$DIR/etcd.log" 2>&1 &
pids+=($!)

setpriv --pdeathsig KILL "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
    --cert-dir "$PKI" --tls-cert-file "$PKI/server.crt" --tls-private-key-file "$PKI/server.key" \
    --client-ca-file "$PKI/ca.crt" --token-auth-file "$PKI/tokens.csv" \
    --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range 10.0.0.0/24 --endpoint-reconciler-type none \
    --enable-priority-and-fairness=false --profiling=false \
    >"$DIR/kube-apiserver.log" 2>&1 &
pids+=($!)

cat > "$DIR/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: $SERVER
    certificate-authority: $PKI/ca.crt
users:
- name: admin
  user:
    client-certificate: $PKI/admin.crt
    client-key: $PKI/admin.key
contexts:
- name: test
  context: {cluster: test, user: admin}
current-context: test
KC
printf '%s' "$SERVER" > "$DIR/server-url"

for _ in $(seq 1 600); do
    for p in "${pids[@]}"; do
        if ! kill -0 "$p" 2>/dev/null; then
            echo "start.sh: a control-plane process exited early; last log lines:" >&2
            tail -n 20 "$DIR/etcd.log" "$DIR/kube-apiserver.log" >&2
            exit 1
        fi
    done
    if curl -sf --max-time 2 --cacert "$PKI/ca.crt" -H "Authorization: Bearer $ADMIN_TOKEN" \
            "$SERVER/readyz" >/dev/null 2>&1; then
        touch "$DIR/ready"
        echo "$SERVER"
        echo "kube-env: ready; kubeconfig $DIR/kubeconfig, CA $DIR/ca.crt (Ctrl-C to stop)" >&2
        wait -n "${pids[@]}" || true
        echo "start.sh: a control-plane process exited; last log lines:" >&2
        tail -n 20 "$DIR/etcd.log" "$DIR/kube-apiserver.log" >&2
        exit 1
    fi
    sleep 0.2
done
echo "start.sh: the API server did not become ready in 120 s; see $DIR/kube-apiserver.log" >&2
exit 1
