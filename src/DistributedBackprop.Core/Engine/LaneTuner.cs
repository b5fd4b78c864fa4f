namespace DistributedBackprop.Engine;

/// <summary>
/// Picks how many lanes (threads) a step of this run's shape should use, by timing it. More lanes are not
/// always faster: each lane writes a whole gradient for its share of the chunks and the reduce reads them
/// all, so at small batches (784-256-128-10 at batch 32 on this project's 2-core machines: 2 lanes ran at
/// 0.8× one) the extra memory traffic and hand-offs outweigh the halved arithmetic. Nor is one layout of θ across
/// the lanes (<see cref="UpdateLayout"/>): the trainer's candidates are configurations, two lanes with a copy of θ
/// each, two with one θ in slices, one lane.
/// A round of tuning alternates the candidates in turns of <c>stepsPerTurn</c> steps: warm-up steps untimed until
/// both <see cref="WarmupRounds"/> rounds and <see cref="WarmupSeconds"/> have passed (the JIT promotes hot
/// methods to optimised code only after their first calls), then at least <c>trials</c> timed steps each. With turns longer
/// than one step the first step of each turn is not timed either: it pays for the candidate before it (the copies
/// of θ one core wrote under another layout are read by the other core's first computation). A
/// candidate other than the first (the most lanes) that computes on fewer cores wins only with a median at least
/// <see cref="Margin"/> lower, so noise does not trade real parallelism for a coin flip; one that computes on as many
/// (another layout of θ on the same cores) wins with any lower median, as there is no parallelism to protect. The
/// choice is tuned again every <see cref="RetuneEvery"/> steps by default (without the warm-up), so one unlucky round,
/// or a machine whose load changes, does not fix the run's speed for good. It changes only speed: a step's bits are
/// defined by the chunk tree, not by who computes it.
/// </summary>
public sealed class LaneTuner
{
    public const int WarmupRounds = 3;
    public const double WarmupSeconds = 0.5;
    public const double Margin = 0.05;
    public const long RetuneEvery = 4096;
    /// <summary>
    /// Local mode's layouts: the host moves the two vCPUs between sharing a cache and not within seconds (a cache line
    /// timed before and after runs of 1.5–2 s differed in 7 of 28, 2026-12-04), and which layout wins moves with
    /// them. 1,024 steps is ~1.5 s at batch 256 on two cores; a round of ~48 steps (6 turns of 4 per layout), half on
    /// the slower layout (0–3 % slower where both were timed), costs ~0.1 %.
    /// </summary>
    public const long RetuneLayoutEvery = 1024;
    /// <summary>
    /// Steps in a row the trainer's and local mode's candidates run, the first untimed: each lays θ out across the cores
    /// in its own way (<see cref="UpdateLayout"/>; one lane writes all of it from one core), and a candidate's first
    /// computation reads θ as the one before left it. Step by step, local mode's tuner read the copies of θ slower
    /// than the slices in 5 of 6 rounds (by 20–307 µs a step), the reverse of how the two run when each runs alone,
    /// and kept the slices in two of three far-placement runs; in turns of 4 it read the copies faster in 5 of 5 rounds
    /// (by 12–209 µs), and kept them in each of the eight far-placement runs after (README, "Local mode picks its update
    /// layout by timing it").
    /// </summary>
    public const int StepsPerTurn = 4;
    private readonly int[] _candidates;
    /// <summary>Cores each candidate computes on (by index), or null: then every candidate but the first needs the margin.</summary>
    private readonly int[]? _parallelism;
    private readonly List<double>[] _times;
    private readonly int _trials;
    private readonly int _stepsPerTurn;
    private readonly long _retuneEvery;
    private long _step;            // steps of the current tuning round
    private long _sinceChosen;
    private double _warmupElapsed;
    private bool _warm;

    /// <param name="candidates">the configurations to try, by number (lane counts, or the trainer's lane sets); the first is preferred unless another is faster (clearly faster, if it computes on fewer cores: <paramref name="parallelism"/>).</param>
    /// <param name="trials">timed steps per candidate and round.</param>
    /// <param name="stepsPerTurn">consecutive steps each candidate runs before the next one's turn (the first untimed when more than one).</param>
    /// <param name="parallelism">the cores each candidate computes on, in the candidates' order; null: every candidate but the first needs the margin.</param>
    /// <param name="retuneEvery">steps between the end of one round of tuning and the start of the next.</param>
    public LaneTuner(IReadOnlyList<int> candidates, int trials = 16, int stepsPerTurn = 1, IReadOnlyList<int>? parallelism = null, long retuneEvery = RetuneEvery)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(retuneEvery, 1);
        _retuneEvery = retuneEvery;
        if (parallelism is not null && parallelism.Count != candidates.Count)
        {
            throw new ArgumentException("one parallelism per candidate", nameof(parallelism));
        }
        _parallelism = parallelism?.ToArray();
        ArgumentOutOfRangeException.ThrowIfLessThan(stepsPerTurn, 1);
        _stepsPerTurn = stepsPerTurn;
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
    public int Next() => Chosen ?? _candidates[Turn(_step)];

    /// <summary>The candidate (by index) whose turn step <paramref name="step"/> of a round is.</summary>
    private int Turn(long step) => (int)(step / _stepsPerTurn % _candidates.Length);

    /// <summary>Records how long the step just run with <see cref="Next"/>'s lane count took.</summary>
    public void Record(double seconds)
    {
        if (_candidates.Length == 1)
        {
            return;
        }
        if (Chosen is not null)
        {
            if (++_sinceChosen >= _retuneEvery)
            {
                Chosen = null; // measure again; the warm-up is long over
                _step = 0;
            }
            return;
        }
        int index = Turn(_step);
        bool settling = _stepsPerTurn > 1 && _step % _stepsPerTurn == 0;
        _step++;
        if (!_warm)
        {
            _warmupElapsed += seconds;
            // Warm once a whole cycle of turns ends after enough of them; the round's timing starts with the first candidate.
            _warm = _step >= (long)WarmupRounds * _candidates.Length * _stepsPerTurn && _warmupElapsed >= WarmupSeconds && _step % (_candidates.Length * _stepsPerTurn) == 0;
            if (_warm)
            {
                _step = 0;
            }
            return;
        }
        if (settling)
        {
            return;
        }
        _times[index].Add(seconds);
        if (_times.All(t => t.Count >= _trials))
        {
            double[] medians = _times.Select(Median).ToArray();
            int best = 0;
            for (int i = 1; i < medians.Length; i++)
            {
                if (medians[i] < medians[best] * (1 - MarginAgainst(i, best)))
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

    /// <summary>How much lower candidate <paramref name="challenger"/>'s median must be to replace <paramref name="best"/>'s.</summary>
    private double MarginAgainst(int challenger, int best) =>
        _parallelism is null || _parallelism[challenger] < _parallelism[best] ? Margin : 0;

    /// <summary>Median step seconds per candidate in the last finished round (for reports).</summary>
    public IReadOnlyDictionary<int, double>? Medians { get; private set; }

    private static double Median(List<double> values)
    {
        double[] sorted = values.Order().ToArray();
        int middle = sorted.Length / 2;
        return sorted.Length % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
    }
}
