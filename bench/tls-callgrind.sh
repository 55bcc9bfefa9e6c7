#!/bin/sh
# What one https keep-alive request costs our server and nginx, in numbers the load of
# a shared machine does not change:
#   - instructions per request, counted by callgrind: each server runs under
#     `valgrind --tool=callgrind` (nginx with `master_process off; worker_processes 1`
#     and --trace-children=no; ours one process of the async model with one worker
#     thread), serves N keep-alive `GET /` over 10 connections, then, from a fresh
#     process, SMALL; the difference over N - SMALL leaves out startup, the 10
#     handshakes and shutdown (as bench/callgrind-ack.sh does for ACK);
#   - system calls per request: the same two runs outside valgrind, counted by
#     `perf stat -e raw_syscalls:sys_enter -p PID` (needs root or perf_event_paranoid
#     <= -1 for the tracepoint), the difference over N - SMALL.
# Both serve the same ECDSA P-256 certificate (signed by a CA made here) and the same
# 39-byte body; the client is `multiclient bench http --tls` (rustls), the same for
# both. With PROFILE=1 the callgrind files of the big runs are kept under
# target/tls-callgrind/ for callgrind_annotate. Everything is written under
# target/tls-callgrind/ (never the system nginx config), servers listen on free
# loopback ports, and only the PIDs started here are signalled.
# Usage: bench/tls-callgrind.sh   (after cargo build --release; needs nginx, valgrind,
#        perf, openssl; N=20000 SMALL=10 by default; B=path/to/multiclient for another
#        build; WHO=ours for ours alone)
set -eu
cd "$(dirname "$0")/.."
. bench/lib.sh
B=${B:-$PWD/target/release/multiclient}
D=$PWD/target/tls-callgrind
N=${N:-20000}
SMALL=${SMALL:-10}
PROFILE=${PROFILE:-0}
WHO=${WHO:-ours nginx}
for c in nginx valgrind perf openssl; do
  command -v $c >/dev/null || { echo "needs $c"; exit 1; }
done
[ -x "$B" ] || { echo "needs $B (cargo build --release)"; exit 1; }
rm -rf "$D"
mkdir -p "$D/tmp"

make_tls_pki "$D" "tls-callgrind CA"

server_cmd() { # WHO PORT
  if [ "$1" = nginx ]; then
    echo "nginx -p $D -e $D/error.log -c $(nginx_https_conf "$D" "$2" 'master_process off;
worker_processes 1;
events { worker_connections 1024; }')"
  else
    echo "$B serve -q --service http=127.0.0.1:$2,tls --tls-cert $D/cert.pem --tls-key $D/key.pem --model async --workers 1 --admin off"
  fi
}

load() { # REQUESTS PORT OUT
  "$B" bench http --addr "127.0.0.1:$2" --tls --ca "$D/ca.pem" --server-name localhost \
    --conns 10 --requests "$1" --secs 600 --timeout 60 --threads 1 --json >"$3" 2>/dev/null
  e=$(python3 -c "import json; r=json.load(open('$3')); print(sum(r['errors'].values()))")
  [ "$e" = 0 ] || { echo "errors in the run of $1: $e" >&2; exit 1; }
}

stop() { # WHO PID
  # SIGINT drains ours; SIGQUIT is nginx's graceful stop. Both then exit and
  # callgrind writes its file; a TERM follows if one does not.
  if [ "$1" = nginx ]; then kill -QUIT "$2"; else kill -INT "$2"; fi
  (sleep 20; kill -TERM "$2" 2>/dev/null) &
  wait "$2" 2>/dev/null || true
}

instructions() { # WHO REQUESTS -> total instructions of the server
  port=$(free_port)
  valgrind --tool=callgrind --trace-children=no --callgrind-out-file="$D/cg.$1.$2" \
    $(server_cmd "$1" "$port") >"$D/valgrind.$1.$2.log" 2>&1 &
  pid=$!
  wait_port "$port" 1200 # a server under valgrind starts slowly
  load "$2" "$port" "$D/bench.cg.$1.$2"
  stop "$1" "$pid"
  sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$D/cg.$1.$2"
}

syscalls() { # WHO REQUESTS -> system calls of the server during the load
  port=$(free_port)
  $(server_cmd "$1" "$port") >/dev/null 2>&1 &
  pid=$!
  wait_port "$port"
  perf stat -x, -e raw_syscalls:sys_enter -p "$pid" -o "$D/perf.$1.$2" &
  ppid=$!
  sleep 0.5
  load "$2" "$port" "$D/bench.sc.$1.$2"
  kill -INT "$ppid"
  wait "$ppid" 2>/dev/null || true
  stop "$1" "$pid"
  awk -F, '/raw_syscalls:sys_enter/ {print $1}' "$D/perf.$1.$2"
}

trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null' INT TERM
echo "load $(cut -d' ' -f1-3 /proc/loadavg); N=$N SMALL=$SMALL over 10 connections" | tee "$D/results"
for who in $WHO; do
  small=$(instructions "$who" "$SMALL")
  big=$(instructions "$who" "$N")
  [ "$PROFILE" = 1 ] || rm -f "$D/cg.$who.$N"
  rm -f "$D/cg.$who.$SMALL"
  s_small=$(syscalls "$who" "$SMALL")
  s_big=$(syscalls "$who" "$N")
  python3 -c "print('$who: %.0f instructions per request (%d - %d over %d); %.2f syscalls per request (%d - %d)' % (($big-$small)/($N-$SMALL), $big, $small, $N-$SMALL, ($s_big-$s_small)/($N-$SMALL), $s_big, $s_small))" | tee -a "$D/results"
done
