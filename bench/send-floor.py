#!/usr/bin/env python3
"""The floor of a room's fan-out on this machine: one loopback `send` of a chat line
to each of N connected sockets, timed (wall and CPU of this process) over several
rounds, with the receiving ends drained between rounds so no send ever blocks.

On loopback the receiver's TCP processing runs in the sender's system call, so the
CPU per send here is what a server pays per delivery when every member gets its own
write. Python adds well under a microsecond per call (the loop without the send is
timed and subtracted).

A room larger than one process may hold sockets for (N sockets are 2N descriptors
here) is measured on SCALE sockets at most and its fan-out computed for N: the per-send
cost does not depend on how many sockets share the loop.

Usage: bench/send-floor.py [N] [ROUNDS] [SCALE]   (default 5000 sockets, 10 rounds,
SCALE 9000)
"""
import socket
import sys
import time

n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 10
members = n
n = min(n, int(sys.argv[3]) if len(sys.argv) > 3 else 9000)
line = b"MSG bench0 member17 1234 hello from the floor loop\n"

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(4096)
port = listener.getsockname()[1]
senders, receivers = [], []
for _ in range(n):
    c = socket.create_connection(("127.0.0.1", port))
    s, _ = listener.accept()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    senders.append(s)
    receivers.append(c)

empty = time.perf_counter()
for s in senders:
    pass
empty = time.perf_counter() - empty

walls, cpus = [], []
for _ in range(rounds):
    w0, c0 = time.perf_counter(), time.process_time()
    for s in senders:
        s.send(line)
    w1, c1 = time.perf_counter(), time.process_time()
    walls.append((w1 - w0 - empty) / n * 1e6)
    cpus.append((c1 - c0) / n * 1e6)
    for c in receivers:
        got = 0
        while got < len(line):
            got += len(c.recv(4096))
walls.sort()
cpus.sort()
print("send floor: %d sockets x %d rounds, %d-byte line: per send wall p50 %.2f us (min %.2f, max %.2f), CPU p50 %.2f us; one fan-out to %d members = %.1f ms"
      % (n, rounds, len(line), walls[len(walls) // 2], walls[0], walls[-1], cpus[len(cpus) // 2], members, walls[len(walls) // 2] * members / 1000))
