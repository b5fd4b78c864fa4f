using System.Buffers.Binary;
using System.Text.Json;
using DistributedBackprop.Cli.Output;
using ScottPlot;
using ScottPlot.Plottables;

namespace DistributedBackprop.Cli.Tests;

/// <summary>
/// Plots: the files are PNGs of the stated size, and what is drawn (ScottPlot's plottables, read back) is
/// the metrics: every series' points equal the metrics file's numbers, every run and worker has its legend
/// entry, the confusion matrix's cells are the counts.
/// </summary>
public sealed class PlotTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("dbp-plot-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static (int Width, int Height) PngSize(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        Assert.True(bytes.AsSpan(0, 8).SequenceEqual(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A }), $"{path} is not a PNG");
        Assert.Equal("IHDR", System.Text.Encoding.ASCII.GetString(bytes, 12, 4));
        return (BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(16)), BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(20)));
    }

    private (string Actors, string Plain) TwoRuns()
    {
        string actors = Path.Combine(_dir, "actors.jsonl"), plain = Path.Combine(_dir, "plain.jsonl");
        DbpResult a = DbpProcess.Run(_dir, "train", "--epochs", "4", "--workers", "2", "--layers", "16", "--metrics", actors, "--plot", Path.Combine(_dir, "actors.png"), "--progress", "none");
        Assert.True(a.ExitCode == 0, a.Stderr);
        DbpResult b = DbpProcess.Run(_dir, "train", "--epochs", "3", "--workers", "0", "--layers", "16", "--test-fraction", "0.3", "--metrics", plain, "--progress", "none");
        Assert.True(b.ExitCode == 0, b.Stderr);
        return (actors, plain);
    }

    [Fact]
    public void Plot_draws_the_metrics_of_every_run_and_worker()
    {
        var (actors, plain) = TwoRuns();
        string png = Path.Combine(_dir, "curves.png");
        DbpResult plot = DbpProcess.Run(_dir, "plot", actors, plain, "--out", png, "--width", "900");
        Assert.True(plot.ExitCode == 0, plot.Stderr);
        Assert.Equal((900, 3 * TrainingPlots.PanelHeight), PngSize(png));
        Assert.Equal((TrainingPlots.DefaultWidth, 3 * TrainingPlots.PanelHeight), PngSize(Path.Combine(_dir, "actors.png")));

        // The same figure, built in process, read back through ScottPlot's data model.
        var runs = new[] { new PlottedRun("actors", MetricsReader.Read(actors)), new PlottedRun("plain", MetricsReader.Read(plain)) };
        Multiplot figure = TrainingPlots.Curves(runs);
        Dictionary<string, Scatter> loss = Series(figure.GetPlot(0)), accuracy = Series(figure.GetPlot(1)), rates = Series(figure.GetPlot(2));
        foreach (var (name, path) in new[] { ("actors", actors), ("plain", plain) })
        {
            JsonElement[] lines = File.ReadAllLines(path).Select(l => JsonDocument.Parse(l).RootElement).ToArray();
            AssertPoints(loss[$"{name} train"], lines, "train_loss");
            AssertPoints(loss[$"{name} test"], lines, "test_loss");
            AssertPoints(accuracy[$"{name} train"], lines, "train_accuracy");
            AssertPoints(accuracy[$"{name} test"], lines, "test_accuracy");
        }
        JsonElement[] actorLines = File.ReadAllLines(actors).Select(l => JsonDocument.Parse(l).RootElement).ToArray();
        Assert.Equal(["actors worker-1", "actors worker-2"], rates.Keys.Order());
        foreach (string worker in new[] { "worker-1", "worker-2" })
        {
            var points = rates[$"actors {worker}"].Data.GetScatterPoints();
            Assert.Equal(actorLines.Select(l => l.GetProperty("worker_steps_per_second").GetProperty(worker).GetDouble()), points.Select(p => p.Y));
        }
    }

    private static Dictionary<string, Scatter> Series(Plot plot) =>
        plot.GetPlottables().OfType<Scatter>().ToDictionary(s => s.LegendText);

    private static void AssertPoints(Scatter series, JsonElement[] lines, string field)
    {
        var points = series.Data.GetScatterPoints();
        Assert.Equal(lines.Select(l => (double)l.GetProperty("epoch").GetInt32()), points.Select(p => p.X));
        Assert.Equal(lines.Select(l => l.GetProperty(field).GetDouble()), points.Select(p => p.Y));
    }

    [Fact]
    public void Evaluate_draws_the_confusion_matrix_it_prints()
    {
        string model = Path.Combine(_dir, "m.safetensors"), png = Path.Combine(_dir, "confusion.png");
        string data = Path.Combine(_dir, "blobs.csv");
        var random = new Random(5);
        File.WriteAllLines(data, new[] { "x,y,kind" }.Concat(Enumerable.Range(0, 90).Select(i =>
            FormattableString.Invariant($"{i % 3 * 2 + random.NextDouble() * 1.5},{random.NextDouble()},{new[] { "red", "green", "blue" }[i % 3]}"))));
        Assert.Equal(0, DbpProcess.Run(_dir, "train", "--data", data, "--layers", "8", "--epochs", "5", "--out", model, "--progress", "none").ExitCode);
        DbpResult evaluate = DbpProcess.Run(_dir, "evaluate", "--model", model, "--data", data, "--json", "--plot", png, "--width", "640");
        Assert.True(evaluate.ExitCode == 0, evaluate.Stderr);
        Assert.Equal((640, 560), PngSize(png));

        using JsonDocument json = JsonDocument.Parse(evaluate.Stdout);
        int[][] printed = json.RootElement.GetProperty("confusion").EnumerateArray().Select(r => r.EnumerateArray().Select(c => c.GetInt32()).ToArray()).ToArray();
        string[] classes = json.RootElement.GetProperty("classes").EnumerateArray().Select(c => c.GetString()!).ToArray();
        var counts = new int[3, 3];
        for (int t = 0; t < 3; t++) for (int p = 0; p < 3; p++) counts[t, p] = printed[t][p];
        Plot plot = TrainingPlots.Confusion(counts, classes, "test");
        double[,] cells = plot.GetPlottables().OfType<Heatmap>().Single().Intensities;
        var labels = plot.GetPlottables().OfType<Text>().ToDictionary(t => (t.Location.X, t.Location.Y), t => t.LabelText);
        for (int t = 0; t < 3; t++)
        {
            for (int p = 0; p < 3; p++)
            {
                Assert.Equal(printed[t][p], cells[t, p]);
                Assert.Equal(printed[t][p].ToString(System.Globalization.CultureInfo.InvariantCulture), labels[(p, 2 - t)]);
            }
        }
    }

    [Fact]
    public void A_bad_metrics_line_is_one_error_naming_file_and_line_and_no_picture()
    {
        string metrics = Path.Combine(_dir, "bad.jsonl"), png = Path.Combine(_dir, "bad.png");
        File.WriteAllText(metrics, "{\"epoch\":1,\"step\":5,\"train_loss\":0.5,\"train_accuracy\":0.8,\"test_loss\":null,\"test_accuracy\":null,\"samples_per_second\":1,\"epoch_seconds\":1,\"elapsed_seconds\":1,\"learning_rate\":0.1}\n{\"epoch\":2,\"step\n");
        DbpResult plot = DbpProcess.Run(_dir, "plot", metrics, "--out", png);
        Assert.Equal(2, plot.ExitCode);
        Assert.StartsWith($"dbp plot: {metrics}:2: not a dbp metrics line", plot.Stderr);
        Assert.Single(plot.Stderr.Trim().Split('\n'));
        Assert.Empty(Directory.GetFiles(_dir, "bad.png*"));

        DbpResult tiny = DbpProcess.Run(_dir, "plot", metrics, "--out", png, "--width", "10");
        Assert.Equal(2, tiny.ExitCode);
        Assert.Contains("--width", tiny.Stderr);
    }

    [Fact]
    public void Steps_beyond_32_bits_are_plotted()
    {
        // Steps are 64-bit counts: a long run's metrics must not be refused when its step passes 2^31.
        const string Line = "{\"epoch\":1,\"step\":5000000000,\"train_loss\":0.5,\"train_accuracy\":0.8,\"samples_per_second\":1,\"epoch_seconds\":1,\"elapsed_seconds\":1,\"learning_rate\":0.1}";
        string metrics = Path.Combine(_dir, "long.jsonl"), png = Path.Combine(_dir, "long.png");
        File.WriteAllText(metrics, Line + "\n" + Line.Replace("\"epoch\":1", "\"epoch\":2", StringComparison.Ordinal).Replace("5000000000", "5000000100", StringComparison.Ordinal) + "\n");
        DbpResult plot = DbpProcess.Run(_dir, "plot", metrics, "--out", png);
        Assert.True(plot.ExitCode == 0, plot.Stderr);
        Assert.True(File.Exists(png));
    }

    [Theory]
    [InlineData("\"epoch_seconds\":1", "\"epoch_seconds\":1e300", "'epoch_seconds' is 1E+300, outside [0, 1E+09]")]
    [InlineData("\"elapsed_seconds\":1", "\"elapsed_seconds\":-1e300", "'elapsed_seconds' is -1E+300, outside [0, 1E+09]")]
    [InlineData("\"train_loss\":0.5", "\"train_loss\":1e308", "'train_loss' is 1E+308, outside [0, 1E+30]")]
    [InlineData("\"train_accuracy\":0.8", "\"train_accuracy\":-1e308", "'train_accuracy' is -1E+308, outside [0, 1]")]
    [InlineData("\"samples_per_second\":1", "\"samples_per_second\":1,\"worker_steps_per_second\":{\"w1\":1e308}", "'worker_steps_per_second.w1' is 1E+308, outside [0, 1E+30]")]
    [InlineData("\"samples_per_second\":1,", "", "no 'samples_per_second' field")]
    public void An_unplottable_or_missing_value_is_one_error_naming_file_line_and_field(string field, string replacement, string expected)
    {
        const string Good = "{\"epoch\":1,\"step\":5,\"train_loss\":0.5,\"train_accuracy\":0.8,\"samples_per_second\":1,\"epoch_seconds\":1,\"elapsed_seconds\":1,\"learning_rate\":0.1}";
        string metrics = Path.Combine(_dir, "extreme.jsonl"), png = Path.Combine(_dir, "extreme.png");
        File.WriteAllText(metrics, Good + "\n" + Good.Replace("\"epoch\":1", "\"epoch\":2", StringComparison.Ordinal).Replace(field, replacement, StringComparison.Ordinal) + "\n");
        DbpProcess.AssertUsageError(DbpProcess.Run(_dir, "plot", metrics, "--out", png), $"{metrics}:2: not a dbp metrics line ({expected})", "plot");
        Assert.False(File.Exists(png));
    }
}
