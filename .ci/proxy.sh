#!/usr/bin/env bash
# The PROXY protocol and the per-address limit behind a real proxy: Debian's HAProxy in
# front of `serve --service NAME=ADDR,proxy --max-conns-per-ip 2`, with `send-proxy`
# (v1) and `send-proxy-v2`, under every model that serves clients at once. Clients
# connect to HAProxy from chosen loopback addresses (127.0.0.11, .12, ...); HAProxy
# connects to the server from 127.0.0.1. The checks (.ci/proxy_check.py): the third
# connection of one client address is refused in its protocol (`ERR too many
# connections from your address`, HTTP 503) while another address is served; the
# server's log names the client addresses the headers carried; /metrics counts the
# refusals as reason="per_ip"; a connection without a header is closed after
# --header-timeout.
#
# Servers bind 127.0.0.1 port 0 and report their ports in their logs; HAProxy's
# frontends take ports the kernel just handed out. Only PIDs started here are killed.
# Environment: MODELS (default "threads pool async"), SKIP_INSTALL=1.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT="$ROOT/target/proxy-ci"
BIN=${BIN:-"$ROOT/target/release/multiclient"}
MODELS=${MODELS:-"threads pool async"}
. .ci/lib.sh

if [[ "${SKIP_INSTALL:-}" != 1 ]] && { [[ "${CI:-}" == true ]] || ! command -v haproxy >/dev/null || ! command -v curl >/dev/null; }; then
    sudo=""
    [[ $(id -u) == 0 ]] || sudo="sudo"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q haproxy curl
fi
command -v haproxy >/dev/null || fail "haproxy missing"
[[ -x "$BIN" ]] || cargo build --release
mkdir -p "$OUT"

# free_ports N: N ports the kernel hands out now, for HAProxy's frontends.
free_ports() {
    python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

# port LOG NAME: the port of the server's NAME+proxy listener.
port() {
    grep -o "Listening on 127.0.0.1:[0-9]* ($2+proxy" "$1" | head -1 | sed 's/.*:\([0-9]*\) .*/\1/'
}

wait_for() { # wait_for LOG TEXT PID
    for _ in $(seq 100); do
        grep -q "$2" "$1" && return
        kill -0 "$3" 2>/dev/null || fail "exited: $(tail -5 "$1")"
        sleep 0.1
    done
    fail "no '$2' in $1 within 10 s: $(tail -5 "$1")"
}

for model in $MODELS; do
    log "proxy: HAProxy send-proxy and send-proxy-v2 in front, --model $model"
    slog="$OUT/serve-$model.log"
    "$BIN" serve --model "$model" --max-conns-per-ip 2 --header-timeout 1s \
        --service greet=127.0.0.1:0,proxy --service http=127.0.0.1:0,proxy \
        --admin 127.0.0.1:0 >"$slog" 2>&1 &
    server=$!
    PIDS+=("$server")
    wait_for "$slog" "Admin on http://" "$server"
    greet=$(port "$slog" greet)
    http=$(port "$slog" http)
    admin=$(grep -o 'Admin on http://[0-9.:]*' "$slog" | head -1 | sed 's|Admin on http://||')
    read -r p_g1 p_g2 p_h1 p_h2 < <(free_ports 4)
    cfg="$OUT/haproxy-$model.cfg"
    cat >"$cfg" <<CFG
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
listen greet_v1
    bind 127.0.0.1:$p_g1
    server s 127.0.0.1:$greet send-proxy
listen greet_v2
    bind 127.0.0.1:$p_g2
    server s 127.0.0.1:$greet send-proxy-v2
listen http_v1
    bind 127.0.0.1:$p_h1
    server s 127.0.0.1:$http send-proxy
listen http_v2
    bind 127.0.0.1:$p_h2
    server s 127.0.0.1:$http send-proxy-v2
CFG
    haproxy -c -q -f "$cfg" || fail "haproxy config"
    hlog="$OUT/haproxy-$model.log"
    haproxy -db -f "$cfg" >"$hlog" 2>&1 &
    hap=$!
    PIDS+=("$hap")
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$p_h2") 2>/dev/null && break
        kill -0 "$hap" 2>/dev/null || fail "haproxy exited: $(cat "$hlog")"
        sleep 0.1
    done

    python3 .ci/proxy_check.py "$p_g1" "$p_g2" "$p_h1" "$p_h2" "$greet"
    got=$(curl -sS --max-time 10 --interface 127.0.0.61 "http://127.0.0.1:$p_h1/")
    [[ $got == 'Hello from Multi-threaded Flask Server!' ]] || fail "curl through send-proxy: '$got'"
    echo "ok   curl from 127.0.0.61 through send-proxy"

    # The log names the addresses the headers carried, in both versions.
    for a in 127.0.0.11 127.0.0.21 127.0.0.31 127.0.0.41 127.0.0.61; do
        grep -q "is client $a:" "$slog" || fail "$model: no log line naming client $a"
    done
    grep -q "PROXY v1: .* is client 127.0.0.11:" "$slog" || fail "$model: v1 not logged"
    grep -q "PROXY v2: .* is client 127.0.0.21:" "$slog" || fail "$model: v2 not logged"
    refusals=$(grep -c "Refusing connection .* from 127.0.0.\(11\|21\|31\|41\):" "$slog" || true)
    [[ $refusals == 4 ]] || fail "$model: $refusals refusals logged, want 4"
    grep -q "PROXY: no valid header from 127.0.0.51:" "$slog" || fail "$model: the headerless client not logged"
    echo "ok   $model: the log names the headers' clients, the refusals and the headerless client"
    if grep -q "Refusing connection .* from 127.0.0.1:" "$slog"; then
        fail "$model: HAProxy's own address was limited"
    fi

    metrics=$(curl -sS --max-time 10 "http://$admin/metrics")
    grep -q 'multiclient_connections_refused_total{service="greet+proxy",reason="per_ip"} 2' <<<"$metrics" ||
        fail "$model: greet per_ip refusals: $(grep refused_total <<<"$metrics")"
    grep -q 'multiclient_connections_refused_total{service="http+proxy",reason="per_ip"} 2' <<<"$metrics" ||
        fail "$model: http per_ip refusals: $(grep refused_total <<<"$metrics")"
    echo "ok   $model: /metrics counts 2 + 2 refusals as reason=\"per_ip\""

    kill "$hap"
    wait "$hap" 2>/dev/null || true
    kill -TERM "$server"
    wait "$server" || fail "$model: server exited with $? after SIGTERM"
done
log "proxy.sh: all checks passed"
