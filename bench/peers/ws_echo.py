"""Seed 003 §6: the websockets server in a thread with its own event loop, replying
`Server received: <message>` to every message. The seed's `handle_client(websocket,
path)` is the legacy handler signature; current websockets passes only the
connection."""
import asyncio
import threading

import websockets

from _port import port


async def handle_client(websocket):
    async for message in websocket:
        print(f"Received: {message}")
        await websocket.send(f"Server received: {message}")


def start_server():
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    async def serve():
        async with websockets.serve(handle_client, "localhost", port(8765)):
            await asyncio.Future()

    loop.run_until_complete(serve())


server_thread = threading.Thread(target=start_server)
server_thread.start()
# The seed returns here; since Python 3.9 a thread that starts its executor (for
# getaddrinfo) after the main thread has finished fails, so the main thread waits.
server_thread.join()
