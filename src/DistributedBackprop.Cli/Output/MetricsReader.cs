using System.Text.Json;
using DistributedBackprop.Data;
using DistributedBackprop.Engine;

namespace DistributedBackprop.Cli.Output;

/// <summary>Reads a --metrics file (JSON lines, <see cref="MetricsWriter"/>'s format) back into epoch reports.</summary>
internal static class MetricsReader
{
    /// <summary>Every epoch of the file, in order. Bad content is a <see cref="DataException"/> naming the file and line.</summary>
    public static List<EpochReport> Read(string path)
    {
        string[] lines;
        try
        {
            lines = File.ReadAllLines(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new DataException($"{path}: cannot read ({e.Message})", e);
        }
        var epochs = new List<EpochReport>();
        for (int i = 0; i < lines.Length; i++)
        {
            if (string.IsNullOrWhiteSpace(lines[i]))
            {
                continue;
            }
            try
            {
                using JsonDocument document = JsonDocument.Parse(lines[i]);
                epochs.Add(Parse(document.RootElement));
            }
            catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
            {
                throw new DataException($"{path}:{i + 1}: not a dbp metrics line ({FirstLine(e.Message)})", e);
            }
        }
        if (epochs.Count == 0)
        {
            throw new DataException($"{path}: no epochs (an empty metrics file)");
        }
        return epochs;
    }

    private static string FirstLine(string message) => message.Split('\n')[0].TrimEnd();

    private static EpochReport Parse(JsonElement line) => new()
    {
        Epoch = line.GetProperty("epoch").GetInt32(),
        Step = line.GetProperty("step").GetInt64(),
        TrainLoss = line.GetProperty("train_loss").GetDouble(),
        TrainAccuracy = line.GetProperty("train_accuracy").GetDouble(),
        ValidationLoss = Optional(line, "validation_loss"),
        ValidationAccuracy = Optional(line, "validation_accuracy"),
        BestEpoch = Optional(line, "best_epoch") is double best ? (int)best : null,
        StoppedEarly = line.TryGetProperty("stopped_early", out JsonElement stopped) && stopped.ValueKind == JsonValueKind.True,
        TestLoss = Optional(line, "test_loss"),
        TestAccuracy = Optional(line, "test_accuracy"),
        SamplesPerSecond = line.GetProperty("samples_per_second").GetDouble(),
        EpochTime = TimeSpan.FromSeconds(line.GetProperty("epoch_seconds").GetDouble()),
        Elapsed = TimeSpan.FromSeconds(line.GetProperty("elapsed_seconds").GetDouble()),
        LearningRate = line.GetProperty("learning_rate").GetSingle(),
        Workers = line.TryGetProperty("workers", out JsonElement workers) ? workers.GetInt32() : 1,
        WorkerStepsPerSecond = Map(line, "worker_steps_per_second"),
        WorkerBusyFraction = Map(line, "worker_busy_fraction"),
    };

    private static double? Optional(JsonElement line, string name) =>
        line.TryGetProperty(name, out JsonElement value) && value.ValueKind == JsonValueKind.Number ? value.GetDouble() : null;

    private static Dictionary<string, double>? Map(JsonElement line, string name) =>
        line.TryGetProperty(name, out JsonElement map) && map.ValueKind == JsonValueKind.Object
            ? map.EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetDouble())
            : null;
}
