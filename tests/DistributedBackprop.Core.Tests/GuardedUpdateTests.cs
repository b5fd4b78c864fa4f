using DistributedBackprop.Data;
using DistributedBackprop.Engine;
using DistributedBackprop.Kernels;
using DistributedBackprop.Network;
using DistributedBackprop.Optimizers;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Tests;

public class GuardedUpdateTests
{
    private const int Chunks = 4;

    private static TrainingSession Session(OptimizerKind kind, float learningRate, int hidden = 7) => TrainingSession.Prepare(new TrainingConfig
    {
        HiddenLayers = [hidden],
        Epochs = 2,
        BatchSize = 16,
        Chunks = Chunks,
        Seed = 11,
        Optimizer = new OptimizerSettings { Kind = kind, LearningRate = learningRate, WeightDecay = 0.01f },
    }, TestNetworks.RandomDataset(64, 5, 3, 2), null, 0);

    /// <summary>
    /// A reducer holding one gradient per chunk, filled by <paramref name="value"/>(chunk, index); each with its bound
    /// (<see cref="FiniteValues.Bound"/>) if <paramref name="bounded"/>, as local workers and the plain trainer's lanes give it.
    /// </summary>
    private static TreeReducer Reducer(int parameters, Func<int, int, float> value, bool bounded = false)
    {
        var reducer = new TreeReducer(Chunks, parameters);
        Fill(reducer, parameters, value, bounded);
        return reducer;
    }

    private static void Fill(TreeReducer reducer, int parameters, Func<int, int, float> value, bool bounded)
    {
        for (int c = 0; c < Chunks; c++)
        {
            float[] gradient = new float[parameters];
            for (int i = 0; i < parameters; i++)
            {
                gradient[i] = value(c, i);
            }
            float bound = bounded ? FiniteValues.Bound(gradient) : float.PositiveInfinity;
            Assert.True(reducer.TryAdd(new TreeNode(c, 1), gradient, new BatchResult(1, 0, 1), default, bound));
        }
    }

    private static float[][] State(TrainingSession session) =>
        [(float[])session.Parameters.Clone(), .. session.Optimizer.StateTensors().Select(s => (float[])s.Values.Clone())];

    private static void AssertBitsEqual(float[][] expected, float[][] actual)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int t = 0; t < expected.Length; t++)
        {
            Assert.Equal(expected[t].Select(BitConverter.SingleToInt32Bits), actual[t].Select(BitConverter.SingleToInt32Bits));
        }
    }

    private static void Sequential(Action<int> work, int lanes)
    {
        for (int lane = 0; lane < lanes; lane++)
        {
            work(lane);
        }
    }

    /// <remarks>
    /// A hidden layer of 2,000 makes 18,003 parameters (5 inputs, 3 classes): several of the update's 4,096-value blocks
    /// per lane, the last one partial, walked backwards by the apply pass (every block must be applied once); 1,365 makes
    /// 12,288 = 3 whole blocks (one lane) or one per lane (three); 70 lanes of hidden 7's 66 parameters leave some lanes empty.
    /// </remarks>
    [Theory]
    [InlineData(OptimizerKind.Sgd, 1, 7)]
    [InlineData(OptimizerKind.Momentum, 3, 7)]
    [InlineData(OptimizerKind.Adam, 5, 7)]
    [InlineData(OptimizerKind.Sgd, 1, 2000)]
    [InlineData(OptimizerKind.Sgd, 2, 2000)]
    [InlineData(OptimizerKind.Adam, 3, 2000)]
    [InlineData(OptimizerKind.Sgd, 1, 1365)]
    [InlineData(OptimizerKind.Momentum, 3, 1365)]
    [InlineData(OptimizerKind.Sgd, 70, 7)]
    public void Applied_GivesTheBitsOfTheUnguardedUpdate_WithAnyNumberOfLanes(OptimizerKind kind, int lanes, int hidden)
    {
        // Checked first (two passes), and with every gradient bounded (added and applied in one pass).
        TrainingSession guarded = Session(kind, 0.1f, hidden), bounded = Session(kind, 0.1f, hidden), plain = Session(kind, 0.1f, hidden);
        int n = guarded.Parameters.Length;
        Func<int, int, float> value = (c, i) => MathF.Sin(c * 31 + i) * 0.1f;
        for (int step = 0; step < 3; step++)
        {
            foreach (var (session, withBounds) in new[] { (guarded, false), (bounded, true) })
            {
                TreeReducer reducer = Reducer(n, value, withBounds);
                var (gradient, _) = reducer.Plan();
                Assert.Equal(withBounds, reducer.SumIsFinite);
                var update = new GuardedUpdate(session, reducer, lanes);
                Assert.Equal(UpdateOutcome.Applied, update.Apply(gradient, work => Parallel.For(0, lanes, work), out _));
                session.EndStep();
            }

            var (reference, _) = Reducer(n, value).Reduce();
            plain.ApplyStep(reference);
        }
        AssertBitsEqual(State(plain), State(guarded));
        AssertBitsEqual(State(plain), State(bounded));
        Assert.Equal(plain.Optimizer.Steps, guarded.Optimizer.Steps);
        Assert.Equal(plain.Optimizer.Steps, bounded.Optimizer.Steps);
    }

    /// <summary>
    /// Replicated (local mode's two workers, each on its own copy of θ): every copy ends with the bits of the unguarded
    /// update, whether the sum is taken in one pass by every lane at once (one or two nodes: only the root's addition,
    /// into each lane's scratch) or reduced in slices first (four nodes: the other additions write the nodes' buffers),
    /// bounded or not, for several steps (the copies' optimizer state must follow too).
    /// </summary>
    [Theory]
    [InlineData(OptimizerKind.Sgd, 2, 1, true)]
    [InlineData(OptimizerKind.Adam, 2, 2, true)]
    [InlineData(OptimizerKind.Momentum, 2, 2, false)]
    [InlineData(OptimizerKind.Adam, 2, 4, true)]
    [InlineData(OptimizerKind.Momentum, 3, 4, false)]
    [InlineData(OptimizerKind.Sgd, 3, 2, true)]
    public void Replicated_GivesEveryCopyTheBitsOfTheUnguardedUpdate(OptimizerKind kind, int lanes, int nodes, bool bounded)
    {
        TrainingSession replicated = Session(kind, 0.1f, 2000), plain = Session(kind, 0.1f, 2000);
        int n = replicated.Parameters.Length;
        var reducer = new TreeReducer(Chunks, n);
        var update = new GuardedUpdate(replicated, reducer, lanes, replicated: true);
        Assert.True(update.Replicated);
        for (int step = 0; step < 3; step++)
        {
            reducer.Reset();
            float[] reference = new float[n];
            var parts = new List<float[]>();
            int size = Chunks / nodes;
            for (int node = 0; node < nodes; node++)
            {
                float[] gradient = Enumerable.Range(0, n).Select(i => MathF.Sin(step * 7 + node * 31 + i) * 0.1f).ToArray();
                parts.Add((float[])gradient.Clone());
                float bound = bounded ? FiniteValues.Bound(gradient) : float.PositiveInfinity;
                Assert.True(reducer.TryAdd(new TreeNode(node * size, size), gradient, new BatchResult(1, 0, 1), default, bound));
            }
            var (sum, _) = reducer.Plan();
            Assert.Equal(nodes <= 2, reducer.SumRangeOnlyReads);
            Assert.Equal(UpdateOutcome.Applied, update.Apply(sum, work => Parallel.For(0, lanes, work), out _));
            replicated.EndStep();
            // The canonical tree over the nodes: ((0 + 1) + (2 + 3)) for four, (0 + 1) for two.
            float[] expected = nodes switch
            {
                1 => parts[0],
                2 => Add(parts[0], parts[1]),
                _ => Add(Add(parts[0], parts[1]), Add(parts[2], parts[3])),
            };
            plain.ApplyStep(expected);
            for (int copy = 0; copy < lanes; copy++)
            {
                Assert.Equal(plain.Parameters.Select(BitConverter.SingleToInt32Bits), update.CopyOf(copy).Select(BitConverter.SingleToInt32Bits));
            }
        }
        Assert.Same(replicated.Parameters, update.CopyOf(0));
        AssertBitsEqual(State(plain), State(replicated));
    }

    /// <summary>
    /// The copies follow the session's θ and optimizer state when told to (<see cref="GuardedUpdate.SyncCopies"/>), and
    /// their updates then continue with the session's bits.
    /// </summary>
    [Fact]
    public void SyncCopies_MakesEveryCopyTheSessionsState()
    {
        TrainingSession session = Session(OptimizerKind.Adam, 0.1f, 2000);
        var reducer = new TreeReducer(Chunks, session.Parameters.Length);
        var update = new GuardedUpdate(session, reducer, 2, replicated: true);
        session.Parameters.AsSpan().Fill(0.25f);
        session.Optimizer.FirstMoment!.AsSpan().Fill(0.5f);
        session.Optimizer.Steps = 9;
        update.SyncCopies();
        float[] gradient = Enumerable.Range(0, session.Parameters.Length).Select(i => MathF.Cos(i) * 0.2f).ToArray();
        Assert.True(reducer.TryAdd(ChunkTree.Root(Chunks), gradient, new BatchResult(1, 0, 1), default, FiniteValues.Bound(gradient)));
        Assert.Equal(UpdateOutcome.Applied, update.Apply(reducer.Plan().Gradient, work => Sequential(work, 2), out _));
        Assert.Equal(session.Parameters.Select(BitConverter.SingleToInt32Bits), update.CopyOf(1).Select(BitConverter.SingleToInt32Bits));
        Assert.NotEqual(0.25f, update.CopyOf(1)[0]);
    }

    private static float[] Add(float[] left, float[] right) => left.Zip(right, (l, r) => l + r).ToArray();

    /// <summary>
    /// One node (the plain trainer's one lane, local mode's one worker): nothing to add, the root's own values are applied
    /// with no copy through the lane's scratch, and are left as they were.
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    public void ABoundedSingleNode_IsAppliedAsTheUnguardedUpdate(int lanes)
    {
        TrainingSession bounded = Session(OptimizerKind.Momentum, 0.1f, 2000), plain = Session(OptimizerKind.Momentum, 0.1f, 2000);
        float[] gradient = Enumerable.Range(0, bounded.Parameters.Length).Select(i => MathF.Cos(i) * 0.2f).ToArray();
        float[] kept = (float[])gradient.Clone();
        var reducer = new TreeReducer(Chunks, gradient.Length);
        Assert.True(reducer.TryAdd(ChunkTree.Root(Chunks), gradient, new BatchResult(1, 0, 1), default, FiniteValues.Bound(gradient)));
        Assert.True(reducer.SumIsFinite);

        Assert.Equal(UpdateOutcome.Applied, new GuardedUpdate(bounded, reducer, lanes).Apply(reducer.Plan().Gradient, work => Sequential(work, lanes), out _));
        bounded.EndStep();
        plain.ApplyStep(kept);

        AssertBitsEqual(State(plain), State(bounded));
        Assert.Equal(kept, gradient);
    }

    /// <remarks>
    /// Bounded, each chunk's bound is 3e38: their sum is past float.MaxValue / 4, so the update still checks the sum before
    /// writing. A rule that trusted finite bounds alone would add and apply in one pass and write θ before meeting the infinity.
    /// </remarks>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ChunkGradientsThatOverflowWhenAdded_WriteNothing(bool bounded)
    {
        TrainingSession session = Session(OptimizerKind.Adam, 0.01f);
        float[][] before = State(session);
        // Each chunk's value is finite; their sum is not.
        TreeReducer reducer = Reducer(session.Parameters.Length, (c, i) => i == 3 ? 3e38f : 0.5f, bounded);
        Assert.False(reducer.SumIsFinite);
        var (gradient, _) = reducer.Plan();
        var update = new GuardedUpdate(session, reducer, 2);

        UpdateOutcome outcome = update.Apply(gradient, work => Sequential(work, 2), out _);

        Assert.Equal(UpdateOutcome.GradientNotFinite, outcome);
        AssertBitsEqual(before, State(session));
        Assert.Equal(0, session.Optimizer.Steps);
        Assert.Contains("the summed gradient is not finite", GuardedUpdate.Describe(outcome, session.GlobalStep));
    }

    /// <remarks>Bounded, the sums (at most 4e30) are proven finite: the one-pass update must catch the overflow as it writes.</remarks>
    [Theory]
    [InlineData(OptimizerKind.Sgd, false)]
    [InlineData(OptimizerKind.Momentum, false)]
    [InlineData(OptimizerKind.Adam, false)]
    [InlineData(OptimizerKind.Sgd, true)]
    [InlineData(OptimizerKind.Momentum, true)]
    [InlineData(OptimizerKind.Adam, true)]
    public void AnUpdateThatOverflows_IsCaughtAtItsStep(OptimizerKind kind, bool bounded)
    {
        // SGD and momentum: γ = 1e30. The first, good step (summed gradient 1) leaves w ≈ −1e30; in the second, γ times
        // the gradient of 1e10, or times weight decay's 0.01 w, is past float's 3.4e38. Adam normalises the step, so
        // its weights stay finite; but v ← β2 v + (1 − β2) g² with g = 1e30 overflows the state.
        float huge = kind == OptimizerKind.Adam ? 1e30f : 1e10f;
        float learningRate = kind == OptimizerKind.Adam ? 1e-3f : 1e30f;
        TrainingSession session = Session(kind, learningRate);
        int n = session.Parameters.Length;
        // A good step first, by the same update: a lane that kept that step's verdict instead of the new write's would pass.
        TreeReducer reducer = Reducer(n, (c, i) => 0.25f, bounded);
        var update = new GuardedUpdate(session, reducer, 3);
        Assert.Equal(UpdateOutcome.Applied, update.Apply(reducer.Plan().Gradient, work => Sequential(work, 3), out _));
        session.EndStep();
        reducer.Reset();
        Fill(reducer, n, (c, i) => i % 5 == 0 ? huge : 0.25f, bounded);
        var (gradient, _) = reducer.Plan();
        Assert.Equal(bounded, reducer.SumIsFinite);

        UpdateOutcome outcome = update.Apply(gradient, work => Sequential(work, 3), out _);

        Assert.Equal(UpdateOutcome.ParametersNotFinite, outcome);
        Assert.Contains("the update overflowed", GuardedUpdate.Describe(outcome, session.GlobalStep));
    }

    [Fact]
    public void SumIsFinite_NeedsEveryNodesBound_AndTheirSumWithinAQuarterOfFloatsRange()
    {
        float quarter = float.MaxValue / 4;
        TreeReducer With(params float[] bounds)
        {
            var reducer = new TreeReducer(bounds.Length, 2);
            for (int c = 0; c < bounds.Length; c++)
            {
                Assert.True(reducer.TryAdd(new TreeNode(c, 1), [0, 0], new BatchResult(0, 0, 1), default, bounds[c]));
            }
            return reducer;
        }

        Assert.True(With(0, 0).SumIsFinite);
        Assert.True(With(quarter / 2, quarter / 2).SumIsFinite);
        Assert.True(With(quarter, 0, 0).SumIsFinite);
        Assert.False(With(quarter, quarter / 1e6f).SumIsFinite);
        Assert.False(With(1, float.PositiveInfinity).SumIsFinite);
        Assert.False(With(float.NaN, 1).SumIsFinite);
        Assert.False(With(float.MaxValue, 0).SumIsFinite);
        // A negative "bound" is none: it must not pull a large one under the limit.
        Assert.False(With(float.NegativeInfinity, 1).SumIsFinite);
        Assert.False(With(-float.MaxValue, float.MaxValue).SumIsFinite);
        // Reset forgets the bounds; an incomplete step proves nothing.
        TreeReducer reducer = With(float.PositiveInfinity, 1);
        reducer.Reset();
        Assert.True(reducer.TryAdd(new TreeNode(0, 2), [0, 0], new BatchResult(0, 0, 2), default, 1));
        Assert.True(reducer.SumIsFinite);
        reducer.Reset();
        Assert.True(reducer.TryAdd(new TreeNode(0, 1), [0, 0], new BatchResult(0, 0, 1), default, 1));
        Assert.False(reducer.SumIsFinite);
    }

    [Fact]
    public void Bound_IsTheLargestMagnitude_OrNotFinite_ForEveryPositionLengthAndSpecialValue()
    {
        // Lengths through the four-vector loop, the one-vector loop and the scalar tail at 128-, 256- and 512-bit widths.
        float[] specials = [float.NaN, float.PositiveInfinity, float.NegativeInfinity, float.MaxValue, -float.MaxValue, float.Epsilon, -0f, -1e-40f,
            -3e37f, BitConverter.Int32BitsToSingle(unchecked((int)0xFFC0_0001))]; // a negative NaN with payload
        static float Naive(float[] values) =>
            values.Any(float.IsNaN) ? float.NaN : values.Length == 0 ? 0 : values.Max(MathF.Abs);
        foreach (int length in new[] { 0, 1, 7, 8, 15, 16, 17, 33, 40, 63, 64, 65, 72, 100, 130 })
        {
            float[] values = Enumerable.Range(0, length).Select(i => MathF.Sin(i) * 1e30f).ToArray();
            Assert.Equal(Naive(values), FiniteValues.Bound(values));
            for (int at = 0; at < length; at++)
            {
                foreach (float special in specials)
                {
                    float kept = values[at];
                    values[at] = special;
                    float bound = FiniteValues.Bound(values), naive = Naive(values);
                    // Any NaN gives a NaN (its payload may differ); otherwise the exact largest magnitude, +∞ included.
                    Assert.True(float.IsNaN(naive) ? float.IsNaN(bound) : bound == naive, $"length {length}, {special} at {at}: {bound} vs {naive}");
                    values[at] = kept;
                }
            }
        }
    }

    [Fact]
    public void FiniteCheck_AgreesWithTheNaiveOne_ForEveryPositionLengthAndSpecialValue()
    {
        // Lengths through the four-vector loop, the one-vector loop and the scalar tail at 128-, 256- and 512-bit widths.
        float[] specials = [float.NaN, float.PositiveInfinity, float.NegativeInfinity, float.MaxValue, -float.MaxValue, float.Epsilon, -0f, 1e-40f,
            BitConverter.Int32BitsToSingle(unchecked((int)0xFFC0_0001))]; // a negative NaN with payload
        foreach (int length in new[] { 0, 1, 7, 8, 15, 16, 17, 33, 40, 63, 64, 65, 72, 100, 130 })
        {
            float[] values = Enumerable.Range(0, length).Select(i => MathF.Sin(i) * 1e30f).ToArray();
            Assert.True(FiniteValues.All(values));
            for (int at = 0; at < length; at++)
            {
                foreach (float special in specials)
                {
                    float kept = values[at];
                    values[at] = special;
                    Assert.Equal(values.All(float.IsFinite), FiniteValues.All(values));
                    values[at] = kept;
                }
            }
        }
    }
}
