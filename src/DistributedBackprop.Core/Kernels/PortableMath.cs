using System.Numerics;
using System.Runtime.CompilerServices;

namespace DistributedBackprop.Kernels;

/// <summary>
/// The element-wise functions and reductions whose bits reach the model — exp, tanh, sigmoid, softmax,
/// ReLU, sum, dot, max — each defined once as a fixed sequence of IEEE-754 float operations (add, multiply,
/// divide, fused multiply-add, compare-and-select, exact scaling by powers of two). Every one of those is
/// correctly rounded by the standard, so the result is the same bits on every instruction set and
/// architecture: AVX-512, AVX2, SSE, no SIMD at all, ARM64. The runtime's own functions
/// (<c>TensorPrimitives.Exp/Sum</c>, the C library's <c>expf</c>) may pick a different polynomial, vector width
/// or summation order per CPU; these may not, which is what lets mixed machines train one model.
///
/// The scalar overloads are the definitions. The span overloads run the same operations on
/// <see cref="Vector{T}"/> lanes (8 wide with AVX2, 4 with SSE or ARM64 NEON, emulated without SIMD); a
/// row's tail is padded into one more vector, so every element takes the same path whatever its position
/// and however wide the machine's vectors are. Tests hold each span overload to its scalar definition on
/// every length, and each function to within 2 ulp of the correctly rounded result.
/// </summary>
public static class PortableMath
{
    // exp: e^x = 2^n · e^r, n = round(x·log2 e), r = x − n·ln 2 (Cody–Waite: ln 2 split in two so that n·Ln2High
    // is exact), e^r = 1 + r + r²·Q(r) on |r| ≤ ln2/2 (Cephes' expf coefficients, evaluated by fused Horner).
    private const float Log2E = 1.44269504088896341f;
    private const float Ln2High = 0.693359375f;
    private const float Ln2Low = -2.12194440e-4f;
    private const float RoundingShift = 12582912f; // 1.5·2^23: adding it rounds |v| < 2^22 to an integer (ties to even).
    private const float ExpUpperClamp = 89f;       // e^89 > float.MaxValue: the scaling overflows to +∞ by itself.
    private const float ExpLowerClamp = -104f;     // e^-104 < half the smallest subnormal: the scaling rounds to +0.
    private const float Q5 = 1.9875691500e-4f, Q4 = 1.3981999507e-3f, Q3 = 8.3334519073e-3f, Q2 = 4.1665795894e-2f, Q1 = 1.6666665459e-1f, Q0 = 5.0000001201e-1f;

    // tanh on |x| < 0.625: x + x³·T(x²) (Cephes' tanhf coefficients); beyond, 1 − 2/(e^{2|x|} + 1).
    private const float TanhSmall = 0.625f;
    private const float T4 = -5.70498872745e-3f, T3 = 2.06390887954e-2f, T2 = -5.37397155531e-2f, T1 = 1.33314422036e-1f, T0 = -3.33332819422e-1f;

    /// <summary>The number of lanes <see cref="Sum"/> and <see cref="Dot"/> accumulate in (element i goes to lane i mod 8).</summary>
    public const int ReductionLanes = 8;

    /// <summary>e^x within 1 ulp; +∞ above ≈ 88.72, +0 below ≈ −103.97 (subnormals in between), NaN for NaN.</summary>
    public static float Exp(float x)
    {
        x = x > ExpUpperClamp ? ExpUpperClamp : x;
        x = x < ExpLowerClamp ? ExpLowerClamp : x;
        float n = MathF.FusedMultiplyAdd(x, Log2E, RoundingShift) - RoundingShift;
        float r = MathF.FusedMultiplyAdd(n, -Ln2High, x);
        r = MathF.FusedMultiplyAdd(n, -Ln2Low, r);
        float q = MathF.FusedMultiplyAdd(Q5, r, Q4);
        q = MathF.FusedMultiplyAdd(q, r, Q3);
        q = MathF.FusedMultiplyAdd(q, r, Q2);
        q = MathF.FusedMultiplyAdd(q, r, Q1);
        q = MathF.FusedMultiplyAdd(q, r, Q0);
        float er = 1f + MathF.FusedMultiplyAdd(r * r, q, r);
        // 2^n in two exact factors (n ∈ [−150, 128] does not fit one float exponent); the second product is the
        // only rounding, also where the result is subnormal or overflows. A NaN's n is whatever the conversion
        // gives: er is NaN, and so is the product.
        int k = float.IsNaN(n) ? 0 : (int)n;
        int half = k >> 1;
        return er * PowerOfTwo(half) * PowerOfTwo(k - half);
    }

    /// <summary>tanh x within 2 ulp; odd, ±1 for |x| ≳ 9, NaN for NaN.</summary>
    public static float Tanh(float x)
    {
        float magnitude = MathF.Abs(x);
        float z = x * x;
        float t = MathF.FusedMultiplyAdd(T4, z, T3);
        t = MathF.FusedMultiplyAdd(t, z, T2);
        t = MathF.FusedMultiplyAdd(t, z, T1);
        t = MathF.FusedMultiplyAdd(t, z, T0);
        float small = MathF.FusedMultiplyAdd(x * z, t, x);
        float large = 1f - 2f / (Exp(magnitude + magnitude) + 1f);
        large = x < 0 ? -large : large;
        return magnitude < TanhSmall ? small : large;
    }

    /// <summary>σ(x) = 1/(1 + e^−x) within 2 ulp: e^{−|x|} ∈ (0, 1] never overflows, and for x &lt; 0, σ = e^x/(1 + e^x) keeps the tiny results.</summary>
    public static float Sigmoid(float x)
    {
        float e = Exp(-MathF.Abs(x));
        float denominator = 1f + e;
        return (x < 0 ? e : 1f) / denominator;
    }

    /// <summary>max(x, 0) as a select: +0 for x ≤ 0 (also −0), NaN stays NaN.</summary>
    public static float Relu(float x) => x <= 0 ? 0f : x;

    /// <summary>
    /// Σ x in a fixed order: element i is added into lane i mod <see cref="ReductionLanes"/> (each lane from −0,
    /// in index order), then the lanes are added pairwise ((0+1)+(2+3)) + ((4+5)+(6+7)).
    /// </summary>
    public static float Sum(ReadOnlySpan<float> x)
    {
        Span<float> lanes = stackalloc float[ReductionLanes];
        lanes.Fill(-0f);
        for (int i = 0; i < x.Length; i++)
        {
            lanes[i % ReductionLanes] += x[i];
        }
        return CombineLanes(lanes);
    }

    /// <summary>⟨x, y⟩ in a fixed order: lane i mod <see cref="ReductionLanes"/> ← fma(x_i, y_i, lane) from +0, in index order, lanes combined as in <see cref="Sum"/>.</summary>
    public static float Dot(ReadOnlySpan<float> x, ReadOnlySpan<float> y)
    {
        if (x.Length != y.Length)
        {
            throw new ArgumentException($"dot of {x.Length} and {y.Length} values");
        }
        Span<float> lanes = stackalloc float[ReductionLanes];
        lanes.Clear();
        for (int i = 0; i < x.Length; i++)
        {
            lanes[i % ReductionLanes] = MathF.FusedMultiplyAdd(x[i], y[i], lanes[i % ReductionLanes]);
        }
        return CombineLanes(lanes);
    }

    /// <summary>The largest value, the first one met among equals (so −0 and +0 keep their order); NaN if any is NaN. Undefined for none.</summary>
    public static float Max(ReadOnlySpan<float> x)
    {
        if (x.IsEmpty)
        {
            throw new ArgumentException("the maximum of no values");
        }
        float max = x[0];
        for (int i = 1; i < x.Length; i++)
        {
            if (float.IsNaN(x[i]))
            {
                return x[i];
            }
            max = x[i] > max ? x[i] : max;
        }
        return max;
    }

    public static void Exp(ReadOnlySpan<float> x, Span<float> result) => Map<ExpLanes>(x, result);

    public static void Tanh(ReadOnlySpan<float> x, Span<float> result) => Map<TanhLanes>(x, result);

    public static void Sigmoid(ReadOnlySpan<float> x, Span<float> result) => Map<SigmoidLanes>(x, result);

    public static void Relu(ReadOnlySpan<float> x, Span<float> result) => Map<ReluLanes>(x, result);

    /// <summary>softmax(z) = e^{z − max z} / Σ e^{z − max z} (shifted so no exp overflows), into <paramref name="a"/>.</summary>
    public static void Softmax(ReadOnlySpan<float> z, Span<float> a)
    {
        float max = Max(z);
        for (int i = 0; i < z.Length; i++)
        {
            a[i] = z[i] - max;
        }
        Exp(a, a);
        float sum = Sum(a);
        for (int i = 0; i < a.Length; i++)
        {
            a[i] /= sum;
        }
    }

    /// <summary>x^n for n ≥ 0 by square-and-multiply in double (the C library's pow may differ between CPUs in the last bit).</summary>
    public static double Power(double x, int n)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        double result = 1, square = x;
        for (; n > 0; n >>= 1)
        {
            if ((n & 1) != 0)
            {
                result *= square;
            }
            square *= square;
        }
        return result;
    }

    /// <summary>
    /// cos(π·t) for t ∈ [0, 1] in double, within a few ulp: cos(πt) = −sin(πu) with u = t − ½ ∈ [−½, ½], and sin
    /// by its Taylor series to the term u^27 (the first omitted term is below 2^−60 on that interval), summed
    /// by Horner from the smallest term.
    /// </summary>
    public static double CosPi(double t)
    {
        if (!(t >= 0 && t <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(t), t, "cos(πt) is defined here for t in [0, 1]");
        }
        double x = Math.PI * (t - 0.5);
        double x2 = x * x;
        double series = 1;
        for (int k = 27; k >= 3; k -= 2)
        {
            // sin x = x·(1 − x²/(2·3)·(1 − x²/(4·5)·(1 − …)))
            series = 1 - x2 / ((k - 1) * k) * series;
        }
        return -x * series;
    }

    /// <summary>Vector forms of the definitions above: the same operations, lane by lane.</summary>
    public static Vector<float> Exp(Vector<float> x)
    {
        x = Vector.ConditionalSelect(Vector.GreaterThan(x, new Vector<float>(ExpUpperClamp)), new Vector<float>(ExpUpperClamp), x);
        x = Vector.ConditionalSelect(Vector.LessThan(x, new Vector<float>(ExpLowerClamp)), new Vector<float>(ExpLowerClamp), x);
        var shift = new Vector<float>(RoundingShift);
        Vector<float> n = Vector.FusedMultiplyAdd(x, new Vector<float>(Log2E), shift) - shift;
        Vector<float> r = Vector.FusedMultiplyAdd(n, new Vector<float>(-Ln2High), x);
        r = Vector.FusedMultiplyAdd(n, new Vector<float>(-Ln2Low), r);
        Vector<float> q = Vector.FusedMultiplyAdd(new Vector<float>(Q5), r, new Vector<float>(Q4));
        q = Vector.FusedMultiplyAdd(q, r, new Vector<float>(Q3));
        q = Vector.FusedMultiplyAdd(q, r, new Vector<float>(Q2));
        q = Vector.FusedMultiplyAdd(q, r, new Vector<float>(Q1));
        q = Vector.FusedMultiplyAdd(q, r, new Vector<float>(Q0));
        Vector<float> er = Vector<float>.One + Vector.FusedMultiplyAdd(r * r, q, r);
        // NaN lanes convert to a CPU-dependent integer; zero them so the scaling is defined (er is NaN there anyway).
        Vector<int> k = Vector.ConditionalSelect(Vector.Equals(n, n), Vector.ConvertToInt32(n), Vector<int>.Zero);
        Vector<int> half = Vector.ShiftRightArithmetic(k, 1);
        return er * PowerOfTwo(half) * PowerOfTwo(k - half);
    }

    public static Vector<float> Tanh(Vector<float> x)
    {
        Vector<float> magnitude = Vector.Abs(x);
        Vector<float> z = x * x;
        Vector<float> t = Vector.FusedMultiplyAdd(new Vector<float>(T4), z, new Vector<float>(T3));
        t = Vector.FusedMultiplyAdd(t, z, new Vector<float>(T2));
        t = Vector.FusedMultiplyAdd(t, z, new Vector<float>(T1));
        t = Vector.FusedMultiplyAdd(t, z, new Vector<float>(T0));
        Vector<float> small = Vector.FusedMultiplyAdd(x * z, t, x);
        Vector<float> large = Vector<float>.One - new Vector<float>(2f) / (Exp(magnitude + magnitude) + Vector<float>.One);
        large = Vector.ConditionalSelect(Vector.LessThan(x, Vector<float>.Zero), -large, large);
        return Vector.ConditionalSelect(Vector.LessThan(magnitude, new Vector<float>(TanhSmall)), small, large);
    }

    public static Vector<float> Sigmoid(Vector<float> x)
    {
        Vector<float> e = Exp(-Vector.Abs(x));
        Vector<float> denominator = Vector<float>.One + e;
        return Vector.ConditionalSelect(Vector.LessThan(x, Vector<float>.Zero), e, Vector<float>.One) / denominator;
    }

    public static Vector<float> Relu(Vector<float> x) =>
        Vector.ConditionalSelect(Vector.LessThanOrEqual(x, Vector<float>.Zero), Vector<float>.Zero, x);

    private static float CombineLanes(ReadOnlySpan<float> lanes) =>
        ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));

    /// <summary>2^k for k ∈ [−126, 127], built from its exponent bits.</summary>
    private static float PowerOfTwo(int k) => BitConverter.Int32BitsToSingle((k + 127) << 23);

    private static Vector<float> PowerOfTwo(Vector<int> k) =>
        Vector.AsVectorSingle(Vector.ShiftLeft(k + new Vector<int>(127), 23));

    /// <summary>Applies <typeparamref name="TLanes"/> to whole vectors, then to the tail padded with zeros into one more.</summary>
    private static void Map<TLanes>(ReadOnlySpan<float> x, Span<float> result)
        where TLanes : struct, ILaneFunction
    {
        if (result.Length < x.Length)
        {
            throw new ArgumentException($"{x.Length} values into {result.Length}");
        }
        int width = Vector<float>.Count;
        int i = 0;
        for (; i <= x.Length - width; i += width)
        {
            TLanes.Apply(new Vector<float>(x.Slice(i, width))).CopyTo(result.Slice(i, width));
        }
        if (i < x.Length)
        {
            Span<float> padded = stackalloc float[width];
            padded.Clear();
            x[i..].CopyTo(padded);
            TLanes.Apply(new Vector<float>(padded)).CopyTo(padded);
            padded[..(x.Length - i)].CopyTo(result[i..]);
        }
    }

    private interface ILaneFunction
    {
        static abstract Vector<float> Apply(Vector<float> x);
    }

    private struct ExpLanes : ILaneFunction
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector<float> Apply(Vector<float> x) => Exp(x);
    }

    private struct TanhLanes : ILaneFunction
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector<float> Apply(Vector<float> x) => Tanh(x);
    }

    private struct SigmoidLanes : ILaneFunction
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector<float> Apply(Vector<float> x) => Sigmoid(x);
    }

    private struct ReluLanes : ILaneFunction
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector<float> Apply(Vector<float> x) => Relu(x);
    }
}
