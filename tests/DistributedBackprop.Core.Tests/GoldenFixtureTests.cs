using System.Text.Json;
using DistributedBackprop.Network;

namespace DistributedBackprop.Tests;

/// <summary>
/// Against an independent implementation: PyTorch's autograd in float64 (Fixtures/make_torch_golden.py)
/// computed the cost, the gradient, and the losses of six plain SGD steps for three networks.
/// </summary>
public class GoldenFixtureTests
{
    public static IEnumerable<object[]> Cases()
    {
        using var document = JsonDocument.Parse(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "Fixtures", "torch_golden.json")));
        foreach (JsonElement c in document.RootElement.GetProperty("cases").EnumerateArray())
        {
            yield return new object[] { c.GetProperty("name").GetString()! };
        }
    }

    private sealed record Case(Architecture Arch, double[] Parameters, double[] X, int[] Labels, double Cost, double[] Gradient, double LearningRate, int SgdRows, double[] SgdLosses);

    private static Case Load(string name)
    {
        using var document = JsonDocument.Parse(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "Fixtures", "torch_golden.json")));
        JsonElement c = document.RootElement.GetProperty("cases").EnumerateArray().Single(e => e.GetProperty("name").GetString() == name);
        int[] sizes = c.GetProperty("sizes").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        double[] Doubles(string key) => c.GetProperty(key).EnumerateArray().Select(e => e.GetDouble()).ToArray();
        var arch = Architecture.Create(sizes[0], sizes[1..^1], sizes[^1],
            Activations.Parse(c.GetProperty("hidden").GetString()!), Activations.Parse(c.GetProperty("output").GetString()!),
            Losses.Parse(c.GetProperty("loss").GetString()!));
        return new Case(arch, Doubles("parameters"), Doubles("x"), c.GetProperty("labels").EnumerateArray().Select(e => e.GetInt32()).ToArray(),
            c.GetProperty("cost").GetDouble(), Doubles("gradient"), c.GetProperty("sgd_lr").GetDouble(), c.GetProperty("sgd_batch_rows").GetInt32(), Doubles("sgd_losses"));
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void CostAndGradient_MatchPyTorchFloat64(string name)
    {
        Case c = Load(name);
        var network = new Network<double>(c.Arch);
        var gradient = new double[c.Arch.ParameterCount];
        BackpropagationTests.Gradient(network, c.Parameters, c.X, c.Labels, gradient);
        Assert.Equal(c.Cost, BackpropagationTests.Cost(network, c.Parameters, c.X, c.Labels), 12);
        double scale = c.Gradient.Max(Math.Abs);
        for (int i = 0; i < gradient.Length; i++)
        {
            Assert.True(Math.Abs(gradient[i] - c.Gradient[i]) <= 1e-12 * scale + 1e-10 * Math.Abs(c.Gradient[i]),
                $"{name} parameter {i}: ours {gradient[i]:R}, PyTorch {c.Gradient[i]:R}");
        }
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void SgdLosses_MatchPyTorch_InFloat32Training(string name)
    {
        // The float32 training path (fast kernels, chunk tree of 4) against PyTorch's float64 run.
        Case c = Load(name);
        float[] theta = TestNetworks.ToFloat(c.Parameters);
        var network = new Network<float>(c.Arch);
        var optimizer = new Optimizers.Optimizer(c.Arch, new Optimizers.OptimizerSettings { Kind = Optimizers.OptimizerKind.Sgd, LearningRate = (float)c.LearningRate });
        var gradient = new float[c.Arch.ParameterCount];
        int inputs = c.Arch.Inputs, rows = c.Labels.Length;
        for (int step = 0; step < c.SgdLosses.Length; step++)
        {
            Span<float> input = network.Input(c.SgdRows);
            var labels = new int[c.SgdRows];
            for (int r = 0; r < c.SgdRows; r++)
            {
                int row = (step * c.SgdRows + r) % rows;
                for (int j = 0; j < inputs; j++) input[r * inputs + j] = (float)c.X[row * inputs + j];
                labels[r] = c.Labels[row];
            }
            network.Forward(theta, c.SgdRows);
            BatchResult result = network.Backward(theta, labels, [0, 2, 4, 6, 8], c.SgdRows, gradient);
            double loss = result.LossSum / c.SgdRows;
            Assert.True(Math.Abs(loss - c.SgdLosses[step]) <= 1e-5 * Math.Abs(c.SgdLosses[step]),
                $"{name} step {step}: ours {loss:R}, PyTorch {c.SgdLosses[step]:R}");
            optimizer.Apply(theta, gradient, (float)c.LearningRate);
        }
    }
}
