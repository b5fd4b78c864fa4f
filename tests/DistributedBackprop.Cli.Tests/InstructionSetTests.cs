namespace DistributedBackprop.Cli.Tests;

/// <summary>
/// The same bits on every CPU: small networks (every hidden activation, every output and loss) trained in
/// child processes whose runtime is told to use less of this CPU — no AVX-512, no AVX2 and FMA (128-bit
/// vectors, software fused multiply-add), no SIMD intrinsics at all — must write byte-identical model files.
/// Before the element-wise functions and reductions were defined in plain IEEE operations (commit 7f1620a),
/// each of these four models changed without SIMD, and the two softmax ones without AVX2 too.
/// </summary>
public sealed class InstructionSetTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("dbp-isa-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>The runtime's switches (.NET 10 names: DOTNET_EnableAVX512 replaced EnableAVX512F, which it ignores).</summary>
    private static readonly (string Name, Dictionary<string, string> Environment)[] InstructionSets =
    [
        ("default", new()),
        ("no AVX-512", new() { ["DOTNET_EnableAVX512"] = "0" }),
        ("no AVX2", new() { ["DOTNET_EnableAVX2"] = "0" }),
        ("no SIMD", new() { ["DOTNET_EnableHWIntrinsic"] = "0" }),
    ];

    [Fact]
    public void Every_instruction_set_computes_the_same_numeric_fingerprint()
    {
        // The fingerprint a worker registers with: a server refuses a worker whose fingerprint differs from its own.
        var fingerprints = new Dictionary<string, string>();
        foreach (var (name, environment) in InstructionSets)
        {
            DbpResult run = DbpProcess.Run(_dir, environment, "bench", "--json", "--seconds", "0.05", "--windows", "1", "--warmup", "0.05",
                "--no-gemm", "--inputs", "8", "--layers", "8", "--batch-size", "8");
            Assert.True(run.ExitCode == 0, $"{name}: exit {run.ExitCode}: {run.Stderr}");
            using var json = System.Text.Json.JsonDocument.Parse(run.Stdout);
            fingerprints[name] = json.RootElement.GetProperty("config").GetProperty("numeric_fingerprint").GetString()!;
        }
        Assert.True(fingerprints.Values.Distinct().Count() == 1, string.Join(", ", fingerprints.Select(f => $"{f.Key}: {f.Value}")));
    }

    [Theory]
    [InlineData("relu", "softmax", "cross_entropy")]
    [InlineData("tanh", "softmax", "mse")]
    [InlineData("sigmoid", "sigmoid", "mse")]
    [InlineData("tanh", "identity", "mse")]
    public void Every_instruction_set_trains_the_same_model_bytes(string activation, string output, string loss)
    {
        byte[]? first = null;
        foreach (var (name, environment) in InstructionSets)
        {
            string model = Path.Combine(_dir, $"{activation}-{output}-{name.Replace(' ', '-')}.safetensors");
            DbpResult run = DbpProcess.Run(_dir, environment,
                "train", "--epochs", "2", "--workers", "0", "--layers", "24,12", "--activation", activation, "--output-activation", output,
                "--loss", loss, "--schedule", "cosine", "--optimizer", "adam", "--lr", "0.01", "--out", model, "--progress", "none");
            Assert.True(run.ExitCode == 0, $"{name}: exit {run.ExitCode}: {run.Stderr}");
            byte[] bytes = File.ReadAllBytes(model);
            first ??= bytes;
            Assert.True(first.AsSpan().SequenceEqual(bytes), $"{activation}/{output}/{loss}: the model trained with {name} differs from the default's");
        }
    }

    /// <summary>
    /// 8-bit images (IDX): the training step gathers their rows from byte codes (Kernels.RowGather.CopyScaled, 64
    /// codes at a time with AVX-512, 16 with 128-bit vectors, then one by one), so each instruction set runs its own
    /// conversion; the model must not know which.
    /// </summary>
    [Fact]
    public void Every_instruction_set_trains_the_same_model_bytes_on_8_bit_images()
    {
        // 240 images of 10 × 10 (a row is one 64-code line, two 16-code pieces and 4 codes one by one), 3 classes:
        // each class brighter in its own band of rows, on noise.
        const int images = 240, side = 10;
        var random = new Random(5);
        var pixels = new byte[images * side * side];
        var labels = new byte[images];
        for (int i = 0; i < images; i++)
        {
            labels[i] = (byte)(i % 3);
            for (int p = 0; p < side * side; p++)
            {
                pixels[i * side * side + p] = (byte)Math.Min(255, random.Next(90) + (p / side / 4 == labels[i] ? 150 : 0));
            }
        }
        string data = Directory.CreateDirectory(Path.Combine(_dir, "images")).FullName;
        DistributedBackprop.Tests.IdxFiles.WriteBytes(Path.Combine(data, "train-images-idx3-ubyte"), [images, side, side], pixels);
        DistributedBackprop.Tests.IdxFiles.WriteBytes(Path.Combine(data, "train-labels-idx1-ubyte"), [images], labels);
        byte[]? first = null;
        foreach (var (name, environment) in InstructionSets)
        {
            string model = Path.Combine(_dir, $"images-{name.Replace(' ', '-')}.safetensors");
            DbpResult run = DbpProcess.Run(_dir, environment,
                "train", "--data", data, "--epochs", "3", "--workers", "0", "--layers", "16", "--batch-size", "16", "--out", model, "--progress", "none");
            Assert.True(run.ExitCode == 0, $"{name}: exit {run.ExitCode}: {run.Stderr}");
            byte[] bytes = File.ReadAllBytes(model);
            first ??= bytes;
            Assert.True(first.AsSpan().SequenceEqual(bytes), $"images: the model trained with {name} differs from the default's");
        }
    }
}
