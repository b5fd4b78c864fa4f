#!/usr/bin/env bash
# How long a cache line takes to travel from one core to another: two threads pinned to cores A and B hand a
# counter back and forth through one line, and half a round trip is printed. Any split of a step across cores
# (lanes, local mode's workers, the update's lanes) pays this per line the other core wrote last. On this
# project's 2-vCPU Zen 3 VM it measured 48–247 ns one way, changing from one run to the next a few seconds
# apart (five runs: 48, 59, 58, 240, 247): the hypervisor moves the vCPUs between dies, while lscpu reports one
# shared L3 throughout.
# Needs gcc (Debian: build-essential).
#   bash bench/core-to-core.sh [A] [B]        (default: cores 0 and 1)
set -euo pipefail
a=${1:-0}; b=${2:-1}
case "$a$b" in *[!0-9]*|'') echo "bench/core-to-core.sh: cores must be whole numbers (got '$a', '$b')" >&2; exit 2;; esac
# On one core the two threads could only hand over by being rescheduled: it would measure the scheduler, for minutes.
[ "$a" != "$b" ] || { echo "bench/core-to-core.sh: cores A and B must differ (got $a twice)" >&2; exit 2; }
command -v gcc >/dev/null || { echo "bench/core-to-core.sh: gcc is not installed (Debian: apt-get install build-essential)" >&2; exit 2; }
dir=$(mktemp -d "${TMPDIR:-/tmp}/dbp-c2c.XXXXXX"); trap 'rm -rf "$dir"' EXIT
cat > "$dir/pingpong.c" <<'C'
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
enum { Rounds = 2000000 };
static _Alignas(64) _Atomic long turn;
static int cores[2];
static void pin(int core) {
    cpu_set_t set; CPU_ZERO(&set); CPU_SET(core, &set);
    if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0) { fprintf(stderr, "bench/core-to-core.sh: cannot pin to core %d\n", core); exit(2); }
}
static void *answer(void *unused) {
    (void)unused; pin(cores[1]);
    for (long i = 0; i < Rounds; i++) {
        while (atomic_load_explicit(&turn, memory_order_acquire) != 2 * i + 1) {}
        atomic_store_explicit(&turn, 2 * i + 2, memory_order_release);
    }
    return NULL;
}
int main(int argc, char **argv) {
    cores[0] = atoi(argv[1]); cores[1] = atoi(argv[2]);
    pthread_t other; pthread_create(&other, NULL, answer, NULL); pin(cores[0]);
    struct timespec start, end; clock_gettime(CLOCK_MONOTONIC, &start);
    for (long i = 0; i < Rounds; i++) {
        atomic_store_explicit(&turn, 2 * i + 1, memory_order_release);
        while (atomic_load_explicit(&turn, memory_order_acquire) != 2 * i + 2) {}
    }
    clock_gettime(CLOCK_MONOTONIC, &end); pthread_join(other, NULL);
    double ns = (end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec);
    printf("core %d <-> core %d: %.1f ns one way (%d round trips)\n", cores[0], cores[1], ns / Rounds / 2, Rounds);
    return 0;
}
C
gcc -O2 -pthread "$dir/pingpong.c" -o "$dir/pingpong"
"$dir/pingpong" "$a" "$b"
