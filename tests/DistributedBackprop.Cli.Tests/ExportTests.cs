using System.Globalization;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace DistributedBackprop.Cli.Tests;

/// <summary>`dbp export --onnx` end to end: ONNX Runtime on the exported file reproduces `dbp predict`'s CSV.</summary>
public sealed class ExportTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("dbp-export-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void The_exported_model_in_OnnxRuntime_gives_predicts_probabilities_on_held_out_rows()
    {
        string model = Path.Combine(_dir, "digits.safetensors"), onnx = Path.Combine(_dir, "digits.onnx");
        DbpResult train = DbpProcess.Run(_dir, "train", "--epochs", "3", "--workers", "0", "--layers", "32", "--out", model, "--progress", "none");
        Assert.True(train.ExitCode == 0, train.Stderr);
        DbpResult export = DbpProcess.Run(_dir, "export", "--model", model, "--onnx", onnx);
        Assert.True(export.ExitCode == 0, export.Stderr);
        Assert.Contains("input features [n, 64], outputs probabilities [n, 10]", export.Stdout);

        // Rows the model never saw: pen-digit-like counts 0–16, no label column.
        const int rows = 25, features = 64;
        var random = new Random(17);
        var values = new float[rows * features];
        for (int i = 0; i < values.Length; i++) values[i] = random.Next(17);
        string csv = Path.Combine(_dir, "new.csv");
        File.WriteAllLines(csv, Enumerable.Range(0, rows).Select(r =>
            string.Join(',', values.Skip(r * features).Take(features).Select(v => v.ToString(CultureInfo.InvariantCulture)))));
        string predictions = Path.Combine(_dir, "predictions.csv");
        DbpResult predict = DbpProcess.Run(_dir, "predict", "--model", model, "--data", csv, "--header", "no", "--out", predictions);
        Assert.True(predict.ExitCode == 0, predict.Stderr);
        string[][] lines = File.ReadAllLines(predictions).Skip(1).Select(l => l.Split(',')).ToArray();

        using var session = new InferenceSession(onnx);
        using var results = session.Run([NamedOnnxValue.CreateFromTensor("features", new DenseTensor<float>(values, [rows, features]))]);
        float[] probabilities = results[0].AsTensor<float>().ToArray();
        long[] predicted = results[1].AsTensor<long>().ToArray();
        Assert.Equal(rows, lines.Length);
        for (int r = 0; r < rows; r++)
        {
            Assert.Equal(lines[r][1], session.ModelMetadata.CustomMetadataMap["classes"].Split(',')[predicted[r]]);
            for (int c = 0; c < 10; c++)
            {
                float expected = float.Parse(lines[r][2 + c], CultureInfo.InvariantCulture);
                Assert.True(Math.Abs(expected - probabilities[r * 10 + c]) <= 1e-5, $"row {r} class {c}: predict {expected:R}, ONNX Runtime {probabilities[r * 10 + c]:R}");
            }
        }
    }

    [Fact]
    public void Bad_input_is_one_line_with_exit_code_2_and_no_file_is_left()
    {
        string onnx = Path.Combine(_dir, "out.onnx");
        DbpResult missing = DbpProcess.Run(_dir, "export", "--model", Path.Combine(_dir, "none.safetensors"), "--onnx", onnx);
        Assert.Equal(2, missing.ExitCode);
        Assert.StartsWith("dbp export: ", missing.Stderr);
        Assert.Single(missing.Stderr.Trim().Split('\n'));
        Assert.False(File.Exists(onnx));

        string notAModel = Path.Combine(_dir, "text.safetensors");
        File.WriteAllText(notAModel, "this is not a model");
        DbpResult garbage = DbpProcess.Run(_dir, "export", "--model", notAModel, "--onnx", onnx);
        Assert.Equal(2, garbage.ExitCode);
        Assert.Single(garbage.Stderr.Trim().Split('\n'));
        Assert.Empty(Directory.GetFiles(_dir, "out.onnx*"));
    }

    [Theory]
    [InlineData("/nonexistent/x.onnx", "--onnx: directory /nonexistent does not exist")]
    [InlineData(".", "--onnx: . is a directory")]
    [InlineData("", "--onnx: a file name is required")]
    public void An_unwritable_onnx_path_is_refused_up_front_naming_the_option(string onnx, string expected) =>
        DbpProcess.AssertUsageError(DbpProcess.Run(_dir, "export", "--model", Path.Combine(_dir, "none.safetensors"), "--onnx", onnx), expected, "export");
}
