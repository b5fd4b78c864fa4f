#!/usr/bin/env python3
"""This host's memory, as a training step's gather meets it: a sequential copy of a Fashion-MNIST-sized float32
array (60,000 × 784, 188 MB; GB/s counted read + write) and batches of rows gathered from it at random (GB/s of rows
copied). Five rounds each after one warm-up; prints the median and range.
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
