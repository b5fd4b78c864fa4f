using System.Diagnostics;
using System.Globalization;
using DistributedBackprop.Engine;
using Spectre.Console;

namespace DistributedBackprop.Cli.Output;

/// <summary>How progress is shown: a live bar on a terminal, plain lines otherwise (CI, pipes).</summary>
internal enum ProgressMode
{
    Auto,
    Bar,
    Plain,
    None,
}

/// <summary>
/// Shows training progress and keeps the epoch reports for the final summary. On a terminal: a live
/// progress bar (epoch, step, loss, samples/s, ETA). Otherwise: one plain line per epoch.
/// </summary>
internal sealed class TrainingDisplay : ITrainingObserver, IDisposable
{
    private readonly ProgressMode _mode;
    private readonly MetricsWriter? _metrics;
    private const int TailKept = 9;
    private readonly List<EpochReport> _epochs = [];
    private readonly List<EpochReport> _history = [];
    private readonly Stopwatch _sinceRefresh = Stopwatch.StartNew();
    private ProgressTask? _task;
    private double _recentLoss = double.NaN;
    private long _rowsSinceRefresh;

    public TrainingDisplay(ProgressMode mode, MetricsWriter? metrics)
    {
        _mode = mode == ProgressMode.Auto
            ? (AnsiConsole.Profile.Capabilities.Interactive && !Console.IsOutputRedirected ? ProgressMode.Bar : ProgressMode.Plain)
            : mode;
        _metrics = metrics;
    }

    public IReadOnlyList<EpochReport> Epochs => _epochs;

    /// <summary>A live bar is drawn (so its per-worker detail is worth polling for).</summary>
    public bool ShowsBar => _mode == ProgressMode.Bar;

    /// <summary>Every epoch of this run, in order (for --plot; <see cref="Epochs"/> keeps a long run's first and last only).</summary>
    public IReadOnlyList<EpochReport> History => _history;

    /// <summary>Waits until every epoch's metrics line is in the file (throws if a write failed).</summary>
    public void Persist() => _metrics?.Flush();

    public void Dispose() => _metrics?.Dispose();

    /// <summary>Extra text after the rate (e.g. per-worker steps/s), refreshed by the caller.</summary>
    public Func<string>? Detail { get; set; }

    /// <summary>Runs <paramref name="training"/> under the chosen display.</summary>
    public void Run(string title, long totalSteps, long startStep, Action training)
    {
        if (_mode != ProgressMode.Bar)
        {
            if (_mode == ProgressMode.Plain)
            {
                Console.WriteLine(title);
            }
            training();
            return;
        }
        AnsiConsole.MarkupLine(Markup.Escape(title));
        _barWidth = BarWidth(AnsiConsole.Profile.Width);
        AnsiConsole.Progress()
            .AutoClear(false)
            .HideCompleted(false)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn { Width = _barWidth }, new PercentageColumn(), new RemainingTimeColumn(), new SpinnerColumn())
            .Start(context =>
            {
                _task = context.AddTask("starting", maxValue: totalSteps);
                _task.Value = startStep;
                training();
                _task.Value = totalSteps;
                _task.StopTask();
            });
    }

    public void StepCompleted(StepReport report)
    {
        _rowsSinceRefresh += report.Rows;
        _recentLoss = double.IsNaN(_recentLoss) ? report.Loss : 0.9 * _recentLoss + 0.1 * report.Loss;
        if (_task is null || _sinceRefresh.ElapsedMilliseconds < 100)
        {
            return;
        }
        double rate = _rowsSinceRefresh / _sinceRefresh.Elapsed.TotalSeconds;
        _rowsSinceRefresh = 0;
        _sinceRefresh.Restart();
        string detail = Detail?.Invoke().Trim() ?? "";
        _task.Description = Markup.Escape(Fit(DescriptionWidth(AnsiConsole.Profile.Width, _barWidth),
            string.Create(CultureInfo.InvariantCulture, $"epoch {report.Epoch + 1} step {report.GlobalStep - (long)report.Epoch * report.StepsPerEpoch}/{report.StepsPerEpoch}"),
            string.Create(CultureInfo.InvariantCulture, $"loss {_recentLoss:F4}"),
            string.Create(CultureInfo.InvariantCulture, $"{rate:N0} samples/s"),
            detail));
        _task.Value = report.GlobalStep;
    }

    private int _barWidth = 40;

    /// <summary>The bar's width on a console <paramref name="width"/> columns wide: a quarter of it, 10 to 40.</summary>
    public static int BarWidth(int width) => Math.Clamp(width / 4, 10, 40);

    /// <summary>
    /// Columns left for the description beside the bar, the percentage ("100%"), the time left ("00:00:00"),
    /// the spinner and the gaps between the five columns.
    /// </summary>
    public static int DescriptionWidth(int width, int barWidth) => Math.Max(8, width - barWidth - 4 - 8 - 1 - 5);

    /// <summary>
    /// The live line within <paramref name="width"/> characters: the required part, then each optional field
    /// (in order of importance) that still fits — fields are dropped whole, so a narrow console shows fewer of
    /// them instead of an ellipsis; only a required part wider than the console itself is cut.
    /// </summary>
    public static string Fit(int width, string required, params string[] optional)
    {
        string line = required.Length <= width ? required : required[..Math.Max(0, width - 1)] + "…";
        foreach (string field in optional)
        {
            if (field.Length > 0 && line.Length + 2 + field.Length <= width)
            {
                line += "  " + field;
            }
        }
        return line;
    }

    public void EpochCompleted(EpochReport report)
    {
        _history.Add(report);
        _epochs.Add(report);
        if (_epochs.Count > 3 + TailKept)
        {
            // The summary shows the first three epochs and the last five: a long run keeps no more than that.
            _epochs.RemoveAt(3);
        }
        _metrics?.Append(report);
        if (_mode == ProgressMode.Plain)
        {
            Console.WriteLine(FormatEpoch(report));
        }
        else if (_mode == ProgressMode.Bar)
        {
            // One kept line per epoch above the live bar (as Keras and Lightning do), fitted to the console.
            AnsiConsole.MarkupLine(Markup.Escape(EpochLine(report, AnsiConsole.Profile.Width)));
        }
        if (report.StoppedEarly && _mode != ProgressMode.None)
        {
            string line = report.BestEpoch is > 0
                ? string.Create(CultureInfo.InvariantCulture, $"early stopping after epoch {report.Epoch}: no better validation score since epoch {report.BestEpoch}")
                : string.Create(CultureInfo.InvariantCulture, $"early stopping after epoch {report.Epoch}: no epoch had a finite validation score");
            if (_mode == ProgressMode.Bar) AnsiConsole.MarkupLine(Markup.Escape(line)); else Console.WriteLine(line);
        }
    }

    /// <summary>"val loss … val acc …", marked when the epoch is the best so far; empty without validation.</summary>
    private static string ValidationField(EpochReport r) => r.ValidationAccuracy is double accuracy
        ? FormattableString.Invariant($"val loss {r.ValidationLoss:F4}  val acc {accuracy:P2}") + (r.BestEpoch == r.Epoch ? " *" : "")
        : "";

    /// <summary>
    /// An epoch's kept line in bar mode, within <paramref name="width"/> columns: the epoch and its training
    /// loss and accuracy always, then the validation metrics (* marks the best epoch so far), the test
    /// metrics, the rate and the elapsed time as they fit.
    /// </summary>
    public static string EpochLine(EpochReport r, int width) => Fit(width,
        FormattableString.Invariant($"epoch {r.Epoch,3}  loss {r.TrainLoss:F4}  acc {r.TrainAccuracy:P2}"),
        ValidationField(r),
        r.TestAccuracy is double testAccuracy ? FormattableString.Invariant($"test loss {r.TestLoss:F4}  test acc {testAccuracy:P2}") : "",
        FormattableString.Invariant($"{r.SamplesPerSecond:N0} samples/s"),
        FormattableString.Invariant($"{r.Elapsed.TotalSeconds:F1}s"));

    public static string FormatEpoch(EpochReport r)
    {
        string test = r.TestAccuracy is double accuracy
            ? FormattableString.Invariant($"test loss {r.TestLoss:F4}  test acc {accuracy:P2}  ")
            : "";
        string validation = ValidationField(r);
        return FormattableString.Invariant($"epoch {r.Epoch,3}  step {r.Step,7}  train loss {r.TrainLoss:F4}  train acc {r.TrainAccuracy:P2}  ")
            + (validation.Length > 0 ? validation + "  " : "") + test + FormattableString.Invariant($"{r.SamplesPerSecond:N0} samples/s  {r.Elapsed.TotalSeconds:F1}s");
    }

    /// <summary>The final table: a few epochs (first, last, best) and the totals.</summary>
    public void PrintSummary(string? modelPath, EvaluationResult? finalTest, string? validation = null)
    {
        if (_mode != ProgressMode.None && _epochs.Count > 0)
        {
            PrintTable();
        }
        if (validation is not null)
        {
            Console.WriteLine(validation);
        }
        if (finalTest is not null)
        {
            int correct = (int)Math.Round(finalTest.Accuracy * finalTest.Rows);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"test accuracy: {finalTest.Accuracy:P2} ({correct}/{finalTest.Rows}), test loss {finalTest.Loss:F4}"));
        }
        Console.WriteLine(modelPath is null ? "model not saved (use --out FILE to save it)" : $"model written to {modelPath}");
    }

    private void PrintTable()
    {
        bool validated = _epochs.Any(e => e.ValidationLoss is not null);
        int? bestEpoch = _epochs[^1].BestEpoch; // the run's best, marked *
        static string Loss(double? value) => value?.ToString("F4", CultureInfo.InvariantCulture) ?? "–";
        static string Ratio(double? value) => value?.ToString("P2", CultureInfo.InvariantCulture) ?? "–";
        // (heading, cell, dropped-when-narrow rank: 0 never, higher goes first).
        var columns = new List<(string Heading, Func<EpochReport, string> Cell, int DropRank)>
        {
            ("epoch", r => r.Epoch.ToString(CultureInfo.InvariantCulture) + (validated && bestEpoch == r.Epoch ? " *" : ""), 0),
            ("step", r => r.Step.ToString(CultureInfo.InvariantCulture), 3),
            ("loss", r => Loss(r.TrainLoss), 0),
            ("acc", r => Ratio(r.TrainAccuracy), 0),
        };
        if (validated)
        {
            columns.Add(("val loss", r => Loss(r.ValidationLoss), 0));
            columns.Add(("val acc", r => Ratio(r.ValidationAccuracy), 0));
        }
        columns.Add(("test loss", r => Loss(r.TestLoss), 1));
        columns.Add(("test acc", r => Ratio(r.TestAccuracy), 0));
        columns.Add(("samples/s", r => r.SamplesPerSecond.ToString("N0", CultureInfo.InvariantCulture), 4));
        columns.Add(("time", r => r.Elapsed.TotalSeconds.ToString("F1", CultureInfo.InvariantCulture) + "s", 2));

        // Epochs dropped from the middle (EpochCompleted keeps 3 + 9) show as a gap: then first three, last five.
        bool complete = _epochs[^1].Epoch - _epochs[0].Epoch == _epochs.Count - 1;
        EpochReport[] shown = (complete ? _epochs : _epochs.Take(3).Concat(_epochs.TakeLast(5))).ToArray();
        // Whole columns go, least useful first, until the table fits the console (cells are never wrapped).
        int Width() => 1 + columns.Sum(c => 3 + Math.Max(c.Heading.Length, shown.Max(r => c.Cell(r).Length)));
        while (Width() > AnsiConsole.Profile.Width && columns.Any(c => c.DropRank > 0))
        {
            columns.Remove(columns.MaxBy(c => c.DropRank));
        }

        var table = new Table().Border(TableBorder.Rounded).Title("training summary");
        foreach (var column in columns)
        {
            table.AddColumn(new TableColumn(column.Heading).RightAligned());
        }
        EpochReport? previous = null;
        foreach (EpochReport r in shown)
        {
            if (previous is not null && r.Epoch != previous.Epoch + 1)
            {
                table.AddRow(["…", .. Enumerable.Repeat("", columns.Count - 1)]);
            }
            table.AddRow(columns.Select(c => c.Cell(r)).ToArray());
            previous = r;
        }
        AnsiConsole.Write(table);
    }
}
