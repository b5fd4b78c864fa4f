using System.Runtime.Intrinsics;

namespace DistributedBackprop.Kernels;

/// <summary>
/// Which register-tiled micro-kernel the GEMM uses. Every tier computes each output element as the
/// same chain of fused multiply-adds in the same k order, so all tiers produce identical bits; they
/// differ only in speed. That is what lets a model trained on an AVX-512 machine match one trained on
/// an AVX2 machine.
/// </summary>
public enum SimdTier
{
    /// <summary>Portable: one <see cref="MathF.FusedMultiplyAdd"/> per element.</summary>
    Scalar,
    /// <summary>128-bit SIMD with hardware fused multiply-add: ARM64's NEON (AdvSimd).</summary>
    Vector128,
    /// <summary>AVX2 + FMA (or any 256-bit SIMD with fused multiply-add).</summary>
    Vector256,
    /// <summary>AVX-512F.</summary>
    Vector512,
}

public static class SimdTiers
{
    /// <summary>The fastest tier this CPU accelerates.</summary>
    public static SimdTier Best { get; } =
        Vector512.IsHardwareAccelerated ? SimdTier.Vector512
        : Vector256.IsHardwareAccelerated && System.Runtime.Intrinsics.X86.Fma.IsSupported ? SimdTier.Vector256
        : System.Runtime.Intrinsics.Arm.AdvSimd.IsSupported ? SimdTier.Vector128
        : SimdTier.Scalar;
}
