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

    /// <summary>A reducer holding one gradient per chunk, filled by <paramref name="value"/>(chunk, index).</summary>
    private static TreeReducer Reducer(int parameters, Func<int, int, float> value)
    {
        var reducer = new TreeReducer(Chunks, parameters);
        for (int c = 0; c < Chunks; c++)
        {
            float[] gradient = new float[parameters];
            for (int i = 0; i < parameters; i++)
            {
                gradient[i] = value(c, i);
            }
            Assert.True(reducer.TryAdd(new TreeNode(c, 1), gradient, new BatchResult(1, 0, 1)));
        }
        return reducer;
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
        TrainingSession guarded = Session(kind, 0.1f, hidden), plain = Session(kind, 0.1f, hidden);
        int n = guarded.Parameters.Length;
        Func<int, int, float> value = (c, i) => MathF.Sin(c * 31 + i) * 0.1f;
        for (int step = 0; step < 3; step++)
        {
            TreeReducer reducer = Reducer(n, value);
            var (gradient, _) = reducer.Plan();
            var update = new GuardedUpdate(guarded, reducer, lanes);
            Assert.Equal(UpdateOutcome.Applied, update.Apply(gradient, work => Parallel.For(0, lanes, work), out _));
            guarded.EndStep();

            var (reference, _) = Reducer(n, value).Reduce();
            plain.ApplyStep(reference);
        }
        AssertBitsEqual(State(plain), State(guarded));
        Assert.Equal(plain.Optimizer.Steps, guarded.Optimizer.Steps);
    }

    [Fact]
    public void ChunkGradientsThatOverflowWhenAdded_WriteNothing()
    {
        TrainingSession session = Session(OptimizerKind.Adam, 0.01f);
        float[][] before = State(session);
        // Each chunk's value is finite; their sum is not.
        TreeReducer reducer = Reducer(session.Parameters.Length, (c, i) => i == 3 ? 3e38f : 0.5f);
        var (gradient, _) = reducer.Plan();
        var update = new GuardedUpdate(session, reducer, 2);

        UpdateOutcome outcome = update.Apply(gradient, work => Sequential(work, 2), out _);

        Assert.Equal(UpdateOutcome.GradientNotFinite, outcome);
        AssertBitsEqual(before, State(session));
        Assert.Equal(0, session.Optimizer.Steps);
        Assert.Contains("the summed gradient is not finite", GuardedUpdate.Describe(outcome, session.GlobalStep));
    }

    [Theory]
    [InlineData(OptimizerKind.Sgd)]
    [InlineData(OptimizerKind.Momentum)]
    [InlineData(OptimizerKind.Adam)]
    public void AnUpdateThatOverflows_IsCaughtAtItsStep(OptimizerKind kind)
    {
        // SGD and momentum: γ = 1e30 times a gradient of 1e10 is past float's 3.4e38. Adam normalises the
        // step, so its weights stay finite; but v ← β2 v + (1 − β2) g² with g = 1e30 overflows the state.
        float huge = kind == OptimizerKind.Adam ? 1e30f : 1e10f;
        float learningRate = kind == OptimizerKind.Adam ? 1e-3f : 1e30f;
        TrainingSession session = Session(kind, learningRate);
        TreeReducer reducer = Reducer(session.Parameters.Length, (c, i) => i % 5 == 0 ? huge : 0.25f);
        var (gradient, _) = reducer.Plan();

        UpdateOutcome outcome = new GuardedUpdate(session, reducer, 3).Apply(gradient, work => Sequential(work, 3), out _);

        Assert.Equal(UpdateOutcome.ParametersNotFinite, outcome);
        Assert.Contains("the update overflowed", GuardedUpdate.Describe(outcome, session.GlobalStep));
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
