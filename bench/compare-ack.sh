#!/bin/sh
# Every model and the peers under the ack workload at 10, 100 and 1000 connections,
# 3 runs of 5 s per point (median kept); tester on CPU 0, servers on CPU 1.
set -eu
cd "$(dirname "$0")/.."
B=target/release/multiclient
nice -n -20 taskset -c 0 $B bench compare --service ack --conns 10,100,1000 --runs 3 --secs 5 \
  --threads 1 --server-cpus 1 \
  --peer "tokio-min=target/release/examples/peer_tokio_ack {port}" \
  --peer "py-threads=python3 bench/peers/thread_ack.py {port}" \
  --peer "py-asyncio=python3 bench/peers/asyncio_ack.py {port}" \
  --plot bench/plots/ack.svg "$@"
