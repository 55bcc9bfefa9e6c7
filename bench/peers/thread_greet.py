"""Seed 002 (Python 2 in the seed, Python 3 here): a thread per client that sends
`Hi! I am server\\n` and then recv(1024), forever; listen(5)."""
import threading
from socket import socket, SOL_SOCKET, SO_REUSEADDR

from _port import port

host = "127.0.0.1"
sock = socket()
sock.setsockopt(SOL_SOCKET, SO_REUSEADDR, 1)
sock.bind((host, port(52000)))
sock.listen(5)  # 5 denotes the number of clients can queue


def clientthread(conn):
    # The seed loops forever; a closed client ends the loop here (the seed would
    # spin on an empty recv).
    while True:
        conn.send(b"Hi! I am server\n")
        data = conn.recv(1024)
        if not data:
            break
        print(data)
    conn.close()


while True:
    conn, addr = sock.accept()
    threading.Thread(target=clientthread, args=(conn,)).start()
