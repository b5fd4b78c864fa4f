using System.Globalization;
using System.Text.Json;
using DistributedBackprop.Models;

namespace DistributedBackprop.Cli.Tests;

/// <summary>
/// --validation-fraction, --early-stopping and --keep as a user runs them: the stopping epoch and the model's
/// bytes do not depend on the worker count, the metrics say what happened, misuse is one line and exit 2.
/// </summary>
public sealed class ValidationCommandTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("dbp-validation-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static readonly string[] Stopping = ["train", "--validation-fraction", "0.2", "--early-stopping", "2", "--epochs", "60", "--progress", "plain"];

    [Fact]
    public void Early_stopping_picks_the_same_epoch_and_model_bytes_for_any_worker_count()
    {
        var models = new List<byte[]>();
        string[]? reference = null;
        foreach (string workers in new[] { "0", "1", "3" })
        {
            string model = Path.Combine(_dir, $"w{workers}.safetensors"), metrics = Path.Combine(_dir, $"w{workers}.jsonl");
            DbpResult run = DbpProcess.Run(_dir, [.. Stopping, "--workers", workers, "--out", model, "--metrics", metrics]);
            Assert.True(run.ExitCode == 0, run.Stderr);
            models.Add(File.ReadAllBytes(model));
            string[] lines = File.ReadAllLines(metrics);
            using JsonDocument last = JsonDocument.Parse(lines[^1]);
            Assert.True(last.RootElement.GetProperty("stopped_early").GetBoolean());
            int stoppedAfter = last.RootElement.GetProperty("epoch").GetInt32(), best = last.RootElement.GetProperty("best_epoch").GetInt32();
            Assert.True(stoppedAfter < 60, $"stopped after {stoppedAfter}");
            Assert.Equal(stoppedAfter - 2, best);
            // The best epoch is the one with the lowest validation loss in the metrics, and the model holds it.
            int lowest = lines.Select(l => JsonDocument.Parse(l).RootElement).MinBy(e => e.GetProperty("validation_loss").GetDouble()).GetProperty("epoch").GetInt32();
            Assert.Equal(best, lowest);
            IReadOnlyDictionary<string, string> metadata = SafeTensors.ReadMetadata(model);
            Assert.Equal(("best", best.ToString(CultureInfo.InvariantCulture)), (metadata["kept"], metadata["best_epoch"]));
            Assert.Contains($"early stopping after epoch {stoppedAfter}: no better validation score since epoch {best}", run.Stdout);
            Assert.Contains($"the model holds epoch {best} (--keep best)", run.Stdout);
            Assert.Contains("288 validation rows", run.Stdout);
            string[] epochLines = run.Stdout.Split('\n').Where(l => l.StartsWith("epoch ", StringComparison.Ordinal)).Select(l => l[..l.IndexOf("test loss", StringComparison.Ordinal)]).ToArray();
            Assert.Equal(stoppedAfter, epochLines.Length);
            reference ??= epochLines;
            Assert.Equal(reference, epochLines); // each epoch's step, train and validation metrics, to the digit
        }
        Assert.All(models, m => Assert.Equal(models[0], m));

        // --keep last writes the last epoch's parameters instead: another model, same run.
        string lastModel = Path.Combine(_dir, "last.safetensors");
        DbpResult keepLast = DbpProcess.Run(_dir, [.. Stopping, "--workers", "0", "--keep", "last", "--out", lastModel]);
        Assert.True(keepLast.ExitCode == 0, keepLast.Stderr);
        Assert.NotEqual(models[0], File.ReadAllBytes(lastModel));
        Assert.Equal("last", SafeTensors.ReadMetadata(lastModel)["kept"]);
    }

    [Theory]
    [InlineData(new[] { "--early-stopping", "3" }, "dbp train: --early-stopping: needs a validation set (--validation-fraction F); stopping on the test set would tune on it")]
    [InlineData(new[] { "--keep", "best" }, "dbp train: --keep best: needs a validation set (--validation-fraction F); the best epoch is chosen on it, never on the test set")]
    [InlineData(new[] { "--validation-fraction", "1" }, "--validation-fraction: must be in [0, 1), got 1")]
    [InlineData(new[] { "--validation-fraction", "0.2", "--early-stopping-metric", "f1" }, "--early-stopping-metric: unknown value 'f1' (expected loss, accuracy)")]
    [InlineData(new[] { "--keep", "first" }, "--keep: unknown value 'first' (expected best, last)")]
    [InlineData(new[] { "--validation-fraction", "0.9999" }, "a validation fraction of 0.9999 leaves")]
    public void Misuse_is_one_line_and_exit_code_2(string[] args, string expected)
    {
        DbpProcess.AssertUsageError(DbpProcess.Run(_dir, ["train", .. args, "--epochs", "1"]), expected);
    }

    [Fact]
    public void A_run_file_with_validation_round_trips_and_a_models_recipe_keeps_it()
    {
        string run = Path.Combine(_dir, "run.json");
        File.WriteAllText(run, """{ "validation-fraction": 0.25, "early-stopping": 2, "early-stopping-metric": "accuracy", "epochs": 40, "workers": 0 }""");
        string explicitModel = Path.Combine(_dir, "explicit.safetensors");
        DbpResult trained = DbpProcess.Run(_dir, "train", "--validation-fraction", "0.25", "--early-stopping", "2", "--early-stopping-metric", "accuracy",
            "--epochs", "40", "--workers", "0", "--out", explicitModel, "--progress", "none");
        Assert.True(trained.ExitCode == 0, trained.Stderr);

        DbpResult printed = DbpProcess.Run(_dir, "train", "--run", run, "--print-run");
        Assert.True(printed.ExitCode == 0, printed.Stderr);
        using (JsonDocument json = JsonDocument.Parse(printed.Stdout))
        {
            Assert.Equal(0.25, json.RootElement.GetProperty("validation-fraction").GetDouble());
            Assert.Equal("accuracy", json.RootElement.GetProperty("early-stopping-metric").GetString());
        }
        string printedRun = Path.Combine(_dir, "printed.json");
        File.WriteAllText(printedRun, printed.Stdout);
        foreach (string source in new[] { printedRun, explicitModel })
        {
            string model = Path.Combine(_dir, $"from-{Path.GetFileNameWithoutExtension(source)}.safetensors");
            DbpResult again = DbpProcess.Run(_dir, "train", "--run", source, "--workers", "0", "--out", model, "--progress", "none");
            Assert.True(again.ExitCode == 0, again.Stderr);
            Assert.Equal(File.ReadAllBytes(explicitModel), File.ReadAllBytes(model));
        }

        // --keep is not part of the training configuration, but the model file says which epoch it holds:
        // a best-epoch model without early stopping (whose default would be last) reruns as best too.
        string bestModel = Path.Combine(_dir, "best.safetensors"), rerun = Path.Combine(_dir, "rerun.safetensors");
        Assert.Equal(0, DbpProcess.Run(_dir, "train", "--validation-fraction", "0.25", "--keep", "best", "--epochs", "6", "--workers", "0", "--out", bestModel, "--progress", "none").ExitCode);
        Assert.Equal(0, DbpProcess.Run(_dir, "train", "--run", bestModel, "--workers", "0", "--out", rerun, "--progress", "none").ExitCode);
        Assert.Equal(File.ReadAllBytes(bestModel), File.ReadAllBytes(rerun));
    }

    [Fact]
    public void A_non_finite_held_out_loss_is_written_as_null()
    {
        var report = new Engine.EpochReport
        {
            Epoch = 3, Step = 30, TrainLoss = 0.5, TrainAccuracy = 0.9, ValidationLoss = double.PositiveInfinity, ValidationAccuracy = 0.8, BestEpoch = 0,
            TestLoss = double.NaN, TestAccuracy = 0.7, SamplesPerSecond = 1000, EpochTime = TimeSpan.FromSeconds(1), Elapsed = TimeSpan.FromSeconds(3), LearningRate = 0.1f,
        };
        using JsonDocument line = JsonDocument.Parse(Output.MetricsWriter.ToJson(report));
        Assert.Equal(JsonValueKind.Null, line.RootElement.GetProperty("validation_loss").ValueKind);
        Assert.Equal(JsonValueKind.Null, line.RootElement.GetProperty("test_loss").ValueKind);
        Assert.Equal(0.8, line.RootElement.GetProperty("validation_accuracy").GetDouble());
    }
}
