using System.CommandLine;
using DistributedBackprop.Cli.Output;
using DistributedBackprop.Engine;

namespace DistributedBackprop.Cli.Commands;

/// <summary>`dbp plot`: learning curves of one or more --metrics files as a PNG (<see cref="TrainingPlots"/>).</summary>
internal static class PlotCommand
{
    public static Command Create()
    {
        var files = new Argument<string[]>("metrics")
        {
            Description = "Metrics files (JSON lines) written by dbp train/serve --metrics; several are overlaid, each named by its file.",
            Arity = ArgumentArity.OneOrMore,
        };
        var output = new Option<string>("--out") { Description = "Write the PNG here.", Required = true, HelpName = "FILE" };
        var (width, height) = SizeOptions();
        var command = new Command("plot", "Draw learning curves (loss and accuracy per epoch, train and test; per-worker steps/s for actor runs) as a PNG.") { files, output, width, height };
        command.SetAction(parse => CommandRunner.Run("plot", () =>
        {
            string[] paths = parse.GetValue(files)!;
            string path = parse.GetValue(output)!;
            // The size first (before any file is read): the height's default depends on the panels.
            TrainingPlots.CheckSize(parse.GetValue(width), parse.GetValue(height) ?? 3 * TrainingPlots.PanelHeight);
            TrainCommand.CheckWritable(path, "--out");
            var runs = paths.Select(p => new PlottedRun(RunName(p, paths), MetricsReader.Read(p))).ToList();
            int panels = runs.Any(r => r.Epochs.Any(e => e.WorkerStepsPerSecond is { Count: > 0 })) ? 3 : 2;
            int h = parse.GetValue(height) ?? panels * TrainingPlots.PanelHeight;
            TrainingPlots.SavePng(TrainingPlots.Curves(runs), path, parse.GetValue(width), h);
            Console.WriteLine($"wrote {path}: {runs.Sum(r => r.Epochs.Count)} epochs of {runs.Count} run(s), {panels} panels");
            return ExitCodes.Success;
        }));
        return command;
    }

    /// <summary>--width and --height of a plot (height defaults to one panel height per panel).</summary>
    internal static (Option<int> Width, Option<int?> Height) SizeOptions() =>
        (new Option<int>("--width") { Description = "Picture width in pixels.", DefaultValueFactory = _ => TrainingPlots.DefaultWidth, HelpName = "PIXELS" },
         new Option<int?>("--height") { Description = "Picture height in pixels. Default: 340 per panel.", HelpName = "PIXELS" });

    /// <summary>A run's legend name: its file name, or its path where two files share a name.</summary>
    private static string RunName(string path, string[] all)
    {
        string name = Path.GetFileNameWithoutExtension(path);
        return all.Count(p => Path.GetFileNameWithoutExtension(p) == name) > 1 ? path : name;
    }

    /// <summary>`--plot FILE` of train and serve: this run's epochs, written after training.</summary>
    internal static void WriteRunPlot(string? path, IReadOnlyList<EpochReport> epochs, string name)
    {
        if (path is null || epochs.Count == 0)
        {
            return;
        }
        var run = new PlottedRun(name, epochs);
        int panels = epochs.Any(e => e.WorkerStepsPerSecond is { Count: > 0 }) ? 3 : 2;
        TrainingPlots.SavePng(TrainingPlots.Curves([run]), path, TrainingPlots.DefaultWidth, panels * TrainingPlots.PanelHeight);
        Console.WriteLine($"learning curves written to {path}");
    }
}
