using System.Text.RegularExpressions;
using DistributedBackprop.Cli.Commands;
using DistributedBackprop.Cli.Output;
using DistributedBackprop.Engine;
using Spectre.Console;
using Spectre.Console.Testing;

namespace DistributedBackprop.Cli.Tests;

/// <summary>Tests that swap the process-wide <see cref="AnsiConsole.Console"/>: never in parallel with each other.</summary>
[CollectionDefinition("ansi-console", DisableParallelization = true)]
public sealed class AnsiConsoleCollection;

/// <summary>
/// The bar mode through Spectre's test console at 80 and 200 columns: while the live bar runs, every epoch
/// leaves one kept line with its train, validation and (where they fit) test metrics, early stopping says so
/// in a line of its own, and no line is wider than the console.
/// </summary>
[Collection("ansi-console")]
public sealed partial class BarModeTests
{
    [GeneratedRegex(@"\x1b\[[0-9;?]*[A-Za-z]")]
    private static partial Regex AnsiSequence();

    private static EpochReport Epoch(int epoch) => new()
    {
        Epoch = epoch,
        Step = epoch * 10L,
        TrainLoss = 1.0 / epoch,
        TrainAccuracy = 0.9 + epoch / 100.0,
        ValidationLoss = epoch == 1 ? 0.9 : 1.1,
        ValidationAccuracy = 0.87 + epoch / 100.0,
        BestEpoch = 1,
        StoppedEarly = epoch == 3,
        TestLoss = 1.2 / epoch,
        TestAccuracy = 0.88 + epoch / 100.0,
        SamplesPerSecond = 61234,
        EpochTime = TimeSpan.FromSeconds(0.2),
        Elapsed = TimeSpan.FromSeconds(0.2 * epoch),
        LearningRate = 0.05f,
        WorkerStepsPerSecond = new Dictionary<string, double> { ["w1"] = 812, ["w2"] = 790, ["w3"] = 801 },
    };

    [Theory]
    [InlineData(80)]
    [InlineData(200)]
    public void Every_epoch_keeps_one_line_that_fits_the_console(int width)
    {
        var console = new TestConsole().Width(width).Interactive().EmitAnsiSequences();
        IAnsiConsole previous = AnsiConsole.Console;
        AnsiConsole.Console = console;
        try
        {
            using var display = new TrainingDisplay(ProgressMode.Bar, null) { Detail = () => "w1:812/s w2:790/s w3:801/s" };
            display.Run("training 784-256-128-10 relu,relu,softmax cross_entropy on fashion-mnist: 60000 training rows, 3 epochs", 30, 0, () =>
            {
                for (int epoch = 0; epoch < 3; epoch++)
                {
                    for (int step = 0; step < 10; step++)
                    {
                        display.StepCompleted(new StepReport(epoch * 10L + step + 1, epoch, step, 10, 30, 0.5, 256, TimeSpan.FromMilliseconds(epoch * 200 + step * 20)));
                        Thread.Sleep(12);
                    }
                    display.EpochCompleted(Epoch(epoch + 1));
                }
            });
        }
        finally
        {
            AnsiConsole.Console = previous;
        }

        // What the terminal shows: escape sequences removed, and a carriage return starting the line over (the
        // live bar redraws itself that way), so a line is what follows its last '\r'.
        string[] lines = AnsiSequence().Replace(console.Output, "").Split('\n')
            .Select(l => l.TrimEnd('\r')).Select(l => l[(l.LastIndexOf('\r') + 1)..].TrimEnd()).ToArray();
        foreach (string line in lines)
        {
            Assert.True(line.Length <= width, $"{line.Length} columns > {width}: '{line}'");
        }
        for (int epoch = 1; epoch <= 3; epoch++)
        {
            string expected = TrainingDisplay.EpochLine(Epoch(epoch), width);
            Assert.Single(lines, l => l.TrimEnd() == expected);
            // Validation comes before test: at 80 columns the test metrics are the first to go.
            Assert.Contains(epoch == 1 ? "val acc 88.00 % *" : $"val acc {87 + epoch}.00 %", expected, StringComparison.Ordinal);
            Assert.True(width < 200 || (expected.Contains("test acc", StringComparison.Ordinal) && expected.Contains("samples/s", StringComparison.Ordinal)), expected);
        }
        Assert.Single(lines, l => l == "early stopping after epoch 3: no better validation score since epoch 1");
    }
}
