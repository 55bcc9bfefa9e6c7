#!/bin/sh
# One room of MEMBERS (default 10,000) with both cores: the time from a SAY to its last
# delivery, and server CPU per delivery, for our chat (async, 2 workers) beside two
# floors measured in the same run:
#   - the floor server (bench/peers/floor_chat.rs): one non-blocking `send` per member
#     per message and nothing else, read by the same tester as ours, whose readers
#     wait in epoll as they do for ours;
#   - the bare send loop (bench/send-floor.py): MEMBERS sends of a chat line to sockets
#     nobody waits on (they are drained between rounds), so no send wakes a reader. It
#     is the lower bound of any server whose clients sleep until data comes.
# and the tokio chat example (bench/peers/tokio_chat.rs) as the peer. Each run of a
# server publishes RATE × SECS messages: the table shows its median fan-out (the
# median over the messages of each one's last delivery) beside the send loop's median
# round, and its slowest fan-out beside the loop's slowest round. Runs are
# interleaved (run 1 of every server, then run 2, ...), a fresh server each run, in a
# session of its own, unpinned; the tester uses one thread over 2 source addresses and
# connects 4,000 members a second (the peers' listen backlog of 1,024 drops a storm's
# SYNs, and their retries would time the setup out).
# Prints the raw lines and the table of medians; both are kept in $OUT (default
# bench/results/fanout-<time>).
#
# Usage: bench/fanout-floor.sh   (RUNS=3 MEMBERS=10000 RATE=1 SECS=10; A=BIN runs another
# build of ours as `a`, right after ours, in every round)
# Needs: cargo build --release --bin multiclient --examples.
set -eu
cd "$(dirname "$0")/.."
. bench/lib.sh
B=target/release/multiclient
E=${E:-target/release/examples}
RUNS=${RUNS:-3}
MEMBERS=${MEMBERS:-10000}
RATE=${RATE:-1}
SECS=${SECS:-10}
results fanout "RUNS=$RUNS MEMBERS=$MEMBERS RATE=$RATE SECS=$SECS"

A=${A:-}
OURS="serve --model async --workers 2 --max-conns 19000 --service chat=127.0.0.1:{port}"
for run in $(seq 1 "$RUNS"); do
  for spec in "floor-server=$E/floor_chat {port}" \
              "ours=$B $OURS" \
              ${A:+"a=$A $OURS"} \
              "tokio-chat=$E/peer_tokio_chat {port}"; do
    name=${spec%%=*}; port=$(free_port); cmd=$(echo "${spec#*=}" | sed "s/{port}/$port/")
    setsid sh -c "exec $cmd" >/dev/null 2>&1 &
    pid=$!
    wait_port "$port" || { echo "$name did not start"; kill "$pid"; continue; }
    sleep 0.5
    load=$(cut -d' ' -f1 /proc/loadavg)
    $B bench chat --addr 127.0.0.1:$port --members "$MEMBERS" --rooms 1 --rate "$RATE" \
      --secs "$SECS" --src-ips 2 --threads 1 --ramp 4000 --server-pid $pid --json \
      > "$OUT/last.json" 2>"$OUT/$name-$run.err" </dev/null || true
    kill $pid; wait $pid 2>/dev/null || true
    [ -s "$OUT/$name-$run.err" ] || rm -f "$OUT/$name-$run.err"
    python3 - "$name" "$run" "$load" "$OUT/last.json" <<'PY' | tee -a "$RAW"
import json, sys
name, run, load, js = sys.argv[1:]
try:
    r = json.load(open(js))
    l, sv, ld = r["latency"], r.get("server") or {}, r["last_delivery"]
    missing = r["expected_deliveries"] - r["deliveries"]
    print("\t".join([name, run, load, "%.2f" % (ld["p50_us"] / 1000), "%.2f" % (ld["max_us"] / 1000),
                     "%.2f" % (l["p99_us"] / 1000), "%.2f" % sv.get("cpu_us_per_op", float("nan")),
                     str(missing)]))
except Exception:
    print("\t".join([name, run, load, "nan", "nan", "nan", "nan", "failed"]))
PY
    sleep 1
  done
  # The bare loop: wall per send times MEMBERS is one fan-out's last delivery (its
  # median round and its slowest).
  load=$(cut -d' ' -f1 /proc/loadavg)
  python3 bench/send-floor.py "$MEMBERS" 10 | tee "$OUT/send-floor-$run.txt" | python3 -c '
import re, sys
t = sys.stdin.read()
wall = float(re.search(r"wall p50 ([0-9.]+)", t).group(1))
worst = float(re.search(r"max ([0-9.]+)", t).group(1))
cpu = float(re.search(r"CPU p50 ([0-9.]+)", t).group(1))
n = int(sys.argv[1])
print("\t".join(["send-loop", sys.argv[2], sys.argv[3], "%.2f" % (wall * n / 1000), "%.2f" % (worst * n / 1000), "nan", "%.2f" % cpu, "0"]))
' "$MEMBERS" "$run" "$load" | tee -a "$RAW"
done
rm -f "$OUT/last.json"

python3 - "$RAW" <<'PY' | tee "$OUT/table.md"
import sys, statistics as st
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
order, data = [], {}
# Per server and round: its median fan-out's last delivery, its slowest fan-out's, p99
# of every delivery, CPU per delivery (for the send loop: its median and slowest round).
for name, run, load, mid, mx, p99, cpu, missing in rows:
    if name not in data:
        order.append(name)
    data.setdefault(name, []).append((float(mid), float(mx), float(p99), float(cpu), missing, float(load), run))
# Failed runs (no report) are left out of the medians; the missing column shows them.
ok = {n: [x for x in d if x[0] == x[0]] or d for n, d in data.items()}
med = {n: [st.median(x[k] for x in d) for k in range(4)] for n, d in ok.items()}
nan4 = [float("nan")] * 4
fs, fl = med.get("floor-server", nan4), med.get("send-loop", nan4)
# Paired: the median over rounds of a figure over the send loop's in the same round,
# which the machine's drift from round to round moves less than the medians.
loop = {x[6]: x for x in data.get("send-loop", [])}
def paired(d, k):
    r = [x[k] / loop[x[6]][k] for x in d if x[k] == x[k] and x[6] in loop and loop[x[6]][k] > 0]
    return "%.2f" % st.median(r) if r else "nan"
print("| server | median fan-out's last delivery, ms (runs) | median | × floor server | × send loop's median round (paired) | slowest fan-out's, ms (runs) | median | × send loop's slowest round (paired) | p99 ms | CPU µs/delivery (runs) | median | × floor server | × send loop | missing | load |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for n in order:
    d = data[n]
    mid, mx, p99, cpu = med[n]
    print("| %s | %s | %.1f | %.2f | %.2f (%s) | %s | %.1f | %.2f (%s) | %.1f | %s | %.2f | %.2f | %.2f | %s | %.1f–%.1f |" % (
        n, ", ".join("%.1f" % x[0] for x in d), mid, mid / fs[0], mid / fl[0], paired(d, 0),
        ", ".join("%.1f" % x[1] for x in d), mx, mx / fl[1], paired(d, 1), p99,
        ", ".join("%.2f" % x[3] for x in d), cpu, cpu / fs[3], cpu / fl[3], "/".join(x[4] for x in d),
        min(x[5] for x in d), max(x[5] for x in d)))
PY
