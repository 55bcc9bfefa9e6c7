#!/bin/sh
# What wrk itself spends per pipelined response, counted by callgrind: wrk (the client
# of bench/wrk-pipe.sh: 16 `GET /` per write, `-t1 -c10`) runs under
# `valgrind --tool=callgrind` against each server in turn (the floor, floor-head: the
# floor sending our head's bytes, ours), for LONG and then SHORT seconds; the
# difference in instructions over the difference in responses leaves out wrk's start
# (LuaJIT, threads) and end. Printed per server: wrk's instructions per response and
# how many of them are `http_parser_execute`'s own (the response parser wrk links,
# its callbacks into wrk not included; everything else is "the rest"). Where wrk is the side that
# sets the pace (bench/wrk-pipe.sh: wrk at 99% of its CPU), its instructions per
# response rank the throughput any server can reach with those bytes.
#
# Usage: [LONG=8] [SHORT=3] bench/callgrind-wrk.sh
# Output: bench/results/callgrind-wrk-<UTC time>/ (raw.tsv, summary.txt, each run's
# callgrind_annotate: exclusive instructions per function)
set -eu
cd "$(dirname "$0")/.."
. bench/lib.sh
B=${B:-target/release/multiclient}
LONG=${LONG:-8}; SHORT=${SHORT:-3}
cargo build --release --example floor_http >/dev/null 2>&1
results callgrind-wrk "LONG=$LONG SHORT=$SHORT"
cp bench/wrk-pipe.lua "$OUT/pipe.lua"
trap 'kill "$pid" 2>/dev/null || true' EXIT
pid=
# run NAME SECS: wrk under callgrind against the running server; prints
# "responses total_instructions parser_instructions".
run() {
  cg="$OUT/cg.$1.$2"
  n=$(taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$cg" \
    wrk -t1 -c10 -d"$2s" -s "$OUT/pipe.lua" "http://127.0.0.1:$port/" 2>/dev/null |
    awk '/requests in/ {print $1}')
  callgrind_annotate "$cg" >"$cg.txt" 2>/dev/null
  total=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$cg")
  parser=$(awk '/http_parser_execute/ {gsub(",", "", $1); print $1; exit}' "$cg.txt")
  rm -f "$cg"
  echo "$n $total ${parser:-0}"
}
for s in floor floor-head ours; do
  start_hello "$s"
  long=$(run "$s" "$LONG")
  short=$(run "$s" "$SHORT")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  printf '%s %s %s\n' "$s" "$long" "$short" >>"$RAW"
done
python3 - "$RAW" <<'PY' | tee "$OUT/summary.txt"
import sys
rows = [l.split() for l in open(sys.argv[1])]
base = None
for name, n1, t1, p1, n0, t0, p0 in rows:
    n = int(n1) - int(n0)
    per = (int(t1) - int(t0)) / n
    parser = (int(p1) - int(p0)) / n
    base = base or per
    print("%-10s wrk: %6.0f instructions per response (%.2fx the floor's), "
          "http_parser_execute %5.0f, the rest %5.0f (%d responses apart)"
          % (name, per, per / base, parser, per - parser, n))
PY
