using DistributedBackprop.Cli.Output;
using DistributedBackprop.Engine;

namespace DistributedBackprop.Cli.Tests;

/// <summary>What a run keeps per epoch must not grow with the number of epochs.</summary>
public sealed class LongRunTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("dbp-long-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static EpochReport Report(int epoch) => new()
    {
        Epoch = epoch,
        Step = epoch * 10L,
        TrainLoss = 1.0 / epoch,
        TrainAccuracy = 0.5,
        SamplesPerSecond = 1000,
        EpochTime = TimeSpan.FromMilliseconds(10),
        Elapsed = TimeSpan.FromMilliseconds(10 * epoch),
        LearningRate = 0.1f,
        Workers = 1,
    };

    [Fact]
    public void ThousandsOfEpochs_KeepABoundedSummary_AndEveryMetricsLine()
    {
        string metrics = Path.Combine(_dir, "m.jsonl");
        using var display = new TrainingDisplay(ProgressMode.None, new MetricsWriter(metrics));
        for (int epoch = 1; epoch <= 2_000; epoch++)
        {
            display.EpochCompleted(Report(epoch));
        }
        display.Persist();
        Assert.True(display.Epochs.Count <= 12, $"{display.Epochs.Count} epoch reports kept");
        Assert.Equal([1, 2, 3], display.Epochs.Take(3).Select(r => r.Epoch));
        Assert.Equal(2_000, display.Epochs[^1].Epoch);
        string[] lines = File.ReadAllLines(metrics);
        Assert.Equal(2_000, lines.Length);
        Assert.Contains("\"epoch\":2000", lines[^1], StringComparison.Ordinal);
    }

    [Fact]
    public void ResumedMetrics_KeepTheCompletedEpochs_AndDropTheRest()
    {
        string metrics = Path.Combine(_dir, "r.jsonl");
        using (var first = new MetricsWriter(metrics))
        {
            for (int epoch = 1; epoch <= 7; epoch++) first.Append(Report(epoch));
            first.Flush();
        }
        File.AppendAllText(metrics, "{\"epoch\":8,\"trunc"); // a line cut by a crash
        using var resumed = new MetricsWriter(metrics, resumedEpochs: 5);
        resumed.Append(Report(6));
        resumed.Flush();
        Assert.Equal([1, 2, 3, 4, 5, 6], File.ReadAllLines(metrics).Select(l => System.Text.Json.JsonDocument.Parse(l).RootElement.GetProperty("epoch").GetInt32()));
    }

    [Fact]
    public void AFailedMetricsWrite_IsReportedByFlushAndByTheNextAppend_NamingTheFile()
    {
        string directory = Path.Combine(_dir, "gone");
        Directory.CreateDirectory(directory);
        string metrics = Path.Combine(directory, "m.jsonl");
        using var writer = new MetricsWriter(metrics);
        writer.Append(Report(1));
        writer.Flush();
        Directory.Delete(directory, recursive: true);
        writer.Append(Report(2));
        var flushed = Assert.Throws<IOException>(writer.Flush);
        Assert.Contains(metrics, flushed.Message, StringComparison.Ordinal);
        Assert.Throws<IOException>(() => writer.Append(Report(3)));
    }
}
