// The ceiling of the AVX-512 tile shapes a weight gradient could use, with packed A and B and the tile all in L1, so
// nothing but the kernel is timed. The engine's own kernels, called as the chunk-tree product calls them: the 8×32
// tile (MicroKernels.Kernel8x32: two B vectors per p, each A value broadcast once for two FMAs) and a pair of sibling
// leaves of that tile, both as the bare loop over its two 4×32 halves (MicroKernels.Pair4x32, 16 chains in flight) and
// through the engine's leaf loop (MicroKernels.RunLeaves with pairs, which for 4 or 8 chunks all equally deep keeps the tree in registers: LeavesInRegisters8x32). Against them, written out here because the engine has no such kernel: the same work in
// 16×16 tiles and, for the pair, 8×16 half-tiles, in which each A value feeds one FMA, so the JIT folds the broadcast into it (vfmadd231ps zmm, zmm,
// [mem]{1to16}: 18 instead of 26 instructions per 16 FMAs, but 17 loads instead of 10). GFLOP/s per leaf depth kc
// (4: a batch of 32 in 8 chunks; 16: 128; 128: a plain product's slab), three rounds each.
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using DistributedBackprop.Kernels;
using DistributedBackprop.Reduction;

unsafe
{
    if (!Vector512.IsHardwareAccelerated)
    {
        Console.Error.WriteLine("kernel-ceiling: needs AVX-512 (Vector512 is not hardware-accelerated here)");
        return 2;
    }
    const int kmax = 128, mr = 8, nr = 32, chunks = 8;
    // A tile's whole chunk tree: 8 chunks' packed slivers, A 8 values per p, B 32 per p.
    float* a = (float*)NativeMemory.AlignedAlloc(chunks * kmax * mr * sizeof(float), 64);
    float* b = (float*)NativeMemory.AlignedAlloc(chunks * kmax * nr * sizeof(float), 64);
    float* c = (float*)NativeMemory.AlignedAlloc(mr * nr * sizeof(float), 64);
    int maxDepth = ChunkTree.MaxStackDepth(chunks);
    float* stack = (float*)NativeMemory.AlignedAlloc((nuint)(maxDepth * mr * nr * sizeof(float)), 64);
    for (int i = 0; i < chunks * kmax * mr; i++) a[i] = (i % 7) * 0.01f;
    for (int i = 0; i < chunks * kmax * nr; i++) b[i] = (i % 5) * 0.01f;
    // The walk the chunk-tree product plans once per product (Gemm.PlanTreeWalk), its addends as slot addresses.
    int* plan = stackalloc int[3 * chunks + 1], starts = stackalloc int[chunks + 1];
    Gemm.PlanTreeWalk(chunks, maxDepth, new Span<int>(plan, chunks), new Span<int>(plan + chunks, chunks + 1), new Span<int>(plan + 2 * chunks + 1, chunks));
    int* leafSlot = plan, firstAddend = plan + chunks, addendSlot = plan + 2 * chunks + 1;
    float** addends = stackalloc float*[chunks];
    for (int t = 0; t < firstAddend[chunks]; t++)
    {
        addends[t] = stack + addendSlot[t] * mr * nr;
    }
    foreach (int kc in new[] { 4, 16, 32, 128 })
    {
        for (int chunk = 0; chunk <= chunks; chunk++)
        {
            starts[chunk] = chunk * kc;
        }
        double flops = 2.0 * chunks * mr * nr * kc;
        for (int round = 0; round < 3; round++)
        {
            double tiles = Time(() => Leaves(kc, a, b, c, &Tile), kc);
            double tilesBroadcast = Time(() => Leaves(kc, a, b, c, &Broadcast.Tile16x16), kc);
            double pairs = Time(() => Pairs(kc, a, b, c, &PairLoop), kc);
            double pairsBroadcast = Time(() => Pairs(kc, a, b, c, &Broadcast.Pair8x32), kc);
            double walk = Time(() => MicroKernels.RunLeaves(SimdTier.Vector512, chunks, starts, leafSlot, firstAddend, a, b, stack, addends, c, nr, pairLeaves: true, equalDepths: true), kc);
            Console.WriteLine($"kc={kc}: 8 leaves as tiles 8x32 {flops / tiles:F1}, 16x16 broadcast-in-FMA {flops / tilesBroadcast:F1}; "
                + $"as 4 pairs of 4x32 halves {flops / pairs:F1}, of 8x16 halves broadcast-in-FMA {flops / pairsBroadcast:F1}; "
                + $"through the engine's leaf loop {flops / walk:F1} GFLOP/s");
        }
    }
    return 0;

    // Each chunk's leaf on its own tile (no tree additions): the bare tile loops.
    static void Leaves(int kc, float* a, float* b, float* c, delegate*<int, float*, float*, float*, void> tile)
    {
        for (int chunk = 0; chunk < chunks; chunk++)
        {
            tile(kc, a + chunk * kc * mr, b + chunk * kc * nr, c);
        }
    }

    // Sibling chunks in pairs, each pair summed and stored (no other tree additions): the bare pair loops.
    static void Pairs(int kc, float* a, float* b, float* c, delegate*<int, float*, float*, float*, float*, float*, void> pair)
    {
        for (int chunk = 0; chunk < chunks; chunk += 2)
        {
            pair(kc, a + chunk * kc * mr, b + chunk * kc * nr, a + (chunk + 1) * kc * mr, b + (chunk + 1) * kc * nr, c);
        }
    }

    // The engine's 8×32 tile (MicroKernels.Kernel8x32) from +0.
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    static void Tile(int kc, float* a, float* b, float* c) => MicroKernels.Run(SimdTier.Vector512, kc, a, b, c, nr, TileMode.Overwrite);

    // The engine's pair loop (MicroKernels.Pair4x32) for both 4-row halves of the tile, without the walk around it.
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    static void PairLoop(int kc, float* aLeft, float* bLeft, float* aRight, float* bRight, float* c)
    {
        for (int half = 0; half < mr; half += 4)
        {
            MicroKernels.Pair4x32(kc, aLeft + half, bLeft, kc, aRight + half, bRight, c + half * nr, nr, null, 0, half * nr);
        }
    }

    // Nanoseconds per call, after half a second of calls (so the JIT has promoted and profiled what it will).
    static double Time(Action kernel, int kc)
    {
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed.TotalSeconds < 0.5) kernel();
        int calls = 4_000_000 / kc;
        clock.Restart();
        for (int i = 0; i < calls; i++) kernel();
        return clock.Elapsed.TotalSeconds * 1e9 / calls;
    }
}

/// <summary>The engine's work in tiles one B vector wide, each A value feeding one FMA: shapes the engine does not use.</summary>
static unsafe class Broadcast
{
    /// <summary>A 16×16 tile (as many outputs as 8×32): one B vector per p, A slivers of 16 values per p.</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    public static void Tile16x16(int kc, float* a, float* b, float* c)
    {
        Vector512<float> t0 = Vector512<float>.Zero, t1 = t0, t2 = t0, t3 = t0, t4 = t0, t5 = t0, t6 = t0, t7 = t0;
        Vector512<float> u0 = t0, u1 = t0, u2 = t0, u3 = t0, u4 = t0, u5 = t0, u6 = t0, u7 = t0;
        for (int p = 0; p < kc; p++)
        {
            Vector512<float> bv = Vector512.Load(b);
            Rows8x16(a, bv, ref t0, ref t1, ref t2, ref t3, ref t4, ref t5, ref t6, ref t7);
            Rows8x16(a + 8, bv, ref u0, ref u1, ref u2, ref u3, ref u4, ref u5, ref u6, ref u7);
            a += 16; b += 16;
        }
        StoreColumns(c, 0, t0, t1, t2, t3, t4, t5, t6, t7);
        StoreColumns(c, 16, u0, u1, u2, u3, u4, u5, u6, u7);
    }

    /// <summary>Two sibling leaves of an 8×32 tile, each 16-column half of both leaves at a time (16 chains), right + left, stored.</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    public static void Pair8x32(int kc, float* aLeft, float* bLeft, float* aRight, float* bRight, float* c)
    {
        for (int half = 0; half < 32; half += 16)
        {
            Vector512<float> l0 = Vector512<float>.Zero, l1 = l0, l2 = l0, l3 = l0, l4 = l0, l5 = l0, l6 = l0, l7 = l0;
            Vector512<float> r0 = l0, r1 = l0, r2 = l0, r3 = l0, r4 = l0, r5 = l0, r6 = l0, r7 = l0;
            float* aL = aLeft, aR = aRight, bL = bLeft + half, bR = bRight + half;
            for (int p = 0; p < kc; p++)
            {
                Rows8x16(aL, Vector512.Load(bL), ref l0, ref l1, ref l2, ref l3, ref l4, ref l5, ref l6, ref l7);
                Rows8x16(aR, Vector512.Load(bR), ref r0, ref r1, ref r2, ref r3, ref r4, ref r5, ref r6, ref r7);
                aL += 8; aR += 8; bL += 32; bR += 32;
            }
            StoreColumns(c, half, r0 + l0, r1 + l1, r2 + l2, r3 + l3, r4 + l4, r5 + l5, r6 + l6, r7 + l7);
        }
    }

    /// <summary>One p of 8 rows × 16 columns: row i's accumulator += a[i] · b, each a[i] used once (folded into its FMA).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Rows8x16(float* a, Vector512<float> b, ref Vector512<float> c0, ref Vector512<float> c1, ref Vector512<float> c2,
        ref Vector512<float> c3, ref Vector512<float> c4, ref Vector512<float> c5, ref Vector512<float> c6, ref Vector512<float> c7)
    {
        c0 = Vector512.FusedMultiplyAdd(Vector512.Create(a[0]), b, c0); c1 = Vector512.FusedMultiplyAdd(Vector512.Create(a[1]), b, c1);
        c2 = Vector512.FusedMultiplyAdd(Vector512.Create(a[2]), b, c2); c3 = Vector512.FusedMultiplyAdd(Vector512.Create(a[3]), b, c3);
        c4 = Vector512.FusedMultiplyAdd(Vector512.Create(a[4]), b, c4); c5 = Vector512.FusedMultiplyAdd(Vector512.Create(a[5]), b, c5);
        c6 = Vector512.FusedMultiplyAdd(Vector512.Create(a[6]), b, c6); c7 = Vector512.FusedMultiplyAdd(Vector512.Create(a[7]), b, c7);
    }

    /// <summary>Rows 0..8 of a tile (row stride 32), 16 columns from <paramref name="column"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreColumns(float* c, int column, Vector512<float> v0, Vector512<float> v1, Vector512<float> v2, Vector512<float> v3,
        Vector512<float> v4, Vector512<float> v5, Vector512<float> v6, Vector512<float> v7)
    {
        c += column;
        v0.Store(c); v1.Store(c + 32); v2.Store(c + 64); v3.Store(c + 96); v4.Store(c + 128); v5.Store(c + 160); v6.Store(c + 192); v7.Store(c + 224);
    }
}
