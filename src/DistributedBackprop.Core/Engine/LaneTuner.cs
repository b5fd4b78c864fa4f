namespace DistributedBackprop.Engine;

/// <summary>
/// Picks how many lanes (threads) a step of this run's shape should use, by timing it. More lanes are not
/// always faster: each lane writes a whole gradient for its share of the chunks and the reduce reads them
/// all, so at small batches (784-256-128-10 at batch 32 on this project's 2-core machines: 2 lanes ran at
/// 0.8× one) the extra memory traffic and hand-offs outweigh the halved arithmetic. The first steps go
/// round-robin over the candidates, the first <see cref="WarmupRounds"/> rounds untimed (JIT, caches, lane
/// threads waking), then <c>trials</c> timed rounds; the candidate with the lowest median step time is kept
/// for the rest of the run. The choice changes only speed: a step's bits are defined by the chunk tree, not
/// by who computes it.
/// </summary>
public sealed class LaneTuner
{
    public const int WarmupRounds = 3;
    private readonly int[] _candidates;
    private readonly List<double>[] _times;
    private readonly int _trials;
    private long _steps;

    /// <param name="candidates">lane counts to try, in order of preference on a tie.</param>
    /// <param name="trials">timed steps per candidate.</param>
    public LaneTuner(IReadOnlyList<int> candidates, int trials = 12)
    {
        if (candidates.Count == 0 || candidates.Any(c => c < 1) || candidates.Distinct().Count() != candidates.Count)
        {
            throw new ArgumentException("lane candidates must be distinct and at least 1", nameof(candidates));
        }
        ArgumentOutOfRangeException.ThrowIfLessThan(trials, 1);
        _candidates = candidates.ToArray();
        _times = _candidates.Select(_ => new List<double>(trials)).ToArray();
        _trials = trials;
        Chosen = _candidates.Length == 1 ? _candidates[0] : null;
    }

    /// <summary>The lane count kept once tuning is over; null while it is still measuring.</summary>
    public int? Chosen { get; private set; }

    /// <summary>The lane count for the next step.</summary>
    public int Next() => Chosen ?? _candidates[(int)(_steps % _candidates.Length)];

    /// <summary>Records how long the step just run with <see cref="Next"/>'s lane count took.</summary>
    public void Record(double seconds)
    {
        if (Chosen is not null)
        {
            return;
        }
        int index = (int)(_steps % _candidates.Length);
        if (_steps >= (long)WarmupRounds * _candidates.Length)
        {
            _times[index].Add(seconds);
        }
        _steps++;
        if (_times.All(t => t.Count >= _trials))
        {
            double[] medians = _times.Select(Median).ToArray();
            int best = 0;
            for (int i = 1; i < medians.Length; i++)
            {
                if (medians[i] < medians[best])
                {
                    best = i;
                }
            }
            Medians = _candidates.Zip(medians).ToDictionary(p => p.First, p => p.Second);
            Chosen = _candidates[best];
        }
    }

    /// <summary>Median step seconds per candidate, once chosen (for reports).</summary>
    public IReadOnlyDictionary<int, double>? Medians { get; private set; }

    private static double Median(List<double> values)
    {
        double[] sorted = values.Order().ToArray();
        int middle = sorted.Length / 2;
        return sorted.Length % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
    }
}
