using Akka.Actor;
using Akka.Configuration;
using DistributedBackprop.Engine;
using DistributedBackprop.Optimizers;

namespace DistributedBackprop.Actors.Tests;

/// <summary>
/// End to end in one process: N worker actors and a parameter server produce the plain trainer's bits,
/// for any N, with messages passed by reference or forced through the serializer, with workers dying and
/// joining mid-epoch.
/// </summary>
public sealed class LocalTrainingTests
{
    private static readonly float[] Oracle = Fixtures.PlainTrainer();

    private static async Task<TrainingSession> TrainWithActors(int workers, ITrainingObserver? observer = null, Config? overrides = null, Func<LocalTraining, ITrainingObserver>? observerFactory = null, TrainingConfig? config = null, int serverShards = 1)
    {
        TrainingSession session = Fixtures.Session(config);
        var relay = new RelayObserver();
        await using LocalTraining run = LocalTraining.Start(session, workers, relay, overrides: overrides, serverShards: serverShards);
        relay.Inner = observerFactory?.Invoke(run) ?? observer ?? NullObserver.Instance;
        await run.Completion.WaitAsync(TimeSpan.FromMinutes(2));
        return session;
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(7)]
    public async Task AnyNumberOfWorkers_GivesThePlainTrainersBits(int workers)
    {
        TrainingSession session = await TrainWithActors(workers);
        Assert.Equal(session.TotalSteps, session.GlobalStep);
        Fixtures.AssertSameBits(Oracle, session.Parameters, $"{workers} workers");
    }

    /// <summary>
    /// The coordinator shares the server's thread: every step's report reaches the observer there, so no thread-pool
    /// thread is woken per step to spin on the workers' cores (docs/architecture.md, "Threads in local mode").
    /// </summary>
    [Fact]
    public async Task StepReports_ReachTheObserverOnTheServersThread_NotTheThreadPool()
    {
        var threads = new ThreadRecorder();
        TrainingSession session = await TrainWithActors(2, threads);
        Assert.Equal(session.TotalSteps, threads.Names.Count);
        Assert.All(threads.Names, name => Assert.Equal("dbp-compute-1", name));
    }

    /// <summary>
    /// Parameter shards: θ and the optimizer state cut into K slices, each reduced and updated by its own actor,
    /// give the plain trainer's bits for any K and any N (K = 1 is the server's own update). The checkpoint a
    /// sharded run writes mid-way (collected from the shards) resumes to the same bits as well.
    /// </summary>
    [Theory]
    [InlineData(2, 1, OptimizerKind.Adam)]
    [InlineData(3, 2, OptimizerKind.Adam)]
    [InlineData(5, 3, OptimizerKind.Adam)]
    [InlineData(2, 3, OptimizerKind.Momentum)]
    [InlineData(5, 1, OptimizerKind.Sgd)]
    [InlineData(3, 3, OptimizerKind.Sgd)]
    public async Task ParameterShards_AnyCountOfShardsAndWorkers_GiveThePlainTrainersBits(int shards, int workers, OptimizerKind optimizer)
    {
        TrainingConfig config = Fixtures.Config(optimizer: optimizer);
        float[] oracle = Fixtures.PlainTrainer(config);
        var recorder = new RecordingObserver();
        TrainingSession session = await TrainWithActors(workers, recorder, config: config, serverShards: shards);
        Assert.Equal(session.TotalSteps, session.GlobalStep);
        Assert.Equal(session.TotalSteps, recorder.Steps);
        Fixtures.AssertSameBits(oracle, session.Parameters, $"{shards} shards, {workers} workers, {optimizer}");
    }

    [Fact]
    public async Task ParameterShards_EveryMessageThroughTheSerializer_WorkerKilledAndAdded_GiveTheSameBits()
    {
        TrainingConfig config = Fixtures.Config(epochs: 12);
        float[] oracle = Fixtures.PlainTrainer(config);
        Config verify = ConfigurationFactory.ParseString("akka.actor.serialize-messages = on\nakka.actor.serialize-creators = off");
        var recorder = new RecordingObserver();
        TrainingSession session = await TrainWithActors(3, overrides: verify, config: config, serverShards: 3,
            observerFactory: run => new ChaosObserver(run, recorder, killAtStep: 10, addAtStep: 15));
        Fixtures.AssertSameBits(oracle, session.Parameters, "3 shards, serialize-messages = on, worker-2 killed at step 10, worker-4 added at step 15");
        Assert.Contains(recorder.Epochs, e => e.WorkerStepsPerSecond!.GetValueOrDefault("worker-4") > 0);
    }

    [Fact]
    public async Task ParameterShards_CheckpointMidRun_ResumesToTheSameBits()
    {
        string path = Path.Combine(Path.GetTempPath(), $"dbp-shard-ck-{Guid.NewGuid():N}.safetensors");
        try
        {
            TrainingConfig config = Fixtures.Config(epochs: 3);
            float[] oracle = Fixtures.PlainTrainer(config);
            TrainingSession first = Fixtures.Session(config);
            var stopHere = new StopAfter(10);
            await using (LocalTraining run = LocalTraining.Start(first, 2, stopHere, new CheckpointPolicy(path, EverySteps: 3), serverShards: 3))
            {
                await Task.WhenAny(stopHere.Reached, run.Completion).Unwrap().WaitAsync(TimeSpan.FromMinutes(2));
            }
            // The run is stopped past step 10: its last checkpoint, gathered from the shards, is of a step before the end.
            TrainingSession resumed = Fixtures.Session(config);
            resumed.RestoreCheckpoint(path);
            Assert.InRange(resumed.GlobalStep, 3, resumed.TotalSteps - 1);
            long from = resumed.GlobalStep;
            await using (LocalTraining run = LocalTraining.Start(resumed, 3, NullObserver.Instance, serverShards: 2))
            {
                await run.Completion.WaitAsync(TimeSpan.FromMinutes(2));
            }
            Fixtures.AssertSameBits(oracle, resumed.Parameters, $"3 shards checkpointed at step {from}, resumed with 2 shards and 3 workers");
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>The coordinator asks for an epoch's checkpoint only once the observers hold its report on disk.</summary>
    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    public async Task AnEpochsReportIsPersisted_BeforeItsCheckpointIsWritten(int serverShards)
    {
        string path = Path.Combine(Path.GetTempPath(), $"dbp-order-{Guid.NewGuid():N}.safetensors");
        try
        {
            TrainingSession session = Fixtures.Session(Fixtures.Config(epochs: 4));
            var order = new PersistOrder(path);
            await using (LocalTraining run = LocalTraining.Start(session, 2, order, new CheckpointPolicy(path), serverShards: serverShards))
            {
                await run.Completion.WaitAsync(TimeSpan.FromMinutes(2));
            }
            Assert.Equal(4, order.Persisted.Count);
            Assert.All(order.Persisted, p => Assert.True(p.OnDisk < p.Reported, $"when the report of step {p.Reported} was persisted the checkpoint on disk was of step {p.OnDisk}"));
            Assert.Equal(session.GlobalStep.ToString(System.Globalization.CultureInfo.InvariantCulture), Models.SafeTensors.ReadMetadata(path)["global_step"]);
        }
        finally
        {
            File.Delete(path);
        }
    }

    private sealed class PersistOrder(string checkpoint) : ITrainingObserver
    {
        private long _lastReported;

        /// <summary>For each persist: the step of the epoch last reported, and of the checkpoint then on disk (−1: none).</summary>
        public System.Collections.Concurrent.ConcurrentQueue<(long Reported, long OnDisk)> Persisted { get; } = new();

        public void StepCompleted(StepReport report)
        {
        }

        public void EpochCompleted(EpochReport report) => Volatile.Write(ref _lastReported, report.Step);

        public void Persist() => Persisted.Enqueue((Volatile.Read(ref _lastReported), File.Exists(checkpoint)
            ? long.Parse(Models.SafeTensors.ReadMetadata(checkpoint)["global_step"], System.Globalization.CultureInfo.InvariantCulture)
            : -1));
    }

    private sealed class StopAfter(long step) : ITrainingObserver
    {
        private readonly TaskCompletionSource<TrainingOutcome> _reached = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public Task<TrainingOutcome> Reached => _reached.Task;

        public void StepCompleted(StepReport report)
        {
            if (report.GlobalStep >= step)
            {
                _reached.TrySetResult(new TrainingOutcome(report.GlobalStep, []));
            }
        }

        public void EpochCompleted(EpochReport report)
        {
        }
    }

    [Fact]
    public async Task EveryMessageThroughTheSerializer_GivesTheSameBits()
    {
        // serialize-messages makes Akka serialize and deserialize every message it delivers, as a remote
        // hop would; any type without the binary serializer would fail or fall back here.
        Config verify = ConfigurationFactory.ParseString("akka.actor.serialize-messages = on\nakka.actor.serialize-creators = off");
        TrainingSession session = await TrainWithActors(3, overrides: verify);
        Fixtures.AssertSameBits(Oracle, session.Parameters, "3 workers, serialize-messages = on");
    }

    /// <summary>
    /// With 2 workers the update is replicated (a copy of θ per thread): the killed worker's thread keeps its copy up to
    /// date, and the worker added in its place computes on it.
    /// </summary>
    [Theory]
    [InlineData(3, "auto")]
    [InlineData(2, "auto")]
    [InlineData(3, "replicated")]
    public async Task WorkerKilledMidEpoch_AndOneAddedMidEpoch_GivesTheSameBits(int workers, string update)
    {
        // Longer than the other runs, so the added worker has steps left to join however loaded the machine.
        TrainingConfig config = Fixtures.Config(epochs: 12);
        float[] oracle = Fixtures.PlainTrainer(config);
        var recorder = new RecordingObserver();
        string added = $"worker-{workers + 1}";
        TrainingSession session = await TrainWithActors(workers, config: config, overrides: ConfigurationFactory.ParseString($"dbp.update-layout = {update}"),
            observerFactory: run => new ChaosObserver(run, recorder, killAtStep: 10, addAtStep: 15));
        Fixtures.AssertSameBits(oracle, session.Parameters, $"worker-2 killed at step 10, {added} added at step 15");
        Assert.Contains("worker-2", recorder.Epochs[0].WorkerStepsPerSecond!.Keys);
        Assert.DoesNotContain("worker-2", recorder.Epochs[^1].WorkerStepsPerSecond!.Keys);
        Assert.Contains(recorder.Epochs, e => e.WorkerStepsPerSecond!.GetValueOrDefault(added) > 0);
    }

    /// <summary>
    /// Local steps: 5 replicas, rounds of 3 steps (7 steps per epoch: rounds of 3, 3 and 1), with the config's Adam
    /// inside and Nesterov outside; with <paramref name="overlap"/> each round is dealt ahead, stale by one round.
    /// </summary>
    private static TrainingConfig LocalStepsConfig(int epochs = 3, bool overlap = false) => Fixtures.Config(epochs) with
    {
        LocalSteps = new LocalStepsSettings { Replicas = 5, Steps = 3, OuterOverlap = overlap },
    };

    [Theory]
    [InlineData(1, false, false)]
    [InlineData(2, false, false)]
    [InlineData(3, true, false)]
    [InlineData(1, false, true)]
    [InlineData(2, true, true)]
    [InlineData(3, false, true)]
    public async Task LocalSteps_AnyNumberOfWorkers_GivesThePlainTrainersBits(int workers, bool serializeEveryMessage, bool overlap)
    {
        TrainingConfig config = LocalStepsConfig(overlap: overlap);
        float[] oracle = Fixtures.PlainTrainer(config);
        Config? verify = serializeEveryMessage ? ConfigurationFactory.ParseString("akka.actor.serialize-messages = on\nakka.actor.serialize-creators = off") : null;
        var recorder = new RecordingObserver();
        TrainingSession session = await TrainWithActors(workers, recorder, verify, config: config);
        Assert.Equal(session.TotalSteps, session.GlobalStep);
        Assert.Equal(3 * 3, recorder.Steps); // one update per round
        Fixtures.AssertSameBits(oracle, session.Parameters, $"{workers} workers, local steps{(overlap ? ", overlapped" : "")}");
        Assert.NotEqual(Oracle, session.Parameters);
        if (overlap)
        {
            Assert.NotEqual(Fixtures.PlainTrainer(LocalStepsConfig()), session.Parameters);
        }
    }

    /// <summary>
    /// With overlap the killed worker's replicas of the round in flight are dealt to the others with their starts
    /// (the server's copies of their previous values), and the newcomer's share is dealt unlike the round dealt ahead.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task LocalSteps_WorkerKilledMidEpoch_AndOneAdded_GivesTheSameBits(bool overlap)
    {
        TrainingConfig config = LocalStepsConfig(epochs: 12, overlap: overlap);
        float[] oracle = Fixtures.PlainTrainer(config);
        var recorder = new RecordingObserver();
        TrainingSession session = await TrainWithActors(3, config: config, observerFactory: run => new ChaosObserver(run, recorder, killAtStep: 10, addAtStep: 17));
        Fixtures.AssertSameBits(oracle, session.Parameters, "local steps, worker-2 killed after step 10, worker-4 added after step 17");
        Assert.DoesNotContain("worker-2", recorder.Epochs[^1].WorkerStepsPerSecond!.Keys);
        Assert.Contains(recorder.Epochs, e => e.WorkerStepsPerSecond!.GetValueOrDefault("worker-4") > 0);
    }

    [Fact]
    public async Task EpochReports_CarryWorkerCountAndTiming()
    {
        var recorder = new RecordingObserver();
        TrainingSession session = await TrainWithActors(2, recorder);
        Assert.Equal(session.Config.Epochs, recorder.Epochs.Count);
        EpochReport last = recorder.Epochs[^1];
        Assert.Equal(2, last.Workers);
        Assert.NotNull(last.WaitingForSlowest);
        Assert.True(last.ServerTime > TimeSpan.Zero);
        Assert.Equal(0, last.DroppedGradients);
        Assert.NotNull(last.TestAccuracy);
        Assert.Equal(session.TotalSteps, recorder.Steps);
    }

    [Fact]
    public async Task ResumingFromACheckpointWithActors_GivesTheSameBits()
    {
        string path = Path.Combine(Path.GetTempPath(), $"dbp-actor-ck-{Guid.NewGuid():N}.safetensors");
        try
        {
            TrainingSession first = Fixtures.Session(Fixtures.Config());
            using (var trainer = new Trainer(first))
            {
                for (int i = 0; i < 9; i++)
                {
                    trainer.Step(out _);
                }
            }
            first.SaveCheckpoint(path);
            TrainingSession resumed = Fixtures.Session(Fixtures.Config());
            resumed.RestoreCheckpoint(path);
            await using (LocalTraining run = LocalTraining.Start(resumed, 2, NullObserver.Instance))
            {
                await run.Completion.WaitAsync(TimeSpan.FromMinutes(2));
            }
            Fixtures.AssertSameBits(Oracle, resumed.Parameters, "resumed at step 9 with 2 workers");
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public async Task EarlyStoppingWithWorkers_StopsAtThePlainTrainersEpoch_WithItsBits(int workers)
    {
        // Weak classes (a small shift) on few rows: the validation loss turns up within a few epochs.
        TrainingConfig config = Fixtures.Config(epochs: 40) with { ValidationFraction = 0.3, EarlyStopping = 2, Optimizer = new Optimizers.OptimizerSettings { Kind = Optimizers.OptimizerKind.Adam, LearningRate = 0.03f } };
        Data.Dataset data = Fixtures.Blobs(200, shift: 0.3f);
        TrainingSession plain = TrainingSession.Prepare(config, data, null, 0.2);
        using (var trainer = new Trainer(plain))
        {
            trainer.Run(NullObserver.Instance);
        }
        Assert.True(plain.StoppedEarly, "the plain run should stop early");

        string path = Path.Combine(Path.GetTempPath(), $"dbp-actor-es-{Guid.NewGuid():N}.safetensors");
        try
        {
            TrainingSession session = TrainingSession.Prepare(config, data, null, 0.2);
            var recorder = new RecordingObserver();
            // Per-step checkpoints that fall on every epoch's last step: skipped there, the epoch's own follows.
            await using (LocalTraining run = LocalTraining.Start(session, workers, recorder, new CheckpointPolicy(path, EverySteps: session.StepsPerEpoch)))
            {
                await run.Completion.WaitAsync(TimeSpan.FromMinutes(2));
            }
            Assert.Equal((plain.GlobalStep, plain.Tracker!.BestEpoch), (session.GlobalStep, session.Tracker!.BestEpoch));
            Assert.True(recorder.Epochs[^1].StoppedEarly);
            Fixtures.AssertSameBits(plain.Parameters, session.Parameters, $"last epoch, {workers} workers");
            Fixtures.AssertSameBits(plain.ToModel(KeptModel.Best).Parameters, session.ToModel(KeptModel.Best).Parameters, $"best epoch, {workers} workers");
            // The server's last checkpoint holds the stopped record: resuming from it trains nothing more.
            TrainingSession resumed = TrainingSession.Prepare(config, data, null, 0.2);
            resumed.RestoreCheckpoint(path);
            Assert.True(resumed.IsFinished);
            Fixtures.AssertSameBits(plain.ToModel(KeptModel.Best).Parameters, resumed.ToModel(KeptModel.Best).Parameters, "best epoch from the checkpoint");
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public async Task WorkerStepCounts_CountEveryStepEachWorkerComputed()
    {
        // Two workers and eight chunks: both compute part of every step, so each has every step.
        TrainingSession session = Fixtures.Session();
        await using LocalTraining run = LocalTraining.Start(session, 2, NullObserver.Instance);
        await run.Completion.WaitAsync(TimeSpan.FromMinutes(2));
        WorkerStepCounts counts = await run.System.ActorSelection(Cluster.ClusterNaming.ParameterServerPath)
            .Ask<WorkerStepCounts>(GetWorkerStepCounts.Instance, TimeSpan.FromSeconds(10));
        Assert.Equal(new Dictionary<string, long> { ["worker-1"] = session.TotalSteps, ["worker-2"] = session.TotalSteps }, counts.Steps);
    }

    /// <summary>Forwards to an observer chosen once the run (and so its actor system) exists.</summary>
    private sealed class RelayObserver : ITrainingObserver
    {
        public ITrainingObserver Inner { get; set; } = NullObserver.Instance;
        public void StepCompleted(StepReport report) => Inner.StepCompleted(report);
        public void EpochCompleted(EpochReport report) => Inner.EpochCompleted(report);
    }

    private sealed class ThreadRecorder : ITrainingObserver
    {
        public List<string?> Names { get; } = [];
        public void StepCompleted(StepReport report) => Names.Add(Thread.CurrentThread.Name);
        public void EpochCompleted(EpochReport report) { }
    }

    private sealed class RecordingObserver : ITrainingObserver
    {
        public List<EpochReport> Epochs { get; } = [];
        public long Steps { get; private set; }
        public void StepCompleted(StepReport report) => Steps++;
        public void EpochCompleted(EpochReport report) => Epochs.Add(report);
    }

    /// <summary>
    /// Kills worker-2 once step <paramref name="killAtStep"/> is applied and adds a worker at <paramref name="addAtStep"/>
    /// (the first update reaching them: a round of local steps covers several steps).
    /// </summary>
    private sealed class ChaosObserver(LocalTraining run, ITrainingObserver inner, long killAtStep, long addAtStep) : ITrainingObserver
    {
        private bool _killed, _added;

        public void StepCompleted(StepReport report)
        {
            if (report.GlobalStep >= killAtStep && !_killed)
            {
                _killed = true;
                run.System.ActorSelection("/user/coordinator/worker-2").Tell(Kill.Instance);
            }
            if (report.GlobalStep >= addAtStep && !_added)
            {
                _added = true;
                run.Coordinator.Tell(new AddWorker());
            }
            inner.StepCompleted(report);
        }

        public void EpochCompleted(EpochReport report) => inner.EpochCompleted(report);
    }
}
