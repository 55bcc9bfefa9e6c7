#!/usr/bin/env bash
# The cost of WAIT on a Redis Cluster: bench chat against one instance acknowledging
# by a replica (default) and one publishing at once (?wait=0), on one 3+3 cluster,
# interleaved. Set B to the binary to measure (a release build for real figures).
# One cluster (3+3) on ports P..P+5 (P=17001 by default), its files in DIR
# (/tmp/clu), one instance per variant, interleaved runs; ROUNDS rounds (2). The
# cluster and the instances are stopped at the end.
set -u
B=$(realpath "${B:-target/release/multiclient}")
DIR=${DIR:-/tmp/clu}
P=${P:-17001}
ROUNDS=${ROUNDS:-2}
PORTS=$(seq "$P" $((P + 5)))
mkdir -p "$DIR" && cd "$DIR"
for p in $PORTS; do [ -f $p.pid ] && kill $(cat $p.pid) 2>/dev/null; done
sleep 1; rm -f nodes-*.conf dump.rdb
for p in $PORTS; do redis-server --bind 127.0.0.1 --port $p --cluster-enabled yes --cluster-config-file nodes-$p.conf --cluster-node-timeout 1000 --cluster-require-full-coverage no --save "" --appendonly no --daemonize yes --dir "$DIR" --logfile "$DIR/$p.log" --pidfile "$DIR/$p.pid"; done
sleep 1
redis-cli --cluster create $(for p in $PORTS; do echo 127.0.0.1:$p; done) --cluster-replicas 1 --cluster-yes >/dev/null 2>&1
sleep 4
redis-cli -p "$P" cluster info | head -2
run_variant() { # name url port
  RUST_LOG=warn $B serve --admin off --service chat --addr 127.0.0.1:$3 --redis "$2" > "$DIR/b-$1.log" 2>&1 &
  echo $! > "$DIR/b-$1.pid"
}
WP=$((P + 10200)); NP=$((P + 10201))
run_variant wait "redis+cluster://127.0.0.1:$P" $WP
run_variant nowait "redis+cluster://127.0.0.1:$P?wait=0" $NP
sleep 2
for round in $(seq "$ROUNDS"); do
  for v in wait nowait; do
    port=$([ $v = wait ] && echo $WP || echo $NP)
    echo "== $v round $round load $(cut -d' ' -f1-3 /proc/loadavg)"
    $B bench chat --addr 127.0.0.1:$port --members 100 --rooms 10 --rate 500 --secs 3 --room-prefix $v$round --server-pid $(cat "$DIR/b-$v.pid") 2>&1 | grep -iE "latency|deliver|cpu|p50|p99|fail|msgs" | head -12
  done
done
kill $(cat "$DIR/b-wait.pid") $(cat "$DIR/b-nowait.pid")
for p in $PORTS; do kill $(cat $p.pid) 2>/dev/null; done
