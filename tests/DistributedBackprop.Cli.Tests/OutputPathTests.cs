using System.Diagnostics;

namespace DistributedBackprop.Cli.Tests;

/// <summary>
/// Where outputs go: never over an input or another output of the same command, devices and pipes written
/// through (not replaced), and no temporary file left when a run is stopped by a signal mid-write.
/// </summary>
public sealed class OutputPathTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("dbp-out-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private DbpResult Dbp(params string[] args) => DbpProcess.Run(_dir, args);

    private string Data()
    {
        string path = Path.Combine(_dir, "data.csv");
        File.WriteAllLines(path, ["a,b,label", .. Enumerable.Range(0, 60).Select(i => $"{i % 7},{i % 5},{(i % 2 == 0 ? "even" : "odd")}")]);
        return path;
    }

    [Fact]
    public void AnOutputOverTheData_IsRefused_AndTheDataKept()
    {
        string data = Data();
        string before = File.ReadAllText(data);

        DbpProcess.AssertUsageError(Dbp("train", "--data", data, "--epochs", "1", "--out", data), $"--out {data}: the same file as --data");

        Assert.Equal(before, File.ReadAllText(data));
    }

    [Fact]
    public void TwoOutputsOfOneFile_AreRefused()
    {
        DbpProcess.AssertUsageError(Dbp("train", "--data", Data(), "--epochs", "1", "--out", "run.out", "--metrics", "./run.out"),
            "--metrics ./run.out: the same file as --out run.out");
    }

    [Fact]
    public void APredictionOverItsModel_ThroughASymbolicLink_IsRefused()
    {
        string data = Data();
        Assert.Equal(0, Dbp("train", "--data", data, "--epochs", "1", "--out", "model.st", "--progress", "none").ExitCode);
        File.CreateSymbolicLink(Path.Combine(_dir, "alias.csv"), "model.st");
        byte[] model = File.ReadAllBytes(Path.Combine(_dir, "model.st"));

        DbpProcess.AssertUsageError(Dbp("predict", "--model", "model.st", "--data", data, "--out", "alias.csv"),
            "--out alias.csv: the same file as --model model.st", "predict");

        Assert.Equal(model, File.ReadAllBytes(Path.Combine(_dir, "model.st")));
    }

    [Fact]
    public void AnExportOverItsModel_IsRefused_AndAnEmptyDataPathIsNotTheEmbeddedDigits()
    {
        Assert.Equal(0, Dbp("train", "--data", Data(), "--epochs", "1", "--out", "model.st", "--progress", "none").ExitCode);

        DbpProcess.AssertUsageError(Dbp("export", "--model", "model.st", "--onnx", "./model.st"), "--onnx ./model.st: the same file as --model model.st", "export");
        DbpProcess.AssertUsageError(Dbp("train", "--data", "", "--epochs", "1"), "--data: a path is required, got ''");
    }

    [Fact]
    public void ResumingFromTheCheckpointItKeepsWriting_IsAllowed()
    {
        string data = Data();
        Assert.Equal(0, Dbp("train", "--data", data, "--epochs", "1", "--checkpoint", "c.st", "--progress", "none").ExitCode);
        DbpResult resumed = Dbp("train", "--data", data, "--epochs", "2", "--checkpoint", "c.st", "--resume", "c.st", "--progress", "none");
        Assert.True(resumed.ExitCode == 0, resumed.Stderr);
    }

    [Fact]
    public void ADeviceAsTheOutput_IsWrittenThrough_NotReplaced()
    {
        string sink = Path.Combine(_dir, "sink");
        File.CreateSymbolicLink(sink, "/dev/null");

        DbpResult result = Dbp("train", "--data", Data(), "--epochs", "1", "--out", sink, "--metrics", sink, "--progress", "none");

        Assert.True(result.ExitCode == 0, result.Stderr);
        Assert.Equal("/dev/null", new FileInfo(sink).LinkTarget);
        Assert.Equal(["data.csv", "sink"], Directory.GetFileSystemEntries(_dir).Select(Path.GetFileName).Order());
    }

    /// <summary>
    /// A run writing a checkpoint after every step (Adam on the embedded digits, 64-1024-10: 0.9 MB written and
    /// flushed to disk per step, so most of the run is spent inside a write) is stopped by SIGINT and by SIGTERM:
    /// the exit codes shells expect, and in the checkpoint's directory nothing but the complete checkpoint (the
    /// audit that found this left a temporary file in 3 runs of 3).
    /// </summary>
    [Theory]
    [InlineData("INT", 130)]
    [InlineData("TERM", 143)]
    public void AStoppedRun_LeavesNoTemporaryCheckpoint(string signal, int expectedExit)
    {
        string outputs = Directory.CreateDirectory(Path.Combine(_dir, "outputs")).FullName;
        for (int round = 0; round < 2; round++)
        {
            using var run = new RunningDbp(_dir, "train", "--epochs", "1000", "--layers", "1024", "--optimizer", "adam",
                "--checkpoint", Path.Combine(outputs, "c.st"), "--checkpoint-every", "1", "--progress", "none");
            // Checkpoints are being written once the first one is there.
            var clock = Stopwatch.StartNew();
            while (!File.Exists(Path.Combine(outputs, "c.st")) && clock.Elapsed < TimeSpan.FromSeconds(60))
            {
                Thread.Sleep(20);
            }
            Thread.Sleep(300 + 170 * round);
            using (Process kill = Process.Start("kill", [$"-{signal}", run.Pid.ToString(System.Globalization.CultureInfo.InvariantCulture)])!)
            {
                kill.WaitForExit();
            }
            Assert.Equal(expectedExit, run.WaitForExit(TimeSpan.FromSeconds(30)));
            Assert.Equal(["c.st"], Directory.GetFileSystemEntries(outputs).Select(Path.GetFileName));
        }
    }
}
