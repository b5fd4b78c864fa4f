extern alias baseline;
using System.Diagnostics;
using DistributedBackprop.Data;
using DistributedBackprop.Engine;
using DistributedBackprop.Kernels;
using DistributedBackprop.Optimizers;
using BaselineGemm = baseline::DistributedBackprop.Kernels.Gemm;
using BaselineMatrix = baseline::DistributedBackprop.Kernels.StridedMatrix<float>;
using B = baseline::DistributedBackprop;

// Each product of a 784-256-128-10 training step at one batch size (forward x·Wᵀ, input gradient δ·W, weight
// gradient δᵀ·a over the chunk tree), timed with the baseline build and this tree's alternated call by call
// in one process: on a shared VM whose speed swings by tens of percent within a minute, only calls a few
// milliseconds apart see the same machine. Per round, each side runs the same number of calls; the ratio
// of the two times is taken per round and its median and quartiles are reported.
int rounds = args.Length > 0 ? int.Parse(args[0]) : 100;
int batch = args.Length > 1 ? int.Parse(args[1]) : 128;
const int Chunks = 8;
const double RoundSeconds = 0.001;
int[] widths = [784, 256, 128, 10];

var products = new List<Product>();
for (int l = 0; l < widths.Length - 1; l++)
{
    int inputs = widths[l], outputs = widths[l + 1];
    products.Add(new Product($"layer {l} forward x·Wᵀ ({batch}×{inputs})·({inputs}×{outputs})", batch, inputs, outputs, Kind.Forward));
    if (l > 0)
    {
        products.Add(new Product($"layer {l} input gradient δ·W ({batch}×{outputs})·({outputs}×{inputs})", batch, outputs, inputs, Kind.InputGradient));
    }
    products.Add(new Product($"layer {l} weight gradient δᵀ·a ({outputs}×{batch})·({batch}×{inputs}), {Chunks} chunks", outputs, batch, inputs, Kind.WeightGradient));
}

Console.WriteLine($"{rounds} rounds, baseline and this tree alternated call by call; ratio = baseline time ÷ this tree's time (> 1: this tree is faster)");
var random = new Random(11);
foreach (Product product in products)
{
    product.Fill(random);
    bool sameBits = product.RunBoth();
    // Warm-up, then a round of each side lasts ~1 ms (as many calls as fit, at least one): long enough to time
    // with a monotonic clock, short enough that both sides of a round see the same machine.
    int calls = 1;
    for (int warm = 0; warm < 100; warm++)
    {
        product.Time(calls, baseline: true);
        calls = Math.Max(1, (int)(RoundSeconds / product.Time(calls, baseline: false) * calls));
    }
    var ratios = new double[rounds];
    var baselineRates = new double[rounds];
    var newRates = new double[rounds];
    for (int r = 0; r < rounds; r++)
    {
        // Which side goes first alternates, so neither always inherits the other's cache state.
        bool baselineFirst = r % 2 == 0;
        double first = product.Time(calls, baselineFirst), second = product.Time(calls, !baselineFirst);
        double baselineSeconds = baselineFirst ? first : second, newSeconds = baselineFirst ? second : first;
        ratios[r] = baselineSeconds / newSeconds;
        baselineRates[r] = product.Flops * calls / baselineSeconds / 1e9;
        newRates[r] = product.Flops * calls / newSeconds / 1e9;
    }
    Array.Sort(ratios);
    Console.WriteLine($"{product.Name}: baseline {Median(baselineRates):F1}, this tree {Median(newRates):F1} GFLOP/s; ratio median {Quantile(ratios, 0.5):F3} (quartiles {Quantile(ratios, 0.25):F3}–{Quantile(ratios, 0.75):F3}); {(sameBits ? "same bits" : "BITS DIFFER")}");
}

// The whole training step (the plain trainer, 1 thread, SGD): two trainers on the same synthetic rows, one per
// build, alternated in rounds of the same number of steps. Both take the same steps, so their parameters must end
// with the same bits: the check that the change altered no result of a step.
{
    var config = new TrainingConfig
    {
        HiddenLayers = [256, 128], BatchSize = batch, Chunks = Chunks, Epochs = 1_000_000,
        Optimizer = new OptimizerSettings { Kind = OptimizerKind.Sgd, LearningRate = 0.01f },
    };
    var baselineConfig = new B.Engine.TrainingConfig
    {
        HiddenLayers = [256, 128], BatchSize = batch, Chunks = Chunks, Epochs = 1_000_000,
        Optimizer = new B.Optimizers.OptimizerSettings { Kind = B.Optimizers.OptimizerKind.Sgd, LearningRate = 0.01f },
    };
    // GEMMAB_ROWS: a data set as large as a real one (Fashion-MNIST: 60000), whose rows a batch gathers from memory
    // rather than from the cache; by default as small as `dbp bench`'s synthetic set.
    string? askedRows = Environment.GetEnvironmentVariable("GEMMAB_ROWS");
    int rows = Math.Max(batch * 16, 4096);
    if (!string.IsNullOrEmpty(askedRows))
    {
        if (!int.TryParse(askedRows, out rows) || rows < batch)
        {
            Console.Error.WriteLine($"GEMMAB_ROWS: expected a whole number of rows of at least the batch ({batch}), got '{askedRows}'");
            return 2;
        }
    }
    // GEMMAB_THREADS: the trainer's --threads (default 1); with 2, the lanes' gradients are summed by the update.
    string? askedThreads = Environment.GetEnvironmentVariable("GEMMAB_THREADS");
    int threads = 1;
    if (!string.IsNullOrEmpty(askedThreads) && (!int.TryParse(askedThreads, out threads) || threads < 1 || threads > Chunks))
    {
        Console.Error.WriteLine($"GEMMAB_THREADS: expected a whole number of threads from 1 to {Chunks}, got '{askedThreads}'");
        return 2;
    }
    // GEMMAB_IMAGES=1: the synthetic values (uniform in [0, 1)) made 8-bit pixels 0..255, which both sessions scale
    // by 1/255 as they do Fashion-MNIST's; otherwise those floats themselves, scaled the same way (the synthetic set
    // is of the images kind), which no byte code decodes to.
    bool images = Environment.GetEnvironmentVariable("GEMMAB_IMAGES") == "1";
    Dataset data = SyntheticData.Create(rows, 784, 10, seed: 1);
    B.Data.Dataset baselineData = B.Data.SyntheticData.Create(rows, 784, 10, seed: 1);
    if (images)
    {
        float[] pixels = [.. data.Values.Select(v => MathF.Min(255f, MathF.Floor(v * 256f)))];
        data = new Dataset(data.Source, data.Features, pixels, data.Labels, data.Classes, DataKind.Images);
        baselineData = new B.Data.Dataset(baselineData.Source, baselineData.Features, (float[])pixels.Clone(), baselineData.Labels, baselineData.Classes, B.Data.DataKind.Images);
    }
    TrainingSession session = TrainingSession.Prepare(config, data, test: null, testFraction: 0);
    B.Engine.TrainingSession baselineSession = B.Engine.TrainingSession.Prepare(baselineConfig, baselineData, test: null, testFraction: 0);
    using var trainer = new Trainer(session, threads);
    using var baselineTrainer = new B.Engine.Trainer(baselineSession, threads);
    int steps = Math.Max(1, 1280 / batch);
    double Run(bool onBaseline)
    {
        long start = Stopwatch.GetTimestamp();
        for (int i = 0; i < steps; i++)
        {
            if (onBaseline)
            {
                baselineTrainer.Step(out _);
            }
            else
            {
                trainer.Step(out _);
            }
        }
        return Stopwatch.GetElapsedTime(start).TotalSeconds;
    }
    for (int warm = 0; warm < 10; warm++)
    {
        Run(true);
        Run(false);
    }
    var ratios = new double[rounds];
    var baselineRates = new double[rounds];
    var newRates = new double[rounds];
    for (int r = 0; r < rounds; r++)
    {
        bool baselineFirst = r % 2 == 0;
        double first = Run(baselineFirst), second = Run(!baselineFirst);
        double baselineSeconds = baselineFirst ? first : second, newSeconds = baselineFirst ? second : first;
        ratios[r] = baselineSeconds / newSeconds;
        baselineRates[r] = steps * batch / baselineSeconds;
        newRates[r] = steps * batch / newSeconds;
    }
    Array.Sort(ratios);
    bool sameBits = Bits.Same(session.Parameters, baselineSession.Parameters);
    Console.WriteLine($"training step 784-256-128-10, batch {batch}, {Chunks} chunks, {rows} rows of data, {threads} thread(s) (lanes used: {trainer.LanesInUse} and {baselineTrainer.LanesInUse} baseline), sgd ({steps} steps a round): baseline {Median(baselineRates):N0}, this tree {Median(newRates):N0} samples/s; ratio median {Quantile(ratios, 0.5):F3} (quartiles {Quantile(ratios, 0.25):F3}–{Quantile(ratios, 0.75):F3}); parameters after {(10 + rounds) * steps} steps: {(sameBits ? "same bits" : "BITS DIFFER")}");
}
return 0;

static double Median(double[] values) => Quantile(values.Order().ToArray(), 0.5);

static double Quantile(double[] sorted, double q) => sorted[(int)Math.Round(q * (sorted.Length - 1))];

internal enum Kind { Forward, InputGradient, WeightGradient }

internal static class Bits
{
    /// <summary>Bit for bit (float equality would let −0 match +0 and any NaN match any other).</summary>
    public static bool Same(float[] a, float[] b) =>
        System.Runtime.InteropServices.MemoryMarshal.AsBytes(a.AsSpan()).SequenceEqual(System.Runtime.InteropServices.MemoryMarshal.AsBytes(b.AsSpan()));
}

/// <summary>One product of the step: C (m×n) from A (m×k) and B (k×n) laid out as the trainer lays them out.</summary>
internal sealed class Product(string name, int m, int k, int n, Kind kind)
{
    private readonly float[] _a = new float[m * k], _b = new float[k * n], _baselineC = new float[m * n], _newC = new float[m * n];
    private readonly int[] _chunkStarts = Enumerable.Range(0, 9).Select(c => c * k / 8).ToArray();

    public string Name => name;

    public double Flops => 2.0 * m * k * n;

    public void Fill(Random random)
    {
        foreach (float[] array in new[] { _a, _b })
        {
            for (int i = 0; i < array.Length; i++)
            {
                array[i] = (float)random.NextDouble() - 0.5f;
            }
        }
    }

    /// <summary>One call of each side from the same C; whether their results have the same bits.</summary>
    public bool RunBoth()
    {
        Array.Clear(_baselineC);
        Array.Clear(_newC);
        CallBaseline();
        CallNew();
        return Bits.Same(_baselineC, _newC);
    }

    public double Time(int calls, bool baseline)
    {
        long start = Stopwatch.GetTimestamp();
        for (int i = 0; i < calls; i++)
        {
            if (baseline)
            {
                CallBaseline();
            }
            else
            {
                CallNew();
            }
        }
        return Stopwatch.GetElapsedTime(start).TotalSeconds;
    }

    // The trainer's layouts: forward A = x (row-major), B = Wᵀ (W row-major outputs×inputs); input gradient
    // A = δ, B = W (both row-major); weight gradient A = δᵀ (δ row-major batch×outputs), B = a (row-major).
    // Forward and input gradient start from C = 0 each call (MultiplyAdd adds into C).
    private void CallNew()
    {
        switch (kind)
        {
            case Kind.Forward:
                Array.Clear(_newC);
                Gemm.MultiplyAdd(StridedMatrix<float>.RowMajor(_a, m, k), StridedMatrix<float>.RowMajor(_b, n, k).Transposed(), _newC, n);
                break;
            case Kind.InputGradient:
                Array.Clear(_newC);
                Gemm.MultiplyAdd(StridedMatrix<float>.RowMajor(_a, m, k), StridedMatrix<float>.RowMajor(_b, k, n), _newC, n);
                break;
            default:
                Gemm.ChunkTreeProduct(StridedMatrix<float>.RowMajor(_a, k, m).Transposed(), StridedMatrix<float>.RowMajor(_b, k, n), _chunkStarts, _newC, n);
                break;
        }
    }

    private void CallBaseline()
    {
        switch (kind)
        {
            case Kind.Forward:
                Array.Clear(_baselineC);
                BaselineGemm.MultiplyAdd(BaselineMatrix.RowMajor(_a, m, k), BaselineMatrix.RowMajor(_b, n, k).Transposed(), _baselineC, n);
                break;
            case Kind.InputGradient:
                Array.Clear(_baselineC);
                BaselineGemm.MultiplyAdd(BaselineMatrix.RowMajor(_a, m, k), BaselineMatrix.RowMajor(_b, k, n), _baselineC, n);
                break;
            default:
                BaselineGemm.ChunkTreeProduct(BaselineMatrix.RowMajor(_a, k, m).Transposed(), BaselineMatrix.RowMajor(_b, k, n), _chunkStarts, _baselineC, n);
                break;
        }
    }
}
