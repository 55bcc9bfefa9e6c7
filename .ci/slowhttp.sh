#!/usr/bin/env bash
# Slow HTTP denial of service, tried with slowhttptest against the http service:
# slow headers (-H, slowloris) and slow bodies (-B, R-U-Dead-Yet). The attack opens
# more connections than the server's --max-conns; each one is cut off with a 408 at
# --header-timeout / --body-timeout, so the slots come back faster than the attack
# takes them. Meanwhile a curl probe (a normal client) must get 200 every time, and
# slowhttptest's own probe must report the service available throughout.
#
# The server binds 127.0.0.1 port 0 (the port is read from its log); only the PID
# started here is killed. Exits non-zero on the first failed check. Results go to
# target/slowhttp-ci/.
#
# Environment: BIN (default target/release/multiclient), MODELS (default "async
# threads"), SLOW_SECS (attack length, default 20), SKIP_INSTALL=1 to use the tools
# already installed.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT="$ROOT/target/slowhttp-ci"
BIN=${BIN:-"$ROOT/target/release/multiclient"}
MODELS=${MODELS:-"async threads"}
SLOW_SECS=${SLOW_SECS:-20}
# The server's slot count, and an attack of half as many again.
MAX_CONNS=200
ATTACK_CONNS=300
# Attack connections opened per second: at the 2 s timeouts below, at most about
# 3 s x 40 = 120 of them are open at once, well under --max-conns; without the
# timeouts all 300 would stay and the server would be full after 5 s.
ATTACK_RATE=40
. .ci/lib.sh
install_tools() {
    if [[ "${SKIP_INSTALL:-}" == 1 ]]; then
        return
    fi
    local sudo=""
    [[ $(id -u) == 0 ]] || sudo="sudo"
    if ! command -v slowhttptest >/dev/null || ! command -v curl >/dev/null; then
        $sudo apt-get update -q
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q slowhttptest curl
    fi
    command -v slowhttptest >/dev/null || fail "slowhttptest missing"
    command -v curl >/dev/null || fail "curl missing"
}

# start_server LOGFILE ARGS... : runs `serve` in the background and waits for its
# listening line.
start_server() {
    local logfile=$1
    shift
    "$BIN" serve --log-format json "$@" >"$logfile" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    for _ in $(seq 100); do
        if grep -q 'Listening on' "$logfile"; then
            return
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || fail "server exited: $(tail -5 "$logfile")"
        sleep 0.1
    done
    fail "server did not listen within 10 s: $(tail -5 "$logfile")"
}

port_of() {
    python3 - "$1" <<'EOF'
import json, re, sys
for line in open(sys.argv[1]):
    try:
        msg = json.loads(line).get("fields", {}).get("message", "")
    except ValueError:
        continue
    m = re.match(r"Listening on 127\.0\.0\.1:(\d+) \(http,", msg)
    if m:
        print(m.group(1))
        sys.exit(0)
sys.exit("no listening line for http")
EOF
}

# attack MODEL MODE(-H|-B) : one slowhttptest run with the curl probe beside it.
attack() {
    local model=$1 mode=$2
    local name="$model${mode}"
    log "slowhttptest $mode against http under $model"
    start_server "$OUT/$name.server.log" --service http --addr 127.0.0.1:0 \
        --model "$model" --max-conns "$MAX_CONNS" \
        --header-timeout 2s --body-timeout 2s
    local port
    port=$(port_of "$OUT/$name.server.log")
    curl -sf -o /dev/null "http://127.0.0.1:$port/" || fail "$name: not serving before the attack"

    # Bounded: SLOW_SECS of attack, ATTACK_CONNS connections, -i 1 s between the
    # attack's bytes, its probe answered within 3 s or the service counts as down.
    slowhttptest "$mode" -c "$ATTACK_CONNS" -r "$ATTACK_RATE" -i 1 -s 8192 -p 3 \
        -l "$SLOW_SECS" -u "http://127.0.0.1:$port/" >"$OUT/$name.slowhttptest.log" 2>&1 &
    local attacker=$!
    PIDS+=("$attacker")

    # The probe: one request every 0.2 s while the attack runs (bounded by count).
    local probes=0 failures=0 code
    for _ in $(seq $((SLOW_SECS * 5))); do
        kill -0 "$attacker" 2>/dev/null || break
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "http://127.0.0.1:$port/" || true)
        probes=$((probes + 1))
        if [[ "$code" != 200 ]]; then
            failures=$((failures + 1))
            echo "probe $probes: HTTP $code" >>"$OUT/$name.probe.log"
        fi
        sleep 0.2
    done
    wait "$attacker" || true

    echo "$name: $probes curl probes, $failures not 200" | tee -a "$OUT/summary.txt"
    [[ $probes -ge $((SLOW_SECS * 2)) ]] || fail "$name: only $probes probes ran"
    [[ $failures == 0 ]] || fail "$name: $failures probes not answered 200 (see $OUT/$name.probe.log)"

    # slowhttptest prints its status now and then; every one must say the service is
    # available.
    local report="$OUT/$name.slowhttptest.txt"
    sed 's/\x1b\[[0-9;]*[A-Za-z]//g' "$OUT/$name.slowhttptest.log" >"$report"
    grep -q 'service available:' "$report" || fail "$name: no slowhttptest status: $(tail -5 "$report")"
    if grep -Eq 'service available:[[:space:]]*NO' "$report"; then
        fail "$name: slowhttptest reports the service unavailable: $(grep -m3 -B8 'available:[[:space:]]*NO' "$report")"
    fi
    # It ends at its time limit, or earlier once the server has closed every one of
    # its connections; never because it could not connect.
    grep -Eq 'Exit status: (Hit test time limit|No open connections left)' "$report" ||
        fail "$name: slowhttptest ended otherwise: $(tail -3 "$report")"
    local closed
    closed=$(grep -Eo 'closed:[[:space:]]*[0-9]+' "$report" | tail -1 | grep -Eo '[0-9]+')
    echo "$name: slowhttptest closed by the server: $closed of $ATTACK_CONNS" | tee -a "$OUT/summary.txt"
    [[ ${closed:-0} -gt 0 ]] || fail "$name: the server closed none of the slow connections"
    grep -q 'HTTP 408' "$OUT/$name.server.log" || fail "$name: no 408 in the server log"

    kill -TERM "$SERVER_PID"
    local status=0
    wait "$SERVER_PID" || status=$?
    [[ $status == 0 ]] || fail "$name: server exit status $status after SIGTERM"
}

mkdir -p "$OUT"
: >"$OUT/summary.txt"
install_tools
[[ -x "$BIN" ]] || fail "no binary at $BIN (cargo build --release first)"
for model in $MODELS; do
    attack "$model" -H
    attack "$model" -B
done
log "summary"
cat "$OUT/summary.txt"
