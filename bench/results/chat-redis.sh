#!/usr/bin/env bash
# The chat over Redis under load, for one or more builds of multiclient (say, before and
# after a change to the Redis bridge), interleaved run by run. A fresh redis-server and
# a fresh server per run, the server and Redis pinned to core 0, the tester to core 1.
# Workloads (`bench chat`):
#   join    10,000 members join one room at once (the setup is what is measured:
#           connect, JOIN, warm-up), then 5 s at 5 msg/s
#   rooms   1,000 members in 100 rooms, 100 senders, 10,000 msg/s for 10 s (every
#           message is a Redis script: the bridge's request rate)
#   fanout  1,000 members in one room, 200 msg/s for 10 s (200,000 deliveries/s)
#   mem     as `join`, without Redis (the hub alone), for reference
# Usage: bench/results/chat-redis.sh OUT.jsonl BIN [BIN...]
# Env: RUNS (3), WORKLOADS ("join rooms fanout"; add "mem" for the reference).
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/lib.sh
OUT=$1
shift
RUNS=${RUNS:-3}
WORKLOADS=${WORKLOADS:-"join rooms fanout"}
PORT=${PORT:-17800}
REDIS_PORT=${REDIS_PORT:-17899}
: >"$OUT"


RPID=
SPID=
cleanup() {
    [ -n "$SPID" ] && kill "$SPID" 2>/dev/null || true
    [ -n "$RPID" ] && kill "$RPID" 2>/dev/null || true
}
trap cleanup EXIT

for run in $(seq "$RUNS"); do
    for w in $WORKLOADS; do
        case $w in
            join | mem) args=(--members 10000 --rooms 1 --rate 5 --secs 5) ;;
            rooms) args=(--members 1000 --rooms 100 --senders 100 --rate 10000 --secs 10) ;;
            fanout) args=(--members 1000 --rooms 1 --rate 200 --secs 10) ;;
            *) echo "unknown workload $w" >&2; exit 2 ;;
        esac
        for bin in "$@"; do
            PORT=$((PORT + 1))
            redis=()
            if [ "$w" != mem ]; then
                taskset -c 0 redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' \
                    --appendonly no >/dev/null 2>&1 &
                RPID=$!
                wait_port "$REDIS_PORT"
                redis=(--redis "redis://127.0.0.1:$REDIS_PORT")
            fi
            taskset -c 0 "$bin" serve -q --service chat --model async --addr "127.0.0.1:$PORT" \
                --max-conns 12000 "${redis[@]}" >/dev/null 2>&1 &
            SPID=$!
            wait_port "$PORT"
            start=$(date +%s.%N)
            json=$(RUST_BACKTRACE=0 taskset -c 1 "$bin" bench chat --addr "127.0.0.1:$PORT" \
                "${args[@]}" --src-ips 4 --threads 1 --server-pid "$SPID" \
                --setup-timeout 200 --json 2>/tmp/chat-redis-bench.err) || true
            wall=$(echo "$(date +%s.%N) - $start" | bc)
            err=$(grep -m1 '^Error' /tmp/chat-redis-bench.err || true)
            kill "$SPID"; wait "$SPID" 2>/dev/null || true; SPID=
            if [ -n "$RPID" ]; then kill "$RPID"; wait "$RPID" 2>/dev/null || true; RPID=; fi
            BIN="$bin" W="$w" RUN="$run" WALL="$wall" ERR="$err" JSON="$json" python3 -c '
import json, os
r = {"bin": os.environ["BIN"], "workload": os.environ["W"], "run": int(os.environ["RUN"]),
     "wall_secs": float(os.environ["WALL"]), "error": os.environ["ERR"] or None}
try:
    r.update(json.loads(os.environ["JSON"]))
except ValueError:
    pass
print(json.dumps(r))' | tee -a "$OUT" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read()); s = r.get("server") or {}
if "deliveries_per_sec" in r:
    print("%s %s run %d: setup %.1f s, %.0f deliv/s, p99 %.0f ms, cpu %.2f us/deliv, errors %d%s" % (
        r["bin"], r["workload"], r["run"], r["setup_secs"], r["deliveries_per_sec"],
        r["latency"]["p99_us"] / 1000, s.get("cpu_us_per_op", 0), sum(r["errors"].values()),
        " (" + r["error"] + ")" if r["error"] else ""), file=sys.stderr)
else:
    print("%s %s run %d: FAILED after %.1f s: %s" % (r["bin"], r["workload"], r["run"],
        r["wall_secs"], r["error"]), file=sys.stderr)'
        done
    done
done
