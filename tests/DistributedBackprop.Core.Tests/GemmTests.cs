using DistributedBackprop.Engine;
using DistributedBackprop.Kernels;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Tests;

/// <summary>
/// The fast GEMM against its naive twin. The contract is bit-for-bit equality (each element is the same
/// FMA chain), on every tier, for shapes around every blocking edge, every transpose, with guard values
/// around the output to catch writes outside it.
/// </summary>
public class GemmTests
{
    private const float Guard = -12345.5f;

    public static TheoryData<SimdTier> Tiers() => new(Enum.GetValues<SimdTier>());

    private static float[] Random(int n, int seed)
    {
        var random = new Randomness.Xoshiro256((ulong)seed);
        var values = new float[n];
        for (int i = 0; i < n; i++)
        {
            values[i] = random.NextSingle() * 2 - 1;
        }
        return values;
    }

    /// <summary>Sizes around the MR, NR, KC, MC and NC edges of every tier, plus odd and prime ones.</summary>
    private static IEnumerable<int> EdgeSizes(int block) => new[] { 1, block - 1, block, block + 1 }.Where(s => s > 0);

    public static IEnumerable<object[]> Shapes()
    {
        var shapes = new HashSet<(int, int, int)>();
        foreach (SimdTier tier in Enum.GetValues<SimdTier>())
        {
            GemmBlocking b = GemmBlocking.For(tier);
            foreach (int m in EdgeSizes(b.MR).Concat([7, 13]))
                foreach (int n in EdgeSizes(b.NR).Concat([3, 37]))
                    foreach (int k in new[] { 1, 2, 5, 31 })
                        shapes.Add((m, n, k));
            foreach (int k in EdgeSizes(b.KC)) shapes.Add((b.MR + 1, b.NR + 3, k));
            // Several slabs of equal depth, the last one shallower (SlabDepth).
            foreach (int k in new[] { 2 * b.KC + 1, 3 * b.KC - 1 }) shapes.Add((b.MR + 1, b.NR + 3, k));
            foreach (int m in EdgeSizes(b.MC)) shapes.Add((m, 17, 9));
            foreach (int n in EdgeSizes(b.NC)) shapes.Add((2, n, 3));
        }
        shapes.Add((0, 5, 3));
        shapes.Add((4, 0, 3));
        shapes.Add((4, 5, 0));
        shapes.Add((97, 101, 103));
        // The narrow path (n ≤ 16: a classifier layer), with deep k and row counts off its 8- and 4-row groups.
        shapes.Add((37, 10, 784));
        shapes.Add((128, 16, 129));
        shapes.Add((3, 1, 300));
        return shapes.Select(s => new object[] { s.Item1, s.Item2, s.Item3 });
    }

    /// <summary>
    /// AVX2's row edges (a block's last 1–4 rows in 4×16 or 2×32 tiles, Gemm.MultiplyEdgeRows): each remainder of 6
    /// after whole slivers and after a full block of MC = 96 rows (5 stays padded), against paired, lone and partial
    /// 16-column slivers (n above 16: the narrow path takes the rest), in one slab and across three.
    /// </summary>
    public static IEnumerable<object[]> RowEdgeShapes()
    {
        foreach (int m in new[] { 2, 3, 4, 8, 9, 10, 32, 97, 98, 99, 100, 101 })
            foreach (int n in new[] { 17, 33, 48, 64, 80 })
                foreach (int k in new[] { 5, 2 * GemmBlocking.Vector256.KC + 1 })
                    yield return [m, n, k];
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    [MemberData(nameof(RowEdgeShapes))]
    public void MultiplyAdd_EqualsNaiveBitForBit_OnEveryTierAndTranspose(int m, int n, int k)
    {
        foreach (SimdTier tier in Enum.GetValues<SimdTier>())
        {
            foreach (bool transA in new[] { false, true })
            {
                foreach (bool transB in new[] { false, true })
                {
                    float[] a = Random(m * k, m * 31 + k), b = Random(k * n, n * 17 + k);
                    var am = transA ? StridedMatrix<float>.RowMajor(a, k, m).Transposed() : StridedMatrix<float>.RowMajor(a, m, k);
                    var bm = transB ? StridedMatrix<float>.RowMajor(b, n, k).Transposed() : StridedMatrix<float>.RowMajor(b, k, n);
                    AssertProductEqualsNaive(am, bm, ldc: n + 3, seed: 5, tier, $"{tier} m={m} n={n} k={k} transA={transA} transB={transB}");
                }
            }
        }
    }

    /// <summary>
    /// k deep enough that the chunk-tree product cuts B into several column blocks and A into several MC blocks of
    /// rows (512 KiB of packed panels: at k = 8,000, 12 rows and 16 columns a block on AVX2, 16 and 32 on AVX-512; at
    /// k = 6,000, 18 and 16 on AVX2, 16 and 32 on AVX-512), the last of each ragged, so A is packed at the first column
    /// block and read back, at each MC block's place, for the others. Small m and n keep the naive reference quick.
    /// </summary>
    public static IEnumerable<object[]> KeptAShapes() => [[20, 40, 8000], [26, 70, 6000]];

    /// <summary>
    /// A block's last 1 or 2 rows against pairs of full B slivers (AVX-512's 2×64 edge leaves), beside slivers left over
    /// (n not a multiple of 64, a ragged last sliver): the output layer's weight gradient (10 × 128) and its neighbours.
    /// </summary>
    public static IEnumerable<object[]> EdgeRowShapes() => [[10, 128, 128], [9, 100, 37], [18, 65, 16], [2, 64, 5], [1, 97, 33], [17, 160, 3]];

    /// <summary>
    /// Four or eight chunks all equally deep (k a multiple of 8, at most 4 or 8 × Gemm.PairedLeafDepth): AVX-512 keeps the tile's whole
    /// tree in registers (MicroKernels.LeavesInRegisters8x32), its root straight into C for full tiles and through
    /// the stack for ragged ones; depth 4 is a batch of 32, 1 and 32 (4 chunks of k = 128) the ends of the range.
    /// </summary>
    public static IEnumerable<object[]> EqualDepthShapes() => [[16, 96, 32], [13, 40, 32], [8, 64, 8], [24, 33, 248], [16, 64, 16], [9, 70, 128]];

    [Theory]
    [MemberData(nameof(Shapes))]
    [MemberData(nameof(KeptAShapes))]
    [MemberData(nameof(EdgeRowShapes))]
    [MemberData(nameof(EqualDepthShapes))]
    public void ChunkTreeProduct_EqualsNaiveTreeOfChunkProducts(int m, int n, int k)
    {
        foreach (SimdTier tier in Enum.GetValues<SimdTier>())
        {
            foreach (int chunks in new[] { 1, 2, 3, 4, 5, 7, 8 })
            {
                float[] a = Random(m * k, m + 7 * k), b = Random(k * n, n + 11 * k);
                // As in ∂J/∂W = δᵀ·a: A is stored transposed.
                var am = StridedMatrix<float>.RowMajor(a, k, m).Transposed();
                var bm = StridedMatrix<float>.RowMajor(b, k, n);
                int[] starts = Enumerable.Range(0, chunks + 1).Select(c => ChunkTree.ChunkStart(k, chunks, c)).ToArray();
                int ldc = n + 1;
                float[] expected = GuardedOutput(m, ldc, seed: 9);
                float[] actual = (float[])expected.Clone();
                NaiveGemm.ChunkTreeProduct(am, bm, starts, expected.AsSpan(8), ldc);
                Gemm.ChunkTreeProduct(am, bm, starts, actual.AsSpan(8), ldc, tier);
                AssertBitwise(expected, actual, $"{tier} m={m} n={n} k={k} chunks={chunks}");
            }
        }
    }

    /// <summary>
    /// In blocks of C's rows, in any order, each block told once when complete: the bits of the whole product,
    /// with B packed once (the first and last shapes) and, past <see cref="Gemm.PackOnceFloats"/>, packed again per block.
    /// At each block's report its rows already hold their final values.
    /// </summary>
    [Theory]
    [InlineData(256, 784, 64, 64)]
    [InlineData(130, 300, 40, 37)]
    [InlineData(20, 2100, 2050, 6)]
    // Row blocks of several MC blocks each, B in several column blocks packed once: A kept per row block.
    [InlineData(250, 300, 1400, 100)]
    public void ChunkTreeProduct_InRowBlocks_InAnyOrder_HasTheBitsOfTheWholeProduct(int m, int n, int k, int blockRows)
    {
        int blocks = (m + blockRows - 1) / blockRows;
        Assert.Equal(n == 2100, (long)(n + 15) / 16 * 16 * k > Gemm.PackOnceFloats);
        foreach (int chunks in new[] { 1, 5 })
        {
            float[] a = Random(m * k, m + 7 * k), b = Random(k * n, n + 11 * k);
            var am = StridedMatrix<float>.RowMajor(a, k, m).Transposed();
            var bm = StridedMatrix<float>.RowMajor(b, k, n);
            int[] starts = Enumerable.Range(0, chunks + 1).Select(c => ChunkTree.ChunkStart(k, chunks, c)).ToArray();
            float[] whole = new float[m * n];
            Gemm.ChunkTreeProduct(am, bm, starts, whole, n);
            foreach (int[] order in new[] { Enumerable.Range(0, blocks).Reverse().ToArray(), Enumerable.Range(0, blocks).Select(i => i * 7 % blocks).ToArray() })
            {
                Assert.Equal(blocks, order.Distinct().Count());
                float[] blocked = new float[m * n];
                blocked.AsSpan().Fill(float.NaN);
                var done = new RowsDone(whole, blocked, n, blockRows);
                Gemm.ChunkTreeProduct(am, bm, starts, blocked, n, new RowBlocks(blockRows, order, done), SimdTiers.Best);
                Assert.Equal(order, done.Blocks);
                AssertBitwise(whole, blocked, $"m={m} n={n} k={k} chunks={chunks} blocks [{string.Join(",", order)}]");
            }
        }
        Assert.Throws<ArgumentException>(() => Gemm.ChunkTreeProduct(StridedMatrix<float>.RowMajor(new float[m * k], m, k), StridedMatrix<float>.RowMajor(new float[k * n], k, n),
            [0, k], new float[m * n], n, new RowBlocks(blockRows, new int[blocks], new RowsDone([], [], n, blockRows)), SimdTiers.Best));
    }

    /// <summary>
    /// The forward pass's blocks of units: A·B in column blocks, in a scattered order, A packed by the first block's
    /// product and kept for the others (<see cref="Gemm.PackedLeft"/>), has the naive product's bits on every tier,
    /// around the MR, MC and slab edges; a kept A of another shape is not used; the narrow path ignores it.
    /// </summary>
    [Theory]
    [InlineData(2048, 256, 784, 64)]
    [InlineData(97, 100, 2 * 320 + 1, 33)]
    [InlineData(7, 40, 5, 17)]
    [InlineData(129, 37, 300, 12)]
    [InlineData(3, 4200, 5, 2100)]
    public void MultiplyAdd_InColumnBlocks_WithAKeptPackedA_EqualsNaiveBitForBit(int m, int n, int k, int blockColumns)
    {
        foreach (SimdTier tier in Enum.GetValues<SimdTier>())
        {
            float[] a = Random(m * k, m + 3 * k), bT = Random(n * k, n + 5 * k);
            var am = StridedMatrix<float>.RowMajor(a, m, k);
            var bm = StridedMatrix<float>.RowMajor(bT, n, k).Transposed();
            float[] expected = GuardedOutput(m, n, seed: 9);
            NaiveGemm.MultiplyAdd(am, bm, expected.AsSpan(8), n);
            var kept = new Gemm.PackedLeft();
            // First a different A's packing, of another shape, kept: it must not be used (each block packs for
            // itself); then, reset, A packed by the first block and kept for the others.
            Gemm.MultiplyAdd(StridedMatrix<float>.RowMajor(Random((m + 1) * k, 1), m + 1, k), bm, new float[(m + 1) * n], n, tier, kept);
            foreach (bool reset in new[] { false, true })
            {
                if (reset)
                {
                    kept.Reset();
                }
                float[] actual = GuardedOutput(m, n, seed: 9);
                int blocks = (n + blockColumns - 1) / blockColumns;
                foreach (int block in Enumerable.Range(0, blocks).Select(i => i * 5 % blocks).Distinct().Concat(Enumerable.Range(0, blocks)).Distinct())
                {
                    int first = block * blockColumns, columns = Math.Min(blockColumns, n - first);
                    var columnsOfB = StridedMatrix<float>.RowMajor(bT.AsSpan(first * k, columns * k), columns, k).Transposed();
                    Gemm.MultiplyAdd(am, columnsOfB, actual.AsSpan(8 + first), n, tier, kept);
                }
                AssertBitwise(expected, actual, $"{tier} m={m} n={n} k={k} blocks of {blockColumns}, {(reset ? "kept" : "another shape's kept")}");
            }
        }
    }

    private sealed class RowsDone(float[] whole, float[] blocked, int n, int blockRows) : IRowBlockDone
    {
        public List<int> Blocks { get; } = [];

        public void Done(int block)
        {
            int first = block * blockRows * n, end = Math.Min(first + blockRows * n, whole.Length);
            Assert.Equal(whole.AsSpan(first, end - first).ToArray(), blocked.AsSpan(first, end - first).ToArray());
            Blocks.Add(block);
        }
    }

    [Fact]
    public void SlabDepth_CutsKIntoTheFewestSlabs_TheLastShallowerByLessThanTheirCount()
    {
        foreach (SimdTier tier in Enum.GetValues<SimdTier>())
        {
            GemmBlocking b = GemmBlocking.For(tier);
            for (int k = 1; k <= 4 * b.KC + 3; k++)
            {
                int depth = b.SlabDepth(k);
                int slabs = (k + depth - 1) / depth, last = k - (slabs - 1) * depth;
                Assert.True(depth <= b.KC, $"{tier} k={k}: slabs {depth} deep, KC {b.KC}");
                Assert.Equal((k + b.KC - 1) / b.KC, slabs);
                Assert.True(last > 0 && depth - last < slabs, $"{tier} k={k}: {slabs} slabs of {depth}, the last {last}");
            }
        }
        Assert.Equal(262, GemmBlocking.Vector256.SlabDepth(784));
    }

    /// <summary>
    /// Chunks of unequal depth whose rows still add up to the chunk count times the first chunk's (4, 3, 5, 4): not a tree
    /// the registers' path may take for one of equal depth (MicroKernels.LeavesInRegisters8x32).
    /// </summary>
    [Theory]
    [InlineData(16, 64, new[] { 0, 4, 7, 12, 16 })]
    [InlineData(13, 40, new[] { 0, 4, 7, 12, 16 })]
    [InlineData(16, 64, new[] { 0, 4, 7, 12, 16, 20, 23, 28, 32 })]
    [InlineData(13, 40, new[] { 0, 4, 7, 12, 16, 20, 23, 28, 32 })]
    public void ChunkTreeProduct_WithUnequalChunksOfEqualMeanDepth_EqualsNaive(int m, int n, int[] starts)
    {
        int k = starts[^1];
        foreach (SimdTier tier in Enum.GetValues<SimdTier>())
        {
            float[] a = Random(m * k, 21), b = Random(k * n, 22);
            var am = StridedMatrix<float>.RowMajor(a, k, m).Transposed();
            var bm = StridedMatrix<float>.RowMajor(b, k, n);
            float[] expected = GuardedOutput(m, n, seed: 9);
            float[] actual = (float[])expected.Clone();
            NaiveGemm.ChunkTreeProduct(am, bm, starts, expected.AsSpan(8), n);
            Gemm.ChunkTreeProduct(am, bm, starts, actual.AsSpan(8), n, tier);
            AssertBitwise(expected, actual, $"{tier} m={m} n={n} starts={string.Join(',', starts)}");
        }
    }

    [Fact]
    public void ChunkTreeProduct_WithOneChunk_IsThePlainProduct()
    {
        float[] a = Random(40 * 70, 1), b = Random(70 * 50, 2);
        var am = StridedMatrix<float>.RowMajor(a, 40, 70);
        var bm = StridedMatrix<float>.RowMajor(b, 70, 50);
        var plain = new float[40 * 50];
        var tree = new float[40 * 50];
        tree.AsSpan().Fill(float.NaN);
        Gemm.MultiplyAdd(am, bm, plain, 50);
        Gemm.ChunkTreeProduct(am, bm, [0, 70], tree, 50);
        Assert.Equal(plain, tree);
    }

    [Fact]
    public void ChunkTreeProduct_DiffersFromASingleChain_SoTheTreeIsReallyUsed()
    {
        // Guards against a kernel that ignores chunk boundaries: with many chunks some elements must round differently.
        float[] a = Random(16 * 256, 3), b = Random(256 * 64, 4);
        var am = StridedMatrix<float>.RowMajor(a, 16, 256);
        var bm = StridedMatrix<float>.RowMajor(b, 256, 64);
        var plain = new float[16 * 64];
        var tree = new float[16 * 64];
        Gemm.MultiplyAdd(am, bm, plain, 64);
        Gemm.ChunkTreeProduct(am, bm, Enumerable.Range(0, 9).Select(c => c * 32).ToArray(), tree, 64);
        Assert.NotEqual(plain, tree);
        for (int i = 0; i < plain.Length; i++)
        {
            Assert.True(Math.Abs(plain[i] - tree[i]) <= 1e-4f * (1 + Math.Abs(plain[i])), $"element {i}: {plain[i]} vs {tree[i]}");
        }
    }

    /// <summary>
    /// Operands whose rows are padded (row stride above the row's length, as a view of a wider matrix): a packer that
    /// confused the stride with the length (every shape above is dense) would read the padding. Shapes that fill 6- and
    /// 8-row A slivers and 16-row blocks of Wᵀ, with ragged edges, on every tier and transpose.
    /// </summary>
    [Theory]
    [InlineData(9, 37, 31)]
    [InlineData(16, 48, 40)]
    [InlineData(13, 17, 300)]
    public void MultiplyAdd_WithPaddedRows_EqualsNaiveBitForBit(int m, int n, int k)
    {
        const int Padding = 5;
        foreach (SimdTier tier in Enum.GetValues<SimdTier>())
        {
            foreach (bool transA in new[] { false, true })
            {
                foreach (bool transB in new[] { false, true })
                {
                    // Stored rows of A (B): m (k) rows of k (n) values, or their transposes; each row padded with values that must not be read.
                    int aRows = transA ? k : m, aCols = transA ? m : k, bRows = transB ? n : k, bCols = transB ? k : n;
                    float[] a = Random(aRows * (aCols + Padding), m * 7 + k), b = Random(bRows * (bCols + Padding), n * 5 + k);
                    var am = new StridedMatrix<float>(a, aRows, aCols, aCols + Padding, 1);
                    var bm = new StridedMatrix<float>(b, bRows, bCols, bCols + Padding, 1);
                    if (transA) am = am.Transposed();
                    if (transB) bm = bm.Transposed();
                    AssertProductEqualsNaive(am, bm, ldc: n + 2, seed: 3, tier, $"{tier} m={m} n={n} k={k} transA={transA} transB={transB} padded");
                }
            }
        }
    }

    [Fact]
    public void MultiplyAdd_RejectsMismatchedShapes()
    {
        Assert.Throws<ArgumentException>(() => Gemm.MultiplyAdd(
            StridedMatrix<float>.RowMajor(new float[6], 2, 3), StridedMatrix<float>.RowMajor(new float[8], 4, 2), new float[4], 2));
        Assert.Throws<ArgumentException>(() => Gemm.MultiplyAdd(
            StridedMatrix<float>.RowMajor(new float[6], 2, 3), StridedMatrix<float>.RowMajor(new float[6], 3, 2), new float[3], 2));
    }

    /// <summary>C += A·B by the fast GEMM and by the naive chain, into the same guarded output: the same bits.</summary>
    private static void AssertProductEqualsNaive(StridedMatrix<float> am, StridedMatrix<float> bm, int ldc, int seed, SimdTier tier, string context)
    {
        float[] expected = GuardedOutput(am.Rows, ldc, seed);
        float[] actual = (float[])expected.Clone();
        NaiveGemm.MultiplyAdd(am, bm, expected.AsSpan(8), ldc);
        Gemm.MultiplyAdd(am, bm, actual.AsSpan(8), ldc, tier);
        AssertBitwise(expected, actual, context);
    }

    private static float[] GuardedOutput(int m, int ldc, int seed)
    {
        // 8 guard values before and after; the gaps between rows (ldc > n) are guards too.
        float[] c = Random(8 + Math.Max(0, m * ldc) + 8, seed);
        c.AsSpan(0, 8).Fill(Guard);
        c.AsSpan(c.Length - 8).Fill(Guard);
        return c;
    }

    internal static void AssertBitwise(float[] expected, float[] actual, string context)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
        {
            if (BitConverter.SingleToInt32Bits(expected[i]) != BitConverter.SingleToInt32Bits(actual[i]))
            {
                Assert.Fail($"{context}: element {i} differs: expected {expected[i]:R}, got {actual[i]:R}");
            }
        }
    }
}
