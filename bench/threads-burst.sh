#!/bin/sh
# The threads-model hello burst (1,000 clients at once), with the server in the
# tester's session (how `bench compare` started servers before) or in a session of its
# own (SETSID=setsid, how it starts them now), and, unless HOG=0, one busy loop per CPU
# in a third session standing in for another engineer's build (9 s at most each).
# Prints one line: throughput, errors, server CPU per connection, and how long the
# tester ran and waited for a CPU (/proc/PID/task/*/schedstat).
#
# Usage: [SETSID=setsid] [HOG=0] bench/threads-burst.sh LABEL 'SERVER COMMAND with {port}'
# e.g.   SETSID=setsid bench/threads-burst.sh threads \
#          "target/release/multiclient serve --service hello --model threads --addr 127.0.0.1:{port} -qq"
#        bench/threads-burst.sh py-threads "python3 bench/peers/thread_hello.py {port}"
# Loopback only; kills only the server and the busy loops it started, by PID.
set -eu
cd "$(dirname "$0")/.."
B=${B:-target/release/multiclient}
label=$1
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cmd=$(echo "$2" | sed "s/{port}/$port/g")
h0=; h1=
cleanup() {
  [ -n "${sp:-}" ] && kill "$sp" 2>/dev/null || true
  [ -n "$h0" ] && kill "$h0" "$h1" 2>/dev/null || true
}
trap cleanup EXIT
if [ "${HOG:-1}" = 1 ]; then
  setsid timeout 9 taskset -c 0 sh -c 'while :; do :; done' & h0=$!
  setsid timeout 9 taskset -c 1 sh -c 'while :; do :; done' & h1=$!
  sleep 0.3
fi
${SETSID:-} taskset -c 1 sh -c "exec $cmd" >/dev/null 2>&1 &
sp=$!
i=0
until python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),1)" 2>/dev/null; do
  i=$((i+1)); [ $i -lt 100 ] || { echo "$label did not start" >&2; exit 1; }; sleep 0.1
done
sleep 0.5
json=$(mktemp)
taskset -c 0 "$B" bench hello --addr "127.0.0.1:$port" --conns "${CONNS:-1000}" --secs 5 --timeout 2 \
  --threads 1 --server-pid "$sp" --json > "$json" 2>/dev/null &
bp=$!
sleep 4.5
wait_line=$(cat /proc/$bp/task/*/schedstat 2>/dev/null \
  | awk '{ r += $1; w += $2 } END { printf "tester ran %.2f s, waited for a CPU %.2f s (at 4.5 s)", r / 1e9, w / 1e9 }')
wait "$bp"
python3 - "$json" "$label" "$wait_line" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1])); s = r.get("server") or {}
errors = sum(v for v in r["errors"].values() if isinstance(v, int))
print(f"{sys.argv[2]}: {r['throughput']:.0f} conn/s, ok {r['ok']}, errors {errors}, "
      f"p99 {r['latency']['p99_us'] / 1e3:.0f} ms, server CPU {s.get('cpu_secs', 0):.2f} s "
      f"= {s.get('cpu_us_per_op', 0):.0f} us/conn; {sys.argv[3]}")
EOF
rm -f "$json"
