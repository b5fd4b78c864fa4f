using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace DistributedBackprop.Kernels;

/// <summary>
/// C ← C + A·B when B has at most 16 columns (a classifier layer's forward product, x·Wᵀ with 10 outputs).
/// The blocked path pads every such tile to the micro-kernel's 16 or 32 columns and copies it in and out of
/// scratch (the whole product is edge tiles), which ran the 10-wide layer at an eighth of the large shapes'
/// GFLOP/s. Here one row of C is one 16-lane register (two 8-lane ones for 256-bit SIMD): B is packed once
/// into a K×16 zero-padded panel, and each step over k broadcasts a[i,k] into an FMA per row. Every output
/// is still one FMA chain over k in increasing order from the current c[i,j] — <see cref="NaiveGemm"/>'s
/// contract — so the bits are those of every other path.
/// </summary>
internal static unsafe class NarrowGemm
{
    public const int MaxColumns = 16;
    [ThreadStatic] private static PackBuffer? t_panel;

    /// <summary>Deepest k packed into one panel (64 MB of floats); deeper products take the blocked path, which packs in KC slabs.</summary>
    public const int MaxDepth = 1 << 20;

    /// <summary>The tiers with a narrow kernel (the others take the blocked path).</summary>
    public static bool Handles(SimdTier tier, int n, int k) => n <= MaxColumns && k <= MaxDepth && tier is SimdTier.Vector512 or SimdTier.Vector256;

    public static void MultiplyAdd(StridedMatrix<float> a, StridedMatrix<float> b, Span<float> c, int ldc, SimdTier tier)
    {
        int m = a.Rows, k = a.Cols, n = b.Cols;
        float* panel = (t_panel ??= new()).Ensure(k * MaxColumns);
        fixed (float* pa = a.Data, pb = b.Data, pc = c)
        {
            // B's k-th row, zero-padded to 16: the padding lanes compute zeros that are never stored.
            for (int p = 0; p < k; p++)
            {
                float* row = panel + (long)p * MaxColumns;
                for (int j = 0; j < n; j++)
                {
                    row[j] = pb[(long)p * b.RowStride + (long)j * b.ColStride];
                }
                for (int j = n; j < MaxColumns; j++)
                {
                    row[j] = 0;
                }
            }
            // Rows in groups: 8 independent FMA chains (16 lanes each) keep two FMA pipes of 4-cycle latency
            // busy on AVX-512; AVX2's two halves per row make 4 rows give the same 8.
            int group = tier == SimdTier.Vector512 ? 8 : 4;
            float* rowsIn = stackalloc float[8 * MaxColumns];
            int i = 0;
            for (; i + group <= m; i += group)
            {
                for (int r = 0; r < group; r++)
                {
                    Load(pc + (long)(i + r) * ldc, n, rowsIn + r * MaxColumns);
                }
                float* a0 = pa + (long)i * a.RowStride;
                if (tier == SimdTier.Vector512)
                {
                    Rows8x16(k, a0, a.RowStride, a.ColStride, panel, rowsIn);
                }
                else
                {
                    Rows4x16Avx2(k, a0, a.RowStride, a.ColStride, panel, rowsIn);
                }
                for (int r = 0; r < group; r++)
                {
                    Store(rowsIn + r * MaxColumns, n, pc + (long)(i + r) * ldc);
                }
            }
            for (; i < m; i++)
            {
                Load(pc + (long)i * ldc, n, rowsIn);
                Row1x16(k, pa + (long)i * a.RowStride, a.ColStride, panel, rowsIn);
                Store(rowsIn, n, pc + (long)i * ldc);
            }
        }
    }

    private static void Load(float* c, int n, float* row)
    {
        for (int j = 0; j < n; j++) row[j] = c[j];
        for (int j = n; j < MaxColumns; j++) row[j] = 0;
    }

    private static void Store(float* row, int n, float* c)
    {
        for (int j = 0; j < n; j++) c[j] = row[j];
    }

    /// <summary>Eight rows of C (in <paramref name="rows"/>, 16 floats each) continued over all k, 512-bit.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Rows8x16(int k, float* a, nint rs, nint cs, float* panel, float* rows)
    {
        Vector512<float> c0 = Vector512.Load(rows), c1 = Vector512.Load(rows + 16), c2 = Vector512.Load(rows + 32), c3 = Vector512.Load(rows + 48);
        Vector512<float> c4 = Vector512.Load(rows + 64), c5 = Vector512.Load(rows + 80), c6 = Vector512.Load(rows + 96), c7 = Vector512.Load(rows + 112);
        float* a1 = a + rs, a2 = a + 2 * rs, a3 = a + 3 * rs, a4 = a + 4 * rs, a5 = a + 5 * rs, a6 = a + 6 * rs, a7 = a + 7 * rs;
        for (int p = 0; p < k; p++)
        {
            Vector512<float> b = Vector512.Load(panel + (long)p * MaxColumns);
            nint offset = p * cs;
            c0 = Vector512.FusedMultiplyAdd(Vector512.Create(a[offset]), b, c0);
            c1 = Vector512.FusedMultiplyAdd(Vector512.Create(a1[offset]), b, c1);
            c2 = Vector512.FusedMultiplyAdd(Vector512.Create(a2[offset]), b, c2);
            c3 = Vector512.FusedMultiplyAdd(Vector512.Create(a3[offset]), b, c3);
            c4 = Vector512.FusedMultiplyAdd(Vector512.Create(a4[offset]), b, c4);
            c5 = Vector512.FusedMultiplyAdd(Vector512.Create(a5[offset]), b, c5);
            c6 = Vector512.FusedMultiplyAdd(Vector512.Create(a6[offset]), b, c6);
            c7 = Vector512.FusedMultiplyAdd(Vector512.Create(a7[offset]), b, c7);
        }
        c0.Store(rows); c1.Store(rows + 16); c2.Store(rows + 32); c3.Store(rows + 48);
        c4.Store(rows + 64); c5.Store(rows + 80); c6.Store(rows + 96); c7.Store(rows + 112);
    }

    /// <summary>The same with two 256-bit halves per row.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Rows4x16Avx2(int k, float* a, nint rs, nint cs, float* panel, float* rows)
    {
        Vector256<float> c00 = Vector256.Load(rows), c01 = Vector256.Load(rows + 8), c10 = Vector256.Load(rows + 16), c11 = Vector256.Load(rows + 24);
        Vector256<float> c20 = Vector256.Load(rows + 32), c21 = Vector256.Load(rows + 40), c30 = Vector256.Load(rows + 48), c31 = Vector256.Load(rows + 56);
        float* a1 = a + rs, a2 = a + 2 * rs, a3 = a + 3 * rs;
        for (int p = 0; p < k; p++)
        {
            float* bp = panel + (long)p * MaxColumns;
            Vector256<float> b0 = Vector256.Load(bp), b1 = Vector256.Load(bp + 8);
            nint offset = p * cs;
            Vector256<float> av = Vector256.Create(a[offset]);
            c00 = Vector256.FusedMultiplyAdd(av, b0, c00); c01 = Vector256.FusedMultiplyAdd(av, b1, c01);
            av = Vector256.Create(a1[offset]);
            c10 = Vector256.FusedMultiplyAdd(av, b0, c10); c11 = Vector256.FusedMultiplyAdd(av, b1, c11);
            av = Vector256.Create(a2[offset]);
            c20 = Vector256.FusedMultiplyAdd(av, b0, c20); c21 = Vector256.FusedMultiplyAdd(av, b1, c21);
            av = Vector256.Create(a3[offset]);
            c30 = Vector256.FusedMultiplyAdd(av, b0, c30); c31 = Vector256.FusedMultiplyAdd(av, b1, c31);
        }
        c00.Store(rows); c01.Store(rows + 8); c10.Store(rows + 16); c11.Store(rows + 24);
        c20.Store(rows + 32); c21.Store(rows + 40); c30.Store(rows + 48); c31.Store(rows + 56);
    }

    /// <summary>One row (the last m mod 4), two 256-bit halves: every x86 tier with a narrow kernel has them.</summary>
    private static void Row1x16(int k, float* a, nint cs, float* panel, float* row)
    {
        Vector256<float> c0 = Vector256.Load(row), c1 = Vector256.Load(row + 8);
        for (int p = 0; p < k; p++)
        {
            float* bp = panel + (long)p * MaxColumns;
            Vector256<float> av = Vector256.Create(a[p * cs]);
            c0 = Vector256.FusedMultiplyAdd(av, Vector256.Load(bp), c0);
            c1 = Vector256.FusedMultiplyAdd(av, Vector256.Load(bp + 8), c1);
        }
        c0.Store(row); c1.Store(row + 8);
    }
}
