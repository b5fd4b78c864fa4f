using DistributedBackprop.Data;
using DistributedBackprop.Engine;
using ScottPlot;

namespace DistributedBackprop.Cli.Output;

/// <summary>One run's epochs under the name its legend entries carry.</summary>
internal sealed record PlottedRun(string Name, IReadOnlyList<EpochReport> Epochs);

/// <summary>
/// The pictures of a training run, drawn with ScottPlot: learning curves (loss and accuracy per epoch, train
/// solid and test dashed, one colour per run, several runs overlaid) with the per-worker step rate below
/// when a run had worker actors, and a confusion matrix. Built as ScottPlot objects (what the tests read)
/// and written as PNG atomically.
/// </summary>
internal static class TrainingPlots
{
    public const int DefaultWidth = 1000;
    public const int PanelHeight = 340;

    /// <summary>Loss and accuracy panels, plus a worker step-rate panel if any run reports worker rates.</summary>
    public static Multiplot Curves(IReadOnlyList<PlottedRun> runs)
    {
        bool workers = runs.Any(r => r.Epochs.Any(e => e.WorkerStepsPerSecond is { Count: > 0 }));
        var figure = new Multiplot();
        figure.AddPlots(workers ? 3 : 2);
        figure.Layout = new ScottPlot.MultiplotLayouts.Rows();
        Plot loss = figure.GetPlot(0), accuracy = figure.GetPlot(1);
        var palette = new ScottPlot.Palettes.Category10();
        for (int i = 0; i < runs.Count; i++)
        {
            PlottedRun run = runs[i];
            Color colour = palette.GetColor(i);
            double[] epochs = run.Epochs.Select(e => (double)e.Epoch).ToArray();
            Line(loss, run, "train", epochs, run.Epochs.Select(e => e.TrainLoss), colour, LinePattern.Solid);
            Line(accuracy, run, "train", epochs, run.Epochs.Select(e => e.TrainAccuracy), colour, LinePattern.Solid);
            EpochReport[] validated = run.Epochs.Where(e => e.ValidationLoss is not null && e.ValidationAccuracy is not null).ToArray();
            if (validated.Length > 0)
            {
                double[] validationEpochs = validated.Select(e => (double)e.Epoch).ToArray();
                Line(loss, run, "validation", validationEpochs, validated.Select(e => e.ValidationLoss!.Value), colour, LinePattern.Dotted);
                Line(accuracy, run, "validation", validationEpochs, validated.Select(e => e.ValidationAccuracy!.Value), colour, LinePattern.Dotted);
            }
            EpochReport[] tested = run.Epochs.Where(e => e.TestLoss is not null && e.TestAccuracy is not null).ToArray();
            if (tested.Length > 0)
            {
                double[] testEpochs = tested.Select(e => (double)e.Epoch).ToArray();
                Line(loss, run, "test", testEpochs, tested.Select(e => e.TestLoss!.Value), colour, LinePattern.Dashed);
                Line(accuracy, run, "test", testEpochs, tested.Select(e => e.TestAccuracy!.Value), colour, LinePattern.Dashed);
            }
        }
        Decorate(loss, "loss (mean over the epoch's rows)", "loss");
        Decorate(accuracy, "accuracy", "accuracy", Alignment.LowerRight);
        if (workers)
        {
            Plot rates = figure.GetPlot(2);
            int series = 0;
            foreach (PlottedRun run in runs)
            {
                foreach (string worker in run.Epochs.SelectMany(e => e.WorkerStepsPerSecond?.Keys ?? []).Distinct().Order(StringComparer.Ordinal))
                {
                    EpochReport[] withRate = run.Epochs.Where(e => e.WorkerStepsPerSecond?.ContainsKey(worker) == true).ToArray();
                    Line(rates, run, worker, withRate.Select(e => (double)e.Epoch).ToArray(), withRate.Select(e => e.WorkerStepsPerSecond![worker]),
                        palette.GetColor(series++), runs.Count > 1 && run != runs[0] ? LinePattern.Dashed : LinePattern.Solid);
                }
            }
            Decorate(rates, "steps/s per worker", "steps/s", Alignment.LowerRight);
        }
        return figure;
    }

    /// <summary>Rows: true class (top to bottom), columns: predicted class; each cell shows its count.</summary>
    public static Plot Confusion(int[,] confusion, IReadOnlyList<string> classes, string title)
    {
        int n = classes.Count;
        var plot = new Plot();
        var values = new double[n, n];
        for (int t = 0; t < n; t++)
        {
            for (int p = 0; p < n; p++)
            {
                values[t, p] = confusion[t, p];
            }
        }
        var heatmap = plot.Add.Heatmap(values);
        heatmap.Colormap = new ScottPlot.Colormaps.Viridis();
        plot.Add.ColorBar(heatmap);
        double top = n - 1;
        int largest = Math.Max(1, confusion.Cast<int>().Max());
        for (int t = 0; t < n; t++)
        {
            for (int p = 0; p < n; p++)
            {
                // The heatmap draws row 0 at the top (y = n − 1).
                var label = plot.Add.Text(confusion[t, p].ToString(System.Globalization.CultureInfo.InvariantCulture), p, top - t);
                label.LabelAlignment = Alignment.MiddleCenter;
                label.LabelFontColor = confusion[t, p] > largest / 2 ? Colors.Black : Colors.White;
                label.LabelFontSize = n > 12 ? 9 : 13;
            }
        }
        double[] positions = Enumerable.Range(0, n).Select(i => (double)i).ToArray();
        plot.Axes.Bottom.SetTicks(positions, classes.ToArray());
        plot.Axes.Left.SetTicks(positions.Select(y => top - y).ToArray(), classes.ToArray());
        plot.Title(title);
        plot.XLabel("predicted class");
        plot.YLabel("true class");
        return plot;
    }

    /// <summary>Renders and writes a PNG of exactly <paramref name="width"/>×<paramref name="height"/> pixels (temporary file, then rename).</summary>
    public static void SavePng(Multiplot figure, string path, int width, int height) =>
        Write(path, figure.Render(width, height));

    public static void SavePng(Plot plot, string path, int width, int height) =>
        Write(path, plot.GetImage(width, height));

    /// <summary>The checks every --plot / --width / --height gets before anything is computed.</summary>
    public static void CheckSize(int width, int height)
    {
        if (width is < 200 or > 10000 || height is < 150 or > 10000)
        {
            throw new Commands.UsageException($"--width and --height: 200–10000 and 150–10000 pixels, got {width}×{height}");
        }
    }

    private static void Write(string path, Image image)
    {
        using (image)
        {
            byte[] png = image.GetImageBytes(ImageFormat.Png);
            DataFiles.WriteAtomically(path, stream => stream.Write(png));
        }
    }

    private static void Line(Plot plot, PlottedRun run, string series, double[] xs, IEnumerable<double> ys, Color colour, LinePattern pattern)
    {
        var line = plot.Add.ScatterLine(xs, ys.ToArray());
        line.LegendText = $"{run.Name} {series}";
        line.Color = colour;
        line.LinePattern = pattern;
        line.LineWidth = 2;
        line.MarkerSize = xs.Length <= 40 ? 5 : 0;
        // Test series: dashed with open markers, so the legend tells them apart too.
        line.MarkerShape = pattern.Equals(LinePattern.Dashed) ? MarkerShape.OpenCircle : MarkerShape.FilledCircle;
    }

    private static void Decorate(Plot plot, string title, string yLabel, Alignment legend = Alignment.UpperRight)
    {
        plot.Title(title);
        plot.XLabel("epoch");
        plot.YLabel(yLabel);
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericAutomatic { IntegerTicksOnly = true };
        plot.ShowLegend(legend);
    }
}
