#!/bin/sh
# Pipelined HTTP measured by wrk, the tool of issue 15's first table: 16 requests
# pipelined per write (a wrk Lua script), `wrk -t1 -c10`, wrk on CPU 0, each server on
# CPU 1 (bench/lib.sh's start_server), one server at a time in rounds of floor,
# floor-head (the floor with our head's bytes), ours, then A's build when given; each
# round's req/s and its ratio to the floor of that round; medians at the end. A second
# tester beside `bench http --pipeline 16` (bench/floors.sh http-pipe). Under wrk the
# client is the slower side: its figure follows the cost of parsing each response.
#
# Usage: [RUNS=9] [SECS=5] [A=BIN] bench/wrk-pipe.sh
# Output: bench/results/wrk-pipe-<UTC time>/ (raw.tsv, summary.txt)
set -eu
cd "$(dirname "$0")/.."
. bench/lib.sh
B=${B:-target/release/multiclient}
RUNS=${RUNS:-9}; SECS=${SECS:-5}; A=${A:-}
cargo build --release --example floor_http >/dev/null 2>&1
results wrk-pipe "RUNS=$RUNS SECS=$SECS A=$A"
cp bench/wrk-pipe.lua "$OUT/pipe.lua"
trap 'kill "$pid" 2>/dev/null || true' EXIT
pid=
for run in $(seq "$RUNS"); do
  for s in floor floor-head ours ${A:+a}; do
    if [ "$s" = a ]; then start_hello a "$A"; else start_hello "$s"; fi
    rps=$(nice -n -20 taskset -c 0 wrk -t1 -c10 -d"${SECS}s" -s "$OUT/pipe.lua" \
      "http://127.0.0.1:$port/" | awk '/Requests\/sec/ {print $2}')
    printf '%s\t%s\t%s\n' "$run" "$s" "$rps" | tee -a "$RAW"
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
python3 - "$RAW" <<'PY' | tee "$OUT/summary.txt"
import statistics as st, sys
runs = {}
for line in open(sys.argv[1]):
    r, s, rps = line.split()
    runs.setdefault(r, {})[s] = float(rps)
for s in ("floor", "floor-head", "ours", "a"):
    v = [x[s] for x in runs.values() if s in x]
    if not v:
        continue
    paired = [x[s] / x["floor"] for x in runs.values() if s in x]
    print("%-10s median %10.0f req/s; x floor: %.3f by the medians, %.3f paired (per round %s)"
          % (s, st.median(v), st.median(v) / st.median([x["floor"] for x in runs.values()]),
             st.median(paired), " ".join("%.3f" % p for p in paired)))
# Ours (and A) beside the floor that sends the same bytes: the server's own share.
for s in ("ours", "a"):
    head = [x[s] / x["floor-head"] for x in runs.values() if s in x and "floor-head" in x]
    if head:
        print("%-10s x floor-head: %.3f paired (per round %s)"
              % (s, st.median(head), " ".join("%.3f" % p for p in head)))
PY
