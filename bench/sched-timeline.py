#!/usr/bin/env python3
"""Who ran on which CPU during each fan-out: reads `perf script` output of
sched:sched_switch events (fields pid,tid,cpu,time,event,trace) and prints, for each
busy window of the server's threads, its length and the CPU milliseconds of each
thread (server threads as S<tid>, the tester's as T, idle as '.'), and with --rows
one line per BUCKET of time with each CPU's share by thread.

Usage: bench/sched-timeline.py SERVER_PID TESTER_PID SCRIPT_TXT [--rows] [BUCKET_MS]
"""
import collections
import re
import sys

server, tester, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rows = "--rows" in sys.argv
rest = [a for a in sys.argv[4:] if a != "--rows"]
bucket = (float(rest[0]) if rest else 4.0) / 1000

tgid, runs, cur = {}, [], {}
for line in open(path):
    m = re.match(r"\s*(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+): sched:sched_switch: (.*)", line)
    if not m:
        continue
    tgid[int(m[2])] = int(m[1])
    cpu, t = int(m[3]), float(m[4])
    nxt = int(re.search(r"next_pid=(\d+)", m[5])[1])
    if cpu in cur:
        runs.append((cpu, cur[cpu][0], t, cur[cpu][1]))
    cur[cpu] = (t, nxt)


def who(tid):
    if tid == 0:
        return "."
    p = tgid.get(tid)
    if p == server:
        return "S%d" % tid
    if p == tester:
        return "T"
    return "other"


cpus = sorted({r[0] for r in runs})
spans = sorted((s, e) for _, s, e, w in runs if who(w).startswith("S"))
windows = []
for s, e in spans:
    if windows and s - windows[-1][1] < 0.02:
        windows[-1][1] = max(windows[-1][1], e)
    else:
        windows.append([s, e])
for w0, w1 in (w for w in windows if w[1] - w[0] > 0.01):
    total = collections.Counter()
    for cpu, s, e, w in runs:
        if e > w0 and s < w1:
            total[who(w)] += min(e, w1) - max(s, w0)
    print("window at %.3f s: %.1f ms; CPU ms %s" % (
        w0, (w1 - w0) * 1000, ", ".join("%s %.1f" % (k, v * 1000) for k, v in total.most_common())))
    t = w0
    while rows and t < w1:
        line = []
        for cpu in cpus:
            c = collections.Counter()
            for cp, s, e, w in runs:
                if cp == cpu and e > t and s < t + bucket:
                    c[who(w)] += min(e, t + bucket) - max(s, t)
            line.append(" ".join("%s:%.0f%%" % (k, v / bucket * 100) for k, v in c.most_common(3)))
        print("  %6.1f ms | %s" % ((t - w0) * 1000, " | ".join("%-28s" % x for x in line)))
        t += bucket
