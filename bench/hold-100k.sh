#!/bin/sh
# 100,000 idle ack connections held by `serve --processes 6` (past the 20,000
# descriptors one process may have here): each proven served by one round trip, held
# 60 s, released; RUNS times (default 3), a fresh server each time. The tester is 6
# processes (`bench hold --procs 6`) with 2 source addresses each (127.0.0.1-12).
#
# Per connection, from the bench's JSON (the server's figures summed over the
# supervisor and its workers, sampled before the ramp and once every connection is
# held):
#   user space: VmRSS (= RssAnon + RssFile + RssShmem) and RssAnon, held − before;
#   kernel: /proc/net/sockstat TCP mem pages × 4 KiB and the TCP and sock_inode_cache
#   slabs, held − before. These are machine-wide: on loopback both ends of a
#   connection are on this machine, so they count two sockets per connection.
#
# Usage: bench/hold-100k.sh   (env: CONNS RUNS HOLD WORKERS PROCS RAMP)
# Output: bench/results/hold-100k-<UTC time>/run<N>.json and summary.txt
set -eu
cd "$(dirname "$0")/.."
. bench/lib.sh
B=${B:-target/release/multiclient}
[ -x $B ] || { echo "build first: cargo build --release" >&2; exit 1; }
conns=${CONNS:-100000}; runs=${RUNS:-3}; hold=${HOLD:-60}
workers=${WORKERS:-6}; procs=${PROCS:-6}; ramp=${RAMP:-3000}
out=bench/results/hold-100k-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
for run in $(seq "$runs"); do
  port=$(free_port)
  # A session of its own, as a deployed server runs; -q: no log line per message.
  setsid $B serve -q --service "ack=127.0.0.1:$port" --processes "$workers" \
    --max-conns 19000 >"$out/server$run.log" 2>&1 &
  pid=$!
  wait_port "$port" || { kill "$pid"; exit 1; }
  sleep 1
  echo "== run $run: serve --processes $workers (pid $pid), load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/summary.txt"
  $B bench hold --addr "127.0.0.1:$port" --conns "$conns" --procs "$procs" --src-ips 2 \
    --ramp "$ramp" --secs "$hold" --timeout 20 --threads 1 --server-pid "$pid" \
    --json >"$out/run$run.json" || echo "bench hold failed (rc $?)" | tee -a "$out/summary.txt"
  echo "   load after $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/summary.txt"
  python3 - "$out/run$run.json" >>"$out/summary.txt" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
n = r["established_at_sample"] or 1
failed = sum(r[k] for k in ("refused", "reset", "closed", "timeout", "other"))
print("   established %d of %d (by process %s), failed %d, ramp %.1f s"
      % (r["established"], r["conns"], r["established_by_process"], failed, r["ramp_secs"]))
print("   user space: VmRSS %d -> %d KiB = %.3f KiB/conn; RssAnon %d -> %d KiB = %.3f KiB/conn; threads %d -> %d"
      % (r["rss_before_kib"], r["rss_held_kib"], r["kib_per_conn"],
         r["rss_anon_before_kib"], r["rss_anon_held_kib"],
         (r["rss_anon_held_kib"] - r["rss_anon_before_kib"]) / n,
         r["threads_before"], r["threads_held"]))
b, h = r["kernel_before"], r["kernel_held"]
def per(k):
    if b.get(k) is None or h.get(k) is None:
        return "unreadable"
    return "%.3f KiB" % ((h[k] - b[k]) / n)
print("   kernel (both ends): TCP sockets %d -> %d, buffers %d -> %d pages = %.3f KiB/conn, slab TCP %s/conn, sock_inode_cache %s/conn"
      % (b["tcp_inuse"], h["tcp_inuse"], b["tcp_mem_pages"], h["tcp_mem_pages"],
         (h["tcp_mem_pages"] - b["tcp_mem_pages"]) * 4 / n, per("slab_tcp_kib"), per("slab_sock_inode_kib")))
EOF
  kill "$pid"; wait "$pid" 2>/dev/null || true
  sleep 2
done
cat "$out/summary.txt"
