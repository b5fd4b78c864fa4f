using System.Globalization;
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

    /// <summary>
    /// Plotted numbers are bounded: beyond ±1e30 the plot's autoscaler cannot span the axis, and a time beyond
    /// 1e9 s (31 years) overflows a TimeSpan. A value outside is refused naming its field.
    /// </summary>
    private const double MaxPlotted = 1e30, MaxSeconds = 1e9;

    private static EpochReport Parse(JsonElement line) => new()
    {
        Epoch = (int)Count(line, "epoch", int.MaxValue),
        Step = Count(line, "step", long.MaxValue),
        TrainLoss = Number(line, "train_loss", 0, MaxPlotted),
        TrainAccuracy = Number(line, "train_accuracy", 0, 1),
        ValidationLoss = Optional(line, "validation_loss", 0, MaxPlotted),
        ValidationAccuracy = Optional(line, "validation_accuracy", 0, 1),
        BestEpoch = Optional(line, "best_epoch", 0, int.MaxValue) is double best ? (int)best : null,
        StoppedEarly = line.TryGetProperty("stopped_early", out JsonElement stopped) && stopped.ValueKind == JsonValueKind.True,
        TestLoss = Optional(line, "test_loss", 0, MaxPlotted),
        TestAccuracy = Optional(line, "test_accuracy", 0, 1),
        SamplesPerSecond = Number(line, "samples_per_second", 0, MaxPlotted),
        EpochTime = TimeSpan.FromSeconds(Number(line, "epoch_seconds", 0, MaxSeconds)),
        Elapsed = TimeSpan.FromSeconds(Number(line, "elapsed_seconds", 0, MaxSeconds)),
        LearningRate = Field(line, "learning_rate").GetSingle(),
        Workers = line.TryGetProperty("workers", out _) ? (int)Count(line, "workers", int.MaxValue) : 1,
        WorkerStepsPerSecond = Map(line, "worker_steps_per_second"),
        WorkerBusyFraction = Map(line, "worker_busy_fraction"),
    };

    private static JsonElement Field(JsonElement line, string name) =>
        line.TryGetProperty(name, out JsonElement value) ? value
        : throw new FormatException($"no '{name}' field");

    /// <summary>An epoch, a step or a worker count: a whole number in [0, <paramref name="max"/>] (steps are 64-bit).</summary>
    private static long Count(JsonElement line, string name, long max) =>
        Field(line, name) is { ValueKind: JsonValueKind.Number } value && value.TryGetInt64(out long count) && count >= 0 && count <= max ? count
        : throw new FormatException(string.Create(CultureInfo.InvariantCulture, $"'{name}' is not a whole number in [0, {max}]"));

    private static double Number(JsonElement line, string name, double min, double max) => Bounded(name, Field(line, name), min, max);

    private static double Bounded(string name, JsonElement value, double min, double max)
    {
        if (value.ValueKind != JsonValueKind.Number)
        {
            throw new FormatException($"'{name}' is not a number");
        }
        double number = value.GetDouble();
        return number >= min && number <= max ? number
            : throw new FormatException(string.Create(CultureInfo.InvariantCulture, $"'{name}' is {number:G4}, outside [{min:G4}, {max:G4}]"));
    }

    private static double? Optional(JsonElement line, string name, double min, double max) =>
        line.TryGetProperty(name, out JsonElement value) && value.ValueKind == JsonValueKind.Number ? Bounded(name, value, min, max) : null;

    private static Dictionary<string, double>? Map(JsonElement line, string name) =>
        line.TryGetProperty(name, out JsonElement map) && map.ValueKind == JsonValueKind.Object
            ? map.EnumerateObject().ToDictionary(p => p.Name, p => Bounded($"{name}.{p.Name}", p.Value, 0, MaxPlotted))
            : null;
}
