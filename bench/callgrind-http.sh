#!/bin/sh
# Instructions per keep-alive HTTP request of one server (`GET /`, answered with the
# `http` service's hello), counted by callgrind: the server runs under
# `valgrind --tool=callgrind` for N requests over 10 connections, then for 2,000; the
# difference divided by N - 2,000 leaves out startup, the first requests' warm-up
# (allocations, the first `Date`) and shutdown. BENCH_ARGS='--pipeline 16' counts
# pipelined requests instead.
# Usage: bench/callgrind-http.sh NAME 'COMMAND with {port}' [N]   (N default 22,000)
#   bench/callgrind-http.sh floor "target/release/examples/floor_http {port}"
#   bench/callgrind-http.sh ours "target/release/multiclient serve --service http --addr 127.0.0.1:{port}"
exec "$(dirname "$0")/callgrind.sh" http "$1" "$2" "${3:-22000}" 2000
