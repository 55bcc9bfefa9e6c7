"""Seed 001: a thread per client, `ACK!` for every recv(1024), listen(5)."""
import socket
import threading

from _port import port


def handle_client(client_socket):
    """Function to receive data from the client."""
    try:
        while True:
            message = client_socket.recv(1024)
            if not message:
                break
            print(f"Received: {message.decode(errors='replace')}")
            client_socket.send("ACK!".encode())
    finally:
        client_socket.close()


def start_server():
    """Function to start the server and accept connections."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port(9999)))
    server.listen(5)  # Listen for up to 5 connections
    print(f"Listening on port {server.getsockname()[1]}...", flush=True)

    while True:
        client_sock, addr = server.accept()
        print(f"Accepted connection from: {addr}")
        client_handler = threading.Thread(target=handle_client, args=(client_sock,))
        client_handler.start()


if __name__ == "__main__":
    start_server()
