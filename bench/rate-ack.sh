#!/bin/sh
# Server CPU per ACK round trip at a fixed offered rate (open loop), with syscalls per
# round trip: each server in turn, RUNS times (default 3), a fresh server each run,
# pinned to CPU 1 and the tester to CPU 0. Prints one line per run.
# Usage: bench/rate-ack.sh RATE NAME='COMMAND with {port}' [NAME='COMMAND' ...]
set -eu
cd "$(dirname "$0")/.."
. bench/lib.sh
B=target/release/multiclient
rate=$1; shift
for run in $(seq 1 "${RUNS:-3}"); do
  for spec in "$@"; do
    name=${spec%%=*}; cmd=${spec#*=}
    start_server "$name" "$cmd" || exit 1
    perf stat -x, -e raw_syscalls:sys_enter -p $pid -o /tmp/rate-ack.perf.$$ &
    perf=$!
    nice -n -20 taskset -c 0 $B bench ack --addr 127.0.0.1:$port --conns 100 --rate "$rate" --secs 5 \
      --threads 1 --server-pid $pid --json > /tmp/rate-ack.json.$$
    kill -INT $perf; wait $perf 2>/dev/null || true
    kill $pid; wait $pid 2>/dev/null || true
    python3 - "$name" "$run" /tmp/rate-ack.json.$$ /tmp/rate-ack.perf.$$ <<'PY'
import json, sys
name, run, js, pf = sys.argv[1:]
r = json.load(open(js))
sc = [l.split(',')[0] for l in open(pf) if 'raw_syscalls' in l]
errs = sum(r['errors'].values())
sv = r['server'] or {}
print("%-12s run %s: %7.0f ops/s  %5.2f us CPU/op  %.2f syscalls/op  p99 %d us  errors %d" % (
    name, run, r['throughput'], sv.get('cpu_us_per_op', float('nan')),
    int(sc[0]) / max(r['ok'], 1) if sc and sc[0].isdigit() else float('nan'),
    r['latency']['p99_us'], errs))
PY
    sleep 1
  done
done
rm -f /tmp/rate-ack.json.$$ /tmp/rate-ack.perf.$$
