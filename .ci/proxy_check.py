"""Clients for .ci/proxy.sh: through HAProxy (send-proxy and send-proxy-v2) from chosen
loopback addresses, checking that the server limits the address HAProxy's header
carries, not HAProxy's own.

Usage: proxy_check.py GREET_V1 GREET_V2 HTTP_V1 HTTP_V2 SERVER_GREET
(the ports of HAProxy's four frontends and the server's own greet listener). Every
socket has a 10 s timeout; exits non-zero on the first failed check."""

import socket
import sys
import time

GREETING = b"Hi! I am server\n"
TOO_MANY = b"ERR too many connections from your address\n"
TIMEOUT = 10


def connect(port, source):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def read_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def read_to_end(s):
    buf = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            return buf
        buf += chunk


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok   {what}")


def greet_limit(port, version, client, other):
    """Two connections from `client` are served, the third is told why; `other` is served."""
    held = [connect(port, client) for _ in range(2)]
    for s in held:
        got = read_exact(s, len(GREETING))
        check(got == GREETING, f"{version}: greet from {client} served ({got!r})")
    third = connect(port, client)
    got = read_to_end(third)
    check(got == TOO_MANY, f"{version}: third greet from {client} refused ({got!r})")
    s = connect(port, other)
    got = read_exact(s, len(GREETING))
    check(got == GREETING, f"{version}: greet from {other} still served ({got!r})")
    for c in held + [third, s]:
        c.close()


def http_get(port, source):
    s = connect(port, source)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return s, read_to_end(s)


def http_limit(port, version, client):
    """Two keep-alive connections from `client` held; a third request gets 503."""
    held = []
    for _ in range(2):
        s = connect(port, client)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = s.recv(4096)
        check(head.startswith(b"HTTP/1.1 200 "), f"{version}: http from {client} served")
        held.append(s)
    s, got = http_get(port, client)
    check(got.startswith(b"HTTP/1.1 503 "), f"{version}: third http from {client} gets 503")
    check(got.endswith(b"too many connections from your address\n"), f"{version}: 503 says why")
    for c in held + [s]:
        c.close()


def main():
    greet_v1, greet_v2, http_v1, http_v2, direct = map(int, sys.argv[1:6])
    greet_limit(greet_v1, "send-proxy", "127.0.0.11", "127.0.0.12")
    greet_limit(greet_v2, "send-proxy-v2", "127.0.0.21", "127.0.0.22")
    http_limit(http_v1, "send-proxy", "127.0.0.31")
    http_limit(http_v2, "send-proxy-v2", "127.0.0.41")
    _, got = http_get(http_v2, "127.0.0.42")
    check(b"Hello from Multi-threaded Flask Server!" in got, "send-proxy-v2: http answered")
    # Straight to the server, without a header: closed after --header-timeout (1 s).
    s = connect(direct, "127.0.0.51")
    t = time.monotonic()
    got = read_to_end(s)
    took = time.monotonic() - t
    check(got == b"" and 0.9 <= took < 5, f"no header: closed after {took:.2f}s, nothing said")


main()
