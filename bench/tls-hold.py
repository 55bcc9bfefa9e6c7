#!/usr/bin/env python3
"""Idle connections held against an ack server, plain or TLS, and the server's RSS
per connection from /proc: the memory an idle TLS connection costs next to a
plaintext one, measured by the same client.

Usage: bench/tls-hold.py --pid PID --port PORT [--tls CA.pem] [--conns 2000]

Opens --conns connections (at most 200 handshakes in flight), proves each served by
one `ACK!`, holds them all for --hold seconds, reads VmRSS of --pid before the first
and with every connection held, and prints one JSON line. Bounded: every connection
and the whole run have timeouts; loopback only."""

import argparse
import asyncio
import json
import ssl
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS")


async def one(port, ctx, gate, held, errors):
    async with gate:
        try:
            r, w = await asyncio.wait_for(
                asyncio.open_connection(
                    "127.0.0.1", port, ssl=ctx, server_hostname="localhost" if ctx else None
                ),
                10,
            )
            w.write(b"x")
            await w.drain()
            got = await asyncio.wait_for(r.readexactly(4), 10)
            if got != b"ACK!":
                raise ValueError(got)
            held.append((r, w))
        except Exception as e:  # counted and reported, never silently dropped
            errors.append(repr(e))


async def main(a):
    ctx = None
    if a.tls:
        ctx = ssl.create_default_context(cafile=a.tls)
    before = rss_kib(a.pid)
    gate = asyncio.Semaphore(200)
    held, errors = [], []
    t0 = time.monotonic()
    await asyncio.wait_for(
        asyncio.gather(*(one(a.port, ctx, gate, held, errors) for _ in range(a.conns))), 120
    )
    opened = time.monotonic() - t0
    await asyncio.sleep(a.hold)
    after = rss_kib(a.pid)
    for _, w in held:
        w.close()
    print(
        json.dumps(
            {
                "tls": bool(ctx),
                "established": len(held),
                "errors": len(errors),
                "first_error": errors[0] if errors else None,
                "open_secs": round(opened, 2),
                "rss_before_kib": before,
                "rss_held_kib": after,
                "kib_per_conn": round((after - before) / max(len(held), 1), 2),
            }
        )
    )
    return 0 if not errors else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tls", metavar="CA.pem")
    p.add_argument("--conns", type=int, default=2000)
    p.add_argument("--hold", type=float, default=2.0)
    sys.exit(asyncio.run(main(p.parse_args())))
