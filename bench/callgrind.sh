#!/bin/sh
# Instructions per operation of one server, counted by callgrind (deterministic,
# unlike CPU time on a shared machine): the server runs under
# `valgrind --tool=callgrind` for BIG operations of `multiclient bench SERVICE` over 10
# connections, then (a fresh server) for SMALL; the difference in instructions,
# divided by BIG - SMALL, leaves out startup, warm-up and shutdown.
# Usage: bench/callgrind.sh SERVICE NAME 'COMMAND with {port}' BIG SMALL
#   BENCH_ARGS: more `bench` arguments (`--pipeline 16`), the same for both runs.
# bench/callgrind-ack.sh and bench/callgrind-http.sh call it with their defaults.
set -eu
cd "$(dirname "$0")/.."
B=${B:-target/release/multiclient}
svc=$1; name=$2; cmd=$3; big=$4; small=$5
out=${TMPDIR:-/tmp}/callgrind-$svc.$$
mkdir -p "$out"
total() { # operations -> instructions
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  c=$(echo "$cmd" | sed "s/{port}/$port/g")
  # shellcheck disable=SC2086
  valgrind --tool=callgrind --callgrind-out-file="$out/cg.$1" $c >/dev/null 2>&1 &
  pid=$!
  i=0; until python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),1)" 2>/dev/null; do
    i=$((i+1)); [ $i -lt 300 ] || { echo "$name did not start" >&2; kill $pid; exit 1; }; sleep 0.1; done
  # shellcheck disable=SC2086
  $B bench "$svc" --addr 127.0.0.1:$port --conns 10 --requests "$1" --threads 1 ${BENCH_ARGS:-} \
    --json >"$out/bench.$1" 2>/dev/null
  # SIGINT drains our server; a peer without a handler may ignore it under valgrind.
  kill -INT $pid; (sleep 10; kill -TERM $pid 2>/dev/null) & wait $pid 2>/dev/null || true
  errors=$(python3 -c "import json; r=json.load(open('$out/bench.$1')); print(sum(r.get('errors',{}).values()) if isinstance(r.get('errors'),dict) else r.get('errors',0))")
  [ "$errors" = 0 ] || { echo "$name: $errors errors in the run of $1" >&2; exit 1; }
  sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$out/cg.$1"
}
lo=$(total "$small")
hi=$(total "$big")
python3 -c "print('$name: %.0f instructions per $svc operation (%d - %d over %d)' % (($hi-$lo)/($big-$small), $hi, $lo, $big-$small))"
rm -rf "$out"
