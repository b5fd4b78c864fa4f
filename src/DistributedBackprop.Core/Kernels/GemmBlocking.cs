namespace DistributedBackprop.Kernels;

/// <summary>
/// Every blocking constant of the GEMM, in one place (BLIS naming, van Zee &amp; van de Geijn 2015):
/// the micro-kernel computes an MR×NR tile of C from an MR×kc sliver of packed A and a kc×NR sliver of
/// packed B; KC bounds the depth of one pass so a B sliver stays in L1 while A slivers stream from L2;
/// MC bounds the packed A block (L2); NC bounds the packed B block (L3).
/// Blocking never changes results: the micro-kernel carries each element's FMA chain across KC blocks
/// by reloading C, so a result depends only on the k order, not on where the blocks fall.
/// </summary>
public readonly record struct GemmBlocking(int MR, int NR, int KC, int MC, int NC)
{
    /// <summary>AVX-512: 8×32 tile = 16 zmm accumulators + 2 B vectors + 1 broadcast; MR = 8 divides the
    /// usual batch sizes, so row edges rarely need padding. (6×32 and 12×32 measured no faster here.)</summary>
    public static readonly GemmBlocking Vector512 = new(MR: 8, NR: 32, KC: 256, MC: 128, NC: 2048);

    /// <summary>AVX2: 6×16 tile = 12 ymm accumulators + 2 B vectors + 1 broadcast (15 of 16 registers). KC 320:
    /// a B sliver of 20 KB and an A sliver of 7.5 KB share a 32 KB L1.</summary>
    public static readonly GemmBlocking Vector256 = new(MR: 6, NR: 16, KC: 320, MC: 96, NC: 2048);

    /// <summary>NEON: 6×16 tile = 24 of ARM64's 32 vector registers as accumulators; AVX2's panel shapes.</summary>
    public static readonly GemmBlocking Vector128 = new(MR: 6, NR: 16, KC: 256, MC: 96, NC: 2048);

    /// <summary>Portable fallback; same panel shapes as AVX2 so packing code is shared.</summary>
    public static readonly GemmBlocking Scalar = new(MR: 6, NR: 16, KC: 256, MC: 96, NC: 2048);

    /// <summary>
    /// Bytes of packed operands the chunk-tree GEMM (which cannot split k) keeps per block: the whole
    /// k extent of an A block (≈ L2) and of a B block (≈ L2, streamed once per A block).
    /// </summary>
    public const int ChunkTreeBlockBytes = 512 * 1024;

    /// <summary>
    /// The depth of the slabs k is cut into: as few as KC allows, of equal depth (the last one shallower by at
    /// most one per slab). At KC = 256, k = 784 was cut 256 + 256 + 256 + 16, and the last slab reloaded and stored
    /// every tile of C, and packed A and B, for 16 multiply-adds per element; AVX2 now cuts it 262 + 262 + 260.
    /// 1–4 % faster on products with k = 784 and 300, the same at k = 256 (a Zen 3 core, both ways alternated
    /// call by call in one process, medians of ≥ 40 calls each).
    /// </summary>
    public int SlabDepth(int k)
    {
        int slabs = Math.Max(1, (k + KC - 1) / KC);
        return (k + slabs - 1) / slabs;
    }

    public static GemmBlocking For(SimdTier tier) => tier switch
    {
        SimdTier.Vector512 => Vector512,
        SimdTier.Vector256 => Vector256,
        SimdTier.Vector128 => Vector128,
        _ => Scalar,
    };
}
