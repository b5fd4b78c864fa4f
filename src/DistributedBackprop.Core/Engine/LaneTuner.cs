namespace DistributedBackprop.Engine;

/// <summary>
/// Picks how many lanes (threads) a step of this run's shape should use, by timing it. More lanes are not
/// always faster: each lane writes a whole gradient for its share of the chunks and the reduce reads them
/// all, so at small batches (784-256-128-10 at batch 32 on this project's 2-core machines: 2 lanes ran at
/// 0.8× one) the extra memory traffic and hand-offs outweigh the halved arithmetic. Nor is one layout of θ across
/// the lanes (<see cref="UpdateLayout"/>): the trainer's candidates are configurations, two lanes with a copy of θ
/// each, two with one θ in slices, one lane.
/// A round of tuning alternates the candidates step by step: warm-up steps untimed until both
/// <see cref="WarmupRounds"/> rounds and <see cref="WarmupSeconds"/> have passed (the JIT promotes hot
/// methods to optimised code only after their first calls), then <c>trials</c> timed steps each. A
/// candidate other than the first (the most lanes) wins only with a median at least <see cref="Margin"/>
/// lower, so noise does not trade real parallelism for a coin flip. The choice is tuned again every
/// <see cref="RetuneEvery"/> steps (without the warm-up), so one unlucky round, or a machine whose load
/// changes, does not fix the run's speed for good. It changes only speed: a step's bits are defined by the
/// chunk tree, not by who computes it.
/// </summary>
public sealed class LaneTuner
{
    public const int WarmupRounds = 3;
    public const double WarmupSeconds = 0.5;
    public const double Margin = 0.05;
    public const long RetuneEvery = 4096;
    private readonly int[] _candidates;
    private readonly List<double>[] _times;
    private readonly int _trials;
    private long _step;            // steps of the current tuning round
    private long _sinceChosen;
    private double _warmupElapsed;
    private bool _warm;

    /// <param name="candidates">the configurations to try, by number (lane counts, or the trainer's lane sets); the first is preferred unless another is clearly faster.</param>
    /// <param name="trials">timed steps per candidate and round.</param>
    public LaneTuner(IReadOnlyList<int> candidates, int trials = 16)
    {
        if (candidates.Count == 0 || candidates.Any(c => c < 0) || candidates.Distinct().Count() != candidates.Count)
        {
            throw new ArgumentException("lane candidates must be distinct and not negative", nameof(candidates));
        }
        ArgumentOutOfRangeException.ThrowIfLessThan(trials, 1);
        _candidates = candidates.ToArray();
        _times = _candidates.Select(_ => new List<double>(trials)).ToArray();
        _trials = trials;
        Chosen = _candidates.Length == 1 ? _candidates[0] : null;
    }

    /// <summary>The lane count in use between tuning rounds; null while a round is measuring.</summary>
    public int? Chosen { get; private set; }

    /// <summary>Rounds of tuning finished so far.</summary>
    public int Rounds { get; private set; }

    /// <summary>The lane count for the next step.</summary>
    public int Next() => Chosen ?? _candidates[(int)(_step % _candidates.Length)];

    /// <summary>Records how long the step just run with <see cref="Next"/>'s lane count took.</summary>
    public void Record(double seconds)
    {
        if (_candidates.Length == 1)
        {
            return;
        }
        if (Chosen is not null)
        {
            if (++_sinceChosen >= RetuneEvery)
            {
                Chosen = null; // measure again; the warm-up is long over
                _step = 0;
            }
            return;
        }
        int index = (int)(_step % _candidates.Length);
        _step++;
        if (!_warm)
        {
            _warmupElapsed += seconds;
            _warm = _step >= (long)WarmupRounds * _candidates.Length && _warmupElapsed >= WarmupSeconds && index == _candidates.Length - 1;
            return;
        }
        _times[index].Add(seconds);
        if (_times.All(t => t.Count >= _trials))
        {
            double[] medians = _times.Select(Median).ToArray();
            int best = 0;
            for (int i = 1; i < medians.Length; i++)
            {
                if (medians[i] < medians[best] * (1 - Margin))
                {
                    best = i;
                }
            }
            Medians = _candidates.Zip(medians).ToDictionary(p => p.First, p => p.Second);
            Chosen = _candidates[best];
            Rounds++;
            _sinceChosen = 0;
            foreach (List<double> times in _times)
            {
                times.Clear();
            }
        }
    }

    /// <summary>Median step seconds per candidate in the last finished round (for reports).</summary>
    public IReadOnlyDictionary<int, double>? Medians { get; private set; }

    private static double Median(List<double> values)
    {
        double[] sorted = values.Order().ToArray();
        int middle = sorted.Length / 2;
        return sorted.Length % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
    }
}
