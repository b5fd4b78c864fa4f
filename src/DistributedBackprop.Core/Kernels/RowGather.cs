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
    /// <summary>destination row r ← table row rows[r] (each <paramref name="width"/> floats, row-major, dense).</summary>
    public static void Copy(ReadOnlySpan<float> table, int width, ReadOnlySpan<int> rows, Span<float> destination)
    {
        CheckRows(table.Length, width, rows, destination.Length);
        fixed (float* source = table, target = destination)
        {
            Gather<FloatLines>((byte*)source, width, rows, target, scale: 1f);
        }
    }

    /// <summary>
    /// destination row r ← table row rows[r] × <paramref name="scale"/>, each code widened to a float first: the
    /// rows of a <see cref="Data.ByteCodedValues"/> table, where every value is exactly code × scale, so the floats
    /// written are the float table's own bits. A quarter of the bytes come from memory (Fashion-MNIST: 784 bytes a
    /// row instead of 3,136).
    /// </summary>
    public static void CopyScaled(ReadOnlySpan<byte> table, int width, float scale, ReadOnlySpan<int> rows, Span<float> destination)
    {
        CheckRows(table.Length, width, rows, destination.Length);
        fixed (byte* source = table)
        fixed (float* target = destination)
        {
            Gather<ByteCodeLines>(source, width, rows, target, scale);
        }
    }

    /// <summary>How one kind of table's rows become floats, a 64-byte line of the table at a time.</summary>
    private interface ILines
    {
        /// <summary>Rows whose lines are taken in turn (measured per kind: <see cref="FloatLines"/>, <see cref="ByteCodeLines"/>).</summary>
        static abstract int GroupRows { get; }
        static abstract int BytesPerValue { get; }
        /// <summary>One whole line of the table (64 / <see cref="BytesPerValue"/> values) to floats.</summary>
        static abstract void Line(byte* source, float* destination, float scale);
        /// <summary>A row's last <paramref name="count"/> values, fewer than a line's.</summary>
        static abstract void Tail(byte* source, float* destination, int count, float scale);
    }

    /// <summary>
    /// The rows in groups, one 64-byte line of each row of a group in turn, so the group's misses are in flight
    /// together; then each row's tail. Rows already checked (<see cref="CheckRows"/>).
    /// </summary>
    private static void Gather<TLines>(byte* source, int width, ReadOnlySpan<int> rows, float* target, float scale)
        where TLines : ILines
    {
        const int lineBytes = CacheLine.Floats * sizeof(float);
        int lineValues = lineBytes / TLines.BytesPerValue;
        int whole = width / lineValues * lineValues;
        long rowBytes = (long)width * TLines.BytesPerValue;
        byte** from = stackalloc byte*[TLines.GroupRows];
        for (int first = 0; first < rows.Length; first += TLines.GroupRows)
        {
            int group = Math.Min(TLines.GroupRows, rows.Length - first);
            for (int g = 0; g < group; g++)
            {
                from[g] = source + rows[first + g] * rowBytes;
            }
            float* to = target + (long)first * width;
            for (int p = 0; p < whole; p += lineValues)
            {
                for (int g = 0; g < group; g++)
                {
                    TLines.Line(from[g] + (long)p * TLines.BytesPerValue, to + (long)g * width + p, scale);
                }
            }
            for (int g = 0; whole < width && g < group; g++)
            {
                TLines.Tail(from[g] + (long)whole * TLines.BytesPerValue, to + (long)g * width + whole, width - whole, scale);
            }
        }
    }

    /// <summary>Float rows, copied.</summary>
    private readonly struct FloatLines : ILines
    {
        /// <summary>
        /// Rows copied side by side. The training step against row-by-row copies, Fashion-MNIST-sized data
        /// (`GEMMAB_ROWS=60000 bash bench/gemm-ab.sh fc17d74 120 512`, the group edited): 4 rows 1.031 ×, 8 rows 1.026 ×, 16 rows 0.988 ×.
        /// </summary>
        public static int GroupRows => 4;
        public static int BytesPerValue => sizeof(float);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Line(byte* source, float* destination, float scale) => CacheLine.Copy((float*)source, destination);

        public static void Tail(byte* source, float* destination, int count, float scale) =>
            new ReadOnlySpan<float>(source, count).CopyTo(new Span<float>(destination, count));
    }

    /// <summary>Byte codes, widened and scaled.</summary>
    private readonly struct ByteCodeLines : ILines
    {
        /// <summary>
        /// Byte rows (Fashion-MNIST: 784 bytes, ~12 lines) converted side by side: shorter rows, so more of them to keep
        /// as many misses in flight. The step against the float gather (`GEMMAB_IMAGES=1 GEMMAB_ROWS=60000 bash
        /// bench/gemm-ab.sh 311b541 60 128`, the group edited): 4 rows 1.032 ×, 8 rows 1.050 × (twice), 16 rows 1.038 ×.
        /// </summary>
        public static int GroupRows => 8;
        public static int BytesPerValue => sizeof(byte);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Line(byte* source, float* destination, float scale) => WidenAndScale64(source, destination, scale);

        public static void Tail(byte* source, float* destination, int count, float scale) => WidenAndScale(source, destination, count, scale);
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
