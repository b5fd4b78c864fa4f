using Akka.Actor;
using Akka.TestKit;
using Akka.TestKit.Xunit2;
using DistributedBackprop.Actors.Transport;
using DistributedBackprop.Engine;
using DistributedBackprop.Kernels;
using DistributedBackprop.Network;
using Xunit.Abstractions;
using DistributedBackprop.Reduction;
using DistributedBackprop.Randomness;

namespace DistributedBackprop.Actors.Tests;

public sealed class WorkerTests(ITestOutputHelper output) : TestKit(LocalTraining.LoadConfig(), output: output)
{
    /// <param name="boundsGradients">local mode's setup: the worker sends each gradient's bound; else none (+∞).</param>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Worker_RegistersThenComputesTheEnginesGradientForEachNodeOfItsRange(bool boundsGradients)
    {
        TrainingSession session = Fixtures.Session();
        var server = CreateTestProbe();
        var setup = new WorkerSetup(session.Architecture, session.Train, session.Config, session.DataHash) { BoundsGradients = boundsGradients };
        IActorRef worker = Sys.ActorOf(Worker.Props(server.Ref, "worker-1", setup), "worker-1");
        RegisterWorker registration = server.ExpectMsg<RegisterWorker>();
        Assert.Equal("worker-1", registration.WorkerName);
        Assert.Equal(session.DataHash, registration.DataHash);
        Assert.Equal(session.Architecture.Describe(), registration.Architecture);

        float[] parameters = (float[])session.Parameters.Clone();
        worker.Tell(new ComputeGradients(5, 0, 5, 0, 3, parameters), server.Ref);
        GradientsComputed first = server.ExpectMsg<GradientsComputed>(), second = server.ExpectMsg<GradientsComputed>();
        Assert.Equal([new TreeNode(0, 2), new TreeNode(2, 1)], new[] { first.Node, second.Node });
        Assert.All(new[] { first, second }, g => Assert.Equal(5, g.Step));

        var engine = new NodeGradientComputer(session.Architecture, session.Train);
        ReadOnlySpan<int> batch = EpochPlan.Create(session.Train.Rows, session.Config.BatchSize, session.Config.Seed, 0).BatchRows(5);
        foreach (GradientsComputed answer in new[] { first, second })
        {
            var expected = new float[session.Architecture.ParameterCount];
            BatchResult result = engine.Compute(parameters, batch, session.Config.Chunks, answer.Node, expected);
            Fixtures.AssertSameBits(expected, answer.Gradient, $"worker gradient of node {answer.Node}");
            Assert.Equal(result, answer.Result);
            // Local mode: the worker bounds its gradient for the update (TreeReducer.SumIsFinite); elsewhere the server does.
            Assert.Equal(boundsGradients ? FiniteValues.Bound(expected) : float.PositiveInfinity, answer.Bound);
        }
    }

    [Fact]
    public void Worker_ReusesGradientBuffersOnlyTwoStepsLater()
    {
        TrainingSession session = Fixtures.Session();
        var server = CreateTestProbe();
        IActorRef worker = Sys.ActorOf(Worker.Props(server.Ref, "worker-1", new WorkerSetup(session.Architecture, session.Train, session.Config, session.DataHash)));
        server.ExpectMsg<RegisterWorker>();
        float[] parameters = (float[])session.Parameters.Clone();
        worker.Tell(new ComputeGradients(0, 0, 0, 0, 8, parameters), server.Ref);
        float[] step0 = server.ExpectMsg<GradientsComputed>().Gradient;
        // A reassignment within the same step must not overwrite the buffer the server still holds.
        worker.Tell(new ComputeGradients(0, 0, 0, 0, 8, parameters), server.Ref);
        float[] again = server.ExpectMsg<GradientsComputed>().Gradient;
        Assert.NotSame(step0, again);
        // Work of the next step may be dealt one update ahead (--outer-overlap), while the server still adds into
        // this step's buffers: only work two steps later takes them again.
        worker.Tell(new ComputeGradients(1, 0, 1, 0, 8, parameters), server.Ref);
        float[] step1 = server.ExpectMsg<GradientsComputed>().Gradient;
        Assert.NotSame(step0, step1);
        Assert.NotSame(again, step1);
        worker.Tell(new ComputeGradients(2, 0, 2, 0, 8, parameters), server.Ref);
        float[] step2 = server.ExpectMsg<GradientsComputed>().Gradient;
        Assert.True(ReferenceEquals(step0, step2) || ReferenceEquals(again, step2));
    }

    /// <summary>
    /// --outer-overlap: work dealt ahead at an epoch's first round comes without θ; the worker starts it from the
    /// θ its work of that round carried (and its own values of that round). A worker whose kept θ is another
    /// round's (frames reordered after a reconnect) answers nothing (the server deals the round again with
    /// starts): the answer to work sent after it is the next message. A pooled θ goes back to its pool only once
    /// a later epoch's replaces it.
    /// </summary>
    [Fact]
    public void Worker_StartsAheadWorkWithoutθ_FromTheBaseOfTheRoundBefore()
    {
        TrainingConfig config = Fixtures.Config() with { LocalSteps = new LocalStepsSettings { Replicas = 2, Steps = 2, OuterOverlap = true } };
        TrainingSession session = Fixtures.Session(config);
        var setup = new WorkerSetup(session.Architecture, session.Train, session.Config, session.DataHash);
        var server = CreateTestProbe();
        IActorRef worker = Sys.ActorOf(Worker.Props(server.Ref, "worker-1", setup));
        server.ExpectMsg<RegisterWorker>();
        float[] theta0 = (float[])session.Parameters.Clone();
        worker.Tell(new ComputeGradients(0, 0, 0, 0, 2, theta0), server.Ref);
        worker.Tell(new ComputeGradients(2, 0, 2, 0, 2, []) { Start = RoundStart.MinusOwnChange }, server.Ref);
        GradientsComputed[] answers = [.. Enumerable.Range(0, 4).Select(_ => server.ExpectMsg<GradientsComputed>())];
        Assert.Equal([0L, 0L, 2L, 2L], answers.Select(a => a.Step));

        // The reference: the engine's computer given round 1's base explicitly.
        IUpdatePartComputer reference = UpdateParts.CreateComputer(config, session.Architecture, session.Train, UpdateParts.CreateChanges(config, session.Architecture.ParameterCount));
        EpochPlan plan = EpochPlan.Create(session.Train.Rows, config.BatchSize, config.Seed, 0);
        for (int i = 0; i < 4; i++)
        {
            var expected = new float[session.Architecture.ParameterCount];
            var node = new TreeNode(i % 2, 1);
            reference.Compute(theta0, plan, i < 2 ? 0 : 2, node, expected, new BatchResult[1], i < 2 ? RoundStart.FromParameters : RoundStart.MinusOwnChange);
            Assert.Equal(node, answers[i].Node);
            Fixtures.AssertSameBits(expected, answers[i].Gradient, $"replica {node.Lo}'s value of round {i / 2}");
        }

        int count = session.Architecture.ParameterCount;
        long epoch1 = session.StepsPerEpoch;
        var pool = new FloatArrayPool();
        float[] pooled0 = pool.Rent(count), pooled1 = pool.Rent(count);
        theta0.CopyTo(pooled0);
        theta0.CopyTo(pooled1);
        IActorRef other = Sys.ActorOf(Worker.Props(server.Ref, "worker-2", setup));
        server.ExpectMsg<RegisterWorker>();
        other.Tell(new ComputeGradients(0, 0, 0, 1, 2, pooled0) { Pool = pool }, server.Ref);
        GradientsComputed next = server.ExpectMsg<GradientsComputed>();
        Assert.Equal((0L, new TreeNode(1, 1)), (next.Step, next.Node));
        Fixtures.AssertSameBits(answers[1].Gradient, next.Gradient, "replica 1's value of round 0 on another worker");
        Assert.NotSame(pooled0, pool.Rent(count)); // kept: round 1 may still come without θ

        // Epoch 1's first round replaces the kept θ (and returns epoch 0's to its pool); epoch 0's round 1 without θ
        // then finds its replica's value but not its base.
        other.Tell(new ComputeGradients(epoch1, 1, 0, 1, 2, pooled1) { Pool = pool }, server.Ref);
        Assert.Equal(epoch1, server.ExpectMsg<GradientsComputed>().Step);
        other.Tell(new ComputeGradients(2, 0, 2, 1, 2, []) { Start = RoundStart.MinusOwnChange }, server.Ref);
        other.Tell(new ComputeGradients(epoch1 + 2, 1, 2, 1, 2, []) { Start = RoundStart.MinusOwnChange }, server.Ref);
        Assert.Equal(epoch1 + 2, server.ExpectMsg<GradientsComputed>().Step);
        // Returned after epoch 1's first round was computed (its answer may come first): by this later answer, surely.
        Assert.Same(pooled0, pool.Rent(count));
    }

    /// <summary>
    /// θ from three shards in pieces, the forward pass run ahead on them (forced: the shards here are probes in this
    /// process), with a first layer of two blocks. Pieces come in scattered orders, before and after their work, two
    /// steps' pieces interleaved (shard 0 moves on to step 2 while step 1 is half in, so step 1 can never be whole),
    /// and a stale piece amid a later step's. Each answer has the bits of the plain gradient on its own step's θ
    /// (every step's θ differs, so a value of another step would show), and the work whose θ can never be whole
    /// gets no answer: the next answer, and every shard's next piece, is step 2's.
    /// </summary>
    [Fact]
    public void Worker_RunningAheadOnθsPieces_OfTwoStepsInterleaved_AnswersWithThePlainGradientsBits()
    {
        TrainingConfig config = Fixtures.Config() with { HiddenLayers = [300] };
        TrainingSession session = TrainingSession.Prepare(config, Fixtures.Blobs(120, features: 300), null, 0.2);
        Architecture architecture = session.Architecture;
        Assert.Equal(2, ReleaseBlocks.BlockCount(architecture, 0));
        var setup = new WorkerSetup(architecture, session.Train, config, session.DataHash) { ForwardAheadWithLocalShards = true };
        TestProbe server = CreateTestProbe();
        TestProbe[] shards = [CreateTestProbe(), CreateTestProbe(), CreateTestProbe()];
        IActorRef worker = Sys.ActorOf(Worker.Props(server.Ref, "worker-1", setup));
        server.ExpectMsg<RegisterWorker>();
        Courier courier = Courier.Get(Sys);
        worker.Tell(new ShardMap([.. shards.Select(s => courier.Describe(s.Ref))]), server.Ref);

        var plan = new ShardPlan(architecture.ParameterCount, shards.Length);
        var random = new Xoshiro256(5);
        var thetas = new Dictionary<long, float[]>();
        float[] Theta(long step) => thetas.TryGetValue(step, out float[]? theta) ? theta
            : thetas[step] = [.. session.Parameters.Select(w => w * (0.5f + random.NextSingle()))];
        // Step s's pieces of θ, shard by shard, each shard's in the order it sends them.
        List<(int Shard, ParameterSlice Piece)> Pieces(long step, params int[] of) =>
            [.. of.SelectMany(shard => plan.ParameterPieces(architecture, shard).Select(p =>
                (shard, new ParameterSlice(step, shard, p.Offset, Theta(step).AsSpan(plan.Start(shard) + p.Offset, p.Count).ToArray()))))];
        void Send(IEnumerable<(int Shard, ParameterSlice Piece)> pieces)
        {
            foreach (var (shard, piece) in pieces)
            {
                worker.Tell(piece, shards[shard].Ref);
            }
        }
        List<(int, ParameterSlice)> Shuffled(List<(int, ParameterSlice)> pieces) => [.. pieces.OrderBy(_ => random.NextInt(1 << 30))];
        void Work(long step) =>
            worker.Tell(new ComputeGradients(step, (int)(step / session.StepsPerEpoch), (int)(step % session.StepsPerEpoch), 0, config.Chunks, []), server.Ref);
        var engine = new NodeGradientComputer(architecture, session.Train);
        void ExpectAnswer(long step)
        {
            GradientsComputed answer = server.ExpectMsg<GradientsComputed>();
            Assert.Equal((step, new TreeNode(0, config.Chunks)), (answer.Step, answer.Node));
            var gradient = new float[architecture.ParameterCount];
            for (int shard = 0; shard < shards.Length; shard++)
            {
                for (int received = 0; received < plan.Count(shard);)
                {
                    GradientSlice piece = shards[shard].ExpectMsg<GradientSlice>();
                    Assert.Equal(step, piece.Step);
                    piece.Values.CopyTo(gradient, plan.Start(shard) + piece.Offset);
                    received += piece.Values.Length;
                }
            }
            var expected = new float[architecture.ParameterCount];
            ReadOnlySpan<int> rows = EpochPlan.Create(session.Train.Rows, config.BatchSize, config.Seed, (int)(step / session.StepsPerEpoch)).BatchRows((int)(step % session.StepsPerEpoch));
            BatchResult result = engine.Compute(Theta(step), rows, config.Chunks, answer.Node, expected);
            Fixtures.AssertSameBits(expected, gradient, $"the gradient of step {step}, from θ's pieces run ahead on");
            Assert.Equal(result, answer.Result);
        }

        // Work first, then its pieces in a scattered order: the pass runs ahead on each.
        Work(0);
        Send(Shuffled(Pieces(0, 0, 1, 2)));
        ExpectAnswer(0);

        // Step 1 half in (the pass runs ahead on it), then shard 0 moves on to step 2; the rest of step 1 comes too late.
        Work(1);
        List<(int, ParameterSlice)> shard1 = Pieces(1, 1);
        Send(Pieces(1, 0));
        Send(shard1.Take(shard1.Count / 2));
        Send(Pieces(2, 0));
        Send(shard1.Skip(shard1.Count / 2));
        Send(Pieces(1, 2));
        Work(2);
        Send(Enumerable.Reverse(Pieces(2, 1, 2)));
        ExpectAnswer(2);

        // Every piece before its work (nothing to run ahead of), then a step whose pieces come last first, a stale one amid them.
        Send(Shuffled(Pieces(3, 0, 1, 2)));
        Work(3);
        ExpectAnswer(3);
        Work(4);
        List<(int, ParameterSlice)> step4 = [.. Enumerable.Reverse(Pieces(4, 0, 1, 2))];
        step4.Insert(step4.Count / 2, Pieces(3, 1)[0]);
        Send(step4);
        ExpectAnswer(4);
    }

    [Fact]
    public void Worker_RunsOnTheComputeDispatcher()
    {
        TrainingSession session = Fixtures.Session();
        Props props = Worker.Props(CreateTestProbe().Ref, "w", new WorkerSetup(session.Architecture, session.Train, session.Config, session.DataHash));
        Assert.Equal(Worker.DispatcherId, props.Dispatcher);
        Assert.True(Sys.Dispatchers.HasDispatcher(Worker.DispatcherId));
    }
}
