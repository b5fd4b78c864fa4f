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
    /// No NaN and no infinity: exactly when <see cref="Bound"/> is finite (one loop for both, an and and an integer
    /// max per vector; this runs over gradients every step, mostly on blocks just written, in L1).
    /// </summary>
    public static bool All(ReadOnlySpan<float> values) => float.IsFinite(Bound(values));

    /// <summary>
    /// The largest magnitude in <paramref name="values"/> (0 when empty), or NaN or +∞ when a value is not finite:
    /// the bound a node's gradient comes with, so that a sum of gradients can be known finite before it is computed
    /// (|Σ g| ≤ Σ max |g|). The magnitudes are compared as integers: the bits of |x| (sign cleared) order like the
    /// values, with +∞ above every finite value and every NaN above +∞, so one integer max per vector needs no NaN
    /// handling and returns a NaN or +∞ exactly when one is there. The loop loads by reference (no span slicing
    /// per vector) into four independent accumulators.
    /// </summary>
    public static float Bound(ReadOnlySpan<float> values)
    {
        ref int bits = ref Unsafe.As<float, int>(ref MemoryMarshal.GetReference(values));
        nuint length = (nuint)values.Length, width = (nuint)Vector<int>.Count, i = 0;
        var magnitude = new Vector<int>(int.MaxValue);
        Vector<int> max0 = Vector<int>.Zero, max1 = Vector<int>.Zero, max2 = Vector<int>.Zero, max3 = Vector<int>.Zero;
        for (; i + 4 * width <= length; i += 4 * width)
        {
            max0 = Vector.Max(max0, Vector.LoadUnsafe(ref bits, i) & magnitude);
            max1 = Vector.Max(max1, Vector.LoadUnsafe(ref bits, i + width) & magnitude);
            max2 = Vector.Max(max2, Vector.LoadUnsafe(ref bits, i + 2 * width) & magnitude);
            max3 = Vector.Max(max3, Vector.LoadUnsafe(ref bits, i + 3 * width) & magnitude);
        }
        for (; i + width <= length; i += width)
        {
            max0 = Vector.Max(max0, Vector.LoadUnsafe(ref bits, i) & magnitude);
        }
        Vector<int> max = Vector.Max(Vector.Max(max0, max1), Vector.Max(max2, max3));
        int largest = 0;
        for (int lane = 0; lane < Vector<int>.Count; lane++)
        {
            largest = Math.Max(largest, max[lane]);
        }
        for (; i < length; i++)
        {
            largest = Math.Max(largest, Unsafe.Add(ref bits, i) & int.MaxValue);
        }
        return BitConverter.Int32BitsToSingle(largest);
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
