using System.Diagnostics;
using System.Globalization;

namespace DistributedBackprop.Cli.Tests;

/// <summary>A test that needs Debian's python3-torch (and numpy); reported as skipped, with the reason, when it is missing.</summary>
public sealed class TorchFactAttribute : FactAttribute
{
    private static readonly Lazy<string?> Missing = new(() =>
    {
        try
        {
            using Process? python = Process.Start(new ProcessStartInfo(TorchInteropTests.Python, ["-c", "import torch, numpy"]) { RedirectStandardError = true });
            if (python is null) return "no python3";
            python.StandardError.ReadToEnd();
            return python.WaitForExit(120_000) && python.ExitCode == 0 ? null : "python3-torch (and python3-numpy) not installed: apt-get install python3-torch";
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return $"no {TorchInteropTests.Python}";
        }
    });

    public TorchFactAttribute()
    {
        if (Missing.Value is string reason)
        {
            Skip = reason;
        }
    }
}

/// <summary>docs/torch_interop.py: a dbp model loaded into PyTorch's nn.Sequential predicts what `dbp predict` prints.</summary>
public sealed class TorchInteropTests : IDisposable
{
    /// <summary>Debian's python (a pyenv python3 earlier on PATH may lack the Debian packages).</summary>
    internal static string Python => File.Exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3";

    private readonly string _dir = Directory.CreateTempSubdirectory("dbp-torch-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static string Script()
    {
        for (string? dir = AppContext.BaseDirectory; dir is not null; dir = Path.GetDirectoryName(dir))
        {
            string candidate = Path.Combine(dir, "docs", "torch_interop.py");
            if (File.Exists(candidate)) return candidate;
        }
        throw new FileNotFoundException("docs/torch_interop.py not found above the test directory");
    }

    [TorchFact]
    public void The_PyTorch_model_predicts_what_dbp_predict_prints()
    {
        var random = new Random(8);
        string data = Path.Combine(_dir, "train.csv"), rows = Path.Combine(_dir, "rows.csv");
        File.WriteAllLines(data, new[] { "a,b,c,kind" }.Concat(Enumerable.Range(0, 150).Select(i =>
            FormattableString.Invariant($"{i % 3 + random.NextDouble()},{random.NextDouble() * 10},{(i % 3) * 5 - random.NextDouble()},{new[] { "x", "y", "z" }[i % 3]}"))));
        File.WriteAllLines(rows, Enumerable.Range(0, 20).Select(_ =>
            FormattableString.Invariant($"{random.NextDouble() * 3},{random.NextDouble() * 10},{random.NextDouble() * 10 - 1}")));
        foreach (var (activation, output, loss) in new[] { ("relu", "softmax", "cross_entropy"), ("tanh", "identity", "mse"), ("sigmoid", "sigmoid", "mse") })
        {
            string model = Path.Combine(_dir, $"{activation}-{output}.safetensors");
            DbpResult train = DbpProcess.Run(_dir, "train", "--data", data, "--layers", "12,6", "--activation", activation, "--output-activation", output,
                "--loss", loss, "--epochs", "10", "--out", model, "--progress", "none");
            Assert.True(train.ExitCode == 0, train.Stderr);
            DbpResult predict = DbpProcess.Run(_dir, "predict", "--model", model, "--data", rows, "--header", "no");
            Assert.True(predict.ExitCode == 0, predict.Stderr);

            var python = new ProcessStartInfo(Python, [Script(), model, rows]) { RedirectStandardOutput = true, RedirectStandardError = true };
            using Process process = Process.Start(python)!;
            string stdout = process.StandardOutput.ReadToEnd(), stderr = process.StandardError.ReadToEnd();
            Assert.True(process.WaitForExit(120_000) && process.ExitCode == 0, stderr);

            string[] expected = predict.Stdout.Trim().Split('\n'), actual = stdout.Trim().Split('\n');
            Assert.Equal(expected[0], actual[0]);
            Assert.Equal(expected.Length, actual.Length);
            for (int r = 1; r < expected.Length; r++)
            {
                string[] e = expected[r].Split(','), a = actual[r].Split(',');
                Assert.Equal(e[..2], a[..2]);
                for (int c = 2; c < e.Length; c++)
                {
                    double want = double.Parse(e[c], CultureInfo.InvariantCulture), got = double.Parse(a[c], CultureInfo.InvariantCulture);
                    Assert.True(Math.Abs(want - got) <= 1e-5, $"{activation}/{output} row {r - 1} column {c}: dbp {want}, PyTorch {got}");
                }
            }
        }
    }
}
