using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

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

    /// <summary>
    /// Byte rows (Fashion-MNIST: 784 bytes, ~12 lines) converted side by side: shorter rows, so more of them to keep
    /// as many misses in flight. The step against the float gather (`GEMMAB_IMAGES=1 GEMMAB_ROWS=60000 bash
    /// bench/gemm-ab.sh 311b541 60 128`, `ByteGroupRows` edited): 4 rows 1.032 ×, 8 rows 1.050 × (twice), 16 rows 1.038 ×.
    /// </summary>
    private const int ByteGroupRows = 8;

    /// <summary>destination row r ← table row rows[r] (each <paramref name="width"/> floats, row-major, dense).</summary>
    public static void Copy(ReadOnlySpan<float> table, int width, ReadOnlySpan<int> rows, Span<float> destination)
    {
        CheckRows(table.Length, width, rows, destination.Length);
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

    /// <summary>
    /// destination row r ← table row rows[r] × <paramref name="scale"/>, each code widened to a float first: the
    /// rows of a <see cref="Data.ByteCodedValues"/> table, where every value is exactly code × scale, so the floats
    /// written are the float table's own bits. A quarter of the bytes come from memory (Fashion-MNIST: 784 bytes a
    /// row instead of 3,136). Rows go in groups, one 64-byte line of each in turn, as <see cref="Copy"/>'s do.
    /// </summary>
    public static void CopyScaled(ReadOnlySpan<byte> table, int width, float scale, ReadOnlySpan<int> rows, Span<float> destination)
    {
        CheckRows(table.Length, width, rows, destination.Length);
        const int lineBytes = CacheLine.Floats * sizeof(float);
        int whole = width / lineBytes * lineBytes;
        fixed (byte* source = table)
        fixed (float* target = destination)
        {
            byte** from = stackalloc byte*[ByteGroupRows];
            for (int first = 0; first < rows.Length; first += ByteGroupRows)
            {
                int group = Math.Min(ByteGroupRows, rows.Length - first);
                for (int g = 0; g < group; g++)
                {
                    from[g] = source + (long)rows[first + g] * width;
                }
                float* to = target + (long)first * width;
                for (int p = 0; p < whole; p += lineBytes)
                {
                    for (int g = 0; g < group; g++)
                    {
                        WidenAndScale64(from[g] + p, to + (long)g * width + p, scale);
                    }
                }
                for (int g = 0; g < group; g++)
                {
                    WidenAndScale(from[g] + whole, to + (long)g * width + whole, width - whole, scale);
                }
            }
        }
    }

    /// <summary>64 codes → 64 floats, each (float)code × scale: exact widening, one correctly rounded product per value.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void WidenAndScale64(byte* codes, float* values, float scale)
    {
        if (Vector512.IsHardwareAccelerated)
        {
            var factor = Vector512.Create(scale);
            var (low, high) = Vector512.Widen(Vector512.Load(codes));
            var (q0, q1) = Vector512.Widen(low);
            var (q2, q3) = Vector512.Widen(high);
            Vector512.Store(Vector512.ConvertToSingle(q0.AsInt32()) * factor, values);
            Vector512.Store(Vector512.ConvertToSingle(q1.AsInt32()) * factor, values + 16);
            Vector512.Store(Vector512.ConvertToSingle(q2.AsInt32()) * factor, values + 32);
            Vector512.Store(Vector512.ConvertToSingle(q3.AsInt32()) * factor, values + 48);
            return;
        }
        for (int i = 0; i < 64; i += 16)
        {
            WidenAndScale16(codes + i, values + i, scale);
        }
    }

    /// <summary>16 codes → 16 floats with 128-bit vectors (every x64 and ARM64 CPU accelerates them).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void WidenAndScale16(byte* codes, float* values, float scale)
    {
        var factor = Vector128.Create(scale);
        var (low, high) = Vector128.Widen(Vector128.Load(codes));
        var (q0, q1) = Vector128.Widen(low);
        var (q2, q3) = Vector128.Widen(high);
        Vector128.Store(Vector128.ConvertToSingle(q0.AsInt32()) * factor, values);
        Vector128.Store(Vector128.ConvertToSingle(q1.AsInt32()) * factor, values + 4);
        Vector128.Store(Vector128.ConvertToSingle(q2.AsInt32()) * factor, values + 8);
        Vector128.Store(Vector128.ConvertToSingle(q3.AsInt32()) * factor, values + 12);
    }

    /// <summary>A row's last <paramref name="count"/> (&lt; 64) codes: 16 at a time, then one by one.</summary>
    private static void WidenAndScale(byte* codes, float* values, int count, float scale)
    {
        int i = 0;
        for (; i + 16 <= count; i += 16)
        {
            WidenAndScale16(codes + i, values + i, scale);
        }
        for (; i < count; i++)
        {
            values[i] = codes[i] * scale;
        }
    }

    /// <summary>Every row inside the table and room for all of them, checked before anything is written.</summary>
    private static void CheckRows(int tableLength, int width, ReadOnlySpan<int> rows, int destinationLength)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(width);
        if (destinationLength < (long)rows.Length * width)
        {
            throw new ArgumentException($"{rows.Length} rows of {width} need {(long)rows.Length * width} floats, the destination has {destinationLength}");
        }
        int tableRows = tableLength / width;
        foreach (int row in rows)
        {
            if ((uint)row >= (uint)tableRows)
            {
                throw new ArgumentOutOfRangeException(nameof(rows), $"row {row} of a table of {tableRows}");
            }
        }
    }
}
