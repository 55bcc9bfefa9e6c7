#!/bin/sh
# The chat beside Socket.IO: one room of MEMBERS (default 1,000), RATE messages a second
# (default 10) for SECS, server CPU per delivery (utime + stime from /proc over the
# sending phase). Each round runs, one after another, python-socketio
# (bench/peers/socketio_chat.py, driven by bench/socketio-load.py over Engine.IO's
# WebSocket transport), ours (`serve --service chat`, TCP lines, `bench chat`) and the
# tokio chat example (bench/peers/tokio_chat.rs, `bench chat`); servers on CPU 1,
# testers on CPU 0. Prints the raw lines and the medians; both are kept in $OUT
# (default bench/results/socketio-<time>).
#
# Usage: bench/socketio-chat.sh   (RUNS=3 MEMBERS=1000 RATE=10 SECS=10)
# Needs: cargo build --release --bin multiclient --examples;
#        pip install -r bench/peers/requirements.txt (python-socketio, aiohttp, websockets).
set -eu
cd "$(dirname "$0")/.."
. bench/lib.sh
B=target/release/multiclient
E=${E:-target/release/examples}
RUNS=${RUNS:-3}
MEMBERS=${MEMBERS:-1000}
RATE=${RATE:-10}
SECS=${SECS:-10}
results socketio "RUNS=$RUNS MEMBERS=$MEMBERS RATE=$RATE SECS=$SECS"

for run in $(seq 1 "$RUNS"); do
  for spec in "socketio=python3 bench/peers/socketio_chat.py {port}" \
              "ours=$B serve --model async --service chat=127.0.0.1:{port}" \
              "tokio-chat=$E/peer_tokio_chat {port}"; do
    name=${spec%%=*}; port=$(free_port); cmd=$(echo "${spec#*=}" | sed "s/{port}/$port/")
    # shellcheck disable=SC2086
    taskset -c 1 $cmd >/dev/null 2>&1 &
    pid=$!
    wait_port "$port" || { echo "$name did not start"; kill "$pid" 2>/dev/null || true; continue; }
    load=$(cut -d' ' -f1 /proc/loadavg)
    if [ "$name" = socketio ]; then
      nice -n -20 taskset -c 0 python3 bench/socketio-load.py "$port" "$pid" "$MEMBERS" "$RATE" "$SECS" \
        >"$OUT/last.json" 2>"$OUT/$name-$run.err" </dev/null || true
    else
      nice -n -20 taskset -c 0 $B bench chat --addr 127.0.0.1:$port --members "$MEMBERS" --rooms 1 \
        --rate "$RATE" --secs "$SECS" --threads 1 --server-pid $pid --json \
        >"$OUT/last.json" 2>"$OUT/$name-$run.err" </dev/null || true
    fi
    kill $pid; wait $pid 2>/dev/null || true
    [ -s "$OUT/$name-$run.err" ] || rm -f "$OUT/$name-$run.err"
    python3 - "$name" "$run" "$load" "$OUT/last.json" <<'PY' | tee -a "$RAW"
import json, sys
name, run, load, js = sys.argv[1:]
try:
    r = json.load(open(js))
    if "server" in r:  # bench chat's report
        got, exp = r["deliveries"], r["expected_deliveries"]
        cpu, p99 = r["server"]["cpu_us_per_op"], r["latency"]["p99_us"]
        bad = sum(v for v in r["errors"].values() if isinstance(v, int))
    else:
        got, exp = r["deliveries"], r["expected_deliveries"]
        cpu, p99, bad = r["server_cpu_us_per_delivery"], r["p99_us"], r["out_of_order"]
    print("\t".join([name, run, load, str(got), str(exp), "%.2f" % cpu, "%.1f" % (p99 / 1000), str(bad)]))
except Exception:
    print("\t".join([name, run, load, "nan", "nan", "nan", "nan", "failed"]))
PY
  done
done
rm -f "$OUT/last.json"

python3 - "$RAW" <<'PY' | tee "$OUT/table.md"
import sys, statistics as st
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
order, data = [], {}
for name, run, load, got, exp, cpu, p99, bad in rows:
    if name not in data:
        order.append(name)
    data.setdefault(name, []).append((float(cpu), got, exp, float(p99), bad, float(load)))
med = {n: st.median(x[0] for x in d if x[0] == x[0]) for n, d in data.items()}
ours = med.get("ours", float("nan"))
print("| server | CPU µs per delivery (runs) | median | × ours | delivered / expected | p99 ms (median) | errors | load |")
print("|---|---|---|---|---|---|---|---|")
for n in order:
    d = data[n]
    print("| %s | %s | %.2f | %.2f | %s | %.1f | %s | %.1f–%.1f |" % (
        n, ", ".join("%.2f" % x[0] for x in d), med[n], med[n] / ours,
        ", ".join("%s/%s" % (x[1], x[2]) for x in d), st.median(x[3] for x in d),
        "/".join(x[4] for x in d), min(x[5] for x in d), max(x[5] for x in d)))
PY
