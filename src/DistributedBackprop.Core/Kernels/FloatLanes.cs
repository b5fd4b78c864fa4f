using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace DistributedBackprop.Kernels;

/// <summary>
/// The operations <see cref="PortableMath"/>'s functions are written in, on <see cref="Count"/> float lanes at
/// once. Every one is correctly rounded per lane by IEEE 754 (or exact: compares, selects, scaling by a power
/// of two before the final rounding), so a function written once over this interface gives the same bits for
/// every lane type, on every CPU. A mask is a lane value with all bits set (true) or clear (false).
/// </summary>
public interface IFloatLanes<TSelf>
    where TSelf : struct, IFloatLanes<TSelf>
{
    static abstract int Count { get; }
    static abstract bool IsAccelerated { get; }
    static abstract TSelf Broadcast(float value);
    static abstract TSelf Load(ReadOnlySpan<float> source);
    void Store(Span<float> destination);

    static abstract TSelf operator +(TSelf a, TSelf b);
    static abstract TSelf operator -(TSelf a, TSelf b);
    static abstract TSelf operator *(TSelf a, TSelf b);
    static abstract TSelf operator /(TSelf a, TSelf b);
    static abstract TSelf operator -(TSelf a);
    static abstract TSelf Abs(TSelf a);

    /// <summary>a·b + c rounded once.</summary>
    static abstract TSelf FusedMultiplyAdd(TSelf a, TSelf b, TSelf c);

    static abstract TSelf LessThan(TSelf a, TSelf b);
    static abstract TSelf LessThanOrEqual(TSelf a, TSelf b);
    static abstract TSelf GreaterThan(TSelf a, TSelf b);
    static abstract TSelf IsNaN(TSelf a);

    /// <summary>Per lane: mask set ? a : b.</summary>
    static abstract TSelf Select(TSelf mask, TSelf a, TSelf b);

    /// <summary>x·2^n for integral n ∈ [−252, 254], rounded once: x·2^⌊n/2⌋ (exact while normal) · 2^(n−⌊n/2⌋).</summary>
    static abstract TSelf ScaleByPowerOfTwo(TSelf x, TSelf n);
}

/// <summary>One float: the definitions read as plain arithmetic, and the path without SIMD.</summary>
public readonly struct ScalarLane(float value) : IFloatLanes<ScalarLane>
{
    public const int Count = 1;
    private static readonly float True = BitConverter.Int32BitsToSingle(-1);

    public float Value { get; } = value;
    static int IFloatLanes<ScalarLane>.Count => Count;
    public static bool IsAccelerated => true;
    public static ScalarLane Broadcast(float value) => new(value);
    public static ScalarLane Load(ReadOnlySpan<float> source) => new(source[0]);
    public void Store(Span<float> destination) => destination[0] = Value;
    public static ScalarLane operator +(ScalarLane a, ScalarLane b) => new(a.Value + b.Value);
    public static ScalarLane operator -(ScalarLane a, ScalarLane b) => new(a.Value - b.Value);
    public static ScalarLane operator *(ScalarLane a, ScalarLane b) => new(a.Value * b.Value);
    public static ScalarLane operator /(ScalarLane a, ScalarLane b) => new(a.Value / b.Value);
    public static ScalarLane operator -(ScalarLane a) => new(-a.Value);
    public static ScalarLane Abs(ScalarLane a) => new(MathF.Abs(a.Value));
    public static ScalarLane FusedMultiplyAdd(ScalarLane a, ScalarLane b, ScalarLane c) => new(MathF.FusedMultiplyAdd(a.Value, b.Value, c.Value));
    public static ScalarLane LessThan(ScalarLane a, ScalarLane b) => Mask(a.Value < b.Value);
    public static ScalarLane LessThanOrEqual(ScalarLane a, ScalarLane b) => Mask(a.Value <= b.Value);
    public static ScalarLane GreaterThan(ScalarLane a, ScalarLane b) => Mask(a.Value > b.Value);
    public static ScalarLane IsNaN(ScalarLane a) => Mask(float.IsNaN(a.Value));
    public static ScalarLane Select(ScalarLane mask, ScalarLane a, ScalarLane b) => BitConverter.SingleToInt32Bits(mask.Value) != 0 ? a : b;

    public static ScalarLane ScaleByPowerOfTwo(ScalarLane x, ScalarLane n)
    {
        int k = (int)n.Value;
        int half = k >> 1;
        return new(x.Value * PowerOfTwo(half) * PowerOfTwo(k - half));
    }

    private static ScalarLane Mask(bool set) => new(set ? True : 0f);

    private static float PowerOfTwo(int k) => BitConverter.Int32BitsToSingle((k + 127) << 23);
}

/// <summary>4 lanes (SSE, ARM64 NEON).</summary>
public readonly struct Lanes128(Vector128<float> value) : IFloatLanes<Lanes128>
{
    public const int Count = 4;
    private readonly Vector128<float> _v = value;
    static int IFloatLanes<Lanes128>.Count => Count;
    public static bool IsAccelerated => Vector128.IsHardwareAccelerated;
    public static Lanes128 Broadcast(float value) => new(Vector128.Create(value));
    public static Lanes128 Load(ReadOnlySpan<float> source) => new(Vector128.Create(source));
    public void Store(Span<float> destination) => _v.CopyTo(destination);
    public static Lanes128 operator +(Lanes128 a, Lanes128 b) => new(a._v + b._v);
    public static Lanes128 operator -(Lanes128 a, Lanes128 b) => new(a._v - b._v);
    public static Lanes128 operator *(Lanes128 a, Lanes128 b) => new(a._v * b._v);
    public static Lanes128 operator /(Lanes128 a, Lanes128 b) => new(a._v / b._v);
    public static Lanes128 operator -(Lanes128 a) => new(-a._v);
    public static Lanes128 Abs(Lanes128 a) => new(Vector128.Abs(a._v));
    public static Lanes128 FusedMultiplyAdd(Lanes128 a, Lanes128 b, Lanes128 c) => new(Vector128.FusedMultiplyAdd(a._v, b._v, c._v));
    public static Lanes128 LessThan(Lanes128 a, Lanes128 b) => new(Vector128.LessThan(a._v, b._v));
    public static Lanes128 LessThanOrEqual(Lanes128 a, Lanes128 b) => new(Vector128.LessThanOrEqual(a._v, b._v));
    public static Lanes128 GreaterThan(Lanes128 a, Lanes128 b) => new(Vector128.GreaterThan(a._v, b._v));
    public static Lanes128 IsNaN(Lanes128 a) => new(~Vector128.Equals(a._v, a._v));
    public static Lanes128 Select(Lanes128 mask, Lanes128 a, Lanes128 b) => new(Vector128.ConditionalSelect(mask._v, a._v, b._v));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes128 ScaleByPowerOfTwo(Lanes128 x, Lanes128 n)
    {
        Vector128<int> k = Vector128.ConvertToInt32(n._v);
        Vector128<int> half = Vector128.ShiftRightArithmetic(k, 1);
        return new(x._v * PowerOfTwo(half) * PowerOfTwo(k - half));
    }

    private static Vector128<float> PowerOfTwo(Vector128<int> k) => Vector128.ShiftLeft(k + Vector128.Create(127), 23).AsSingle();
}

/// <summary>8 lanes (AVX2 with FMA).</summary>
public readonly struct Lanes256(Vector256<float> value) : IFloatLanes<Lanes256>
{
    public const int Count = 8;
    private readonly Vector256<float> _v = value;
    static int IFloatLanes<Lanes256>.Count => Count;
    public static bool IsAccelerated => Vector256.IsHardwareAccelerated && System.Runtime.Intrinsics.X86.Fma.IsSupported;
    public static Lanes256 Broadcast(float value) => new(Vector256.Create(value));
    public static Lanes256 Load(ReadOnlySpan<float> source) => new(Vector256.Create(source));
    public void Store(Span<float> destination) => _v.CopyTo(destination);
    public static Lanes256 operator +(Lanes256 a, Lanes256 b) => new(a._v + b._v);
    public static Lanes256 operator -(Lanes256 a, Lanes256 b) => new(a._v - b._v);
    public static Lanes256 operator *(Lanes256 a, Lanes256 b) => new(a._v * b._v);
    public static Lanes256 operator /(Lanes256 a, Lanes256 b) => new(a._v / b._v);
    public static Lanes256 operator -(Lanes256 a) => new(-a._v);
    public static Lanes256 Abs(Lanes256 a) => new(Vector256.Abs(a._v));
    public static Lanes256 FusedMultiplyAdd(Lanes256 a, Lanes256 b, Lanes256 c) => new(Vector256.FusedMultiplyAdd(a._v, b._v, c._v));
    public static Lanes256 LessThan(Lanes256 a, Lanes256 b) => new(Vector256.LessThan(a._v, b._v));
    public static Lanes256 LessThanOrEqual(Lanes256 a, Lanes256 b) => new(Vector256.LessThanOrEqual(a._v, b._v));
    public static Lanes256 GreaterThan(Lanes256 a, Lanes256 b) => new(Vector256.GreaterThan(a._v, b._v));
    public static Lanes256 IsNaN(Lanes256 a) => new(~Vector256.Equals(a._v, a._v));
    public static Lanes256 Select(Lanes256 mask, Lanes256 a, Lanes256 b) => new(Vector256.ConditionalSelect(mask._v, a._v, b._v));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes256 ScaleByPowerOfTwo(Lanes256 x, Lanes256 n)
    {
        Vector256<int> k = Vector256.ConvertToInt32(n._v);
        Vector256<int> half = Vector256.ShiftRightArithmetic(k, 1);
        return new(x._v * PowerOfTwo(half) * PowerOfTwo(k - half));
    }

    private static Vector256<float> PowerOfTwo(Vector256<int> k) => Vector256.ShiftLeft(k + Vector256.Create(127), 23).AsSingle();
}

/// <summary>16 lanes (AVX-512F).</summary>
public readonly struct Lanes512(Vector512<float> value) : IFloatLanes<Lanes512>
{
    public const int Count = 16;
    private readonly Vector512<float> _v = value;
    static int IFloatLanes<Lanes512>.Count => Count;
    public static bool IsAccelerated => Vector512.IsHardwareAccelerated;
    public static Lanes512 Broadcast(float value) => new(Vector512.Create(value));
    public static Lanes512 Load(ReadOnlySpan<float> source) => new(Vector512.Create(source));
    public void Store(Span<float> destination) => _v.CopyTo(destination);
    public static Lanes512 operator +(Lanes512 a, Lanes512 b) => new(a._v + b._v);
    public static Lanes512 operator -(Lanes512 a, Lanes512 b) => new(a._v - b._v);
    public static Lanes512 operator *(Lanes512 a, Lanes512 b) => new(a._v * b._v);
    public static Lanes512 operator /(Lanes512 a, Lanes512 b) => new(a._v / b._v);
    public static Lanes512 operator -(Lanes512 a) => new(-a._v);
    public static Lanes512 Abs(Lanes512 a) => new(Vector512.Abs(a._v));
    public static Lanes512 FusedMultiplyAdd(Lanes512 a, Lanes512 b, Lanes512 c) => new(Vector512.FusedMultiplyAdd(a._v, b._v, c._v));
    public static Lanes512 LessThan(Lanes512 a, Lanes512 b) => new(Vector512.LessThan(a._v, b._v));
    public static Lanes512 LessThanOrEqual(Lanes512 a, Lanes512 b) => new(Vector512.LessThanOrEqual(a._v, b._v));
    public static Lanes512 GreaterThan(Lanes512 a, Lanes512 b) => new(Vector512.GreaterThan(a._v, b._v));
    public static Lanes512 IsNaN(Lanes512 a) => new(~Vector512.Equals(a._v, a._v));
    public static Lanes512 Select(Lanes512 mask, Lanes512 a, Lanes512 b) => new(Vector512.ConditionalSelect(mask._v, a._v, b._v));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes512 ScaleByPowerOfTwo(Lanes512 x, Lanes512 n)
    {
        Vector512<int> k = Vector512.ConvertToInt32(n._v);
        Vector512<int> half = Vector512.ShiftRightArithmetic(k, 1);
        return new(x._v * PowerOfTwo(half) * PowerOfTwo(k - half));
    }

    private static Vector512<float> PowerOfTwo(Vector512<int> k) => Vector512.ShiftLeft(k + Vector512.Create(127), 23).AsSingle();
}
