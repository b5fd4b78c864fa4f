using DistributedBackprop.Reduction;

namespace DistributedBackprop.Engine;

/// <summary>
/// The last N samples of a measurement and their median, without allocating (a ring and a sort buffer):
/// one slow sample among them — a GC pause, a noisy neighbour — does not move it.
/// </summary>
public sealed class RecentSamples
{
    private readonly double[] _recent;
    private readonly double[] _sorted;
    private int _count, _next;

    public RecentSamples(int window)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(window, 1);
        _recent = new double[window];
        _sorted = new double[window];
    }

    public int Window => _recent.Length;

    public void Add(double value)
    {
        _recent[_next] = value;
        _next = (_next + 1) % _recent.Length;
        _count = Math.Min(_count + 1, _recent.Length);
    }

    /// <summary>The median of the samples kept (the mean of the middle two for an even count); null before the first.</summary>
    public double? Median
    {
        get
        {
            if (_count == 0)
            {
                return null;
            }
            Array.Copy(_recent, _sorted, _count);
            Array.Sort(_sorted, 0, _count);
            return _count % 2 == 1 ? _sorted[_count / 2] : (_sorted[_count / 2 - 1] + _sorted[_count / 2]) / 2;
        }
    }
}

/// <summary>
/// One worker's measured pace: compute seconds per chunk over its recent steps (the median of the last few).
/// </summary>
public sealed class ChunkPace(int window = 9)
{
    private readonly RecentSamples _recent = new(window);

    /// <summary>A step in which the worker computed <paramref name="chunks"/> chunks in <paramref name="seconds"/> of compute.</summary>
    public void Add(double seconds, int chunks)
    {
        if (chunks > 0 && double.IsFinite(seconds) && seconds >= 0)
        {
            _recent.Add(seconds / chunks);
        }
    }

    /// <summary>Median seconds per chunk of the recent steps; null before the first.</summary>
    public double? SecondsPerChunk => _recent.Median;
}

/// <summary>
/// How many of a step's C chunks each worker computes. Any split into contiguous runs gives the same bits
/// (the step is the chunk tree's sum, whoever computes a node), so the split only decides the step's time:
/// a worker at half speed given as many chunks as the others sets everyone's pace. Dealing in proportion to
/// measured pace keeps it from doing so.
/// </summary>
public static class ChunkDealing
{
    /// <summary>
    /// Below this compute time per chunk the measurements are mostly timer and scheduling noise (and the
    /// step's time is mostly messaging): chunks are then split evenly.
    /// </summary>
    public const double MeaningfulSecondsPerChunk = 0.0005;

    /// <summary>
    /// Fills <paramref name="counts"/> (one per worker, in dealing order) with chunk counts summing to
    /// <paramref name="chunks"/> that minimise the step's finishing time max(countᵢ × paceᵢ): every worker
    /// gets one, then each further chunk goes to the worker that would finish it first (optimal for equal
    /// chunks; on a tie, to the one with less work so far, then the earlier one). A worker with no
    /// measurement yet counts at the median pace of the others. The split is even
    /// (<see cref="ChunkTree.Share"/>) when nothing meaningful is measured, or when the split by pace would
    /// not finish in at most <see cref="EvenUnlessFaster"/> of the even split's time. Needs chunks ≥ workers.
    /// </summary>
    public static void Deal(int chunks, ReadOnlySpan<double?> secondsPerChunk, Span<int> counts)
    {
        int workers = counts.Length;
        if (workers == 0 || secondsPerChunk.Length != workers || chunks < workers)
        {
            throw new ArgumentException($"cannot deal {chunks} chunks to {workers} workers ({secondsPerChunk.Length} paces)");
        }
        Span<double> pace = workers <= 64 ? stackalloc double[workers] : new double[workers];
        int measured = 0;
        for (int i = 0; i < workers; i++)
        {
            if (secondsPerChunk[i] is double p && p >= MeaningfulSecondsPerChunk)
            {
                pace[measured++] = p;
            }
        }
        if (measured == 0)
        {
            Even(chunks, counts);
            return;
        }
        pace[..measured].Sort();
        double typical = pace[measured / 2];
        double evenFinish = 0;
        for (int i = 0; i < workers; i++)
        {
            pace[i] = secondsPerChunk[i] is double p ? Math.Max(p, MeaningfulSecondsPerChunk) : typical;
            var (lo, hi) = ChunkTree.Share(chunks, workers, i);
            evenFinish = Math.Max(evenFinish, (hi - lo) * pace[i]);
            counts[i] = 1;
        }
        for (int dealt = workers; dealt < chunks; dealt++)
        {
            int best = 0;
            for (int i = 1; i < workers; i++)
            {
                double finish = (counts[i] + 1) * pace[i], bestFinish = (counts[best] + 1) * pace[best];
                if (finish < bestFinish || (finish == bestFinish && counts[i] * pace[i] < counts[best] * pace[best]))
                {
                    best = i;
                }
            }
            counts[best]++;
        }
        double paceFinish = 0;
        for (int i = 0; i < workers; i++)
        {
            paceFinish = Math.Max(paceFinish, counts[i] * pace[i]);
        }
        if (paceFinish > EvenUnlessFaster * evenFinish)
        {
            // Not worth it: paces within measurement noise of each other. An uneven split also costs bytes
            // (a run that is not one node of the tree sends one gradient per node it decomposes into).
            Even(chunks, counts);
        }
    }

    private static void Even(int chunks, Span<int> counts)
    {
        for (int i = 0; i < counts.Length; i++)
        {
            var (lo, hi) = ChunkTree.Share(chunks, counts.Length, i);
            counts[i] = hi - lo;
        }
    }

    /// <summary>The split by pace is used only if it finishes in at most this fraction of the even split's time.</summary>
    public const double EvenUnlessFaster = 0.8;
}
