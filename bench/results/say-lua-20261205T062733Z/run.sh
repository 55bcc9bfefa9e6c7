#!/bin/sh
# say.lua before (aa160c61) and after (b69361b6, the author's rejoin) on one
# redis-server, no subscribers: EVALSHA x 200,000 from redis-benchmark (4 clients,
# pinned to CPU 1), Redis's own usec_per_call (INFO commandstats), alternating, 5 rounds.
set -eu
cd "$(dirname "$0")"
redis-server --port 6399 --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
rpid=$!
trap 'kill $rpid' EXIT
sleep 0.5
O=$(redis-cli -p 6399 SCRIPT LOAD "$(cat say-aa160c61.lua)")
N=$(redis-cli -p 6399 SCRIPT LOAD "$(cat say-b69361b6.lua)")
for r in 1 2 3 4 5; do
  redis-cli -p 6399 CONFIG RESETSTAT >/dev/null
  taskset -c 1 redis-benchmark -p 6399 -n 200000 -c 4 -q EVALSHA "$O" 4 seq hist chan cur 1000 lobby ann hello p1 99999999999999 5 1 >/dev/null
  echo "aa160c61 $(redis-cli -p 6399 INFO commandstats | grep cmdstat_evalsha | tr -d '\r' | cut -d, -f3)"
  redis-cli -p 6399 CONFIG RESETSTAT >/dev/null
  taskset -c 1 redis-benchmark -p 6399 -n 200000 -c 4 -q EVALSHA "$N" 7 seq hist chan cur parted at:p1 here 1000 lobby ann hello p1 99999999999999 5 1 1333 >/dev/null
  echo "b69361b6 $(redis-cli -p 6399 INFO commandstats | grep cmdstat_evalsha | tr -d '\r' | cut -d, -f3)"
done
