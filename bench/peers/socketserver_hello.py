"""Seed 003 §4: socketserver.ThreadingMixIn + TCPServer; one recv(1024), sendall
`Hello from server!` (the handler returns and the server closes the connection)."""
import socketserver

from _port import port


class ThreadedTCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = True


class RequestHandler(socketserver.BaseRequestHandler):
    def handle(self):
        data = self.request.recv(1024).decode(errors="replace")
        print(f"Received: {data}")
        self.request.sendall("Hello from server!".encode())


server = ThreadedTCPServer(("localhost", port(8081)), RequestHandler)

with server:
    server.serve_forever()
