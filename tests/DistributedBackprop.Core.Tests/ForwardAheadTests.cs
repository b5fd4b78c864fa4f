using DistributedBackprop.Engine;
using DistributedBackprop.Network;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Tests;

/// <summary>
/// The forward pass run ahead of θ (issue 9's overlap on θ's way back): blocks run as their parameters arrive, never
/// read what has not, and the result has the bits of the plain forward pass; the shards' pieces of θ and a worker's
/// assembly of them.
/// </summary>
public class ForwardAheadTests
{
    /// <summary>300 → 260 → 300 → 7: both hidden layers' W (78,000 weights each) run in two blocks of units.</summary>
    private static readonly Architecture TwoBlockLayers = Architecture.Create(300, [260, 300], 7, Activation.Relu, Activation.Softmax, Loss.CrossEntropy);

    [Theory]
    [InlineData(1, 1UL)]
    [InlineData(2, 2UL)]
    [InlineData(3, 3UL)]
    [InlineData(5, 4UL)]
    public void ForwardAhead_OnPiecesInAnyOrder_NeverReadsWhatHasNotCome_AndHasThePlainPassBits(int shards, ulong seed)
    {
        Architecture arch = TwoBlockLayers;
        const int rows = 13;
        float[] theta = TestNetworks.ToFloat(TestNetworks.RandomParameters(arch, seed + 10));
        var (x, labels) = TestNetworks.RandomBatch(rows, arch.Inputs, arch.Outputs, seed + 20);
        var reference = new Network<float>(arch);
        TestNetworks.ToFloat(x).CopyTo(reference.Input(rows));
        reference.Forward(theta, rows);
        var referenceGradient = new float[arch.ParameterCount];
        BatchResult referenceResult = reference.Backward(theta, labels, [0, rows], rows, referenceGradient);

        // θ arrives piece by piece in a random order; what has not come is NaN, so reading it would show.
        var plan = new ShardPlan(arch.ParameterCount, shards);
        var pieces = Enumerable.Range(0, shards).SelectMany(s => plan.ParameterPieces(arch, s).Select(p => (Start: plan.Start(s) + p.Offset, p.Count))).ToList();
        var random = new Random((int)seed);
        pieces = pieces.OrderBy(_ => random.Next()).ToList();
        var arrived = Enumerable.Repeat(float.NaN, arch.ParameterCount).ToArray();
        var present = new NaivePresence(arch.ParameterCount);
        var ahead = new Network<float>(arch);
        TestNetworks.ToFloat(x).CopyTo(ahead.Input(rows));
        ahead.BeginForward(rows);
        for (int i = 0; i < pieces.Count; i++)
        {
            var (start, count) = pieces[i];
            theta.AsSpan(start, count).CopyTo(arrived.AsSpan(start));
            present.Add(start, count);
            Assert.Equal(i == pieces.Count - 1, ahead.AdvanceForward(arrived, present));
        }
        Assert.True(ahead.ForwardComplete);
        for (int l = 0; l < arch.Layers.Count; l++)
        {
            Assert.Equal(Bits(reference.PreActivations(l, rows)), Bits(ahead.PreActivations(l, rows)));
        }
        Assert.Equal(Bits(reference.Output(rows)), Bits(ahead.Output(rows)));
        var gradient = new float[arch.ParameterCount];
        Assert.Equal(referenceResult, ahead.Backward(theta, labels, [0, rows], rows, gradient));
        Assert.Equal(Bits(referenceGradient), Bits(gradient));
    }

    [Fact]
    public void ForwardAhead_RunsABlockAsSoonAsItsRowsOfWAndItsBiasAreThere_AndNotTheLayerAbove()
    {
        Architecture arch = TwoBlockLayers;
        const int rows = 9;
        float[] theta = TestNetworks.ToFloat(TestNetworks.RandomParameters(arch, 31));
        var (x, labels) = TestNetworks.RandomBatch(rows, arch.Inputs, arch.Outputs, 32);
        var reference = new Network<float>(arch);
        TestNetworks.ToFloat(x).CopyTo(reference.Input(rows));
        reference.Forward(theta, rows);

        var ahead = new Network<float>(arch);
        TestNetworks.ToFloat(x).CopyTo(ahead.Input(rows));
        ahead.BeginForward(rows);
        var present = new NaivePresence(arch.ParameterCount);
        // Block 1 of layer 0 (units 130..259) without its bias: nothing runs.
        present.Add(130 * 300, 130 * 300);
        Assert.False(ahead.AdvanceForward(theta, present));
        Assert.DoesNotContain(ahead.PreActivations(0, rows).ToArray().Where((_, i) => i % 260 >= 130), v => v != 0);
        // With its bias: that block's columns are final; block 0's are not computed.
        present.Add(arch.BiasOffset(0), 260);
        Assert.False(ahead.AdvanceForward(theta, present));
        for (int r = 0; r < rows; r++)
        {
            Assert.Equal(Bits(reference.PreActivations(0, rows).Slice(r * 260 + 130, 130)), Bits(ahead.PreActivations(0, rows).Slice(r * 260 + 130, 130)));
            Assert.DoesNotContain(ahead.PreActivations(0, rows).Slice(r * 260, 130).ToArray(), v => v != 0);
        }
        // All of layer 1 there but layer 0 not done: layer 1 waits (it needs a_0 whole).
        present.Add(arch.WeightOffset(1), arch.WeightOffset(2) - arch.WeightOffset(1));
        Assert.False(ahead.AdvanceForward(theta, present));
        Assert.DoesNotContain(ahead.PreActivations(1, rows).ToArray(), v => v != 0);
        Assert.Throws<InvalidOperationException>(() => ahead.Backward(theta, labels, [0, rows], rows, new float[arch.ParameterCount]));
    }

    [Fact]
    public void AComputer_FinishesTheNodeItRanAhead_AndStartsAnyOtherAfresh_WithTheBitsOfAPlainCompute()
    {
        Architecture arch = TwoBlockLayers;
        var data = TestNetworks.RandomDataset(40, arch.Inputs, arch.Outputs, 41);
        var config = new TrainingConfig { BatchSize = 16, Seed = 42, Chunks = 4 };
        EpochPlan plan = EpochPlan.Create(data.Rows, config.BatchSize, config.Seed, epoch: 1);
        float[] theta = TestNetworks.ToFloat(TestNetworks.RandomParameters(arch, 43));
        TreeNode first = new(0, 2), other = new(2, 2);

        float[] Plain(TreeNode node)
        {
            var gradient = new float[arch.ParameterCount];
            UpdateParts.CreateComputer(config, arch, data).Compute(theta, plan, 1, node, gradient, []);
            return gradient;
        }

        var computer = (IUpdatePartComputer)UpdateParts.CreateComputer(config, arch, data);
        var ahead = Assert.IsAssignableFrom<IForwardAhead>(computer);
        Assert.False(ahead.AdvanceForward(theta, AllParameters.Instance)); // nothing begun
        var present = new NaivePresence(arch.ParameterCount);
        present.Add(0, arch.WeightOffset(1));
        ahead.BeginForward(plan, 1, first);
        Assert.False(ahead.AdvanceForward(theta, present));
        var gradient = new float[arch.ParameterCount];
        computer.Compute(theta, plan, 1, first, gradient, []);
        Assert.Equal(Bits(Plain(first)), Bits(gradient));

        // Begun for one node, computed for another: that one from the start; the begun one is dropped.
        ahead.BeginForward(plan, 1, first);
        Assert.True(ahead.AdvanceForward(theta, AllParameters.Instance));
        computer.Compute(theta, plan, 1, other, gradient, []);
        Assert.Equal(Bits(Plain(other)), Bits(gradient));
        computer.Compute(theta, plan, 1, first, gradient, []);
        Assert.Equal(Bits(Plain(first)), Bits(gradient));

        // The pass run ahead is what Compute finishes: run on other values (a caller's breach of contract), it shows.
        float[] otherTheta = TestNetworks.ToFloat(TestNetworks.RandomParameters(arch, 44));
        ahead.BeginForward(plan, 1, first);
        ahead.AdvanceForward(otherTheta, present);
        computer.Compute(theta, plan, 1, first, gradient, []);
        Assert.NotEqual(Bits(Plain(first)), Bits(gradient));
        // Abandoned, it is not finished: the same node and step start afresh.
        ahead.BeginForward(plan, 1, first);
        ahead.AdvanceForward(otherTheta, present);
        ahead.Abandon();
        Assert.False(ahead.AdvanceForward(theta, present));
        computer.Compute(theta, plan, 1, first, gradient, []);
        Assert.Equal(Bits(Plain(first)), Bits(gradient));
    }

    [Fact]
    public void ParameterPieces_Of784_256_128_10_InTwoShards_PutEachLayersBiasFirst()
    {
        var arch = Architecture.Create(784, [256, 128], 10, Activation.Relu, Activation.Softmax, Loss.CrossEntropy);
        var plan = new ShardPlan(arch.ParameterCount, 2);
        int start1 = plan.Start(1);
        Assert.Equal(117_573, start1);
        // Shard 0: W_1's rows cut where the forward pass's blocks of 64 units start.
        Assert.Equal([(0, 64 * 784), (64 * 784, 64 * 784), (128 * 784, start1 - 128 * 784)], plan.ParameterPieces(arch, 0));
        // Shard 1: b_1 first (every block of layer 1 needs it), then its rows of W_1; layer 2 and 3 likewise.
        Assert.Equal(
        [
            (arch.BiasOffset(0) - start1, 256),
            (0, 192 * 784 - start1),
            (192 * 784 - start1, 64 * 784),
            (arch.BiasOffset(1) - start1, 128),
            (arch.WeightOffset(1) - start1, 128 * 256),
            (arch.BiasOffset(2) - start1, 10),
            (arch.WeightOffset(2) - start1, 10 * 128),
        ], plan.ParameterPieces(arch, 1));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(7)]
    public void ParameterPieces_TileEachSlice_EachInsideOneBlockOfUnitsOrOneBias(int shards)
    {
        Architecture arch = TwoBlockLayers;
        var plan = new ShardPlan(arch.ParameterCount, shards);
        int[] blockStarts = ReleaseBlocks.Starts(arch);
        for (int s = 0; s < shards; s++)
        {
            var pieces = plan.ParameterPieces(arch, s).OrderBy(p => p.Offset).ToArray();
            int next = 0;
            foreach (var (offset, count) in pieces)
            {
                Assert.Equal(next, offset);
                Assert.True(count > 0);
                int from = plan.Start(s) + offset, to = from + count;
                Assert.DoesNotContain(blockStarts, b => b > from && b < to);
                Assert.DoesNotContain(Enumerable.Range(0, arch.Layers.Count).Select(arch.BiasOffset), b => b > from && b < to);
                next = offset + count;
            }
            Assert.Equal(plan.Count(s), next);
        }
    }

    [Fact]
    public void ThetaAssembly_TakesOnlyThePiecesOfTheCut_KnowsWhatIsThereForWhichStep_AndWhenThetaIsWhole()
    {
        Architecture arch = TwoBlockLayers;
        var plan = new ShardPlan(arch.ParameterCount, 2);
        var assembly = new ThetaAssembly(arch, plan);
        float[] theta = TestNetworks.ToFloat(TestNetworks.RandomParameters(arch, 51));
        (int Offset, int Count)[][] pieces = [plan.ParameterPieces(arch, 0), plan.ParameterPieces(arch, 1)];
        bool Take(int shard, long step, int piece) =>
            assembly.Take(shard, step, pieces[shard][piece].Offset, theta.AsSpan(plan.Start(shard) + pieces[shard][piece].Offset, pieces[shard][piece].Count));

        Assert.Equal(-1, assembly.WholeStep);
        var (offset, count) = pieces[1][0];
        Assert.False(assembly.Take(1, 5, offset + 1, theta.AsSpan(0, count)));         // not where a piece starts
        Assert.False(assembly.Take(1, 5, offset, theta.AsSpan(0, count - 1)));         // not a piece's length
        Assert.False(assembly.Take(2, 5, offset, theta.AsSpan(0, count)));             // no such shard
        Assert.False(assembly.Take(-1, 5, offset, theta.AsSpan(0, count)));
        Assert.False(assembly.Take(1, 5, -offset - 1, theta.AsSpan(0, count)));
        Assert.False(assembly.Take(1, 5, int.MinValue, theta.AsSpan(0, count)));
        Assert.False(assembly.Take(1, -1, offset, theta.AsSpan(0, count)));            // no step is below 0
        Assert.Equal(-1, assembly.NewestStep);

        Assert.True(Take(1, 5, 0));
        // Shard 1 starts inside W_2: its first piece is b_2.
        int bias = arch.BiasOffset(1);
        Assert.Equal(bias, plan.Start(1) + pieces[1][0].Offset);
        Assert.True(assembly.Has(5, bias, 300));
        Assert.False(assembly.Has(4, bias, 300));
        Assert.False(assembly.Has(5, bias - 1, 2));
        for (int p = 1; p < pieces[1].Length; p++)
        {
            Assert.True(Take(1, 5, p));
        }
        Assert.True(Take(1, 5, 2)); // a duplicate changes nothing
        Assert.Equal(-1, assembly.WholeStep);
        for (int p = 0; p < pieces[0].Length; p++)
        {
            Assert.True(Take(0, 5, p));
        }
        Assert.Equal(5, assembly.WholeStep);
        Assert.Equal(Bits(theta), Bits(assembly.Theta));
        Assert.True(assembly.At(5).Has(0, arch.ParameterCount));

        // A newer step's piece starts the shard afresh; an older step's is refused.
        // Shard 0 sends b_1 (piece 0) before W_1's first rows (piece 1, at 0).
        Assert.Equal((arch.BiasOffset(0), 0), (pieces[0][0].Offset, pieces[0][1].Offset));
        Assert.True(Take(0, 6, 1));
        Assert.Equal(-1, assembly.WholeStep);
        Assert.Equal((5L, 6L), (assembly.OldestStep, assembly.NewestStep));
        Assert.False(assembly.Has(5, 0, 1));
        Assert.True(assembly.Has(6, 0, pieces[0][1].Count));
        Assert.False(assembly.Has(6, arch.BiasOffset(0), 1));
        Assert.False(Take(0, 5, 0));
        Assert.True(assembly.Has(5, plan.Start(1), plan.Count(1)));
        // Ranges that are empty or not in θ are not there.
        Assert.False(assembly.Has(5, plan.Start(1), 0));
        Assert.False(assembly.Has(5, plan.Start(1), -1));
        Assert.False(assembly.Has(5, arch.ParameterCount - 1, 2));
        Assert.False(assembly.Has(5, -1, 2));
    }

    /// <summary>The definition: a flag per parameter.</summary>
    private sealed class NaivePresence(int parameters) : IParameterPresence
    {
        private readonly bool[] _present = new bool[parameters];

        public void Add(int start, int count) => _present.AsSpan(start, count).Fill(true);

        public bool Has(int start, int count) => !_present.AsSpan(start, count).Contains(false);
    }

    private static int[] Bits(ReadOnlySpan<float> values) => values.ToArray().Select(BitConverter.SingleToInt32Bits).ToArray();
}
