using DistributedBackprop.Randomness;

namespace DistributedBackprop.Data;

/// <summary>Seeded random data for benchmarks: uniform features in [0, 1), uniform labels.</summary>
public static class SyntheticData
{
    public static Dataset Create(int rows, int features, int classes, ulong seed)
    {
        var random = Xoshiro256.ForStream(seed, StreamPurpose.SyntheticData);
        var values = new float[(long)rows * features];
        for (long i = 0; i < values.Length; i++)
        {
            values[i] = random.NextSingle();
        }
        var labels = new int[rows];
        for (int r = 0; r < rows; r++)
        {
            labels[r] = random.NextInt(classes);
        }
        string[] names = Enumerable.Range(0, classes).Select(c => c.ToString(System.Globalization.CultureInfo.InvariantCulture)).ToArray();
        return new Dataset("synthetic", features, values, labels, names, DataKind.Images);
    }
}
