#!/usr/bin/env python3
"""Interop: the seeds' clients against our servers, under every model.

The clients behave as the tutorials' do (seed 002's greeting client answers
"HI! I am client." to each "Hi! I am server"; the ACK and hello clients send and
recv(1024) like the tutorials' servers expect), written for Python 3 and bounded in
count and time. For each model this starts `multiclient serve` with ack, greet and
hello on free loopback ports, runs the clients (one at a time, then 200 at once
where the model serves concurrently), sends SIGTERM and requires exit status 0.

Usage: seed_clients.py PATH/TO/multiclient
"""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

TIMEOUT = 10.0
MODELS = ["single", "threads", "pool", "async"]


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def ack_client(port, messages):
    """Seed 001's server talks to this: send, wait for ACK!, repeat."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    try:
        for message in messages:
            sock.send(message.encode())
            reply = recv_exact(sock, 4)
            assert reply == b"ACK!", f"ack: got {reply!r} for {message!r}"
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1024) == b"", "ack: server did not close on EOF"
    finally:
        sock.close()


def greet_client(port, rounds):
    """Seed 002's client: print the server's line, answer, forever (here: rounds)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    try:
        for _ in range(rounds):
            data = recv_exact(sock, len(b"Hi! I am server\n"))
            assert data == b"Hi! I am server\n", f"greet: got {data!r}"
            sock.send(b"HI! I am client.")
        data = recv_exact(sock, len(b"Hi! I am server\n"))
        assert data == b"Hi! I am server\n", f"greet: last greeting {data!r}"
    finally:
        sock.close()


def hello_client(port, message):
    """Seed 003's one-shot servers: send one message, read the answer to EOF."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    try:
        sock.send(message.encode())
        reply = b""
        while True:
            chunk = sock.recv(1024)
            if not chunk:
                break
            reply += chunk
        assert reply == b"Hello from server!", f"hello: got {reply!r}"
    finally:
        sock.close()


def start(binary, model):
    args = [binary, "serve", "--model", model,
            "--service", "ack=127.0.0.1:0", "--service", "greet=127.0.0.1:0",
            "--service", "hello=127.0.0.1:0", "--log-format", "json"]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    ports = {}
    deadline = time.time() + TIMEOUT
    while len(ports) < 3:
        if time.time() > deadline:
            proc.kill()
            raise SystemExit(f"{model}: server did not report its ports")
        line = proc.stderr.readline()
        if not line:
            raise SystemExit(f"{model}: server exited: {proc.wait()}")
        m = re.search(r"Listening on 127\.0\.0\.1:(\d+) \((\w+), (\w+)\)", line)
        if m:
            ports[m.group(2)] = int(m.group(1))
    # Keep reading the log so the server never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, ports


def run_concurrently(target, n):
    errors = []

    def wrapped(i):
        try:
            target(i)
        except Exception as e:  # reported below, never swallowed
            errors.append(f"client {i}: {e!r}")

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 3)
    if any(t.is_alive() for t in threads):
        errors.append("clients still running after the timeout")
    return errors


def check_model(binary, model):
    proc, ports = start(binary, model)
    try:
        ack_client(ports["ack"], ["Hello, server", "héllo wörld", "x" * 1000])
        greet_client(ports["greet"], 5)
        hello_client(ports["hello"], "Hello from client")
        if model != "single":
            errors = run_concurrently(lambda i: ack_client(ports["ack"], [f"message {i}"] * 3), 200)
            errors += run_concurrently(lambda i: greet_client(ports["greet"], 2), 10 if model == "pool" else 100)
            errors += run_concurrently(lambda i: hello_client(ports["hello"], f"client {i}"), 200)
            if errors:
                raise AssertionError(f"{len(errors)} client errors, first: {errors[0]}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(TIMEOUT * 2)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise SystemExit(f"{model}: server did not exit after SIGTERM")
    if code != 0:
        raise SystemExit(f"{model}: exit status {code} after SIGTERM")
    print(f"seed clients OK under {model}: ack, greet, hello; exit 0 on SIGTERM")


def main():
    binary = os.path.abspath(sys.argv[1])
    for model in MODELS:
        check_model(binary, model)
    print("4 passed, 0 failed")


if __name__ == "__main__":
    main()
