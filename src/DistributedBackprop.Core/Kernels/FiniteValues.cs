using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace DistributedBackprop.Kernels;

/// <summary>
/// The finite check of every summed gradient, of every gradient a peer sends and of every tensor read from a model
/// or a checkpoint, and the per-vector test the optimizer applies to what it writes: one implementation below the
/// engine, the network code and the file formats.
/// </summary>
public static class FiniteValues
{
    /// <summary>
    /// No NaN and no infinity: no value has an exponent field of all ones (IEEE 754). An and, a compare and
    /// an or per vector, where TensorPrimitives.MaxMagnitude also selects the larger magnitude with NaN
    /// handling; this runs over the gradient every step, mostly on blocks just written (in L1), so the loop
    /// loads by reference (no span slicing per vector) into four independent accumulators.
    /// </summary>
    public static bool All(ReadOnlySpan<float> values)
    {
        ref int bits = ref Unsafe.As<float, int>(ref MemoryMarshal.GetReference(values));
        nuint length = (nuint)values.Length, width = (nuint)Vector<int>.Count, i = 0;
        var exponent = new Vector<int>(ExponentMask);
        Vector<int> seen0 = Vector<int>.Zero, seen1 = Vector<int>.Zero, seen2 = Vector<int>.Zero, seen3 = Vector<int>.Zero;
        for (; i + 4 * width <= length; i += 4 * width)
        {
            seen0 |= Vector.Equals(Vector.LoadUnsafe(ref bits, i) & exponent, exponent);
            seen1 |= Vector.Equals(Vector.LoadUnsafe(ref bits, i + width) & exponent, exponent);
            seen2 |= Vector.Equals(Vector.LoadUnsafe(ref bits, i + 2 * width) & exponent, exponent);
            seen3 |= Vector.Equals(Vector.LoadUnsafe(ref bits, i + 3 * width) & exponent, exponent);
        }
        for (; i + width <= length; i += width)
        {
            seen0 |= Vector.Equals(Vector.LoadUnsafe(ref bits, i) & exponent, exponent);
        }
        bool finite = ((seen0 | seen1) | (seen2 | seen3)) == Vector<int>.Zero;
        for (; i < length; i++)
        {
            finite &= (Unsafe.Add(ref bits, i) & ExponentMask) != ExponentMask;
        }
        return finite;
    }

    /// <summary>
    /// All ones in each lane of <paramref name="values"/> that is NaN or infinite: for loops that check what they
    /// just computed while it is in a register (or it into an accumulator, then <see cref="None"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<int> NotFinite(Vector<float> values)
    {
        var exponent = new Vector<int>(ExponentMask);
        return Vector.Equals(Vector.AsVectorInt32(values) & exponent, exponent);
    }

    /// <summary>Whether an accumulator of <see cref="NotFinite"/> masks saw no NaN and no infinity.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool None(Vector<int> notFinite) => notFinite == Vector<int>.Zero;

    private const int ExponentMask = 0x7F80_0000;
}
