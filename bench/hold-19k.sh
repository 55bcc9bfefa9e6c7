#!/bin/sh
# 19,000 idle ack connections held against a freshly started server, 3 times per
# server: established/refused/reset and server RSS per connection from /proc.
# Usage: bench/hold-19k.sh NAME 'COMMAND with {port}' [CONNS]
set -eu
cd "$(dirname "$0")/.."
B=target/release/multiclient
name=$1; cmd=$2; conns=${3:-19000}
for run in 1 2 3; do
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  c=$(echo "$cmd" | sed "s/{port}/$port/g")
  nice -n -20 taskset -c 1 sh -c "exec $c" >/dev/null 2>&1 &
  pid=$!
  i=0; until python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),1)" 2>/dev/null; do
    i=$((i+1)); [ $i -lt 100 ] || { echo "$name did not start"; kill $pid; exit 1; }; sleep 0.1; done
  sleep 0.5
  echo "== $name run $run (pid $pid)"
  nice -n -20 taskset -c 0 $B bench hold --addr 127.0.0.1:$port --conns "$conns" --ramp ${RAMP:-2000} --secs 2 \
    --timeout 10 --src-ips 8 --server-pid $pid --threads 1 --json | python3 -c '
import json,sys; r=json.load(sys.stdin)
print("established %(established)d refused %(refused)d reset %(reset)d closed %(closed)d timeout %(timeout)d other %(other)d" % r)
print("rss %s -> %s KiB with %s held, threads %s -> %s, %.2f KiB/conn" % (r["rss_before_kib"], r["rss_held_kib"], r["established_at_sample"], r["threads_before"], r["threads_held"], r["kib_per_conn"] or 0))'
  kill $pid; wait $pid 2>/dev/null || true
  sleep 1
done
