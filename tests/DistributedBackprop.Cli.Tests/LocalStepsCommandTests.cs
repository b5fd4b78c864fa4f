using System.Text.Json;
using DistributedBackprop.Models;

namespace DistributedBackprop.Cli.Tests;

/// <summary>
/// --replicas and --local-steps as a user runs them: the model's bytes and every figure of the metrics do not
/// depend on the worker count, R = 1 or H = 1 is today's synchronous training byte for byte, a model's recipe
/// reruns its bytes, misuse is one line and exit 2.
/// </summary>
public sealed class LocalStepsCommandTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("dbp-local-steps-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static readonly string[] Local = ["train", "--epochs", "4", "--replicas", "3", "--local-steps", "10", "--progress", "plain"];

    /// <summary>A metrics line without the keys that measure time or name the workers.</summary>
    private static string Figures(string line)
    {
        using JsonDocument document = JsonDocument.Parse(line);
        var kept = document.RootElement.EnumerateObject()
            .Where(p => p.Name is not ("samples_per_second" or "epoch_seconds" or "elapsed_seconds" or "workers" or "wait_for_slowest_seconds" or "server_seconds" or "dropped_gradients" or "steps_with_theta_copies")
                && !p.Name.StartsWith("worker_", StringComparison.Ordinal))
            .Select(p => $"{p.Name}={p.Value.GetRawText()}");
        return string.Join(' ', kept);
    }

    [Fact]
    public void Any_worker_count_gives_the_same_model_bytes_and_round_metrics()
    {
        var models = new List<byte[]>();
        string[]? reference = null;
        foreach (string workers in new[] { "0", "1", "3" })
        {
            string model = Path.Combine(_dir, $"w{workers}.safetensors"), metrics = Path.Combine(_dir, $"w{workers}.jsonl");
            DbpResult run = DbpProcess.Run(_dir, [.. Local, "--workers", workers, "--out", model, "--metrics", metrics]);
            Assert.True(run.ExitCode == 0, run.Stderr);
            Assert.Empty(run.Stderr.Trim());
            models.Add(File.ReadAllBytes(model));
            string[] lines = File.ReadAllLines(metrics);
            Assert.Equal(4, lines.Length);
            // 45 steps per epoch in rounds of 10: 5 rounds, the last of 5 steps, each with three replicas' losses.
            using (JsonDocument first = JsonDocument.Parse(lines[0]))
            {
                JsonElement rounds = first.RootElement.GetProperty("rounds");
                Assert.Equal(5, first.RootElement.GetProperty("rounds_in_epoch").GetInt32());
                Assert.Equal([10L, 20, 30, 40, 45], rounds.EnumerateArray().Select(r => r.GetProperty("step").GetInt64()));
                Assert.All(rounds.EnumerateArray(), r => Assert.Equal(3, r.GetProperty("replica_losses").GetArrayLength()));
                Assert.All(rounds.EnumerateArray(), r => Assert.True(r.GetProperty("outer_step_norm").GetDouble() > 0));
            }
            string[] figures = lines.Select(Figures).ToArray();
            reference ??= figures;
            Assert.Equal(reference, figures);
        }
        Assert.All(models, m => Assert.Equal(models[0], m));
        Assert.Contains("\"local_steps\":{\"replicas\":3,\"steps\":10,\"outer_optimizer\":\"nesterov\",\"outer_learning_rate\":0.7,\"outer_momentum\":0.9}",
            SafeTensors.ReadMetadata(Path.Combine(_dir, "w0.safetensors"))["config"]);

        // The model's recipe (--run MODEL) reruns the same bytes.
        string rerun = Path.Combine(_dir, "rerun.safetensors");
        DbpResult again = DbpProcess.Run(_dir, ["train", "--run", Path.Combine(_dir, "w0.safetensors"), "--out", rerun, "--progress", "none"]);
        Assert.True(again.ExitCode == 0, again.Stderr);
        Assert.Equal(models[0], File.ReadAllBytes(rerun));
        // The recipe's settings at their defaults are not taken for the user's (no "--chunks has no effect").
        Assert.Empty(again.Stderr.Trim());
    }

    /// <summary>
    /// --outer-overlap: the same bytes for 0, 1 and 2 workers, written into the model's recipe (which reruns them),
    /// another model than without it; checkpoints only at epoch ends, so --checkpoint-every is refused with it.
    /// </summary>
    [Fact]
    public void Overlapped_rounds_give_the_same_bytes_for_any_worker_count_and_checkpoint_at_epoch_ends()
    {
        var models = new List<byte[]>();
        foreach (string workers in new[] { "0", "1", "2" })
        {
            string model = Path.Combine(_dir, $"overlap-w{workers}.safetensors");
            DbpResult run = DbpProcess.Run(_dir, [.. Local, "--outer-overlap", "--outer-momentum", "0.5", "--workers", workers, "--out", model]);
            Assert.True(run.ExitCode == 0, run.Stderr);
            Assert.Empty(run.Stderr.Trim());
            models.Add(File.ReadAllBytes(model));
        }
        Assert.All(models, m => Assert.Equal(models[0], m));
        string first = Path.Combine(_dir, "overlap-w0.safetensors");
        Assert.Contains("\"outer_overlap\":true", SafeTensors.ReadMetadata(first)["config"]);
        string rerun = Path.Combine(_dir, "overlap-rerun.safetensors"), plain = Path.Combine(_dir, "no-overlap.safetensors");
        Assert.Equal(0, DbpProcess.Run(_dir, ["train", "--run", first, "--out", rerun, "--progress", "none"]).ExitCode);
        Assert.Equal(models[0], File.ReadAllBytes(rerun));
        Assert.Equal(0, DbpProcess.Run(_dir, [.. Local, "--outer-momentum", "0.5", "--out", plain]).ExitCode);
        Assert.NotEqual(models[0], File.ReadAllBytes(plain));

        // Asked for every 10 steps, a checkpoint comes at each epoch's end only (45 steps per epoch), with a warning saying so.
        string checkpointFile = Path.Combine(_dir, "c.safetensors"), everyTen = Path.Combine(_dir, "every-ten.safetensors");
        DbpResult warned = DbpProcess.Run(_dir, ["train", "--epochs", "1", "--replicas", "3", "--local-steps", "10", "--outer-overlap", "--progress", "none", "--checkpoint", checkpointFile, "--checkpoint-every", "10", "--out", everyTen]);
        Assert.True(warned.ExitCode == 0, warned.Stderr);
        Assert.Equal("dbp train: warning: --checkpoint-every 10 has no effect with --outer-overlap: a round in flight starts from θ one outer step old and the replicas' own values, which a checkpoint does not hold; checkpoints are written at each epoch's end", warned.Stderr.Trim());
        Assert.Equal("45", SafeTensors.ReadMetadata(checkpointFile)["global_step"]);
        DbpProcess.AssertUsageError(DbpProcess.Run(_dir, ["bench", "--outer-overlap", "--no-gemm"]),
            "dbp bench: --outer-overlap: overlaps rounds of local steps; give --replicas R and --local-steps H, both above 1", "bench");
        DbpResult synchronous = DbpProcess.Run(_dir, ["train", "--epochs", "1", "--outer-overlap", "--progress", "none"]);
        Assert.Equal(0, synchronous.ExitCode);
        Assert.Contains("dbp train: warning: --outer-overlap has no effect without --replicas R and --local-steps H, both above 1 (training is synchronous)", synchronous.Stderr);
    }

    [Theory]
    [InlineData("1", "10")]
    [InlineData("4", "1")]
    public void One_replica_or_one_local_step_is_synchronous_training_byte_for_byte(string replicas, string steps)
    {
        string synchronous = Path.Combine(_dir, "sync.safetensors"), local = Path.Combine(_dir, "local.safetensors");
        Assert.Equal(0, DbpProcess.Run(_dir, ["train", "--epochs", "2", "--out", synchronous, "--progress", "none"]).ExitCode);
        DbpResult run = DbpProcess.Run(_dir, ["train", "--epochs", "2", "--replicas", replicas, "--local-steps", steps, "--outer-lr", "0.5", "--out", local, "--progress", "none"]);
        Assert.Equal(0, run.ExitCode);
        Assert.Contains($"dbp train: warning: --replicas {replicas} with --local-steps {steps}: local steps need both above 1; training is synchronous", run.Stderr);
        Assert.Contains("dbp train: warning: --outer-lr has no effect without --replicas R and --local-steps H, both above 1 (training is synchronous)", run.Stderr);
        Assert.Equal(File.ReadAllBytes(synchronous), File.ReadAllBytes(local));
    }

    [Fact]
    public void Chunks_are_ignored_with_local_steps_and_change_no_byte()
    {
        string without = Path.Combine(_dir, "without.safetensors"), with = Path.Combine(_dir, "with.safetensors");
        string[] local = ["train", "--epochs", "2", "--replicas", "2", "--local-steps", "5", "--progress", "none"];
        Assert.Equal(0, DbpProcess.Run(_dir, [.. local, "--out", without]).ExitCode);
        DbpResult run = DbpProcess.Run(_dir, [.. local, "--chunks", "3", "--out", with]);
        Assert.Equal(0, run.ExitCode);
        Assert.Contains("dbp train: warning: --chunks has no effect with local steps", run.Stderr);
        Assert.Equal(File.ReadAllBytes(without), File.ReadAllBytes(with));
    }

    [Theory]
    [InlineData(new[] { "--replicas", "40", "--local-steps", "4" }, "dbp train: --replicas: 40 replicas share each batch of 32 rows; at most one replica per row")]
    [InlineData(new[] { "--replicas", "2", "--local-steps", "4", "--outer-optimizer", "adam" }, "--outer-optimizer: unknown value 'adam' (expected nesterov, sgd)")]
    [InlineData(new[] { "--replicas", "2", "--local-steps", "4", "--outer-momentum", "1" }, "--outer-momentum")]
    [InlineData(new[] { "--replicas", "2", "--local-steps", "0" }, "--local-steps")]
    public void Misuse_is_one_line_and_exit_code_2(string[] args, string expected)
    {
        DbpProcess.AssertUsageError(DbpProcess.Run(_dir, ["train", .. args, "--epochs", "1"]), expected);
    }

    [Fact]
    public void Bench_measures_rounds_of_local_steps()
    {
        DbpResult result = DbpProcess.Run(_dir, "bench", "--inputs", "32", "--layers", "16", "--outputs", "4", "--batch-size", "32", "--replicas", "2", "--local-steps", "8",
            "--threads", "2", "--seconds", "0.2", "--windows", "2", "--warmup", "0.2", "--no-gemm", "--json");
        Assert.True(result.ExitCode == 0, result.Stderr);
        using JsonDocument json = JsonDocument.Parse(result.Stdout);
        JsonElement config = json.RootElement.GetProperty("config");
        Assert.Equal((2, 8), (config.GetProperty("replicas").GetInt32(), config.GetProperty("local_steps").GetInt32()));
        Assert.True(json.RootElement.GetProperty("samples_per_second").GetDouble() > 0);
    }
}
