using System.Numerics;
using System.Runtime.CompilerServices;

namespace DistributedBackprop.Data;

/// <summary>
/// A float table kept a second time as one byte per value, for a table in which every value is exactly
/// code × <see cref="Scale"/> for a code 0..255: 8-bit images scaled to [0, 1] (<see cref="Preprocessing.UnitRange"/>).
/// The training step gathers a batch's random rows from it (<see cref="Kernels.RowGather.CopyScaled"/>): the rows
/// come from memory, not the cache, and a byte row is a quarter of a float row. Decoding (float)code × scale gives
/// back each value's own bits, which <see cref="TryEncode"/> checks for every value before it keeps the codes, so
/// the trained model is the same whichever copy was read.
/// </summary>
public sealed class ByteCodedValues
{
    /// <summary>The scale of images: <see cref="Preprocessing.UnitRange"/>'s x' = x · (1/255).</summary>
    public const float ImageScale = 1f / 255f;

    private ByteCodedValues(byte[] codes, float scale)
    {
        Codes = codes;
        Scale = scale;
    }

    /// <summary>One code per value of the table, in the same order.</summary>
    public byte[] Codes { get; }

    public float Scale { get; }

    /// <summary>
    /// The codes of <paramref name="values"/> if every value is bit for bit (float)code × <paramref name="scale"/>
    /// with a code 0..255 (so −0, NaN, values between codes and values past 255 codes refuse the whole table); null
    /// otherwise. The first values are checked before the codes' array is allocated, so a table of other floats (a
    /// standardised CSV) is refused at once; one with a late non-code costs a pass up to it.
    /// </summary>
    public static ByteCodedValues? TryEncode(ReadOnlySpan<float> values, float scale)
    {
        if (!(scale > 0) || !float.IsFinite(scale))
        {
            throw new ArgumentOutOfRangeException(nameof(scale), $"a scale must be finite and positive, got {scale}");
        }
        float inverse = 1f / scale;
        for (int first = 0; first < Math.Min(values.Length, 64); first++)
        {
            if (Encode(values[first], inverse, scale) is null)
            {
                return null;
            }
        }
        var codes = new byte[values.Length];
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            var factor = new Vector<float>(scale);
            var toCode = new Vector<float>(inverse);
            int count = Vector<float>.Count;
            // Four vectors of values make one vector of codes.
            for (; i + 4 * count <= values.Length; i += 4 * count)
            {
                var good = new Vector<int>(-1);
                Vector<uint> c0 = VectorCodes(values.Slice(i), toCode, factor, ref good);
                Vector<uint> c1 = VectorCodes(values.Slice(i + count), toCode, factor, ref good);
                Vector<uint> c2 = VectorCodes(values.Slice(i + 2 * count), toCode, factor, ref good);
                Vector<uint> c3 = VectorCodes(values.Slice(i + 3 * count), toCode, factor, ref good);
                if (!Vector.EqualsAll(good, new Vector<int>(-1)))
                {
                    return null;
                }
                Vector.Narrow(Vector.Narrow(c0, c1), Vector.Narrow(c2, c3)).CopyTo(codes.AsSpan(i));
            }
        }
        for (; i < values.Length; i++)
        {
            if (Encode(values[i], inverse, scale) is not { } code)
            {
                return null;
            }
            codes[i] = code;
        }
        return new ByteCodedValues(codes, scale);
    }

    /// <summary><see cref="Encode"/> on a vector of values: their nearest codes; a lane of <paramref name="good"/> is cleared where that code is not the value's.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector<uint> VectorCodes(ReadOnlySpan<float> values, Vector<float> toCode, Vector<float> factor, ref Vector<int> good)
    {
        var value = new Vector<float>(values);
        // The nearest code, then the exact test: that code decodes to this value's bits. A NaN converts to code 0
        // and −0 rounds to it; both fail the bit compare, as +0 is not their bits. A value past int's range converts
        // to a code outside 0..255 (saturated) and fails the range check.
        Vector<int> code = Vector.ConvertToInt32(Vector.Round(value * toCode));
        Vector<int> decoded = Vector.AsVectorInt32(Vector.ConvertToSingle(code) * factor);
        good &= Vector.Equals(decoded, Vector.AsVectorInt32(value))
            & Vector.GreaterThanOrEqual(code, Vector<int>.Zero) & Vector.LessThanOrEqual(code, new Vector<int>(byte.MaxValue));
        return Vector.AsVectorUInt32(code);
    }

    /// <summary>The definition, one value: its code, or null when no code decodes to its bits.</summary>
    private static byte? Encode(float value, float inverse, float scale)
    {
        float nearest = MathF.Round(value * inverse);
        if (!(nearest >= 0 && nearest <= byte.MaxValue))
        {
            return null;
        }
        byte code = (byte)nearest;
        return BitConverter.SingleToInt32Bits(code * scale) == BitConverter.SingleToInt32Bits(value) ? code : null;
    }
}
