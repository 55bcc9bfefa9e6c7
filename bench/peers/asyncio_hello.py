"""Seed 003 §7: asyncio.start_server; read(100), `Hello from server!`, close."""
import asyncio

from _port import port


async def handle_client(reader, writer):
    data = await reader.read(100)
    message = data.decode(errors="replace")
    print(f"Received: {message}")

    writer.write("Hello from server!".encode())
    await writer.drain()
    writer.close()


async def main():
    server = await asyncio.start_server(handle_client, "localhost", port(8081))
    async with server:
        await server.serve_forever()


asyncio.run(main())
