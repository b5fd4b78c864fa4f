using System.Diagnostics;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Engine;

/// <summary>What the scheduler knows of one worker: what it holds this step, how fast it is, whether it answers.</summary>
public class ScheduledWorker(string name)
{
    public string Name { get; } = name;

    /// <summary>The runs of chunks dealt to it in the step in progress (probes included).</summary>
    public List<(int Lo, int Hi)> Assigned { get; } = [];

    /// <summary>Something it computed was accepted in the step in progress.</summary>
    public bool DeliveredThisStep { get; internal set; }

    /// <summary>Missed a step deadline (or could not be reached) and has not answered since: dealt no new work, only probes.</summary>
    public bool Suspect { get; internal set; }

    /// <summary>Compute seconds of the step in progress (accepted answers only).</summary>
    public double ComputeThisStep { get; internal set; }

    /// <summary>Chunks whose gradients it delivered in the step in progress (accepted ones only).</summary>
    public int ChunksThisStep { get; internal set; }

    /// <summary>Its recent compute seconds per chunk: how many chunks it is dealt.</summary>
    public ChunkPace Pace { get; } = new();

    /// <summary>When it was last dealt a probe while suspect (a <see cref="Stopwatch"/> timestamp).</summary>
    internal long LastProbe { get; set; }
}

/// <summary>One run of chunks of the step in progress for one worker to compute.</summary>
public readonly record struct ChunkAssignment<TWorker>(TWorker Worker, int Lo, int Hi);

/// <summary>What became of a departed worker's share of the step in progress.</summary>
public enum Departure
{
    /// <summary>No step in progress, or everything it held has arrived.</summary>
    NothingMissing,

    /// <summary>Its missing chunks were dealt to the others.</summary>
    Reassigned,

    /// <summary>Nobody is left: the missing chunks wait for the next worker to register (<see cref="StepScheduler{TWorker}.AdoptOrphans"/>).</summary>
    Orphaned,
}

/// <summary>Who was left behind and who takes over when work is dealt around a laggard.</summary>
public sealed record DealtAround<TWorker>(IReadOnlyList<TWorker> Laggards, IReadOnlyList<TWorker> Helpers);

/// <summary>
/// Who computes which chunks of a step: dealing, reassignment when a worker leaves, dealing around a laggard
/// after the step deadline or an undeliverable frame, suspicion and probes. A plain class — the parameter
/// server actor only turns its <see cref="ChunkAssignment{TWorker}"/>s into messages. Coverage (which
/// chunks have arrived) is the step's <see cref="TreeReducer"/>'s; any assignment gives the same bits, so
/// these decisions only decide how soon a step completes.
/// </summary>
public sealed class StepScheduler<TWorker>(int chunks, TreeReducer coverage, bool dealByPace)
    where TWorker : ScheduledWorker
{
    private readonly List<TWorker> _workers = [];
    private readonly List<TWorker> _dealt = [];
    private readonly List<(int Lo, int Hi)> _orphaned = [];
    private double?[] _paces = [];
    private int[] _counts = [];

    public IReadOnlyList<TWorker> Workers => _workers;

    /// <summary>When work was last dealt for the step in progress (the deadline counts from here).</summary>
    public long DealtAt { get; private set; } = Stopwatch.GetTimestamp();

    /// <summary>Chunks of the step in progress that nobody holds (every worker left mid-step).</summary>
    public bool HasOrphans => _orphaned.Count > 0;

    public void Add(TWorker worker) => _workers.Add(worker);

    /// <summary>
    /// Deals a new step (after the caller reset the coverage): contiguous runs to the workers that are not
    /// suspect — all of them if every one is — in proportion to their pace (<see cref="ChunkDealing"/>); each
    /// suspect, once per <paramref name="probeInterval"/>, gets a copy of the smallest run as a probe.
    /// </summary>
    public void StartStep(long now, TimeSpan probeInterval, List<ChunkAssignment<TWorker>> into)
    {
        DealtAt = now;
        _orphaned.Clear();
        // Suspects get no new work until something from them arrives (a list kept across steps: nothing is
        // allocated per step).
        _dealt.Clear();
        foreach (TWorker worker in _workers)
        {
            worker.Assigned.Clear();
            worker.DeliveredThisStep = false;
            worker.ChunksThisStep = 0;
            worker.ComputeThisStep = 0;
            if (!worker.Suspect)
            {
                _dealt.Add(worker);
            }
        }
        if (_workers.Count == 0)
        {
            return;
        }
        List<TWorker> dealt = _dealt.Count > 0 ? _dealt : _workers;
        int active = Math.Min(dealt.Count, chunks);
        if (_paces.Length < active)
        {
            _paces = new double?[Math.Max(active, _workers.Capacity)];
            _counts = new int[_paces.Length];
        }
        for (int i = 0; i < active; i++)
        {
            _paces[i] = dealByPace ? dealt[i].Pace.SecondsPerChunk : null;
        }
        ChunkDealing.Deal(chunks, _paces.AsSpan(0, active), _counts.AsSpan(0, active));
        (int Lo, int Hi) smallest = (0, chunks);
        for (int i = 0, lo = 0; i < active; lo += _counts[i], i++)
        {
            Assign(dealt[i], lo, lo + _counts[i], into);
            if (_counts[i] < smallest.Hi - smallest.Lo)
            {
                smallest = (lo, lo + _counts[i]);
            }
        }
        if (!ReferenceEquals(dealt, _workers))
        {
            ProbeSuspects(smallest, now, probeInterval, into);
        }
    }

    /// <summary>
    /// A suspect worker whose answer was lost for good (a connection that broke with its frames in the socket
    /// buffers; they are never retransmitted) would otherwise never be dealt work again, and so never answer
    /// again: once per interval it gets a copy of the smallest run dealt this step. Whichever answer arrives
    /// first is used (the same bits either way), the other is dropped as a duplicate.
    /// </summary>
    private void ProbeSuspects((int Lo, int Hi) run, long now, TimeSpan interval, List<ChunkAssignment<TWorker>> into)
    {
        foreach (TWorker worker in _workers)
        {
            if (worker.Suspect && Stopwatch.GetElapsedTime(worker.LastProbe, now) >= interval)
            {
                worker.LastProbe = now;
                Assign(worker, run.Lo, run.Hi, into);
            }
        }
    }

    /// <summary>Something arrived from <paramref name="worker"/>: any answer lifts suspicion. Returns whether it was suspect.</summary>
    public bool HeardFrom(TWorker worker)
    {
        bool was = worker.Suspect;
        worker.Suspect = false;
        return was;
    }

    /// <summary>An accepted answer of <paramref name="chunksCovered"/> chunks. Returns true for the worker's first this step.</summary>
    public bool Delivered(TWorker worker, int chunksCovered, double computeSeconds)
    {
        worker.ComputeThisStep += computeSeconds;
        worker.ChunksThisStep += chunksCovered;
        bool first = !worker.DeliveredThisStep;
        worker.DeliveredThisStep = true;
        return first;
    }

    /// <summary>The step is applied: each worker that delivered updates its pace (seconds per chunk).</summary>
    public void EndStep()
    {
        foreach (TWorker worker in _workers)
        {
            if (worker.DeliveredThisStep)
            {
                worker.Pace.Add(worker.ComputeThisStep, worker.ChunksThisStep);
            }
            worker.ComputeThisStep = 0;
        }
    }

    /// <summary>
    /// A worker left (died, or was removed). With a step in progress (<paramref name="inStep"/>) the chunks it
    /// held that have not arrived go to the others, contiguous runs dealt evenly; with nobody left they wait.
    /// </summary>
    public Departure Remove(TWorker worker, bool inStep, List<ChunkAssignment<TWorker>> into)
    {
        _workers.Remove(worker);
        if (!inStep)
        {
            return Departure.NothingMissing;
        }
        var missing = new bool[chunks];
        MarkUncovered(worker.Assigned, missing);
        List<(int Lo, int Hi)> uncovered = Runs(missing);
        if (uncovered.Count == 0)
        {
            return Departure.NothingMissing;
        }
        if (_workers.Count == 0)
        {
            _orphaned.AddRange(uncovered);
            return Departure.Orphaned;
        }
        DealAmong(_workers, uncovered, into);
        return Departure.Reassigned;
    }

    /// <summary>A worker registered while chunks of the step waited for anyone: it takes them all.</summary>
    public void AdoptOrphans(TWorker newcomer, List<ChunkAssignment<TWorker>> into)
    {
        foreach (var (lo, hi) in _orphaned)
        {
            Assign(newcomer, lo, hi, into);
        }
        _orphaned.Clear();
    }

    /// <summary>
    /// The chunks of the step in progress that <paramref name="only"/> (or, if null, any worker) was dealt —
    /// only <paramref name="run"/> if given — and has not delivered go to the workers that are not lagging and
    /// delivered this step (failing those, any other; with no other worker, to the laggard again: a lost frame
    /// must not stall a one-worker run); the laggards become suspect. Null when nothing is missing.
    /// </summary>
    public DealtAround<TWorker>? DealAround(TWorker? only, (int Lo, int Hi)? run, long now, List<ChunkAssignment<TWorker>> into)
    {
        var laggards = new List<TWorker>();
        // A chunk is dealt around once however many laggards hold it: a worker's runs include what earlier rounds of
        // this dealt to it, so collecting them run by run (as this did) dealt every missing chunk again once per
        // copy, doubling the frames at each deadline of a step nobody answers (a million after twenty).
        var missing = new bool[chunks];
        foreach (TWorker worker in _workers)
        {
            if (only is not null && worker != only)
            {
                continue;
            }
            if (MarkUncovered(run is { } given ? [given] : worker.Assigned, missing))
            {
                laggards.Add(worker);
            }
        }
        List<TWorker> helpers = _workers.Where(w => w.DeliveredThisStep && !laggards.Contains(w)).ToList();
        if (helpers.Count == 0)
        {
            helpers = _workers.Where(w => !laggards.Contains(w)).ToList();
        }
        if (helpers.Count == 0)
        {
            helpers = laggards;
        }
        if (laggards.Count == 0 || helpers.Count == 0)
        {
            return null;
        }
        foreach (TWorker laggard in laggards)
        {
            laggard.Suspect = true;
        }
        DealtAt = now;
        DealAmong(helpers, Runs(missing), into);
        return new DealtAround<TWorker>(laggards, helpers);
    }

    /// <summary>Each run split into contiguous parts among <paramref name="workers"/>.</summary>
    private static void DealAmong(List<TWorker> workers, List<(int Lo, int Hi)> runs, List<ChunkAssignment<TWorker>> into)
    {
        foreach (var (lo, hi) in runs)
        {
            int parts = Math.Min(workers.Count, hi - lo);
            for (int i = 0; i < parts; i++)
            {
                var (a, b) = ChunkTree.Share(hi - lo, parts, i);
                Assign(workers[i], lo + a, lo + b, into);
            }
        }
    }

    /// <summary>Marks in <paramref name="missing"/> the chunks of <paramref name="runs"/> not covered yet; true if there was any.</summary>
    private bool MarkUncovered(IEnumerable<(int Lo, int Hi)> runs, bool[] missing)
    {
        bool any = false;
        foreach (var (lo, hi) in runs)
        {
            for (int c = lo; c < hi; c++)
            {
                if (!coverage.IsCovered(c))
                {
                    missing[c] = true;
                    any = true;
                }
            }
        }
        return any;
    }

    /// <summary>The maximal runs of marked chunks, in order: each chunk in one run.</summary>
    private static List<(int Lo, int Hi)> Runs(bool[] marked)
    {
        var runs = new List<(int Lo, int Hi)>();
        for (int c = 0; c < marked.Length;)
        {
            if (!marked[c])
            {
                c++;
                continue;
            }
            int lo = c;
            while (c < marked.Length && marked[c])
            {
                c++;
            }
            runs.Add((lo, c));
        }
        return runs;
    }

    private static void Assign(TWorker worker, int lo, int hi, List<ChunkAssignment<TWorker>> into)
    {
        worker.Assigned.Add((lo, hi));
        into.Add(new ChunkAssignment<TWorker>(worker, lo, hi));
    }
}
