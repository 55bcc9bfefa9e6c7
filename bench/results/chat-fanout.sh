#!/usr/bin/env bash
# Chat fan-out: our chat service (async model, in memory and over Redis) and the tokio
# chat peer, each measured by `bench chat` with the server pinned to core 0 and the
# tester to core 1, RUNS times per configuration, a fresh server per run (leaving
# members are a storm of PART events that would bleed into the next run).
# Usage: bench/results/chat-fanout.sh [OUT.jsonl]   (after cargo build --release
#        --bin multiclient --example peer_tokio_chat)
# Env: RUNS (3), SECS (10), CONFIGS ("1000:50 10000:5" = members:msgs/s),
#      SERVERS ("ours peer"; also "ours0" for ours with --coalesce 0, and "redis"
#      for ours over a local redis-server; "base" and "baseredis" are "ours" and
#      "redis" run from the binary $BASE, for a before/after comparison in one run).
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/lib.sh
OUT=${1:-target/chat-fanout.jsonl}
RUNS=${RUNS:-3}
SECS=${SECS:-10}
CONFIGS=${CONFIGS:-"1000:50 10000:5"}
SERVERS=${SERVERS:-"ours peer"}
# PIN=1 (default): server on CPU 0 (one worker), tester on CPU 1 with one thread.
# Servers run in their own session (setsid), as deployed: with the kernel's session
# autogroups, a server in the tester's session would share, and skew, its CPU share.
# PIN=0: nothing pinned, the server's async runtime and the peer's on both cores, the
# tester with two threads: the whole machine on one fan-out, for latency.
PIN=${PIN:-1}
if [ "$PIN" = 1 ]; then
    PIN_SERVER="setsid taskset -c 0" PIN_TESTER="taskset -c 1" TESTER_THREADS=1
else
    PIN_SERVER="setsid" PIN_TESTER="" TESTER_THREADS=2
fi
BIN=${BIN:-target/release/multiclient}
BASE=${BASE:-}
PEER=target/release/examples/peer_tokio_chat
PORT=${PORT:-17300}
REDIS_PORT=${REDIS_PORT:-17379}
: > "$OUT"


REDIS_PID=
cleanup() { [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null || true; }
trap cleanup EXIT
if [[ " $SERVERS " == *" redis "* || " $SERVERS " == *" baseredis "* ]]; then
    $PIN_SERVER redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' \
        --appendonly no >/dev/null 2>&1 &
    REDIS_PID=$!
    wait_port "$REDIS_PORT"
fi

for cfg in $CONFIGS; do
    members=${cfg%%:*}
    rate=${cfg##*:}
    # Run 1 of every server, then run 2, ...: a drift of the shared machine falls on
    # every server alike.
    for run in $(seq "$RUNS"); do
        for server in $SERVERS; do
            PORT=$((PORT + 1))
            case $server in
                ours) $PIN_SERVER "$BIN" serve -q --service chat --model async \
                          --addr "127.0.0.1:$PORT" --max-conns 12000 >/dev/null 2>&1 & ;;
                ours0) $PIN_SERVER "$BIN" serve -q --service chat --model async \
                          --addr "127.0.0.1:$PORT" --max-conns 12000 --coalesce 0 >/dev/null 2>&1 & ;;
                redis) $PIN_SERVER "$BIN" serve -q --service chat --model async \
                          --addr "127.0.0.1:$PORT" --max-conns 12000 \
                          --redis "redis://127.0.0.1:$REDIS_PORT" >/dev/null 2>&1 & ;;
                base) $PIN_SERVER "$BASE" serve -q --service chat --model async \
                          --addr "127.0.0.1:$PORT" --max-conns 12000 >/dev/null 2>&1 & ;;
                baseredis) $PIN_SERVER "$BASE" serve -q --service chat --model async \
                          --addr "127.0.0.1:$PORT" --max-conns 12000 \
                          --redis "redis://127.0.0.1:$REDIS_PORT" >/dev/null 2>&1 & ;;
                peer) $PIN_SERVER "$PEER" "$PORT" >/dev/null 2>&1 & ;;
            esac
            spid=$!
            wait_port "$PORT"
            # Syscalls of the server, counted per half second, to find those of the
            # sending phase alone (between the end of setup and the end of sending).
            perf stat -e raw_syscalls:sys_enter -I 500 -x, -o "$OUT.perf" -p "$spid" &
            perf_pid=$!
            json=$(RUST_BACKTRACE=0 $PIN_TESTER "$BIN" bench chat --addr "127.0.0.1:$PORT" \
                --members "$members" --rooms 1 --rate "$rate" --secs "$SECS" \
                --src-ips 4 --threads "$TESTER_THREADS" --server-pid "$spid" --json) || true
            kill -INT "$perf_pid" 2>/dev/null || true; wait "$perf_pid" 2>/dev/null || true
            kill "$spid"; wait "$spid" 2>/dev/null || true
            if [ -z "$json" ]; then
                echo "{\"target\":\"$server\",\"members\":$members,\"run\":$run,\"failed\":true}" >> "$OUT"
                echo "$server $members run $run: FAILED" >&2
                continue
            fi
            json=$(echo "$json" | python3 -c "
import json,sys
r=json.load(sys.stdin); r.update(target='$server', run=$run)
# perf -I -x, lines: time,count,unit,event,...; keep the sending phase with a margin.
lo, hi = r['setup_secs'] + 1.0, r['setup_secs'] + r['secs'] - 1.0
n = 0
for line in open('$OUT.perf'):
    f = line.split(',')
    if len(f) > 2 and not line.startswith('#'):
        try:
            t, c = float(f[0]), float(f[1])
        except ValueError:
            continue
        if lo < t <= hi:
            n += c
if hi > lo and r['deliveries_per_sec'] > 0:
    r['server_syscalls_per_delivery'] = n / ((hi - lo) * r['deliveries_per_sec'])
print(json.dumps(r))")
            echo "$json" >> "$OUT"
            echo "$json" | python3 -c "
import json,sys; r=json.load(sys.stdin); s=r['server'] or {}
print('$server $members x $rate run $run: %.0f deliv/s, p99 %d us, cpu %.3f us/deliv, %.3f syscalls/deliv, errors %d, drops %d' % (
  r['deliveries_per_sec'], r['latency']['p99_us'], s.get('cpu_us_per_op', 0),
  r.get('server_syscalls_per_delivery', -1),
  sum(r['errors'].values()), r['slow_consumer_drops']))" >&2
        done
    done
done
