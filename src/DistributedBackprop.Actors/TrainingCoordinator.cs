using Akka.Actor;
using Akka.Event;
using DistributedBackprop.Engine;

namespace DistributedBackprop.Actors;

/// <summary>How a run ended: its steps, and the reports of its last epochs (at most <see cref="TrainingCoordinator.ReportsKept"/>).</summary>
public sealed record TrainingOutcome(long Steps, IReadOnlyList<EpochReport> Epochs);

/// <summary>Raised when the parameter server stops training (bad gradient, lost state).</summary>
public sealed class TrainingFailedException(string message, bool restartable = false) : Exception(message)
{
    /// <summary>See <see cref="TrainingFailed.Restartable"/>.</summary>
    public bool Restartable { get; } = restartable;
}

/// <summary>Tells the coordinator to start one more local worker (it joins from the next step).</summary>
public sealed record AddWorker : INoSerializationVerificationNeeded;

/// <summary>
/// The training run's coordinator (local mode). Creates the parameter server and the workers, runs the
/// epochs one after another (<see cref="TrainEpoch"/> → <see cref="EpochTrained"/>), evaluates the test set
/// off the actor after each epoch (Task + PipeTo), writes checkpoints through the server, reports progress
/// to an <see cref="ITrainingObserver"/>, and completes <paramref name="completion"/> when the session is
/// finished or has failed. Supervision: a failing worker is stopped, which the server sees as a death and
/// answers by handing the worker's chunks to the others.
/// </summary>
public sealed class TrainingCoordinator : ReceiveActor
{
    private readonly TrainingSession _session;
    private readonly int _initialWorkers;
    private readonly int _serverShards;
    /// <summary>Local mode: the threads the server and the workers run on; null in cluster mode (each on its own).</summary>
    private readonly ComputeThreads? _threads;
    private readonly int _minimumWorkers;
    private bool _started;
    private readonly ITrainingObserver _observer;
    private readonly CheckpointPolicy? _checkpoints;
    private readonly TaskCompletionSource<TrainingOutcome> _completion;
    private readonly Evaluator _evaluator;
    private readonly ILoggingAdapter _log = Context.GetLogger();
    /// <summary>Epoch reports kept for <see cref="TrainingOutcome"/> (the most recent ones).</summary>
    public const int ReportsKept = 100;
    private readonly List<EpochReport> _reports = [];
    private readonly System.Diagnostics.Stopwatch _clock = System.Diagnostics.Stopwatch.StartNew();
    private IActorRef _server = ActorRefs.Nobody;
    private int _workersStarted;
    private long _lastStep;
    /// <summary>Rounds of local steps reported since the last epoch's report (the next epoch starts only after this one is scored).</summary>
    private readonly List<StepReport> _rounds = [];
    private int? _pendingNextEpoch;
    /// <summary>The step of the epoch-end checkpoint <see cref="_pendingNextEpoch"/> waits for (an earlier one arriving late does not count).</summary>
    private long _pendingCheckpointStep;

    public TrainingCoordinator(TrainingSession session, int workers, ITrainingObserver observer, CheckpointPolicy? checkpoints, TaskCompletionSource<TrainingOutcome> completion, int minimumWorkers = -1, int serverShards = 1, ComputeThreads? threads = null)
    {
        _serverShards = serverShards;
        _threads = threads;
        _session = session;
        _initialWorkers = workers;
        _minimumWorkers = minimumWorkers < 0 ? workers : minimumWorkers;
        _observer = observer;
        _checkpoints = checkpoints;
        _completion = completion;
        _evaluator = new Evaluator(session.Architecture);

        Receive<StepApplied>(OnStep);
        Receive<EpochTrained>(OnEpoch);
        Receive<EpochEvaluated>(OnEvaluated);
        Receive<CheckpointSaved>(OnCheckpointSaved);
        Receive<EpochPersisted>(_ => _server.Tell(new SaveCheckpoint(_checkpoints!.Path)));
        Receive<TrainingFailed>(f => Finish(new TrainingFailedException(f.Reason, f.Restartable)));
        Receive<AddWorker>(_ => StartWorker());
        Receive<WorkerLeft>(l =>
        {
            _threads?.WorkerLeft(l.WorkerName);
            _observer.WorkerLeft(l.WorkerName, l.Workers, l.Graceful);
        });
        Receive<WorkerJoined>(j =>
        {
            _log.Info("{0} joined: {1} of at least {2} workers", j.WorkerName, j.Workers, _minimumWorkers);
            _observer.WorkerJoined(j.WorkerName, j.Workers);
            if (!_started && j.Workers >= _minimumWorkers)
            {
                StartTraining();
            }
        });
        Receive<WorkerRefused>(r => Finish(new TrainingFailedException($"{r.WorkerName} was refused: {r.Reason}")));
        Receive<Status.Failure>(f => Finish(f.Cause));
        Receive<Terminated>(t =>
        {
            if (t.ActorRef.Equals(_server))
            {
                Finish(new TrainingFailedException("the parameter server stopped"));
            }
        });
    }

    /// <param name="workers">local worker actors to start.</param>
    /// <param name="minimumWorkers">training starts once this many workers have registered (local and remote); default: <paramref name="workers"/>.</param>
    /// <param name="serverShards">the parameter server's shards (<c>--server-shards</c>; 1: θ stays in the server).</param>
    /// <param name="threads">local mode's threads, installed in this actor system (<see cref="ComputeThreads"/>).</param>
    /// <remarks>
    /// In local mode the coordinator runs on the parameter server's thread: its per-step work is one observer call,
    /// and on the thread pool each step's <see cref="StepApplied"/> woke a pool thread that spun and switched on the
    /// cores the workers compute on (7.4 % of all samples of a two-worker run, docs/architecture.md, "Threads in
    /// local mode"). Evaluation and the observers' disk writes stay off it (Task.Run).
    /// </remarks>
    public static Props Props(TrainingSession session, int workers, ITrainingObserver observer, CheckpointPolicy? checkpoints, TaskCompletionSource<TrainingOutcome> completion, int minimumWorkers = -1, int serverShards = 1, ComputeThreads? threads = null)
    {
        Props props = Akka.Actor.Props.Create(() => new TrainingCoordinator(session, workers, observer, checkpoints, completion, minimumWorkers, serverShards, threads));
        return threads is null ? props : props.WithDispatcher(ComputeThreads.DispatcherId(0));
    }

    /// <summary>The parameter server's name under the coordinator.</summary>
    public const string ServerName = "parameter-server";

    protected override void PreStart()
    {
        _server = Context.ActorOf(ParameterServer.Props(_session, Self, shards: _serverShards, threads: _threads, checkpoints: _checkpoints), ServerName);
        Context.Watch(_server);
        _lastStep = _session.GlobalStep;
        for (int i = 0; i < _initialWorkers; i++)
        {
            StartWorker();
        }
        if (_session.IsFinished)
        {
            Finish(null);
            return;
        }
        if (_minimumWorkers == 0)
        {
            StartTraining();
        }
    }

    private void StartTraining()
    {
        _started = true;
        _clock.Restart();
        _server.Tell(new TrainEpoch(_session.Epoch, NeedParameters));
    }

    /// <summary>
    /// Whatever stops the coordinator, the caller waiting on the run learns of it. Stopped with its whole node
    /// (a coordinated shutdown is under way), the run ends as a crash would, restartable: the workers wait and a
    /// restart resumes from the checkpoint. A node stopping under a run is not the run's fault.
    /// </summary>
    protected override void PostStop()
    {
        var nodeStopping = CoordinatedShutdown.Get(Context.System).ShutdownReason;
        _completion.TrySetException(nodeStopping is null
            ? new TrainingFailedException("the training coordinator stopped before the run finished")
            : new TrainingFailedException($"the server's Akka node stopped before training finished ({nodeStopping.GetType().Name})", restartable: true));
    }

    protected override SupervisorStrategy SupervisorStrategy() =>
        new OneForOneStrategy(e =>
        {
            _log.Error(e, "a training actor failed");
            return Directive.Stop;
        });

    private void StartWorker()
    {
        string name = $"worker-{++_workersStarted}";
        // With local mode's threads the server takes each gradient's bound from its worker (ParameterServer, arrival).
        Props props = Worker.Props(_server, name, new WorkerSetup(_session.Architecture, _session.Train, _session.Config, _session.DataHash) { BoundsGradients = _threads is not null });
        if (_threads is null)
        {
            Context.ActorOf(props, name);
            return;
        }
        Context.ActorOf(props.WithDispatcher(ComputeThreads.DispatcherId(_threads.PlaceWorker(name))), name);
    }

    private void OnStep(StepApplied step)
    {
        _lastStep = step.GlobalStep;
        var report = new StepReport(step.GlobalStep, step.Epoch, step.StepInEpoch, _session.StepsPerEpoch, _session.TotalSteps,
            step.Result.LossSum / step.Result.Rows, step.Result.Rows, _clock.Elapsed, step.Round);
        if (step.Round is not null)
        {
            _rounds.Add(report);
        }
        _observer.StepCompleted(report);
        // Checkpoints due inside the epoch are the server's to take, at their step (ParameterServer.Applied); never
        // on the step that closes an epoch, whose checkpoint follows once it is scored (taken earlier, it could
        // snapshot the validation record while OnEvaluated writes it).
    }

    /// <summary>Only evaluation needs the parameters after each epoch (checkpoints are written by the server).</summary>
    private bool NeedParameters => _session.Test is not null || _session.Validation is not null;

    private void OnEpoch(EpochTrained epoch)
    {
        // Evaluation reads only the coordinator's copy of the parameters, off the actor's thread.
        Evaluator evaluator = _evaluator;
        TrainingSession session = _session;
        if (!NeedParameters)
        {
            Self.Tell(new EpochEvaluated(epoch, new EpochScores(null, null)));
            return;
        }
        Task.Run(() => new EpochEvaluated(epoch, session.Score(evaluator, epoch.Parameters))).PipeTo(Self);
    }

    private void OnEvaluated(EpochEvaluated evaluated)
    {
        EpochTrained e = evaluated.Epoch;
        // The server is idle between epochs (it waits for the next TrainEpoch), so the session's validation
        // record is written here before the checkpoint below snapshots it.
        _session.RecordValidation(e.Epoch + 1, evaluated.Scores.Validation, e.Parameters);
        var report = new EpochReport
        {
            Epoch = e.Epoch + 1,
            Step = e.GlobalStep,
            TrainLoss = e.LossSum / e.Rows,
            TrainAccuracy = (double)e.Correct / e.Rows,
            ValidationLoss = evaluated.Scores.Validation?.Loss,
            ValidationAccuracy = evaluated.Scores.Validation?.Accuracy,
            BestEpoch = _session.Tracker?.BestEpoch,
            StoppedEarly = _session.StoppedEarly,
            TestLoss = evaluated.Scores.Test?.Loss,
            TestAccuracy = evaluated.Scores.Test?.Accuracy,
            SamplesPerSecond = e.Rows / e.Seconds,
            EpochTime = TimeSpan.FromSeconds(e.Seconds),
            Elapsed = _clock.Elapsed,
            LearningRate = e.LearningRate,
            Workers = e.Workers,
            WaitingForSlowest = TimeSpan.FromSeconds(e.WaitingForSlowestSeconds),
            ServerTime = TimeSpan.FromSeconds(e.ServerSeconds),
            StepsWithThetaCopies = e.StepsWithThetaCopies,
            DroppedGradients = e.DroppedGradients,
            WorkerStepsPerSecond = e.WorkerStepsPerSecond,
            WorkerBusyFraction = e.WorkerBusyFraction,
            WorkerStepSecondsMedian = e.WorkerStepSecondsMedian,
            WorkerStepSecondsP90 = e.WorkerStepSecondsP90,
            Rounds = _rounds.Count == 0 ? null : _rounds.ToArray(),
        };
        _rounds.Clear();
        _reports.Add(report);
        if (_reports.Count > ReportsKept)
        {
            _reports.RemoveAt(0); // a run of a billion epochs must not grow with them
        }
        _observer.EpochCompleted(report);
        int? next = _session.IsFinished ? null : e.Epoch + 1;
        if (_checkpoints is not null)
        {
            // Continue only once the checkpoint is on disk, so the last one is never lost at shutdown; and ask for
            // it only once the epoch's metrics line is (off the actor: the observer waits for the disk), so a
            // server killed in between never resumes past a line its metrics file lacks.
            _pendingNextEpoch = next ?? -1;
            _pendingCheckpointStep = e.GlobalStep;
            Task.Run(_observer.Persist).PipeTo(Self, success: () => EpochPersisted.Instance);
            return;
        }
        Continue(next);
    }

    private void OnCheckpointSaved(CheckpointSaved saved)
    {
        if (_pendingNextEpoch is int next && saved.GlobalStep >= _pendingCheckpointStep)
        {
            _pendingNextEpoch = null;
            Continue(next < 0 ? null : next);
        }
    }

    private void Continue(int? nextEpoch)
    {
        if (nextEpoch is int epoch)
        {
            _server.Tell(new TrainEpoch(epoch, NeedParameters));
        }
        else
        {
            Finish(null);
        }
    }

    private void Finish(Exception? error)
    {
        if (error is null)
        {
            _completion.TrySetResult(new TrainingOutcome(_lastStep, _reports));
        }
        else
        {
            _completion.TrySetException(error);
        }
    }

    private sealed record EpochEvaluated(EpochTrained Epoch, EpochScores Scores) : INoSerializationVerificationNeeded;

    /// <summary>The observers hold the epoch's report on disk; its checkpoint may follow.</summary>
    private sealed record EpochPersisted : INoSerializationVerificationNeeded
    {
        public static readonly EpochPersisted Instance = new();
    }
}
