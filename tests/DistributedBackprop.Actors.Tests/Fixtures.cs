using DistributedBackprop.Data;
using DistributedBackprop.Engine;
using DistributedBackprop.Optimizers;
using DistributedBackprop.Randomness;

namespace DistributedBackprop.Actors.Tests;

internal static class Fixtures
{
    /// <summary>A learnable random data set: the class shifts a third of the features.</summary>
    public static Dataset Blobs(int rows, int features = 12, int classes = 4, ulong seed = 1, float shift = 1.2f)
    {
        var random = new Xoshiro256(seed);
        var values = new float[rows * features];
        var labels = new int[rows];
        for (int r = 0; r < rows; r++)
        {
            labels[r] = random.NextInt(classes);
            for (int j = 0; j < features; j++)
            {
                values[r * features + j] = random.NextSingle() + (j % classes == labels[r] ? shift : 0f);
            }
        }
        return new Dataset("blobs", features, values, labels, Enumerable.Range(0, classes).Select(c => $"class{c}").ToArray(), DataKind.Table);
    }

    /// <summary>Writes <paramref name="data"/> as a CSV file with a header (features f0…, then label), floats round-tripped exactly.</summary>
    public static string WriteCsv(Dataset data, string path)
    {
        var csv = new System.Text.StringBuilder();
        csv.AppendLine(string.Join(',', Enumerable.Range(0, data.Features).Select(j => $"f{j}").Append("label")));
        for (int r = 0; r < data.Rows; r++)
        {
            csv.AppendLine(string.Join(',', data.Row(r).ToArray().Select(v => v.ToString("R", System.Globalization.CultureInfo.InvariantCulture)).Append(data.Classes[data.Labels[r]])));
        }
        File.WriteAllText(path, csv.ToString());
        return path;
    }

    public static TrainingConfig Config(int epochs = 3, int chunks = 8, OptimizerKind optimizer = OptimizerKind.Adam) => new()
    {
        HiddenLayers = [16, 8],
        Epochs = epochs,
        BatchSize = 24,
        Chunks = chunks,
        Seed = 11,
        Optimizer = new OptimizerSettings { Kind = optimizer, LearningRate = 0.01f, WeightDecay = 0.001f, Schedule = ScheduleKind.Cosine },
    };

    public static TrainingSession Session(TrainingConfig? config = null, int rows = 200) =>
        TrainingSession.Prepare(config ?? Config(), Blobs(rows), null, 0.2);

    /// <summary>The plain single-process trainer's final parameters: the oracle.</summary>
    public static float[] PlainTrainer(TrainingConfig? config = null, int rows = 200) => PlainTrainer(config ?? Config(), Blobs(rows));

    public static float[] PlainTrainer(TrainingConfig config, Dataset data)
    {
        TrainingSession session = TrainingSession.Prepare(config, data, null, 0.2);
        using var trainer = new Trainer(session);
        trainer.Run(NullObserver.Instance);
        return session.Parameters;
    }

    public static void AssertSameBits(float[] expected, float[] actual, string context)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
        {
            if (BitConverter.SingleToInt32Bits(expected[i]) != BitConverter.SingleToInt32Bits(actual[i]))
            {
                Assert.Fail($"{context}: parameter {i} differs: expected {expected[i]:R}, got {actual[i]:R}");
            }
        }
    }
}
