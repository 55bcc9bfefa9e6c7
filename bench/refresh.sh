#!/bin/sh
# Re-runs the two `bench compare` tables of BENCHMARKS.md (ack and hello: every model,
# the seeds' Python servers and tokio-min, 10/100/1000 connections, median of 3 runs of
# 5 s) with the very commands recorded there (bench/compare-ack.sh,
# bench/compare-hello.sh), and keeps the raw outputs in bench/results/refresh-<UTC>/
# with a description of the machine and its load. The plots in bench/plots/ are
# redrawn by those scripts.
#
# Meant for a quiet machine: it refuses to start when the 1-minute load average is
# above $MAX_LOAD (default 1.0; FORCE=1 runs anyway and says so in the results), since
# on a loaded machine the figures measure the neighbours (see "Machine and method").
#
# Bounded: the measuring part stops after 870 s (14.5 min) whatever happens (ack gets
# 400 s, hello what is left; the normal run takes about 12 min). The build before it is
# not counted. Loopback only (the compare scripts bind 127.0.0.1). The servers are
# started by `bench compare` in sessions of their own and are killed by it, or by the
# kernel when it dies (PR_SET_PDEATHSIG), so a timeout leaves nothing behind; this
# script kills nothing else.
#
# SMOKE=1: a 20-second check of the plumbing instead (one model and one peer per
# service, one level, one run of 1 s, results in a temporary directory).
#
# Exit status: 0 when both tables were measured in time; non-zero otherwise (the
# partial output is kept).
set -eu
cd "$(dirname "$0")/.."

say() { echo "refresh: $*" >&2; }
fail() { say "$*"; exit 1; }

for tool in cargo python3 taskset timeout nice; do
  command -v "$tool" >/dev/null || fail "$tool not found"
done
[ "$(nproc)" -ge 2 ] || fail "needs 2 CPUs (tester on CPU 0, servers on CPU 1)"

say "building (release)"
cargo build --release --bin multiclient --example peer_tokio_ack >&2 \
  || fail "release build failed"
B=target/release/multiclient

stamp=$(date -u +%Y%m%dT%H%M%SZ)
if [ "${SMOKE:-0}" = 1 ]; then
  out=$(mktemp -d "${TMPDIR:-/tmp}/refresh-smoke.XXXXXX")
else
  out=bench/results/refresh-$stamp
fi
mkdir -p "$out"

load=$(cut -d' ' -f1 /proc/loadavg)
max_load=${MAX_LOAD:-1.0}
quiet=$(awk -v l="$load" -v m="$max_load" 'BEGIN { print (l <= m) ? "yes" : "no" }')
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "kernel: $(uname -sr)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//') x $(nproc)"
  echo "memory: $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
  echo "ulimit -n: $(ulimit -n)"
  echo "sched_autogroup_enabled: $(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null || echo n/a)"
  echo "rustc: $(rustc --version)"
  echo "python: $(python3 --version 2>&1)"
  echo "load before: $(cat /proc/loadavg) (quiet: $quiet, limit $max_load)"
} > "$out/machine.txt"

if [ "$quiet" != yes ]; then
  if [ "${FORCE:-0}" = 1 ] || [ "${SMOKE:-0}" = 1 ]; then
    say "load average $load is above $max_load: running anyway, the figures will be noisy"
    echo "WARNING: not a quiet machine (load $load); run forced" >> "$out/machine.txt"
  else
    rm -r "$out"
    fail "load average $load is above $max_load: not a quiet machine (FORCE=1 to run anyway)"
  fi
fi

start=$(date +%s)
budget=870
status=0

# run NAME SECONDS COMMAND...: one compare, bounded, its stdout and stderr kept.
run() {
  name=$1; limit=$2; shift 2
  say "$name: up to ${limit} s, output in $out/$name.txt"
  rc=0
  timeout "$limit" "$@" > "$out/$name.txt" 2>&1 || rc=$?
  if [ "$rc" = 124 ]; then
    say "$name: stopped at its time limit (${limit} s); partial output kept"
    echo "STOPPED at the time limit of ${limit} s: partial" >> "$out/$name.txt"
    status=1
  elif [ "$rc" != 0 ]; then
    say "$name: failed with status $rc (see $out/$name.txt)"
    status=1
  fi
}

left() {
  echo $((budget - ($(date +%s) - start)))
}

if [ "${SMOKE:-0}" = 1 ]; then
  smoke="--conns 10 --runs 1 --secs 1 --threads 1 --server-cpus 1"
  run compare-ack 60 taskset -c 0 "$B" bench compare --service ack --models async $smoke \
    --peer "tokio-min=target/release/examples/peer_tokio_ack {port}"
  run compare-hello 60 taskset -c 0 "$B" bench compare --service hello --models threads $smoke \
    --peer "py-threads=python3 bench/peers/thread_hello.py {port}"
else
  run compare-ack 400 bench/compare-ack.sh
  rest=$(left)
  [ "$rest" -gt 30 ] || rest=30
  run compare-hello "$rest" bench/compare-hello.sh
fi

echo "load after: $(cat /proc/loadavg); measuring took $(($(date +%s) - start)) s" >> "$out/machine.txt"
for f in "$out"/compare-*.txt; do
  grep -q "the seeds' table, measured" "$f" || { say "$f has no table"; status=1; }
  if grep -q "tester-starved\|tester starved" "$f"; then
    say "$f: some points had a starved tester (the machine was busy); see the marks"
  fi
done
say "results in $out (exit $status)"
exit "$status"
