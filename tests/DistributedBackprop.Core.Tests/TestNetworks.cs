using DistributedBackprop.Data;
using DistributedBackprop.Network;
using DistributedBackprop.Randomness;

namespace DistributedBackprop.Tests;

/// <summary>Small random networks and data sets for tests.</summary>
internal static class TestNetworks
{
    public static double[] RandomParameters(Architecture arch, ulong seed, double scale = 1.0)
    {
        float[] init = Initialisation.Create(arch, seed);
        var random = new Xoshiro256(seed + 99);
        var values = new double[init.Length];
        for (int i = 0; i < init.Length; i++)
        {
            // Non-zero biases too, so their gradients are exercised with realistic magnitudes.
            values[i] = (init[i] + 0.1 * (random.NextDouble() - 0.5)) * scale;
        }
        return values;
    }

    public static (double[] X, int[] Labels) RandomBatch(int rows, int inputs, int classes, ulong seed)
    {
        var random = new Xoshiro256(seed);
        var x = new double[rows * inputs];
        var labels = new int[rows];
        for (int i = 0; i < x.Length; i++)
        {
            x[i] = random.NextDouble() * 2 - 1;
        }
        for (int r = 0; r < rows; r++)
        {
            labels[r] = random.NextInt(classes);
        }
        return (x, labels);
    }

    public static Dataset RandomDataset(int rows, int features, int classes, ulong seed)
    {
        var (x, labels) = RandomBatch(rows, features, classes, seed);
        // Make the classes learnable: shift features by the label.
        var values = new float[x.Length];
        for (int r = 0; r < rows; r++)
        {
            for (int j = 0; j < features; j++)
            {
                values[r * features + j] = (float)x[r * features + j] + (j % classes == labels[r] ? 1.5f : 0f);
            }
        }
        return new Dataset("random", features, values, labels, Enumerable.Range(0, classes).Select(c => $"c{c}").ToArray(), DataKind.Table);
    }

    public static float[] ToFloat(double[] values) => values.Select(v => (float)v).ToArray();
}
