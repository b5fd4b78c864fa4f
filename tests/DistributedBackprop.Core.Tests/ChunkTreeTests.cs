using DistributedBackprop.Engine;
using DistributedBackprop.Network;
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Tests;

/// <summary>The step definition: chunks, the canonical tree, decompositions and the reducer.</summary>
public class ChunkTreeTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(7)]
    [InlineData(8)]
    [InlineData(13)]
    public void Decompose_CoversTheRangeExactly_WithCanonicalNodes(int chunks)
    {
        for (int lo = 0; lo <= chunks; lo++)
        {
            for (int hi = lo; hi <= chunks; hi++)
            {
                List<TreeNode> nodes = ChunkTree.Decompose(lo, hi, chunks);
                int next = lo;
                foreach (TreeNode node in nodes)
                {
                    Assert.True(ChunkTree.IsCanonical(node, chunks), $"{node} over {chunks}");
                    Assert.Equal(next, node.Lo);
                    next += ChunkTree.CoveredChunks(node, chunks);
                }
                Assert.Equal(hi, next);
            }
        }
        Assert.Equal([ChunkTree.Root(chunks)], ChunkTree.Decompose(0, chunks, chunks));
    }

    [Fact]
    public void ChunkStarts_CutTheBatchIntoNearlyEqualContiguousChunks()
    {
        Assert.Equal([0, 3, 6, 10], Enumerable.Range(0, 4).Select(c => ChunkTree.ChunkStart(10, 3, c)));
        Assert.Equal([0, 0, 1, 1, 2], Enumerable.Range(0, 5).Select(c => ChunkTree.ChunkStart(2, 4, c)));
    }

    [Fact]
    public void Sum_FollowsTheTree_NotTheLeftFold()
    {
        // 1e16 + 1 − 1e16 … shows the association: ((a + b) + (c + d)) versus (((a + b) + c) + d).
        double[] leaves = [1e16, 1.0, -1e16, 1.0];
        Assert.Equal((1e16 + 1.0) + (-1e16 + 1.0), ChunkTree.Sum(leaves));
        Assert.Equal(5.0, ChunkTree.Sum([1.0, 2.0, 2.0]));
    }

    /// <summary>The recursive definition, written out: "(l+r)" for every addition, in tree order.</summary>
    private static string Definition(int chunks)
    {
        string[] names = Enumerable.Range(0, chunks).Select(c => c.ToString(System.Globalization.CultureInfo.InvariantCulture)).ToArray();
        return ChunkTree.Fold(chunks, (TreeNode node, out string value) => ChunkTree.Leaf(names, node, out value), (left, right) => $"({left}+{right})");
    }

    /// <summary>The binary-counter walk over string slots; <paramref name="addIntoTop"/> takes the GEMM's shortcut for right leaves.</summary>
    private static string Walked(int chunks, bool addIntoTop)
    {
        int depth = ChunkTree.MaxStackDepth(chunks);
        var walk = new TreeWalk(new int[depth]);
        var slots = new string[depth];
        for (int chunk = 0; chunk < chunks; chunk++)
        {
            string leaf = chunk.ToString(System.Globalization.CultureInfo.InvariantCulture);
            if (addIntoTop && walk.TopAwaitsRightLeaf)
            {
                slots[walk.Depth - 1] = $"({slots[walk.Depth - 1]}+{leaf})";
                walk.AddedIntoTop();
            }
            else
            {
                slots[walk.Push()] = leaf;
            }
            while (walk.TryMerge(out int left, out int right))
            {
                slots[left] = $"({slots[left]}+{slots[right]})";
            }
        }
        while (walk.TryFold(out int left, out int right))
        {
            slots[left] = $"({slots[left]}+{slots[right]})";
        }
        Assert.Equal(1, walk.Depth);
        return slots[0];
    }

    [Fact]
    public void TreeWalk_AddsExactlyAsTheRecursiveDefinition_ForEveryChunkCount()
    {
        Assert.Equal("(((0+1)+(2+3))+4)", Definition(5));
        Assert.Equal("((0+1)+(2+3))", Definition(4));
        Assert.Equal("((0+1)+2)", Definition(3));
        Assert.Equal("0", Definition(1));
        for (int chunks = 1; chunks <= 300; chunks++)
        {
            string definition = Definition(chunks);
            Assert.Equal(definition, Walked(chunks, addIntoTop: false));
            Assert.Equal(definition, Walked(chunks, addIntoTop: true));
        }
    }

    [Fact]
    public void TreeWalk_RefusesARightLeafWhenTheTopIsNotALoneLeaf()
    {
        var walk = new TreeWalk(new int[4]);
        Assert.False(walk.TopAwaitsRightLeaf);
        walk.Push();
        Assert.True(walk.TopAwaitsRightLeaf);
        walk.AddedIntoTop();
        Assert.False(walk.TopAwaitsRightLeaf);
        bool threw = false;
        try
        {
            walk.AddedIntoTop();
        }
        catch (InvalidOperationException)
        {
            threw = true;
        }
        Assert.True(threw);
    }

    [Property(MaxTest = 300)]
    public bool Sum_HasTheBitsOfTheRecursiveDefinition(NormalFloat[] values)
    {
        if (values.Length == 0)
        {
            return ChunkTree.Sum([]) == 0.0;
        }
        // Scaled apart so that the association shows in the bits.
        double[] leaves = values.Select((v, i) => v.Get * Math.Pow(10, i % 7 * 3)).ToArray();
        double definition = ChunkTree.Fold(leaves.Length, (TreeNode node, out double value) => ChunkTree.Leaf(leaves, node, out value), (a, b) => a + b);
        return BitConverter.DoubleToInt64Bits(ChunkTree.Sum(leaves)) == BitConverter.DoubleToInt64Bits(definition);
    }

    [Fact]
    public void Reducer_RefusesOverlappingNodes_AndCountsCoverage()
    {
        var reducer = new TreeReducer(5, 3);
        Assert.True(reducer.TryAdd(new TreeNode(0, 2), [1, 2, 3], new BatchResult(1, 1, 2)));
        Assert.False(reducer.TryAdd(new TreeNode(1, 1), [9, 9, 9], default));
        Assert.False(reducer.TryAdd(new TreeNode(0, 4), [9, 9, 9], default));
        Assert.False(reducer.IsComplete);
        Assert.True(reducer.TryAdd(new TreeNode(2, 2), [10, 20, 30], new BatchResult(2, 1, 2)));
        Assert.True(reducer.TryAdd(new TreeNode(4, 1), [100, 200, 300], new BatchResult(3, 0, 1)));
        Assert.True(reducer.IsComplete);
        var (gradient, result) = reducer.Reduce();
        Assert.Equal([111f, 222f, 333f], gradient);
        Assert.Equal(new BatchResult(6, 2, 5), result);
        Assert.Throws<ArgumentException>(() => reducer.TryAdd(new TreeNode(1, 2), [0, 0, 0], default));
    }

    /// <summary>
    /// The sum block by block into scratch (the update's one pass) is the reduction's sum, bit for bit, for any chunk
    /// count and any cut into nodes (one node: the root's own values, nothing added).
    /// </summary>
    [Property(MaxTest = 60)]
    public Property SumRange_GivesTheReducedSum_BlockByBlock(PositiveInt chunkSeed, PositiveInt partSeed, PositiveInt blockSeed)
    {
        int chunks = 1 + chunkSeed.Get % 12, parts = 1 + partSeed.Get % 9, block = 1 + blockSeed.Get % 37;
        const int Parameters = 101;
        var random = new Random(chunkSeed.Get ^ partSeed.Get);
        var nodes = new List<(TreeNode Node, float[] Gradient)>();
        for (int part = 0; part < parts; part++)
        {
            var (lo, hi) = ChunkTree.Share(chunks, parts, part);
            foreach (TreeNode node in ChunkTree.Decompose(lo, hi, chunks))
            {
                // Scaled apart so that the order of the additions shows in the bits.
                nodes.Add((node, Enumerable.Range(0, Parameters).Select(_ => (float)((random.NextDouble() - 0.5) * Math.Pow(10, random.Next(-6, 7)))).ToArray()));
            }
        }
        TreeReducer Filled()
        {
            var reducer = new TreeReducer(chunks, Parameters);
            foreach (var (node, gradient) in nodes)
            {
                Assert.True(reducer.TryAdd(node, (float[])gradient.Clone(), new BatchResult(0, 0, 1)));
            }
            return reducer;
        }
        float[] expected = Filled().Reduce().Gradient;

        TreeReducer blockwise = Filled();
        blockwise.Plan();
        var scratch = new float[block];
        var sum = new float[Parameters];
        for (int start = 0; start < Parameters; start += block)
        {
            int count = Math.Min(block, Parameters - start);
            blockwise.SumRange(start, count, scratch).CopyTo(sum.AsSpan(start));
        }
        return expected.Select(BitConverter.SingleToInt32Bits).SequenceEqual(sum.Select(BitConverter.SingleToInt32Bits))
            .Label($"chunks {chunks}, parts {parts} ({nodes.Count} nodes), blocks of {block}");
    }

    private static readonly Architecture SmallNetwork = Architecture.Create(6, [5], 3, Activation.Tanh, Activation.Softmax, Loss.CrossEntropy);

    /// <summary>
    /// The property the whole distributed design rests on: cut the chunks among any number of parts in
    /// contiguous runs, let each part compute its canonical nodes independently, reduce — and get exactly
    /// the bits of one process computing the root.
    /// </summary>
    [Property(MaxTest = 60)]
    public Property AnySplitIntoParts_GivesTheBitsOfTheWholeBatch(PositiveInt chunkSeed, PositiveInt partSeed, PositiveInt rowSeed)
    {
        int chunks = 1 + chunkSeed.Get % 12;
        int parts = 1 + partSeed.Get % 9;
        int rows = 1 + rowSeed.Get % 40;
        var data = TestNetworks.RandomDataset(rows, 6, 3, (ulong)rowSeed.Get);
        int[] batch = Enumerable.Range(0, rows).Reverse().ToArray();
        float[] theta = TestNetworks.ToFloat(TestNetworks.RandomParameters(SmallNetwork, 5));

        var whole = new float[SmallNetwork.ParameterCount];
        BatchResult wholeResult = new NodeGradientComputer(SmallNetwork, data).Compute(theta, batch, chunks, ChunkTree.Root(chunks), whole);

        var reducer = new TreeReducer(chunks, SmallNetwork.ParameterCount);
        var computer = new NodeGradientComputer(SmallNetwork, data);
        for (int part = 0; part < parts; part++)
        {
            var (lo, hi) = ChunkTree.Share(chunks, parts, part);
            foreach (TreeNode node in ChunkTree.Decompose(lo, hi, chunks))
            {
                var gradient = new float[SmallNetwork.ParameterCount];
                BatchResult result = computer.Compute(theta, batch, chunks, node, gradient);
                Assert.True(reducer.TryAdd(node, gradient, result));
            }
        }
        var (combined, combinedResult) = reducer.Reduce();
        bool sameBits = whole.Select(BitConverter.SingleToInt32Bits).SequenceEqual(combined.Select(BitConverter.SingleToInt32Bits));
        return (sameBits && wholeResult == combinedResult)
            .Label($"chunks {chunks}, parts {parts}, rows {rows}: loss {wholeResult.LossSum:R} vs {combinedResult.LossSum:R}");
    }

    /// <summary>The mean-loss gradient does not depend on how a batch is chunked, up to float rounding.</summary>
    [Property(MaxTest = 40)]
    public Property ChunkedGradient_EqualsFullBatchGradient_WithinRounding(PositiveInt chunkSeed, PositiveInt rowSeed)
    {
        int chunks = 1 + chunkSeed.Get % 16;
        int rows = 1 + rowSeed.Get % 64;
        var data = TestNetworks.RandomDataset(rows, 6, 3, (ulong)rowSeed.Get + 1);
        int[] batch = Enumerable.Range(0, rows).ToArray();
        float[] theta = TestNetworks.ToFloat(TestNetworks.RandomParameters(SmallNetwork, 6));
        var one = new float[SmallNetwork.ParameterCount];
        var many = new float[SmallNetwork.ParameterCount];
        new NodeGradientComputer(SmallNetwork, data).Compute(theta, batch, 1, ChunkTree.Root(1), one);
        new NodeGradientComputer(SmallNetwork, data).Compute(theta, batch, chunks, ChunkTree.Root(chunks), many);
        float scale = one.Max(MathF.Abs);
        return one.Zip(many).All(p => MathF.Abs(p.First - p.Second) <= 1e-5f * scale)
            .Label($"chunks {chunks}, rows {rows}");
    }

    [Fact]
    public void NodeGradient_IsTheTreeSumOfSeparatelyComputedChunkGradients()
    {
        // Definition check, independent of the in-kernel binary counter: compute each chunk alone
        // (normalised by the whole batch), then add them by the recursive tree definition.
        var arch = Architecture.Create(7, [9, 4], 3, Activation.Relu, Activation.Softmax, Loss.CrossEntropy);
        var data = TestNetworks.RandomDataset(23, 7, 3, 11);
        int[] batch = Enumerable.Range(0, 23).ToArray();
        float[] theta = TestNetworks.ToFloat(TestNetworks.RandomParameters(arch, 12));
        const int chunks = 5;
        var network = new Network<float>(arch);
        var leaves = new List<float[]>();
        for (int c = 0; c < chunks; c++)
        {
            int start = ChunkTree.ChunkStart(23, chunks, c), end = ChunkTree.ChunkStart(23, chunks, c + 1);
            data.Values.AsSpan(start * 7, (end - start) * 7).CopyTo(network.Input(end - start));
            network.Forward(theta, end - start);
            var leaf = new float[arch.ParameterCount];
            network.Backward(theta, data.Labels.AsSpan(start, end - start), [0, end - start], 23, leaf);
            leaves.Add(leaf);
        }
        float[] Combine(int lo, int size)
        {
            if (size == 1) return leaves[lo];
            float[] left = Combine(lo, size / 2);
            if (lo + size / 2 >= chunks) return left;
            float[] right = Combine(lo + size / 2, size / 2);
            return left.Zip(right, (a, b) => a + b).ToArray();
        }
        float[] expected = Combine(0, 8);
        var actual = new float[arch.ParameterCount];
        new NodeGradientComputer(arch, data).Compute(theta, batch, chunks, ChunkTree.Root(chunks), actual);
        GemmTests.AssertBitwise(expected, actual, "node (0,8) over 5 chunks");
    }
}
