"""The ACK server of seeds 000/001 in the shape of seed 003 §7 (asyncio.start_server,
the seeds' asyncio alternative): `ACK!` for every read(1024), close on EOF."""
import asyncio

from _port import port


async def handle_client(reader, writer):
    while True:
        data = await reader.read(1024)
        if not data:
            break
        print(f"Received: {data.decode(errors='replace')}")
        writer.write("ACK!".encode())
        await writer.drain()
    writer.close()


async def main():
    server = await asyncio.start_server(handle_client, "localhost", port(9999))
    async with server:
        await server.serve_forever()


asyncio.run(main())
