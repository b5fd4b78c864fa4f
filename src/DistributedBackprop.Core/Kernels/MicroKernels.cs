using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace DistributedBackprop.Kernels;

/// <summary>
/// Register-tiled micro-kernels: C[0..MR, 0..NR] = C (or 0) + Σ_p a[p, :] ⊗ b[p, :] over packed slivers,
/// a: kc×MR (MR values per p), b: kc×NR (NR values per p); AVX2's edge kernels take fewer rows of such an a sliver
/// (<see cref="Kernel4x16"/>, <see cref="Kernel2x32"/>). Each output element is one FMA chain in
/// p order, starting from the loaded C or from +0 — the definition <see cref="NaiveGemm"/> spells out.
/// The chain may then have tiles added to it before it is stored (the chunk tree's merges, <see cref="Gemm.ChunkTreeProduct(StridedMatrix{float}, StridedMatrix{float}, ReadOnlySpan{int}, Span{float}, int, SimdTier)"/>).
/// </summary>
internal enum TileMode
{
    /// <summary>C ← chain from +0 (a chunk's product).</summary>
    Overwrite,
    /// <summary>C ← chain continued from the current C (a later KC slab, or a bias start).</summary>
    Continue,
}

internal static unsafe class MicroKernels
{
    /// <param name="addends">after the chain, each element becomes chain + addends[0] + addends[1] + … (added in
    /// that order, one rounding each), read from these MR×NR tiles (row stride NR) before C is written, so C may be one of them.</param>
    public static void Run(SimdTier tier, int kc, float* a, float* b, float* c, nint ldc, TileMode mode, float** addends = null, int addendCount = 0)
    {
        switch (tier)
        {
            case SimdTier.Vector512: Kernel8x32(kc, a, b, c, ldc, mode, addends, addendCount); break;
            case SimdTier.Vector256: Kernel6x16(kc, a, b, c, ldc, mode, addends, addendCount); break;
            case SimdTier.Vector128: Kernel6x16Neon(kc, a, b, c, ldc, mode, addends, addendCount); break;
            default: KernelScalar6x16(kc, a, b, c, ldc, mode, addends, addendCount); break;
        }
    }

    /// <summary>
    /// One tile's leaves of the chunk tree, in chunk order, as <c>Gemm.PlanTreeWalk</c> planned them: chunk c's chain
    /// over rows [starts[c], starts[c+1]) of the slivers from +0, plus the tiles addends[firstAddend[c] ..
    /// firstAddend[c+1]) in that order (slots of <paramref name="stack"/>, their addresses worked out once per product:
    /// 1.03–1.05 × on the weight gradients at batch 32, 1.00–1.02 × at 128, `bash bench/gemm-ab.sh 64e5092 100 B`), stored in slot leafSlot[c]
    /// of <paramref name="stack"/> (tiles MR×NR, row stride NR); the last chunk's result, the root, goes to
    /// <paramref name="root"/> (row stride ldc) if it is given, else to slot 0. With pairs and 4 or 8 chunks all equally
    /// deep the walk is not used at all (<see cref="LeavesInRegisters8x32"/>): only the root is stored, and slot 1 holds
    /// one spilled node.
    /// </summary>
    /// <param name="pairLeaves">AVX-512 only: run sibling leaves two at a time (<see cref="LeavesInRegisters8x32"/> or
    /// <see cref="PairedLeaves8x32"/>), for chunks so shallow that storing and reloading each left leaf costs more than its FMAs.</param>
    /// <param name="equalDepths">every chunk as deep as the first (<see cref="EqualDepths"/>, found once per product).</param>
    public static void RunLeaves(SimdTier tier, int chunks, int* starts, int* leafSlot, int* firstAddend,
        float* aSliver, float* bSliver, float* stack, float** addends, float* root, nint ldc, bool pairLeaves = false, bool equalDepths = false)
    {
        switch (tier)
        {
            // The root in slot 0 when no root is given (as the walk leaves it); node(0, 4) of 8 chunks spilled to slot 1.
            case SimdTier.Vector512 when pairLeaves && equalDepths && chunks is 4 or 8:
                LeavesInRegisters8x32(chunks, starts[1], aSliver, bSliver, stack + 8 * 32, root != null ? root : stack, root != null ? ldc : 32); break;
            case SimdTier.Vector512 when pairLeaves: PairedLeaves8x32(chunks, starts, leafSlot, firstAddend, aSliver, bSliver, stack, addends, root, ldc); break;
            case SimdTier.Vector512: Leaves<Tile8x32>(chunks, starts, leafSlot, firstAddend, aSliver, bSliver, stack, addends, root, ldc); break;
            case SimdTier.Vector256: Leaves<Tile6x16>(chunks, starts, leafSlot, firstAddend, aSliver, bSliver, stack, addends, root, ldc); break;
            case SimdTier.Vector128: Leaves<Tile6x16Neon>(chunks, starts, leafSlot, firstAddend, aSliver, bSliver, stack, addends, root, ldc); break;
            default: Leaves<Tile6x16Scalar>(chunks, starts, leafSlot, firstAddend, aSliver, bSliver, stack, addends, root, ldc); break;
        }
    }

    /// <summary>
    /// AVX-512: the chunk tree's leaves for the last <paramref name="rows"/> (1–2) rows of a block, whose packed A sliver
    /// is padded to 8 rows, against two full B slivers side by side (64 columns): 2 rows × 4 vectors = 8 independent FMA
    /// chains, enough for two FMA pipes of 4-cycle latency, where an 8×32 tile would spend 6 or 7 of its 8 rows on
    /// padding. The same walk as <see cref="RunLeaves"/> (slots of the same stack, here 2 rows of 64 floats each), each
    /// element the same chain and the same additions: the same bits. The root goes to <paramref name="root"/> (row stride
    /// <paramref name="ldc"/>), its second row only if <paramref name="rows"/> is 2.
    /// </summary>
    public static void RunEdgeLeaves(int chunks, int* starts, int* leafSlot, int* firstAddend, float* aSliver, float* bSliver0, float* bSliver1,
        float* stack, float** addends, float* root, nint ldc, int rows)
    {
        const int mr = 8, nr = 32, tileSize = mr * nr;
        for (int chunk = 0; chunk < chunks; chunk++)
        {
            int k0 = starts[chunk], kc = starts[chunk + 1] - k0;
            int first = firstAddend[chunk], count = firstAddend[chunk + 1] - first;
            bool toRoot = chunk == chunks - 1;
            Edge2x64(kc, aSliver + (long)k0 * mr, bSliver0 + (long)k0 * nr, bSliver1 + (long)k0 * nr,
                toRoot ? root : stack + leafSlot[chunk] * tileSize, toRoot ? ldc : 2 * nr, toRoot ? rows : 2, addends + first, count);
        }
    }

    /// <summary>AVX2's edge kernel <see cref="Kernel2x32"/> at twice the width, as a leaf: from +0, then its addends, then stored.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Edge2x64(int kc, float* a, float* b0, float* b1, float* c, nint ldc, int rows, float** addends, int addendCount)
    {
        Vector512<float> c00 = Vector512<float>.Zero, c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00, c12 = c00, c13 = c00;
        for (int p = 0; p < kc; p++)
        {
            Vector512<float> v0 = Vector512.Load(b0), v1 = Vector512.Load(b0 + 16), v2 = Vector512.Load(b1), v3 = Vector512.Load(b1 + 16);
            Vector512<float> av = Vector512.Create(a[0]);
            c00 = Vector512.FusedMultiplyAdd(av, v0, c00); c01 = Vector512.FusedMultiplyAdd(av, v1, c01);
            c02 = Vector512.FusedMultiplyAdd(av, v2, c02); c03 = Vector512.FusedMultiplyAdd(av, v3, c03);
            av = Vector512.Create(a[1]);
            c10 = Vector512.FusedMultiplyAdd(av, v0, c10); c11 = Vector512.FusedMultiplyAdd(av, v1, c11);
            c12 = Vector512.FusedMultiplyAdd(av, v2, c12); c13 = Vector512.FusedMultiplyAdd(av, v3, c13);
            a += 8;
            b0 += 32;
            b1 += 32;
        }
        for (int t = 0; t < addendCount; t++)
        {
            float* s = addends[t];
            c00 += Vector512.Load(s); c01 += Vector512.Load(s + 16); c02 += Vector512.Load(s + 32); c03 += Vector512.Load(s + 48);
            c10 += Vector512.Load(s + 64); c11 += Vector512.Load(s + 80); c12 += Vector512.Load(s + 96); c13 += Vector512.Load(s + 112);
        }
        c00.Store(c); c01.Store(c + 16); c02.Store(c + 32); c03.Store(c + 48);
        if (rows == 2)
        {
            c10.Store(c + ldc); c11.Store(c + ldc + 16); c12.Store(c + ldc + 32); c13.Store(c + ldc + 48);
        }
    }

    /// <summary>
    /// The leaf loop, compiled once per tier. On AVX2 the kernel is inlined into it: a chunk of a batch of 128 in 8 is
    /// 16 rows deep, and a call per leaf is a cost the leaf's 16 rows of FMAs do not hide (each leaf's zeroing, adds
    /// and tile store stay). With the walk planned once, 1.04–1.05× on the weight gradients at batch 128, Zen 3
    /// (`bash bench/gemm-ab.sh 600c576 100 128`).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Leaves<TKernel>(int chunks, int* starts, int* leafSlot, int* firstAddend,
        float* aSliver, float* bSliver, float* stack, float** addends, float* root, nint ldc)
        where TKernel : struct, ITileKernel
    {
        int mr = TKernel.MR, nr = TKernel.NR, tileSize = mr * nr;
        for (int chunk = 0; chunk < chunks; chunk++)
        {
            int k0 = starts[chunk], kc = starts[chunk + 1] - k0;
            int first = firstAddend[chunk], count = firstAddend[chunk + 1] - first;
            bool toRoot = chunk == chunks - 1 && root != null;
            TKernel.Run(kc, aSliver + (long)k0 * mr, bSliver + (long)k0 * nr, toRoot ? root : stack + leafSlot[chunk] * tileSize, toRoot ? ldc : nr,
                TileMode.Overwrite, addends + first, count);
        }
    }

    /// <summary>
    /// AVX-512's leaf loop for shallow chunks (a batch of 32 in 8 chunks is 4 rows deep): a left leaf whose right sibling
    /// is the next chunk runs together with it, each 4-row half of the 8×32 tile as two interleaved 4×32 chains (16
    /// accumulators), their sum (right + left, the node's one rounding) taken in registers before the right leaf's other
    /// addends. The left leaf's tile is then never stored to its slot and read back, which at 4 FMA steps a leaf cost
    /// about as much as the FMAs. Every other leaf runs <see cref="Kernel8x32"/> as in <see cref="Leaves{TKernel}"/>.
    /// The same chains and the same additions in the same order: the same bits. 4 or 8 chunks all equally deep skip
    /// this walk (<see cref="LeavesInRegisters8x32"/>); it serves every other chunk count and chunks of unequal depth.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PairedLeaves8x32(int chunks, int* starts, int* leafSlot, int* firstAddend,
        float* aSliver, float* bSliver, float* stack, float** addends, float* root, nint ldc)
    {
        const int mr = 8, nr = 32, tileSize = mr * nr;
        for (int chunk = 0; chunk < chunks; chunk++)
        {
            int k0 = starts[chunk], kc = starts[chunk + 1] - k0;
            int first = firstAddend[chunk], count = firstAddend[chunk + 1] - first;
            float* slot = stack + leafSlot[chunk] * tileSize;
            // A left leaf (nothing to add) whose right sibling, the next chunk, adds its slot first.
            bool paired = count == 0 && chunk + 1 < chunks && firstAddend[chunk + 2] > firstAddend[chunk + 1] && addends[firstAddend[chunk + 1]] == slot;
            if (paired)
            {
                int right = chunk + 1, k1 = starts[right], kcRight = starts[right + 1] - k1;
                int rightFirst = firstAddend[right] + 1, rightCount = firstAddend[right + 1] - rightFirst;
                bool toRoot = right == chunks - 1 && root != null;
                float* c = toRoot ? root : stack + leafSlot[right] * tileSize;
                nint ldcRight = toRoot ? ldc : nr;
                if (kc == 4 && kcRight == 4)
                {
                    PairDepth4(aSliver + (long)k0 * mr, bSliver + (long)k0 * nr, aSliver + (long)k1 * mr, bSliver + (long)k1 * nr,
                        c, ldcRight, addends + rightFirst, rightCount);
                }
                else
                {
                    for (int half = 0; half < mr; half += 4)
                    {
                        Pair4x32(kc, aSliver + (long)k0 * mr + half, bSliver + (long)k0 * nr, kcRight, aSliver + (long)k1 * mr + half, bSliver + (long)k1 * nr,
                            c + half * ldcRight, ldcRight, addends + rightFirst, rightCount, half * nr);
                    }
                }
                chunk = right;
            }
            else
            {
                bool toRoot = chunk == chunks - 1 && root != null;
                Kernel8x32(kc, aSliver + (long)k0 * mr, bSliver + (long)k0 * nr, toRoot ? root : slot, toRoot ? ldc : nr, TileMode.Overwrite, addends + first, count);
            }
        }
    }

    /// <summary>
    /// Whether every chunk is as deep as the first (a batch that is a multiple of the chunk count). Each depth is compared:
    /// chunks cut by <c>ChunkTree.ChunkStart</c> differ by at most a row, but the product takes any starts (4, 3, 5, 4 add up
    /// to four times the first as well).
    /// </summary>
    internal static bool EqualDepths(ReadOnlySpan<int> starts)
    {
        int depth = starts[1] - starts[0];
        for (int chunk = 1; chunk + 1 < starts.Length; chunk++)
        {
            if (starts[chunk + 1] - starts[chunk] != depth)
            {
                return false;
            }
        }
        return true;
    }

    /// <summary>
    /// AVX-512: a whole tile's tree of 4 or 8 chunks all <paramref name="kc"/> rows deep, node(0, 4) = (c0 + c1) + (c2 + c3)
    /// and node(0, 8) = node(0, 4) + node(4, 4), each 4-row half of the 8×32 tile in turn, every node but one kept in
    /// registers: a pair of sibling leaves takes 16 accumulators and its sum 8, so the pair (c0, c1) waits in registers
    /// while (c2, c3) runs, and (c4, c5) while (c6, c7) runs; only node(0, 4) of 8 chunks is stored (to
    /// <paramref name="spill"/>, 4×32 floats) and read back once, for the root, which goes to <paramref name="root"/> (row
    /// stride <paramref name="ldc"/>). The planned walk (<see cref="PairedLeaves8x32"/>) stores and reloads three nodes a
    /// half and finds each addend through a table. 8 chunks are the default; 4 are what each of 2 workers computes of them.
    /// The same chains and the same additions: the same bits.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void LeavesInRegisters8x32(int chunks, int kc, float* aSliver, float* bSliver, float* spill, float* root, nint ldc)
    {
        long aChunk = (long)kc * 8, bChunk = (long)kc * 32;
        for (int half = 0; half < 8; half += 4)
        {
            float* a = aSliver + half, c = root + half * ldc;
            EqualPairSum4x32(kc, a, bSliver, a + aChunk, bSliver + bChunk, out var q0, out var q1, out var q2, out var q3, out var q4, out var q5, out var q6, out var q7);
            EqualPairSum4x32(kc, a + 2 * aChunk, bSliver + 2 * bChunk, a + 3 * aChunk, bSliver + 3 * bChunk,
                out var p0, out var p1, out var p2, out var p3, out var p4, out var p5, out var p6, out var p7);
            q0 += p0; q1 += p1; q2 += p2; q3 += p3; q4 += p4; q5 += p5; q6 += p6; q7 += p7;
            if (chunks == 4)
            {
                Store4x32(c, ldc, q0, q1, q2, q3, q4, q5, q6, q7);
                continue;
            }
            // node(0, 4), the one node stored: the two pairs of node(4, 4) need its 8 registers.
            Store4x32(spill, 32, q0, q1, q2, q3, q4, q5, q6, q7);
            EqualPairSum4x32(kc, a + 4 * aChunk, bSliver + 4 * bChunk, a + 5 * aChunk, bSliver + 5 * bChunk, out q0, out q1, out q2, out q3, out q4, out q5, out q6, out q7);
            EqualPairSum4x32(kc, a + 6 * aChunk, bSliver + 6 * bChunk, a + 7 * aChunk, bSliver + 7 * bChunk, out p0, out p1, out p2, out p3, out p4, out p5, out p6, out p7);
            q0 += p0; q1 += p1; q2 += p2; q3 += p3; q4 += p4; q5 += p5; q6 += p6; q7 += p7;
            // The root: node(0, 4) + node(4, 4).
            Store4x32(c, ldc, Vector512.Load(spill) + q0, Vector512.Load(spill + 16) + q1, Vector512.Load(spill + 32) + q2, Vector512.Load(spill + 48) + q3,
                Vector512.Load(spill + 64) + q4, Vector512.Load(spill + 80) + q5, Vector512.Load(spill + 96) + q6, Vector512.Load(spill + 112) + q7);
        }
    }

    /// <summary>A 4×32 node to rows of stride <paramref name="ldc"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store4x32(float* c, nint ldc, Vector512<float> r00, Vector512<float> r01, Vector512<float> r10, Vector512<float> r11,
        Vector512<float> r20, Vector512<float> r21, Vector512<float> r30, Vector512<float> r31)
    {
        r00.Store(c); r01.Store(c + 16);
        r10.Store(c + ldc); r11.Store(c + ldc + 16);
        r20.Store(c + 2 * ldc); r21.Store(c + 2 * ldc + 16);
        r30.Store(c + 3 * ldc); r31.Store(c + 3 * ldc + 16);
    }

    /// <summary>Rows r..r+4 of two sibling leaves <paramref name="kc"/> rows deep each (as <see cref="Pair4x32"/>), right + left returned in registers.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void EqualPairSum4x32(int kc, float* aLeft, float* bLeft, float* aRight, float* bRight,
        out Vector512<float> s00, out Vector512<float> s01, out Vector512<float> s10, out Vector512<float> s11,
        out Vector512<float> s20, out Vector512<float> s21, out Vector512<float> s30, out Vector512<float> s31)
    {
        Vector512<float> l00 = Vector512<float>.Zero, l01 = l00, l10 = l00, l11 = l00, l20 = l00, l21 = l00, l30 = l00, l31 = l00;
        Vector512<float> r00 = l00, r01 = l00, r10 = l00, r11 = l00, r20 = l00, r21 = l00, r30 = l00, r31 = l00;
        for (int p = 0; p < kc; p++)
        {
            Fma4x32(aLeft, bLeft, ref l00, ref l01, ref l10, ref l11, ref l20, ref l21, ref l30, ref l31);
            Fma4x32(aRight, bRight, ref r00, ref r01, ref r10, ref r11, ref r20, ref r21, ref r30, ref r31);
            aLeft += 8; aRight += 8; bLeft += 32; bRight += 32;
        }
        s00 = r00 + l00; s01 = r01 + l01; s10 = r10 + l10; s11 = r11 + l11; s20 = r20 + l20; s21 = r21 + l21; s30 = r30 + l30; s31 = r31 + l31;
    }

    /// <summary>
    /// Rows r..r+4 of two sibling leaves' 8×32 tiles (A's slivers keep their 8 values per p): each leaf's chain from +0 over
    /// its own rows of the slivers, then right + left, then each addend (tiles of row stride 32, read at
    /// <paramref name="addendOffset"/>), stored to C. 16 independent accumulators, as the 8×32 kernel has.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Pair4x32(int kcLeft, float* aLeft, float* bLeft, int kcRight, float* aRight, float* bRight,
        float* c, nint ldc, float** addends, int addendCount, int addendOffset)
    {
        Vector512<float> l00 = Vector512<float>.Zero, l01 = l00, l10 = l00, l11 = l00, l20 = l00, l21 = l00, l30 = l00, l31 = l00;
        Vector512<float> r00 = l00, r01 = l00, r10 = l00, r11 = l00, r20 = l00, r21 = l00, r30 = l00, r31 = l00;
        int both = Math.Min(kcLeft, kcRight), p = 0;
        for (; p < both; p++)
        {
            // The two leaves' steps interleaved: 16 independent chains in flight.
            Fma4x32(aLeft, bLeft, ref l00, ref l01, ref l10, ref l11, ref l20, ref l21, ref l30, ref l31);
            Fma4x32(aRight, bRight, ref r00, ref r01, ref r10, ref r11, ref r20, ref r21, ref r30, ref r31);
            aLeft += 8; aRight += 8; bLeft += 32; bRight += 32;
        }
        // Chunks of unequal depth (a batch not a multiple of the chunk count): the deeper one's last steps alone.
        for (int q = p; q < kcLeft; q++, aLeft += 8, bLeft += 32)
        {
            Fma4x32(aLeft, bLeft, ref l00, ref l01, ref l10, ref l11, ref l20, ref l21, ref l30, ref l31);
        }
        for (int q = p; q < kcRight; q++, aRight += 8, bRight += 32)
        {
            Fma4x32(aRight, bRight, ref r00, ref r01, ref r10, ref r11, ref r20, ref r21, ref r30, ref r31);
        }
        r00 += l00; r01 += l01; r10 += l10; r11 += l11; r20 += l20; r21 += l21; r30 += l30; r31 += l31;
        AddAndStore4x32(c, ldc, addends, addendCount, addendOffset, r00, r01, r10, r11, r20, r21, r30, r31);
    }

    /// <summary>
    /// <see cref="Pair4x32"/> for both halves of the tile when both leaves are 4 rows deep (a batch of 32 in 8 chunks, which
    /// now takes <see cref="LeavesInRegisters8x32"/>; still each of 4 workers' 2 chunks of such a batch, or a batch of 64 in
    /// 16 chunks), in
    /// straight lines: every address a constant offset, no loop. At that depth a leaf's 64 FMAs were outnumbered by the
    /// loop's and the walk's other instructions (`bash bench/profile.sh 12 3000 -- --batch-size 32 --seconds 8 --windows 1
    /// --warmup 0.5 --no-gemm`: the FMA loop 18 % of the step, the rest of the leaves 16 %). Layer 1's weight gradient
    /// 1.00–1.08 ×, the step 1.009–1.044 × in six runs of `GEMMAB_ROWS=60000 bash bench/gemm-ab.sh d83de50 60 32` (README,
    /// "Leaves four rows deep in straight lines"). The same chains and additions: the same bits.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void PairDepth4(float* aLeft, float* bLeft, float* aRight, float* bRight, float* c, nint ldc, float** addends, int addendCount)
    {
        HalfDepth4(aLeft, bLeft, aRight, bRight, c, ldc, addends, addendCount, 0);
        HalfDepth4(aLeft + 4, bLeft, aRight + 4, bRight, c + 4 * ldc, ldc, addends, addendCount, 4 * 32);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void HalfDepth4(float* aLeft, float* bLeft, float* aRight, float* bRight, float* c, nint ldc, float** addends, int addendCount, int addendOffset)
    {
        Vector512<float> l00 = Vector512<float>.Zero, l01 = l00, l10 = l00, l11 = l00, l20 = l00, l21 = l00, l30 = l00, l31 = l00;
        Vector512<float> r00 = l00, r01 = l00, r10 = l00, r11 = l00, r20 = l00, r21 = l00, r30 = l00, r31 = l00;
        Fma4x32(aLeft, bLeft, ref l00, ref l01, ref l10, ref l11, ref l20, ref l21, ref l30, ref l31);
        Fma4x32(aRight, bRight, ref r00, ref r01, ref r10, ref r11, ref r20, ref r21, ref r30, ref r31);
        Fma4x32(aLeft + 8, bLeft + 32, ref l00, ref l01, ref l10, ref l11, ref l20, ref l21, ref l30, ref l31);
        Fma4x32(aRight + 8, bRight + 32, ref r00, ref r01, ref r10, ref r11, ref r20, ref r21, ref r30, ref r31);
        Fma4x32(aLeft + 16, bLeft + 64, ref l00, ref l01, ref l10, ref l11, ref l20, ref l21, ref l30, ref l31);
        Fma4x32(aRight + 16, bRight + 64, ref r00, ref r01, ref r10, ref r11, ref r20, ref r21, ref r30, ref r31);
        Fma4x32(aLeft + 24, bLeft + 96, ref l00, ref l01, ref l10, ref l11, ref l20, ref l21, ref l30, ref l31);
        Fma4x32(aRight + 24, bRight + 96, ref r00, ref r01, ref r10, ref r11, ref r20, ref r21, ref r30, ref r31);
        r00 += l00; r01 += l01; r10 += l10; r11 += l11; r20 += l20; r21 += l21; r30 += l30; r31 += l31;
        AddAndStore4x32(c, ldc, addends, addendCount, addendOffset, r00, r01, r10, r11, r20, r21, r30, r31);
    }

    /// <summary>A 4×32 node plus each addend (tiles of row stride 32, read at <paramref name="addendOffset"/>), stored to C.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void AddAndStore4x32(float* c, nint ldc, float** addends, int addendCount, int addendOffset,
        Vector512<float> r00, Vector512<float> r01, Vector512<float> r10, Vector512<float> r11,
        Vector512<float> r20, Vector512<float> r21, Vector512<float> r30, Vector512<float> r31)
    {
        for (int t = 0; t < addendCount; t++)
        {
            float* s = addends[t] + addendOffset;
            r00 += Vector512.Load(s + 0 * 32); r01 += Vector512.Load(s + 0 * 32 + 16);
            r10 += Vector512.Load(s + 1 * 32); r11 += Vector512.Load(s + 1 * 32 + 16);
            r20 += Vector512.Load(s + 2 * 32); r21 += Vector512.Load(s + 2 * 32 + 16);
            r30 += Vector512.Load(s + 3 * 32); r31 += Vector512.Load(s + 3 * 32 + 16);
        }
        Store4x32(c, ldc, r00, r01, r10, r11, r20, r21, r30, r31);
    }

    /// <summary>One p of a 4×32 tile: row i's two accumulators += a[i] · b[0..32] (A's sliver keeps its 8 values per p).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Fma4x32(float* a, float* b, ref Vector512<float> c00, ref Vector512<float> c01, ref Vector512<float> c10, ref Vector512<float> c11,
        ref Vector512<float> c20, ref Vector512<float> c21, ref Vector512<float> c30, ref Vector512<float> c31)
    {
        Vector512<float> b0 = Vector512.Load(b), b1 = Vector512.Load(b + 16);
        Vector512<float> av = Vector512.Create(a[0]);
        c00 = Vector512.FusedMultiplyAdd(av, b0, c00); c01 = Vector512.FusedMultiplyAdd(av, b1, c01);
        av = Vector512.Create(a[1]);
        c10 = Vector512.FusedMultiplyAdd(av, b0, c10); c11 = Vector512.FusedMultiplyAdd(av, b1, c11);
        av = Vector512.Create(a[2]);
        c20 = Vector512.FusedMultiplyAdd(av, b0, c20); c21 = Vector512.FusedMultiplyAdd(av, b1, c21);
        av = Vector512.Create(a[3]);
        c30 = Vector512.FusedMultiplyAdd(av, b0, c30); c31 = Vector512.FusedMultiplyAdd(av, b1, c31);
    }

    /// <summary>A tier's kernel as a type, so <see cref="Leaves{TKernel}"/> is compiled for each (and may inline it).</summary>
    private interface ITileKernel
    {
        /// <summary>The tile's rows and columns (the tier's <see cref="GemmBlocking"/> MR and NR).</summary>
        static abstract int MR { get; }

        static abstract int NR { get; }

        static abstract void Run(int kc, float* a, float* b, float* c, nint ldc, TileMode mode, float** addends, int addendCount);
    }

    private struct Tile6x16 : ITileKernel
    {
        public static int MR => GemmBlocking.Vector256.MR;

        public static int NR => GemmBlocking.Vector256.NR;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Run(int kc, float* a, float* b, float* c, nint ldc, TileMode mode, float** addends, int addendCount) =>
            Chain6x16(kc, a, b, c, ldc, mode, addends, addendCount);
    }

    private struct Tile8x32 : ITileKernel
    {
        public static int MR => GemmBlocking.Vector512.MR;

        public static int NR => GemmBlocking.Vector512.NR;

        public static void Run(int kc, float* a, float* b, float* c, nint ldc, TileMode mode, float** addends, int addendCount) =>
            Kernel8x32(kc, a, b, c, ldc, mode, addends, addendCount);
    }

    private struct Tile6x16Neon : ITileKernel
    {
        public static int MR => GemmBlocking.Vector128.MR;

        public static int NR => GemmBlocking.Vector128.NR;

        public static void Run(int kc, float* a, float* b, float* c, nint ldc, TileMode mode, float** addends, int addendCount) =>
            Kernel6x16Neon(kc, a, b, c, ldc, mode, addends, addendCount);
    }

    private struct Tile6x16Scalar : ITileKernel
    {
        public static int MR => GemmBlocking.Scalar.MR;

        public static int NR => GemmBlocking.Scalar.NR;

        public static void Run(int kc, float* a, float* b, float* c, nint ldc, TileMode mode, float** addends, int addendCount) =>
            KernelScalar6x16(kc, a, b, c, ldc, mode, addends, addendCount);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel6x16(int kc, float* a, float* b, float* c, nint ldc, TileMode mode, float** addends, int addendCount) =>
        Chain6x16(kc, a, b, c, ldc, mode, addends, addendCount);

    /// <summary>The AVX2 kernel's body: inlined into <see cref="Kernel6x16"/> and into the AVX2 leaf loop.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Chain6x16(int kc, float* a, float* b, float* c, nint ldc, TileMode mode, float** addends, int addendCount)
    {
        Vector256<float> c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
        if (mode == TileMode.Continue)
        {
            c00 = Vector256.Load(c); c01 = Vector256.Load(c + 8);
            c10 = Vector256.Load(c + ldc); c11 = Vector256.Load(c + ldc + 8);
            c20 = Vector256.Load(c + 2 * ldc); c21 = Vector256.Load(c + 2 * ldc + 8);
            c30 = Vector256.Load(c + 3 * ldc); c31 = Vector256.Load(c + 3 * ldc + 8);
            c40 = Vector256.Load(c + 4 * ldc); c41 = Vector256.Load(c + 4 * ldc + 8);
            c50 = Vector256.Load(c + 5 * ldc); c51 = Vector256.Load(c + 5 * ldc + 8);
        }
        else
        {
            c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = Vector256<float>.Zero;
        }
        // Four values of p per iteration: the loop's own instructions then cost a quarter as many issue slots, which the
        // 12 FMAs of each p need (with the packing changes, 1.14–1.19× on the step's forward products at batch 128, Zen 3:
        // `bash bench/gemm-ab.sh 3f2490c 100 128`). p stays in order: same chains.
        int p = 0;
        for (; p + 4 <= kc; p += 4)
        {
            Fma6x16(a, b, ref c00, ref c01, ref c10, ref c11, ref c20, ref c21, ref c30, ref c31, ref c40, ref c41, ref c50, ref c51);
            Fma6x16(a + 6, b + 16, ref c00, ref c01, ref c10, ref c11, ref c20, ref c21, ref c30, ref c31, ref c40, ref c41, ref c50, ref c51);
            Fma6x16(a + 12, b + 32, ref c00, ref c01, ref c10, ref c11, ref c20, ref c21, ref c30, ref c31, ref c40, ref c41, ref c50, ref c51);
            Fma6x16(a + 18, b + 48, ref c00, ref c01, ref c10, ref c11, ref c20, ref c21, ref c30, ref c31, ref c40, ref c41, ref c50, ref c51);
            a += 24;
            b += 64;
        }
        for (; p < kc; p++)
        {
            Fma6x16(a, b, ref c00, ref c01, ref c10, ref c11, ref c20, ref c21, ref c30, ref c31, ref c40, ref c41, ref c50, ref c51);
            a += 6;
            b += 16;
        }
        for (int t = 0; t < addendCount; t++)
        {
            float* s = addends[t];
            c00 += Vector256.Load(s); c01 += Vector256.Load(s + 8);
            c10 += Vector256.Load(s + 16); c11 += Vector256.Load(s + 24);
            c20 += Vector256.Load(s + 32); c21 += Vector256.Load(s + 40);
            c30 += Vector256.Load(s + 48); c31 += Vector256.Load(s + 56);
            c40 += Vector256.Load(s + 64); c41 += Vector256.Load(s + 72);
            c50 += Vector256.Load(s + 80); c51 += Vector256.Load(s + 88);
        }
        c00.Store(c); c01.Store(c + 8);
        c10.Store(c + ldc); c11.Store(c + ldc + 8);
        c20.Store(c + 2 * ldc); c21.Store(c + 2 * ldc + 8);
        c30.Store(c + 3 * ldc); c31.Store(c + 3 * ldc + 8);
        c40.Store(c + 4 * ldc); c41.Store(c + 4 * ldc + 8);
        c50.Store(c + 5 * ldc); c51.Store(c + 5 * ldc + 8);
    }

    /// <summary>One p of the 6×16 tile: row i's two accumulators += a[i] · b[0..16].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Fma6x16(float* a, float* b, ref Vector256<float> c00, ref Vector256<float> c01, ref Vector256<float> c10, ref Vector256<float> c11,
        ref Vector256<float> c20, ref Vector256<float> c21, ref Vector256<float> c30, ref Vector256<float> c31,
        ref Vector256<float> c40, ref Vector256<float> c41, ref Vector256<float> c50, ref Vector256<float> c51)
    {
        Vector256<float> b0 = Vector256.Load(b), b1 = Vector256.Load(b + 8);
        Vector256<float> av = Vector256.Create(a[0]);
        c00 = Vector256.FusedMultiplyAdd(av, b0, c00); c01 = Vector256.FusedMultiplyAdd(av, b1, c01);
        av = Vector256.Create(a[1]);
        c10 = Vector256.FusedMultiplyAdd(av, b0, c10); c11 = Vector256.FusedMultiplyAdd(av, b1, c11);
        av = Vector256.Create(a[2]);
        c20 = Vector256.FusedMultiplyAdd(av, b0, c20); c21 = Vector256.FusedMultiplyAdd(av, b1, c21);
        av = Vector256.Create(a[3]);
        c30 = Vector256.FusedMultiplyAdd(av, b0, c30); c31 = Vector256.FusedMultiplyAdd(av, b1, c31);
        av = Vector256.Create(a[4]);
        c40 = Vector256.FusedMultiplyAdd(av, b0, c40); c41 = Vector256.FusedMultiplyAdd(av, b1, c41);
        av = Vector256.Create(a[5]);
        c50 = Vector256.FusedMultiplyAdd(av, b0, c50); c51 = Vector256.FusedMultiplyAdd(av, b1, c51);
    }

    /// <summary>
    /// AVX2's row edges: the same chains for the first 4 rows of a packed 6-row sliver (A's stride per p stays 6),
    /// C continued from its current values. A 6×16 tile for a block's last 2, 3 or 4 rows did the work of 6: a batch
    /// of 32, 128 or 512 is 2 rows past a multiple of 6, which cost (32×784)·(784×256) 11 % (36 rows' work for 32).
    /// Eight accumulators, as many as two FMA ports with a 4-cycle latency keep busy.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Kernel4x16(int kc, float* a, float* b, float* c, nint ldc)
    {
        Vector256<float> c00 = Vector256.Load(c), c01 = Vector256.Load(c + 8);
        Vector256<float> c10 = Vector256.Load(c + ldc), c11 = Vector256.Load(c + ldc + 8);
        Vector256<float> c20 = Vector256.Load(c + 2 * ldc), c21 = Vector256.Load(c + 2 * ldc + 8);
        Vector256<float> c30 = Vector256.Load(c + 3 * ldc), c31 = Vector256.Load(c + 3 * ldc + 8);
        for (int p = 0; p < kc; p++)
        {
            Vector256<float> b0 = Vector256.Load(b), b1 = Vector256.Load(b + 8);
            Vector256<float> av = Vector256.Create(a[0]);
            c00 = Vector256.FusedMultiplyAdd(av, b0, c00); c01 = Vector256.FusedMultiplyAdd(av, b1, c01);
            av = Vector256.Create(a[1]);
            c10 = Vector256.FusedMultiplyAdd(av, b0, c10); c11 = Vector256.FusedMultiplyAdd(av, b1, c11);
            av = Vector256.Create(a[2]);
            c20 = Vector256.FusedMultiplyAdd(av, b0, c20); c21 = Vector256.FusedMultiplyAdd(av, b1, c21);
            av = Vector256.Create(a[3]);
            c30 = Vector256.FusedMultiplyAdd(av, b0, c30); c31 = Vector256.FusedMultiplyAdd(av, b1, c31);
            a += GemmBlocking.Vector256.MR;
            b += 16;
        }
        c00.Store(c); c01.Store(c + 8);
        c10.Store(c + ldc); c11.Store(c + ldc + 8);
        c20.Store(c + 2 * ldc); c21.Store(c + 2 * ldc + 8);
        c30.Store(c + 3 * ldc); c31.Store(c + 3 * ldc + 8);
    }

    /// <summary>
    /// The first 2 rows of a packed 6-row sliver against two 16-column B slivers side by side (C's columns 0–15 from
    /// <paramref name="left"/>, 16–31 from <paramref name="right"/>): 2×16 alone would have 4 chains, half what the FMA
    /// ports need. C continued from its current values.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Kernel2x32(int kc, float* a, float* left, float* right, float* c, nint ldc)
    {
        Vector256<float> c00 = Vector256.Load(c), c01 = Vector256.Load(c + 8), c02 = Vector256.Load(c + 16), c03 = Vector256.Load(c + 24);
        Vector256<float> c10 = Vector256.Load(c + ldc), c11 = Vector256.Load(c + ldc + 8), c12 = Vector256.Load(c + ldc + 16), c13 = Vector256.Load(c + ldc + 24);
        for (int p = 0; p < kc; p++)
        {
            Vector256<float> b0 = Vector256.Load(left), b1 = Vector256.Load(left + 8), b2 = Vector256.Load(right), b3 = Vector256.Load(right + 8);
            Vector256<float> av = Vector256.Create(a[0]);
            c00 = Vector256.FusedMultiplyAdd(av, b0, c00); c01 = Vector256.FusedMultiplyAdd(av, b1, c01);
            c02 = Vector256.FusedMultiplyAdd(av, b2, c02); c03 = Vector256.FusedMultiplyAdd(av, b3, c03);
            av = Vector256.Create(a[1]);
            c10 = Vector256.FusedMultiplyAdd(av, b0, c10); c11 = Vector256.FusedMultiplyAdd(av, b1, c11);
            c12 = Vector256.FusedMultiplyAdd(av, b2, c12); c13 = Vector256.FusedMultiplyAdd(av, b3, c13);
            a += GemmBlocking.Vector256.MR;
            left += 16;
            right += 16;
        }
        c00.Store(c); c01.Store(c + 8); c02.Store(c + 16); c03.Store(c + 24);
        c10.Store(c + ldc); c11.Store(c + ldc + 8); c12.Store(c + ldc + 16); c13.Store(c + ldc + 24);
    }

    /// <summary>128-bit lanes with hardware FMA (ARM64 NEON: 24 accumulators + 4 B vectors + 1 broadcast of its 32 registers); the 6×16 panel of the other tiers.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel6x16Neon(int kc, float* a, float* b, float* c, nint ldc, TileMode mode, float** addends, int addendCount)
    {
        Vector128<float> c00, c01, c02, c03, c10, c11, c12, c13, c20, c21, c22, c23, c30, c31, c32, c33, c40, c41, c42, c43, c50, c51, c52, c53;
        if (mode == TileMode.Continue)
        {
            c00 = Vector128.Load(c + 0 * ldc + 0); c01 = Vector128.Load(c + 0 * ldc + 4); c02 = Vector128.Load(c + 0 * ldc + 8); c03 = Vector128.Load(c + 0 * ldc + 12);
            c10 = Vector128.Load(c + 1 * ldc + 0); c11 = Vector128.Load(c + 1 * ldc + 4); c12 = Vector128.Load(c + 1 * ldc + 8); c13 = Vector128.Load(c + 1 * ldc + 12);
            c20 = Vector128.Load(c + 2 * ldc + 0); c21 = Vector128.Load(c + 2 * ldc + 4); c22 = Vector128.Load(c + 2 * ldc + 8); c23 = Vector128.Load(c + 2 * ldc + 12);
            c30 = Vector128.Load(c + 3 * ldc + 0); c31 = Vector128.Load(c + 3 * ldc + 4); c32 = Vector128.Load(c + 3 * ldc + 8); c33 = Vector128.Load(c + 3 * ldc + 12);
            c40 = Vector128.Load(c + 4 * ldc + 0); c41 = Vector128.Load(c + 4 * ldc + 4); c42 = Vector128.Load(c + 4 * ldc + 8); c43 = Vector128.Load(c + 4 * ldc + 12);
            c50 = Vector128.Load(c + 5 * ldc + 0); c51 = Vector128.Load(c + 5 * ldc + 4); c52 = Vector128.Load(c + 5 * ldc + 8); c53 = Vector128.Load(c + 5 * ldc + 12);
        }
        else
        {
            c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = c20 = c21 = c22 = c23 = c30 = c31 = c32 = c33 = c40 = c41 = c42 = c43 = c50 = c51 = c52 = c53 = Vector128<float>.Zero;
        }
        for (int p = 0; p < kc; p++)
        {
            Vector128<float> b0 = Vector128.Load(b + 0), b1 = Vector128.Load(b + 4), b2 = Vector128.Load(b + 8), b3 = Vector128.Load(b + 12);
            Vector128<float> av;
            av = Vector128.Create(a[0]);
            c00 = Vector128.FusedMultiplyAdd(av, b0, c00); c01 = Vector128.FusedMultiplyAdd(av, b1, c01); c02 = Vector128.FusedMultiplyAdd(av, b2, c02); c03 = Vector128.FusedMultiplyAdd(av, b3, c03);
            av = Vector128.Create(a[1]);
            c10 = Vector128.FusedMultiplyAdd(av, b0, c10); c11 = Vector128.FusedMultiplyAdd(av, b1, c11); c12 = Vector128.FusedMultiplyAdd(av, b2, c12); c13 = Vector128.FusedMultiplyAdd(av, b3, c13);
            av = Vector128.Create(a[2]);
            c20 = Vector128.FusedMultiplyAdd(av, b0, c20); c21 = Vector128.FusedMultiplyAdd(av, b1, c21); c22 = Vector128.FusedMultiplyAdd(av, b2, c22); c23 = Vector128.FusedMultiplyAdd(av, b3, c23);
            av = Vector128.Create(a[3]);
            c30 = Vector128.FusedMultiplyAdd(av, b0, c30); c31 = Vector128.FusedMultiplyAdd(av, b1, c31); c32 = Vector128.FusedMultiplyAdd(av, b2, c32); c33 = Vector128.FusedMultiplyAdd(av, b3, c33);
            av = Vector128.Create(a[4]);
            c40 = Vector128.FusedMultiplyAdd(av, b0, c40); c41 = Vector128.FusedMultiplyAdd(av, b1, c41); c42 = Vector128.FusedMultiplyAdd(av, b2, c42); c43 = Vector128.FusedMultiplyAdd(av, b3, c43);
            av = Vector128.Create(a[5]);
            c50 = Vector128.FusedMultiplyAdd(av, b0, c50); c51 = Vector128.FusedMultiplyAdd(av, b1, c51); c52 = Vector128.FusedMultiplyAdd(av, b2, c52); c53 = Vector128.FusedMultiplyAdd(av, b3, c53);
            a += 6;
            b += 16;
        }
        for (int t = 0; t < addendCount; t++)
        {
            float* s = addends[t];
            c00 += Vector128.Load(s + 0); c01 += Vector128.Load(s + 4); c02 += Vector128.Load(s + 8); c03 += Vector128.Load(s + 12);
            c10 += Vector128.Load(s + 16); c11 += Vector128.Load(s + 20); c12 += Vector128.Load(s + 24); c13 += Vector128.Load(s + 28);
            c20 += Vector128.Load(s + 32); c21 += Vector128.Load(s + 36); c22 += Vector128.Load(s + 40); c23 += Vector128.Load(s + 44);
            c30 += Vector128.Load(s + 48); c31 += Vector128.Load(s + 52); c32 += Vector128.Load(s + 56); c33 += Vector128.Load(s + 60);
            c40 += Vector128.Load(s + 64); c41 += Vector128.Load(s + 68); c42 += Vector128.Load(s + 72); c43 += Vector128.Load(s + 76);
            c50 += Vector128.Load(s + 80); c51 += Vector128.Load(s + 84); c52 += Vector128.Load(s + 88); c53 += Vector128.Load(s + 92);
        }
        c00.Store(c + 0 * ldc + 0); c01.Store(c + 0 * ldc + 4); c02.Store(c + 0 * ldc + 8); c03.Store(c + 0 * ldc + 12);
        c10.Store(c + 1 * ldc + 0); c11.Store(c + 1 * ldc + 4); c12.Store(c + 1 * ldc + 8); c13.Store(c + 1 * ldc + 12);
        c20.Store(c + 2 * ldc + 0); c21.Store(c + 2 * ldc + 4); c22.Store(c + 2 * ldc + 8); c23.Store(c + 2 * ldc + 12);
        c30.Store(c + 3 * ldc + 0); c31.Store(c + 3 * ldc + 4); c32.Store(c + 3 * ldc + 8); c33.Store(c + 3 * ldc + 12);
        c40.Store(c + 4 * ldc + 0); c41.Store(c + 4 * ldc + 4); c42.Store(c + 4 * ldc + 8); c43.Store(c + 4 * ldc + 12);
        c50.Store(c + 5 * ldc + 0); c51.Store(c + 5 * ldc + 4); c52.Store(c + 5 * ldc + 8); c53.Store(c + 5 * ldc + 12);
    }

    private static void KernelScalar6x16(int kc, float* a, float* b, float* c, nint ldc, TileMode mode, float** addends, int addendCount)
    {
        const int MR = 6, NR = 16;
        float* acc = stackalloc float[MR * NR];
        for (int r = 0; r < MR; r++)
        {
            for (int j = 0; j < NR; j++)
            {
                acc[r * NR + j] = mode == TileMode.Continue ? c[r * ldc + j] : 0f;
            }
        }
        for (int p = 0; p < kc; p++)
        {
            for (int r = 0; r < MR; r++)
            {
                float ar = a[r];
                for (int j = 0; j < NR; j++)
                {
                    acc[r * NR + j] = MathF.FusedMultiplyAdd(ar, b[j], acc[r * NR + j]);
                }
            }
            a += MR;
            b += NR;
        }
        for (int t = 0; t < addendCount; t++)
        {
            for (int i = 0; i < MR * NR; i++)
            {
                acc[i] += addends[t][i];
            }
        }
        for (int r = 0; r < MR; r++)
        {
            for (int j = 0; j < NR; j++)
            {
                c[r * ldc + j] = acc[r * NR + j];
            }
        }
    }
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel8x32(int kc, float* a, float* b, float* c, nint ldc, TileMode mode, float** addends, int addendCount)
    {
        Vector512<float> c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61, c70, c71;
        if (mode == TileMode.Continue)
        {
            c00 = Vector512.Load(c + 0 * ldc); c01 = Vector512.Load(c + 0 * ldc + 16);
            c10 = Vector512.Load(c + 1 * ldc); c11 = Vector512.Load(c + 1 * ldc + 16);
            c20 = Vector512.Load(c + 2 * ldc); c21 = Vector512.Load(c + 2 * ldc + 16);
            c30 = Vector512.Load(c + 3 * ldc); c31 = Vector512.Load(c + 3 * ldc + 16);
            c40 = Vector512.Load(c + 4 * ldc); c41 = Vector512.Load(c + 4 * ldc + 16);
            c50 = Vector512.Load(c + 5 * ldc); c51 = Vector512.Load(c + 5 * ldc + 16);
            c60 = Vector512.Load(c + 6 * ldc); c61 = Vector512.Load(c + 6 * ldc + 16);
            c70 = Vector512.Load(c + 7 * ldc); c71 = Vector512.Load(c + 7 * ldc + 16);
        }
        else
        {
            c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = c60 = c61 = c70 = c71 = Vector512<float>.Zero;
        }
        for (int p = 0; p < kc; p++)
        {
            Vector512<float> b0 = Vector512.Load(b), b1 = Vector512.Load(b + 16);
            Vector512<float> av;
            av = Vector512.Create(a[0]);
            c00 = Vector512.FusedMultiplyAdd(av, b0, c00); c01 = Vector512.FusedMultiplyAdd(av, b1, c01);
            av = Vector512.Create(a[1]);
            c10 = Vector512.FusedMultiplyAdd(av, b0, c10); c11 = Vector512.FusedMultiplyAdd(av, b1, c11);
            av = Vector512.Create(a[2]);
            c20 = Vector512.FusedMultiplyAdd(av, b0, c20); c21 = Vector512.FusedMultiplyAdd(av, b1, c21);
            av = Vector512.Create(a[3]);
            c30 = Vector512.FusedMultiplyAdd(av, b0, c30); c31 = Vector512.FusedMultiplyAdd(av, b1, c31);
            av = Vector512.Create(a[4]);
            c40 = Vector512.FusedMultiplyAdd(av, b0, c40); c41 = Vector512.FusedMultiplyAdd(av, b1, c41);
            av = Vector512.Create(a[5]);
            c50 = Vector512.FusedMultiplyAdd(av, b0, c50); c51 = Vector512.FusedMultiplyAdd(av, b1, c51);
            av = Vector512.Create(a[6]);
            c60 = Vector512.FusedMultiplyAdd(av, b0, c60); c61 = Vector512.FusedMultiplyAdd(av, b1, c61);
            av = Vector512.Create(a[7]);
            c70 = Vector512.FusedMultiplyAdd(av, b0, c70); c71 = Vector512.FusedMultiplyAdd(av, b1, c71);
            a += 8;
            b += 32;
        }
        for (int t = 0; t < addendCount; t++)
        {
            float* s = addends[t];
            c00 += Vector512.Load(s + 0 * 32); c01 += Vector512.Load(s + 0 * 32 + 16);
            c10 += Vector512.Load(s + 1 * 32); c11 += Vector512.Load(s + 1 * 32 + 16);
            c20 += Vector512.Load(s + 2 * 32); c21 += Vector512.Load(s + 2 * 32 + 16);
            c30 += Vector512.Load(s + 3 * 32); c31 += Vector512.Load(s + 3 * 32 + 16);
            c40 += Vector512.Load(s + 4 * 32); c41 += Vector512.Load(s + 4 * 32 + 16);
            c50 += Vector512.Load(s + 5 * 32); c51 += Vector512.Load(s + 5 * 32 + 16);
            c60 += Vector512.Load(s + 6 * 32); c61 += Vector512.Load(s + 6 * 32 + 16);
            c70 += Vector512.Load(s + 7 * 32); c71 += Vector512.Load(s + 7 * 32 + 16);
        }
        c00.Store(c + 0 * ldc); c01.Store(c + 0 * ldc + 16);
        c10.Store(c + 1 * ldc); c11.Store(c + 1 * ldc + 16);
        c20.Store(c + 2 * ldc); c21.Store(c + 2 * ldc + 16);
        c30.Store(c + 3 * ldc); c31.Store(c + 3 * ldc + 16);
        c40.Store(c + 4 * ldc); c41.Store(c + 4 * ldc + 16);
        c50.Store(c + 5 * ldc); c51.Store(c + 5 * ldc + 16);
        c60.Store(c + 6 * ldc); c61.Store(c + 6 * ldc + 16);
        c70.Store(c + 7 * ldc); c71.Store(c + 7 * ldc + 16);
    }

    }
