using System.Collections.Concurrent;

namespace DistributedBackprop.Actors.Transport;

/// <summary>
/// Reusable float arrays of exact sizes for tensors arriving over the bulk channel, so a long run does not
/// allocate a large-object-heap array per step. The receiver of a message returns its arrays when done
/// with them (the worker after computing, the server after applying a step); an array not returned is
/// simply collected.
/// </summary>
public sealed class FloatArrayPool
{
    private const int KeptPerSize = 16;
    // Lengths come from peers' frames: keep arrays of a few sizes only (a run uses one or two), so a peer
    // cannot make the pool hold arrays of every length it likes.
    private const int MaxSizes = 8;
    private readonly ConcurrentDictionary<int, ConcurrentBag<float[]>> _free = new();

    public float[] Rent(int length)
    {
        if (length > 0 && _free.TryGetValue(length, out var bag) && bag.TryTake(out float[]? array))
        {
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
            if (_free.Count >= MaxSizes)
            {
                return;
            }
            bag = _free.GetOrAdd(array.Length, _ => []);
        }
        if (bag.Count < KeptPerSize)
        {
            bag.Add(array);
        }
    }
}
