using System.Diagnostics;
using System.Runtime.CompilerServices;
using DistributedBackprop.Kernels;
using DistributedBackprop.Network;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Engine;

/// <summary>Throughput of timed windows after a warm-up: the median is the figure to report.</summary>
public sealed record ThroughputResult(double MedianSamplesPerSecond, double MinSamplesPerSecond, double MaxSamplesPerSecond, IReadOnlyList<double> Windows, long Steps, double AllocatedBytesPerStep);

/// <summary>One matrix product of a training step, timed alone.</summary>
public sealed record GemmMeasurement(int Layer, string Product, int M, int N, int K, double GigaflopsPerSecond);

public static class Benchmarks
{
    /// <summary>
    /// The roofline's ceiling: GFLOP/s of one core running nothing but fused multiply-adds in the widest
    /// vectors the GEMM uses, 12 independent accumulators (enough chains to cover two FMA pipes of 4–5
    /// cycles' latency; with the two operands, 14 registers, so the loop fits AVX2's 16 vector registers:
    /// 16 chains spilled there and read 48 GFLOP/s on a Zen 3 core whose GEMM ran at 69), best of <paramref name="rounds"/> timed rounds of <paramref name="perRound"/>.
    /// A GEMM's GFLOP/s divided by this is the fraction of the core's peak it reaches.
    /// </summary>
    public static double MeasurePeakGigaflops(TimeSpan perRound, int rounds = 5)
    {
        double best = 0;
        for (int round = 0; round < rounds; round++)
        {
            var clock = Stopwatch.StartNew();
            long iterations = 0;
            float sink = 0;
            while (clock.Elapsed < perRound)
            {
                const int Inner = 4096;
                sink += SimdTiers.Best switch
                {
                    SimdTier.Vector512 => FmaLoop<Lanes512>(Inner),
                    SimdTier.Vector256 => FmaLoop<Lanes256>(Inner),
                    SimdTier.Vector128 => FmaLoop<Lanes128>(Inner),
                    _ => FmaLoop<ScalarLane>(Inner),
                };
                iterations += Inner;
            }
            double lanes = SimdTiers.Best switch { SimdTier.Vector512 => 16, SimdTier.Vector256 => 8, SimdTier.Vector128 => 4, _ => 1 };
            best = Math.Max(best, iterations * FmaChains * lanes * 2 / clock.Elapsed.TotalSeconds / 1e9 + (sink == 42 ? 1e-9 : 0));
        }
        return best;
    }

    private const int FmaChains = 12;

    /// <summary><see cref="FmaChains"/> independent FMA chains of <typeparamref name="T"/>'s width, <paramref name="iterations"/> rounds; returns a lane of the sum so nothing is dead code.</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float FmaLoop<T>(int iterations) where T : struct, IFloatLanes<T>
    {
        T x = T.Broadcast(0.999f), y = T.Broadcast(1e-3f);
        T c0 = y, c1 = y, c2 = y, c3 = y, c4 = y, c5 = y, c6 = y, c7 = y, c8 = y, c9 = y, c10 = y, c11 = y;
        for (int i = 0; i < iterations; i++)
        {
            c0 = T.FusedMultiplyAdd(c0, x, y); c1 = T.FusedMultiplyAdd(c1, x, y); c2 = T.FusedMultiplyAdd(c2, x, y); c3 = T.FusedMultiplyAdd(c3, x, y);
            c4 = T.FusedMultiplyAdd(c4, x, y); c5 = T.FusedMultiplyAdd(c5, x, y); c6 = T.FusedMultiplyAdd(c6, x, y); c7 = T.FusedMultiplyAdd(c7, x, y);
            c8 = T.FusedMultiplyAdd(c8, x, y); c9 = T.FusedMultiplyAdd(c9, x, y); c10 = T.FusedMultiplyAdd(c10, x, y); c11 = T.FusedMultiplyAdd(c11, x, y);
        }
        Span<float> lanes = stackalloc float[T.Count];
        (((c0 + c1) + (c2 + c3)) + ((c4 + c5) + (c6 + c7)) + ((c8 + c9) + (c10 + c11))).Store(lanes);
        return lanes[0];
    }

    /// <summary>
    /// Runs <paramref name="step"/> (one update, returning the rows it trained on: a step's batch, or a round
    /// of local steps' H batches) for a warm-up period, then for <paramref name="windows"/> timed windows, and reports samples/s per window
    /// and the bytes allocated per step during the timed part (all threads).
    /// </summary>
    public static ThroughputResult MeasureSteps(Func<int> step, TimeSpan warmup, int windows, TimeSpan window)
    {
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < warmup)
        {
            step();
        }
        var rates = new List<double>();
        long steps = 0;
        long allocatedBefore = GC.GetTotalAllocatedBytes(precise: true);
        for (int w = 0; w < windows; w++)
        {
            long windowSteps = 0, windowRows = 0;
            clock.Restart();
            while (clock.Elapsed < window)
            {
                windowRows += step();
                windowSteps++;
            }
            rates.Add(windowRows / clock.Elapsed.TotalSeconds);
            steps += windowSteps;
        }
        long allocated = GC.GetTotalAllocatedBytes(precise: true) - allocatedBefore;
        double[] sorted = rates.Order().ToArray();
        double median = sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
        return new ThroughputResult(median, sorted[0], sorted[^1], rates, steps, steps == 0 ? 0 : (double)allocated / steps);
    }

    /// <summary>
    /// GFLOP/s of each product of a training step for <paramref name="rows"/> rows: forward x·Wᵀ, the
    /// input gradient δ·W (not needed for layer 0) and the weight gradient δᵀ·a as a chunk tree.
    /// </summary>
    public static List<GemmMeasurement> MeasureGemms(Architecture arch, int rows, int chunks, TimeSpan perProduct)
    {
        var results = new List<GemmMeasurement>();
        var random = new Randomness.Xoshiro256(7);
        float[] Fill(int n)
        {
            var values = new float[n];
            for (int i = 0; i < n; i++) values[i] = random.NextSingle() - 0.5f;
            return values;
        }
        int[] starts = Enumerable.Range(0, chunks + 1).Select(c => ChunkTree.ChunkStart(rows, chunks, c)).ToArray();
        for (int l = 0; l < arch.Layers.Count; l++)
        {
            LayerSpec layer = arch.Layers[l];
            int inputs = layer.Inputs, outputs = layer.Outputs;
            float[] x = Fill(rows * inputs), w = Fill(outputs * inputs), delta = Fill(rows * outputs);
            float[] z = new float[rows * outputs], dx = new float[rows * inputs], dw = new float[outputs * inputs];
            double flops = 2.0 * rows * inputs * outputs;
            results.Add(new GemmMeasurement(l, "forward x·Wᵀ", rows, outputs, inputs, flops / Time(() =>
                Gemm.MultiplyAdd(StridedMatrix<float>.RowMajor(x, rows, inputs), StridedMatrix<float>.RowMajor(w, outputs, inputs).Transposed(), z, outputs), perProduct) / 1e9));
            if (l > 0)
            {
                results.Add(new GemmMeasurement(l, "input gradient δ·W", rows, inputs, outputs, flops / Time(() =>
                    Gemm.MultiplyAdd(StridedMatrix<float>.RowMajor(delta, rows, outputs), StridedMatrix<float>.RowMajor(w, outputs, inputs), dx, inputs), perProduct) / 1e9));
            }
            results.Add(new GemmMeasurement(l, $"weight gradient δᵀ·a ({chunks} chunks)", outputs, inputs, rows, flops / Time(() =>
                Gemm.ChunkTreeProduct(StridedMatrix<float>.RowMajor(delta, rows, outputs).Transposed(), StridedMatrix<float>.RowMajor(x, rows, inputs), starts, dw, inputs), perProduct) / 1e9));
        }
        return results;
    }

    /// <summary>GFLOP/s of plain row-major products (m×k)·(k×n), the shapes numpy/OpenBLAS peers time.</summary>
    public static List<GemmMeasurement> MeasurePlainGemms(IEnumerable<(int M, int K, int N)> shapes, TimeSpan perProduct)
    {
        var results = new List<GemmMeasurement>();
        var random = new Randomness.Xoshiro256(11);
        foreach (var (m, k, n) in shapes)
        {
            float[] a = new float[m * k], b = new float[k * n], c = new float[m * n];
            for (int i = 0; i < a.Length; i++) a[i] = random.NextSingle() - 0.5f;
            for (int i = 0; i < b.Length; i++) b[i] = random.NextSingle() - 0.5f;
            double seconds = Time(() => Gemm.MultiplyAdd(StridedMatrix<float>.RowMajor(a, m, k), StridedMatrix<float>.RowMajor(b, k, n), c, n), perProduct);
            results.Add(new GemmMeasurement(-1, "A·B row-major", m, n, k, 2.0 * m * n * k / seconds / 1e9));
        }
        return results;
    }

    /// <summary>Seconds per call: median of five windows after a warm-up.</summary>
    private static double Time(Action action, TimeSpan budget)
    {
        for (int i = 0; i < 20; i++) action();
        var perCall = new List<double>();
        var clock = new Stopwatch();
        for (int w = 0; w < 5; w++)
        {
            long calls = 0;
            clock.Restart();
            while (clock.Elapsed.TotalSeconds < budget.TotalSeconds / 5)
            {
                action();
                calls++;
            }
            perCall.Add(clock.Elapsed.TotalSeconds / calls);
        }
        return perCall.Order().ElementAt(2);
    }
}
