using DistributedBackprop.Kernels;
using DistributedBackprop.Optimizers;

namespace DistributedBackprop.Engine;

/// <summary>How one step's update ended.</summary>
public enum UpdateOutcome
{
    /// <summary>The parameters and optimizer state are those after the step.</summary>
    Applied,

    /// <summary>The summed gradient held a NaN or an infinity; nothing was written.</summary>
    GradientNotFinite,

    /// <summary>
    /// The update itself overflowed (a finite gradient times a huge γ, or Adam's g² past float's range): the
    /// parameters in memory are no longer good. Undoing it would mean copying the parameters and optimizer
    /// state aside every step (12 more bytes written per parameter on Adam's update of 28; a version that did,
    /// with slower checks, ran 20–30 % slower at batch 16 — docs/architecture.md gives the command); the run
    /// stops instead and writes nothing, and the last checkpoint holds the last good state.
    /// </summary>
    ParametersNotFinite,
}

/// <summary>
/// One step's update, W ← W − γ ∂J/∂W (or momentum's or Adam's form), done in parallel slices and checked
/// twice: the summed gradient (chunk gradients that are each finite can still overflow when added) in every
/// slice before any slice is written, so a non-finite gradient leaves the parameters and optimizer state of
/// the last good step bit for bit; and the result, so an update that overflows is caught at its step rather
/// than as a NaN loss later. When the nodes' bounds prove the sum finite (<see cref="TreeReducer.SumIsFinite"/>),
/// the first check needs no pass: the sum is added and applied block by block in one.
/// One implementation for the plain trainer's lanes and the parameter server.
/// </summary>
public sealed class GuardedUpdate
{
    private readonly TrainingSession _session;
    private readonly TreeReducer _reducer;
    private readonly int _lanes;
    private readonly bool[] _laneFinite;
    /// <summary>Each lane's block of the sum when it is added and applied in one pass (made on the lane's thread at first use).</summary>
    private readonly float[]?[] _laneSums;
    private readonly Action<int> _reduceLane, _applyLane, _addAndApplyLane, _syncLane;
    private float[] _gradient = [];
    private float _learningRate;
    /// <summary>With local steps: θ before the outer step, to report the step's norm.</summary>
    private readonly float[]? _before;
    /// <summary>
    /// Replicated: lane r ≥ 1 applies the whole update to copy r of θ and of the optimizer state, lane 0 to the
    /// session's own (element 0 unused); else null, and lane r applies its slice of the session's.
    /// </summary>
    private readonly (float[] Parameters, Optimizer Optimizer)[]? _copies;

    /// <param name="replicated">
    /// one copy of θ and of the optimizer state per lane, each updated whole by its lane (<see cref="CopyOf"/>): for
    /// callers whose lane r runs on the thread that then computes on copy r, so no thread writes lines another one
    /// reads. The reduce pass, when there is one, is still split in slices. The same arithmetic on each copy: the same
    /// bits in all of them.
    /// </param>
    public GuardedUpdate(TrainingSession session, TreeReducer reducer, int lanes, bool replicated = false)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(lanes, 1);
        if (replicated && session.Config.LocalSteps is not null)
        {
            throw new ArgumentException("a replicated update does not go with local steps (their outer step reads θ before and after)");
        }
        _session = session;
        _reducer = reducer;
        _lanes = lanes;
        _laneFinite = new bool[lanes];
        _laneSums = new float[lanes][];
        _reduceLane = ReduceLane;
        _applyLane = ApplyLane;
        _addAndApplyLane = AddAndApplyLane;
        _syncLane = SyncLane;
        _before = session.Config.LocalSteps is null ? null : new float[session.Parameters.Length];
        if (replicated)
        {
            _copies = new (float[], Optimizer)[lanes];
            for (int copy = 1; copy < lanes; copy++)
            {
                _copies[copy] = (new float[session.Parameters.Length], new Optimizer(session.Architecture, session.Optimizer.Settings));
            }
            SyncCopies();
        }
    }

    /// <summary>Whether each lane updates a whole copy of θ (see the constructor).</summary>
    public bool Replicated => _copies is not null;

    /// <summary>Copy <paramref name="copy"/> of θ (replicated; copy 0 is the session's <see cref="TrainingSession.Parameters"/>).</summary>
    public float[] CopyOf(int copy) => _copies is null || copy == 0 ? _session.Parameters : _copies[copy].Parameters;

    /// <summary>
    /// Replicated: sets every copy to the session's θ and optimizer state. Each update keeps them equal; call this
    /// after anything else writes the session's (a resume, a restore, another lane set's update), before the copies
    /// are read. With <paramref name="forEachLane"/> (the update's), copy i is written by lane i's thread, so its
    /// lines start in the cache of the thread that reads them.
    /// </summary>
    public void SyncCopies(Action<Action<int>>? forEachLane = null)
    {
        if (_copies is null)
        {
            return;
        }
        (forEachLane ?? (work => { for (int lane = 0; lane < _lanes; lane++) work(lane); }))(_syncLane);
    }

    private void SyncLane(int copy)
    {
        if (copy > 0)
        {
            _session.Parameters.CopyTo(_copies![copy].Parameters, 0);
            _session.Optimizer.CopyStateTo(_copies[copy].Optimizer);
        }
    }

    /// <summary>
    /// With local steps, ‖θ_before − θ_after‖ of the last applied outer step, summed in parameter order on one
    /// thread (so it is the same bits for any lane count; one pass per round of H steps costs nothing); else NaN.
    /// </summary>
    public double LastStepNorm { get; private set; } = double.NaN;

    /// <summary>How many slices the parameters are cut into; <c>forEachLane</c> must run every lane index below this.</summary>
    public int Lanes => _lanes;

    /// <summary>
    /// Adds the planned tree additions into <paramref name="gradient"/> (the buffer <see cref="TreeReducer.Plan"/>
    /// returned), checks it, starts the session's step (γ for this step) and applies it; when the nodes' bounds prove
    /// the sum finite, adds and applies it block by block instead (<see cref="TreeReducer.SumRange"/>), and
    /// <paramref name="gradient"/> is then not the sum afterwards (nothing reads it after the update). <paramref name="forEachLane"/>
    /// runs an action once for every lane 0 … <see cref="Lanes"/> − 1, in parallel, and returns when all are done.
    /// On <see cref="UpdateOutcome.Applied"/> the caller ends the step (<see cref="TrainingSession.EndStep"/>);
    /// on <see cref="UpdateOutcome.GradientNotFinite"/> the session is as it was before the call.
    /// </summary>
    public UpdateOutcome Apply(float[] gradient, Action<Action<int>> forEachLane, out float learningRate)
    {
        _gradient = gradient;
        // Bounded: the sum cannot hold a NaN or an infinity, so it is added block by block just before each block is
        // applied, with no pass to check it first (and no trip of the whole sum through memory between the two).
        bool bounded = _reducer.SumIsFinite;
        // Copies sum the same blocks at once: only a sum that writes no node's buffer may be taken twice.
        bool onePass = bounded && (_copies is null || _reducer.SumRangeOnlyReads);
        if (!onePass)
        {
            forEachLane(_reduceLane);
            if (!AllLanesFinite())
            {
                learningRate = 0;
                return UpdateOutcome.GradientNotFinite;
            }
        }
        _learningRate = _session.BeginStep();
        for (int copy = 1; copy < (_copies?.Length ?? 0); copy++)
        {
            _copies![copy].Optimizer.BeginStep();
        }
        // Reported: the step's γ; with local steps the inner schedule's at the round's first step (the outer γ is constant).
        learningRate = _session.Config.LocalSteps is null ? _learningRate : _session.Config.Optimizer.LearningRateAt(_session.GlobalStep, _session.Epoch, _session.TotalSteps);
        if (_before is not null)
        {
            _session.Parameters.CopyTo(_before, 0);
        }
        forEachLane(onePass ? _addAndApplyLane : _applyLane);
        if (_before is not null)
        {
            LastStepNorm = Distance(_before, _session.Parameters);
        }
        return AllLanesFinite() ? UpdateOutcome.Applied : UpdateOutcome.ParametersNotFinite;
    }

    /// <summary>The one line a run stops with when an update failed at step <paramref name="step"/> (steps done so far).</summary>
    public static string Describe(UpdateOutcome outcome, long step) => outcome switch
    {
        UpdateOutcome.GradientNotFinite => $"training diverged at step {step}: the summed gradient is not finite (NaN or infinity; try a smaller --lr); nothing was written, the parameters after step {step} are kept",
        UpdateOutcome.ParametersNotFinite => $"training diverged at step {step}: the update overflowed (a parameter or optimizer value became NaN or infinite; try a smaller --lr); nothing was written",
        _ => throw new ArgumentOutOfRangeException(nameof(outcome), outcome, "the update was applied"),
    };

    private static double Distance(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        double sum = 0;
        for (int i = 0; i < a.Length; i++)
        {
            double d = (double)a[i] - b[i];
            sum += d * d;
        }
        return Math.Sqrt(sum);
    }

    private bool AllLanesFinite() => Array.TrueForAll(_laneFinite, finite => finite);

    /// <summary>What lane <paramref name="lane"/> applies: its slice of the session's θ, or replicated all of its copy.</summary>
    private (int Start, int Count, float[] Parameters, Optimizer Optimizer) Target(int lane) => (_copies, lane) switch
    {
        (null, _) => (Slice(lane).Start, Slice(lane).Count, _session.Parameters, _session.Optimizer),
        (_, 0) => (0, _session.Parameters.Length, _session.Parameters, _session.Optimizer),
        _ => (0, _session.Parameters.Length, _copies[lane].Parameters, _copies[lane].Optimizer),
    };

    private (int Start, int Count) Slice(int lane)
    {
        int count = _session.Parameters.Length;
        int start = (int)((long)lane * count / _lanes), end = (int)((long)(lane + 1) * count / _lanes);
        return (start, end - start);
    }

    // Both passes walk their slice in blocks small enough to stay in the core's cache: the reduce pass's check reads
    // the sums just written instead of streaming the slice from memory again (the apply pass checks in registers).
    private const int Block = 4096;

    private void ReduceLane(int lane)
    {
        var (start, count) = Slice(lane);
        bool finite = true;
        for (int from = start, end = start + count; from < end; from += Block)
        {
            int length = Math.Min(Block, end - from);
            _reducer.AddRange(from, length);
            finite &= FiniteValues.All(_gradient.AsSpan(from, length));
        }
        _laneFinite[lane] = finite;
    }

    /// <summary>
    /// The sum's blocks added into the lane's scratch (16 KB, in L1) and applied from there in turn: the sum is never
    /// written to memory and read back, one pass over the addends and θ (~3.8 MB a step for 784-256-128-10 from two
    /// nodes with SGD, against ~5.6 for the two passes).
    /// </summary>
    private void AddAndApplyLane(int lane)
    {
        var (start, count, target, optimizer) = Target(lane);
        Span<float> parameters = target;
        Span<float> scratch = _laneSums[lane] ??= new float[Block];
        bool finite = true;
        for (int from = start, end = start + count; from < end; from += Block)
        {
            int length = Math.Min(Block, end - from);
            ReadOnlySpan<float> sum = _reducer.SumRange(from, length, scratch);
            finite &= optimizer.ApplySlice(parameters.Slice(from, length), sum, _learningRate, from);
        }
        _laneFinite[lane] = finite;
    }

    private void ApplyLane(int lane)
    {
        var (start, count, parameters, optimizer) = Target(lane);
        bool finite = true;
        // Backwards, block by block: the last blocks the reduce pass touched may still be in L2 when the same thread
        // takes this lane (the plain trainer's lanes keep their threads; 512 KB of L2 on Zen 3 against a lane's 0.47 MB
        // of gradient plus the addends streamed past), so they are applied first, before the blocks read from L3 push
        // them out. The blocks are the same as forwards (each element the same vector or scalar path): the same bits.
        for (int from = start + (count - 1) / Block * Block; count > 0 && from >= start; from -= Block)
        {
            int length = Math.Min(Block, start + count - from);
            // Checked as written: the new parameters and Adam's v (Optimizer.ApplySection says why those).
            finite &= optimizer.ApplyRange(parameters, _gradient, _learningRate, from, length);
        }
        _laneFinite[lane] = finite;
    }
}
