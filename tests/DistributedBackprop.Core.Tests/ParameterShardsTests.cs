using DistributedBackprop.Engine;
using DistributedBackprop.Network;
using DistributedBackprop.Optimizers;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Tests;

/// <summary>
/// The parameter shards' arithmetic against the whole update: K slices, each summed along the chunk tree and
/// updated on its own, give the bits of one <see cref="Optimizer.ApplyRange"/> over a <see cref="TreeReducer"/>'s
/// sum, for every optimizer, over several steps (Adam's t), with weight decay (which spares the biases, so
/// slices that cut a layer's weights from its biases are checked).
/// </summary>
public class ParameterShardsTests
{
    private static readonly Architecture Arch = Architecture.Create(7, [5, 4], 3, Activation.Relu, Activation.Softmax, Loss.CrossEntropy);
    private const int Chunks = 5;

    [Theory]
    [InlineData(1, 3)]
    [InlineData(7, 3)]
    [InlineData(10, 10)]
    [InlineData(99, 4)]
    public void ShardPlan_CutsEveryParameterOnce_InContiguousSlicesOfNearlyEqualSize(int parameters, int shards)
    {
        if (shards > parameters)
        {
            Assert.Throws<ArgumentOutOfRangeException>(() => new ShardPlan(parameters, shards));
            return;
        }
        var plan = new ShardPlan(parameters, shards);
        Assert.Equal(0, plan.Start(0));
        for (int s = 0; s < shards; s++)
        {
            Assert.InRange(plan.Count(s), parameters / shards, parameters / shards + 1);
            Assert.Equal(plan.Start(s) + plan.Count(s), s + 1 < shards ? plan.Start(s + 1) : parameters);
        }
    }

    public static TheoryData<OptimizerKind, bool, int> Cases => new()
    {
        { OptimizerKind.Sgd, false, 2 },
        { OptimizerKind.Momentum, true, 3 },
        { OptimizerKind.Momentum, false, 5 },
        { OptimizerKind.Adam, false, 4 },
        { OptimizerKind.Adam, false, 1 },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void KShards_GiveTheWholeUpdatesBits_StepAfterStep(OptimizerKind kind, bool nesterov, int shards)
    {
        var settings = new OptimizerSettings { Kind = kind, Nesterov = nesterov, WeightDecay = 0.01f, LearningRate = 0.05f };
        var random = new Randomness.Xoshiro256(7);
        float[] whole = Enumerable.Range(0, Arch.ParameterCount).Select(_ => random.NextSingle() - 0.5f).ToArray();
        var optimizer = new Optimizer(Arch, settings);
        var plan = new ShardPlan(Arch.ParameterCount, shards);
        var updates = Enumerable.Range(0, shards).Select(s => new ShardUpdate(Arch, settings, Chunks, plan.Start(s),
            whole.AsSpan(plan.Start(s), plan.Count(s)).ToArray(), 0, ShardUpdate.StateSlicesOf(optimizer, plan.Start(s), plan.Count(s)))).ToArray();
        var reducer = new TreeReducer(Chunks, Arch.ParameterCount);
        for (int step = 0; step < 4; step++)
        {
            // The step's node gradients, as workers would send them: nodes [0,4) and [4,5) (scaled so sums carry rounding).
            (TreeNode Node, float[] Gradient)[] nodes = [(new TreeNode(0, 4), Random(random, 3f)), (new TreeNode(4, 1), Random(random, 0.001f))];
            reducer.Reset();
            foreach (var (node, gradient) in nodes)
            {
                Assert.True(reducer.TryAdd(node, (float[])gradient.Clone(), default));
            }
            float[] sum = reducer.Reduce().Gradient;
            optimizer.BeginStep();
            optimizer.ApplyRange(whole, sum, 0.05f, 0, whole.Length);
            for (int s = 0; s < shards; s++)
            {
                // Pieces as the backward pass releases them (the last first), the nodes' pieces interleaved.
                foreach (var (offset, count) in updates[s].Pieces.Reverse())
                {
                    Assert.False(updates[s].IsComplete);
                    foreach (var (node, gradient) in nodes)
                    {
                        Assert.True(updates[s].TryAdd(node, offset, gradient.AsSpan(plan.Start(s) + offset, count).ToArray()));
                    }
                    Assert.False(updates[s].TryAdd(new TreeNode(4, 1), offset, new float[count])); // a duplicate
                }
                Assert.True(updates[s].IsComplete);
                Assert.True(updates[s].Reduce());
                Assert.True(updates[s].Apply(0.05f));
                updates[s].Reset();
            }
            var gathered = new float[whole.Length];
            var gatheredOptimizer = new Optimizer(Arch, settings);
            for (int s = 0; s < shards; s++)
            {
                ShardUpdate.Gather(gathered, gatheredOptimizer, updates[s].Start, updates[s].Parameters, updates[s].StateSlices());
                Assert.Equal(optimizer.Steps, updates[s].OptimizerSteps);
            }
            Assert.Equal(Bits(whole), Bits(gathered));
            foreach (var ((_, expected), (_, actual)) in optimizer.StateTensors().Zip(gatheredOptimizer.StateTensors()))
            {
                Assert.Equal(Bits(expected), Bits(actual));
            }
        }
    }

    [Fact]
    public void ANonFiniteSum_IsReported_AndTheSliceIsNotWritten()
    {
        var settings = new OptimizerSettings { Kind = OptimizerKind.Adam };
        var optimizer = new Optimizer(Arch, settings);
        float[] slice = Enumerable.Range(0, 10).Select(i => i * 0.1f).ToArray();
        var update = new ShardUpdate(Arch, settings, 1, 20, (float[])slice.Clone(), 0, ShardUpdate.StateSlicesOf(optimizer, 20, 10));
        float[] poisoned = new float[10];
        poisoned[3] = float.PositiveInfinity;
        Assert.True(update.TryAdd(new TreeNode(0, 1), 0, poisoned));
        Assert.False(update.Reduce());
        Assert.Equal(Bits(slice), Bits(update.Parameters));
        Assert.Equal(0, update.OptimizerSteps);
    }

    [Theory]
    [InlineData(OptimizerKind.Sgd)]
    [InlineData(OptimizerKind.Adam)]
    public void AnUpdateThatOverflows_IsReportedByTheShard(OptimizerKind kind)
    {
        // A finite sum whose update is not: SGD's w − γg with γ = 1e30; Adam's v ← β2 v + (1 − β2) g² with g = 1e30.
        var settings = new OptimizerSettings { Kind = kind };
        var optimizer = new Optimizer(Arch, settings);
        var update = new ShardUpdate(Arch, settings, 1, 20, new float[10], 0, ShardUpdate.StateSlicesOf(optimizer, 20, 10));
        float[] gradient = Enumerable.Repeat(0.5f, 10).ToArray();
        gradient[9] = kind == OptimizerKind.Adam ? 1e30f : 1e10f;
        Assert.True(update.TryAdd(new TreeNode(0, 1), 0, gradient));
        Assert.True(update.Reduce());
        Assert.False(update.Apply(kind == OptimizerKind.Adam ? 1e-3f : 1e30f));
    }

    [Fact]
    public void MissingRuns_AreTheUncoveredPartsInContiguousRuns()
    {
        var settings = new OptimizerSettings { Kind = OptimizerKind.Sgd };
        var update = new ShardUpdate(Arch, settings, 8, 0, new float[10], 0, []);
        Assert.Equal([(0, 8)], update.MissingRuns());
        Assert.True(update.TryAdd(new TreeNode(2, 2), 0, new float[10]));
        Assert.True(update.TryAdd(new TreeNode(6, 1), 0, new float[10]));
        Assert.Equal([(0, 2), (4, 6), (7, 8)], update.MissingRuns());
        Assert.False(update.TryAdd(new TreeNode(0, 4), 0, new float[10])); // overlaps [2,4): refused, [0,2) stays missing
        Assert.Equal([(0, 2), (4, 6), (7, 8)], update.MissingRuns());
    }

    /// <summary>
    /// A slice that a release point cuts (Arch's W_2 starts at 40) comes in two pieces: a part is missing until
    /// both of its pieces are in, a piece is summed as soon as its parts are, and a piece the cut does not have is
    /// refused (the shard reports its sender).
    /// </summary>
    [Fact]
    public void ASliceInPieces_CountsAPartOnlyWithAllItsPieces_AndRefusesPiecesItDoesNotHave()
    {
        var settings = new OptimizerSettings { Kind = OptimizerKind.Sgd };
        var update = new ShardUpdate(Arch, settings, 4, 30, new float[20], 0, []);
        Assert.Equal([(0, 10), (10, 10)], update.Pieces);
        Assert.True(update.TryAdd(new TreeNode(0, 4), 10, new float[10]));
        Assert.Equal([(0, 4)], update.MissingRuns());
        Assert.True(update.TryAdd(new TreeNode(0, 2), 0, new float[10]));
        Assert.Equal([(2, 4)], update.MissingRuns());
        Assert.False(update.IsComplete);
        Assert.Throws<ArgumentException>(() => update.TryAdd(new TreeNode(2, 2), 0, new float[20]));
        Assert.Throws<ArgumentException>(() => update.TryAdd(new TreeNode(2, 2), 5, new float[10]));
        Assert.Equal(-1, update.PieceAt(0, 20));
        Assert.True(update.TryAdd(new TreeNode(2, 2), 0, new float[10]));
        Assert.True(update.IsComplete);
        Assert.Empty(update.MissingRuns());
        Assert.True(update.Reduce());
    }

    /// <summary>
    /// Pieces lost crosswise (node [2,4)'s first piece and node [0,2)'s second arrived, the other halves did not):
    /// the missing runs are cut where the pieces' coverage changes, so the nodes they are computed again as each
    /// complete a piece instead of being refused by both as duplicates (one run [0,4) would come back as node
    /// [0,4), which overlaps what each piece has).
    /// </summary>
    [Fact]
    public void MissingRuns_AfterPiecesLostCrosswise_AreNodesEachPieceTakes()
    {
        var settings = new OptimizerSettings { Kind = OptimizerKind.Sgd };
        var update = new ShardUpdate(Arch, settings, 4, 30, new float[20], 0, []);
        Assert.True(update.TryAdd(new TreeNode(2, 2), 0, new float[10]));
        Assert.True(update.TryAdd(new TreeNode(0, 2), 10, new float[10]));
        List<(int Lo, int Hi)> runs = update.MissingRuns();
        Assert.Equal([(0, 2), (2, 4)], runs);
        foreach (var (lo, hi) in runs)
        {
            foreach (TreeNode node in ChunkTree.Decompose(lo, hi, 4))
            {
                foreach (var (offset, count) in update.Pieces)
                {
                    update.TryAdd(node, offset, new float[count]);
                }
            }
        }
        Assert.True(update.IsComplete);
        Assert.Empty(update.MissingRuns());
    }

    [Fact]
    public void StateSlicesThatDoNotFitTheOptimizer_AreRefused()
    {
        var settings = new OptimizerSettings { Kind = OptimizerKind.Adam };
        Assert.Throws<ArgumentException>(() => new ShardUpdate(Arch, settings, 2, 0, new float[4], 0, [new float[4]]));
        Assert.Throws<ArgumentException>(() => new ShardUpdate(Arch, settings, 2, Arch.ParameterCount - 2, new float[4], 0, [new float[4], new float[4]]));
    }

    private static float[] Random(Randomness.Xoshiro256 random, float scale) =>
        Enumerable.Range(0, Arch.ParameterCount).Select(_ => (random.NextSingle() - 0.5f) * scale).ToArray();

    private static int[] Bits(float[] values) => values.Select(BitConverter.SingleToInt32Bits).ToArray();
}
