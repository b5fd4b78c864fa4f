using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Kernels;

/// <summary>
/// Single-precision matrix products in the BLIS shape (Goto &amp; van de Geijn 2008; van Zee &amp; van de
/// Geijn 2015): cache blocks around a register-tiled micro-kernel over packed panels. Edges are padded
/// with zeros while packing so the micro-kernel only ever sees full MR×NR tiles, except AVX2's last 1–4 rows of a
/// block, which run in smaller tiles of their own (<see cref="MultiplyEdgeRows"/>).
///
/// Numerical contract (what <see cref="NaiveGemm"/> defines): every output element is ONE chain of
/// fused multiply-adds over k in increasing order. Blocking, tiling and SIMD width therefore never change
/// a result, only its speed; and the product of a batch is row-for-row identical to the products of its
/// parts, which is what makes data-parallel training reproducible.
/// The products never split k across threads; callers parallelise over independent outputs.
/// </summary>
public static unsafe class Gemm
{
    /// <summary>
    /// A left operand A packed once for several products A·B_j with the same A: the forward pass's blocks of units,
    /// run as their rows of W_l arrive, would otherwise each pack the whole batch's inputs again (4 × 6.4 MB for
    /// layer 1 of 784-256-128-10 at batch 2,048). Packed by the first product given it after <see cref="Reset"/>, for
    /// that product's tier and shape; a product of another tier or shape, or one the narrow path takes, packs A for
    /// itself as usual. Packing changes no value, so the bits are those of products that pack A each time.
    /// </summary>
    public sealed class PackedLeft
    {
        private readonly PackBuffer _buffer = new();
        private int _m, _k;
        private SimdTier _tier;

        internal bool Packed { get; private set; }

        /// <summary>A is another matrix (or has changed): the next product packs it again.</summary>
        public void Reset() => Packed = false;

        internal bool Fits(int m, int k, SimdTier tier) => Packed && m == _m && k == _k && tier == _tier;

        internal float* Ensure(int floats) => _buffer.Ensure(floats);

        internal void Keep(int m, int k, SimdTier tier) => (_m, _k, _tier, Packed) = (m, k, tier, true);
    }

    [ThreadStatic] private static PackBuffer? t_packA;
    [ThreadStatic] private static PackBuffer? t_packB;
    [ThreadStatic] private static PackBuffer? t_tiles;

    /// <summary>
    /// C (m×n, row stride ldc) ← C + A·B, where A is m×k and B is k×n: c[i,j] = fma-chain over p of
    /// a[i,p]·b[p,j] starting from the current c[i,j]. Initialise C to zero for a plain product, or to
    /// the bias row for z = x·Wᵀ + b.
    /// </summary>
    public static void MultiplyAdd(StridedMatrix<float> a, StridedMatrix<float> b, Span<float> c, int ldc) =>
        MultiplyAdd(a, b, c, ldc, SimdTiers.Best);

    /// <param name="packedA">if given, A as packed by an earlier product with it (since its <see cref="PackedLeft.Reset"/>),
    /// or packed into it by this one: the caller's word that A is the same matrix each time.</param>
    public static void MultiplyAdd(StridedMatrix<float> a, StridedMatrix<float> b, Span<float> c, int ldc, SimdTier tier, PackedLeft? packedA = null)
    {
        int m = a.Rows, k = a.Cols, n = b.Cols;
        CheckShapes(a, b, c, ldc);
        if (m == 0 || n == 0 || k == 0)
        {
            return;
        }
        if (NarrowGemm.Handles(tier, n, k))
        {
            NarrowGemm.MultiplyAdd(a, b, c, ldc, tier);
            return;
        }
        tier = NarrowerTierFor(n, tier);
        GemmBlocking blk = GemmBlocking.For(tier);
        int mr = blk.MR, nr = blk.NR;
        int slab = blk.SlabDepth(k);
        float* packA = (t_packA ??= new()).Ensure(RoundUp(Math.Min(blk.MC, m), mr) * slab);
        float* packB = (t_packB ??= new()).Ensure(RoundUp(Math.Min(blk.NC, n), nr) * slab);
        float* tile = (t_tiles ??= new()).Ensure(mr * nr);
        // All of A packed once (slab at p0 from p0·mPadded, its MC blocks at ic·kc within), if the caller keeps it.
        bool keepA = packedA is not null && (!packedA.Packed || packedA.Fits(m, k, tier));
        bool packKept = keepA && !packedA!.Packed;
        int mPadded = RoundUp(m, mr);
        float* keptA = keepA ? packedA!.Ensure(mPadded * k) : null;

        fixed (float* pa = a.Data, pb = b.Data, pc = c)
        {
            // Loop 5 (jc): NC-wide column blocks of B and C.
            for (int jc = 0; jc < n; jc += blk.NC)
            {
                int nc = Math.Min(blk.NC, n - jc);
                // Loop 4 (pc): slabs of the shared dimension, at most KC deep; C carries the chain between slabs.
                for (int pcIdx = 0; pcIdx < k; pcIdx += slab)
                {
                    int kc = Math.Min(slab, k - pcIdx);
                    PackB(pb, b.RowStride, b.ColStride, pcIdx, kc, jc, nc, nr, packB);
                    // Loop 3 (ic): MC-tall row blocks of A and C.
                    for (int ic = 0; ic < m; ic += blk.MC)
                    {
                        int mc = Math.Min(blk.MC, m - ic);
                        float* aBlock = packA;
                        if (keepA)
                        {
                            aBlock = keptA + (long)pcIdx * mPadded + (long)ic * kc;
                            if (packKept && jc == 0)
                            {
                                PackA(pa, a.RowStride, a.ColStride, ic, mc, pcIdx, kc, mr, aBlock);
                            }
                        }
                        else
                        {
                            PackA(pa, a.RowStride, a.ColStride, ic, mc, pcIdx, kc, mr, packA);
                        }
                        // Loops 2 and 1 (jr, ir): micro-tiles; on AVX2 a block's last 1–4 rows after them, in tiles of their own
                        // (5 rows stay in the padded 6×16 tile: 5/6 of its work is useful). Run sliver by sliver instead,
                        // while each B sliver is in L1, they measured 0.98–1.00 × (`bash bench/gemm-ab.sh 1ff0e9d 100 32`).
                        int edgeRows = tier == SimdTier.Vector256 && mc % mr < mr - 1 ? mc % mr : 0;
                        int bodyRows = mc - edgeRows;
                        for (int jr = 0; jr < nc; jr += nr)
                        {
                            int cols = Math.Min(nr, nc - jr);
                            for (int ir = 0; ir < bodyRows; ir += mr)
                            {
                                int rows = Math.Min(mr, mc - ir);
                                float* cTile = pc + (long)(ic + ir) * ldc + jc + jr;
                                float* aSliver = aBlock + (long)ir * kc;
                                float* bSliver = packB + (long)jr * kc;
                                if (rows == mr && cols == nr)
                                {
                                    MicroKernels.Run(tier, kc, aSliver, bSliver, cTile, ldc, TileMode.Continue);
                                }
                                else
                                {
                                    CopyTile(cTile, ldc, tile, nr, rows, cols, zeroPad: true, mr, nr);
                                    MicroKernels.Run(tier, kc, aSliver, bSliver, tile, nr, TileMode.Continue);
                                    CopyTile(tile, nr, cTile, ldc, rows, cols, zeroPad: false, mr, nr);
                                }
                            }
                        }
                        if (edgeRows > 0)
                        {
                            MultiplyEdgeRows(edgeRows, kc, aBlock + (long)bodyRows * kc, packB, nc, pc + (long)(ic + bodyRows) * ldc + jc, ldc, tile);
                        }
                    }
                }
            }
        }
        if (packKept)
        {
            packedA!.Keep(m, k, tier);
        }
    }

    /// <summary>
    /// AVX2: the last <paramref name="rows"/> (1–4) rows of a block, whose packed sliver is padded to 6 rows, against every
    /// B sliver of the panel: 3–4 rows in 4×16 tiles, 1–2 rows in 2×32 tiles (two B slivers at a time), so a batch 2 rows
    /// past a multiple of 6 does the work of its rows, not of 6 (<see cref="MicroKernels.Kernel4x16"/>). Tiles that
    /// stick out of C go through <paramref name="tile"/> (4×16 or 2×32 floats), zero-padded. The same chains: the same bits.
    /// </summary>
    private static void MultiplyEdgeRows(int rows, int kc, float* aSliver, float* packB, int nc, float* cRows, int ldc, float* tile)
    {
        const int nr = 16;
        int width = rows > 2 ? nr : 2 * nr, tileRows = rows > 2 ? 4 : 2;
        for (int jr = 0; jr < nc; jr += width)
        {
            int cols = Math.Min(width, nc - jr);
            float* left = packB + (long)jr * kc, cTile = cRows + jr;
            // A lone last sliver is its own right half too; those columns are dropped with the tile.
            float* right = cols > nr ? left + (long)nr * kc : left;
            bool whole = rows == tileRows && cols == width;
            float* c = whole ? cTile : tile;
            nint ldt = whole ? ldc : width;
            if (!whole)
            {
                CopyTile(cTile, ldc, tile, width, rows, cols, zeroPad: true, tileRows, width);
            }
            if (tileRows == 4)
            {
                MicroKernels.Kernel4x16(kc, aSliver, left, c, ldt);
            }
            else
            {
                MicroKernels.Kernel2x32(kc, aSliver, left, right, c, ldt);
            }
            if (!whole)
            {
                CopyTile(tile, width, cTile, ldc, rows, cols, zeroPad: false, tileRows, width);
            }
        }
    }

    /// <summary>
    /// C (m×n) ← the chunk-tree sum over chunks c of A[:, K_c]·B[K_c, :], where chunk c covers the
    /// shared-dimension range [chunkStarts[c], chunkStarts[c+1]). Each chunk's product is an FMA chain
    /// from +0; chunk products are then added pairwise along the canonical tree of
    /// <see cref="ChunkTree"/> (left subtree + right subtree, a missing right subtree passing the left
    /// one through). This is ∂J/∂W of a batch as the sum of fixed chunks' ∂J/∂W in one fixed order,
    /// computed without materialising one gradient matrix per chunk: the partial sums live in per-tile
    /// scratch while the tile is in registers/L1.
    /// </summary>
    public static void ChunkTreeProduct(StridedMatrix<float> a, StridedMatrix<float> b, ReadOnlySpan<int> chunkStarts, Span<float> c, int ldc) =>
        ChunkTreeProduct(a, b, chunkStarts, c, ldc, SimdTiers.Best);

    public static void ChunkTreeProduct(StridedMatrix<float> a, StridedMatrix<float> b, ReadOnlySpan<int> chunkStarts, Span<float> c, int ldc, SimdTier tier) =>
        ChunkTreeProduct(a, b, chunkStarts, c, ldc, default, tier);

    /// <summary>
    /// The same product in blocks of rows of C, in the order <see cref="RowBlocks.Order"/> gives, telling
    /// <see cref="RowBlocks.Done"/> each block as soon as it is complete (each element is the same chain whatever
    /// the blocks: the same bits). B is packed once for all blocks when it fits <see cref="PackOnceFloats"/>, so
    /// blocks cost no extra packing of B.
    /// </summary>
    public static void ChunkTreeProduct(StridedMatrix<float> a, StridedMatrix<float> b, ReadOnlySpan<int> chunkStarts, Span<float> c, int ldc, RowBlocks blocks, SimdTier tier)
    {
        int m = a.Rows, k = a.Cols, n = b.Cols;
        CheckShapes(a, b, c, ldc);
        CheckChunkStarts(chunkStarts, k);
        int blockRows = blocks.Done is null ? Math.Max(m, 1) : blocks.BlockRows;
        ReadOnlySpan<int> order = blocks.Done is null ? [0] : blocks.Order;
        if (blocks.Done is not null)
        {
            CheckRowBlocks(m, blockRows, order);
        }
        int chunks = chunkStarts.Length - 1;
        if (m == 0 || n == 0 || chunks == 0 || k == 0)
        {
            for (int i = 0; i < m && n > 0; i++)
            {
                c.Slice(i * ldc, n).Clear();
            }
            foreach (int block in blocks.Done is null ? [] : order)
            {
                blocks.Done!.Done(block);
            }
            return;
        }
        tier = NarrowerTierFor(n, tier);
        GemmBlocking blk = GemmBlocking.For(tier);
        int mr = blk.MR, nr = blk.NR, tileSize = mr * nr;
        // The whole k extent must be packed at once (chunks are not split), so block sizes shrink as k grows.
        int perK = Math.Max(1, GemmBlocking.ChunkTreeBlockBytes / (k * sizeof(float)));
        int mcBlock = Math.Clamp(perK / mr * mr, mr, blk.MC);
        int ncBlock = Math.Clamp(perK / nr * nr, nr, blk.NC);
        // With B cut into several column blocks (k large: 4 at batch 512 for layer 0's 784 columns), each block packed A
        // again, the same δᵀ through the same transposes every time: a block of rows' A is packed once, at the first
        // column block, and read back for the others when it fits KeepAFloats.
        int keptRows = RoundUp(Math.Min(blockRows, m), mr);
        bool keepA = ncBlock < n && (long)keptRows * k <= KeepAFloats;
        float* packA = (t_packA ??= new()).Ensure((keepA ? keptRows : RoundUp(Math.Min(mcBlock, m), mr)) * k);
        // Several blocks would each pack all of B again: pack it whole once if it fits (panel jc then starts at jc·k).
        bool packOnce = order.Length > 1 && (long)RoundUp(n, nr) * k <= PackOnceFloats;
        float* packB = (t_packB ??= new()).Ensure(packOnce ? RoundUp(n, nr) * k : RoundUp(Math.Min(ncBlock, n), nr) * k);
        // Shallow chunks: sibling leaves two at a time, the left one never stored and read back (MicroKernels.PairedLeaves8x32;
        // with 4 or 8 chunks all equally deep, MicroKernels.LeavesInRegisters8x32, which stores no leaf at all).
        bool pairLeaves = tier == SimdTier.Vector512 && k <= PairedLeafDepth * chunks;
        bool equalDepths = MicroKernels.EqualDepths(chunkStarts);
        int maxDepth = ChunkTree.MaxStackDepth(chunks);
        float* stack = (t_tiles ??= new()).Ensure(tileSize * maxDepth);
        // The tree walk is the same for every tile, so it is planned once: each chunk's leaf slot and the slots it
        // then adds in registers (every merge is one addend of one leaf: chunks − 1 in all).
        Span<int> plan = chunks <= 512 ? stackalloc int[3 * chunks + 1] : new int[3 * chunks + 1];
        PlanTreeWalk(chunks, maxDepth, plan[..chunks], plan.Slice(chunks, chunks + 1), plan[(2 * chunks + 1)..]);
        // The addends' tiles as addresses, once per product: each leaf then passes its run of them as it is.
        Span<nint> addendTiles = chunks <= 512 ? stackalloc nint[chunks] : new nint[chunks];

        fixed (float* pa = a.Data, pb = b.Data, pc = c)
        fixed (int* starts = chunkStarts, leafSlot = plan)
        fixed (nint* addendAddresses = addendTiles)
        {
            int* firstAddend = leafSlot + chunks, addendSlot = firstAddend + chunks + 1;
            float** addends = (float**)addendAddresses;
            for (int t = 0; t < firstAddend[chunks]; t++)
            {
                addends[t] = stack + addendSlot[t] * tileSize;
            }
            if (packOnce)
            {
                PackB(pb, b.RowStride, b.ColStride, 0, k, 0, n, nr, packB);
            }
            foreach (int block in order)
            {
                int rowStart = block * blockRows, rowEnd = Math.Min(rowStart + blockRows, m);
                for (int jc = 0; jc < n; jc += ncBlock)
                {
                    int nc = Math.Min(ncBlock, n - jc);
                    if (!packOnce)
                    {
                        PackB(pb, b.RowStride, b.ColStride, 0, k, jc, nc, nr, packB);
                    }
                    float* panel = packOnce ? packB + (long)jc * k : packB;
                    for (int ic = rowStart; ic < rowEnd; ic += mcBlock)
                    {
                        int mc = Math.Min(mcBlock, rowEnd - ic);
                        // Kept: this MC block's slivers at (ic − rowStart)·k, mcBlock being a whole number of slivers.
                        float* aBlock = keepA ? packA + (long)(ic - rowStart) * k : packA;
                        Debug.Assert(!keepA || ic - rowStart + RoundUp(mc, mr) <= keptRows, "kept A's MC block must lie inside its buffer");
                        if (!keepA || jc == 0)
                        {
                            PackA(pa, a.RowStride, a.ColStride, ic, mc, 0, k, mr, aBlock);
                        }
                        // AVX-512: a block's last 1–2 rows against pairs of full B slivers in 2×64 leaves (MicroKernels.RunEdgeLeaves),
                        // instead of 8-row tiles that are 75–87.5 % padding (the output layer's weight gradient has 10 rows).
                        int edgeRows = tier == SimdTier.Vector512 && mc % mr is 1 or 2 ? mc % mr : 0;
                        int pairedCols = edgeRows > 0 ? nc / (2 * nr) * (2 * nr) : 0;
                        for (int jr = 0; jr < pairedCols; jr += 2 * nr)
                        {
                            float* aSliver = aBlock + (long)(mc - edgeRows) * k;
                            float* cTile = pc + (long)(ic + mc - edgeRows) * ldc + jc + jr;
                            MicroKernels.RunEdgeLeaves(chunks, starts, leafSlot, firstAddend, aSliver, panel + (long)jr * k, panel + (long)(jr + nr) * k,
                                stack, addends, cTile, ldc, edgeRows);
                        }
                        for (int jr = 0; jr < nc; jr += nr)
                        {
                            int cols = Math.Min(nr, nc - jr);
                            for (int ir = 0; ir < (jr < pairedCols ? mc - edgeRows : mc); ir += mr)
                            {
                                int rows = Math.Min(mr, mc - ir);
                                float* aSliver = aBlock + (long)ir * k;
                                float* bSliver = panel + (long)jr * k;
                                float* cTile = pc + (long)(ic + ir) * ldc + jc + jr;
                                bool fullTile = rows == mr && cols == nr;
                                if (ir + mr < mc)
                                {
                                    PrefetchTile(cTile + (long)mr * ldc, ldc, Math.Min(mr, mc - ir - mr), cols);
                                }
                                else if (jr + nr < nc)
                                {
                                    PrefetchTile(pc + (long)ic * ldc + jc + jr + nr, ldc, Math.Min(mr, mc), Math.Min(nr, nc - jr - nr));
                                }
                                MicroKernels.RunLeaves(tier, chunks, starts, leafSlot, firstAddend, aSliver, bSliver, stack, addends,
                                    fullTile ? cTile : null, ldc, pairLeaves, equalDepths);
                                if (!fullTile)
                                {
                                    CopyTile(stack, nr, cTile, ldc, rows, cols, zeroPad: false, mr, nr);
                                }
                            }
                        }
                    }
                }
                blocks.Done?.Done(block);
            }
        }
    }

    /// <summary>The blocks must be a permutation of the ⌈m / blockRows⌉ blocks of C's rows: each row computed once.</summary>
    internal static void CheckRowBlocks(int m, int blockRows, ReadOnlySpan<int> order)
    {
        if (blockRows < 1 || order.Length != (m + blockRows - 1) / blockRows)
        {
            throw new ArgumentException($"{order.Length} blocks of {blockRows} rows do not cover the {m} rows of C");
        }
        Span<bool> seen = order.Length <= 1024 ? stackalloc bool[order.Length] : new bool[order.Length];
        foreach (int block in order)
        {
            if ((uint)block >= (uint)order.Length || seen[block])
            {
                throw new ArgumentException($"the order of C's {order.Length} row blocks is not a permutation of them");
            }
            seen[block] = true;
        }
    }

    /// <summary>
    /// The deepest chunks (on average) whose sibling leaves run in pairs on AVX-512. Against single leaves, one process
    /// (`GEMMAB_ROWS=60000 bash bench/gemm-ab.sh 1b13d9a 60 B`, Zen 5): layers 0 and 1's weight gradients 1.01 / 1.14 × at
    /// depth 4 (batch 32 in 8 chunks), 1.02 / 1.04 × at 16, 1.06 / 1.03 × at 32, but 0.99 / 0.98 × at 64, where
    /// reading two B slivers per step costs more than the stores the pairs save.
    /// </summary>
    internal const int PairedLeafDepth = 32;

    /// <summary>The most floats B may take packed whole for a blocked chunk-tree product (16 MiB); beyond, each block packs it again.</summary>
    public const int PackOnceFloats = 4 << 20;

    /// <summary>The most floats a chunk-tree product keeps A packed in across B's column blocks (4 MiB); beyond, each column block packs it again.</summary>
    public const int KeepAFloats = 1 << 20;

    /// <summary>
    /// The canonical tree's binary-counter walk (<see cref="TreeWalk"/>) over a stack of tile slots, as
    /// <see cref="ChunkTreeProduct(StridedMatrix{float}, StridedMatrix{float}, ReadOnlySpan{int}, Span{float}, int, SimdTier)"/>
    /// runs it for each tile: every merge a leaf completes is done in registers before the leaf's tile is stored,
    /// so chunk c's chain is followed by adding the slots addendSlot[firstAddend[c] .. firstAddend[c+1]) in that
    /// order (its left sibling if it is a right leaf, then each left subtree it completes, and after the last chunk
    /// each subtree still open) and stored in slot leafSlot[c] (the last chunk's result is the root). Each addition
    /// is one node of the tree, left + right; the kernel computes right + left, the same bits.
    /// </summary>
    internal static void PlanTreeWalk(int chunks, int maxDepth, Span<int> leafSlot, Span<int> firstAddend, Span<int> addendSlot)
    {
        Span<int> heights = stackalloc int[maxDepth];
        var walk = new TreeWalk(heights);
        int added = 0;
        for (int chunk = 0; chunk < chunks; chunk++)
        {
            firstAddend[chunk] = added;
            int destination;
            if (walk.TopAwaitsRightLeaf)
            {
                destination = walk.Depth - 1;
                addendSlot[added++] = destination;
                walk.AddedIntoTop();
            }
            else
            {
                destination = walk.Push();
            }
            while (walk.TryMerge(out int left, out _))
            {
                destination = left;
                addendSlot[added++] = left;
            }
            while (chunk == chunks - 1 && walk.TryFold(out int left, out _))
            {
                destination = left;
                addendSlot[added++] = left;
            }
            leafSlot[chunk] = destination;
        }
        firstAddend[chunks] = added;
        // Every subtree folded into the bottom slot: the root is in slot 0, where a tile that is not full is copied from.
        Debug.Assert(walk.Depth == 1 && leafSlot[chunks - 1] == 0, "the chunk tree's root must end in slot 0");
    }

    /// <summary>
    /// Asks for the C rows of the next tile while this one is computed. In <see cref="ChunkTreeProduct(StridedMatrix{float}, StridedMatrix{float}, ReadOnlySpan{int}, Span{float}, int, SimdTier)"/>
    /// C is the step's weight gradient (0.94 MB for 784-256-128-10, more than L2), written once a step, so each
    /// tile's stores missed the caches and the store queue filled behind them: `bench/profile.sh` put 6 % of a
    /// two-worker step on the instructions after each tile. With the hint the whole step runs 1.29× faster with
    /// 2 workers and 1.11–1.14× with one thread at batch 128 (README, "Prefetching the gradient's tiles"). A hint only: no
    /// value changes. The plain products' C (a bias-started activation, written just before) is in cache already:
    /// the hint there measured nothing.
    /// </summary>
    private static void PrefetchTile(float* tile, nint ldc, int rows, int cols)
    {
        if (!Sse.IsSupported)
        {
            return;
        }
        for (int r = 0; r < rows; r++)
        {
            float* row = tile + r * ldc;
            Sse.Prefetch0(row);
            Sse.Prefetch0(row + cols - 1);
        }
    }

    /// <summary>
    /// A product only NR/2 columns wide wastes most of a 32-column AVX-512 tile on padding; the 16-column
    /// AVX2 tile does the same FMA chains (so the same bits) with less waste.
    /// </summary>
    private static SimdTier NarrowerTierFor(int n, SimdTier tier) =>
        tier == SimdTier.Vector512 && n <= GemmBlocking.Vector256.NR && System.Runtime.Intrinsics.Vector256.IsHardwareAccelerated
            ? SimdTier.Vector256
            : tier;

    /// <summary>Packs rows [i0, i0+mc) × cols [p0, p0+kc) of A into MR-row slivers, p-major, zero-padded.</summary>
    private static void PackA(float* a, int rs, int cs, int i0, int mc, int p0, int kc, int mr, float* dst)
    {
        for (int ir = 0; ir < mc; ir += mr)
        {
            int rows = Math.Min(mr, mc - ir);
            float* sliver = dst + (long)ir * kc;
            float* src = a + (long)(i0 + ir) * rs + (long)p0 * cs;
            if (rs == 1)
            {
                // A is stored column-major here (e.g. δᵀ): each p reads `rows` consecutive floats; a full 6-row
                // sliver moves them as one 16-byte and one 8-byte copy.
                if (rows == 6 && mr == 6)
                {
                    for (int p = 0; p < kc; p++)
                    {
                        float* s = src + (long)p * cs;
                        float* d = sliver + (long)p * 6;
                        Vector128.Store(Vector128.Load(s), d);
                        Unsafe.WriteUnaligned(d + 4, Unsafe.ReadUnaligned<long>(s + 4));
                    }
                    continue;
                }
                // A full 8-row sliver (AVX-512's MR): one 32-byte copy per p.
                if (rows == 8 && mr == 8)
                {
                    for (int p = 0; p < kc; p++)
                    {
                        Vector256.Store(Vector256.Load(src + (long)p * cs), sliver + (long)p * 8);
                    }
                    continue;
                }
                for (int p = 0; p < kc; p++)
                {
                    float* s = src + (long)p * cs;
                    float* d = sliver + (long)p * mr;
                    int r = 0;
                    for (; r < rows; r++) d[r] = s[r];
                    for (; r < mr; r++) d[r] = 0f;
                }
            }
            else
            {
                // Row-major A: a full 6- or 8-row sliver is transposed 8 values of p at a time in registers (6 rows
                // as the first 6 of an 8×8 block); the ragged rest walks each row, scattering into the sliver.
                int fullP = 0;
                if (cs == 1 && rows == 8 && mr == 8 && Avx2.IsSupported)
                {
                    fullP = kc / 8 * 8;
                    for (int p = 0; p < fullP; p += 8)
                    {
                        Transpose8x8(src + p, rs, sliver + (long)p * 8, 8);
                    }
                }
                else if (cs == 1 && rows == 6 && mr == 6 && Avx2.IsSupported)
                {
                    fullP = kc / 8 * 8;
                    for (int p = 0; p < fullP; p += 8)
                    {
                        PackSixRowsOfEight(src + p, rs, sliver + (long)p * 6);
                    }
                }
                for (int r = 0; r < rows; r++)
                {
                    float* s = src + (long)r * rs;
                    float* d = sliver + r;
                    for (int p = fullP; p < kc; p++) d[(long)p * mr] = s[(long)p * cs];
                }
                for (int r = rows; r < mr; r++)
                {
                    for (int p = 0; p < kc; p++) sliver[(long)p * mr + r] = 0f;
                }
            }
        }
    }

    /// <summary>Packs rows [p0, p0+kc) × cols [j0, j0+nc) of B into NR-column slivers, p-major, zero-padded.</summary>
    private static void PackB(float* b, int rs, int cs, int p0, int kc, int j0, int nc, int nr, float* dst)
    {
        if (cs == 1)
        {
            PackRowMajorB(b + (long)p0 * rs + j0, rs, kc, nc, nr, dst);
            return;
        }
        for (int jr = 0; jr < nc; jr += nr)
        {
            int cols = Math.Min(nr, nc - jr);
            float* sliver = dst + (long)jr * kc;
            float* src = b + (long)p0 * rs + (long)(j0 + jr) * cs;
            // B = Wᵀ with W row-major: each column of B is a contiguous row of W. Full 8×8 blocks (16×8 with
            // AVX-512) are transposed in registers; the ragged rest element by element.
            int fullP = 0;
            if (rs == 1 && Avx2.IsSupported)
            {
                fullP = kc / 8 * 8;
                int fullJ = cols / 8 * 8;
                // With 16-lane registers, 16 rows of W at a time: one 64-byte store per row of B instead of two
                // 32-byte ones, and fewer shuffles (the step 1.04 × at batch 32, README "Wᵀ packed 16 rows at a
                // time"). Only where .NET itself runs 512-bit vectors: elsewhere it judged them slower.
                int wideJ = Avx512F.IsSupported && Vector512.IsHardwareAccelerated ? cols / 16 * 16 : 0;
                for (int p = 0; p < fullP; p += 8)
                {
                    for (int j = 0; j < wideJ; j += 16)
                    {
                        Transpose16x8(src + (long)j * cs + p, cs, sliver + (long)p * nr + j, nr);
                    }
                    for (int j = wideJ; j < fullJ; j += 8)
                    {
                        Transpose8x8(src + (long)j * cs + p, cs, sliver + (long)p * nr + j, nr);
                    }
                    for (int j = fullJ; j < cols; j++)
                    {
                        float* s = src + (long)j * cs + p;
                        for (int q = 0; q < 8; q++) sliver[(long)(p + q) * nr + j] = s[q];
                    }
                    for (int j = cols; j < nr; j++)
                    {
                        for (int q = 0; q < 8; q++) sliver[(long)(p + q) * nr + j] = 0f;
                    }
                }
            }
            for (int j = 0; j < cols; j++)
            {
                float* s = src + (long)j * cs;
                float* d = sliver + j;
                for (int p = fullP; p < kc; p++) d[(long)p * nr] = s[(long)p * rs];
            }
            for (int j = cols; j < nr; j++)
            {
                for (int p = fullP; p < kc; p++) sliver[(long)p * nr + j] = 0f;
            }
        }
    }

    /// <summary>
    /// <see cref="PackB"/> for a row-major B (kc rows of nc floats, rs apart): row by row, each row cut into its
    /// NR-float pieces of the slivers. Sliver by sliver (as for Bᵀ), every 64-byte piece came from a new row, a stride
    /// of rs floats that crosses a page every row or so where the hardware's stride prefetch stops: a B larger than
    /// L2 (the batch's activations in ∂J/∂W = δᵀ·a, 0.8 MB at batch 256) was read at the cache's latency, line by
    /// line. Read in order, each row streams: packing fell from 5.7–6.4 % to 3.5 % of a plain training step at batch 256
    /// (README, "Packing B row by row"). Four rows at a time (shorter write strides) measured the same.
    /// </summary>
    private static void PackRowMajorB(float* b, int rs, int kc, int nc, int nr, float* dst)
    {
        // Every tier's NR is whole cache lines (32 on AVX-512, 16 elsewhere), so a piece is copied a line at a time,
        // inline: a Memmove call per 128-byte piece of AVX-512 was 2.5 % of a plain training step at batch 128
        // (bench/profile.sh; README, "B's rows packed in inline line copies"). CacheLine's 16-byte moves: one 64-byte
        // or two 32-byte moves measured slower (probably because B's rows need not start on a line, so a wide move can
        // span two; not measured apart).
        Debug.Assert(nr % CacheLine.Floats == 0, "a sliver's width must be whole cache lines");
        int fullCols = nc / nr * nr;
        for (int p = 0; p < kc; p++)
        {
            float* s = b + (long)p * rs;
            float* d = dst + (long)p * nr;
            int jr = 0;
            for (; jr < fullCols; jr += nr)
            {
                for (int line = 0; line < nr; line += CacheLine.Floats)
                {
                    CacheLine.Copy(s + jr + line, d + (long)jr * kc + line);
                }
            }
            if (jr < nc)
            {
                float* piece = d + (long)jr * kc;
                int j = 0;
                for (; j < nc - jr; j++) piece[j] = s[jr + j];
                for (; j < nr; j++) piece[j] = 0f;
            }
        }
    }

    /// <summary>dst[q, r] = src[r, q] for an 8×8 block (rows srcStride / dstStride floats apart): the classic
    /// unpack / shuffle / permute transpose, 24 shuffles instead of 64 strided stores.</summary>
    private static void Transpose8x8(float* src, long srcStride, float* dst, long dstStride)
    {
        Vector256<float> r0 = Avx.LoadVector256(src), r1 = Avx.LoadVector256(src + srcStride);
        Vector256<float> r2 = Avx.LoadVector256(src + 2 * srcStride), r3 = Avx.LoadVector256(src + 3 * srcStride);
        Vector256<float> r4 = Avx.LoadVector256(src + 4 * srcStride), r5 = Avx.LoadVector256(src + 5 * srcStride);
        Vector256<float> r6 = Avx.LoadVector256(src + 6 * srcStride), r7 = Avx.LoadVector256(src + 7 * srcStride);
        Transpose8x8(ref r0, ref r1, ref r2, ref r3, ref r4, ref r5, ref r6, ref r7);
        Avx.Store(dst, r0);
        Avx.Store(dst + dstStride, r1);
        Avx.Store(dst + 2 * dstStride, r2);
        Avx.Store(dst + 3 * dstStride, r3);
        Avx.Store(dst + 4 * dstStride, r4);
        Avx.Store(dst + 5 * dstStride, r5);
        Avx.Store(dst + 6 * dstStride, r6);
        Avx.Store(dst + 7 * dstStride, r7);
    }

    /// <summary>
    /// dst[q, r] = src[r, q] for a 16×8 block (16 rows of 8 values in, 8 rows of 16 out): the 8×8 transpose above run
    /// on both halves of 512-bit registers at once (rows r and r + 8 share a register), its last step a two-source
    /// permute per output row that picks the 128-bit lanes of both halves. Per value, half the stores of two 8×8
    /// transposes and 32 shuffles (8 of them the inserts that pair the rows) instead of 48.
    /// </summary>
    private static void Transpose16x8(float* src, long srcStride, float* dst, long dstStride)
    {
        Vector512<float> r0 = RowAndRowEightBelow(src, srcStride, 0), r1 = RowAndRowEightBelow(src, srcStride, 1), r2 = RowAndRowEightBelow(src, srcStride, 2), r3 = RowAndRowEightBelow(src, srcStride, 3);
        Vector512<float> r4 = RowAndRowEightBelow(src, srcStride, 4), r5 = RowAndRowEightBelow(src, srcStride, 5), r6 = RowAndRowEightBelow(src, srcStride, 6), r7 = RowAndRowEightBelow(src, srcStride, 7);
        Vector512<float> t0 = Avx512F.UnpackLow(r0, r1), t1 = Avx512F.UnpackHigh(r0, r1);
        Vector512<float> t2 = Avx512F.UnpackLow(r2, r3), t3 = Avx512F.UnpackHigh(r2, r3);
        Vector512<float> t4 = Avx512F.UnpackLow(r4, r5), t5 = Avx512F.UnpackHigh(r4, r5);
        Vector512<float> t6 = Avx512F.UnpackLow(r6, r7), t7 = Avx512F.UnpackHigh(r6, r7);
        Vector512<double> u0 = Avx512F.Shuffle(t0, t2, 0x44).AsDouble(), u1 = Avx512F.Shuffle(t0, t2, 0xEE).AsDouble();
        Vector512<double> u2 = Avx512F.Shuffle(t1, t3, 0x44).AsDouble(), u3 = Avx512F.Shuffle(t1, t3, 0xEE).AsDouble();
        Vector512<double> u4 = Avx512F.Shuffle(t4, t6, 0x44).AsDouble(), u5 = Avx512F.Shuffle(t4, t6, 0xEE).AsDouble();
        Vector512<double> u6 = Avx512F.Shuffle(t5, t7, 0x44).AsDouble(), u7 = Avx512F.Shuffle(t5, t7, 0xEE).AsDouble();
        // In 64-bit elements (0–7 the first source, 8–15 the second): for each 256-bit half in turn, its low (or high)
        // 128-bit lane from the first source, then the same lane from the second: rows 0–3, 4–7, 8–11, 12–15 of one column.
        Vector512<long> low = Vector512.Create(0L, 1, 8, 9, 4, 5, 12, 13), high = Vector512.Create(2L, 3, 10, 11, 6, 7, 14, 15);
        Avx512F.Store(dst, Avx512F.PermuteVar8x64x2(u0, low, u4).AsSingle());
        Avx512F.Store(dst + dstStride, Avx512F.PermuteVar8x64x2(u1, low, u5).AsSingle());
        Avx512F.Store(dst + 2 * dstStride, Avx512F.PermuteVar8x64x2(u2, low, u6).AsSingle());
        Avx512F.Store(dst + 3 * dstStride, Avx512F.PermuteVar8x64x2(u3, low, u7).AsSingle());
        Avx512F.Store(dst + 4 * dstStride, Avx512F.PermuteVar8x64x2(u0, high, u4).AsSingle());
        Avx512F.Store(dst + 5 * dstStride, Avx512F.PermuteVar8x64x2(u1, high, u5).AsSingle());
        Avx512F.Store(dst + 6 * dstStride, Avx512F.PermuteVar8x64x2(u2, high, u6).AsSingle());
        Avx512F.Store(dst + 7 * dstStride, Avx512F.PermuteVar8x64x2(u3, high, u7).AsSingle());
    }

    /// <summary>Rows r and r + 8 of a 16×8 block, as the low and high halves of one register.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> RowAndRowEightBelow(float* src, long srcStride, int r) =>
        Vector512.Create(Avx.LoadVector256(src + r * srcStride), Avx.LoadVector256(src + (r + 8) * srcStride));

    /// <summary>
    /// An A sliver's 8 values of p from 6 rows (srcStride floats apart): dst[q·6 + r] = src[r·srcStride + q]. The
    /// rows are the first 6 of an 8×8 transpose; each of its rows keeps its first 6 values (a 4 and a 2 store).
    /// </summary>
    private static void PackSixRowsOfEight(float* src, long srcStride, float* dst)
    {
        Vector256<float> r0 = Avx.LoadVector256(src), r1 = Avx.LoadVector256(src + srcStride);
        Vector256<float> r2 = Avx.LoadVector256(src + 2 * srcStride), r3 = Avx.LoadVector256(src + 3 * srcStride);
        Vector256<float> r4 = Avx.LoadVector256(src + 4 * srcStride), r5 = Avx.LoadVector256(src + 5 * srcStride);
        Vector256<float> r6 = Vector256<float>.Zero, r7 = Vector256<float>.Zero;
        Transpose8x8(ref r0, ref r1, ref r2, ref r3, ref r4, ref r5, ref r6, ref r7);
        StoreSix(r0, dst);
        StoreSix(r1, dst + 6);
        StoreSix(r2, dst + 12);
        StoreSix(r3, dst + 18);
        StoreSix(r4, dst + 24);
        StoreSix(r5, dst + 30);
        StoreSix(r6, dst + 36);
        StoreSix(r7, dst + 42);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreSix(Vector256<float> v, float* dst)
    {
        Sse.Store(dst, v.GetLower());
        Sse2.StoreLow((double*)(dst + 4), v.GetUpper().AsDouble());
    }

    /// <summary>The 8 rows r0…r7 become the 8 columns, in registers.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Transpose8x8(ref Vector256<float> r0, ref Vector256<float> r1, ref Vector256<float> r2, ref Vector256<float> r3,
        ref Vector256<float> r4, ref Vector256<float> r5, ref Vector256<float> r6, ref Vector256<float> r7)
    {
        Vector256<float> t0 = Avx.UnpackLow(r0, r1), t1 = Avx.UnpackHigh(r0, r1);
        Vector256<float> t2 = Avx.UnpackLow(r2, r3), t3 = Avx.UnpackHigh(r2, r3);
        Vector256<float> t4 = Avx.UnpackLow(r4, r5), t5 = Avx.UnpackHigh(r4, r5);
        Vector256<float> t6 = Avx.UnpackLow(r6, r7), t7 = Avx.UnpackHigh(r6, r7);
        Vector256<float> u0 = Avx.Shuffle(t0, t2, 0x44), u1 = Avx.Shuffle(t0, t2, 0xEE);
        Vector256<float> u2 = Avx.Shuffle(t1, t3, 0x44), u3 = Avx.Shuffle(t1, t3, 0xEE);
        Vector256<float> u4 = Avx.Shuffle(t4, t6, 0x44), u5 = Avx.Shuffle(t4, t6, 0xEE);
        Vector256<float> u6 = Avx.Shuffle(t5, t7, 0x44), u7 = Avx.Shuffle(t5, t7, 0xEE);
        r0 = Avx.Permute2x128(u0, u4, 0x20);
        r1 = Avx.Permute2x128(u1, u5, 0x20);
        r2 = Avx.Permute2x128(u2, u6, 0x20);
        r3 = Avx.Permute2x128(u3, u7, 0x20);
        r4 = Avx.Permute2x128(u0, u4, 0x31);
        r5 = Avx.Permute2x128(u1, u5, 0x31);
        r6 = Avx.Permute2x128(u2, u6, 0x31);
        r7 = Avx.Permute2x128(u3, u7, 0x31);
    }

    private static void CopyTile(float* src, long lds, float* dst, long ldd, int rows, int cols, bool zeroPad, int mr, int nr)
    {
        for (int r = 0; r < rows; r++)
        {
            new ReadOnlySpan<float>(src + r * lds, cols).CopyTo(new Span<float>(dst + r * ldd, cols));
            if (zeroPad)
            {
                new Span<float>(dst + r * ldd + cols, nr - cols).Clear();
            }
        }
        if (zeroPad)
        {
            for (int r = rows; r < mr; r++)
            {
                new Span<float>(dst + r * ldd, nr).Clear();
            }
        }
    }

    private static int RoundUp(int x, int multiple) => (x + multiple - 1) / multiple * multiple;

    internal static void CheckShapes<T>(StridedMatrix<T> a, StridedMatrix<T> b, Span<T> c, int ldc)
    {
        if (a.Cols != b.Rows)
        {
            throw new ArgumentException($"inner dimensions differ: A is {a.Rows}×{a.Cols}, B is {b.Rows}×{b.Cols}");
        }
        if (a.Rows > 0 && b.Cols > 0)
        {
            if (ldc < b.Cols)
            {
                throw new ArgumentException($"ldc {ldc} is smaller than the {b.Cols} columns of C");
            }
            long needed = (long)(a.Rows - 1) * ldc + b.Cols;
            if (c.Length < needed)
            {
                throw new ArgumentException($"C needs {needed} elements for {a.Rows}×{b.Cols} with ldc {ldc}, has {c.Length}");
            }
        }
    }

    internal static void CheckChunkStarts(ReadOnlySpan<int> chunkStarts, int k)
    {
        if (chunkStarts.Length < 1 || chunkStarts[0] != 0 || chunkStarts[^1] != k)
        {
            throw new ArgumentException($"chunk starts must run from 0 to k = {k}");
        }
        for (int i = 1; i < chunkStarts.Length; i++)
        {
            if (chunkStarts[i] < chunkStarts[i - 1])
            {
                throw new ArgumentException("chunk starts must not decrease");
            }
        }
    }
}
