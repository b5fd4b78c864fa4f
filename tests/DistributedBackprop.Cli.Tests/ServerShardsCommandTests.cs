namespace DistributedBackprop.Cli.Tests;

/// <summary>
/// --server-shards as a user runs it: any K gives the plain trainer's bytes (the option is not part of the
/// model), it is pointless without worker actors (a warning), and misuse is one line and exit 2.
/// </summary>
public sealed class ServerShardsCommandTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("dbp-shards-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static readonly string[] Run = ["train", "--epochs", "3", "--optimizer", "momentum", "--progress", "none"];

    [Fact]
    public void Any_shard_count_gives_the_plain_trainers_bytes()
    {
        string plain = Path.Combine(_dir, "plain.safetensors");
        Assert.Equal(0, DbpProcess.Run(_dir, [.. Run, "--out", plain]).ExitCode);
        foreach (string[] mode in new[] { new[] { "--workers", "2", "--server-shards", "3" }, ["--workers", "3", "--server-shards", "2"], ["--workers", "1", "--server-shards", "5"] })
        {
            string model = Path.Combine(_dir, $"{string.Join('_', mode)}.safetensors");
            DbpResult run = DbpProcess.Run(_dir, [.. Run, .. mode, "--out", model]);
            Assert.True(run.ExitCode == 0, run.Stderr);
            Assert.Empty(run.Stderr.Trim());
            Assert.True(File.ReadAllBytes(plain).AsSpan().SequenceEqual(File.ReadAllBytes(model)), $"{string.Join(' ', mode)}: other bytes");
        }
    }

    [Fact]
    public void Without_worker_actors_it_is_ignored_with_a_warning()
    {
        DbpResult run = DbpProcess.Run(_dir, ["train", "--epochs", "1", "--progress", "none", "--server-shards", "2"]);
        Assert.Equal(0, run.ExitCode);
        Assert.Contains("--server-shards has no effect with --workers 0", run.Stderr);
    }

    [Theory]
    [InlineData("--server-shards 0", "--server-shards")]
    [InlineData("--workers 2 --server-shards 100000", "--server-shards 100000: the network has only 9610 parameters to cut")]
    [InlineData("--workers 2 --server-shards 2 --replicas 2 --local-steps 4", "parameter shards and local steps do not go together yet")]
    public void Misuse_is_one_line_and_exit_2(string options, string expected) =>
        DbpProcess.AssertUsageError(DbpProcess.Run(_dir, [.. Run, .. options.Split(' ')]), expected);
}
