using System.Diagnostics;
using DistributedBackprop.Network;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Engine;

/// <summary>Where and how often the trainer writes checkpoints.</summary>
public sealed record CheckpointPolicy(string Path, int EverySteps = 0);

/// <summary>
/// The plain single-process trainer: each step, T lanes (threads) compute the chunk-tree nodes of their
/// contiguous share of the C chunks, the <see cref="TreeReducer"/> combines them along the canonical tree,
/// and the session applies the optimizer. With any T — and with the actor system's workers — a step
/// computes the same bits, because the step is defined by the tree, not by who computes it.
/// </summary>
public sealed class Trainer : IDisposable
{
    private readonly TrainingSession _session;
    private readonly Lane[] _lanes;
    private readonly TreeReducer _reducer;
    private readonly LaneRunner _runner;
    private readonly Evaluator _evaluator;
    private readonly Action<int> _computeLane;
    private readonly GuardedUpdate _update;
    private readonly Action<Action<int>> _forEachLane;
    private EpochPlan? _plan;

    public Trainer(TrainingSession session, int threads = 1)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(threads, 1);
        _session = session;
        int chunks = session.Config.Chunks;
        int lanes = Math.Min(threads, chunks);
        _lanes = new Lane[lanes];
        for (int i = 0; i < lanes; i++)
        {
            var (lo, hi) = ChunkTree.Share(chunks, lanes, i);
            _lanes[i] = new Lane(new NodeGradientComputer(session.Architecture, session.Train), ChunkTree.Decompose(lo, hi, chunks), session.Architecture.ParameterCount);
        }
        _reducer = new TreeReducer(chunks, session.Architecture.ParameterCount);
        _runner = new LaneRunner(lanes, "dbp-lane");
        _computeLane = ComputeLane;
        _update = new GuardedUpdate(session, _reducer, lanes);
        _forEachLane = _runner.Run;
        _evaluator = new Evaluator(session.Architecture);
    }

    public int Threads => _lanes.Length;

    /// <summary>Runs every remaining step of the session; reports each step and epoch.</summary>
    public void Run(ITrainingObserver observer, CheckpointPolicy? checkpoints = null, CancellationToken cancellation = default)
    {
        var clock = Stopwatch.StartNew();
        var epochClock = Stopwatch.StartNew();
        double epochLoss = 0;
        long epochCorrect = 0, epochRows = 0;
        while (!_session.IsFinished)
        {
            cancellation.ThrowIfCancellationRequested();
            int epoch = _session.Epoch, stepInEpoch = _session.StepInEpoch;
            BatchResult result = Step(out float learningRate);
            epochLoss += result.LossSum;
            epochCorrect += result.Correct;
            epochRows += result.Rows;
            observer.StepCompleted(new StepReport(_session.GlobalStep, epoch, stepInEpoch, _session.StepsPerEpoch, _session.TotalSteps,
                result.LossSum / result.Rows, result.Rows, clock.Elapsed));
            if (checkpoints is { EverySteps: > 0 } && _session.GlobalStep % checkpoints.EverySteps == 0)
            {
                _session.SaveCheckpoint(checkpoints.Path);
            }
            if (_session.StepInEpoch == 0)
            {
                TimeSpan epochTime = epochClock.Elapsed;
                EpochScores scores = _session.Score(_evaluator, _session.Parameters);
                _session.RecordValidation(epoch + 1, scores.Validation, _session.Parameters);
                if (checkpoints is not null)
                {
                    _session.SaveCheckpoint(checkpoints.Path);
                }
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
                    Workers = Threads,
                });
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
        _runner.Run(_computeLane);
        _reducer.Reset();
        foreach (Lane lane in _lanes)
        {
            for (int i = 0; i < lane.Nodes.Count; i++)
            {
                _reducer.TryAdd(lane.Nodes[i], lane.Gradients[i], lane.Results[i]);
            }
        }
        var (gradient, result) = _reducer.Plan();
        if (!double.IsFinite(result.LossSum))
        {
            // Checked before the update, so the parameters stay those of the last good step (the actor
            // path's parameter server refuses a non-finite gradient the same way).
            throw new TrainingDivergedException($"training diverged at step {_session.GlobalStep}: the loss is {result.LossSum} (try a smaller --lr); the parameters after step {_session.GlobalStep} are kept, nothing more is written");
        }
        UpdateOutcome outcome = _update.Apply(gradient, _forEachLane, out learningRate);
        if (outcome != UpdateOutcome.Applied)
        {
            throw new TrainingDivergedException(GuardedUpdate.Describe(outcome, _session.GlobalStep));
        }
        _session.EndStep();
        return result;
    }

    public EvaluationResult Evaluate(Data.Dataset data) => _evaluator.Evaluate(_session.Parameters, data);

    private void ComputeLane(int index)
    {
        Lane lane = _lanes[index];
        ReadOnlySpan<int> batch = _plan!.BatchRows(_session.StepInEpoch);
        for (int i = 0; i < lane.Nodes.Count; i++)
        {
            lane.Results[i] = lane.Computer.Compute(_session.Parameters, batch, _session.Config.Chunks, lane.Nodes[i], lane.Gradients[i]);
        }
    }

    public void Dispose() => _runner.Dispose();

    private sealed class Lane
    {
        public Lane(NodeGradientComputer computer, List<TreeNode> nodes, int parameterCount)
        {
            Computer = computer;
            Nodes = nodes;
            Gradients = nodes.Select(_ => new float[parameterCount]).ToArray();
            Results = new BatchResult[nodes.Count];
        }

        public NodeGradientComputer Computer { get; }
        public List<TreeNode> Nodes { get; }
        public float[][] Gradients { get; }
        public BatchResult[] Results { get; }
    }
}

/// <summary>The loss became NaN or infinite: training cannot continue; nothing after the last good step is written.</summary>
public sealed class TrainingDivergedException(string message) : Exception(message);
