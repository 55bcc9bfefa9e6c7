#!/usr/bin/env python3
"""Scripted chat clients for the two-host scale-out test (.ci/chat-netns.sh).

Two roles, Python 3 standard library only:

  member NS_ADDR:PORT
      A line relay between stdin/stdout and one chat connection, run by the checker
      inside a host's network namespace (`ip netns exec NS python3 ... member ...`), so
      the connection really comes from that host. Every line received is printed; the
      server closing the connection prints `#EOF`. It ends on stdin EOF, on the
      server's close, or after MEMBER_LIFETIME seconds, whichever comes first.

  check --a-ns NS --a-addr IP:PORT --b-ns NS --b-addr IP:PORT --b-pid PID --ttl SECS
      The checker: starts members on host A and host B through `ip netns exec`, runs
      the checks below in order, SIGKILLs instance B (PID given by the caller, which
      started it) and checks that B's members part on A within the presence TTL,
      counted from just before the kill. Prints one `ok - ...` line per check, then
      `checks passed: N`; on the first failed check prints `FAIL: ...` and exits 1.

Every wait has a deadline; nothing waits on a sleep where a line can be awaited.
"""

import argparse
import os
import queue
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time

# A member relay lives at most this long, so nothing outlives a stuck run.
MEMBER_LIFETIME = 180.0
# Default wait for one expected line.
WAIT = 10.0
ROOM = "netns"


# --------------------------------------------------------------------- member relay
def member(addr: str) -> int:
    host, port = addr.rsplit(":", 1)
    try:
        sock = socket.create_connection((host, int(port)), timeout=5)
    except OSError as e:
        print(f"#CONNECT-FAILED {e}", flush=True)
        return 2
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, "sock")
    sel.register(sys.stdin.buffer.raw, selectors.EVENT_READ, "stdin")
    deadline = time.monotonic() + MEMBER_LIFETIME
    out = sys.stdout.buffer
    pending = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            print("#LIFETIME", flush=True)
            return 3
        for key, _ in sel.select(timeout=min(left, 1.0)):
            if key.data == "sock":
                try:
                    data = sock.recv(65536)
                except (ConnectionResetError, BrokenPipeError):
                    data = b""
                except BlockingIOError:
                    continue
                if not data:
                    if pending:
                        out.write(pending + b"\n")
                    out.write(b"#EOF\n")
                    out.flush()
                    return 0
                pending += data
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    out.write(line.rstrip(b"\r") + b"\n")
                out.flush()
            else:
                data = os.read(sys.stdin.fileno(), 65536)
                if not data:
                    sock.close()
                    return 0
                sock.setblocking(True)
                try:
                    sock.sendall(data)
                except OSError:
                    pass  # The server is gone: its close shows up as #EOF.
                sock.setblocking(False)


# --------------------------------------------------------------------------- checker
class Fail(Exception):
    pass


class Member:
    """One chat connection on one host, driven through a relay in that namespace."""

    def __init__(self, label: str, ns: str, addr: str):
        self.label = label
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, os.path.abspath(__file__),
             "member", addr],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.q: "queue.Queue[str]" = queue.Queue()
        # Every line received, in order; `unread` holds those no expect() took yet.
        self.seen: list = []
        self.unread: list = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.proc.stdout:
            self.q.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self.q.put("#RELAY-EXIT")

    def send(self, line: str):
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise Fail(f"{self.label}: its relay is gone (sending {line!r})")

    def expect(self, pred, what: str, timeout: float = WAIT) -> str:
        """The first unread line matching pred (others stay unread), within timeout."""
        for i, line in enumerate(self.unread):
            if pred(line):
                return self.unread.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Fail(f"{self.label}: no {what} within {timeout:.1f}s; "
                           f"unread: {self.unread[-8:]}")
            try:
                line = self.q.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(line)
            if line.startswith("#CONNECT-FAILED"):
                raise Fail(f"{self.label}: {line}")
            if pred(line):
                return line
            if line == "#RELAY-EXIT":
                raise Fail(f"{self.label}: connection ended while awaiting {what}; "
                           f"last lines: {self.seen[-8:]}")
            self.unread.append(line)

    def expect_eq(self, want: str, timeout: float = WAIT) -> str:
        return self.expect(lambda l: l == want, repr(want), timeout)

    def expect_prefix(self, prefix: str, timeout: float = WAIT) -> str:
        return self.expect(lambda l: l.startswith(prefix), f"line starting {prefix!r}",
                           timeout)

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def parse_msg(line: str):
    """`MSG <room> <id> <nick> <text>` -> (id, nick, text)."""
    parts = line.split(" ", 4)
    if len(parts) != 5 or parts[0] != "MSG":
        raise Fail(f"not a MSG line: {line!r}")
    return parts[2], parts[3], parts[4]


def is_msg(line: str) -> bool:
    return line.startswith(f"MSG {ROOM} ")


def process_gone(pid: int) -> bool:
    """True once pid is dead (a zombie awaiting its parent counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def check(args) -> int:
    passed = 0
    members = []

    def ok(what: str):
        nonlocal passed
        passed += 1
        print(f"ok - {what}", flush=True)

    def new(label, ns, addr):
        m = Member(label, ns, addr)
        members.append(m)
        return m

    try:
        ttl = args.ttl
        a1 = new("A1", args.a_ns, args.a_addr)
        b1 = new("B1", args.b_ns, args.b_addr)
        a2 = new("A2", args.a_ns, args.a_addr)
        b2 = new("B2", args.b_ns, args.b_addr)

        # Guest nicks: unique across the two hosts from the first line on.
        welcome = {}
        for m in (a1, b1, a2, b2):
            welcome[m.label] = m.expect_prefix("WELCOME ").split(" ", 1)[1]
        if len(set(welcome.values())) != 4:
            raise Fail(f"guest nicks collide across hosts: {welcome}")
        ok(f"4 members connected (2 per host), distinct guest nicks {sorted(welcome.values())}")

        # Nicks are claimed in Redis: unique across hosts.
        a1.send("NICK alice")
        a1.expect_eq("OK NICK alice")
        b1.send("NICK bob")
        b1.expect_eq("OK NICK bob")
        ok("NICK alice on host A, NICK bob on host B")
        b2.send("NICK alice")
        b2.expect_prefix("ERR nick-taken")
        a2.send("NICK bob")
        a2.expect_prefix("ERR nick-taken")
        ok("ERR nick-taken for host A's nick on host B and for host B's nick on host A")

        # One room across the hosts.
        a1.send(f"JOIN {ROOM}")
        a1.expect_eq(f"OK JOIN {ROOM}")
        b1.send(f"JOIN {ROOM}")
        b1.expect_eq(f"OK JOIN {ROOM}")
        a1.expect_eq(f"JOIN {ROOM} bob")
        ok("alice (A) and bob (B) joined; alice saw bob's JOIN from host B")

        for m in (a1, b1):
            m.send(f"WHO {ROOM}")
            who = m.expect_prefix(f"WHO {ROOM}")
            if sorted(who.split()[2:]) != ["alice", "bob"]:
                raise Fail(f"{m.label}: WHO lists {who!r}, want alice and bob")
        ok("WHO on host A and on host B lists alice and bob")

        # Messages from both hosts, sent without waiting: one order for everyone.
        n = 5
        for i in range(n):
            a1.send(f"SAY {ROOM} from A number {i}")
            b1.send(f"SAY {ROOM} from B number {i}")
        got = {}
        for m in (a1, b1):
            got[m.label] = [parse_msg(m.expect(is_msg, f"MSG {k + 1} of {2 * n}"))
                            for k in range(2 * n)]
        if got["A1"] != got["B1"]:
            raise Fail("hosts saw different messages or orders:\n  A: "
                       f"{got['A1']}\n  B: {got['B1']}")
        seq = got["A1"]
        ids = [m[0] for m in seq]
        if len(set(ids)) != len(ids):
            raise Fail(f"message ids repeat: {ids}")
        for nick, host in (("alice", "A"), ("bob", "B")):
            texts = [t for (_, who_, t) in seq if who_ == nick]
            if texts != [f"from {host} number {i}" for i in range(n)]:
                raise Fail(f"{nick}'s messages out of order or missing: {texts}")
        ok(f"both hosts received all {2 * n} messages with the same ids in the same order")

        # History lives in Redis: host B serves host A's messages.
        b1.send(f"HISTORY {ROOM} 100")
        hist = []
        while True:
            line = b1.expect(lambda l: is_msg(l) or l.startswith(("OK HISTORY", "ERR")),
                             "HISTORY lines")
            if not is_msg(line):
                break
            hist.append(parse_msg(line))
        if line != f"OK HISTORY {ROOM}":
            raise Fail(f"HISTORY on B ended with {line!r}")
        if hist != seq:
            raise Fail(f"HISTORY on B differs from the live order:\n  {hist}\n  {seq}")
        if not any(nick == "alice" for (_, nick, _) in hist):
            raise Fail("HISTORY on B lacks host A's messages")
        ok("HISTORY on host B shows host A's messages, in the live order")

        # JOIN ... AFTER on host B replays from Redis exactly what followed an id.
        mid = n
        b2.send(f"JOIN {ROOM} AFTER {ids[mid - 1]}")
        b2.expect_eq(f"OK JOIN {ROOM}")
        replay = [parse_msg(b2.expect(is_msg, f"replayed MSG {k + 1}"))
                  for k in range(len(seq) - mid)]
        if replay != seq[mid:]:
            raise Fail(f"JOIN AFTER on B replayed {replay}, want {seq[mid:]}")
        a1.expect_eq(f"JOIN {ROOM} {welcome['B2']}")
        ok(f"JOIN AFTER on host B replayed the {len(replay)} later messages, no gap, "
           "no duplicate")

        # Host B dies without a goodbye: its members part everywhere within the TTL.
        if process_gone(args.b_pid):
            raise Fail(f"instance B (pid {args.b_pid}) is already gone")
        t0 = time.monotonic()
        os.kill(args.b_pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while not process_gone(args.b_pid):
            if time.monotonic() > deadline:
                raise Fail(f"instance B (pid {args.b_pid}) survived SIGKILL")
            time.sleep(0.01)
        for m in (b1, b2):
            m.expect_eq("#EOF")
        ok(f"instance B (pid {args.b_pid}) SIGKILLed; its members' connections closed")

        # B's presence entries expire 2*TTL/3 after its last refresh and A looks for
        # expired entries every TTL/6, publishing their PARTs: the bound, the
        # TTL counted from just before the SIGKILL, holds with TTL/6 for the fan-out.
        limit = ttl
        parted = {}
        for nick in ("bob", welcome["B2"]):
            left = max(0.0, t0 + limit - time.monotonic())
            a1.expect_eq(f"PART {ROOM} {nick}", timeout=left)
            parted[nick] = time.monotonic() - t0
        ok("alice on A saw PART of B's members within the TTL: " + ", ".join(
            f"{k} after {v:.2f}s" for k, v in parted.items()) +
           f" (ttl {ttl:g}s, limit {limit:.2f}s)")
        print(f"part-latency-s: {max(parted.values()):.2f}", flush=True)

        a1.send(f"WHO {ROOM}")
        who = a1.expect_prefix(f"WHO {ROOM}")
        if who.split()[2:] != ["alice"]:
            raise Fail(f"WHO after B died lists {who!r}, want only alice")
        ok("WHO on host A lists only alice after B died")

        # bob's nick claim expired with B: it can be taken on A. The claim expires
        # in Redis with no event to await, so ask again (bounded) until it is free.
        deadline = time.monotonic() + ttl + 2
        while True:
            a2.send("NICK bob")
            line = a2.expect(lambda l: l.startswith(("OK NICK", "ERR")), "NICK answer")
            if line == "OK NICK bob":
                break
            if not line.startswith("ERR nick-taken") or time.monotonic() > deadline:
                raise Fail(f"NICK bob on A after B died: {line!r}")
            time.sleep(0.2)
        ok("B's nick bob is free again and was taken on host A")

        # Host A keeps serving.
        a1.send(f"SAY {ROOM} still here")
        line = a1.expect(is_msg, "MSG after B died")
        if parse_msg(line)[1:] != ("alice", "still here"):
            raise Fail(f"unexpected MSG after B died: {line!r}")
        ok("host A still delivers after host B died")
        a1.send("QUIT")
        a1.expect_eq("OK QUIT")
    except Fail as e:
        print(f"FAIL: {e}", flush=True)
        print(f"checks passed: {passed}", flush=True)
        return 1
    finally:
        for m in members:
            m.close()
    print(f"checks passed: {passed}", flush=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="role", required=True)
    m = sub.add_parser("member")
    m.add_argument("addr")
    c = sub.add_parser("check")
    c.add_argument("--a-ns", required=True)
    c.add_argument("--a-addr", required=True)
    c.add_argument("--b-ns", required=True)
    c.add_argument("--b-addr", required=True)
    c.add_argument("--b-pid", required=True, type=int)
    c.add_argument("--ttl", required=True, type=float)
    args = p.parse_args()
    if args.role == "member":
        return member(args.addr)
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
