using Akka.Actor;
using Akka.TestKit;
using Akka.TestKit.Xunit2;
using DistributedBackprop.Actors.Serialization;
using DistributedBackprop.Engine;
using DistributedBackprop.Kernels;
using DistributedBackprop.Network;
using Xunit.Abstractions;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Actors.Tests;

/// <summary>
/// The parameter server's protocol, driven by TestProbes standing in for the coordinator and workers.
/// The probes compute real gradients with the engine, so the server's arithmetic is checked too.
/// </summary>
public sealed class ParameterServerProtocolTests(ITestOutputHelper output) : TestKit(LocalTraining.LoadConfig(), output: output)
{
    private static readonly TimeSpan Quiet = TimeSpan.FromMilliseconds(300);

    private sealed class Harness
    {
        public required TrainingSession Session { get; init; }
        public required TestProbe Coordinator { get; init; }
        public required IActorRef Server { get; init; }
        public required IUpdatePartComputer Computer { get; init; }

        /// <summary>
        /// What an honest worker would answer to <paramref name="work"/> (with local steps, each node's replica figures
        /// too; with --outer-overlap each replica on its own, computed by <paramref name="computer"/>, which keeps that
        /// worker's replica values).
        /// </summary>
        public List<GradientsComputed> Answer(ComputeGradients work, IUpdatePartComputer? computer = null)
        {
            TrainingConfig config = Session.Config;
            EpochPlan plan = EpochPlan.Create(Session.Train.Rows, config.BatchSize, config.Seed, work.Epoch);
            var answers = new List<GradientsComputed>();
            IEnumerable<TreeNode> nodes = config.LocalSteps is { OuterOverlap: true }
                ? Enumerable.Range(work.ChunkLo, work.ChunkHi - work.ChunkLo).Select(replica => new TreeNode(replica, 1))
                : ChunkTree.Decompose(work.ChunkLo, work.ChunkHi, config.UpdateParts());
            foreach (TreeNode node in nodes)
            {
                var gradient = new float[Session.Architecture.ParameterCount];
                var parts = new BatchResult[UpdateParts.FiguresPerNode(config, node)];
                BatchResult result = (computer ?? Computer).Compute(work.Parameters, plan, work.StepInEpoch, node, gradient, parts, work.Start);
                answers.Add(new GradientsComputed(work.Step, node, result, gradient, 0) { PartResults = parts });
            }
            return answers;
        }
    }

    /// <summary>A registration that states exactly what the server computes with.</summary>
    private static RegisterWorker Credentials(TrainingSession session, string name) =>
        new(name, WireFormat.ProtocolVersion, session.DataHash, session.Architecture.Describe(), NumericFingerprint.Value);

    private Harness Start(params TestProbe[] workers) => Start(null, workers);

    private Harness Start(StepDeadline? deadline, params TestProbe[] workers) => Start(deadline, null, workers);

    private Harness Start(StepDeadline? deadline, TrainingConfig? config, params TestProbe[] workers) => Start(deadline, config, 1, workers);

    private Harness Start(StepDeadline? deadline, TrainingConfig? config, int shards, params TestProbe[] workers) => Start(deadline, config, shards, null, workers);

    /// <param name="threads">local mode's threads: the server runs its update on them and takes each gradient's bound from its worker.</param>
    private Harness Start(StepDeadline? deadline, TrainingConfig? config, int shards, ComputeThreads? threads, params TestProbe[] workers)
    {
        TrainingSession session = Fixtures.Session(config);
        TestProbe coordinator = CreateTestProbe("coordinator");
        threads?.Install(Sys);
        IActorRef server = Sys.ActorOf(ParameterServer.Props(session, coordinator.Ref, deadline, shards, threads), "parameter-server");
        for (int i = 0; i < workers.Length; i++)
        {
            server.Tell(Credentials(session, $"worker-{i + 1}"), workers[i].Ref);
            workers[i].ExpectMsg<WorkerAccepted>(a => a.WorkerName == $"worker-{i + 1}");
            coordinator.ExpectMsg<WorkerJoined>(j => j.Workers == i + 1);
        }
        return new Harness { Session = session, Coordinator = coordinator, Server = server, Computer = UpdateParts.CreateComputer(session.Config, session.Architecture, session.Train) };
    }

    private static float[] PlainTrainerAfter(int steps)
    {
        TrainingSession session = Fixtures.Session();
        using var trainer = new Trainer(session);
        for (int i = 0; i < steps; i++)
        {
            trainer.Step(out _);
        }
        return session.Parameters;
    }

    private void Deliver(Harness h, TestProbe worker, ComputeGradients work)
    {
        foreach (GradientsComputed answer in h.Answer(work))
        {
            h.Server.Tell(answer, worker.Ref);
        }
    }

    [Fact]
    public void Server_WaitsForEveryChunk_ThenReducesUpdatesAndBroadcastsToAllWorkers()
    {
        TestProbe w1 = CreateTestProbe(), w2 = CreateTestProbe();
        Harness h = Start(w1, w2);
        h.Server.Tell(new TrainEpoch(0), h.Coordinator.Ref);
        ComputeGradients a = w1.ExpectMsg<ComputeGradients>(), b = w2.ExpectMsg<ComputeGradients>();
        Assert.Equal((0L, 0, 4), (a.Step, a.ChunkLo, a.ChunkHi));
        Assert.Equal((0L, 4, 8), (b.Step, b.ChunkLo, b.ChunkHi));
        Assert.Same(a.Parameters, b.Parameters);

        Deliver(h, w1, a);
        h.Coordinator.ExpectNoMsg(Quiet); // the server must wait for worker-2's chunks 4–8 of step 0
        w1.ExpectNoMsg(TimeSpan.Zero);

        Deliver(h, w2, b);
        StepApplied applied = h.Coordinator.ExpectMsg<StepApplied>();
        Assert.Equal((1L, 0, 2), (applied.GlobalStep, applied.StepInEpoch, applied.Workers));
        ComputeGradients next1 = w1.ExpectMsg<ComputeGradients>(), next2 = w2.ExpectMsg<ComputeGradients>();
        Assert.Equal(1, next1.Step);
        Assert.Equal(1, next2.Step);
        Fixtures.AssertSameBits(PlainTrainerAfter(1), next1.Parameters, "parameters broadcast after step 0");
    }

    /// <summary>
    /// A worker as it is with parameter shards: the shard map, θ assembled from the shards' pieces, the step's
    /// work from the server; returns the shards and θ for the step.
    /// </summary>
    private (IActorRef[] Shards, float[] Theta, ComputeGradients Work) ShardedWork(Harness h, TestProbe worker, int shards, bool mapKnown = false)
    {
        ShardMap? map = null;
        var plan = new ShardPlan(h.Session.Parameters.Length, shards);
        var assembly = new ThetaAssembly(h.Session.Architecture, plan);
        var refs = new IActorRef[shards];
        ComputeGradients? work = null;
        while ((map is null && !mapKnown) || work is null || assembly.WholeStep != work.Step)
        {
            object message = worker.ReceiveOne(TimeSpan.FromSeconds(10)) ?? throw new TimeoutException("the worker got nothing");
            switch (message)
            {
                case ShardMap m: map = m; break;
                case ParameterSlice m:
                    Assert.True(assembly.Take(m.Shard, m.Step, m.Offset, m.Values), $"shard {m.Shard} sent a piece of {m.Values.Length} at {m.Offset} for step {m.Step}");
                    Assert.True(refs[m.Shard] is null || refs[m.Shard].Equals(worker.LastSender));
                    refs[m.Shard] = worker.LastSender;
                    break;
                case ComputeGradients m: work = m; break;
            }
        }
        for (int shard = 0; shard < shards; shard++)
        {
            Assert.True(map is null || map.Shards[shard].Path == Akka.Serialization.Serialization.SerializedActorPath(refs[shard]));
        }
        Assert.Empty(work.Parameters); // θ comes from the shards, not with the work
        return (refs, assembly.Theta, work);
    }

    /// <summary>An honest sharded answer: each shard its pieces of each node, the server the figures.</summary>
    private static void DeliverSharded(Harness h, TestProbe worker, IActorRef[] shards, float[] theta, ComputeGradients work)
    {
        foreach (GradientsComputed answer in h.Answer(work with { Parameters = theta }))
        {
            SendPieces(h, worker, shards, answer);
            h.Server.Tell(answer with { Gradient = [] }, worker.Ref);
        }
    }

    /// <summary>A node's gradient to the shards in the pieces a worker sends (<see cref="ShardPlan.Pieces"/>), the last first; those of <paramref name="skipShard"/> lost.</summary>
    private static void SendPieces(Harness h, TestProbe worker, IActorRef[] shards, GradientsComputed answer, int skipShard = -1)
    {
        var plan = new ShardPlan(h.Session.Parameters.Length, shards.Length);
        foreach (var (shard, start, count) in plan.Pieces(h.Session.Architecture).Reverse())
        {
            if (shard != skipShard)
            {
                shards[shard].Tell(new GradientSlice(answer.Step, answer.Node, start - plan.Start(shard), answer.Gradient.AsSpan(start, count).ToArray()), worker.Ref);
            }
        }
    }

    [Fact]
    public async Task Shards_StrangersSlicesAndSums_AreRefused_AndTheEpochHasThePlainTrainersBits()
    {
        TestProbe worker = CreateTestProbe(), stranger = CreateTestProbe();
        Harness h = Start(null, null, 2, worker);
        h.Server.Tell(new TrainEpoch(0), h.Coordinator.Ref);
        var (shards, theta, work) = ShardedWork(h, worker, 2);
        // A stranger (not a registered worker) covers every chunk of the step with NaN first, and claims shard 0
        // has summed: the shards drop its slices, the server refuses the sum; were either taken, the honest
        // slices would be duplicates and the step NaN.
        var plan = new ShardPlan(h.Session.Parameters.Length, 2);
        foreach (var (shard, start, count) in plan.Pieces(h.Session.Architecture))
        {
            shards[shard].Tell(new GradientSlice(work.Step, new TreeNode(0, 8), start - plan.Start(shard), Enumerable.Repeat(float.NaN, count).ToArray()), stranger.Ref);
        }
        h.Server.Tell(new SliceReduced(work.Step, 0, true), stranger.Ref);
        for (int step = 0; step < h.Session.StepsPerEpoch; step++)
        {
            if (step > 0)
            {
                (shards, theta, work) = ShardedWork(h, worker, 2, mapKnown: true);
            }
            Assert.Equal(step, work.Step);
            DeliverSharded(h, worker, shards, theta, work);
            h.Coordinator.ExpectMsg<StepApplied>(a => a.GlobalStep == step + 1);
        }
        EpochTrained epoch = h.Coordinator.ExpectMsg<EpochTrained>();
        Fixtures.AssertSameBits(PlainTrainerAfter(h.Session.StepsPerEpoch), epoch.Parameters, "an epoch on 2 shards, gathered from them");
        Fixtures.AssertSameBits(epoch.Parameters, h.Session.Parameters, "the session after the epoch's collect");
        ServerStatistics statistics = await h.Server.Ask<ServerStatistics>(GetStatistics.Instance);
        Assert.Equal(1, statistics.Unauthorized);
        Assert.False(statistics.Failed);
    }

    /// <summary>
    /// A shard that lacks parts the server has (their slices were lost: a worker died between its slices and its
    /// report) is asked what it lacks after a deadline, and the server has exactly those parts computed again:
    /// the step completes with the plain trainer's bits instead of stopping the run.
    /// </summary>
    [Fact]
    public void Shards_APartLostOnItsWayToOneShard_IsComputedAgain_AndTheStepKeepsItsBits()
    {
        TestProbe worker = CreateTestProbe();
        Harness h = Start(new StepDeadline(TimeSpan.FromMilliseconds(300)), null, 2, worker);
        h.Server.Tell(new TrainEpoch(0), h.Coordinator.Ref);
        var (shards, theta, work) = ShardedWork(h, worker, 2);
        foreach (var (lo, hi) in new[] { (0, 4), (4, 8) })
        {
            foreach (GradientsComputed answer in h.Answer(work with { Parameters = theta, ChunkLo = lo, ChunkHi = hi }))
            {
                SendPieces(h, worker, shards, answer, skipShard: lo == 4 ? 1 : -1); // [4, 8) lost on its way to shard 1
                h.Server.Tell(answer with { Gradient = [] }, worker.Ref);
            }
        }
        ComputeGradients again = worker.ExpectMsg<ComputeGradients>(TimeSpan.FromSeconds(10));
        Assert.Equal((0L, 4, 8), (again.Step, again.ChunkLo, again.ChunkHi));
        h.Coordinator.ExpectNoMsg(TimeSpan.Zero); // nothing applied before the missing part is in
        DeliverSharded(h, worker, shards, theta, again);
        h.Coordinator.ExpectMsg<StepApplied>(a => a.GlobalStep == 1, TimeSpan.FromSeconds(10));
        var (_, next, _) = ShardedWork(h, worker, 2, mapKnown: true);
        Fixtures.AssertSameBits(PlainTrainerAfter(1), next, "θ after a step whose part was computed again for one shard");
    }

    [Fact]
    public void Shards_ASliceOfTheWrongLength_StopsTraining_AndNothingIsApplied()
    {
        TestProbe worker = CreateTestProbe();
        Harness h = Start(null, null, 3, worker);
        h.Server.Tell(new TrainEpoch(0), h.Coordinator.Ref);
        var (shards, theta, work) = ShardedWork(h, worker, 3);
        shards[1].Tell(new GradientSlice(work.Step, new TreeNode(0, 8), 0, new float[5]), worker.Ref);
        TrainingFailed failure = h.Coordinator.ExpectMsg<TrainingFailed>();
        Assert.Contains("a gradient piece of 5 values at 0", failure.Reason);
        Assert.False(failure.Restartable);
        // Honest gradients afterwards change nothing: no step is applied.
        DeliverSharded(h, worker, shards, theta, work);
        h.Coordinator.ExpectNoMsg(Quiet);
    }

    [Fact]
    public void Shards_AShardsDeath_StopsTheRun_AsRestartable()
    {
        TestProbe worker = CreateTestProbe();
        Harness h = Start(null, null, 2, worker);
        h.Server.Tell(new TrainEpoch(0), h.Coordinator.Ref);
        var (shards, _, _) = ShardedWork(h, worker, 2);
        shards[1].Tell(Kill.Instance);
        TrainingFailed failure = h.Coordinator.ExpectMsg<TrainingFailed>();
        Assert.True(failure.Restartable);
        Assert.Contains("parameter shard 1", failure.Reason);
    }

    [Fact]
    public async Task StaleAndDuplicateGradients_AreDroppedAndCounted_NeverAppliedTwice()
    {
        TestProbe w1 = CreateTestProbe(), w2 = CreateTestProbe();
        Harness h = Start(w1, w2);
        h.Server.Tell(new TrainEpoch(0), h.Coordinator.Ref);
        ComputeGradients a = w1.ExpectMsg<ComputeGradients>(), b = w2.ExpectMsg<ComputeGradients>();
        List<GradientsComputed> first = h.Answer(a);
        h.Server.Tell(first[0], w1.Ref);
        h.Server.Tell(first[0], w1.Ref); // duplicate within the step
        Deliver(h, w2, b);
        h.Coordinator.ExpectMsg<StepApplied>(s => s.GlobalStep == 1);
        w1.ExpectMsg<ComputeGradients>(m => m.Step == 1);
        ComputeGradients step1 = w2.ExpectMsg<ComputeGradients>(m => m.Step == 1);

        h.Server.Tell(first[0], w1.Ref); // stale: step 0 is over
        Deliver(h, w2, step1);
        h.Coordinator.ExpectNoMsg(Quiet); // step 1 still lacks worker-1's chunks; a stale step-0 gradient must not complete it

        var stats = await h.Server.Ask<ServerStatistics>(GetStatistics.Instance);
        Assert.Equal(1, stats.DuplicatesDropped);
        Assert.Equal(1, stats.StaleDropped);
        Assert.Equal(1, stats.GlobalStep);
        Fixtures.AssertSameBits(PlainTrainerAfter(1), step1.Parameters, "after dropping stale and duplicate gradients");
    }

    [Fact]
    public async Task GradientOfWrongLength_StopsTraining_AndKeepsTheLastGoodParameters()
    {
        TestProbe w1 = CreateTestProbe();
        Harness h = Start(w1);
        h.Server.Tell(new TrainEpoch(0), h.Coordinator.Ref);
        ComputeGradients work = w1.ExpectMsg<ComputeGradients>();
        float[] before = (float[])h.Session.Parameters.Clone();
        h.Server.Tell(new GradientsComputed(0, new TreeNode(0, 8), new BatchResult(1, 0, 24), new float[5], 0), w1.Ref);
        TrainingFailed failure = h.Coordinator.ExpectMsg<TrainingFailed>();
        Assert.Contains("worker-1 sent a gradient of 5 values for step 0", failure.Reason);
        // Honest gradients arriving afterwards change nothing.
        Deliver(h, w1, work);
        h.Coordinator.ExpectNoMsg(Quiet);
        Assert.True((await h.Server.Ask<ServerStatistics>(GetStatistics.Instance)).Failed);
        Fixtures.AssertSameBits(before, h.Session.Parameters, "parameters after a rejected gradient");
    }

    [Fact]
    public void PartResultsThatDoNotMatchTheNode_StopTraining_BeforeAnythingIsApplied()
    {
        // Synchronous steps carry no per-part figures: a worker that sends some speaks another protocol.
        TestProbe w1 = CreateTestProbe();
        Harness h = Start(w1);
        h.Server.Tell(new TrainEpoch(0), h.Coordinator.Ref);
        ComputeGradients work = w1.ExpectMsg<ComputeGradients>();
        float[] before = (float[])h.Session.Parameters.Clone();
        GradientsComputed honest = h.Answer(work)[0];
        h.Server.Tell(honest with { PartResults = [new BatchResult(1, 0, 3)] }, w1.Ref);
        Assert.Contains("worker-1 sent 1 part results with node [0,8) for step 0; it covers 0", h.Coordinator.ExpectMsg<TrainingFailed>().Reason);
        Fixtures.AssertSameBits(before, h.Session.Parameters, "parameters after rejected part results");
    }

    [Fact]
    public void LocalSteps_ARoundIsOneUpdate_WithEveryReplicasFigures_AndAMissingOneStopsTraining()
    {
        TrainingConfig config = Fixtures.Config() with { LocalSteps = new LocalStepsSettings { Replicas = 3, Steps = 4 } };
        TestProbe w1 = CreateTestProbe();
        Harness h = Start(null, config, w1);
        h.Server.Tell(new TrainEpoch(0), h.Coordinator.Ref);
        ComputeGradients round = w1.ExpectMsg<ComputeGradients>();
        Assert.Equal((0, 3), (round.ChunkLo, round.ChunkHi));
        Deliver(h, w1, round);
        StepApplied applied = h.Coordinator.ExpectMsg<StepApplied>();
        Assert.Equal(4, applied.GlobalStep); // one update covered four steps
        Assert.Equal(3, applied.Round!.ReplicaLosses.Count);
        Assert.True(applied.Round.OuterStepNorm > 0);

        // The next round's answer without its last replica's figures: the server stops before applying anything.
        ComputeGradients next = w1.ExpectMsg<ComputeGradients>();
        Assert.Equal(4, next.Step);
        float[] before = (float[])h.Session.Parameters.Clone();
        List<GradientsComputed> answers = h.Answer(next);
        GradientsComputed last = answers[^1];
        foreach (GradientsComputed answer in answers.SkipLast(1))
        {
            h.Server.Tell(answer, w1.Ref);
        }
        h.Server.Tell(last with { PartResults = last.PartResults[..^1] }, w1.Ref);
        Assert.Contains($"worker-1 sent {last.PartResults.Length - 1} part results with node {last.Node} for step 4; it covers {last.PartResults.Length}", h.Coordinator.ExpectMsg<TrainingFailed>().Reason);
        Fixtures.AssertSameBits(before, h.Session.Parameters, "parameters after rejected part results");
    }

    /// <summary>
    /// --outer-overlap: round 1 goes out with round 0 (from the workers' own values); worker-1's answer to it that
    /// comes before round 0 is in is held, not dropped; worker-2's ahead work that could not be delivered is dealt
    /// again, with its start computed by the server, as soon as round 1 begins; and the two rounds give the plain
    /// trainer's bits. Round 1 completes without worker-1 being sent round 1 again: its held answer was used.
    /// </summary>
    [Fact]
    public void Overlap_EarlyAnswersAreHeld_AndAheadWorkThatWasNotDelivered_IsDealtAgainWithItsStart()
    {
        TrainingConfig config = Fixtures.Config() with { LocalSteps = new LocalStepsSettings { Replicas = 2, Steps = 2, OuterOverlap = true } };
        TestProbe w1 = CreateTestProbe(), w2 = CreateTestProbe();
        // A deadline far away: nothing here may be dealt again because time passed (a busy machine must not
        // turn this into a deadline test), so the round can only complete from the held answer and the re-deal.
        Harness h = Start(new StepDeadline(TimeSpan.FromMinutes(5)), config, w1, w2);
        IUpdatePartComputer first = Computer(h.Session), second = Computer(h.Session);
        h.Server.Tell(new TrainEpoch(0), h.Coordinator.Ref);
        ComputeGradients round0A = w1.ExpectMsg<ComputeGradients>(), round1A = w1.ExpectMsg<ComputeGradients>();
        ComputeGradients round0B = w2.ExpectMsg<ComputeGradients>(), round1B = w2.ExpectMsg<ComputeGradients>();
        Assert.Equal((0L, RoundStart.FromParameters, 2L, RoundStart.MinusOwnChange), (round0A.Step, round0A.Start, round1A.Step, round1A.Start));
        Assert.Equal((1, 2, 2L, RoundStart.MinusOwnChange), (round1B.ChunkLo, round1B.ChunkHi, round1B.Step, round1B.Start));
        // Round 1's base is round 0's θ, which each worker was just sent: the ahead work does not carry it again.
        Assert.Equal((0, 0), (round1A.Parameters.Length, round1B.Parameters.Length));
        h.Server.Tell(new DeliveryFailed(w2.Ref, round1B, "connection refused"));

        Tell(h, w1, h.Answer(round0A, first));
        Tell(h, w1, h.Answer(round1A with { Parameters = round0A.Parameters }, first));
        Tell(h, w2, h.Answer(round0B, second));
        h.Coordinator.ExpectMsg<StepApplied>(s => s.GlobalStep == 2);
        ComputeGradients again = w2.ExpectMsg<ComputeGradients>();
        Assert.Equal((2L, 1, 2, RoundStart.FromParameters), (again.Step, again.ChunkLo, again.ChunkHi, again.Start));
        ComputeGradients round2A = w1.ExpectMsg<ComputeGradients>(); // dealt ahead; round 1 is not sent again
        Assert.Equal((4L, h.Session.Architecture.ParameterCount), (round2A.Step, round2A.Parameters.Length)); // θ_1: news to the worker
        Tell(h, w2, h.Answer(again, second));
        h.Coordinator.ExpectMsg<StepApplied>(s => s.GlobalStep == 4);

        TrainingSession plain = Fixtures.Session(config);
        using (var trainer = new Trainer(plain))
        {
            trainer.Step(out _);
            trainer.Step(out _);
        }
        Fixtures.AssertSameBits(plain.Parameters, h.Session.Parameters, "two overlapped rounds");
    }

    private static IUpdatePartComputer Computer(TrainingSession session) =>
        UpdateParts.CreateComputer(session.Config, session.Architecture, session.Train, UpdateParts.CreateChanges(session.Config, session.Architecture.ParameterCount));

    private static void Tell(Harness h, TestProbe worker, List<GradientsComputed> answers)
    {
        foreach (GradientsComputed answer in answers)
        {
            h.Server.Tell(answer, worker.Ref);
        }
    }

    [Theory]
    [InlineData(float.NaN)]
    [InlineData(float.PositiveInfinity)]
    public void NonFiniteGradient_StopsTraining_WithAClearReason(float poison)
    {
        TestProbe w1 = CreateTestProbe();
        Harness h = Start(w1);
        h.Server.Tell(new TrainEpoch(0), h.Coordinator.Ref);
        ComputeGradients work = w1.ExpectMsg<ComputeGradients>();
        GradientsComputed honest = h.Answer(work).Single();
        float[] poisoned = (float[])honest.Gradient.Clone();
        poisoned[17] = poison;
        float[] before = (float[])h.Session.Parameters.Clone();
        h.Server.Tell(honest with { Gradient = poisoned }, w1.Ref);
        Assert.Contains("non-finite gradient", h.Coordinator.ExpectMsg<TrainingFailed>().Reason);
        Fixtures.AssertSameBits(before, h.Session.Parameters, "parameters after a non-finite gradient");
    }

    /// <summary>
    /// Bounded gradients are added and applied in one pass through the update's own scratch, so with two nodes (the
    /// only addition is the root's) the workers' buffers are not written (the two passes add into the left one). A peer's bound is the server's own pass (the wire has
    /// none); in local mode it is the worker's. In local mode without one the update checks first, and writes the sum:
    /// the control showing the buffers can tell the two paths apart.
    /// </summary>
    [Theory]
    [InlineData(false, false, false)]
    [InlineData(true, true, false)]
    [InlineData(true, false, true)]
    public void BoundedGradients_AreAddedAndApplied_InOnePass_WithTheBitsOfThePlainTrainer(bool local, bool workersBound, bool sumWritten)
    {
        var threads = local ? new ComputeThreads(2, "test-bounded") : null;
        OnThreads(threads, () => BoundedStep(threads, workersBound, sumWritten));
    }

    /// <summary>Runs <paramref name="test"/>, then stops the actor system before the threads its server ran on.</summary>
    private void OnThreads(ComputeThreads? threads, Action test)
    {
        try
        {
            test();
        }
        finally
        {
            Shutdown();
            threads?.Dispose();
        }
    }

    private void BoundedStep(ComputeThreads? threads, bool workersBound, bool sumWritten)
    {
        TestProbe w1 = CreateTestProbe(), w2 = CreateTestProbe();
        Harness h = Start(null, null, 1, threads, w1, w2);
        h.Server.Tell(new TrainEpoch(0), h.Coordinator.Ref);
        ComputeGradients a = w1.ExpectMsg<ComputeGradients>(), b = w2.ExpectMsg<ComputeGradients>();
        var sent = new List<(float[] Buffer, float[] Values)>();
        foreach (var (worker, work) in new[] { (w1, a), (w2, b) })
        {
            foreach (GradientsComputed answer in h.Answer(work))
            {
                sent.Add((answer.Gradient, (float[])answer.Gradient.Clone()));
                h.Server.Tell(workersBound ? answer with { Bound = FiniteValues.Bound(answer.Gradient) } : answer, worker.Ref);
            }
        }
        Assert.Equal(1, h.Coordinator.ExpectMsg<StepApplied>().GlobalStep);
        Fixtures.AssertSameBits(PlainTrainerAfter(1), w1.ExpectMsg<ComputeGradients>().Parameters, "parameters broadcast after step 0");
        Assert.Equal(2, sent.Count);
        bool written = sent.Any(s => !s.Buffer.Select(BitConverter.SingleToInt32Bits).SequenceEqual(s.Values.Select(BitConverter.SingleToInt32Bits)));
        Assert.Equal(sumWritten, written);
    }

    /// <summary>
    /// Each worker's gradient finite, their sum at element 17 +∞: bounds of 3e38 each prove nothing, so the update
    /// checks the sum in every slice before writing any, and the parameters stay. In local mode the same, and a
    /// worker's gradient with a NaN (which has no bound) too. (A peer's NaN is refused on arrival, above.)
    /// </summary>
    [Theory]
    [InlineData(false, 3e38f)]
    [InlineData(true, 3e38f)]
    [InlineData(true, float.NaN)]
    public void ANonFiniteSum_StopsTraining_BeforeAnyParameterIsWritten(bool local, float poison)
    {
        var threads = local ? new ComputeThreads(2, "test-poison") : null;
        OnThreads(threads, () => PoisonedStep(threads, poison));
    }

    private void PoisonedStep(ComputeThreads? threads, float poison)
    {
        TestProbe w1 = CreateTestProbe(), w2 = CreateTestProbe();
        Harness h = Start(null, null, 1, threads, w1, w2);
        h.Server.Tell(new TrainEpoch(0), h.Coordinator.Ref);
        ComputeGradients a = w1.ExpectMsg<ComputeGradients>(), b = w2.ExpectMsg<ComputeGradients>();
        float[] before = (float[])h.Session.Parameters.Clone();
        foreach (var (worker, work) in new[] { (w1, a), (w2, b) })
        {
            foreach (GradientsComputed answer in h.Answer(work))
            {
                float[] poisoned = (float[])answer.Gradient.Clone();
                poisoned[17] = poison;
                // As a local worker bounds it; a peer's bound is the server's own.
                h.Server.Tell(answer with { Gradient = poisoned, Bound = FiniteValues.Bound(poisoned) }, worker.Ref);
            }
        }
        Assert.Contains("the summed gradient is not finite", h.Coordinator.ExpectMsg<TrainingFailed>().Reason);
        Fixtures.AssertSameBits(before, h.Session.Parameters, "parameters after a sum that is not finite");
        Assert.Equal(0, h.Session.GlobalStep);
    }

    [Fact]
    public void AfterAFailure_NoCheckpointIsWritten_TheLastGoodOneStays()
    {
        TestProbe w1 = CreateTestProbe();
        Harness h = Start(w1);
        h.Server.Tell(new TrainEpoch(0), h.Coordinator.Ref);
        GradientsComputed honest = h.Answer(w1.ExpectMsg<ComputeGradients>()).Single();
        float[] poisoned = (float[])honest.Gradient.Clone();
        poisoned[3] = float.NaN;
        h.Server.Tell(honest with { Gradient = poisoned }, w1.Ref);
        h.Coordinator.ExpectMsg<TrainingFailed>();
        string path = Path.Combine(Path.GetTempPath(), $"dbp-failed-{Guid.NewGuid():N}.ckpt");
        h.Server.Tell(new SaveCheckpoint(path), h.Coordinator.Ref);
        Assert.Contains("is left as it was", h.Coordinator.ExpectMsg<TrainingFailed>().Reason);
        Assert.False(File.Exists(path));
    }

    [Fact]
    public void AOneWorkerRun_WhoseWorkIsLost_GetsItAgainAfterTheDeadline()
    {
        TestProbe only = CreateTestProbe();
        Harness h = Start(new StepDeadline(TimeSpan.FromMilliseconds(300)), only);
        h.Server.Tell(new TrainEpoch(0), h.Coordinator.Ref);
        ComputeGradients lost = only.ExpectMsg<ComputeGradients>(); // its answer never arrives
        ComputeGradients again = only.ExpectMsg<ComputeGradients>(TimeSpan.FromSeconds(5));
        Assert.Equal((lost.Step, lost.ChunkLo, lost.ChunkHi), (again.Step, again.ChunkLo, again.ChunkHi));
        Deliver(h, only, again);
        h.Coordinator.ExpectMsg<StepApplied>(s => s.GlobalStep == 1);
        Fixtures.AssertSameBits(PlainTrainerAfter(1), only.ExpectMsg<ComputeGradients>().Parameters, "after work sent again");
    }

    [Fact]
    public async Task UnregisteredSender_IsIgnored()
    {
        TestProbe w1 = CreateTestProbe(), intruder = CreateTestProbe();
        Harness h = Start(w1);
        h.Server.Tell(new TrainEpoch(0), h.Coordinator.Ref);
        ComputeGradients work = w1.ExpectMsg<ComputeGradients>();
        foreach (GradientsComputed answer in h.Answer(work))
        {
            h.Server.Tell(answer, intruder.Ref);
        }
        h.Coordinator.ExpectNoMsg(Quiet); // gradients from an unregistered sender must not complete a step
        Assert.Equal(1, (await h.Server.Ask<ServerStatistics>(GetStatistics.Instance)).UnregisteredIgnored);
        Deliver(h, w1, work);
        h.Coordinator.ExpectMsg<StepApplied>(s => s.GlobalStep == 1);
    }

    /// <summary>
    /// A worker whose node leaves goes at once, as a leave: its chunks go to the others before anything
    /// reports it dead (a node's removal from the cluster can outlast the run), its late gradients are an
    /// unregistered sender's, its Terminated afterwards changes nothing, and the step keeps its bits.
    /// </summary>
    [Fact]
    public async Task AWorkerWhoseNodeLeaves_GoesAtOnce_AsAGracefulLeave_AndTheStepKeepsItsBits()
    {
        // A second ActorSystem gives worker-2 an address of its own: another node.
        using ActorSystem otherNode = ActorSystem.Create("other-node");
        TestProbe w1 = CreateTestProbe(), w2 = new(otherNode, new XunitAssertions(), "w2");
        Harness h = Start(w1, w2);
        h.Server.Tell(new TrainEpoch(0), h.Coordinator.Ref);
        ComputeGradients a = w1.ExpectMsg<ComputeGradients>(), b = w2.ExpectMsg<ComputeGradients>();
        // From this process only (the gatekeeper, on MemberLeft); the message type is never serialized.
        h.Server.Tell(new NodeLeaving(w2.Ref.Path.Address), TestActor);
        h.Coordinator.ExpectMsg<WorkerLeft>(l => l.WorkerName == "worker-2" && l.Workers == 1 && l.Graceful);
        ComputeGradients reassigned = w1.ExpectMsg<ComputeGradients>();
        Assert.Equal((0L, b.ChunkLo, b.ChunkHi), (reassigned.Step, reassigned.ChunkLo, reassigned.ChunkHi));
        List<GradientsComputed> late = h.Answer(b);
        foreach (GradientsComputed answer in late)
        {
            h.Server.Tell(answer, w2.Ref);
        }
        Watch(w2.Ref);
        otherNode.Stop(w2.Ref);
        ExpectTerminated(w2.Ref);
        Deliver(h, w1, a);
        Deliver(h, w1, reassigned);
        // The next thing the coordinator hears is the step: no second WorkerLeft for worker-2's Terminated.
        h.Coordinator.ExpectMsg<StepApplied>(s => s.GlobalStep == 1 && s.Workers == 1);
        Fixtures.AssertSameBits(PlainTrainerAfter(1), w1.ExpectMsg<ComputeGradients>(m => m.Step == 1).Parameters, "step completed after worker-2 left");
        Assert.Equal(late.Count, (await h.Server.Ask<ServerStatistics>(GetStatistics.Instance)).UnregisteredIgnored);
    }

    [Fact]
    public async Task WorkerDeath_HandsItsUncoveredChunksToTheSurvivors_AndTheStepKeepsItsBits()
    {
        TestProbe w1 = CreateTestProbe(), w2 = CreateTestProbe(), w3 = CreateTestProbe();
        Harness h = Start(w1, w2, w3);
        h.Server.Tell(new TrainEpoch(0), h.Coordinator.Ref);
        ComputeGradients a = w1.ExpectMsg<ComputeGradients>(), b = w2.ExpectMsg<ComputeGradients>(), c = w3.ExpectMsg<ComputeGradients>();
        Assert.Equal((2, 5), (b.ChunkLo, b.ChunkHi));
        // worker-2 delivers its first node (chunks 2–4) and dies before the second (chunk 4).
        List<GradientsComputed> partial = h.Answer(b);
        Assert.Equal([new TreeNode(2, 2), new TreeNode(4, 1)], partial.Select(p => p.Node));
        h.Server.Tell(partial[0], w2.Ref);
        Deliver(h, w1, a);
        Deliver(h, w3, c);
        Watch(w2.Ref);
        Sys.Stop(w2.Ref);
        ExpectTerminated(w2.Ref);

        ComputeGradients reassigned = w1.ExpectMsg<ComputeGradients>();
        Assert.Equal((0L, 4, 5), (reassigned.Step, reassigned.ChunkLo, reassigned.ChunkHi));
        // The coordinator hears of the death (not a graceful leave: no NodeLeaving came first), then the step.
        h.Coordinator.ExpectMsg<WorkerLeft>(l => l.WorkerName == "worker-2" && l.Workers == 2 && !l.Graceful);
        Deliver(h, w1, reassigned);
        h.Coordinator.ExpectMsg<StepApplied>(s => s.GlobalStep == 1 && s.Workers == 2);
        ComputeGradients next = w1.ExpectMsg<ComputeGradients>(m => m.Step == 1);
        Assert.Equal((0, 4), (next.ChunkLo, next.ChunkHi));
        w3.ExpectMsg<ComputeGradients>(m => m.Step == 1 && m.ChunkLo == 4 && m.ChunkHi == 8);
        Fixtures.AssertSameBits(PlainTrainerAfter(1), next.Parameters, "step completed after worker-2 died");
        Assert.Equal(1, (await h.Server.Ask<ServerStatistics>(GetStatistics.Instance)).Reassignments);
    }

    [Fact]
    public void WorkerRegisteringMidStep_GetsWorkFromTheNextStep()
    {
        TestProbe w1 = CreateTestProbe(), late = CreateTestProbe();
        Harness h = Start(w1);
        h.Server.Tell(new TrainEpoch(0), h.Coordinator.Ref);
        ComputeGradients work = w1.ExpectMsg<ComputeGradients>();
        h.Server.Tell(Credentials(h.Session, "late"), late.Ref);
        Assert.Equal(1, late.ExpectMsg<WorkerAccepted>().NextStep);
        late.ExpectNoMsg(TimeSpan.FromMilliseconds(100));
        Deliver(h, w1, work);
        Assert.Equal((1L, 4, 8), late.ExpectMsg<ComputeGradients>() is var m ? (m.Step, m.ChunkLo, m.ChunkHi) : default);
    }

    [Theory]
    [InlineData("protocol")]
    [InlineData("data")]
    [InlineData("network")]
    [InlineData("fingerprint")]
    public void WorkerThatWouldNotReproduceTheBits_IsRefused(string difference)
    {
        TestProbe candidate = CreateTestProbe();
        Harness h = Start();
        RegisterWorker honest = Credentials(h.Session, "odd-one");
        RegisterWorker odd = difference switch
        {
            "protocol" => honest with { ProtocolVersion = 99 },
            "data" => honest with { DataHash = "0123456789abcdef" },
            "network" => honest with { Architecture = "12-99-4 relu,softmax cross_entropy" },
            _ => honest with { NumericFingerprint = "ffffffffffffffff" },
        };
        h.Server.Tell(odd, candidate.Ref);
        WorkerRefused refused = candidate.ExpectMsg<WorkerRefused>();
        Assert.Contains(difference switch
        {
            "protocol" => "protocol version 99",
            "data" => "different training data",
            "network" => "it built the network 12-99-4",
            _ => "different floating-point results",
        }, refused.Reason);
        h.Coordinator.ExpectNoMsg(TimeSpan.FromMilliseconds(200));
    }

    [Fact]
    public void WorkUndeliverableOverTheBulkChannel_GoesToTheOthers_AndTheWorkerStaysInTheRun()
    {
        TestProbe w1 = CreateTestProbe(), w2 = CreateTestProbe();
        Harness h = Start(w1, w2);
        h.Server.Tell(new TrainEpoch(0), h.Coordinator.Ref);
        ComputeGradients a = w1.ExpectMsg<ComputeGradients>(), b = w2.ExpectMsg<ComputeGradients>();
        // The channel reports that worker-2's work could not be delivered.
        h.Server.Tell(new DeliveryFailed(w2.Ref, b, "connection refused"));
        ComputeGradients rerouted = w1.ExpectMsg<ComputeGradients>();
        Assert.Equal((0L, 4, 8), (rerouted.Step, rerouted.ChunkLo, rerouted.ChunkHi));
        Deliver(h, w1, a);
        Deliver(h, w1, rerouted);
        h.Coordinator.ExpectMsg<StepApplied>(s => s.GlobalStep == 1);
        // A broken connection is not a dead node: worker-2 stays in the run and is probed with step 1's work.
        Assert.Equal(1L, w2.ExpectMsg<ComputeGradients>().Step);
        h.Server.Tell(GetStatistics.Instance, TestActor);
        Assert.Equal(2, ExpectMsg<ServerStatistics>().Workers);
    }

    [Fact]
    public void SecondWorkerWithTheSameName_IsRefused()
    {
        TestProbe w1 = CreateTestProbe(), twin = CreateTestProbe();
        Harness h = Start(w1);
        h.Server.Tell(Credentials(h.Session, "worker-1"), twin.Ref);
        Assert.Contains("already registered", twin.ExpectMsg<WorkerRefused>().Reason);
    }

    [Fact]
    public void CoordinatorOnlyMessages_FromAWorker_AreRefusedAndCounted_AndChangeNothing()
    {
        TestProbe w1 = CreateTestProbe();
        Harness h = Start(w1);
        string path = Path.Combine(Path.GetTempPath(), $"dbp-not-written-{Guid.NewGuid():N}.safetensors");
        // A registered worker tries to run an epoch and to make the server write a file of its choosing.
        h.Server.Tell(new TrainEpoch(0), w1.Ref);
        h.Server.Tell(new SaveCheckpoint(path), w1.Ref);
        // The statistics answer comes after both were handled (one mailbox, in order).
        h.Server.Tell(GetStatistics.Instance, TestActor);
        ServerStatistics stats = ExpectMsg<ServerStatistics>();
        Assert.Equal(2, stats.Unauthorized);
        Assert.Equal(0, stats.GlobalStep);
        Assert.False(File.Exists(path), "a checkpoint was written on a worker's say-so");
        // Work would have been told to worker-1 (a local probe: enqueued at once) before the statistics.
        Assert.False(w1.HasMessages, "the server dealt work on a worker's TrainEpoch");
        // The coordinator's own TrainEpoch still works.
        h.Server.Tell(new TrainEpoch(0), h.Coordinator.Ref);
        Assert.Equal(0L, w1.ExpectMsg<ComputeGradients>().Step);
    }

    [Fact]
    public void AWorkerThatNeverAnswers_HasItsChunksDealtToTheOthersAfterTheDeadline_AndTheBitsAreTheSame()
    {
        TestProbe w1 = CreateTestProbe(), silent = CreateTestProbe();
        Harness h = Start(new StepDeadline(TimeSpan.FromMilliseconds(300)), w1, silent);
        h.Server.Tell(new TrainEpoch(0), h.Coordinator.Ref);
        ComputeGradients mine = w1.ExpectMsg<ComputeGradients>(), theirs = silent.ExpectMsg<ComputeGradients>();
        Deliver(h, w1, mine);
        // silent stays a member (no Terminated) but never answers: after the deadline its run comes to w1.
        ComputeGradients dealtAgain = w1.ExpectMsg<ComputeGradients>(TimeSpan.FromSeconds(5));
        Assert.Equal((0L, theirs.ChunkLo, theirs.ChunkHi), (dealtAgain.Step, dealtAgain.ChunkLo, dealtAgain.ChunkHi));
        Deliver(h, w1, dealtAgain);
        h.Coordinator.ExpectMsg<StepApplied>(s => s.GlobalStep == 1);
        // The laggard gets no new work until it answers: step 1 goes to w1 whole.
        ComputeGradients step1 = w1.ExpectMsg<ComputeGradients>();
        Assert.Equal((1L, 0, 8), (step1.Step, step1.ChunkLo, step1.ChunkHi));
        // ... except a probe, once per deadline: a copy of the step's smallest run (here all of it).
        ComputeGradients probe = silent.ExpectMsg<ComputeGradients>();
        Assert.Equal((1L, 0, 8), (probe.Step, probe.ChunkLo, probe.ChunkHi));
        // Its late answer for step 0 arrives: dropped (stale), and it is trusted with work again.
        Deliver(h, silent, theirs);
        Deliver(h, w1, step1);
        h.Coordinator.ExpectMsg<StepApplied>(s => s.GlobalStep == 2);
        Assert.Equal((2L, 0, 4), (w1.ExpectMsg<ComputeGradients>().Step, 0, 4));
        ComputeGradients back = silent.ExpectMsg<ComputeGradients>();
        Assert.Equal((2L, 4, 8), (back.Step, back.ChunkLo, back.ChunkHi));
        Fixtures.AssertSameBits(PlainTrainerAfter(2), h.Session.Parameters, "after a deadline and a speculative re-deal");
        h.Server.Tell(GetStatistics.Instance, TestActor);
        ServerStatistics stats = ExpectMsg<ServerStatistics>();
        Assert.Equal(1, stats.Speculations);
        Assert.Equal(1, stats.StaleDropped); // chunks [4,8) are one node of the tree: one late message, dropped
    }

    [Fact]
    public void AWorkerWhoseAnswerWasLost_IsProbed_AndItsAnswerToTheProbeIsUsed()
    {
        // A connection that breaks with the answer in its socket buffers loses it for good: without the probe
        // the suspect would never be dealt work again, and so never answer again.
        TestProbe w1 = CreateTestProbe(), lost = CreateTestProbe();
        Harness h = Start(new StepDeadline(TimeSpan.FromMilliseconds(300)), w1, lost);
        h.Server.Tell(new TrainEpoch(0), h.Coordinator.Ref);
        ComputeGradients mine = w1.ExpectMsg<ComputeGradients>();
        lost.ExpectMsg<ComputeGradients>(); // its answer never arrives
        Deliver(h, w1, mine);
        Deliver(h, w1, w1.ExpectMsg<ComputeGradients>(TimeSpan.FromSeconds(5)));
        h.Coordinator.ExpectMsg<StepApplied>(s => s.GlobalStep == 1);
        ComputeGradients step1 = w1.ExpectMsg<ComputeGradients>();
        ComputeGradients probe = lost.ExpectMsg<ComputeGradients>();
        Assert.Equal((1L, 0, 8), (probe.Step, probe.ChunkLo, probe.ChunkHi));

        Deliver(h, lost, probe); // first: its answer completes step 1
        h.Coordinator.ExpectMsg<StepApplied>(s => s.GlobalStep == 2);
        Deliver(h, w1, step1); // late: step 1 is over, dropped
        ComputeGradients next = lost.ExpectMsg<ComputeGradients>();
        Assert.Equal(2L, next.Step); // trusted again: dealt a share of step 2
        Assert.Equal(2L, w1.ExpectMsg<ComputeGradients>().Step);
        Fixtures.AssertSameBits(PlainTrainerAfter(2), next.Parameters, "after an answer lost and a probe answered");
    }

    [Fact]
    public void ChunksAreDealtInProportionToMeasuredPace_WithTheSameBits()
    {
        TestProbe fast = CreateTestProbe(), slow = CreateTestProbe();
        Harness h = Start(fast, slow);
        h.Server.Tell(new TrainEpoch(0), h.Coordinator.Ref);
        // Step 0 is split evenly (nothing measured yet); the answers say fast takes 10 ms per chunk, slow 30 ms.
        foreach (var (worker, secondsPerChunk) in new[] { (fast, 0.010), (slow, 0.030) })
        {
            ComputeGradients work = worker.ExpectMsg<ComputeGradients>();
            Assert.Equal(4, work.ChunkHi - work.ChunkLo);
            foreach (GradientsComputed answer in h.Answer(work))
            {
                h.Server.Tell(answer with { ComputeSeconds = secondsPerChunk * answer.Node.Size }, worker.Ref);
            }
        }
        h.Coordinator.ExpectMsg<StepApplied>(s => s.GlobalStep == 1);
        // Finishing time max(count × pace) is least with 6 and 2 (60 ms each; 4 and 4 would take 120 ms).
        ComputeGradients toFast = fast.ExpectMsg<ComputeGradients>(), toSlow = slow.ExpectMsg<ComputeGradients>();
        Assert.Equal((0, 6), (toFast.ChunkLo, toFast.ChunkHi));
        Assert.Equal((6, 8), (toSlow.ChunkLo, toSlow.ChunkHi));
        Deliver(h, fast, toFast);
        Deliver(h, slow, toSlow);
        h.Coordinator.ExpectMsg<StepApplied>(s => s.GlobalStep == 2);
        Fixtures.AssertSameBits(PlainTrainerAfter(2), h.Session.Parameters, "after dealing in proportion to pace");
    }

    [Fact]
    public void StepDeadline_IsAMultipleOfTheMedianStep_NeverBelowItsFloor()
    {
        var deadline = new StepDeadline(TimeSpan.FromSeconds(2), multiple: 4, window: 5);
        Assert.Equal(TimeSpan.FromSeconds(2), deadline.Current);
        foreach (double seconds in new[] { 1.0, 1.0, 1.0, 30.0, 1.0 })
        {
            deadline.StepTook(TimeSpan.FromSeconds(seconds));
        }
        Assert.Equal(TimeSpan.FromSeconds(4), deadline.Current); // one slow step does not move the median
        foreach (double seconds in new[] { 0.01, 0.01, 0.01, 0.01, 0.01 })
        {
            deadline.StepTook(TimeSpan.FromSeconds(seconds));
        }
        Assert.Equal(TimeSpan.FromSeconds(2), deadline.Current); // only the last five count; the floor holds

        // Rounds of local steps: the first deadline waits for the round's H steps, then the median rules alone.
        StepDeadline rounds = new StepDeadline(TimeSpan.FromSeconds(2), multiple: 4, window: 5).ForUpdatesOf(32);
        Assert.Equal(TimeSpan.FromSeconds(64), rounds.Current);
        rounds.StepTook(TimeSpan.FromSeconds(3));
        Assert.Equal(TimeSpan.FromSeconds(12), rounds.Current);
        rounds.StepTook(TimeSpan.FromSeconds(0.1));
        rounds.StepTook(TimeSpan.FromSeconds(0.1));
        Assert.Equal(TimeSpan.FromSeconds(2), rounds.Current);
    }
}
