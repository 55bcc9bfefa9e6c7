#!/bin/sh
# Instructions per chat delivery of one server, counted by callgrind (deterministic,
# unlike CPU time on a shared machine): the server runs under
# `valgrind --tool=callgrind` while `multiclient bench chat` sends RATE messages a
# second to a room of MEMBERS for SHORT seconds, then (a fresh server) for LONG
# seconds; the difference in instructions over the difference in deliveries leaves out
# startup, the members' joins and shutdown. User space only: the kernel's share is
# not counted.
# Usage: bench/callgrind-chat.sh NAME 'COMMAND with {port}'
#   MEMBERS (100), RATE (20), SHORT (2), LONG (7).
# Example: bench/callgrind-chat.sh ours \
#   'target/release/multiclient serve --service chat=127.0.0.1:{port} --admin off'
#          bench/callgrind-chat.sh floor 'target/release/examples/floor_chat {port}'
set -eu
cd "$(dirname "$0")/.."
. bench/lib.sh
B=${B:-target/release/multiclient}
MEMBERS=${MEMBERS:-100}
RATE=${RATE:-20}
SHORT=${SHORT:-2}
LONG=${LONG:-7}
name=$1; cmd=$2
out=${TMPDIR:-/tmp}/callgrind-chat.$$
mkdir -p "$out"
run() { # seconds -> "instructions deliveries"
  callgrind_start "$out/cg.$1" "$cmd" || { echo "$name did not start" >&2; exit 1; }
  $B bench chat --addr 127.0.0.1:$port --members "$MEMBERS" --rate "$RATE" --secs "$1" \
    --threads 1 --json >"$out/bench.$1" 2>/dev/null
  callgrind_stop
  python3 - "$out/bench.$1" "$out/cg.$1" <<'PY'
import json, re, sys
r = json.load(open(sys.argv[1]))
lost = r["expected_deliveries"] - r["deliveries"]
if lost or any(v for v in r["errors"].values() if isinstance(v, int)):
    sys.exit("%d deliveries missing, errors %s" % (lost, r["errors"]))
total = next(int(m.group(1)) for m in map(re.compile(r"^totals: *(\d+)").match, open(sys.argv[2])) if m)
print(total, r["deliveries"])
PY
}
# shellcheck disable=SC2046
set -- $(run "$SHORT") $(run "$LONG")
python3 -c "print('$name: %.0f instructions per chat delivery (%d - %d over %d - %d deliveries)' % (($3 - $1) / ($4 - $2), $3, $1, $4, $2))"
rm -rf "$out"
