using DistributedBackprop.Network;
using DistributedBackprop.Optimizers;

namespace DistributedBackprop.Tests;

/// <summary>Each optimizer against a plain double-precision transcription of its paper's update.</summary>
public class OptimizerTests
{
    private static readonly Architecture Arch = Architecture.Create(3, [2], 2, Activation.Relu, Activation.Softmax, Loss.CrossEntropy);

    private static (float[] W, float[][] G) Problem()
    {
        var random = new Randomness.Xoshiro256(1);
        float[] w = Enumerable.Range(0, Arch.ParameterCount).Select(_ => random.NextSingle() - 0.5f).ToArray();
        float[][] g = Enumerable.Range(0, 5).Select(_ => Enumerable.Range(0, Arch.ParameterCount).Select(_ => random.NextSingle() - 0.5f).ToArray()).ToArray();
        return (w, g);
    }

    private static bool IsBias(int i)
    {
        for (int l = 0; l < Arch.Layers.Count; l++)
        {
            if (i >= Arch.BiasOffset(l) && i < Arch.BiasOffset(l) + Arch.Layers[l].Outputs) return true;
        }
        return false;
    }

    [Fact]
    public void Sgd_IsTheLecturesUpdate_WithL2DecayOnWeightsOnly()
    {
        var (w, g) = Problem();
        float[] start = (float[])w.Clone();
        var optimizer = new Optimizer(Arch, new OptimizerSettings { Kind = OptimizerKind.Sgd, LearningRate = 0.5f, WeightDecay = 0.1f });
        optimizer.Apply(w, g[0], 0.5f);
        for (int i = 0; i < w.Length; i++)
        {
            float decay = IsBias(i) ? 0f : 0.1f;
            Assert.Equal(start[i] - (g[0][i] + start[i] * decay) * 0.5f, w[i]);
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Momentum_MatchesReference(bool nesterov)
    {
        var (w, g) = Problem();
        double[] wd = w.Select(x => (double)x).ToArray(), v = new double[w.Length];
        var optimizer = new Optimizer(Arch, new OptimizerSettings { Kind = OptimizerKind.Momentum, Momentum = 0.9f, Nesterov = nesterov, WeightDecay = 0.01f });
        foreach (float[] step in g)
        {
            optimizer.Apply(w, step, 0.1f);
            for (int i = 0; i < wd.Length; i++)
            {
                double gi = step[i] + (IsBias(i) ? 0 : 0.01) * wd[i];
                v[i] = 0.9 * v[i] + gi;
                wd[i] -= 0.1 * (nesterov ? gi + 0.9 * v[i] : v[i]);
            }
        }
        for (int i = 0; i < w.Length; i++) Assert.Equal(wd[i], w[i], 5);
    }

    [Fact]
    public void Adam_MatchesKingmaBaAlgorithm1_WithDecoupledDecay()
    {
        var (w, g) = Problem();
        double[] wd = w.Select(x => (double)x).ToArray(), m = new double[w.Length], v = new double[w.Length];
        var optimizer = new Optimizer(Arch, new OptimizerSettings { Kind = OptimizerKind.Adam, WeightDecay = 0.1f });
        double lr = 0.01;
        for (int t = 1; t <= g.Length; t++)
        {
            optimizer.Apply(w, g[t - 1], (float)lr);
            for (int i = 0; i < wd.Length; i++)
            {
                double gi = g[t - 1][i];
                m[i] = 0.9 * m[i] + 0.1 * gi;
                v[i] = 0.999 * v[i] + 0.001 * gi * gi;
                double mHat = m[i] / (1 - Math.Pow(0.9, t)), vHat = v[i] / (1 - Math.Pow(0.999, t));
                wd[i] = wd[i] - lr * (IsBias(i) ? 0 : 0.1) * wd[i] - lr * mHat / (Math.Sqrt(vHat) + 1e-8);
            }
        }
        for (int i = 0; i < w.Length; i++) Assert.Equal(wd[i], w[i], 5);
    }

    [Fact]
    public void ApplyRange_InPieces_GivesTheBitsOfOneCall()
    {
        var (w, g) = Problem();
        float[] pieces = (float[])w.Clone();
        var settings = new OptimizerSettings { Kind = OptimizerKind.Adam, WeightDecay = 0.1f };
        var whole = new Optimizer(Arch, settings);
        var split = new Optimizer(Arch, settings);
        foreach (float[] step in g)
        {
            whole.Apply(w, step, 0.01f);
            split.BeginStep();
            split.ApplyRange(pieces, step, 0.01f, 0, 5);
            split.ApplyRange(pieces, step, 0.01f, 5, Arch.ParameterCount - 5);
        }
        Assert.Equal(w, pieces);
    }

    [Theory]
    [InlineData(OptimizerKind.Sgd)]
    [InlineData(OptimizerKind.Momentum)]
    [InlineData(OptimizerKind.Adam)]
    public void ApplyRange_SaysWhetherWhatItWroteIsFinite_AtEveryPosition(OptimizerKind kind)
    {
        // 20-9-3: sections of 180, 9, 27 and 3 values, so each position is in a vector body or a scalar tail on
        // every SIMD width. One gradient of 1e30 overflows there: SGD's and momentum's w − γg with γ = 1e10, and
        // Adam's v ← β2 v + (1 − β2) g² (its w stays finite: m / √v is then 0).
        Architecture arch = Architecture.Create(20, [9], 3, Activation.Relu, Activation.Softmax, Loss.CrossEntropy);
        var settings = new OptimizerSettings { Kind = kind, WeightDecay = 0.01f };
        float learningRate = kind == OptimizerKind.Adam ? 1e-3f : 1e10f;
        float[] gradient = Enumerable.Repeat(1e-12f, arch.ParameterCount).ToArray();
        var calm = new Optimizer(arch, settings);
        calm.BeginStep();
        Assert.True(calm.ApplyRange(new float[arch.ParameterCount], gradient, learningRate, 0, arch.ParameterCount));
        for (int at = 0; at < arch.ParameterCount; at++)
        {
            var optimizer = new Optimizer(arch, settings);
            optimizer.BeginStep();
            gradient[at] = 1e30f;
            float[] parameters = new float[arch.ParameterCount];
            bool finite = optimizer.ApplyRange(parameters, gradient, learningRate, 0, arch.ParameterCount);
            gradient[at] = 1e-12f;
            float[] state = optimizer.SecondMoment ?? parameters;
            Assert.False(float.IsFinite(state[at]), $"position {at}: the overflow did not happen");
            Assert.False(finite, $"position {at}: {kind}'s overflow there was not reported");
        }
    }

    [Fact]
    public void AdamsApplyRange_ReportsAWeightThatOverflows_WhileItsStateStaysFinite()
    {
        // AdamW's decoupled decay w·(1 − γλ): with γ = 1e37 and λ = 0.01 a weight of 1e4 becomes −1e39, while m and
        // v (from a gradient of 1e-12) stay small. The weights only: the biases take no decay.
        Architecture arch = Architecture.Create(20, [9], 3, Activation.Relu, Activation.Softmax, Loss.CrossEntropy);
        var settings = new OptimizerSettings { Kind = OptimizerKind.Adam, WeightDecay = 0.01f };
        float[] gradient = Enumerable.Repeat(1e-12f, arch.ParameterCount).ToArray();
        for (int l = 0; l < arch.Layers.Count; l++)
        {
            for (int at = arch.WeightOffset(l); at < arch.WeightOffset(l) + arch.WeightCount(l); at++)
            {
                var optimizer = new Optimizer(arch, settings);
                optimizer.BeginStep();
                float[] parameters = new float[arch.ParameterCount];
                parameters[at] = 1e4f;
                bool finite = optimizer.ApplyRange(parameters, gradient, 1e37f, 0, arch.ParameterCount);
                Assert.True(optimizer.SecondMoment!.All(float.IsFinite), $"position {at}: v overflowed too");
                Assert.False(float.IsFinite(parameters[at]), $"position {at}: the overflow did not happen");
                Assert.False(finite, $"position {at}: the weight's overflow was not reported");
            }
        }
    }

    [Fact]
    public void Schedules_GiveTheDocumentedRates()
    {
        var step = new OptimizerSettings { LearningRate = 1f, Schedule = ScheduleKind.Step, DecayEvery = 2, DecayFactor = 0.5f };
        Assert.Equal(1f, step.LearningRateAt(0, 1, 100));
        Assert.Equal(0.25f, step.LearningRateAt(0, 4, 100));
        var cosine = new OptimizerSettings { LearningRate = 1f, Schedule = ScheduleKind.Cosine, MinLearningRate = 0.1f };
        Assert.Equal(1f, cosine.LearningRateAt(0, 0, 11));
        Assert.Equal(0.55f, cosine.LearningRateAt(5, 0, 11), 6);
        Assert.Equal(0.1f, cosine.LearningRateAt(10, 0, 11), 6);
        var warm = new OptimizerSettings { LearningRate = 1f, WarmupSteps = 4 };
        Assert.Equal(0.25f, warm.LearningRateAt(0, 0, 100));
        Assert.Equal(1f, warm.LearningRateAt(3, 0, 100));
        Assert.Equal(1f, warm.LearningRateAt(50, 0, 100));
    }

    [Fact]
    public void Settings_Validation_NamesTheOption()
    {
        Assert.StartsWith("--lr", new OptimizerSettings { LearningRate = -1 }.Validate());
        Assert.StartsWith("--momentum", new OptimizerSettings { Momentum = 1 }.Validate());
        Assert.Null(new OptimizerSettings().Validate());
    }
}
