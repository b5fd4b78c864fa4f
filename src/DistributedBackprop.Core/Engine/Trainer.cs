using System.Diagnostics;
using DistributedBackprop.Kernels;
using DistributedBackprop.Network;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Engine;

/// <summary>Where and how often the trainer writes checkpoints.</summary>
public sealed record CheckpointPolicy(string Path, int EverySteps = 0)
{
    /// <summary>
    /// An update that moved the position from <paramref name="before"/> to <paramref name="after"/> passed a
    /// multiple of <see cref="EverySteps"/> (a round of local steps covers several steps, so "is a multiple" would miss some).
    /// </summary>
    public bool DueAfter(long before, long after) => EverySteps > 0 && after / EverySteps != before / EverySteps;
}

/// <summary>
/// The plain single-process trainer: each step, T lanes (threads) compute the chunk-tree nodes of their
/// contiguous share of the C chunks, the <see cref="TreeReducer"/> combines them along the canonical tree,
/// and the session applies the optimizer. With any T — and with the actor system's workers — a step
/// computes the same bits, because the step is defined by the tree, not by who computes it. With T &gt; 1 the
/// trainer times T lanes against one as it goes (<see cref="LaneTuner"/>) and uses the faster.
/// </summary>
public sealed class Trainer : IDisposable
{
    private readonly TrainingSession _session;
    private readonly TreeReducer _reducer;
    private readonly LaneRunner _runner;
    private readonly Evaluator _evaluator;
    private readonly Action<int> _computeLane;
    /// <summary>The configurations the tuner may pick, by candidate: lane count, chunk shares, update layout, and how to run them.</summary>
    private readonly Dictionary<int, LaneSet> _sets = [];
    private readonly LaneTuner _tuner;
    private LaneSet _current;
    private EpochPlan? _plan;
    /// <summary>With --outer-overlap, the θ each round is computed from and how its replicas start; else the session's θ.</summary>
    private readonly OverlappedRoundBases? _roundBases;
    private float[] _base;
    private RoundStart _roundStart;

    /// <param name="layout">how the update lays θ out across lanes (<see cref="UpdateLayout"/>).</param>
    public Trainer(TrainingSession session, int threads = 1, string layout = UpdateLayout.Auto)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(threads, 1);
        _session = session;
        // The parts of an update: the step's chunks, or with local steps the round's replicas.
        int parts = session.Config.UpdateParts();
        int lanes = Math.Min(threads, parts);
        _reducer = new TreeReducer(parts, session.Architecture.ParameterCount);
        _runner = new LaneRunner(lanes, "dbp-lane");
        _computeLane = ComputeLane;
        // The lane sets the tuner times: T lanes (with auto's copies of θ first, then one θ in slices: the copies win
        // where the cores are far apart, the slices where they share a cache, README "One copy of θ per worker"), the
        // faster of the two kept; then one lane, kept only if 5 % faster.
        bool replicate = UpdateLayout.Replicates(layout, lanes, session.Config);
        (int Lanes, bool Replicated)[] configurations = lanes == 1 ? [(1, false)]
            : replicate && layout == UpdateLayout.Auto ? [(lanes, true), (lanes, false), (1, false)]
            : [(lanes, replicate), (1, false)];
        int[] candidates = Enumerable.Range(0, configurations.Length).ToArray();
        // One store of the replicas' values for every lane set: the tuner may compute a replica on another lane next round.
        ReplicaChanges? changes = UpdateParts.CreateChanges(session.Config, session.Architecture.ParameterCount);
        foreach (int candidate in candidates)
        {
            var (count, replicated) = configurations[candidate];
            var set = new Lane[count];
            for (int i = 0; i < count; i++)
            {
                var (lo, hi) = ChunkTree.Share(parts, count, i);
                set[i] = new Lane(session.Config, UpdateParts.CreateComputer(session.Config, session.Architecture, session.Train, changes), ChunkTree.Decompose(lo, hi, parts), session.Architecture.ParameterCount);
            }
            // One lane runs on the caller's thread alone: the runner's other threads stay parked.
            Action<Action<int>> forEach = count == lanes ? _runner.Run : static work => work(0);
            // Lane i keeps its thread (LaneRunner), so with copies of θ lane i updates copy i and computes on it next.
            _sets[candidate] = new LaneSet(set, new GuardedUpdate(session, _reducer, count, replicated), forEach);
        }
        _tuner = new LaneTuner(candidates, stepsPerTurn: LaneTuner.StepsPerTurn, parallelism: configurations.Select(c => c.Lanes).ToArray());
        _current = _sets[candidates[0]];
        _evaluator = new Evaluator(session.Architecture);
        _roundBases = session.CreateRoundBases();
        _base = session.Parameters;
    }

    /// <summary>The most threads a step may use (the --threads asked for, at most the chunks).</summary>
    public int Threads => _runner.Lanes;

    /// <summary>The lanes steps use now (<see cref="Threads"/> while a tuning round measures).</summary>
    public int LanesInUse => _tuner.Chosen is int chosen ? _sets[chosen].Lanes.Length : Threads;

    /// <summary>Whether the steps now keep a copy of θ per lane (<see cref="UpdateLayout"/>; while a tuning round measures, the first candidate's).</summary>
    public bool CopiesOfThetaInUse => _sets[_tuner.Chosen ?? 0].Update.Replicated;

    /// <summary>Runs every remaining step of the session; reports each step and epoch.</summary>
    public void Run(ITrainingObserver observer, CheckpointPolicy? checkpoints = null, CancellationToken cancellation = default)
    {
        var clock = Stopwatch.StartNew();
        var epochClock = Stopwatch.StartNew();
        double epochLoss = 0;
        long epochCorrect = 0, epochRows = 0;
        var rounds = new List<StepReport>();
        while (!_session.IsFinished)
        {
            cancellation.ThrowIfCancellationRequested();
            int epoch = _session.Epoch, stepInEpoch = _session.StepInEpoch;
            long stepBefore = _session.GlobalStep;
            BatchResult result = Step(out float learningRate);
            epochLoss += result.LossSum;
            epochCorrect += result.Correct;
            epochRows += result.Rows;
            var report = new StepReport(_session.GlobalStep, epoch, stepInEpoch, _session.StepsPerEpoch, _session.TotalSteps,
                result.LossSum / result.Rows, result.Rows, clock.Elapsed, LastRound);
            if (report.Round is not null)
            {
                rounds.Add(report);
            }
            observer.StepCompleted(report);
            // The step that closes an epoch is checkpointed below, after the epoch is scored.
            if (checkpoints is not null && checkpoints.DueAfter(stepBefore, _session.GlobalStep) && _session.StepInEpoch != 0 && _session.Config.CheckpointsInsideEpochs())
            {
                _session.SaveCheckpoint(checkpoints.Path);
            }
            if (_session.StepInEpoch == 0)
            {
                TimeSpan epochTime = epochClock.Elapsed;
                EpochScores scores = _session.Score(_evaluator, _session.Parameters);
                _session.RecordValidation(epoch + 1, scores.Validation, _session.Parameters);
                observer.EpochCompleted(new EpochReport
                {
                    Epoch = epoch + 1,
                    Step = _session.GlobalStep,
                    TrainLoss = epochLoss / epochRows,
                    TrainAccuracy = (double)epochCorrect / epochRows,
                    ValidationLoss = scores.Validation?.Loss,
                    ValidationAccuracy = scores.Validation?.Accuracy,
                    BestEpoch = _session.Tracker?.BestEpoch,
                    StoppedEarly = _session.StoppedEarly,
                    TestLoss = scores.Test?.Loss,
                    TestAccuracy = scores.Test?.Accuracy,
                    SamplesPerSecond = epochRows / epochTime.TotalSeconds,
                    EpochTime = epochTime,
                    Elapsed = clock.Elapsed,
                    LearningRate = learningRate,
                    Workers = LanesInUse,
                    Rounds = rounds.Count == 0 ? null : rounds.ToArray(),
                });
                if (checkpoints is not null)
                {
                    // The epoch's metrics line first: a run resumed from this checkpoint keeps the lines it covers.
                    observer.Persist();
                    _session.SaveCheckpoint(checkpoints.Path);
                }
                rounds.Clear();
                epochLoss = 0;
                epochCorrect = epochRows = 0;
                epochClock.Restart();
            }
        }
    }

    /// <summary>
    /// One step: every lane computes its nodes, the reducer plans the tree additions, then every lane adds
    /// and applies the optimizer on its own slice of the parameters (element-wise work, so slicing does not
    /// change a bit), checked so that a failed update leaves the last good step's parameters.
    /// </summary>
    public BatchResult Step(out float learningRate)
    {
        if (_plan is null || _plan.Epoch != _session.Epoch)
        {
            _plan = EpochPlan.Create(_session.Train.Rows, _session.Config.BatchSize, _session.Config.Seed, _session.Epoch, recycle: _plan);
        }
        LaneSet next = _sets[_tuner.Next()];
        // The copies of θ follow the session's whenever another lane set (one lane: the session's θ alone) or
        // anything between epochs may have written it (GuardedUpdate's constructor set them at the start); two array
        // copies, outside the step the tuner times.
        if (next.Update.Replicated && (next != _current || _session.StepInEpoch == 0))
        {
            next.Update.SyncCopies(next.ForEach);
        }
        long started = Stopwatch.GetTimestamp();
        _current = next;
        if (_roundBases is not null)
        {
            _base = _roundBases.Begin(_session.UpdateInEpoch, _session.Parameters, _session.UpdateFollowsInEpoch);
            _roundStart = _session.StepInEpoch == 0 ? RoundStart.FromParameters : RoundStart.MinusOwnChange;
        }
        _current.ForEach(_computeLane);
        _reducer.Reset();
        foreach (Lane lane in _current.Lanes)
        {
            for (int i = 0; i < lane.Nodes.Count; i++)
            {
                _reducer.TryAdd(lane.Nodes[i], lane.Gradients[i], lane.Results[i], lane.PartResults[i], lane.Bounds[i]);
            }
        }
        var (gradient, result) = _reducer.Plan();
        if (!double.IsFinite(result.LossSum))
        {
            // Checked before the update, so the parameters stay those of the last good step (the actor
            // path's parameter server refuses a non-finite gradient the same way).
            throw new TrainingDivergedException($"training diverged at step {_session.GlobalStep}: the loss is {result.LossSum} (try a smaller --lr); the parameters after step {_session.GlobalStep} are kept, nothing more is written");
        }
        UpdateOutcome outcome = _current.Update.Apply(gradient, _current.ForEach, out learningRate);
        if (outcome != UpdateOutcome.Applied)
        {
            throw new TrainingDivergedException(GuardedUpdate.Describe(outcome, _session.GlobalStep));
        }
        _session.EndStep();
        _tuner.Record(Stopwatch.GetElapsedTime(started).TotalSeconds);
        return result;
    }

    /// <summary>With local steps, the figures of the round <see cref="Step"/> just applied; else null.</summary>
    public RoundReport? LastRound => _session.Config.LocalSteps is null ? null : RoundReport.From(_reducer.PartResults, _current.Update.LastStepNorm);

    public EvaluationResult Evaluate(Data.Dataset data) => _evaluator.Evaluate(_session.Parameters, data);

    private void ComputeLane(int index)
    {
        Lane lane = _current.Lanes[index];
        for (int i = 0; i < lane.Nodes.Count; i++)
        {
            lane.Results[i] = lane.Computer.Compute(_current.Update.Replicated ? _current.Update.CopyOf(index) : _base, _plan!, _session.StepInEpoch, lane.Nodes[i], lane.Gradients[i], lane.PartResults[i], _roundStart);
            lane.Bounds[i] = FiniteValues.Bound(lane.Gradients[i]);
        }
    }

    public void Dispose() => _runner.Dispose();

    private sealed record LaneSet(Lane[] Lanes, GuardedUpdate Update, Action<Action<int>> ForEach);

    private sealed class Lane
    {
        public Lane(TrainingConfig config, IUpdatePartComputer computer, List<TreeNode> nodes, int parameterCount)
        {
            PartResults = nodes.Select(node => new BatchResult[UpdateParts.FiguresPerNode(config, node)]).ToArray();
            Computer = computer;
            Nodes = nodes;
            Gradients = nodes.Select(_ => new float[parameterCount]).ToArray();
            Results = new BatchResult[nodes.Count];
            Bounds = new float[nodes.Count];
        }

        public IUpdatePartComputer Computer { get; }
        public List<TreeNode> Nodes { get; }
        public float[][] Gradients { get; }
        public BatchResult[] Results { get; }

        /// <summary>Per node, the largest magnitude in its gradient (<see cref="FiniteValues.Bound"/>).</summary>
        public float[] Bounds { get; }

        /// <summary>Per node, its parts' own figures (with local steps: each replica's; else empty).</summary>
        public BatchResult[][] PartResults { get; }
    }
}

/// <summary>The loss became NaN or infinite: training cannot continue; nothing after the last good step is written.</summary>
public sealed class TrainingDivergedException(string message) : Exception(message);
