using System.Runtime.CompilerServices;

namespace DistributedBackprop.Kernels;

/// <summary>
/// A pinned, 64-byte aligned float buffer that only grows. One set per thread (see
/// <see cref="Gemm"/>), so packing allocates only the first time a thread meets a larger shape.
/// </summary>
internal sealed unsafe class PackBuffer
{
    private const int Alignment = 64;
    private float[] _array = [];
    private float* _aligned;

    public float* Ensure(int floats)
    {
        if (floats + Alignment / sizeof(float) > _array.Length)
        {
            _array = GC.AllocateUninitializedArray<float>(floats + Alignment / sizeof(float), pinned: true);
            nint start = (nint)Unsafe.AsPointer(ref _array[0]);
            _aligned = (float*)((start + Alignment - 1) & ~(nint)(Alignment - 1));
        }
        return _aligned;
    }
}
