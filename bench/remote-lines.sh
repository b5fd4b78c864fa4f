#!/usr/bin/env bash
# What a cache line costs when the other core touched it last, and whether compute can hide it: the two kinds of
# trip a local-mode step makes (README, "Where two cores lose"). Two threads pinned to cores A and B share a buffer
# of LINES cache lines (default 7,350: half of a 784-256-128-10 model's gradient or θ, what one update lane reads or
# writes). Before every trial B either writes the whole buffer (A's read then finds every line modified on B, as the
# update lane finds the other worker's gradient) or reads it after A wrote it (A's write then must invalidate B's
# copies, as the update's θ stores and a worker's next gradient stores must). A then times, as medians of many
# trials, each µs:
#   read  serial  the buffer read in one pass, then a micro-kernel-shaped loop (2 loads, 16 FMAs a step) alone
#   read  behind  the loop with one PREFETCHT0 of the buffer every few steps, then the read
#   write serial  the buffer written in one pass, then the loop
#   write behind  the loop with one PREFETCHW every few steps (.NET has no intrinsic for it), then the write
#   write behind (load+store)   the loop with each line read and stored back unchanged (what .NET can express)
#   write behind (store zeros)  the loop with a store of zeros to each line: for a buffer whose old values are dead
#   write serial, B's copy stale  as write serial, but B streamed STALE_MB (default 64) of its own after reading: enough
#                                  to push its copies out of a 32 MB L3, as a buffer reused only after many steps finds them
#   write serial, non-temporal    the buffer written in one pass with non-temporal stores (MOVNTPS: no ownership
#                                  asked for, B's copies invalidated on the way to memory), then the loop
# Needs gcc (Debian: build-essential) and an x86-64 CPU with AVX-512F.
#   bash bench/remote-lines.sh [A] [B] [LINES] [STEPS] [STALE_MB]     (defaults: 0 1 7350 40000 64)
set -euo pipefail
a=${1:-0}; b=${2:-1}; lines=${3:-7350}; steps=${4:-40000}; stale=${5:-64}
for v in "$a" "$b" "$lines" "$steps" "$stale"; do
  case "$v" in *[!0-9]*|'') echo "bench/remote-lines.sh: arguments must be whole numbers (got '$v')" >&2; exit 2;; esac
done
[ "$a" != "$b" ] || { echo "bench/remote-lines.sh: cores A and B must differ (got $a twice)" >&2; exit 2; }
[ "$lines" -ge 1 ] && [ "$lines" -le 4000000 ] || { echo "bench/remote-lines.sh: LINES must be 1..4000000 (got $lines)" >&2; exit 2; }
[ "$stale" -ge 1 ] && [ "$stale" -le 4096 ] || { echo "bench/remote-lines.sh: STALE_MB must be 1..4096 (got $stale)" >&2; exit 2; }
[ "$steps" -ge "$lines" ] && [ "$steps" -le 100000000 ] || { echo "bench/remote-lines.sh: STEPS must be LINES..100000000 (got $steps)" >&2; exit 2; }
command -v gcc >/dev/null || { echo "bench/remote-lines.sh: gcc is not installed (Debian: apt-get install build-essential)" >&2; exit 2; }
grep -qw avx512f /proc/cpuinfo || { echo "bench/remote-lines.sh: this CPU has no AVX-512F" >&2; exit 2; }
dir=$(mktemp -d "${TMPDIR:-/tmp}/dbp-remote-lines.XXXXXX"); trap 'rm -rf "$dir"' EXIT
cat > "$dir/remote.c" <<'C'
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
enum { Trials = 200, Kinds = 8, PanelFloats = 64 * 1024 };
enum { ReadSerial, ReadBehind, WriteSerial, WriteBehind, WriteBehindLoadStore, WriteBehindStore, WriteStale, WriteNonTemporal };
static long lines, steps, junkLines;
static float *shared, *panel, *junk;
static _Atomic long phase;
static int cores[2];
static void pin(int core) { cpu_set_t s; CPU_ZERO(&s); CPU_SET(core, &s); if (pthread_setaffinity_np(pthread_self(), sizeof s, &s)) { fprintf(stderr, "bench/remote-lines.sh: cannot pin to core %d\n", core); exit(2); } }
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e6 + t.tv_nsec / 1e3; }
static void wait_for(long p) { while (atomic_load_explicit(&phase, memory_order_acquire) != p) {} }
static void go(long p) { atomic_store_explicit(&phase, p, memory_order_release); }
static int writes(int kind) { return kind >= WriteSerial; }
/* A micro-kernel's shape (8 rows × 2 vectors): per step 2 loads from an L2-resident panel, 8 broadcasts, 16 FMAs.
   touch: 0 nothing, 1 PREFETCHT0, 2 PREFETCHW, 3 load and store back, 4 a store of zeros; one line every steps/lines steps, in order. */
static __attribute__((noinline)) float compute(int touch) {
    __m512 acc[16]; for (int j = 0; j < 16; j++) acc[j] = _mm512_setzero_ps();
    long every = steps / lines, next = 0, line = 0;
    for (long k = 0; k < steps; k++) {
        const float *p = panel + (k * 48) % (PanelFloats - 48);
        __m512 b0 = _mm512_loadu_ps(p), b1 = _mm512_loadu_ps(p + 16);
        for (int r = 0; r < 8; r++) {
            __m512 x = _mm512_set1_ps(p[32 + r]);
            acc[2 * r] = _mm512_fmadd_ps(x, b0, acc[2 * r]);
            acc[2 * r + 1] = _mm512_fmadd_ps(x, b1, acc[2 * r + 1]);
        }
        if (touch && k == next && line < lines) {
            float *q = shared + line * 16;
            if (touch == 1) _mm_prefetch((const char *)q, _MM_HINT_T0);
            else if (touch == 2) _m_prefetchw(q);
            else if (touch == 3) { volatile float *v = q; *v = *v; }
            else _mm512_store_ps(q, _mm512_setzero_ps());
            line++; next += every;
        }
    }
    __m512 s = acc[0]; for (int j = 1; j < 16; j++) s = _mm512_add_ps(s, acc[j]);
    return _mm512_reduce_add_ps(s);
}
static float read_all(void) { __m512 s = _mm512_setzero_ps(); for (long i = 0; i < lines; i++) s = _mm512_add_ps(s, _mm512_load_ps(shared + i * 16)); return _mm512_reduce_add_ps(s); }
/* n lines of p set to v, with ordinary or non-temporal stores. */
static void store_lines(float *p, long n, float v, int nontemporal) {
    __m512 x = _mm512_set1_ps(v);
    if (nontemporal) { for (long i = 0; i < n; i++) _mm512_stream_ps(p + i * 16, x); _mm_sfence(); }
    else for (long i = 0; i < n; i++) _mm512_store_ps(p + i * 16, x);
}
static void write_all(float v) { store_lines(shared, lines, v, 0); }
static void *peer(void *unused) {
    (void)unused; pin(cores[1]); volatile float sink = 0;
    for (long t = 0;; t++) {
        wait_for(2 * t + 1);
        if (t >= (long)Kinds * Trials) return NULL;
        if (writes(t % Kinds)) sink += read_all(); else write_all((float)t);
        if (t % Kinds == WriteStale) store_lines(junk, junkLines, (float)t, 0);
        go(2 * t + 2);
    }
}
static int by_value(const void *x, const void *y) { double a = *(const double *)x, b = *(const double *)y; return a < b ? -1 : a > b; }
static double median(double *v) { qsort(v, Trials, sizeof *v, by_value); return v[Trials / 2]; }
int main(int argc, char **argv) {
    (void)argc; cores[0] = atoi(argv[1]); cores[1] = atoi(argv[2]); lines = atol(argv[3]); steps = atol(argv[4]); junkLines = atol(argv[5]) << 20 >> 6;
    shared = aligned_alloc(64, lines * 64); panel = aligned_alloc(64, PanelFloats * 4); junk = aligned_alloc(64, junkLines * 64);
    if (!shared || !panel || !junk) { fprintf(stderr, "bench/remote-lines.sh: out of memory\n"); return 2; }
    memset(shared, 0, lines * 64); memset(junk, 0, junkLines * 64); for (int i = 0; i < PanelFloats; i++) panel[i] = 1e-3f * (i % 7);
    pthread_t other; pthread_create(&other, NULL, peer, NULL); pin(cores[0]);
    static double loop[Kinds][Trials], trip[Kinds][Trials]; volatile float sink = 0;
    /* The kinds interleaved trial by trial, so a vCPU moved mid-run spoils all of them alike. */
    for (long t = 0; t < (long)Kinds * Trials; t++) {
        int kind = t % Kinds, i = t / Kinds;
        if (writes(kind)) write_all(1.0f);  /* A's own lines, which B then reads */
        go(2 * t + 1); wait_for(2 * t + 2);
        double t0 = now(), t1, t2;
        switch (kind) {
        case ReadSerial:  sink += read_all(); t1 = now(); sink += compute(0); t2 = now(); trip[kind][i] = t1 - t0; loop[kind][i] = t2 - t1; break;
        case WriteSerial: case WriteStale: case WriteNonTemporal:
            store_lines(shared, lines, 2.0f, kind == WriteNonTemporal); t1 = now(); sink += compute(0); t2 = now(); trip[kind][i] = t1 - t0; loop[kind][i] = t2 - t1; break;
        default:
            sink += compute(kind == ReadBehind ? 1 : kind == WriteBehind ? 2 : kind == WriteBehindLoadStore ? 3 : 4); t1 = now();
            if (kind == ReadBehind) sink += read_all(); else write_all(2.0f);
            t2 = now(); loop[kind][i] = t1 - t0; trip[kind][i] = t2 - t1;
        }
    }
    go(2L * Kinds * Trials + 1); pthread_join(other, NULL);
    static const char *names[Kinds] = { "read  serial", "read  behind (PREFETCHT0)", "write serial", "write behind (PREFETCHW)", "write behind (load+store)", "write behind (store zeros)",
        "write serial, B's copy stale", "write serial, non-temporal" };
    printf("%ld lines last touched by core %d, read or written by core %d; loop %ld steps; stale after %ld MB; medians of %d trials, µs\n", lines, cores[1], cores[0], steps, junkLines >> 14, Trials);
    printf("%-29s %9s %9s %9s %13s\n", "", "lines", "loop", "total", "ns per line");
    for (int k = 0; k < Kinds; k++) {
        double l = median(loop[k]), x = median(trip[k]);
        printf("%-29s %9.1f %9.1f %9.1f %13.2f\n", names[k], x, l, l + x, x * 1000 / lines);
    }
    return sink == 12345.f;
}
C
gcc -O2 -mavx512f -mfma -mprfchw -pthread "$dir/remote.c" -o "$dir/remote"
"$dir/remote" "$a" "$b" "$lines" "$steps" "$stale"
