#!/usr/bin/env bash
# The cost of WAIT on a Redis Cluster: bench chat against one instance acknowledging
# by a replica (default) and one publishing at once (?wait=0), on one 3+3 cluster,
# interleaved. Set B to the binary to measure (a release build for real figures).
# One cluster (3+3) on 17001-17006, one instance per variant, interleaved runs.
set -u
B=$(realpath "${B:-target/release/multiclient}")
mkdir -p /tmp/clu && cd /tmp/clu
for p in 17001 17002 17003 17004 17005 17006; do [ -f $p.pid ] && kill $(cat $p.pid) 2>/dev/null; done
sleep 1; rm -f nodes-*.conf dump.rdb
for p in 17001 17002 17003 17004 17005 17006; do redis-server --bind 127.0.0.1 --port $p --cluster-enabled yes --cluster-config-file nodes-$p.conf --cluster-node-timeout 1000 --cluster-require-full-coverage no --save "" --appendonly no --daemonize yes --dir /tmp/clu --logfile /tmp/clu/$p.log --pidfile /tmp/clu/$p.pid; done
sleep 1
redis-cli --cluster create 127.0.0.1:17001 127.0.0.1:17002 127.0.0.1:17003 127.0.0.1:17004 127.0.0.1:17005 127.0.0.1:17006 --cluster-replicas 1 --cluster-yes >/dev/null 2>&1
sleep 4
redis-cli -p 17001 cluster info | head -2
run_variant() { # name url port
  RUST_LOG=warn $B serve --admin off --service chat --addr 127.0.0.1:$3 --redis "$2" > /tmp/clu/b-$1.log 2>&1 &
  echo $! > /tmp/clu/b-$1.pid
}
run_variant wait "redis+cluster://127.0.0.1:17001" 27201
run_variant nowait "redis+cluster://127.0.0.1:17001?wait=0" 27202
sleep 2
for round in 1 2; do
  for v in wait nowait; do
    port=$([ $v = wait ] && echo 27201 || echo 27202)
    echo "== $v round $round load $(cut -d' ' -f1-3 /proc/loadavg)"
    $B bench chat --addr 127.0.0.1:$port --members 100 --rooms 10 --rate 500 --secs 3 --room-prefix $v$round --server-pid $(cat /tmp/clu/b-$v.pid) 2>&1 | grep -iE "latency|deliver|cpu|p50|p99|fail|msgs" | head -12
  done
done
kill $(cat /tmp/clu/b-wait.pid) $(cat /tmp/clu/b-nowait.pid)
