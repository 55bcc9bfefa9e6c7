#!/usr/bin/env python3
"""A Socket.IO room under a fixed rate, for the chat's comparison with Socket.IO
(bench/socketio-chat.sh): MEMBERS clients join one room of bench/peers/socketio_chat.py
over Engine.IO v4's WebSocket transport (spoken here directly on `websockets`, much
lighter than python-socketio's client); the first also sends RATE messages a second
for SECS seconds. Every member checks it gets each message once, in order, and keeps
its latency. Prints one JSON line: deliveries, the ones expected, latency percentiles,
and the server's CPU per delivery over the sending phase (utime + stime of PID from
/proc).

Usage: bench/socketio-load.py PORT PID [MEMBERS 1000] [RATE 10] [SECS 10]
"""
import asyncio
import json
import os
import sys
import time

import websockets

port, pid = int(sys.argv[1]), int(sys.argv[2])
members = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
rate = float(sys.argv[4]) if len(sys.argv) > 4 else 10.0
secs = float(sys.argv[5]) if len(sys.argv) > 5 else 10.0
URL = f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_secs(p):
    """utime + stime of process p, in seconds (the peer is one process)."""
    f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


class Member:
    def __init__(self):
        self.next = 0
        self.lat = []
        self.wrong = 0
        self.warm = asyncio.Event()
        self.done = asyncio.Event()


async def handshake(ws):
    opened = await ws.recv()
    if not opened.startswith("0{"):
        raise RuntimeError(f"got {opened!r} for the open packet")
    await ws.send("40")
    connected = await ws.recv()
    if not connected.startswith("40"):
        raise RuntimeError(f"got {connected!r} for the namespace")
    await ws.send('42["join",{"room":"bench"}]')
    while True:
        m = await ws.recv()
        if m == "2":
            await ws.send("3")
        elif m.startswith('42["joined"'):
            return


async def reader(ws, m, total):
    async for frame in ws:
        if frame == "2":
            await ws.send("3")
            continue
        if not frame.startswith('42["msg"'):
            continue
        now = time.monotonic()
        try:
            text = json.loads(frame[2:])[1]["text"].split()
        except (ValueError, IndexError, KeyError, TypeError):
            m.wrong += 1
            continue
        if text[0] == "w":
            m.warm.set()
        elif text[0] == "m":
            seq, at = int(text[1]), float(text[2])
            if seq != m.next:
                m.wrong += 1
            m.next = seq + 1
            m.lat.append(now - at)
            if m.next == total:
                m.done.set()


async def main():
    total = int(rate * secs)
    ms = [Member() for _ in range(members)]
    socks = []
    # Connect in steps of 100: the peer's backlog holds a step.
    for i in range(0, members, 100):
        step = await asyncio.gather(*(websockets.connect(URL, max_queue=None) for _ in range(i, min(members, i + 100))))
        await asyncio.gather(*(handshake(ws) for ws in step))
        socks.extend(step)
    tasks = [asyncio.create_task(reader(ws, m, total)) for ws, m in zip(socks, ms)]
    say = socks[0]
    await say.send('42["say",{"room":"bench","text":"w"}]')
    await asyncio.wait_for(asyncio.gather(*(m.warm.wait() for m in ms)), 30)
    cpu0, tester0, t0 = cpu_secs(pid), time.process_time(), time.monotonic()
    interval = 1 / rate
    for seq in range(total):
        due = t0 + seq * interval
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await say.send('42["say",{"room":"bench","text":"m %d %.6f"}]' % (seq, due))
    try:
        await asyncio.wait_for(asyncio.gather(*(m.done.wait() for m in ms)), 30)
    except asyncio.TimeoutError:
        pass
    cpu1, tester1 = cpu_secs(pid), time.process_time()
    lat = sorted(x for m in ms for x in m.lat)
    deliveries = len(lat)
    pct = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1e6) if lat else None
    print(json.dumps({
        "members": members, "rate": rate, "secs": secs,
        "deliveries": deliveries, "expected_deliveries": total * members,
        "out_of_order": sum(m.wrong for m in ms),
        "p50_us": pct(0.50), "p99_us": pct(0.99), "max_us": pct(1.0),
        "server_cpu_secs": round(cpu1 - cpu0, 3),
        "server_cpu_us_per_delivery": round((cpu1 - cpu0) * 1e6 / deliveries, 2) if deliveries else None,
        "tester_cpu_secs": round(tester1 - tester0, 3),
    }))
    for t in tasks:
        t.cancel()
    for ws in socks:
        await ws.close()


asyncio.run(main())
