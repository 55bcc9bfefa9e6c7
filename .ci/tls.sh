#!/usr/bin/env bash
# TLS with real third-party clients, under every model: `openssl s_client` against the
# line services (ack, greet, hello, chat), `curl --cacert` for https (keep-alive reuse,
# pipelining, an error status), the Python `websockets` client over wss (the ws
# service and the chat's JSON on the http listener), a plaintext client refused with
# an alert, and a certificate swapped on SIGHUP as seen by a new s_client.
#
# A test CA and a server certificate for localhost/127.0.0.1 are made with openssl in
# target/tls-ci/. Servers bind 127.0.0.1 port 0; ports are read from their logs; only
# the PIDs started here are killed. Exits non-zero on the first failed check.
#
# Environment: MODELS (default "single threads pool async"), SKIP_INSTALL=1 to use the
# tools already installed.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT="$ROOT/target/tls-ci"
BIN=${BIN:-"$ROOT/target/release/multiclient"}
MODELS=${MODELS:-"single threads pool async"}
. .ci/lib.sh
ok() { printf 'ok   %s\n' "$*"; }
install_tools() {
    if [[ "${SKIP_INSTALL:-}" == 1 ]]; then
        return
    fi
    local sudo=""
    [[ $(id -u) == 0 ]] || sudo="sudo"
    if [[ "${CI:-}" == true ]] || ! command -v curl >/dev/null || ! command -v openssl >/dev/null ||
        ! command -v nc >/dev/null; then
        $sudo apt-get update -q
        # netcat: the plaintext client on a TLS port.
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q curl openssl netcat-openbsd
    fi
    if ! python3 -c 'import websockets' 2>/dev/null; then
        python3 -m pip --version >/dev/null 2>&1 ||
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q python3-pip
        # A Debian system Python refuses user installs unless told (PEP 668).
        python3 -m pip install -q websockets ||
            python3 -m pip install -q --break-system-packages websockets
    fi
    command -v curl >/dev/null || fail "curl missing"
    command -v openssl >/dev/null || fail "openssl missing"
    command -v nc >/dev/null || fail "nc missing"
    python3 -c 'import websockets' || fail "python websockets missing"
}

# make_pki DIR: a CA and a server certificate (ECDSA P-256) it signed, for localhost
# and 127.0.0.1. The same commands are in docs/security.md.
make_pki() {
    local d=$1
    mkdir -p "$d"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=multiclient test CA" -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/CN=localhost" -keyout "$d/key.pem" -out "$d/server.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$d/san.ext"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" \
        -CAcreateserial -days 2 -extfile "$d/san.ext" -out "$d/cert.pem" 2>/dev/null
}

# start_server LOGFILE ARGS...: runs `serve` in the background, waits for one
# "Listening on" line per --service, sets SERVER_PID.
start_server() {
    local logfile=$1
    shift
    local want
    want=$(grep -o -- '--service' <<<"$*" | wc -l)
    "$BIN" serve "$@" >"$logfile" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    for _ in $(seq 100); do
        if [[ $(grep -c 'Listening on' "$logfile" || true) -ge $want ]]; then
            return
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || fail "server exited: $(tail -5 "$logfile")"
        sleep 0.1
    done
    fail "server did not listen within 10 s: $(tail -5 "$logfile")"
}

# port LOGFILE SERVICE: the port the service's TLS listener reported.
port() {
    grep -o "Listening on 127.0.0.1:[0-9]* ($2+tls" "$1" | head -1 | sed 's/.*:\([0-9]*\) .*/\1/'
}

stop_server() {
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" || fail "server exited with $? after SIGTERM"
}

# s_client PORT INPUT: what the server says to INPUT over TLS, for services that close
# the connection themselves (s_client -quiet keeps its side open at the end of INPUT
# and prints what arrives until the server closes).
s_client() {
    printf '%b' "$2" | timeout 10 openssl s_client -connect "127.0.0.1:$1" \
        -CAfile "$PKI/ca.pem" -verify_return_error -quiet 2>/dev/null
}

# A conversation with s_client as a coprocess, for services that keep the connection:
# talk_start PORT, then send TEXT and recv N (exactly N bytes into GOT, waiting for
# them, at most 10 s), then talk_end.
talk_start() {
    coproc S { exec timeout 20 openssl s_client -connect "127.0.0.1:$1" \
        -CAfile "$PKI/ca.pem" -verify_return_error -quiet 2>/dev/null; }
}
send() { printf '%b' "$1" >&"${S[1]}"; }
recv() {
    GOT=
    IFS= read -r -N "$1" -t 10 GOT <&"${S[0]}" || true
}
recv_line() {
    GOT=
    IFS= read -r -t 10 GOT <&"${S[0]}" || true
}
talk_end() {
    local pid=$S_PID
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

line_services() {
    local log=$1
    local got
    talk_start "$(port "$log" ack)"
    send 'Hello, server'
    recv 4
    [[ $GOT == 'ACK!' ]] || fail "$model ack over s_client: got '$GOT'"
    send 'again'
    recv 4
    [[ $GOT == 'ACK!' ]] || fail "$model ack over s_client: got '$GOT'"
    talk_end
    ok "$model: ack over openssl s_client"
    talk_start "$(port "$log" greet)"
    recv 16
    [[ $GOT == $'Hi! I am server\n' ]] || fail "$model greet: got '$GOT'"
    send 'HI! I am client.'
    recv 16
    [[ $GOT == $'Hi! I am server\n' ]] || fail "$model greet: got '$GOT'"
    talk_end
    ok "$model: greet over openssl s_client"
    got=$(s_client "$(port "$log" hello)" 'Hello from s_client')
    [[ $got == 'Hello from server!' ]] || fail "$model hello: got '$got'"
    ok "$model: hello over openssl s_client"
    if [[ $model != single ]]; then
        talk_start "$(port "$log" chat)"
        recv_line
        [[ $GOT == 'WELCOME guest-'* ]] || fail "$model chat: got '$GOT'"
        send 'NICK ann\nJOIN lobby\nSAY lobby hi\n'
        for want in '^OK NICK ann$' '^OK JOIN lobby$' '^MSG lobby [0-9]+ ann hi$'; do
            recv_line
            [[ $GOT =~ $want ]] || fail "$model chat: got '$GOT', want $want"
        done
        send 'QUIT\n'
        recv_line
        [[ $GOT == 'OK QUIT' ]] || fail "$model chat: got '$GOT'"
        talk_end
        ok "$model: chat over openssl s_client"
    fi
}

https() {
    local p=$1 out
    out=$(curl -sS --cacert "$PKI/ca.pem" -w '%{http_code} %{num_connects}\n' \
        "https://localhost:$p/" "https://localhost:$p/" "https://localhost:$p/nowhere" -o /dev/null -o /dev/null -o /dev/null)
    [[ $out == $'200 1\n200 0\n404 0' ]] || fail "$model https keep-alive/404: got '$out'"
    ok "$model: https with curl: 200, 200 on the same connection, 404"
    out=$(curl -sS --cacert "$PKI/ca.pem" "https://localhost:$p/")
    [[ $out == 'Hello from Multi-threaded Flask Server!' ]] || fail "$model https body: '$out'"
    # Pipelining: two requests in one write, over s_client.
    out=$(s_client "$p" 'GET / HTTP/1.1\r\nHost: localhost\r\n\r\nGET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' |
        grep -c 'Hello from Multi-threaded Flask Server!' || true)
    [[ $out == 2 ]] || fail "$model https pipelining: $out answers"
    ok "$model: https pipelining, two answers"
    if [[ $model != single ]]; then
        out=$(curl -sS --cacert "$PKI/ca.pem" -o /dev/null -w '%{http_code}' "https://localhost:$p/chat")
        [[ $out == 200 ]] || fail "$model chat page over https: $out"
        ok "$model: the chat page over https"
    fi
}

wss() {
    python3 - "$@" <<'EOF'
import asyncio, json, ssl, sys
import websockets

async def main(ca, ws_port, http_port, chat):
    ctx = ssl.create_default_context(cafile=ca)
    async with websockets.connect(f"wss://localhost:{ws_port}/", ssl=ctx) as ws:
        await ws.send("hi")
        got = await ws.recv()
        if got != "Server received: hi":
            sys.exit(f"FAIL wss echo: {got!r}")
    print("ok   wss echo with the Python websockets client")
    if chat:
        async with websockets.connect(f"wss://localhost:{http_port}/chat/ws", ssl=ctx) as ws:
            welcome = json.loads(await ws.recv())
            if welcome.get("type") != "welcome":
                sys.exit(f"FAIL chat welcome: {welcome}")
            await ws.send(json.dumps({"type": "nick", "nick": "ann"}))
            got = json.loads(await ws.recv())
            if got != {"type": "ok", "cmd": "nick", "nick": "ann"}:
                sys.exit(f"FAIL chat nick: {got}")
        print("ok   the chat's JSON over wss")

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"))
EOF
}

install_tools
[[ -x $BIN ]] || cargo build --release
rm -rf "$OUT"
mkdir -p "$OUT"
PKI="$OUT/pki"
make_pki "$PKI"

for model in $MODELS; do
    log "$model"
    services=(--service ack=127.0.0.1:0,tls --service greet=127.0.0.1:0,tls
        --service hello=127.0.0.1:0,tls --service http=127.0.0.1:0,tls
        --service ws=127.0.0.1:0,tls)
    [[ $model == single ]] || services+=(--service chat=127.0.0.1:0,tls)
    logf="$OUT/$model.log"
    start_server "$logf" --model "$model" --tls-cert "$PKI/cert.pem" --tls-key "$PKI/key.pem" \
        "${services[@]}"
    line_services "$logf"
    https "$(port "$logf" http)"
    chat=1
    [[ $model == single ]] && chat=0
    wss "$PKI/ca.pem" "$(port "$logf" ws)" "$(port "$logf" http)" "$chat"
    # A plaintext client on a TLS port: an alert record (type 0x15), then the close.
    first=$(printf 'GET / HTTP/1.1\r\nHost: x\r\n\r\n' |
        timeout 10 nc -q 5 127.0.0.1 "$(port "$logf" http)" | head -c 1 | od -An -tx1 | tr -d ' ')
    [[ $first == 15 ]] || fail "$model: plaintext client got '$first', not an alert"
    grep -q 'TLS: .*alert sent, closing' "$logf" || fail "$model: the refused plaintext client is not logged"
    ok "$model: plaintext client gets an alert and a close, logged"
    stop_server
done

log "SIGHUP swaps the certificate"
start_server "$OUT/sighup.log" --model async --tls-cert "$PKI/cert.pem" --tls-key "$PKI/key.pem" \
    --service ack=127.0.0.1:0,tls
p=$(port "$OUT/sighup.log" ack)
serial() {
    timeout 10 openssl s_client -connect "127.0.0.1:$p" -CAfile "$1" -verify_return_error \
        </dev/null 2>/dev/null | openssl x509 -noout -serial
}
# An established connection, kept across the reload.
talk_start "$p"
send 'before'
recv 4
[[ $GOT == 'ACK!' ]] || fail "the established connection got '$GOT' before the reload"
before=$(serial "$PKI/ca.pem")
PKI2="$OUT/pki2"
make_pki "$PKI2"
cp "$PKI2/cert.pem" "$PKI/cert.pem"
cp "$PKI2/key.pem" "$PKI/key.pem"
kill -HUP "$SERVER_PID"
for _ in $(seq 50); do
    grep -q 'TLS certificate reloaded' "$OUT/sighup.log" && break
    sleep 0.1
done
grep -q 'TLS certificate reloaded' "$OUT/sighup.log" || fail "no reload logged"
after=$(serial "$PKI2/ca.pem")
[[ -n $after && $after != "$before" ]] || fail "new handshake still gets $before"
ok "a new s_client sees the new certificate ($before -> $after)"
send 'after'
recv 4
[[ $GOT == 'ACK!' ]] || fail "the established connection got '$GOT' after the reload"
talk_end
ok "the established connection kept working across the reload"
echo garbage >"$PKI/cert.pem"
kill -HUP "$SERVER_PID"
for _ in $(seq 50); do
    grep -q 'not reloaded' "$OUT/sighup.log" && break
    sleep 0.1
done
grep -q 'not reloaded' "$OUT/sighup.log" || fail "a bad certificate file is not logged"
[[ $(serial "$PKI2/ca.pem") == "$after" ]] || fail "the certificate in use was not kept"
ok "a certificate file that does not parse is logged and the old one kept"
stop_server

log "TLS interop passed"
