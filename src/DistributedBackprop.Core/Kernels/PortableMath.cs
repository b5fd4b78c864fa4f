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
/// Each function is written once, generic over <see cref="IFloatLanes{TSelf}"/>: one float
/// (<see cref="ScalarLane"/>, the definition read as plain arithmetic) or 4, 8 or 16 SIMD lanes. The span
/// overloads run the widest lanes this CPU accelerates over whole vectors and pad the tail into one more,
/// so an element's bits depend neither on its position nor on the machine's vector width. Tests hold every
/// width to the scalar lane at every length, and each function to within 2 ulp of the correctly rounded
/// result.
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
    public static float Exp(float x) => Exp(new ScalarLane(x)).Value;

    /// <summary>tanh x within 2 ulp (1 measured); odd, ±1 for |x| ≳ 9, NaN for NaN.</summary>
    public static float Tanh(float x) => Tanh(new ScalarLane(x)).Value;

    /// <summary>σ(x) = 1/(1 + e^−x) within 2 ulp: e^{−|x|} ∈ (0, 1] never overflows, and for x &lt; 0, σ = e^x/(1 + e^x) keeps the tiny results.</summary>
    public static float Sigmoid(float x) => Sigmoid(new ScalarLane(x)).Value;

    /// <summary>max(x, 0) as a select: +0 for x ≤ 0 (also −0), NaN stays NaN.</summary>
    public static float Relu(float x) => Relu(new ScalarLane(x)).Value;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TLanes Exp<TLanes>(TLanes x)
        where TLanes : struct, IFloatLanes<TLanes>
    {
        x = TLanes.Select(TLanes.GreaterThan(x, TLanes.Broadcast(ExpUpperClamp)), TLanes.Broadcast(ExpUpperClamp), x);
        x = TLanes.Select(TLanes.LessThan(x, TLanes.Broadcast(ExpLowerClamp)), TLanes.Broadcast(ExpLowerClamp), x);
        TLanes shift = TLanes.Broadcast(RoundingShift);
        TLanes n = TLanes.FusedMultiplyAdd(x, TLanes.Broadcast(Log2E), shift) - shift;
        TLanes r = TLanes.FusedMultiplyAdd(n, TLanes.Broadcast(-Ln2High), x);
        r = TLanes.FusedMultiplyAdd(n, TLanes.Broadcast(-Ln2Low), r);
        TLanes q = TLanes.FusedMultiplyAdd(TLanes.Broadcast(Q5), r, TLanes.Broadcast(Q4));
        q = TLanes.FusedMultiplyAdd(q, r, TLanes.Broadcast(Q3));
        q = TLanes.FusedMultiplyAdd(q, r, TLanes.Broadcast(Q2));
        q = TLanes.FusedMultiplyAdd(q, r, TLanes.Broadcast(Q1));
        q = TLanes.FusedMultiplyAdd(q, r, TLanes.Broadcast(Q0));
        TLanes er = TLanes.Broadcast(1f) + TLanes.FusedMultiplyAdd(r * r, q, r);
        // A NaN lane's n would convert to a CPU-dependent integer: scale it by 2^0 (it stays NaN).
        n = TLanes.Select(TLanes.IsNaN(n), TLanes.Broadcast(0f), n);
        return TLanes.ScaleByPowerOfTwo(er, n);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TLanes Tanh<TLanes>(TLanes x)
        where TLanes : struct, IFloatLanes<TLanes>
    {
        TLanes magnitude = TLanes.Abs(x);
        TLanes z = x * x;
        TLanes t = TLanes.FusedMultiplyAdd(TLanes.Broadcast(T4), z, TLanes.Broadcast(T3));
        t = TLanes.FusedMultiplyAdd(t, z, TLanes.Broadcast(T2));
        t = TLanes.FusedMultiplyAdd(t, z, TLanes.Broadcast(T1));
        t = TLanes.FusedMultiplyAdd(t, z, TLanes.Broadcast(T0));
        TLanes small = TLanes.FusedMultiplyAdd(x * z, t, x);
        TLanes one = TLanes.Broadcast(1f);
        TLanes large = one - TLanes.Broadcast(2f) / (Exp(magnitude + magnitude) + one);
        large = TLanes.Select(TLanes.LessThan(x, TLanes.Broadcast(0f)), -large, large);
        return TLanes.Select(TLanes.LessThan(magnitude, TLanes.Broadcast(TanhSmall)), small, large);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TLanes Sigmoid<TLanes>(TLanes x)
        where TLanes : struct, IFloatLanes<TLanes>
    {
        TLanes e = Exp(-TLanes.Abs(x));
        TLanes one = TLanes.Broadcast(1f);
        return TLanes.Select(TLanes.LessThan(x, TLanes.Broadcast(0f)), e, one) / (one + e);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TLanes Relu<TLanes>(TLanes x)
        where TLanes : struct, IFloatLanes<TLanes> =>
        TLanes.Select(TLanes.LessThanOrEqual(x, TLanes.Broadcast(0f)), TLanes.Broadcast(0f), x);

    /// <summary>
    /// Σ x in a fixed order: element i is added into lane i mod <see cref="ReductionLanes"/> (each lane from −0,
    /// in index order), then the lanes are added pairwise ((0+1)+(2+3)) + ((4+5)+(6+7)). Summed one element at a
    /// time: the rows it sums (a softmax's classes) are short.
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

    /// <summary>The largest value, the first one met among equals (so −0 and +0 keep their order); NaN if any is NaN.</summary>
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

    public static void Exp(ReadOnlySpan<float> x, Span<float> result) => Map<ExpFunction>(x, result);

    public static void Tanh(ReadOnlySpan<float> x, Span<float> result) => Map<TanhFunction>(x, result);

    public static void Sigmoid(ReadOnlySpan<float> x, Span<float> result) => Map<SigmoidFunction>(x, result);

    public static void Relu(ReadOnlySpan<float> x, Span<float> result) => Map<ReluFunction>(x, result);

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

    /// <summary>The lane width the span overloads use on this CPU: the widest it accelerates.</summary>
    public static int LaneWidth { get; } =
        Lanes512.IsAccelerated ? Lanes512.Count : Lanes256.IsAccelerated ? Lanes256.Count : Lanes128.IsAccelerated ? Lanes128.Count : ScalarLane.Count;

    /// <summary><typeparamref name="TFunction"/> over a span, in lanes of <paramref name="width"/> (for tests: every width gives the same bits).</summary>
    public static void Map<TFunction>(ReadOnlySpan<float> x, Span<float> result, int width)
        where TFunction : struct, ILaneFunction
    {
        switch (width)
        {
            case Lanes512.Count: Map<TFunction, Lanes512>(x, result); break;
            case Lanes256.Count: Map<TFunction, Lanes256>(x, result); break;
            case Lanes128.Count: Map<TFunction, Lanes128>(x, result); break;
            case ScalarLane.Count: Map<TFunction, ScalarLane>(x, result); break;
            default: throw new ArgumentOutOfRangeException(nameof(width), width, "lanes are 1, 4, 8 or 16 wide");
        }
    }

    private static void Map<TFunction>(ReadOnlySpan<float> x, Span<float> result)
        where TFunction : struct, ILaneFunction => Map<TFunction>(x, result, LaneWidth);

    /// <summary>Applies <typeparamref name="TFunction"/> to whole vectors, then to the tail padded with zeros into one more.</summary>
    private static void Map<TFunction, TLanes>(ReadOnlySpan<float> x, Span<float> result)
        where TFunction : struct, ILaneFunction
        where TLanes : struct, IFloatLanes<TLanes>
    {
        if (result.Length < x.Length)
        {
            throw new ArgumentException($"{x.Length} values into {result.Length}");
        }
        int width = TLanes.Count;
        int i = 0;
        for (; i <= x.Length - width; i += width)
        {
            TFunction.Apply(TLanes.Load(x[i..])).Store(result[i..]);
        }
        if (i < x.Length)
        {
            Span<float> padded = stackalloc float[width];
            padded.Clear();
            x[i..].CopyTo(padded);
            TFunction.Apply(TLanes.Load(padded)).Store(padded);
            padded[..(x.Length - i)].CopyTo(result[i..]);
        }
    }

    private static float CombineLanes(ReadOnlySpan<float> lanes) =>
        ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));

    /// <summary>One of the element-wise functions, for <see cref="Map{TFunction}(ReadOnlySpan{float}, Span{float}, int)"/>.</summary>
    public interface ILaneFunction
    {
        static abstract TLanes Apply<TLanes>(TLanes x) where TLanes : struct, IFloatLanes<TLanes>;
    }

    public struct ExpFunction : ILaneFunction
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static TLanes Apply<TLanes>(TLanes x) where TLanes : struct, IFloatLanes<TLanes> => Exp(x);
    }

    public struct TanhFunction : ILaneFunction
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static TLanes Apply<TLanes>(TLanes x) where TLanes : struct, IFloatLanes<TLanes> => Tanh(x);
    }

    public struct SigmoidFunction : ILaneFunction
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static TLanes Apply<TLanes>(TLanes x) where TLanes : struct, IFloatLanes<TLanes> => Sigmoid(x);
    }

    public struct ReluFunction : ILaneFunction
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static TLanes Apply<TLanes>(TLanes x) where TLanes : struct, IFloatLanes<TLanes> => Relu(x);
    }
}
