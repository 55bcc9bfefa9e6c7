#!/bin/sh
# Churn: 50,000 idle ack connections held by `serve --processes 6` while 100,000 more
# are opened, served and closed over 10 minutes (the hello service on the same
# workers: connect, one message, the reply, close; 167 a second, open loop). Every
# worker's descriptors (/proc/PID/fd) and memory (VmRSS, RssAnon) are written at the
# start (the 50,000 held), at the end (still held, churn over) and after the release:
# a worker that leaks a descriptor or memory per connection shows it at the end.
# `--idle-timeout 1h`: the default 300 s would close the held connections mid-run.
#
# Usage: bench/churn.sh   (env: HELD CHURN SECS WORKERS)
# Output: bench/results/churn-<UTC time>/ (summary.txt, hold.json, churn.json)
set -eu
cd "$(dirname "$0")/.."
. bench/lib.sh
B=${B:-target/release/multiclient}
[ -x "$B" ] || { echo "build first: cargo build --release" >&2; exit 1; }
held=${HELD:-50000}; churn=${CHURN:-100000}; secs=${SECS:-600}; workers=${WORKERS:-6}
out=bench/results/churn-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
ack=$(free_port); hello=$(free_port)
setsid $B serve -q --service "ack=127.0.0.1:$ack" --service "hello=127.0.0.1:$hello" \
  --processes "$workers" --max-conns 19000 --idle-timeout 1h >"$out/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
wait_port "$ack"; wait_port "$hello"; sleep 1

# The workers: the processes whose parent is the supervisor.
workers_of() {
  for s in /proc/[0-9]*/stat; do
    # A process may exit between the listing and the read: not an error.
    awk -v p="$1" '{ sub(/.*\) /, ""); if ($2 == p) print FILENAME }' "$s" 2>/dev/null || true
  done | sed 's|/proc/\([0-9]*\)/stat|\1|'
}
sample() {
  for w in $(workers_of "$pid"); do
    fds=$(ls /proc/"$w"/fd | wc -l)
    rss=$(awk '/^VmRSS/ {print $2}' /proc/"$w"/status)
    anon=$(awk '/^RssAnon/ {print $2}' /proc/"$w"/status)
    echo "   $1 worker $w: fds $fds, VmRSS $rss KiB, RssAnon $anon KiB"
  done | tee -a "$out/summary.txt"
}

echo "== churn: $held held, $churn opened and closed over $secs s, serve --processes $workers (pid $pid), load $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$out/summary.txt"
sample idle
$B bench hold --addr "127.0.0.1:$ack" --conns "$held" --procs 3 --src-ips 2 --ramp 3000 \
  --secs $((secs + 120)) --timeout 20 --threads 1 --json >"$out/hold.json" 2>"$out/hold.err" &
hold=$!
i=0
until grep -q "connections held by" "$out/hold.err"; do
  i=$((i + 1)); [ $i -lt 1200 ] || { echo "the hold never opened" >&2; exit 1; }
  kill -0 $hold 2>/dev/null || { cat "$out/hold.err" >&2; exit 1; }
  sleep 0.1
done
grep "connections held by" "$out/hold.err" | tee -a "$out/summary.txt"
sample start
rate=$(python3 -c "print($churn / $secs)")
# The churn's source address is the kernel's choice (127.0.0.1); the server closes
# first, so the TIME_WAIT sockets are the server's and take no tester ports.
$B bench hello --addr "127.0.0.1:$hello" --conns 64 --rate "$rate" --secs "$secs" \
  --timeout 10 --threads 1 --json >"$out/churn.json" || echo "bench hello failed (rc $?)" | tee -a "$out/summary.txt"
sample end
kill -0 $hold 2>/dev/null || echo "   the hold ended before the end sample" | tee -a "$out/summary.txt"
python3 - "$out/churn.json" <<'EOF' | tee -a "$out/summary.txt"
import json, sys
r = json.load(open(sys.argv[1]))
e = r["errors"]
print("   churn: %d connections opened, served and closed in %.0f s (%.0f/s), errors %d %s, p50 %d us p99 %d us"
      % (r["ok"], r["secs"], r["throughput"], sum(e.values()), e, r["latency"]["p50_us"], r["latency"]["p99_us"]))
EOF
wait $hold || echo "   bench hold failed" | tee -a "$out/summary.txt"
python3 - "$out/hold.json" <<'EOF' | tee -a "$out/summary.txt"
import json, sys
r = json.load(open(sys.argv[1]))
failed = sum(r[k] for k in ("refused", "reset", "closed", "timeout", "other"))
print("   held: %d of %d established (by process %s), failed %d (closed or reset while held count here)"
      % (r["established"], r["conns"], r["established_by_process"], failed))
EOF
sleep 2
sample released
echo "   load after $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/summary.txt"
