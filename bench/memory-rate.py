#!/usr/bin/env python3
"""This host's memory, as a training step's gather meets it: a sequential copy of a Fashion-MNIST-sized float32
array (60,000 × 784, 188 MB; GB/s counted read + write) and batches of rows gathered from it at random (GB/s of rows
copied), five rounds each after one warm-up, median and range; then the copy rate by size (one array of 0.5 to 64 MB
copied into another, again and again): where it falls is how much of the last-level cache this process really has.
  /usr/bin/python3 bench/memory-rate.py [BATCH]        (default 128)"""
import statistics
import sys
import time

import numpy as np

batch = int(sys.argv[1]) if len(sys.argv) > 1 else 128
rows, features = 60000, 784
data = np.ones((rows, features), dtype=np.float32)
copy = np.empty_like(data)
out = np.empty((batch, features), dtype=np.float32)
rng = np.random.default_rng(1)


def rate(action, nbytes):
    start = time.perf_counter()
    action()
    return nbytes / (time.perf_counter() - start) / 1e9


def measure(action, nbytes):
    action()
    return [rate(action, nbytes) for _ in range(5)]


sequential = measure(lambda: np.copyto(copy, data), 2 * data.nbytes)
# Each round's rows drawn beforehand: the permutation is not the memory's time.
batches = iter([rng.permutation(rows)[:batch] for _ in range(6)])
gather = measure(lambda: np.take(data, next(batches), axis=0, out=out), out.nbytes)
for name, rates in [("sequential copy (read + write)", sequential), (f"gather of {batch} random rows", gather)]:
    print(f"{name}: median {statistics.median(rates):.2f} GB/s (range {min(rates):.2f}–{max(rates):.2f})")

# By size: arrays small enough to stay in cache, up to far past it (each timed call moves ~4 GB). Two kernels: np.copyto
# is glibc's memcpy, which switches to stores that bypass the cache above a size tied to the L3's; np.add (x + 1 into
# another array) never does, so a fall in both is the cache's, not memcpy's choice of store.
for megabytes in [0.5, 1, 2, 4, 8, 16, 32, 64]:
    small = np.ones(int(megabytes * 1e6 / 4), dtype=np.float32)
    target = np.empty_like(small)
    repeats = max(3, int(2000 / megabytes))
    for name, kernel in [("copy", lambda: np.copyto(target, small)), ("x + 1", lambda: np.add(small, 1.0, out=target))]:
        rates = measure(lambda: [kernel() for _ in range(repeats)], 2 * small.nbytes * repeats)
        print(f"{name} of {megabytes:g} MB into another (working set {2 * megabytes:g} MB): median {statistics.median(rates):.1f} GB/s (range {min(rates):.1f}–{max(rates):.1f})")
