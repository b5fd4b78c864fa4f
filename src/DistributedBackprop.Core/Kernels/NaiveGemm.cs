using System.Numerics;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Kernels;

/// <summary>
/// The definitions the fast kernels are tested against, written for clarity, in any IEEE type
/// (double for gradient checks). Each output element is one fused-multiply-add chain in k order.
/// </summary>
public static class NaiveGemm
{
    /// <summary>c[i,j] ← fma-chain over p of a[i,p]·b[p,j], starting from c[i,j].</summary>
    public static void MultiplyAdd<T>(StridedMatrix<T> a, StridedMatrix<T> b, Span<T> c, int ldc)
        where T : IFloatingPointIeee754<T>
    {
        Gemm.CheckShapes(a, b, c, ldc);
        for (int i = 0; i < a.Rows; i++)
        {
            for (int j = 0; j < b.Cols; j++)
            {
                T acc = c[i * ldc + j];
                for (int p = 0; p < a.Cols; p++)
                {
                    acc = T.FusedMultiplyAdd(a[i, p], b[p, j], acc);
                }
                c[i * ldc + j] = acc;
            }
        }
    }

    /// <summary>
    /// C ← canonical chunk-tree sum of the per-chunk products A[:, K_c]·B[K_c, :], each chunk's product
    /// computed on its own from +0 and the products combined by the recursive tree definition.
    /// </summary>
    public static void ChunkTreeProduct<T>(StridedMatrix<T> a, StridedMatrix<T> b, ReadOnlySpan<int> chunkStarts, Span<T> c, int ldc)
        where T : IFloatingPointIeee754<T>
    {
        Gemm.CheckShapes(a, b, c, ldc);
        Gemm.CheckChunkStarts(chunkStarts, a.Cols);
        int m = a.Rows, n = b.Cols, chunks = chunkStarts.Length - 1;
        var leaves = new T[chunks][];
        for (int chunk = 0; chunk < chunks; chunk++)
        {
            int k0 = chunkStarts[chunk], kc = chunkStarts[chunk + 1] - k0;
            leaves[chunk] = new T[m * n];
            if (m > 0 && n > 0 && kc > 0)
            {
                var aPart = new StridedMatrix<T>(a.Data[(k0 * a.ColStride)..], m, kc, a.RowStride, a.ColStride);
                var bPart = new StridedMatrix<T>(b.Data[(k0 * b.RowStride)..], kc, n, b.RowStride, b.ColStride);
                MultiplyAdd(aPart, bPart, leaves[chunk], n);
            }
        }
        T[] sum = chunks == 0 ? new T[m * n] : ChunkTree.Fold(chunks, (TreeNode node, out T[] value) => ChunkTree.Leaf(leaves, node, out value), Add);
        for (int i = 0; i < m; i++)
        {
            sum.AsSpan(i * n, n).CopyTo(c.Slice(i * ldc, n));
        }
    }

    private static T[] Add<T>(T[] left, T[] right)
        where T : IFloatingPointIeee754<T>
    {
        var sum = new T[left.Length];
        for (int i = 0; i < sum.Length; i++)
        {
            sum[i] = left[i] + right[i];
        }
        return sum;
    }
}
