using DistributedBackprop.Cli.Commands;
using DistributedBackprop.Cli.Output;

namespace DistributedBackprop.Cli.Tests;

/// <summary>The live progress line fits the console: optional fields are dropped whole before anything is cut.</summary>
public class ProgressLineTests
{
    private const string Required = "epoch 2 step 17/56";
    private static readonly string[] Optional = ["loss 0.4213", "61,234 samples/s", "w1:812/s w2:790/s w3:801/s"];

    [Theory]
    [InlineData(80, "epoch 2 step 17/56  loss 0.4213")]
    [InlineData(100, "epoch 2 step 17/56  loss 0.4213  61,234 samples/s")]
    [InlineData(200, "epoch 2 step 17/56  loss 0.4213  61,234 samples/s  w1:812/s w2:790/s w3:801/s")]
    public void TheLine_KeepsTheFieldsThatFit_InOrderOfImportance(int consoleWidth, string expected)
    {
        int width = TrainingDisplay.DescriptionWidth(consoleWidth, TrainingDisplay.BarWidth(consoleWidth));
        string line = TrainingDisplay.Fit(width, Required, Optional);
        Assert.Equal(expected, line);
        Assert.True(line.Length <= width, $"{line.Length} > {width}");
        Assert.DoesNotContain("…", line, StringComparison.Ordinal);
    }

    [Fact]
    public void ALaterFieldThatFits_IsKept_WhenAnEarlierOneDoesNot()
    {
        Assert.Equal("epoch 1  short", TrainingDisplay.Fit(20, "epoch 1", "a field far too long for it", "short"));
    }

    [Fact]
    public void OnlyARequiredPartWiderThanTheConsole_IsCut()
    {
        Assert.Equal("epoch 123 st…", TrainingDisplay.Fit(13, "epoch 123 step 4/5", "loss 1"));
    }

    [Theory]
    [InlineData(40)]
    [InlineData(80)]
    [InlineData(120)]
    [InlineData(300)]
    public void TheColumnsTogether_FitTheConsole(int consoleWidth)
    {
        int bar = TrainingDisplay.BarWidth(consoleWidth);
        int description = TrainingDisplay.DescriptionWidth(consoleWidth, bar);
        Assert.InRange(bar, 10, 40);
        Assert.True(consoleWidth < 40 || bar + description + 4 + 8 + 1 + 5 <= consoleWidth);
    }
}

/// <summary>--help's defaults rewritten as typed, also where a narrow terminal wrapped the entry.</summary>
public class TypedDefaultsTests
{
    [Fact]
    public void ADefaultOnAContinuationLine_OrSplitAcrossTwo_IsRewritten()
    {
        var loss = OptionParsing.LossOption(DistributedBackprop.Network.Loss.CrossEntropy);
        var other = new System.CommandLine.Option<int>("--other") { DefaultValueFactory = _ => 3 };
        var command = new System.CommandLine.Command("train") { loss, other };
        string help = "Options:\n"
            + "  --loss <mse|cross_entropy>  Cost function: mse or\n"
            + "                              cross_entropy, needs softmax output). [default:\n"
            + "                              CrossEntropy]\n"
            + "  --other <other>             Not registered. [default: 3]\n";
        string rewritten = TypedDefaults.Rewrite(help, command);
        Assert.Contains("[default: cross_entropy]", rewritten, StringComparison.Ordinal);
        Assert.DoesNotContain("CrossEntropy", rewritten, StringComparison.Ordinal);
        Assert.Contains("  --other <other>             Not registered. [default: 3]\n", rewritten, StringComparison.Ordinal);
        Assert.StartsWith("Options:\n  --loss <mse|cross_entropy>  Cost function: mse or\n", rewritten, StringComparison.Ordinal);
    }
}

