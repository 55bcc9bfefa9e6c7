#!/bin/sh
# The ack round-trip comparison at 100 connections: our async model against the
# minimal tokio server and the seeds' Python ACK servers, 3 runs of 5 s each, median
# kept; the tester on CPU 0, each server pinned to CPU 1.
set -eu
cd "$(dirname "$0")/.."
B=target/release/multiclient
nice -n -20 taskset -c 0 $B bench compare --service ack --conns 100 --models async --runs 3 --secs 5 \
  --threads 1 --server-cpus 1 \
  --peer "tokio-min=target/release/examples/peer_tokio_ack {port}" \
  --peer "py-threads=python3 bench/peers/thread_ack.py {port}" \
  --peer "py-asyncio=python3 bench/peers/asyncio_ack.py {port}" "$@"
