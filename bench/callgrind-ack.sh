#!/bin/sh
# Instructions per ACK round trip of one server, counted by callgrind (deterministic,
# unlike CPU time on a shared machine): the server runs under
# `valgrind --tool=callgrind` for N round trips over 10 connections, then for 10; the
# difference, divided by the difference in round trips, leaves out startup and shutdown.
# Usage: bench/callgrind-ack.sh NAME 'COMMAND with {port}' [N]
# SERVICE=hello measures a connection instead (the hello service: connect, one message,
# its reply, close), for costs paid per accept.
set -eu
cd "$(dirname "$0")/.."
B=${TESTER:-target/release/multiclient}
name=$1; cmd=$2; n=${3:-20000}; service=${SERVICE:-ack}
out=${TMPDIR:-/tmp}/callgrind-ack.$$
mkdir -p "$out"
total() { # requests -> instructions
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  c=$(echo "$cmd" | sed "s/{port}/$port/g")
  valgrind --tool=callgrind --callgrind-out-file="$out/cg.$1" $c >/dev/null 2>&1 &
  pid=$!
  i=0; until python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),1)" 2>/dev/null; do
    i=$((i+1)); [ $i -lt 300 ] || { echo "$name did not start" >&2; kill $pid; exit 1; }; sleep 0.1; done
  $B bench "$service" --addr 127.0.0.1:$port --conns 10 --requests "$1" --threads 1 --json >"$out/bench.$1" 2>/dev/null
  # SIGINT drains our server; a peer without a handler may ignore it under valgrind.
  kill -INT $pid; (sleep 10; kill -TERM $pid 2>/dev/null) & wait $pid 2>/dev/null || true
  errors=$(python3 -c "import json; r=json.load(open('$out/bench.$1')); print(sum(r.get('errors',{}).values()) if isinstance(r.get('errors'),dict) else r.get('errors',0))")
  [ "$errors" = 0 ] || { echo "$name: $errors errors in the run of $1" >&2; exit 1; }
  sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$out/cg.$1"
}
small=$(total 10)
big=$(total "$n")
python3 -c "print('$name: %.0f instructions per $service round trip (%d - %d over %d)' % (($big-$small)/($n-10), $big, $small, $n-10))"
rm -rf "$out"
