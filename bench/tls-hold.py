#!/usr/bin/env python3
"""Idle connections held against an ack or http server, plain or TLS, and the server's
RSS per connection from /proc: the memory an idle TLS connection costs next to a
plaintext one, or next to another server's, measured by the same client.

Usage: bench/tls-hold.py --pid PID[,PID...] --port PORT [--tls CA.pem] [--http]
                         [--conns 2000]

Opens --conns connections (at most 200 handshakes in flight), proves each served by
one `ACK!` (with --http: one keep-alive `GET /` answered with the http hello body),
holds them all for --hold seconds, reads VmRSS of every --pid (summed: nginx's master
and workers) before the first and with every connection held, and prints one JSON
line. Bounded: every connection and the whole run have timeouts; loopback only."""

import argparse
import asyncio
import json
import ssl
import sys
import time


HTTP_BODY = b"Hello from Multi-threaded Flask Server!"


def rss_kib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
            else:
                raise SystemExit(f"no VmRSS for {pid}")
    return total


async def probe(r, w, http):
    if http:
        w.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await w.drain()
        got = await asyncio.wait_for(r.readuntil(HTTP_BODY), 10)
        if not got.startswith(b"HTTP/1.1 200"):
            raise ValueError(got)
        return
    w.write(b"x")
    await w.drain()
    got = await asyncio.wait_for(r.readexactly(4), 10)
    if got != b"ACK!":
        raise ValueError(got)


async def one(port, ctx, http, gate, held, errors):
    async with gate:
        try:
            r, w = await asyncio.wait_for(
                asyncio.open_connection(
                    "127.0.0.1", port, ssl=ctx, server_hostname="localhost" if ctx else None
                ),
                10,
            )
            await probe(r, w, http)
            held.append((r, w))
        except Exception as e:  # counted and reported, never silently dropped
            errors.append(repr(e))


async def main(a):
    ctx = None
    if a.tls:
        ctx = ssl.create_default_context(cafile=a.tls)
    pids = [int(p) for p in a.pid.split(",")]
    before = rss_kib(pids)
    gate = asyncio.Semaphore(200)
    held, errors = [], []
    t0 = time.monotonic()
    await asyncio.wait_for(
        asyncio.gather(*(one(a.port, ctx, a.http, gate, held, errors) for _ in range(a.conns))),
        120,
    )
    opened = time.monotonic() - t0
    await asyncio.sleep(a.hold)
    after = rss_kib(pids)
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
    p.add_argument("--pid", required=True, help="PID, or PIDs separated by commas (summed)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tls", metavar="CA.pem")
    p.add_argument("--http", action="store_true", help="probe with a keep-alive GET /")
    p.add_argument("--conns", type=int, default=2000)
    p.add_argument("--hold", type=float, default=2.0)
    sys.exit(asyncio.run(main(p.parse_args())))
