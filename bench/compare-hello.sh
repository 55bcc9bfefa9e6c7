#!/bin/sh
# Every model and the seeds' hello servers (thread, pool of 10, socketserver, asyncio):
# connections per second at 10, 100 and 1000 concurrent clients, 3 runs of 5 s.
set -eu
cd "$(dirname "$0")/.."
B=target/release/multiclient
nice -n -20 taskset -c 0 $B bench compare --service hello --conns 10,100,1000 --runs 3 --secs 5 \
  --threads 1 --server-cpus 1 \
  --peer "py-threads=python3 bench/peers/thread_hello.py {port}" \
  --peer "py-pool10=python3 bench/peers/pool_hello.py {port}" \
  --peer "py-socketserver=python3 bench/peers/socketserver_hello.py {port}" \
  --peer "py-asyncio=python3 bench/peers/asyncio_hello.py {port}" \
  --plot bench/plots/hello.svg "$@"
