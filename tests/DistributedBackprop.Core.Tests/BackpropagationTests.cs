using DistributedBackprop.Engine;
using DistributedBackprop.Network;

namespace DistributedBackprop.Tests;

/// <summary>
/// The backward sweep against central finite differences of J in double precision, for every
/// activation × loss combination, depth 1–4, batch 1 and larger.
/// </summary>
public class BackpropagationTests
{
    public static IEnumerable<object[]> Cases()
    {
        var hidden = new[] { Activation.Identity, Activation.Sigmoid, Activation.Tanh, Activation.Relu };
        foreach (int depth in new[] { 1, 2, 3, 4 })
        {
            foreach (Activation h in hidden)
            {
                if (depth == 1 && h != Activation.Identity)
                {
                    continue; // no hidden layer: the hidden activation is unused
                }
                foreach (Activation output in new[] { Activation.Identity, Activation.Sigmoid, Activation.Tanh, Activation.Relu, Activation.Softmax })
                {
                    yield return new object[] { depth, h, output, Loss.MeanSquaredError };
                }
                yield return new object[] { depth, h, Activation.Softmax, Loss.CrossEntropy };
            }
        }
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Gradient_MatchesCentralDifferences(int depth, Activation hidden, Activation output, Loss loss)
    {
        foreach (int rows in new[] { 1, 5 })
        {
            int[] widths = new[] { 5, 4, 6 }.Take(depth - 1).ToArray();
            var arch = Architecture.Create(3, widths, 4, hidden, output, loss);
            double[] theta = TestNetworks.RandomParameters(arch, seed: (ulong)(depth * 100 + rows));
            var (x, labels) = TestNetworks.RandomBatch(rows, 3, 4, seed: (ulong)rows + 7);
            var network = new Network<double>(arch);

            double[] analytic = new double[theta.Length];
            Gradient(network, theta, x, labels, analytic);

            // Five-point central difference, O(h⁴) truncation: with h = 1e-3 both truncation and
            // rounding stay near 1e-12, far below the 1e-6 the test demands. Where a ReLU changes sign
            // within ±2h the cost has a kink there and differences mean nothing, so h shrinks until it doesn't.
            for (int i = 0; i < theta.Length; i++)
            {
                double saved = theta[i];
                double At(double offset)
                {
                    theta[i] = saved + offset;
                    return Cost(network, theta, x, labels);
                }
                double h = 1e-3;
                while (h > 1e-7 && ReluPattern(network, theta, i, saved + 2 * h, x, labels) != ReluPattern(network, theta, i, saved - 2 * h, x, labels))
                {
                    h /= 10;
                }
                double numeric = (-At(2 * h) + 8 * At(h) - 8 * At(-h) + At(-2 * h)) / (12 * h);
                theta[i] = saved;
                double error = Math.Abs(numeric - analytic[i]) / Math.Max(1e-6, Math.Abs(numeric) + Math.Abs(analytic[i]));
                Assert.True(error < 1e-6,
                    $"{arch.Describe()}, batch {rows}, parameter {i}: analytic {analytic[i]:R}, numeric {numeric:R}, relative error {error:E2}");
            }
        }
    }

    [Theory]
    [InlineData(Activation.Relu, Loss.CrossEntropy)]
    [InlineData(Activation.Sigmoid, Loss.MeanSquaredError)]
    [InlineData(Activation.Tanh, Loss.CrossEntropy)]
    public void Float32Path_AgreesWithFloat64Path(Activation hidden, Loss loss)
    {
        var arch = Architecture.Create(20, [16, 12], 5, hidden, loss == Loss.CrossEntropy ? Activation.Softmax : Activation.Sigmoid, loss);
        double[] theta = TestNetworks.RandomParameters(arch, seed: 3);
        var (x, labels) = TestNetworks.RandomBatch(33, 20, 5, seed: 4);
        double[] expected = new double[theta.Length];
        Gradient(new Network<double>(arch), theta, x, labels, expected);

        var single = new Network<float>(arch);
        TestNetworks.ToFloat(x).CopyTo(single.Input(labels.Length));
        single.Forward(TestNetworks.ToFloat(theta), labels.Length);
        var actual = new float[theta.Length];
        single.Backward(TestNetworks.ToFloat(theta), labels, [0, labels.Length], labels.Length, actual);

        double scale = expected.Max(Math.Abs);
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.True(Math.Abs(actual[i] - expected[i]) <= 1e-5 * scale + 1e-4 * Math.Abs(expected[i]),
                $"parameter {i}: float {actual[i]:R}, double {expected[i]:R}");
        }
    }

    [Fact]
    public void SoftmaxCrossEntropy_LossIsFiniteForSaturatedLogits()
    {
        var arch = Architecture.Create(1, [], 3, Activation.Relu, Activation.Softmax, Loss.CrossEntropy);
        var network = new Network<float>(arch);
        // W = [1000, -1000, 0]ᵀ, b = 0: for x = 1 the true class 1 has probability e^-2000 = 0 in float.
        float[] theta = [1000f, -1000f, 0f, 0f, 0f, 0f];
        network.Input(1)[0] = 1f;
        network.Forward(theta, 1);
        BatchResult result = network.Evaluate([1]);
        Assert.Equal(2000.0, result.LossSum, 6);
    }

    private static string ReluPattern(Network<double> network, double[] theta, int index, double value, double[] x, int[] labels)
    {
        double saved = theta[index];
        theta[index] = value;
        Cost(network, theta, x, labels);
        theta[index] = saved;
        var pattern = new System.Text.StringBuilder();
        for (int l = 0; l < network.Architecture.Layers.Count; l++)
        {
            if (network.Architecture.Layers[l].Activation == Activation.Relu)
            {
                foreach (double z in network.PreActivations(l, labels.Length))
                {
                    pattern.Append(z > 0 ? '1' : '0');
                }
            }
        }
        return pattern.ToString();
    }

    internal static void Gradient(Network<double> network, double[] theta, double[] x, int[] labels, double[] gradient)
    {
        x.CopyTo(network.Input(labels.Length));
        network.Forward(theta, labels.Length);
        network.Backward(theta, labels, [0, labels.Length], labels.Length, gradient);
    }

    internal static double Cost(Network<double> network, double[] theta, double[] x, int[] labels)
    {
        x.CopyTo(network.Input(labels.Length));
        network.Forward(theta, labels.Length);
        return network.Evaluate(labels).LossSum / labels.Length;
    }
}
