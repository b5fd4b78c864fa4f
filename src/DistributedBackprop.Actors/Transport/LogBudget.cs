using System.Diagnostics;

namespace DistributedBackprop.Actors.Transport;

/// <summary>
/// How many lines of one kind a node may log per time window: the first <c>perWindow</c> of each window, the rest
/// counted and named by the next line logged. A window, not a total: after a burst, a later unrelated failure is
/// logged in full again.
/// </summary>
public sealed class LogBudget(int perWindow, TimeSpan window)
{
    private readonly object _gate = new();
    private readonly long _windowTicks = (long)(window.TotalSeconds * Stopwatch.Frequency);
    private long _windowStart = long.MinValue;
    private int _logged;
    private long _unlogged;

    /// <summary>Null if this line is over the budget (it is counted); else how many lines were not logged before it.</summary>
    public long? Take(long now)
    {
        lock (_gate)
        {
            if (_windowStart == long.MinValue || now - _windowStart >= _windowTicks)
            {
                _windowStart = now;
                _logged = 0;
            }
            if (_logged >= perWindow)
            {
                _unlogged++;
                return null;
            }
            _logged++;
            long unlogged = _unlogged;
            _unlogged = 0;
            return unlogged;
        }
    }

    /// <inheritdoc cref="Take(long)"/>
    public long? Take() => Take(Stopwatch.GetTimestamp());
}
