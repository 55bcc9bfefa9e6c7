#!/usr/bin/env bash
# Real third-party clients against the http and ws services, under every model:
# curl (status codes, keep-alive reuse), wrk (a short bounded run: 0 errors, 0 non-2xx),
# the Python `websockets` client (.ci/ws_client.py) and the Autobahn TestSuite cases
# through `kosoku` (0 FAILED in index.json; NON-STRICT and INFORMATIONAL listed).
#
# Servers bind 127.0.0.1 port 0; the ports are read from their logs. Only the PIDs
# started here are killed. Exits non-zero on the first failed check. Results go to
# target/web-ci/ (wrk output, kosoku reports, summary.txt).
#
# Environment: MODELS (default "single threads pool async"), WRK_SECS (default 5),
# SKIP_INSTALL=1 to use the tools already installed, FUZZ_SECS=N to also run each
# cargo-fuzz target for N seconds (needs nightly and cargo-fuzz; off by default).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT="$ROOT/target/web-ci"
BIN="$ROOT/target/release/multiclient"
MODELS=${MODELS:-"single threads pool async"}
WRK_SECS=${WRK_SECS:-5}
. .ci/lib.sh
install_tools() {
    if [[ "${SKIP_INSTALL:-}" == 1 ]]; then
        return
    fi
    local sudo=""
    [[ $(id -u) == 0 ]] || sudo="sudo"
    if [[ "${CI:-}" == true ]] || ! command -v curl >/dev/null || ! command -v wrk >/dev/null; then
        $sudo apt-get update -q
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q curl wrk
    fi
    if [[ "${CI:-}" == true ]] || ! python3 -c 'import websockets' 2>/dev/null ||
        ! command -v kosoku >/dev/null; then
        python3 -m pip --version >/dev/null 2>&1 ||
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q python3-pip
        # A Debian system Python refuses user installs unless told (PEP 668).
        python3 -m pip install -q websockets kosoku ||
            python3 -m pip install -q --break-system-packages websockets kosoku
    fi
    export PATH="$HOME/.local/bin:$PATH"
    command -v curl >/dev/null || fail "curl missing"
    command -v wrk >/dev/null || fail "wrk missing"
    command -v kosoku >/dev/null || fail "kosoku missing"
    python3 -c 'import websockets' || fail "python websockets missing"
}

# start_server NAME LOGFILE ARGS... : runs `serve` in the background, waits for one
# "Listening on" line per --service, sets SERVER_PID.
start_server() {
    local logfile=$1
    shift
    local want
    want=$(grep -o -- '--service' <<<"$*" | wc -l)
    "$BIN" serve --log-format json "$@" >"$logfile" 2>&1 &
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

# port_of LOGFILE SERVICE : the port a service of that server bound.
port_of() {
    python3 - "$1" "$2" <<'EOF'
import json, re, sys
for line in open(sys.argv[1]):
    try:
        msg = json.loads(line).get("fields", {}).get("message", "")
    except ValueError:
        continue
    m = re.match(r"Listening on 127\.0\.0\.1:(\d+) \((\w+),", msg)
    if m and m.group(2) == sys.argv[2]:
        print(m.group(1))
        sys.exit(0)
sys.exit("no listening line for " + sys.argv[2])
EOF
}

# stop_server PID : SIGTERM, then the graceful shutdown must exit 0 within 15 s.
stop_server() {
    local pid=$1
    kill -TERM "$pid"
    for _ in $(seq 150); do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" || fail "server $pid exited with status $?"
            return
        fi
        sleep 0.1
    done
    fail "server $pid did not shut down within 15 s"
}

check() { # check WHAT GOT WANT
    [[ "$2" == "$3" ]] || fail "$1: got '$2', want '$3'"
    echo "ok   $1"
}

curl_checks() {
    local base=$1 code body
    body=$(curl -sS --max-time 5 "$base/")
    check "GET / body" "$body" "Hello from Multi-threaded Flask Server!"
    code=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "$base/")
    check "GET / status" "$code" 200
    code=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' --http1.0 "$base/")
    check "HTTP/1.0 GET /" "$code" 200
    check "HEAD / headers" "$(curl -sS --max-time 5 -I "$base/" | tr -d '\r' | grep -ci '^content-length: 39$')" 1
    code=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "$base/nope")
    check "GET /nope" "$code" 404
    local allow
    allow=$(curl -sS --max-time 5 -X POST -d x -D - -o /dev/null "$base/" | tr -d '\r' | grep -i '^allow:' || true)
    check "POST / -> 405 Allow" "$allow" "Allow: GET, HEAD"
    code=$(head -c 2000000 /dev/zero | curl -sS --max-time 5 -o /dev/null -w '%{http_code}' \
        -X POST --data-binary @- "$base/")
    check "2 MB body -> 413" "$code" 413
    code=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "$base/ws")
    check "GET /ws without upgrade -> 426" "$code" 426
    # Two URLs on one command line: the second reuses the first connection.
    local connects
    connects=$(curl -sS --max-time 5 -o /dev/null -o /dev/null -w '%{num_connects} ' "$base/" "$base/")
    check "keep-alive reuse (connects per request)" "$connects" "1 0 "
}

wrk_run() { # wrk_run MODEL URL CONNECTIONS
    local model=$1 url=$2 conns=$3 threads=2 f="$OUT/wrk-$1.txt"
    [[ $conns -ge 2 ]] || threads=1
    wrk -t"$threads" -c"$conns" -d"${WRK_SECS}s" --timeout 5s "$url" >"$f" 2>&1 || fail "wrk failed: $(cat "$f")"
    cat "$f"
    if grep -qE 'Socket errors|Non-2xx' "$f"; then
        fail "wrk under $model reported errors"
    fi
    local rps
    rps=$(awk '/Requests\/sec/ {print $2}' "$f")
    [[ -n "$rps" ]] || fail "no Requests/sec in wrk output"
    echo "wrk $model: -c$conns ${WRK_SECS}s: $rps req/s, 0 errors, 0 non-2xx" >>"$OUT/summary.txt"
}

kosoku_run() { # kosoku_run MODEL PORT
    local model=$1 port=$2 dir="$OUT/autobahn-$1"
    rm -rf "$dir"
    timeout 900 kosoku -m fuzzingclient -x '9.*' -x '12.*' -x '13.*' -o "$dir" "127.0.0.1:$port" \
        >"$OUT/kosoku-$model.log" 2>&1 || echo "kosoku exit status $? (index.json decides)"
    tail -3 "$OUT/kosoku-$model.log"
    python3 - "$dir/index.json" "$model" "$OUT/summary.txt" <<'EOF'
import collections, json, sys
path, model, summary = sys.argv[1:]
index = json.load(open(path))
cases = {}
for agent in index.values():
    cases.update(agent)
if len(cases) < 200:
    sys.exit(f"only {len(cases)} cases in {path}")
ranks = {"OK": 0, "INFORMATIONAL": 1, "NON-STRICT": 2, "UNIMPLEMENTED": 3, "WRONG CODE": 4, "FAILED": 5}
def verdict(c):
    worst = max((c.get("behavior", "FAILED"), c.get("behaviorClose", "FAILED")), key=lambda b: ranks.get(b, 5))
    return worst if worst in ranks and ranks[worst] < 3 else "FAILED"
key = lambda k: [int(p) for p in k.split(".")]
by = collections.defaultdict(list)
for k in sorted(cases, key=key):
    by[verdict(cases[k])].append(k)
line = f"kosoku {model}: {len(cases)} cases: " + ", ".join(f"{v} {len(by[v])}" for v in ("OK", "NON-STRICT", "INFORMATIONAL", "FAILED"))
extra = "; NON-STRICT: " + " ".join(by["NON-STRICT"]) + "; INFORMATIONAL: " + " ".join(by["INFORMATIONAL"])
print(line + extra)
open(summary, "a").write(line + extra + "\n")
if by["FAILED"]:
    for k in by["FAILED"]:
        print("FAILED", k, cases[k])
    sys.exit(f"{len(by['FAILED'])} FAILED cases under {model}")
EOF
}

install_tools
log "building the release binary"
cargo build --release --quiet
mkdir -p "$OUT"
: >"$OUT/summary.txt"
echo "machine: $(nproc) cores, $(uname -sr); wrk ${WRK_SECS}s runs" >>"$OUT/summary.txt"

for model in $MODELS; do
    log "model $model: http and ws"
    start_server "$OUT/serve-$model.log" --model "$model" \
        --service http=127.0.0.1:0 --service ws=127.0.0.1:0
    pid=$SERVER_PID
    http_port=$(port_of "$OUT/serve-$model.log" http)
    ws_port=$(port_of "$OUT/serve-$model.log" ws)
    curl_checks "http://127.0.0.1:$http_port"
    case $model in
    single) conns=1 ;;  # one client at a time: others would wait for the whole run
    pool) conns=10 ;;   # keep-alive clients hold a worker each: one per worker
    *) conns=50 ;;
    esac
    wrk_run "$model" "http://127.0.0.1:$http_port/" "$conns"
    log "model $model: python websockets client"
    python3 .ci/ws_client.py "ws://127.0.0.1:$ws_port/"
    python3 .ci/ws_client.py "ws://127.0.0.1:$http_port/ws"
    stop_server "$pid"
    echo "ok   graceful shutdown (exit 0)"

    log "model $model: Autobahn (kosoku) against ws --echo"
    start_server "$OUT/serve-echo-$model.log" --model "$model" --service ws=127.0.0.1:0 --echo
    pid=$SERVER_PID
    echo_port=$(port_of "$OUT/serve-echo-$model.log" ws)
    python3 .ci/ws_client.py "ws://127.0.0.1:$echo_port/" --echo
    kosoku_run "$model" "$echo_port"
    stop_server "$pid"
done

if [[ -n "${FUZZ_SECS:-}" ]]; then
    # Opt-in (a nightly toolchain and cargo-fuzz are needed, and the build is long).
    log "fuzzing each target for ${FUZZ_SECS}s"
    for target in http_request ws_frames; do
        work="$OUT/fuzz-corpus-$target"
        mkdir -p "$work"
        (cd fuzz && cargo +nightly fuzz run -O "$target" "$work" "corpus/$target" -- \
            -max_total_time="$FUZZ_SECS" -rss_limit_mb=2048) >"$OUT/fuzz-$target.log" 2>&1 ||
            fail "fuzz target $target: $(tail -20 "$OUT/fuzz-$target.log")"
        echo "fuzz $target: $(grep -E '^Done' "$OUT/fuzz-$target.log")" | tee -a "$OUT/summary.txt"
    done
fi

log "summary"
cat "$OUT/summary.txt"
echo "web.sh: all checks passed"
