using BenchmarkDotNet.Attributes;
using DistributedBackprop.Engine;
using DistributedBackprop.Kernels;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Benchmarks;

/// <summary>The GEMM shapes of one training step at batch 128, on every SIMD tier, against the naive definition.</summary>
[MemoryDiagnoser]
public class GemmBenchmarks
{
    private float[] _a = [], _b = [], _c = [];
    private int[] _chunkStarts = [];

    [Params("128x784x256", "128x256x128", "256x128x784")]
    public string Shape { get; set; } = "";

    [Params(SimdTier.Vector512, SimdTier.Vector256)]
    public SimdTier Tier { get; set; }

    private int M => int.Parse(Shape.Split('x')[0], System.Globalization.CultureInfo.InvariantCulture);
    private int K => int.Parse(Shape.Split('x')[1], System.Globalization.CultureInfo.InvariantCulture);
    private int N => int.Parse(Shape.Split('x')[2], System.Globalization.CultureInfo.InvariantCulture);

    [GlobalSetup]
    public void Setup()
    {
        var random = new Randomness.Xoshiro256(1);
        _a = Enumerable.Range(0, M * K).Select(_ => random.NextSingle()).ToArray();
        _b = Enumerable.Range(0, K * N).Select(_ => random.NextSingle()).ToArray();
        _c = new float[M * N];
        _chunkStarts = Enumerable.Range(0, 9).Select(c => ChunkTree.ChunkStart(K, 8, c)).ToArray();
    }

    /// <summary>C += A·B, B stored transposed (the forward pass x·Wᵀ).</summary>
    [Benchmark]
    public void ForwardShape() => Gemm.MultiplyAdd(StridedMatrix<float>.RowMajor(_a, M, K), StridedMatrix<float>.RowMajor(_b, N, K).Transposed(), _c, N, Tier);

    /// <summary>C += A·B, both row-major (the input gradient δ·W).</summary>
    [Benchmark]
    public void PlainShape() => Gemm.MultiplyAdd(StridedMatrix<float>.RowMajor(_a, M, K), StridedMatrix<float>.RowMajor(_b, K, N), _c, N, Tier);

    /// <summary>C = chunk tree over 8 chunks of k, A stored transposed (the weight gradient δᵀ·a).</summary>
    [Benchmark]
    public void ChunkTreeShape() => Gemm.ChunkTreeProduct(StridedMatrix<float>.RowMajor(_a, K, M).Transposed(), StridedMatrix<float>.RowMajor(_b, K, N), _chunkStarts, _c, N, Tier);
}
