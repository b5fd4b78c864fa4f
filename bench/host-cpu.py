#!/usr/bin/env python3
"""Samples where this host's CPU goes while a cluster benchmark runs, once a second, until killed.

Usage: python3 bench/host-cpu.py OUT METRICS
Appends one JSON line per sample to OUT: the time, how many epochs METRICS (the server's --metrics JSONL)
holds so far, the host's /proc/stat CPU counters, and the CPU ticks (user, sys) of every thread of every
`dbp serve` / `dbp worker` process with its group (a reader takes differences per thread, so a thread that
ends between two samples does not turn a sum negative):
  compute       the threads that run forward and backward passes and updates (dbp.compute-dispatcher-*)
  bulk_channel  the bulk channel's sender and receiver threads (dbp-bulk-*): TLS, framing, the kernel's TCP
                path (which on one box includes the receiving side's bridge and veth work, done inline)
  other         everything else in those processes (Akka, the thread pool, the JIT, the GC)
A benchmark reads the samples between two epoch counts, so start-up and the last epoch's evaluation stay out
of the figures. A thread that ends inside the window loses what it used there: sums can be slightly low.
"""
import json
import os
import sys
import time


def group_of(thread_name):
    if thread_name.startswith("dbp.compute-dis"):
        return "compute"
    if thread_name.startswith("dbp-bulk-"):
        return "bulk_channel"
    return "other"


def sample(metrics):
    ticks = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            if len(argv) < 2 or not argv[0].endswith(b"/dbp") or argv[1] not in (b"serve", b"worker"):
                continue
            role = argv[1].decode()
            for tid in os.listdir(f"/proc/{pid}/task"):
                stat = open(f"/proc/{pid}/task/{tid}/stat").read()
                name = stat[stat.index("(") + 1:stat.rindex(")")]
                fields = stat[stat.rindex(")") + 2:].split()
                ticks[f"{pid}.{tid}"] = [f"{role}.{group_of(name)}", int(fields[11]), int(fields[12])]
        except (OSError, ValueError, IndexError):
            continue  # a process or thread that ended between the listing and the read
    try:
        epochs = sum(1 for line in open(metrics) if line.strip())
    except OSError:
        epochs = 0
    host = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return {"t": time.monotonic(), "epochs": epochs, "host": host, "ticks": ticks}


def main():
    out, metrics = sys.argv[1], sys.argv[2]
    with open(out, "a") as f:
        while True:
            f.write(json.dumps(sample(metrics)) + "\n")
            f.flush()
            time.sleep(1)


if __name__ == "__main__":
    main()
