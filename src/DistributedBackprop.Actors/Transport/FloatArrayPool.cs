using System.Collections.Concurrent;

namespace DistributedBackprop.Actors.Transport;

/// <summary>
/// Reusable float arrays of exact sizes for tensors arriving over the bulk channel, so a long run does not
/// allocate a large-object-heap array per step. The receiver of a message returns its arrays when done
/// with them (the worker after computing, the server after applying a step); an array not returned is
/// simply collected.
/// </summary>
/// <param name="maxKeptFloats">the most floats kept in all.</param>
public sealed class FloatArrayPool(long maxKeptFloats = FloatArrayPool.MaxKeptFloats)
{
    /// <summary>
    /// The most floats kept by default (256 MiB). Lengths come from peers' frames, and a step brings one array per
    /// piece of gradient (several lengths per shard with the overlap's blocks): the bound is on the total, and on
    /// the number of lengths (<see cref="MaxLengths"/>), so a peer cannot make the pool hold more whatever it sends.
    /// </summary>
    public const long MaxKeptFloats = 64L << 20;

    /// <summary>The most different lengths kept (a run's messages bring a few dozen at most).</summary>
    public const int MaxLengths = 64;

    private readonly ConcurrentDictionary<int, ConcurrentBag<float[]>> _free = new();
    private long _kept;

    /// <summary>Floats held in the pool now.</summary>
    public long KeptFloats => Interlocked.Read(ref _kept);

    public float[] Rent(int length)
    {
        if (length > 0 && _free.TryGetValue(length, out var bag) && bag.TryTake(out float[]? array))
        {
            Interlocked.Add(ref _kept, -array.Length);
            return array;
        }
        return length == 0 ? [] : GC.AllocateUninitializedArray<float>(length);
    }

    public void Return(float[] array)
    {
        if (array.Length == 0)
        {
            return;
        }
        if (!_free.TryGetValue(array.Length, out var bag))
        {
            if (_free.Count >= MaxLengths)
            {
                return;
            }
            bag = _free.GetOrAdd(array.Length, _ => []);
        }
        if (Interlocked.Add(ref _kept, array.Length) > maxKeptFloats)
        {
            Interlocked.Add(ref _kept, -array.Length);
            return;
        }
        bag.Add(array);
    }
}
