#!/bin/sh
# The opening table of BENCHMARKS.md: per protocol, the do-nothing floor
# (bench/peers/floor_*.rs, tokio_ack.rs), our server with every default on (limits,
# timeouts, Date header, info logs to /dev/null, the admin listener if its port is
# free) and the peers users pick, each measured with `multiclient bench`:
#   - server CPU per operation at a fixed offered rate (open loop, `--rate`);
#   - throughput when saturated (closed loop), and its CPU per operation.
# Runs are interleaved: for each workload, run 1 of every server, then run 2, ...; a
# fresh server each run, pinned to CPU 1 at nice -20 in a session of its own, the
# tester on CPU 0 with one thread. The load average is written beside every run.
# Prints the raw lines as it goes and, at the end, the table of medians with every
# server's ratio to the floor; both are kept in $OUT (default
# bench/results/floors-<time>).
#
# TOGETHER=1 (fixed-rate workloads): in each run every server of the protocol runs at
# once, each with its own tester, so all of them meet the same machine (a neighbour's
# load, the host's clock) and a run's ratio to the floor cancels it; the table's
# "paired" column is the median of those per-run ratios. ONLY='floor ours' keeps just
# the servers named.
#
# A=BIN (another build of ours, the parent commit's say) adds its server as `a`, run
# like ours: with TOGETHER=1 each run then has both builds side by side, and the
# table's last lines give ours over `a` per run and their median.
#
# Usage: bench/floors.sh [WORKLOAD ...]   (default: all; RUNS=3 SECS=5)
#   workloads: ack-rate ack-sat http-rate http-sat http-pipe http-pipe-rate ws-rate ws-sat
#              chat-rate chat-sat
# Needs: cargo build --release --bin multiclient --examples; nginx (apt-get install
# nginx-light; its row is skipped without it); python3 with websockets
# (pip install -r bench/peers/requirements.txt).
set -eu
cd "$(dirname "$0")/.."
. bench/lib.sh
B=${B:-target/release/multiclient}
E=${E:-target/release/examples}
RUNS=${RUNS:-3}
SECS=${SECS:-5}
# The fixed offered rates (operations per second in total; chat: messages per second
# to 1,000 members, so deliveries are 1,000 times that; pipelined http: batches of 16
# per second, so requests are 16 times that). Low enough that the tester
# keeps up on the shared 2-core machine: a starved tester measures the load, not the
# server.
ACK_RATE=${ACK_RATE:-10000}
HTTP_RATE=${HTTP_RATE:-10000}
WS_RATE=${WS_RATE:-5000}
CHAT_RATE=${CHAT_RATE:-10}
PIPE_RATE=${PIPE_RATE:-20000}
results floors "RUNS=$RUNS SECS=$SECS ACK_RATE=$ACK_RATE HTTP_RATE=$HTTP_RATE WS_RATE=$WS_RATE CHAT_RATE=$CHAT_RATE PIPE_RATE=$PIPE_RATE"

OURS="$B serve --model async"
A=${A:-}
NGINX=
if command -v nginx >/dev/null 2>&1; then NGINX="nginx=bench/peers/nginx_hello.sh {port}"; fi

# The servers of each protocol, floor first: NAME=COMMAND with {port}.
servers() {
  case $1 in
    ack) set -- "floor=$E/peer_tokio_ack {port}" \
           "ours=$OURS --service ack=127.0.0.1:{port}" \
           "py-asyncio=python3 bench/peers/asyncio_ack.py {port}" ;;
    http) set -- "floor=$E/floor_http {port}" \
            "floor-head=$E/floor_http {port} head" \
            "ours=$OURS --service http=127.0.0.1:{port}" \
            ${NGINX:+"$NGINX"} \
            "hyper=$E/peer_hyper_hello {port}" ;;
    ws) set -- "floor=$E/floor_ws {port}" \
          "ours=$OURS --service ws=127.0.0.1:{port}" \
          "tungstenite=$E/peer_tungstenite_ws {port}" \
          "py-websockets=python3 bench/peers/ws_echo.py {port}" ;;
    chat) set -- "floor=$E/floor_chat {port}" \
            "ours=$OURS --service chat=127.0.0.1:{port}" \
            "tokio-chat=$E/peer_tokio_chat {port}" ;;
  esac
  for s in "$@"; do
    printf '%s\n' "$s"
    # The other build, right after ours, with ours' arguments.
    case $s in ours=*) [ -z "$A" ] || printf 'a=%s\n' "$A serve --model async${s#ours="$OURS"}" ;; esac
  done
}

# The bench arguments of each workload (without --addr, --threads, --server-pid).
args() {
  case $1 in
    ack-rate) echo "ack --conns 100 --rate $ACK_RATE --secs $SECS" ;;
    ack-sat) echo "ack --conns 100 --secs $SECS" ;;
    http-rate) echo "http --conns 100 --rate $HTTP_RATE --secs $SECS" ;;
    http-sat) echo "http --conns 100 --secs $SECS" ;;
    http-pipe) echo "http --conns 10 --pipeline 16 --secs $SECS" ;;
    http-pipe-rate) echo "http --conns 10 --pipeline 16 --rate $PIPE_RATE --secs $SECS" ;;
    ws-rate) echo "ws --conns 100 --rate $WS_RATE --secs $SECS" ;;
    ws-sat) echo "ws --conns 100 --secs $SECS" ;;
    chat-rate) echo "chat --members 1000 --rate $CHAT_RATE --secs $SECS" ;;
    chat-sat) echo "chat --members 1000 --rate 100 --secs $SECS" ;;
  esac
}

ONLY=${ONLY:-}
TOGETHER=${TOGETHER:-}
# Whether server NAME is measured (ONLY unset: all).
keep() { [ -z "$ONLY" ] || case " $ONLY " in *" $1 "*) true ;; *) false ;; esac; }

# tester PORT PID JSON: one run of `bench $a` against the server on PORT (process PID),
# on CPU 0, its JSON report written to JSON and what it says on stderr to JSON.err
# (kept in $OUT by `report` when the run failed).
tester() {
  # shellcheck disable=SC2086
  nice -n -20 taskset -c 0 $B bench $a --addr 127.0.0.1:$1 --threads 1 \
    --server-pid $2 --json >"$3" 2>"$3.err" </dev/null
}

# report WORKLOAD NAME RUN LOAD JSON: the raw line of one run, appended to $RAW; a
# failed run's stderr is kept as $OUT/failed-WORKLOAD-NAME-RUN.txt.
report() {
  python3 - "$OUT" "$@" <<'PY' | tee -a "$RAW"
import json, os, shutil, sys
out, w, name, run, load, js = sys.argv[1:]
try:
    r = json.load(open(js))
except Exception:
    if os.path.exists(js + ".err"):
        shutil.copy(js + ".err", "%s/failed-%s-%s-%s.txt" % (out, w, name, run))
    print("\t".join([w, name, run, load, "nan", "nan", "nan", "failed"]))
    sys.exit()
sv = r.get("server") or {}
if "deliveries_per_sec" in r:
    ops, errs = r["deliveries_per_sec"], r["errors"]
    errs = sum(v for v in errs.values() if isinstance(v, int))
else:
    ops, errs = r["throughput"], sum(r["errors"].values())
print("\t".join([w, name, run, load, "%.0f" % ops, "%.3f" % sv.get("cpu_us_per_op", float("nan")),
                 str(r["latency"]["p99_us"]), str(errs)]))
PY
}

[ $# -gt 0 ] || set -- ack-rate ack-sat http-rate http-sat http-pipe ws-rate ws-sat chat-rate chat-sat
for w in "$@"; do
  proto=${w%%-*}
  a=$(args "$w")
  [ -n "$a" ] || { echo "unknown workload $w" >&2; exit 2; }
  for run in $(seq 1 "$RUNS"); do
    if [ -n "$TOGETHER" ]; then
      # Every server first, then every tester at once; servers are this shell's
      # children (no pipe), so each is ended by its PID.
      servers "$proto" >"$OUT/specs"
      : >"$OUT/started"
      while IFS= read -r spec; do
        name=${spec%%=*}
        keep "$name" || continue
        start_server "$name" "${spec#*=}" </dev/null || continue
        echo "$name $pid $port" >>"$OUT/started"
      done <"$OUT/specs"
      load=$(cut -d' ' -f1 /proc/loadavg)
      testers=
      while read -r name spid sport; do
        tester "$sport" "$spid" "$OUT/last-$name.json" &
        testers="$testers $!"
      done <"$OUT/started"
      # shellcheck disable=SC2086
      wait $testers || true
      while read -r name spid sport; do
        kill "$spid"; wait "$spid" 2>/dev/null || true
        report "$w" "$name" "$run" "$load" "$OUT/last-$name.json"
        rm -f "$OUT/last-$name.json" "$OUT/last-$name.json.err"
      done <"$OUT/started"
      rm -f "$OUT/specs" "$OUT/started"
      sleep 1
      continue
    fi
    servers "$proto" | while IFS= read -r spec; do
      name=${spec%%=*}; cmd=${spec#*=}
      keep "$name" || continue
      start_server "$name" "$cmd" </dev/null || continue
      load=$(cut -d' ' -f1 /proc/loadavg)
      tester "$port" "$pid" "$OUT/last.json" || true
      kill $pid; wait $pid 2>/dev/null || true
      report "$w" "$name" "$run" "$load" "$OUT/last.json"
      rm -f "$OUT/last.json.err"
      sleep 1
    done
  done
done
rm -f "$OUT/last.json"

# The table: medians per workload and server, ratios to the floor.
python3 - "$RAW" <<'PY' | tee "$OUT/table.md"
import sys, statistics as st
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
order, data = [], {}
for w, name, run, load, ops, cpu, p99, errs in rows:
    if (w, name) not in data:
        order.append((w, name))
    data.setdefault((w, name), []).append((float(ops), float(cpu), int(p99) if p99 != "nan" else -1, errs, float(load), run))
print("| workload | server | ops/s (runs) | median ops/s | CPU µs/op (runs) | median CPU µs/op | × floor CPU | × floor CPU, paired | × floor ops/s | p99 µs (median run) | errors | load |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
med = {}
for w, name in order:
    # Failed runs (no report) are left out of the medians; the errors column shows them.
    d = [x for x in data[(w, name)] if x[0] == x[0]] or data[(w, name)]
    ops = st.median(x[0] for x in d)
    cpu = st.median(x[1] for x in d)
    med[(w, name)] = (ops, cpu)
for w, name in order:
    d = data[(w, name)]
    ops, cpu = med[(w, name)]
    fops, fcpu = med.get((w, "floor"), (float("nan"), float("nan")))
    mid = sorted(d, key=lambda x: x[0])[len(d) // 2]
    # Each run's CPU per operation over the floor's in the same run (the floor's run
    # just before, or beside it with TOGETHER=1), then their median.
    floor_run = {x[5]: x[1] for x in data.get((w, "floor"), []) if x[1] == x[1]}
    pairs = [x[1] / floor_run[x[5]] for x in d if x[1] == x[1] and x[5] in floor_run]
    paired = st.median(pairs) if pairs else float("nan")
    print("| %s | %s | %s | %.0f | %s | %.2f | %.2f | %.2f | %.2f | %d | %s | %s |" % (
        w, name, ", ".join("%.0f" % x[0] for x in d), ops, ", ".join("%.2f" % x[1] for x in d), cpu,
        cpu / fcpu, paired, ops / fops, mid[2], "/".join(x[3] for x in d),
        "%.0f–%.0f" % (min(x[4] for x in d), max(x[4] for x in d))))
# With A=: ours over the other build, run by run (the CPU per operation of each).
for w in dict.fromkeys(w for w, _ in order):
    a = {x[5]: x[1] for x in data.get((w, "a"), []) if x[1] == x[1]}
    r = [x[1] / a[x[5]] for x in data.get((w, "ours"), []) if x[1] == x[1] and x[5] in a]
    if r:
        print("\n%s: ours / a, CPU per operation, per run: %s; median %.3f" % (
            w, " ".join("%.3f" % v for v in r), st.median(r)))
PY
