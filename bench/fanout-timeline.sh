#!/bin/sh
# Which thread ran on which CPU during our 10,000-member fan-outs: our chat (async, 2
# workers) and the chat tester (one thread) as in bench/fanout-floor.sh, with the
# scheduler's switches recorded on every CPU for SECS seconds of the sending phase;
# prints each fan-out's window (from the server's first run to its last) with the CPU
# time of every thread in it (bench/sched-timeline.py; ROWS=1 adds a line per 4 ms).
# A fan-out's window is about the server's and the tester's CPU over two cores when
# both cores stay busy; one that runs longer shows what else happened.
#
# Usage: bench/fanout-timeline.sh   (SECS=6 MEMBERS=10000; as root, with perf)
# Needs: cargo build --release --bin multiclient; perf.
set -eu
cd "$(dirname "$0")/.."
. bench/lib.sh
B=${B:-target/release/multiclient}
SECS=${SECS:-6}
MEMBERS=${MEMBERS:-10000}
results timeline "SECS=$SECS MEMBERS=$MEMBERS"
port=$(free_port)
setsid $B serve --model async --workers 2 --max-conns 19000 --service chat=127.0.0.1:$port >/dev/null 2>&1 &
pid=$!
wait_port "$port" || { kill $pid; exit 1; }
$B bench chat --addr 127.0.0.1:$port --members "$MEMBERS" --rooms 1 --rate 1 \
  --secs $((SECS + 4)) --src-ips 2 --threads 1 --ramp 4000 --server-pid $pid --json \
  > "$OUT/report.json" 2>"$OUT/tester.err" </dev/null &
tester=$!
# The members connect at 4,000 a second; the sending starts after them.
sleep $((MEMBERS / 4000 + 3))
perf record -q -e sched:sched_switch -a -o "$OUT/sched.data" -- sleep "$SECS" >/dev/null 2>&1
wait $tester || true
kill $pid; wait $pid 2>/dev/null || true
perf script -i "$OUT/sched.data" -F pid,tid,cpu,time,event,trace 2>/dev/null > "$OUT/sched.txt"
rm -f "$OUT/sched.data" "$RAW"
[ -s "$OUT/tester.err" ] || rm -f "$OUT/tester.err"
python3 bench/sched-timeline.py $pid $tester "$OUT/sched.txt" ${ROWS:+--rows} | tee "$OUT/windows.txt"
gzip "$OUT/sched.txt"
