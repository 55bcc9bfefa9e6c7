#!/bin/sh
# One room of MEMBERS members spread over `serve --processes 6 --redis` (each worker a
# chat instance on a redis-server of its own here), one sender at RATE messages a
# second for SECS s: every member gets every message (checked by `bench chat`), and
# the latency from each send to each delivery is measured (its maximum is the last
# delivery of the slowest message). Beside it, in the same run, the floor: MEMBERS
# loopback sends of a chat line by a minimal loop (bench/send-floor.py).
#
# The room of 100,000 the issue asks for is not reachable this way: every JOIN is a
# line to each member already in the room, so filling a room of S is S²/2 lines
# (5 × 10⁹ for 100,000; see docs/scale.md).
#
# Usage: bench/room.sh   (env: MEMBERS RATE SECS WORKERS)
# Output: bench/results/room-<UTC time>/
set -eu
cd "$(dirname "$0")/.."
. bench/lib.sh
B=${B:-target/release/multiclient}
members=${MEMBERS:-5000}; rate=${RATE:-2}; secs=${SECS:-10}; workers=${WORKERS:-6}
out=bench/results/room-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no >"$out/redis.log" 2>&1 &
rpid=$!
chat=$(free_port)
trap 'kill $spid $rpid 2>/dev/null || true' EXIT
wait_port "$rport"
setsid $B serve -q --service "chat=127.0.0.1:$chat" --processes "$workers" \
  --redis "redis://127.0.0.1:$rport" --max-conns 19000 >"$out/server.log" 2>&1 &
spid=$!
wait_port "$chat"; sleep 1
echo "== room: $members members, $workers workers over Redis, $rate msg/s for $secs s, load $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$out/summary.txt"
$B bench chat --addr "127.0.0.1:$chat" --members "$members" --rooms 1 --rate "$rate" \
  --secs "$secs" --src-ips 4 --threads 1 --server-pid "$spid" --setup-timeout 300 --json \
  >"$out/chat.json" || echo "   bench chat reported errors (rc $?): see below" | tee -a "$out/summary.txt"
python3 - "$out/chat.json" <<'EOF' | tee -a "$out/summary.txt"
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency"]
print("   %d sent, %d of %d deliveries, errors %s, setup %.1f s" % (r["sent"], r["deliveries"], r["expected_deliveries"], r["errors"], r["setup_secs"]))
print("   send to delivery: p50 %.1f ms, p99 %.1f ms, max %.1f ms; server CPU %.2f us per delivery"
      % (l["p50_us"] / 1e3, l["p99_us"] / 1e3, l["max_us"] / 1e3, (r["server"] or {}).get("cpu_us_per_op", 0)))
EOF
python3 bench/send-floor.py "$members" 10 | sed 's/^/   /' | tee -a "$out/summary.txt"
echo "   load after $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/summary.txt"
