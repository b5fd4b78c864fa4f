using DistributedBackprop.Engine;
using DistributedBackprop.Network;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Tests;

/// <summary>
/// The backward pass's releases (issue 9's overlap): where they fall, that what is released is final, and that
/// computing ∂J/∂W in released blocks gives the bits of computing it whole.
/// </summary>
public class GradientReleaseTests
{
    [Fact]
    public void ReleasePoints_Of784_256_128_10_AreEachLayerAndFourBlocksOfTheFirst()
    {
        var arch = Architecture.Create(784, [256, 128], 10, Activation.Relu, Activation.Softmax, Loss.CrossEntropy);
        // W_1 is 256 × 784 = 200,704 weights: four blocks of 64 rows (50,176 weights), the last rows first.
        Assert.Equal([arch.WeightOffset(2), arch.WeightOffset(1), 192 * 784, 128 * 784, 64 * 784, 0], ReleaseOrder.Points(arch));
        Assert.Equal(64, ReleaseOrder.BlockRows(arch, 0));
        Assert.Equal(128, ReleaseOrder.BlockRows(arch, 1));
    }

    [Theory]
    [InlineData(3, 2, 2)]
    [InlineData(300, 260, 10)]
    [InlineData(70_000, 3, 2)]
    public void ReleasePoints_Decrease_EndAtZero_StartEveryLayer_AndHoldAtMostABlock(int inputs, int hidden, int outputs)
    {
        var arch = Architecture.Create(inputs, [hidden], outputs, Activation.Relu, Activation.Softmax, Loss.CrossEntropy);
        int[] points = ReleaseOrder.Points(arch);
        Assert.Equal(0, points[^1]);
        int previous = arch.ParameterCount;
        foreach (int point in points)
        {
            Assert.True(point < previous, $"{point} after {previous}");
            int layer = Enumerable.Range(0, arch.Layers.Count).Last(l => arch.WeightOffset(l) <= point);
            int weights = Math.Min(previous, arch.BiasOffset(layer)) - point;
            Assert.True(weights <= Math.Max(ReleaseOrder.BlockFloats, arch.Layers[layer].Inputs), $"a block of {weights} weights");
            previous = point;
        }
        for (int l = 0; l < arch.Layers.Count; l++)
        {
            Assert.Contains(arch.WeightOffset(l), points);
        }
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(3, 2)]
    [InlineData(8, 5)]
    public void WhatIsReleased_IsFinal_AndTheGradientHasTheBitsOfOneWithoutReleases(int chunks, int shards)
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
        var recorder = new Recorder(released);
        BatchResult releasedResult = new NodeGradientComputer(arch, data).Compute(theta, batch, chunks, node, released, recorder);
        Assert.Equal(wholeResult, releasedResult);
        Assert.Equal(ReleaseOrder.Points(arch), recorder.Points);
        Assert.Equal(Bits(whole), Bits(released));
        // Each suffix as it was when released is what the gradient ended as: nothing released was written again.
        foreach (var (from, snapshot) in recorder.Snapshots)
        {
            Assert.Equal(Bits(whole.AsSpan(from).ToArray()), Bits(snapshot));
        }

        // The shards' pieces tile the parameters, each inside one shard's slice and one release.
        var plan = new ShardPlan(arch.ParameterCount, shards);
        var pieces = plan.Pieces(arch);
        int next = 0;
        foreach (var (shard, start, count) in pieces)
        {
            Assert.Equal(next, start);
            Assert.InRange(start, plan.Start(shard), plan.Start(shard) + plan.Count(shard) - count);
            int releasedAt = recorder.Points.First(p => p <= start);
            Assert.True(start + count <= recorder.Points.Prepend(arch.ParameterCount).Last(p => p > releasedAt), $"piece at {start} spans two releases");
            next = start + count;
        }
        Assert.Equal(arch.ParameterCount, next);
    }

    private sealed class Recorder(float[] gradient) : IGradientRelease
    {
        public List<int> Points { get; } = [];
        public List<(int From, float[] Values)> Snapshots { get; } = [];

        public void Released(int from)
        {
            Points.Add(from);
            Snapshots.Add((from, gradient.AsSpan(from).ToArray()));
        }
    }

    private static int[] Bits(float[] values) => values.Select(BitConverter.SingleToInt32Bits).ToArray();
}
