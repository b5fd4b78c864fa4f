using System.Numerics;
using System.Runtime.InteropServices;

namespace DistributedBackprop.Kernels;

/// <summary>
/// The finite check of every update, of every gradient a peer sends and of every tensor read from a model or a
/// checkpoint: one implementation below the engine, the network code and the file formats.
/// </summary>
public static class FiniteValues
{
    /// <summary>
    /// No NaN and no infinity: no value has an exponent field of all ones (IEEE 754). An and, a compare and
    /// an or per vector, where TensorPrimitives.MaxMagnitude also selects the larger magnitude with NaN
    /// handling; this runs over the gradient and the parameters every step.
    /// </summary>
    public static bool All(ReadOnlySpan<float> values)
    {
        ReadOnlySpan<int> bits = MemoryMarshal.Cast<float, int>(values);
        var exponent = new Vector<int>(ExponentMask);
        Vector<int> seen0 = Vector<int>.Zero, seen1 = Vector<int>.Zero;
        int i = 0, width = Vector<int>.Count;
        for (; i <= bits.Length - 2 * width; i += 2 * width)
        {
            seen0 |= Vector.Equals(new Vector<int>(bits[i..]) & exponent, exponent);
            seen1 |= Vector.Equals(new Vector<int>(bits[(i + width)..]) & exponent, exponent);
        }
        bool finite = (seen0 | seen1) == Vector<int>.Zero;
        for (; i < bits.Length; i++)
        {
            finite &= (bits[i] & ExponentMask) != ExponentMask;
        }
        return finite;
    }

    private const int ExponentMask = 0x7F80_0000;
}
