#!/bin/sh
# Instructions per ACK round trip of one server, counted by callgrind (deterministic,
# unlike CPU time on a shared machine): the server runs under
# `valgrind --tool=callgrind` for N round trips over 10 connections, then for 10; the
# difference, divided by the difference in round trips, leaves out startup and shutdown.
# Usage: bench/callgrind-ack.sh NAME 'COMMAND with {port}' [N]
# SERVICE=hello measures a connection instead (the hello service: connect, one message,
# its reply, close), for costs paid per accept. TESTER names the load binary.
B=${TESTER:-${B:-target/release/multiclient}} \
  exec "$(dirname "$0")/callgrind.sh" "${SERVICE:-ack}" "$1" "$2" "${3:-20000}" 10
