#!/bin/sh
# `bench http` against wrk on the same server, alternating, 3 runs each of 10 s at 10
# (nice -20: the machine is shared with other builds; both tools get the same priority)
# connections, tester and wrk on CPU 0, the server on CPU 1.
# Usage: bench/http-vs-wrk.sh 'SERVER COMMAND with {port}'
set -eu
cd "$(dirname "$0")/.."
B=target/release/multiclient
cmd=${1:-"python3 bench/peers/flask_hello.py {port}"}
conns=${CONNS:-10}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
c=$(echo "$cmd" | sed "s/{port}/$port/g")
nice -n -20 taskset -c 1 sh -c "exec $c" >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null' EXIT
i=0; until curl -s "http://127.0.0.1:$port/" >/dev/null; do
  i=$((i+1)); [ $i -lt 100 ] || { echo "server did not start"; exit 1; }; sleep 0.1; done
for run in $(seq ${RUNS:-3}); do
  w=$(nice -n -20 taskset -c 0 wrk -t1 -c$conns -d10s "http://127.0.0.1:$port/" | awk '/Requests\/sec/ {print $2}')
  b=$(nice -n -20 taskset -c 0 $B bench http --addr 127.0.0.1:$port --conns $conns --secs 10 --threads 1 --json \
      | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.1f %d" % (r["throughput"], r["errors"]["refused"]+r["errors"]["reset"]+r["errors"]["closed"]+r["errors"]["timeout"]+r["errors"]["wrong_reply"]+r["errors"]["other"]))')
  echo "run $run: wrk $w req/s, bench ${b% *} req/s (errors ${b#* }), bench/wrk $(python3 -c "print(round(${b% *}/$w, 3))")"
done
