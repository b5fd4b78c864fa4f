namespace DistributedBackprop.Kernels;

/// <summary>
/// A read-only matrix view over a flat span: element (i, j) lives at
/// <c>Data[i * RowStride + j * ColStride]</c>. A transpose is a view with the strides swapped,
/// so the kernels read W as Wᵀ or δ as δᵀ without copying.
/// </summary>
public readonly ref struct StridedMatrix<T>
{
    public readonly ReadOnlySpan<T> Data;
    public readonly int Rows;
    public readonly int Cols;
    public readonly int RowStride;
    public readonly int ColStride;

    public StridedMatrix(ReadOnlySpan<T> data, int rows, int cols, int rowStride, int colStride)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        ArgumentOutOfRangeException.ThrowIfNegative(cols);
        if (rows > 0 && cols > 0)
        {
            long last = (long)(rows - 1) * rowStride + (long)(cols - 1) * colStride;
            if (rowStride < 0 || colStride < 0 || last >= data.Length)
            {
                throw new ArgumentException(
                    $"a {rows}×{cols} view with strides ({rowStride}, {colStride}) needs {last + 1} elements, the span has {data.Length}");
            }
        }
        Data = data;
        Rows = rows;
        Cols = cols;
        RowStride = rowStride;
        ColStride = colStride;
    }

    /// <summary>A row-major rows×cols matrix stored densely.</summary>
    public static StridedMatrix<T> RowMajor(ReadOnlySpan<T> data, int rows, int cols) =>
        new(data, rows, cols, cols, 1);

    public StridedMatrix<T> Transposed() => new(Data, Cols, Rows, ColStride, RowStride);

    /// <summary>Rows [<paramref name="first"/>, <paramref name="first"/> + <paramref name="count"/>) as a view of their own.</summary>
    public StridedMatrix<T> RowRange(int first, int count)
    {
        if (first < 0 || count < 0 || first > Rows - count)
        {
            throw new ArgumentOutOfRangeException(nameof(first), $"rows [{first}, {first} + {count}) of a matrix of {Rows}");
        }
        return count == 0 || Cols == 0 ? new(Data, count, Cols, RowStride, ColStride) : new(Data[(first * RowStride)..], count, Cols, RowStride, ColStride);
    }

    public T this[int row, int col] => Data[row * RowStride + col * ColStride];
}

/// <summary>
/// Told by a blocked product each block of C's rows as soon as it is complete. Called in the middle of the product,
/// while this thread's packing buffers hold its operands: it must not run a product of <see cref="Gemm"/> itself.
/// </summary>
public interface IRowBlockDone
{
    void Done(int block);
}

/// <summary>
/// C's rows in blocks for <see cref="Gemm.ChunkTreeProduct(StridedMatrix{float}, StridedMatrix{float}, ReadOnlySpan{int}, Span{float}, int, RowBlocks, SimdTier)"/>:
/// block b is rows [b·<see cref="BlockRows"/>, (b + 1)·<see cref="BlockRows"/>) (the last one shorter), computed in
/// <see cref="Order"/> (a permutation of the blocks), each told to <see cref="Done"/> when complete. default: one block, no one told.
/// </summary>
public readonly ref struct RowBlocks(int blockRows, ReadOnlySpan<int> order, IRowBlockDone done)
{
    public int BlockRows { get; } = blockRows;

    public ReadOnlySpan<int> Order { get; } = order;

    public IRowBlockDone? Done { get; } = done;
}
