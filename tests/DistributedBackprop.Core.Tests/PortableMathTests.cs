using DistributedBackprop.Kernels;
using Xunit.Abstractions;

namespace DistributedBackprop.Tests;

/// <summary>
/// <see cref="PortableMath"/>: each span (vector) overload is the same bits as its scalar definition for every
/// element, at every length and position (the tail is padded into a vector), and each function is within its
/// stated distance of the correctly rounded result over the float range training reaches, from dense samples
/// and the edge cases (±0, subnormals, the overflow and underflow thresholds, ±∞, NaN). The double-precision
/// runtime functions are the reference.
/// </summary>
public class PortableMathTests(ITestOutputHelper output)
{
    private delegate float Scalar(float x);

    private delegate void Spans(ReadOnlySpan<float> x, Span<float> result);

    private delegate void SpansOfWidth(ReadOnlySpan<float> x, Span<float> result, int width);

    /// <summary>Every lane width: scalar, 128-, 256- and 512-bit (those this CPU lacks run emulated, with the same bits).</summary>
    private static readonly int[] Widths = [ScalarLane.Count, Lanes128.Count, Lanes256.Count, Lanes512.Count];

    private static SpansOfWidth OfWidth(string name) => name switch
    {
        "exp" => PortableMath.Map<PortableMath.ExpFunction>,
        "tanh" => PortableMath.Map<PortableMath.TanhFunction>,
        "sigmoid" => PortableMath.Map<PortableMath.SigmoidFunction>,
        "relu" => PortableMath.Map<PortableMath.ReluFunction>,
        _ => throw new ArgumentOutOfRangeException(nameof(name)),
    };

    public static TheoryData<string> Functions() => new(["exp", "tanh", "sigmoid", "relu"]);

    private static (Scalar Scalar, Spans Spans, Func<double, double> Reference, int MaxUlps) Function(string name) => name switch
    {
        "exp" => (PortableMath.Exp, PortableMath.Exp, Math.Exp, 1),
        "tanh" => (PortableMath.Tanh, PortableMath.Tanh, Math.Tanh, 2),
        "sigmoid" => (PortableMath.Sigmoid, PortableMath.Sigmoid, x => 1 / (1 + Math.Exp(-x)), 2),
        "relu" => (PortableMath.Relu, PortableMath.Relu, x => double.IsNaN(x) || x > 0 ? x : 0, 0),
        _ => throw new ArgumentOutOfRangeException(nameof(name)),
    };

    /// <summary>±0, the smallest and largest subnormals, ±∞, NaN, the thresholds of each function and their neighbours.</summary>
    private static readonly float[] EdgeCases = BuildEdgeCases();

    private static float[] BuildEdgeCases()
    {
        var values = new List<float>
        {
            0f, -0f, float.Epsilon, -float.Epsilon, 1.1754942e-38f, -1.1754942e-38f, float.MinValue, float.MaxValue,
            float.PositiveInfinity, float.NegativeInfinity, float.NaN, 1f, -1f, 0.5f, 1e-7f, -1e-7f, 1e-30f,
        };
        foreach (float threshold in new[] { 88.72283f, 88.72284f, 89f, -87.33655f, -103.27893f, -103.97208f, -104f, 0.625f, 9f, 9.01f, 0.34657359f, 17f, 44.36142f })
        {
            foreach (float sign in new[] { 1f, -1f })
            {
                float v = sign * threshold;
                values.AddRange([v, MathF.BitDecrement(v), MathF.BitIncrement(v)]);
            }
        }
        return values.ToArray();
    }

    [Theory]
    [MemberData(nameof(Functions))]
    public void Every_lane_width_length_and_position_gives_the_scalar_definitions_bits(string name)
    {
        var (scalar, spans, _, _) = Function(name);
        SpansOfWidth ofWidth = OfWidth(name);
        var random = new Randomness.Xoshiro256(7);
        for (int length = 0; length <= 67; length++)
        {
            var x = new float[length];
            for (int i = 0; i < length; i++)
            {
                // Mostly where training lives, with edge cases sprinkled at every position.
                x[i] = random.NextInt(5) == 0 ? EdgeCases[random.NextInt(EdgeCases.Length)] : (random.NextSingle() * 2 - 1) * (1 << random.NextInt(8));
            }
            foreach (int width in Widths)
            {
                var result = new float[length + 1];
                result[length] = 12345f;
                ofWidth(x, result, width);
                for (int i = 0; i < length; i++)
                {
                    Assert.True(BitConverter.SingleToInt32Bits(scalar(x[i])) == BitConverter.SingleToInt32Bits(result[i]),
                        $"{name}({x[i]:R}) at {i} of {length}, {width} lanes: {result[i]:R}, scalar {scalar(x[i]):R}");
                }
                Assert.Equal(12345f, result[length]);
            }

            // In place, as the network calls it, in this CPU's width.
            var expected = x.Select(v => scalar(v)).ToArray();
            spans(x, x);
            for (int i = 0; i < length; i++)
            {
                Assert.Equal(BitConverter.SingleToInt32Bits(expected[i]), BitConverter.SingleToInt32Bits(x[i]));
            }
        }
    }

    [Theory]
    [MemberData(nameof(Functions))]
    public void Every_function_is_within_its_ulps_of_the_correctly_rounded_result(string name)
    {
        var (scalar, spans, reference, maxUlps) = Function(name);
        // Every 61st float of either sign from +0 up to +∞ (about 35 million values per sign would be every one;
        // this is 35 million / 61 ≈ 570,000 per sign, spread evenly over every binade, subnormals included),
        // then every edge case.
        var samples = new List<float>(EdgeCases);
        for (long bits = 0; bits <= 0x7F800000; bits += 61 * 61)
        {
            float v = BitConverter.Int32BitsToSingle((int)bits);
            samples.Add(v);
            samples.Add(-v);
        }
        float[] x = samples.ToArray();
        var result = new float[x.Length];
        spans(x, result);
        int worst = 0;
        float worstAt = 0;
        for (int i = 0; i < x.Length; i++)
        {
            float expected = (float)reference(x[i]);
            if (float.IsNaN(expected))
            {
                Assert.True(float.IsNaN(result[i]), $"{name}({x[i]:R}) = {result[i]:R}, expected NaN");
                continue;
            }
            int ulps = UlpDistance(result[i], expected);
            if (ulps > worst)
            {
                worst = ulps;
                worstAt = x[i];
            }
            Assert.True(ulps <= maxUlps, $"{name}({x[i]:R}) = {result[i]:R}, correctly rounded {expected:R}: {ulps} ulp");
            Assert.Equal(BitConverter.SingleToInt32Bits(scalar(x[i])), BitConverter.SingleToInt32Bits(result[i]));
        }
        output.WriteLine($"{name}: worst {worst} ulp at {worstAt:R} over {x.Length} samples");
    }

    [Fact]
    public void Exp_is_within_one_ulp_on_every_float_with_magnitude_between_one_thousandth_and_two()
    {
        // Exhaustive (184 million floats) where activations and softmax shifts spend most of their time; below
        // 2^-10 e^x is 1 + x to within the rounding.
        int worst = 0;
        for (float v = 1f / 1024; v <= 2f; v = MathF.BitIncrement(v))
        {
            worst = Math.Max(worst, UlpDistance(PortableMath.Exp(v), (float)Math.Exp(v)));
            worst = Math.Max(worst, UlpDistance(PortableMath.Exp(-v), (float)Math.Exp(-v)));
        }
        Assert.True(worst <= 1, $"worst {worst} ulp");
    }

    /// <summary>The distance in representable floats between two finite or infinite floats of any sign.</summary>
    private static int UlpDistance(float a, float b)
    {
        static long Ordered(float f)
        {
            int bits = BitConverter.SingleToInt32Bits(f);
            return bits < 0 ? int.MinValue - (long)bits : bits;
        }
        return (int)Math.Min(int.MaxValue, Math.Abs(Ordered(a) - Ordered(b)));
    }

    [Fact]
    public void Softmax_is_exp_of_the_shifted_row_over_its_fixed_order_sum()
    {
        var random = new Randomness.Xoshiro256(11);
        for (int width = 1; width <= 40; width++)
        {
            var z = new float[width];
            for (int i = 0; i < width; i++) z[i] = (random.NextSingle() * 2 - 1) * 30;
            var a = new float[width];
            PortableMath.Softmax(z, a);
            float max = z.Max();
            var shifted = z.Select(v => PortableMath.Exp(v - max)).ToArray();
            float sum = PortableMath.Sum(shifted);
            for (int i = 0; i < width; i++)
            {
                Assert.Equal(shifted[i] / sum, a[i]);
            }
            Assert.InRange(a.Sum(), 1 - 1e-5, 1 + 1e-5);
        }
        // Large logits do not overflow.
        var big = new[] { 1000f, 999f, -1000f };
        var p = new float[3];
        PortableMath.Softmax(big, p);
        Assert.InRange(p[0], 0.73f, 0.74f);
        Assert.Equal(0f, p[2]);
    }

    [Fact]
    public void Sum_and_dot_add_in_eight_lanes_then_pairwise()
    {
        var random = new Randomness.Xoshiro256(3);
        for (int length = 0; length <= 50; length++)
        {
            var x = Enumerable.Range(0, length).Select(_ => (random.NextSingle() - 0.5f) * 1e4f).ToArray();
            var y = Enumerable.Range(0, length).Select(_ => random.NextSingle() - 0.5f).ToArray();
            var sumLanes = new float[8];
            var dotLanes = new float[8];
            Array.Fill(sumLanes, -0f);
            for (int i = 0; i < length; i++)
            {
                sumLanes[i % 8] = sumLanes[i % 8] + x[i];
                dotLanes[i % 8] = MathF.FusedMultiplyAdd(x[i], y[i], dotLanes[i % 8]);
            }
            static float Pairwise(float[] l) => ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
            Assert.Equal(BitConverter.SingleToInt32Bits(Pairwise(sumLanes)), BitConverter.SingleToInt32Bits(PortableMath.Sum(x)));
            Assert.Equal(BitConverter.SingleToInt32Bits(Pairwise(dotLanes)), BitConverter.SingleToInt32Bits(PortableMath.Dot(x, y)));
        }
        Assert.True(float.IsNegative(PortableMath.Sum([-0f, -0f])));
        Assert.True(float.IsNaN(PortableMath.Sum([1f, float.NaN])));
    }

    [Fact]
    public void Max_keeps_the_first_of_equals_and_propagates_nan()
    {
        Assert.Equal(3f, PortableMath.Max([1f, 3f, -2f, 3f]));
        Assert.True(float.IsNegative(PortableMath.Max([-0f, 0f])));
        Assert.False(float.IsNegative(PortableMath.Max([0f, -0f])));
        Assert.True(float.IsNaN(PortableMath.Max([1f, float.NaN, 2f])));
        Assert.True(float.IsNaN(PortableMath.Max([float.NaN, 2f])));
        Assert.Throws<ArgumentException>(() => PortableMath.Max([]));
    }

    [Fact]
    public void Relu_of_negative_zero_is_positive_zero_and_nan_stays_nan()
    {
        Assert.False(float.IsNegative(PortableMath.Relu(-0f)));
        Assert.True(float.IsNaN(PortableMath.Relu(float.NaN)));
        var result = new float[3];
        PortableMath.Relu([-0f, float.NaN, 2f], result);
        Assert.False(float.IsNegative(result[0]));
        Assert.True(float.IsNaN(result[1]));
        Assert.Equal(2f, result[2]);
    }

    [Fact]
    public void Power_and_cosine_match_the_runtimes_to_double_precision()
    {
        foreach (double x in new[] { 0.1, 0.5, 0.9, 0.99, 2.0, 1.0 })
        {
            for (int n = 0; n <= 64; n++)
            {
                double expected = Math.Pow(x, n);
                // Square-and-multiply rounds at most 2·log2(n) times, each error squared along: ≤ 1e-14 relative for n ≤ 64, far below a float's 6e-8.
                Assert.True(Math.Abs(PortableMath.Power(x, n) - expected) <= 1e-14 * expected,
                    $"{x}^{n}: {PortableMath.Power(x, n):R} vs {expected:R}");
            }
        }
        for (int i = 0; i <= 10000; i++)
        {
            double t = i / 10000.0;
            Assert.True(Math.Abs(PortableMath.CosPi(t) - Math.Cos(Math.PI * t)) <= 4e-16, $"cos(π·{t})");
        }
        Assert.Equal(1.0, PortableMath.CosPi(0), 15);
        Assert.Equal(-1.0, PortableMath.CosPi(1), 15);
        Assert.Throws<ArgumentOutOfRangeException>(() => PortableMath.CosPi(1.5));
    }
}
