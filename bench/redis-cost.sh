#!/bin/sh
# What one chat message costs Redis: `serve --processes W --redis` (W instances of one
# chat on this machine) under `bench chat` (ROOMS rooms, MEMBERS members in all, RATE
# messages a second for SECS s), with Redis's own accounting read before and after the
# sending phase's run: its CPU (INFO cpu, user + sys) and the calls and µs of each
# command (INFO commandstats). Every message is one EVALSHA of say.lua (id, XADD,
# PUBLISH on the channel every instance subscribes to), so Redis CPU per message is
# the per-operation cost a Redis Cluster shard pays too.
#
# Usage: bench/redis-cost.sh   (env: WORKERS MEMBERS ROOMS RATE SECS)
# Output: bench/results/redis-cost-<UTC time>/
set -eu
cd "$(dirname "$0")/.."
. bench/lib.sh
B=${B:-target/release/multiclient}
workers=${WORKERS:-2}; members=${MEMBERS:-200}; rooms=${ROOMS:-20}
rate=${RATE:-2000}; secs=${SECS:-10}
out=bench/results/redis-cost-$(date -u +%Y%m%dT%H%M%SZ)
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
stats() { redis-cli -p "$rport" INFO cpu; redis-cli -p "$rport" INFO commandstats; }
stats >"$out/before.txt"
echo "== redis cost: $workers instances, $members members in $rooms rooms, $rate msg/s for $secs s, load $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$out/summary.txt"
$B bench chat --addr "127.0.0.1:$chat" --members "$members" --rooms "$rooms" --rate "$rate" \
  --secs "$secs" --threads 1 --server-pid "$spid" --json >"$out/chat.json"
stats >"$out/after.txt"
python3 - "$out" <<'EOF' | tee -a "$out/summary.txt"
import json, re, sys
d = sys.argv[1]
def parse(name):
    t = open(f"{d}/{name}").read()
    cpu = sum(float(re.search(rf"^{k}:([\d.]+)", t, re.M).group(1)) for k in ("used_cpu_user", "used_cpu_sys"))
    cmds = {m[0]: (int(m[1]), int(m[2])) for m in re.findall(r"^cmdstat_(\w+):calls=(\d+),usec=(\d+)", t, re.M)}
    return cpu, cmds
c0, b = parse("before.txt")
c1, a = parse("after.txt")
r = json.load(open(f"{d}/chat.json"))
print("   chat: sent %d, deliveries %d of %d, errors %s, p50 %d us p99 %d us, server %s"
      % (r["sent"], r["deliveries"], r["expected_deliveries"], r["errors"], r["latency"]["p50_us"], r["latency"]["p99_us"], r["server"]))
for cmd in sorted(a):
    n = a[cmd][0] - b.get(cmd, (0, 0))[0]
    us = a[cmd][1] - b.get(cmd, (0, 0))[1]
    if n:
        print("   %-10s %8d calls, %7.2f us per call (Redis's own timing)" % (cmd, n, us / n))
evals = a.get("evalsha", (0, 0))[0] - b.get("evalsha", (0, 0))[0]
print("   Redis CPU %.2f s in all (joins, parts and the sending phase): %.1f us per message sent (%d sent, %d EVALSHA)"
      % (c1 - c0, (c1 - c0) * 1e6 / max(r["sent"], 1), r["sent"], evals))
EOF
