using System.Collections.Concurrent;

namespace DistributedBackprop.Actors.Transport;

/// <summary>
/// Values made once per key, not for every message: the bulk channel resolves each frame's recipient and
/// sender paths, a parameter shard the workers it sends θ to every step. Peers choose the keys, so the
/// cache is bounded (cleared when full) rather than growing with them.
/// </summary>
public sealed class BoundedCache<TKey, TValue>(Func<TKey, TValue> create, int capacity = 1024)
    where TKey : notnull
{
    private readonly ConcurrentDictionary<TKey, TValue> _values = new();

    public TValue Get(TKey key)
    {
        if (_values.Count >= capacity)
        {
            _values.Clear();
        }
        return _values.GetOrAdd(key, create);
    }
}
