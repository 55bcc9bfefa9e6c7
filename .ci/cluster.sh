#!/usr/bin/env bash
# CI steps for the chat on a Redis Cluster: install redis-server and redis-cli (the
# tests make their own cluster of 3 masters and 3 replicas on free loopback ports with
# `redis-cli --cluster create`), then run tests/chat_cluster.rs. Exits non-zero on any
# failure, and fails (never skips) when redis-server is missing. Runnable with CI=true,
# no stdin, on a clean clone.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    echo "cluster.sh: installing redis-server and redis-tools"
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server redis-tools
fi
# Sharded pub/sub (SSUBSCRIBE/SPUBLISH) needs Redis 7.
redis-server --version
major=$(redis-server --version | sed -n 's/.* v=\([0-9]*\)\..*/\1/p')
if [ "${major:-0}" -lt 7 ]; then
    echo "cluster.sh: Redis 7 or later is needed (sharded pub/sub); found ${major:-none}" >&2
    exit 1
fi

# Two instances on the cluster: order, AFTER, WHO and owned nicks in rooms on three
# masters; a master SIGKILLed while SAYs flow loses no acknowledged message, and the
# rooms on the other masters are answered meanwhile. One at a time: each makes six
# redis-server processes.
cargo test --test chat_cluster -- --ignored --test-threads 1
# The chat suite's checks that do not stop or slow Redis, on a cluster: order and
# AFTER under a burst, owned nicks, tokens, pipelined SAYs in command order.
cargo test --test chat_redis -- --ignored --test-threads 1 ::cluster
echo "cluster.sh: all cluster checks passed"
