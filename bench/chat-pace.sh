#!/bin/sh
# Where a lent fan-out's CPU goes, per build: one room of 1,000 members at 10 msg/s
# (every delivery a write on a lent socket), the server with one worker pinned to
# CPU 1, the tester on CPU 0 with one thread. In the middle of each run:
#   - the server's user and system time per send (/proc, 10 ms ticks, over 4 s), and
#     then its user time per send by sampling (`perf record -F 10000` over 3 s:
#     samples outside the kernel, 100 µs each);
#   - the tester's `epoll_wait` calls per send: how often its reader ran out of
#     ready sockets. The fewer events each call finds, the more often the reader
#     and the server's sends meet on the epoll's ready list, and the dearer each
#     send is (BENCHMARKS.md, "A fan-out's next member prefetched").
# Builds alternate within each round. Prints one line per run and, at the end, the
# medians per build; both are kept in $OUT (default bench/results/chat-pace-<time>).
#
# Usage: bench/chat-pace.sh BIN [BIN ...]   (RUNS=3; the tester is the first BIN)
# Needs: perf (apt-get install linux-perf), with permission to trace (root here).
set -eu
cd "$(dirname "$0")/.."
. bench/lib.sh
[ $# -gt 0 ] || { echo "usage: bench/chat-pace.sh BIN [BIN ...]" >&2; exit 2; }
command -v perf >/dev/null 2>&1 || { echo "chat-pace: perf is needed" >&2; exit 1; }
RUNS=${RUNS:-3}
T=$1
results chat-pace "RUNS=$RUNS builds: $*"

for run in $(seq 1 "$RUNS"); do
  for bin in "$@"; do
    start_server "$bin" "$bin serve --model async --workers 1 --service chat=127.0.0.1:{port} --admin off"
    nice -n -20 taskset -c 0 "$T" bench chat --addr "127.0.0.1:$port" --members 1000 \
      --rate 10 --secs 14 --threads 1 --json >"$OUT/last.json" 2>/dev/null </dev/null &
    tp=$!
    # The setup (1,000 joins) takes well under 4 s here; both windows are mid-sending.
    sleep 4
    # Window 1, 4 s: system calls and CPU ticks, nothing sampled.
    t0=$(awk '{print $14, $15}' "/proc/$pid/stat")
    perf stat -x, -e syscalls:sys_enter_sendto -p "$pid" -o "$OUT/srv.csv" -- sleep 4 &
    ps1=$!
    perf stat -x, -e syscalls:sys_enter_epoll_wait -p "$tp" -o "$OUT/tst.csv" -- sleep 4
    wait "$ps1"
    t1=$(awk '{print $14, $15}' "/proc/$pid/stat")
    # Window 2, 3 s: where the time goes, sampled (the sampling costs kernel time).
    perf stat -x, -e syscalls:sys_enter_sendto -p "$pid" -o "$OUT/srv2.csv" -- sleep 3 &
    ps1=$!
    perf record -q -F 10000 -e cpu-clock -o "$OUT/perf.data" -p "$pid" -- sleep 3 \
      >/dev/null 2>&1
    wait "$ps1"
    wait "$tp" || true
    kill "$pid"; wait "$pid" 2>/dev/null || true
    samples=$(perf script -i "$OUT/perf.data" -F ip 2>/dev/null | wc -l)
    user=$(perf script -i "$OUT/perf.data" -F ip 2>/dev/null | grep -vc '^ *ffff' || true)
    python3 - "$bin" "$run" "$t0" "$t1" "$samples" "$user" "$OUT" <<'PY' | tee -a "$OUT/raw.tsv"
import csv, json, sys
bin_, run, t0, t1, samples, user, out = sys.argv[1:]
def count(f):
    for row in csv.reader(open(f)):
        if len(row) > 2 and row[0].strip().isdigit():
            return int(row[0])
    return 0
sends = count(out + "/srv.csv") or 1
sends2 = count(out + "/srv2.csv") or 1
epolls = count(out + "/tst.csv")
(u0, s0), (u1, s1) = (map(int, t0.split())), (map(int, t1.split()))
r = json.load(open(out + "/last.json"))
errs = sum(v for v in r["errors"].values() if isinstance(v, int))
# 10 ms ticks and 10 kHz samples, per send, in µs.
print("\t".join([bin_, run, str(sends), "%.3f" % (epolls / sends),
                 "%.2f" % ((u1 - u0) * 1e4 / sends), "%.2f" % ((s1 - s0) * 1e4 / sends),
                 "%.3f" % (int(user) * 100 / sends2), "%.2f" % (int(samples) * 100 / sends2),
                 str(errs)]))
PY
    rm -f "$OUT/perf.data" "$OUT/srv.csv" "$OUT/srv2.csv" "$OUT/tst.csv" "$OUT/last.json"
    sleep 1
  done
done

python3 - "$OUT/raw.tsv" <<'PY' | tee "$OUT/table.md"
import statistics as st, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
print("| build | runs | tester epoll_wait per send (runs) | median | user µs/send, ticks | system µs/send, ticks (runs) | median | user µs/send, sampled (runs) | median | errors |")
print("|---|---|---|---|---|---|---|---|---|---|")
for b in dict.fromkeys(r[0] for r in rows):
    d = [r for r in rows if r[0] == b]
    col = lambda i: [float(r[i]) for r in d]
    print("| %s | %d | %s | %.3f | %.2f | %s | %.2f | %s | %.3f | %d |" % (
        b, len(d), ", ".join(r[3] for r in d), st.median(col(3)), st.median(col(4)),
        ", ".join(r[5] for r in d), st.median(col(5)), ", ".join(r[6] for r in d),
        st.median(col(6)), sum(int(r[8]) for r in d)))
PY
