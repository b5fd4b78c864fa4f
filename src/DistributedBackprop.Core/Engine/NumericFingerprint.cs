using System.Security.Cryptography;
using System.Runtime.InteropServices;
using DistributedBackprop.Network;

namespace DistributedBackprop.Engine;

/// <summary>
/// A hash of the exact float32 results this machine computes for a fixed small problem: forward and
/// backward passes through every activation (sigmoid, tanh, relu, identity, softmax) and both losses, on
/// the GEMM tier this CPU uses. Nodes that compute a different fingerprint would not reproduce each other's
/// bits (a different C library's exp, a runtime change), so the parameter server refuses them instead of
/// silently training a model that depends on which worker computed what.
/// </summary>
public static class NumericFingerprint
{
    private static readonly Lazy<string> Computed = new(Compute);

    public static string Value => Computed.Value;

    private static string Compute()
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var random = new Randomness.Xoshiro256(20261128);
        foreach (var (hidden, output, loss) in new[]
        {
            (Activation.Sigmoid, Activation.Softmax, Loss.CrossEntropy),
            (Activation.Tanh, Activation.Identity, Loss.MeanSquaredError),
            (Activation.Relu, Activation.Sigmoid, Loss.MeanSquaredError),
            (Activation.Tanh, Activation.Softmax, Loss.MeanSquaredError),
        })
        {
            var arch = Network.Architecture.Create(37, [41, 19], 7, hidden, output, loss);
            float[] parameters = Initialisation.Create(arch, 5);
            const int rows = 29;
            var network = new Network<float>(arch);
            Span<float> input = network.Input(rows);
            var labels = new int[rows];
            for (int i = 0; i < input.Length; i++) input[i] = random.NextSingle() * 6 - 3;
            for (int r = 0; r < rows; r++) labels[r] = random.NextInt(7);
            network.Forward(parameters, rows);
            var gradient = new float[arch.ParameterCount];
            network.Backward(parameters, labels, [0, 7, 13, 29], rows, gradient);
            hash.AppendData(MemoryMarshal.AsBytes(gradient.AsSpan()));
            hash.AppendData(MemoryMarshal.AsBytes(network.Output(rows)));
        }
        return Convert.ToHexStringLower(hash.GetHashAndReset())[..16];
    }
}
