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
. bench/lib.sh
B=${B:-target/release/multiclient}
svc=$1; name=$2; cmd=$3; big=$4; small=$5
out=${TMPDIR:-/tmp}/callgrind-$svc.$$
mkdir -p "$out"
total() { # operations -> instructions
  callgrind_start "$out/cg.$1" "$cmd" || { echo "$name did not start" >&2; exit 1; }
  # shellcheck disable=SC2086
  $B bench "$svc" --addr 127.0.0.1:$port --conns 10 --requests "$1" --threads 1 ${BENCH_ARGS:-} \
    --json >"$out/bench.$1" 2>/dev/null
  callgrind_stop
  errors=$(python3 -c "import json; r=json.load(open('$out/bench.$1')); print(sum(r.get('errors',{}).values()) if isinstance(r.get('errors'),dict) else r.get('errors',0))")
  [ "$errors" = 0 ] || { echo "$name: $errors errors in the run of $1" >&2; exit 1; }
  sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$out/cg.$1"
}
lo=$(total "$small")
hi=$(total "$big")
python3 -c "print('$name: %.0f instructions per $svc operation (%d - %d over %d)' % (($hi-$lo)/($big-$small), $hi, $lo, $big-$small))"
rm -rf "$out"
