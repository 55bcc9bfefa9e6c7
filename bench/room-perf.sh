#!/bin/sh
# Where the chat's workers spend a fan-out over Redis: MEMBERS members in one room on
# `serve --processes 6 --redis` (a redis-server started here on a free loopback port),
# RATE messages a second for SECS s (`bench chat`, 2 tester processes). Once every
# member has joined, for WINDOW s, the workers are measured from outside:
#   - their CPU (/proc/PID/stat) and Redis's, in clock ticks;
#   - system calls and context switches (`perf stat -e raw_syscalls:sys_enter -e
#     context-switches`), to divide by the deliveries of the window (MEMBERS per
#     message: RATE x WINDOW messages);
#   - with RECORD=1, a call-graph profile instead (`perf record -g`, 2,000 Hz),
#     printed by symbol at the end (kernel symbols need kernel.kptr_restrict 0).
# EXTRA: more `serve` arguments (`--workers 1`), to compare settings run by run.
#
#   MEMBERS=30000 RATE=1 SECS=40 bench/room-perf.sh
#   MEMBERS=30000 RATE=0.2 SECS=40 RECORD=1 bench/room-perf.sh
#
# Output: bench/results/room-perf-<UTC time>/ (summary.txt, perf.txt or the report).
set -eu
cd "$(dirname "$0")/.."
. bench/lib.sh
B=${B:-target/release/multiclient}
[ -x $B ] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v perf >/dev/null || { echo "needs perf (Debian: linux-perf)" >&2; exit 1; }
members=${MEMBERS:-30000}; rate=${RATE:-1}; secs=${SECS:-40}; window=${WINDOW:-20}
ttl=${PRESENCE_TTL:-15s}
out=bench/results/room-perf-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
rport=$(free_port)
nice -n -10 redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no >"$out/redis.log" 2>&1 &
rpid=$!
spid=; bpid=
trap 'kill $bpid $spid $rpid 2>/dev/null || true' EXIT
wait_port "$rport"
chat=$(free_port)
# shellcheck disable=SC2086
setsid $B serve -q --service "chat=127.0.0.1:$chat" --processes 6 \
  --redis "redis://127.0.0.1:$rport" --presence-ttl "$ttl" --max-conns 19000 ${EXTRA:-} >"$out/server.log" 2>&1 &
spid=$!
wait_port "$chat"
$B bench chat --addr "127.0.0.1:$chat" --members "$members" --rooms 1 --rate "$rate" \
  --secs "$secs" --procs 2 --src-ips 2 --ramp 1000 --threads 1 --setup-timeout 600 \
  --timeout 30 --json >"$out/chat.json" 2>"$out/bench.log" &
bpid=$!
# Bounded: the setup timeout above is 600 s.
i=0
until grep -q "joined and warm" "$out/bench.log" 2>/dev/null; do
  i=$((i + 1)); [ $i -lt 700 ] || { echo "the members never joined" >&2; exit 1; }; sleep 1
done
sleep 2
pids=$(pgrep -P "$spid" | tr '\n' ',' | sed 's/,$//')
ticks() { for p in $(echo "$1" | tr ',' ' '); do awk '{print $14 + $15}' "/proc/$p/stat"; done | awk '{s += $1} END {print s}'; }
w0=$(ticks "$pids"); r0=$(ticks "$rpid")
if [ "${RECORD:-0}" = 1 ]; then
  perf record -F 2000 -g -o "$out/perf.data" -p "$pids" -- sleep "$window" 2>/dev/null
else
  perf stat -e raw_syscalls:sys_enter -e context-switches -p "$pids" -o "$out/perf.txt" -- sleep "$window"
fi
w1=$(ticks "$pids"); r1=$(ticks "$rpid")
deliveries=$(python3 -c "print(round($members * $rate * $window))")
{
  echo "== $members members in one room, 6 workers over Redis (--presence-ttl $ttl) ${EXTRA:-}, $rate msg/s; over $window s (about $deliveries deliveries):"
  echo "   workers' CPU $((w1 - w0)) ticks, redis $((r1 - r0)) ticks"
  if [ -f "$out/perf.txt" ]; then
    awk -v d="$deliveries" '/raw_syscalls|context-switches/ {gsub(",", "", $1); printf "   %s: %s (%.2f per delivery)\n", $2, $1, $1 / d}' "$out/perf.txt"
  fi
} | tee "$out/summary.txt"
wait $bpid || true
bpid=
if [ -f "$out/perf.data" ]; then
  perf report -i "$out/perf.data" --no-children --sort symbol -g none 2>/dev/null \
    | grep -v '^#' | grep -v '^$' | head -40 | tee "$out/report.txt"
  rm -f "$out/perf.data"
fi
