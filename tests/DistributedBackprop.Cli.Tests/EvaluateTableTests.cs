namespace DistributedBackprop.Cli.Tests;

/// <summary>`dbp evaluate`'s text output for a model with many classes.</summary>
public sealed class EvaluateTableTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("dbp-eval-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void ManyClasses_ListTheMostMistakenOnes_InsteadOfTheMatrix()
    {
        // 40 classes, 4 rows each, features that barely tell them apart: after one epoch most rows are wrong.
        string data = Path.Combine(_dir, "many.csv");
        File.WriteAllLines(data, ["a,b,label", .. Enumerable.Range(0, 160).Select(i => $"{i % 3},{i % 5},c{i % 40}")]);
        Assert.Equal(0, DbpProcess.Run(_dir, "train", "--data", data, "--epochs", "1", "--out", "m.st", "--progress", "none").ExitCode);

        DbpResult result = DbpProcess.Run(_dir, "evaluate", "--model", "m.st", "--data", data);

        Assert.Equal(0, result.ExitCode);
        Assert.Contains("40 classes: the confusion matrix is in --json and --plot; below, the 20 classes with the most mistakes", result.Stdout);
        Assert.Contains("most often taken for", result.Stdout);
        Assert.DoesNotContain("rows: true class, columns: predicted", result.Stdout);
        Assert.True(result.Stdout.Split('\n').Length < 40, result.Stdout);
    }
}
