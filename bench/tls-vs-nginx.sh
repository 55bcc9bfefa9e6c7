#!/bin/sh
# Our https (the http service on a `,tls` listener) against Debian's nginx with `ssl`
# on, side by side and interleaved, RUNS (default 3) rounds of each measure:
#   - https keep-alive requests per second (wrk over https, CONNS connections);
#   - new TLS connections per second, handshake + one request + close, two ways:
#     wrk -H "Connection: close" (OpenSSL's client, which may resume its session) and
#     `bench http --tls --new-conn` (rustls, resumption off: every one a full handshake);
#   - idle TLS connection memory (bench/tls-hold.py --http, HOLD connections; nginx's
#     RSS summed over its master and workers).
# Both serve the same ECDSA P-256 certificate and the same 39-byte body on both cores:
# nginx with `worker_processes 2`, ours one process of the async model with two worker
# threads (`--processes 2` would need Redis: the http service carries the chat's
# /chat). Both are started afresh for every round, so each idle measurement starts
# from a new process (an allocator keeps freed pages: a second hold in the same
# process would read 0). Everything is written under target/tls-vs-nginx/ (never the
# system nginx config), servers listen on free loopback ports, and only the PIDs
# started here are killed. Prints one line per measurement, the load average beside
# it, and the medians.
# Usage: bench/tls-vs-nginx.sh   (after cargo build --release; needs nginx, wrk, openssl;
#        B=path/to/multiclient to measure another build; ONLY=idle for the idle memory
#        alone, which the machine's load does not change, the rates then printed as 0)
set -eu
cd "$(dirname "$0")/.."
. bench/lib.sh
B=${B:-$PWD/target/release/multiclient}
D=$PWD/target/tls-vs-nginx
RUNS=${RUNS:-3}
SECS=${SECS:-5}
CONNS=${CONNS:-50}
HOLD=${HOLD:-1000}
command -v nginx >/dev/null || { echo "needs nginx (apt-get install nginx)"; exit 1; }
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }
[ -x "$B" ] || { echo "needs $B (cargo build --release)"; exit 1; }
rm -rf "$D"
mkdir -p "$D/tmp"

make_tls_pki "$D" "tls-vs-nginx CA"

nport=$(free_port)
nconf=$(nginx_https_conf "$D" "$nport" 'worker_processes 2;
worker_rlimit_nofile 19000;
events { worker_connections 20000; }')
npid=; opid=
trap 'kill $npid $opid 2>/dev/null; wait 2>/dev/null' EXIT INT TERM
start() {
  nginx -p "$D" -e "$D/error.log" -c "$nconf" &
  npid=$!
  RUST_LOG=warn "$B" serve --service "http=127.0.0.1:$oport,tls" --tls-cert "$D/cert.pem" \
    --tls-key "$D/key.pem" --model async --workers 2 --admin off 2>>"$D/ours.log" &
  opid=$!
  wait_port "$nport"
  wait_port "$oport"
  curl -sf --cacert "$D/ca.pem" "https://localhost:$oport/" | grep -q Flask || { echo "ours does not answer"; exit 1; }
  curl -sf --cacert "$D/ca.pem" "https://localhost:$nport/" | grep -q Flask || { echo "nginx does not answer"; exit 1; }
}
stop() {
  kill "$npid" "$opid"
  wait "$npid" "$opid" 2>/dev/null || true
}
oport=$(free_port)
# The processes whose RSS is summed: nginx's master and workers; ours is one.
pids() { echo "$1$(pgrep -P "$1" | sed 's/^/,/' | tr -d '\n')"; }
start
echo "ours: $(curl -s -D- -o/dev/null --cacert "$D/ca.pem" "https://localhost:$oport/" | tr -d '\r' | paste -sd'|' -)"
echo "nginx: $(curl -s -D- -o/dev/null --cacert "$D/ca.pem" "https://localhost:$nport/" | tr -d '\r' | paste -sd'|' -)"
stop

wrk_rate() { # PORT [HEADER]
  if [ $# -gt 1 ]; then
    wrk -t1 -c"$CONNS" -d"${SECS}s" -H "$2" "https://127.0.0.1:$1/"
  else
    wrk -t1 -c"$CONNS" -d"${SECS}s" "https://127.0.0.1:$1/"
  fi | awk '/Requests\/sec/ {r=$2} /Non-2xx|Socket errors/ {e=e" "$0} END {print r (e ? " (" e ")" : "")}'
}
bench_new() { # PORT
  "$B" bench http --addr "127.0.0.1:$1" --tls --ca "$D/ca.pem" --server-name localhost \
    --new-conn --conns "$CONNS" --secs "$SECS" --timeout 2 --threads 1 --json |
    python3 -c 'import json,sys; r=json.load(sys.stdin); e=sum(r["errors"].values()); print("%.1f%s" % (r["throughput"], " (errors %d)" % e if e else ""))'
}
hold() { # PORT PIDS
  python3 bench/tls-hold.py --pid "$2" --port "$1" --tls "$D/ca.pem" --http --conns "$HOLD" |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.2f%s" % (r["kib_per_conn"], " (errors %d: %s)" % (r["errors"], r["first_error"]) if r["errors"] else ""))'
}

: >"$D/results"
for run in $(seq "$RUNS"); do
  start
  # Alternate who goes first, so neither always meets the other's leftovers.
  if [ $((run % 2)) -eq 1 ]; then order="ours nginx"; else order="nginx ours"; fi
  for who in $order; do
    if [ "$who" = ours ]; then p=$oport; ps=$(pids $opid); else p=$nport; ps=$(pids $npid); fi
    load=$(cut -d' ' -f1 /proc/loadavg)
    if [ "${ONLY:-}" = idle ]; then
      ka=0; nc=0; bn=0
    else
      ka=$(wrk_rate "$p")
      nc=$(wrk_rate "$p" "Connection: close")
      bn=$(bench_new "$p")
    fi
    mem=$(hold "$p" "$ps")
    echo "run $run $who (load $load): keep-alive ${ka} req/s; new conns wrk ${nc}/s, bench --new-conn ${bn}/s; idle $mem KiB/conn" | tee -a "$D/results"
  done
  stop
done

python3 - "$D/results" <<'EOF'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    m = re.match(r"run \d+ (\w+) .*keep-alive ([\d.]+) .*new conns wrk ([\d.]+).*bench --new-conn ([\d.]+).*idle ([\d.-]+) KiB", line)
    if m:
        rows.setdefault(m[1], []).append([float(x) for x in m.groups()[1:]])
names = ["keep-alive req/s", "new conns/s (wrk)", "new conns/s (bench)", "idle KiB/conn"]
med = {w: [statistics.median(c) for c in zip(*v)] for w, v in rows.items()}
print("%-22s %12s %12s %8s" % ("median", "ours", "nginx", "ratio"))
for i, n in enumerate(names):
    o, g = med["ours"][i], med["nginx"][i]
    if o == g == 0:
        continue  # not measured (ONLY=idle)
    print("%-22s %12.1f %12.1f %8.2f" % (n, o, g, o / g if g else float("nan")))
EOF
