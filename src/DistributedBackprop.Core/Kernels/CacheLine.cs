using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace DistributedBackprop.Kernels;

/// <summary>One 64-byte cache line of floats, moved whole: the packing of B's rows and the gather of a batch's rows.</summary>
internal static unsafe class CacheLine
{
    public const int Floats = 16;

    /// <summary>
    /// Copies <see cref="Floats"/> floats as four 16-byte moves, inline: a call to Memmove per line costs more than the
    /// move. Unaligned loads and stores: neither side need start on a line.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Copy(float* source, float* destination)
    {
        Vector128.Store(Vector128.Load(source), destination);
        Vector128.Store(Vector128.Load(source + 4), destination + 4);
        Vector128.Store(Vector128.Load(source + 8), destination + 8);
        Vector128.Store(Vector128.Load(source + 12), destination + 12);
    }
}
