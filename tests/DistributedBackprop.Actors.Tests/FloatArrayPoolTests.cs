using DistributedBackprop.Actors.Transport;

namespace DistributedBackprop.Actors.Tests;

/// <summary>The receive pool keeps arrays of any length a run uses, bounded in floats and in lengths.</summary>
public class FloatArrayPoolTests
{
    [Fact]
    public void ReturnedArrays_AreRentedAgain_UpToTheFloatsBound()
    {
        var pool = new FloatArrayPool(maxKeptFloats: 110);
        float[] a = pool.Rent(40), b = pool.Rent(40), c = pool.Rent(30), d = pool.Rent(40);
        pool.Return(a);
        pool.Return(b);
        pool.Return(c);
        pool.Return(d); // 40 + 40 + 30 + 40 > 110: not kept
        Assert.Equal(110, pool.KeptFloats);
        Assert.Same(c, pool.Rent(30));
        Assert.Equal(80, pool.KeptFloats);
        float[] first = pool.Rent(40), second = pool.Rent(40);
        Assert.True(ReferenceEquals(first, a) || ReferenceEquals(first, b));
        Assert.True(ReferenceEquals(second, a) || ReferenceEquals(second, b));
        Assert.NotSame(first, second);
        Assert.NotSame(d, pool.Rent(40));
        Assert.Equal(0, pool.KeptFloats);
    }

    [Fact]
    public void ArraysOfMoreLengthsThanItKeeps_AreLeftToTheCollector()
    {
        var pool = new FloatArrayPool();
        for (int length = 1; length <= FloatArrayPool.MaxLengths + 10; length++)
        {
            pool.Return(new float[length]);
        }
        Assert.Equal(FloatArrayPool.MaxLengths * (FloatArrayPool.MaxLengths + 1) / 2, pool.KeptFloats);
        float[] kept = pool.Rent(FloatArrayPool.MaxLengths);
        Assert.Equal(FloatArrayPool.MaxLengths, kept.Length);
        Assert.Equal(FloatArrayPool.MaxLengths * (FloatArrayPool.MaxLengths - 1) / 2, pool.KeptFloats);
    }
}
