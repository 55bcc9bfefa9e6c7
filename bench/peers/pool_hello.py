"""Seed 003 §3: ThreadPoolExecutor(max_workers=10); one recv(1024), `Hello from
server!`, close; listen(5)."""
import concurrent.futures
import socket

from _port import port


def handle_client(client_socket, addr):
    print(f"Connected to {addr}")
    data = client_socket.recv(1024).decode(errors="replace")
    print(f"Received: {data}")
    client_socket.send("Hello from server!".encode())
    client_socket.close()


server_socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server_socket.bind(("localhost", port(8081)))
server_socket.listen(5)
print("Server listening on port ...", flush=True)

with concurrent.futures.ThreadPoolExecutor(max_workers=10) as executor:
    while True:
        client_socket, addr = server_socket.accept()
        executor.submit(handle_client, client_socket, addr)
