// The ceiling of the AVX-512 tile shapes a product could use, with packed A and B and the tile all in L1, so nothing
// but the loop itself is timed: the engine's 8×32 tile (two B vectors per p, each A value broadcast once and used by
// two FMAs) and its chunk-tree pair of 4×32 half-tiles (the inner loops of MicroKernels.Kernel8x32 and Pair4x32,
// written out here as plain loops), against a 16×16 tile and a pair of 8×16 half-tiles in which each A value feeds one
// FMA, so the JIT folds the broadcast into it (vfmadd231ps zmm, zmm, [mem]{1to16}: 18 instead of 26 instructions per 16
// FMAs, but 17 loads instead of 10). GFLOP/s per depth kc of a leaf (4: a batch of 32 in 8 chunks; 16: 128; 128: a
// plain product's slab), three rounds each. The four loops are variants under measurement, alike on purpose.
// Needs AVX-512 (Vector512 hardware-accelerated).
using System;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
unsafe
{
    if (!Vector512.IsHardwareAccelerated)
    {
        Console.Error.WriteLine("kernel-ceiling: needs AVX-512 (Vector512 is not hardware-accelerated here)");
        return 2;
    }
    int kmax = 512;
    float* a = (float*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)(16 * kmax * 4), 64);
    float* b = (float*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)(32 * kmax * 4), 64);
    float* c = (float*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc(4096, 64);
    for (int i = 0; i < 16 * kmax; i++) a[i] = (i % 7) * 0.01f;
    for (int i = 0; i < 32 * kmax; i++) b[i] = (i % 5) * 0.01f;
    foreach (int kc in new[] { 4, 16, 32, 128 })
    {
        for (int round = 0; round < 3; round++)
        {
            double t1 = Time(() => K.K8x32(kc, a, b, c), kc), t2 = Time(() => K.K16x16(kc, a, b, c), kc);
            double p1 = Time(() => K.Pair4x32(kc, a, b, a + 8 * kc, b + 32 * kc, c), kc), p2 = Time(() => K.Pair8x16(kc, a, b, a + 16 * kc, b + 16 * kc, c), kc);
            // GFLOP/s: tile = 256 outputs, 2 flops per FMA-lane, per p; pairs: two leaves of 128 outputs each
            Console.WriteLine($"kc={kc}: 8x32 {2.0 * 256 * kc / t1:F1}  16x16 broadcast-in-FMA {2.0 * 256 * kc / t2:F1}  pair of 4x32 {2.0 * 256 * kc / p1:F1}  pair of 8x16 broadcast-in-FMA {2.0 * 256 * kc / p2:F1} GFLOP/s");
        }
    }
    return 0;
    static double Time(Action f, int kc)
    {
        int reps = 4_000_000 / kc;
        for (int i = 0; i < reps / 10; i++) f();
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < reps; i++) f();
        return sw.Elapsed.TotalSeconds * 1e9 / reps;
    }
}
static unsafe class K
{
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    public static void K8x32(int kc, float* a, float* b, float* c)
    {
        Vector512<float> c00 = Vector512<float>.Zero, c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00, c61 = c00, c70 = c00, c71 = c00;
        for (int p = 0; p < kc; p++)
        {
            Vector512<float> b0 = Vector512.Load(b), b1 = Vector512.Load(b + 16), av;
            av = Vector512.Create(a[0]); c00 = Vector512.FusedMultiplyAdd(av, b0, c00); c01 = Vector512.FusedMultiplyAdd(av, b1, c01);
            av = Vector512.Create(a[1]); c10 = Vector512.FusedMultiplyAdd(av, b0, c10); c11 = Vector512.FusedMultiplyAdd(av, b1, c11);
            av = Vector512.Create(a[2]); c20 = Vector512.FusedMultiplyAdd(av, b0, c20); c21 = Vector512.FusedMultiplyAdd(av, b1, c21);
            av = Vector512.Create(a[3]); c30 = Vector512.FusedMultiplyAdd(av, b0, c30); c31 = Vector512.FusedMultiplyAdd(av, b1, c31);
            av = Vector512.Create(a[4]); c40 = Vector512.FusedMultiplyAdd(av, b0, c40); c41 = Vector512.FusedMultiplyAdd(av, b1, c41);
            av = Vector512.Create(a[5]); c50 = Vector512.FusedMultiplyAdd(av, b0, c50); c51 = Vector512.FusedMultiplyAdd(av, b1, c51);
            av = Vector512.Create(a[6]); c60 = Vector512.FusedMultiplyAdd(av, b0, c60); c61 = Vector512.FusedMultiplyAdd(av, b1, c61);
            av = Vector512.Create(a[7]); c70 = Vector512.FusedMultiplyAdd(av, b0, c70); c71 = Vector512.FusedMultiplyAdd(av, b1, c71);
            a += 8; b += 32;
        }
        c00.Store(c); c01.Store(c + 16); c10.Store(c + 32); c11.Store(c + 48); c20.Store(c + 64); c21.Store(c + 80); c30.Store(c + 96); c31.Store(c + 112);
        c40.Store(c + 128); c41.Store(c + 144); c50.Store(c + 160); c51.Store(c + 176); c60.Store(c + 192); c61.Store(c + 208); c70.Store(c + 224); c71.Store(c + 240);
    }

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    public static void K16x16(int kc, float* a, float* b, float* c)
    {
        Vector512<float> c0 = Vector512<float>.Zero, c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0, c8 = c0, c9 = c0, c10 = c0, c11 = c0, c12 = c0, c13 = c0, c14 = c0, c15 = c0;
        for (int p = 0; p < kc; p++)
        {
            Vector512<float> bv = Vector512.Load(b);
            c0 = Vector512.FusedMultiplyAdd(Vector512.Create(a[0]), bv, c0); c1 = Vector512.FusedMultiplyAdd(Vector512.Create(a[1]), bv, c1);
            c2 = Vector512.FusedMultiplyAdd(Vector512.Create(a[2]), bv, c2); c3 = Vector512.FusedMultiplyAdd(Vector512.Create(a[3]), bv, c3);
            c4 = Vector512.FusedMultiplyAdd(Vector512.Create(a[4]), bv, c4); c5 = Vector512.FusedMultiplyAdd(Vector512.Create(a[5]), bv, c5);
            c6 = Vector512.FusedMultiplyAdd(Vector512.Create(a[6]), bv, c6); c7 = Vector512.FusedMultiplyAdd(Vector512.Create(a[7]), bv, c7);
            c8 = Vector512.FusedMultiplyAdd(Vector512.Create(a[8]), bv, c8); c9 = Vector512.FusedMultiplyAdd(Vector512.Create(a[9]), bv, c9);
            c10 = Vector512.FusedMultiplyAdd(Vector512.Create(a[10]), bv, c10); c11 = Vector512.FusedMultiplyAdd(Vector512.Create(a[11]), bv, c11);
            c12 = Vector512.FusedMultiplyAdd(Vector512.Create(a[12]), bv, c12); c13 = Vector512.FusedMultiplyAdd(Vector512.Create(a[13]), bv, c13);
            c14 = Vector512.FusedMultiplyAdd(Vector512.Create(a[14]), bv, c14); c15 = Vector512.FusedMultiplyAdd(Vector512.Create(a[15]), bv, c15);
            a += 16; b += 16;
        }
        c0.Store(c); c1.Store(c + 16); c2.Store(c + 32); c3.Store(c + 48); c4.Store(c + 64); c5.Store(c + 80); c6.Store(c + 96); c7.Store(c + 112);
        c8.Store(c + 128); c9.Store(c + 144); c10.Store(c + 160); c11.Store(c + 176); c12.Store(c + 192); c13.Store(c + 208); c14.Store(c + 224); c15.Store(c + 240);
    }

    // Two sibling leaves, 4 rows x 32 columns each (the current pair's half), summed and stored.
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    public static void Pair4x32(int kc, float* aL, float* bL, float* aR, float* bR, float* c)
    {
        Vector512<float> l0 = Vector512<float>.Zero, l1 = l0, l2 = l0, l3 = l0, l4 = l0, l5 = l0, l6 = l0, l7 = l0;
        Vector512<float> r0 = l0, r1 = l0, r2 = l0, r3 = l0, r4 = l0, r5 = l0, r6 = l0, r7 = l0;
        for (int p = 0; p < kc; p++)
        {
            Vector512<float> b0 = Vector512.Load(bL), b1 = Vector512.Load(bL + 16), av;
            av = Vector512.Create(aL[0]); l0 = Vector512.FusedMultiplyAdd(av, b0, l0); l1 = Vector512.FusedMultiplyAdd(av, b1, l1);
            av = Vector512.Create(aL[1]); l2 = Vector512.FusedMultiplyAdd(av, b0, l2); l3 = Vector512.FusedMultiplyAdd(av, b1, l3);
            av = Vector512.Create(aL[2]); l4 = Vector512.FusedMultiplyAdd(av, b0, l4); l5 = Vector512.FusedMultiplyAdd(av, b1, l5);
            av = Vector512.Create(aL[3]); l6 = Vector512.FusedMultiplyAdd(av, b0, l6); l7 = Vector512.FusedMultiplyAdd(av, b1, l7);
            b0 = Vector512.Load(bR); b1 = Vector512.Load(bR + 16);
            av = Vector512.Create(aR[0]); r0 = Vector512.FusedMultiplyAdd(av, b0, r0); r1 = Vector512.FusedMultiplyAdd(av, b1, r1);
            av = Vector512.Create(aR[1]); r2 = Vector512.FusedMultiplyAdd(av, b0, r2); r3 = Vector512.FusedMultiplyAdd(av, b1, r3);
            av = Vector512.Create(aR[2]); r4 = Vector512.FusedMultiplyAdd(av, b0, r4); r5 = Vector512.FusedMultiplyAdd(av, b1, r5);
            av = Vector512.Create(aR[3]); r6 = Vector512.FusedMultiplyAdd(av, b0, r6); r7 = Vector512.FusedMultiplyAdd(av, b1, r7);
            aL += 8; aR += 8; bL += 32; bR += 32;
        }
        (r0 + l0).Store(c); (r1 + l1).Store(c + 16); (r2 + l2).Store(c + 32); (r3 + l3).Store(c + 48);
        (r4 + l4).Store(c + 64); (r5 + l5).Store(c + 80); (r6 + l6).Store(c + 96); (r7 + l7).Store(c + 112);
    }

    // Two sibling leaves, 8 rows x 16 columns each, every A value used once (embedded broadcast), summed and stored.
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    public static void Pair8x16(int kc, float* aL, float* bL, float* aR, float* bR, float* c)
    {
        Vector512<float> l0 = Vector512<float>.Zero, l1 = l0, l2 = l0, l3 = l0, l4 = l0, l5 = l0, l6 = l0, l7 = l0;
        Vector512<float> r0 = l0, r1 = l0, r2 = l0, r3 = l0, r4 = l0, r5 = l0, r6 = l0, r7 = l0;
        for (int p = 0; p < kc; p++)
        {
            Vector512<float> bv = Vector512.Load(bL);
            l0 = Vector512.FusedMultiplyAdd(Vector512.Create(aL[0]), bv, l0); l1 = Vector512.FusedMultiplyAdd(Vector512.Create(aL[1]), bv, l1);
            l2 = Vector512.FusedMultiplyAdd(Vector512.Create(aL[2]), bv, l2); l3 = Vector512.FusedMultiplyAdd(Vector512.Create(aL[3]), bv, l3);
            l4 = Vector512.FusedMultiplyAdd(Vector512.Create(aL[4]), bv, l4); l5 = Vector512.FusedMultiplyAdd(Vector512.Create(aL[5]), bv, l5);
            l6 = Vector512.FusedMultiplyAdd(Vector512.Create(aL[6]), bv, l6); l7 = Vector512.FusedMultiplyAdd(Vector512.Create(aL[7]), bv, l7);
            bv = Vector512.Load(bR);
            r0 = Vector512.FusedMultiplyAdd(Vector512.Create(aR[0]), bv, r0); r1 = Vector512.FusedMultiplyAdd(Vector512.Create(aR[1]), bv, r1);
            r2 = Vector512.FusedMultiplyAdd(Vector512.Create(aR[2]), bv, r2); r3 = Vector512.FusedMultiplyAdd(Vector512.Create(aR[3]), bv, r3);
            r4 = Vector512.FusedMultiplyAdd(Vector512.Create(aR[4]), bv, r4); r5 = Vector512.FusedMultiplyAdd(Vector512.Create(aR[5]), bv, r5);
            r6 = Vector512.FusedMultiplyAdd(Vector512.Create(aR[6]), bv, r6); r7 = Vector512.FusedMultiplyAdd(Vector512.Create(aR[7]), bv, r7);
            aL += 16; aR += 16; bL += 16; bR += 16;
        }
        (r0 + l0).Store(c); (r1 + l1).Store(c + 16); (r2 + l2).Store(c + 32); (r3 + l3).Store(c + 48);
        (r4 + l4).Store(c + 64); (r5 + l5).Store(c + 80); (r6 + l6).Store(c + 96); (r7 + l7).Store(c + 112);
    }
}
