#!/bin/sh
# 19,000 idle ack connections held against a freshly started server, 3 times per
# server: established/refused/reset and server RSS per connection from /proc.
# Usage: bench/hold-19k.sh NAME 'COMMAND with {port}' [CONNS]
set -eu
cd "$(dirname "$0")/.."
. bench/lib.sh
B=target/release/multiclient
name=$1; cmd=$2; conns=${3:-19000}
for run in 1 2 3; do
  start_server "$name" "$cmd" || exit 1
  echo "== $name run $run (pid $pid)"
  nice -n -20 taskset -c 0 $B bench hold --addr 127.0.0.1:$port --conns "$conns" --ramp ${RAMP:-2000} --secs 2 \
    --timeout 10 --src-ips 8 --server-pid $pid --threads 1 --json | python3 -c '
import json,sys; r=json.load(sys.stdin)
print("established %(established)d refused %(refused)d reset %(reset)d closed %(closed)d timeout %(timeout)d other %(other)d" % r)
print("rss %s -> %s KiB with %s held, threads %s -> %s, %.2f KiB/conn" % (r["rss_before_kib"], r["rss_held_kib"], r["established_at_sample"], r["threads_before"], r["threads_held"], r["kib_per_conn"] or 0))'
  kill $pid; wait $pid 2>/dev/null || true
  sleep 1
done
