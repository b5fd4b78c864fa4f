namespace DistributedBackprop.Kernels;

/// <summary>
/// A batch's rows copied out of the data set into one dense matrix (the network's input). The rows are random
/// rows of a table far larger than the cache (Fashion-MNIST: 188 MB), so the copy waits on memory: copied one row at
/// a time, each row's ~50 lines come one after another. Here a group of rows is copied 64 bytes of each in turn,
/// meant to keep the misses of all the group's rows in flight together (measured: the step's speed below, not the
/// misses themselves).
/// </summary>
public static unsafe class RowGather
{
    /// <summary>
    /// Rows copied side by side. The training step against row-by-row copies, Fashion-MNIST-sized data
    /// (`GEMMAB_ROWS=60000 bash bench/gemm-ab.sh fc17d74 120 512`, `GroupRows` edited): 4 rows 1.031 ×, 8 rows 1.026 ×, 16 rows 0.988 ×.
    /// </summary>
    private const int GroupRows = 4;

    /// <summary>destination row r ← table row rows[r] (each <paramref name="width"/> floats, row-major, dense).</summary>
    public static void Copy(ReadOnlySpan<float> table, int width, ReadOnlySpan<int> rows, Span<float> destination)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(width);
        if (destination.Length < (long)rows.Length * width)
        {
            throw new ArgumentException($"{rows.Length} rows of {width} need {(long)rows.Length * width} floats, the destination has {destination.Length}");
        }
        int tableRows = table.Length / width;
        foreach (int row in rows)
        {
            if ((uint)row >= (uint)tableRows)
            {
                throw new ArgumentOutOfRangeException(nameof(rows), $"row {row} of a table of {tableRows}");
            }
        }
        int whole = width / CacheLine.Floats * CacheLine.Floats, tail = width - whole;
        fixed (float* source = table, target = destination)
        {
            float** from = stackalloc float*[GroupRows];
            for (int first = 0; first < rows.Length; first += GroupRows)
            {
                int group = Math.Min(GroupRows, rows.Length - first);
                for (int g = 0; g < group; g++)
                {
                    from[g] = source + (long)rows[first + g] * width;
                }
                float* to = target + (long)first * width;
                for (int p = 0; p < whole; p += CacheLine.Floats)
                {
                    for (int g = 0; g < group; g++)
                    {
                        CacheLine.Copy(from[g] + p, to + (long)g * width + p);
                    }
                }
                for (int g = 0; tail > 0 && g < group; g++)
                {
                    new ReadOnlySpan<float>(from[g] + whole, tail).CopyTo(new Span<float>(to + (long)g * width + whole, tail));
                }
            }
        }
    }
}
