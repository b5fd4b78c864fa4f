using DistributedBackprop.Engine;
using DistributedBackprop.Network;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Tests;

/// <summary>
/// The backward pass's releases (issue 9's overlap): where the blocks fall, that what is released is final and
/// released once, and that computing ∂J/∂W in blocks, in any order, gives the bits of computing it whole.
/// </summary>
public class GradientReleaseTests
{
    [Fact]
    public void Blocks_Of784_256_128_10_AreEachSmallLayerAndFourBlocksOfTheFirst()
    {
        var arch = Architecture.Create(784, [256, 128], 10, Activation.Relu, Activation.Softmax, Loss.CrossEntropy);
        // W_1 is 256 × 784 = 200,704 weights: four blocks of 64 rows (50,176 weights); b_1 goes with the last.
        Assert.Equal([0, 64 * 784, 128 * 784, 192 * 784, arch.WeightOffset(1), arch.WeightOffset(2)], ReleaseBlocks.Starts(arch));
        Assert.Equal((192 * 784, 64 * 784 + 256), ReleaseBlocks.Range(arch, 0, 3));
        Assert.Equal((arch.WeightOffset(2), 128 * 10 + 10), ReleaseBlocks.Range(arch, 2, 0));
        Assert.Equal(4, ReleaseBlocks.BlockCount(arch, 0));
        Assert.Equal(1, ReleaseBlocks.BlockCount(arch, 1));
    }

    [Theory]
    [InlineData(3, 2, 2)]
    [InlineData(300, 260, 10)]
    [InlineData(70_000, 3, 2)]
    [InlineData(20_000, 5, 2)]
    public void Blocks_TileTheParameters_InLayerOrder_AndHoldAtMostABlocksWeights(int inputs, int hidden, int outputs)
    {
        var arch = Architecture.Create(inputs, [hidden], outputs, Activation.Relu, Activation.Softmax, Loss.CrossEntropy);
        int next = 0;
        for (int l = 0; l < arch.Layers.Count; l++)
        {
            for (int b = 0; b < ReleaseBlocks.BlockCount(arch, l); b++)
            {
                var (start, count) = ReleaseBlocks.Range(arch, l, b);
                Assert.Equal(next, start);
                int weights = Math.Min(start + count, arch.BiasOffset(l)) - start;
                Assert.True(weights <= Math.Max(ReleaseBlocks.BlockFloats, arch.Layers[l].Inputs), $"a block of {weights} weights");
                next = start + count;
            }
            Assert.Equal(arch.BiasOffset(l) + arch.Layers[l].Outputs, next);
        }
        Assert.Equal(arch.ParameterCount, next);
        Assert.Throws<ArgumentOutOfRangeException>(() => ReleaseBlocks.Range(arch, 0, ReleaseBlocks.BlockCount(arch, 0)));
    }

    public static TheoryData<int, int, bool> Orders => new()
    {
        { 1, 1, false },
        { 3, 2, false },
        { 3, 2, true },
        { 8, 5, true },
    };

    [Theory]
    [MemberData(nameof(Orders))]
    public void WhatIsReleased_IsFinal_ReleasedOnce_AndTheGradientHasTheBitsOfOneWithoutReleases(int chunks, int shards, bool firstRowsFirst)
    {
        // 300 inputs × 260 hidden: W_1 is 78,000 weights, so it is computed and released in two blocks.
        var arch = Architecture.Create(300, [260], 10, Activation.Relu, Activation.Softmax, Loss.CrossEntropy);
        var data = TestNetworks.RandomDataset(40, 300, 10, 11);
        int[] batch = Enumerable.Range(0, 40).Reverse().ToArray();
        float[] theta = TestNetworks.ToFloat(TestNetworks.RandomParameters(arch, 12));
        TreeNode node = ChunkTree.Root(chunks);
        var whole = new float[arch.ParameterCount];
        BatchResult wholeResult = new NodeGradientComputer(arch, data).Compute(theta, batch, chunks, node, whole);

        var released = new float[arch.ParameterCount];
        var recorder = new Recorder(released, firstRowsFirst);
        BatchResult releasedResult = new NodeGradientComputer(arch, data).Compute(theta, batch, chunks, node, released, recorder);
        Assert.Equal(wholeResult, releasedResult);
        Assert.Equal(Bits(whole), Bits(released));
        // Layers last first; within layer 0 the blocks in the order asked for.
        int[] expectedStarts = firstRowsFirst ? [ReleaseBlocks.Range(arch, 1, 0).Start, 0, 130 * 300] : [ReleaseBlocks.Range(arch, 1, 0).Start, 130 * 300, 0];
        Assert.Equal(expectedStarts, recorder.Ranges.Select(r => r.Start));
        Assert.Equal(arch.ParameterCount, recorder.Ranges.Sum(r => r.Values.Length));
        // Each block as it was when released is what the gradient ended as: nothing released was written again.
        foreach (var (start, snapshot) in recorder.Ranges)
        {
            Assert.Equal(Bits(whole.AsSpan(start, snapshot.Length).ToArray()), Bits(snapshot));
        }

        // The shards' pieces tile the parameters, each inside one shard's slice and one block.
        var plan = new ShardPlan(arch.ParameterCount, shards);
        int next = 0;
        foreach (var (shard, start, count) in plan.Pieces(arch))
        {
            Assert.Equal(next, start);
            Assert.InRange(start, plan.Start(shard), plan.Start(shard) + plan.Count(shard) - count);
            Assert.Contains(recorder.Ranges, r => r.Start <= start && start + count <= r.Start + r.Values.Length);
            next = start + count;
        }
        Assert.Equal(arch.ParameterCount, next);
    }

    [Fact]
    public void AnOrderThatIsNotAPermutation_IsRefused()
    {
        var arch = Architecture.Create(300, [260], 10, Activation.Relu, Activation.Softmax, Loss.CrossEntropy);
        var data = TestNetworks.RandomDataset(4, 300, 10, 11);
        var gradient = new float[arch.ParameterCount];
        float[] theta = TestNetworks.ToFloat(TestNetworks.RandomParameters(arch, 12));
        var error = Assert.Throws<ArgumentException>(() =>
            new NodeGradientComputer(arch, data).Compute(theta, [0, 1, 2, 3], 1, ChunkTree.Root(1), gradient, new Duplicating()));
        Assert.Contains("not a permutation", error.Message);
    }

    private sealed class Recorder(float[] gradient, bool firstRowsFirst) : IGradientRelease
    {
        public List<(int Start, float[] Values)> Ranges { get; } = [];

        public void OrderBlocks(int layer, Span<int> order)
        {
            if (firstRowsFirst)
            {
                order.Reverse();
            }
        }

        public void Released(int start, int count) => Ranges.Add((start, gradient.AsSpan(start, count).ToArray()));
    }

    private sealed class Duplicating : IGradientRelease
    {
        public void OrderBlocks(int layer, Span<int> order) => order.Clear();

        public void Released(int start, int count)
        {
        }
    }

    private static int[] Bits(float[] values) => values.Select(BitConverter.SingleToInt32Bits).ToArray();
}

/// <summary>A worker's side of the overlap (<see cref="PieceRelease"/>): the blocks other nodes wait for first, each piece sent once.</summary>
public class PieceReleaseTests
{
    private static readonly Architecture Mnist = Architecture.Create(784, [256, 128], 10, Activation.Relu, Activation.Softmax, Loss.CrossEntropy);

    [Theory]
    [InlineData(false, true, new[] { 3, 2, 1, 0 })] // beside shard 0 (W_1's rows up to ~150): W_1's last rows go to shard 1
    [InlineData(true, false, new[] { 2, 1, 0, 3 })] // beside shard 1: W_1's first rows go to shard 0, its own last
    [InlineData(false, false, new[] { 3, 2, 1, 0 })] // both shards here (local mode): the backward pass's own order
    public void RemoteBlocksComeFirst_AndEveryPieceIsSentOnce_WhenItsBlockIsReleased(bool shard0Remote, bool shard1Remote, int[] expectedOrder)
    {
        var plan = new ShardPlan(Mnist.ParameterCount, 2);
        var sent = new List<(int Shard, int Start, int Count)>();
        var release = new PieceRelease(Mnist, plan, [shard0Remote, shard1Remote], (shard, start, count) => sent.Add((shard, start, count)));
        Assert.Equal(shard0Remote || shard1Remote, release.AnyRemote);
        int[] order = [3, 2, 1, 0];
        release.OrderBlocks(0, order);
        Assert.Equal(expectedOrder, order);

        for (int node = 0; node < 2; node++)
        {
            release.Begin();
            sent.Clear();
            // Layer 2, layer 1, then layer 0's blocks in the order asked for.
            foreach (var (layer, block) in new[] { (2, 0), (1, 0) }.Concat(order.Select(b => (0, b))))
            {
                var (start, count) = ReleaseBlocks.Range(Mnist, layer, block);
                int before = sent.Count;
                release.Released(start, count);
                Assert.All(sent.Skip(before), p => Assert.InRange(p.Start, start, start + count - p.Count));
                Assert.Equal(count, sent.Skip(before).Sum(p => p.Count));
            }
            release.SendRest(); // nothing left
            Assert.Equal(plan.Pieces(Mnist).Order(), sent.Order());
        }

        // Nothing released (a round's value): every piece at the end, the last first.
        release.Begin();
        sent.Clear();
        release.SendRest();
        Assert.Equal(plan.Pieces(Mnist).Reverse(), sent);
        Assert.Throws<ArgumentException>(() => new PieceRelease(Mnist, plan, [true], (_, _, _) => { }));
    }
}
