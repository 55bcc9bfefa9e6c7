#!/bin/sh
# The worst RSS that WebSocket clients each holding an unfinished message can cause:
# CONNS clients open a WebSocket on the ws service, each sends the header of a
# 1,000,000-byte binary frame and all of it but 1,000 bytes, and waits. The server's
# RSS (from /proc) before, at its peak while they hold, and 3 s after they leave;
# with how many were refused (close 1013) instead.
# Usage: bench/ws-unfinished.sh 'EXTRA SERVE FLAGS' [CONNS]
#   bench/ws-unfinished.sh '--max-buffered 1000000000000' 300   # no effective budget
#   bench/ws-unfinished.sh '' 1000                              # the default 256 MiB
# Bounded: at most 2,000 connections, 60 s per phase.
set -eu
cd "$(dirname "$0")/.."
. bench/lib.sh
B=${MC:-target/release/multiclient}
flags=$1; conns=${2:-300}
[ "$conns" -le 2000 ] || { echo "at most 2000 connections" >&2; exit 1; }
start_server ws "$B serve --service ws --addr 127.0.0.1:{port} --max-conns 10000 $flags" || exit 1
trap 'kill $pid 2>/dev/null || true' EXIT
python3 - "$port" "$pid" "$conns" <<'EOF'
import base64, os, socket, struct, sys, time
port, pid, conns = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
SIZE, SHORT = 1_000_000, 1_000

def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

def handshake():
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        d = s.recv(4096)
        if not d:
            raise RuntimeError("closed during the handshake")
        head += d
    assert head.startswith(b"HTTP/1.1 101"), head[:40]
    return s, head.split(b"\r\n\r\n", 1)[1]

before = rss_kib()
header = bytes([0x02, 0x80 | 127]) + struct.pack(">Q", SIZE) + b"\0\0\0\0"
body = b"x" * (SIZE - SHORT)
held, peak = [], before
for _ in range(conns):
    s, _rest = handshake()
    s.sendall(header + body)
    held.append(s)
    peak = max(peak, rss_kib())
# Let the server take in what is still in flight, then count the refused.
deadline = time.time() + 10
while time.time() < deadline:
    peak = max(peak, rss_kib())
    time.sleep(0.2)
refused = 0
for s in held:
    s.setblocking(False)
    try:
        d = s.recv(64)
        if d[:1] == b"\x88" and len(d) >= 4 and struct.unpack(">H", d[2:4])[0] == 1013:
            refused += 1
    except BlockingIOError:
        pass
    except OSError:
        pass
for s in held:
    s.close()
time.sleep(3)
after = rss_kib()
print(f"{conns} clients each holding an unfinished {SIZE}-byte message: "
      f"RSS {before} KiB before, {peak} KiB peak ({(peak - before) / 1024:.0f} MiB more), "
      f"{after} KiB 3 s after they left; {refused} refused with 1013")
EOF
