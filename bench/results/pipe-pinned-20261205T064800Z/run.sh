#!/bin/bash
# Pipelined HTTP, server pinned to CPU 1, tester to CPU 0; rounds of floor / ours / a.
cd /work/main
B=/work/bin-noserver; A=/work/bin-b69361b; E=target/release/examples
ROUNDS=${ROUNDS:-5}; SECS=${SECS:-5}
for r in $(seq $ROUNDS); do
  for s in floor ours a floorhead; do
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    case $s in
      floor) cmd="$E/floor_http $port";;
      floorhead) cmd="$E/floor_http $port head";;
      ours) cmd="$B serve --model async --service http=127.0.0.1:$port";;
      a) cmd="$A serve --model async --service http=127.0.0.1:$port";;
    esac
    taskset -c 1 $cmd >/dev/null 2>&1 & pid=$!
    for i in $(seq 100); do curl -s "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.05; done
    nice -n -20 taskset -c 0 $B bench http --addr 127.0.0.1:$port --conns 10 --pipeline 16 --secs $SECS --threads 1 --server-pid $pid --json 2>/dev/null \
     | python3 -c "import json,sys; r=json.load(sys.stdin); print('$r $s %.0f %.3f' % (r['throughput'], r['server']['cpu_us_per_op']))"
    kill $pid; wait $pid 2>/dev/null
  done
done
