#!/bin/sh
# The worst one chat connection can make the server hold (issue 10 §3): one connection
# joins 1,000 rooms and says 100 messages of 4,000 bytes in each, reading what comes
# back; then, on a fresh server, one sends 100,000 JOINs. RSS of the server (VmRSS,
# /proc/PID/status) before, at its peak (sampled every 100 ms) and 5 s after the
# connection left. Bounded: each attack stops after 90 s.
# Usage: bench/chat-memory.sh [BINARY [SERVE ARGS...]]
set -eu
cd "$(dirname "$0")/.."
. bench/lib.sh
B=${1:-target/release/multiclient}
[ $# -gt 0 ] && shift
pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null' EXIT

attack() { # NAME [SERVE ARGS...]: one attack (python, below) on a fresh server
  name=$1
  shift
  port=$(free_port)
  "$B" serve --service "chat=127.0.0.1:$port" "$@" >/dev/null 2>&1 &
  pid=$!
  wait_port "$port"
  sleep 0.5
  python3 - "$port" "$name" "$pid" <<'PY'
import socket, sys, threading, time
port, name, pid = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def status(key):
    with open(f"/proc/{pid}/status") as f:
        for l in f:
            if l.startswith(key + ":"):
                return int(l.split()[1]) // 1024
def rss():
    return status("VmRSS")
before, peak, stop = rss(), [0], time.time() + 90
s = socket.create_connection(("127.0.0.1", port))
done, answered, got = threading.Event(), threading.Event(), [0, 0]
def read():
    while not done.is_set():
        try:
            d = s.recv(1 << 20)
        except OSError:
            break
        if not d:
            break
        got[0] += d.count(b"\n")
        got[1] += d.count(b"ERR too-many-rooms")
        if b"WHO r0" in d or b"ERR no-such-room" in d:
            answered.set()  # The last command: everything before it is answered.
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.1)
threading.Thread(target=read, daemon=True).start()
threading.Thread(target=sample, daemon=True).start()
if name == "say":
    text = b"x" * 4000
    for r in range(1000):
        s.sendall(b"JOIN r%d\n" % r)
    for i in range(100):
        if time.time() > stop:
            break
        s.sendall(b"".join(b"SAY r%d %s\n" % (r, text) for r in range(1000)))
else:
    for i in range(0, 100000, 1000):
        if time.time() > stop:
            break
        s.sendall(b"".join(b"JOIN j%d\n" % j for j in range(i, i + 1000)))
s.sendall(b"WHO r0\n")
answered.wait(max(1, stop - time.time()))
peak[0] = max(peak[0], rss())
# shutdown() first: a close() alone leaves the socket open while the reader thread is
# still blocked in recv() on it, and the server would still see the member.
s.shutdown(socket.SHUT_RDWR)
s.close()
time.sleep(5)
done.set()
print(f"{name}: rss before {before} MB, peak {peak[0]} MB, 5 s after it left {rss()} MB "
      f"(of which anonymous {status('RssAnon')} MB, file {status('RssFile')} MB) "
      f"({got[0]} lines read, {got[1]} too-many-rooms, "
      f"{'all answered' if answered.is_set() else 'stopped at 90 s'})")
PY
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=
}
attack say "$@"
attack join "$@"
