#!/usr/bin/env python3
"""Talks to a multiclient ws endpoint with the Python `websockets` client (a real
third-party implementation): text, binary, large and fragmented messages, ping, and a
clean close. Usage: ws_client.py ws://127.0.0.1:PORT/PATH [--echo]. Exits non-zero on
the first wrong answer."""

import asyncio
import sys

import websockets

PREFIX = "Server received: "


def expect(got, want, what):
    if got != want:
        shown = lambda v: repr(v) if len(v) < 80 else f"{type(v).__name__} of {len(v)}"
        sys.exit(f"FAIL {what}: got {shown(got)}, want {shown(want)}")
    print(f"ok   {what}")


async def main(url, echo):
    def reply(m):
        if echo:
            return m
        return PREFIX + m if isinstance(m, str) else PREFIX.encode() + m

    async with websockets.connect(url, max_size=None, compression=None) as ws:
        await ws.send("hi")
        expect(await ws.recv(), reply("hi"), "text")
        await ws.send("héllo wörld ✓")
        expect(await ws.recv(), reply("héllo wörld ✓"), "non-ASCII text")
        await ws.send(b"\x00\x01\xfe\xff")
        expect(await ws.recv(), reply(b"\x00\x01\xfe\xff"), "binary")
        big = "x" * 900_000
        await ws.send(big)
        expect(await ws.recv(), reply(big), "large text (900 kB)")
        big_bin = bytes(range(256)) * 2000
        await ws.send(big_bin)
        expect(await ws.recv(), reply(big_bin), "large binary (512 kB)")
        await ws.send(["frag", "men", "ted ✓"])
        expect(await ws.recv(), reply("fragmented ✓"), "fragmented text")
        await ws.send([b"\x01\x02", b"\x03"])
        expect(await ws.recv(), reply(b"\x01\x02\x03"), "fragmented binary")
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, 5)
        print("ok   ping/pong")
    expect(ws.close_code, 1000, "clean close")


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(sys.argv[1], "--echo" in sys.argv[2:]), 60))
