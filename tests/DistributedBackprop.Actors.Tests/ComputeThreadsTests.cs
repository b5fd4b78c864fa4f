using System.Collections.Concurrent;
using Akka.Actor;
using Akka.Configuration;
using Akka.TestKit.Xunit2;
using DistributedBackprop.Engine;

namespace DistributedBackprop.Actors.Tests;

/// <summary>Local mode's threads: lanes run once each and on idle threads too, errors reach the caller, actors run on them and a parked thread wakes.</summary>
public sealed class ComputeThreadsTests : TestKit
{
    [Fact]
    public void EveryLane_RunsExactlyOnce_PerCall()
    {
        using var threads = new ComputeThreads(2, "test-lanes");
        for (int call = 0; call < 200; call++)
        {
            var runs = new int[7];
            threads.ForEachLane(runs.Length, lane => Interlocked.Increment(ref runs[lane]));
            Assert.All(runs, count => Assert.Equal(1, count));
        }
    }

    /// <summary>
    /// One board serves every call: calls of either kind and any lane count in turn, helpers still spinning on the last
    /// one, must each run every lane once (a helper acting on a closed call, or on a half-opened one, would run a
    /// lane twice, or never, or with the other call's work).
    /// </summary>
    [Fact]
    public void CallsOfBothKinds_InTurn_RunEveryLaneOnce_WithTheirOwnWork()
    {
        using var threads = new ComputeThreads(2, "test-turns");
        for (int call = 0; call < 3000; call++)
        {
            bool pinned = call % 3 != 0;
            int lanes = pinned ? 2 + call % 2 : 1 + call % 7;
            var runs = new int[lanes];
            int expectedCall = call;
            int wrongWork = 0;
            threads.ForEachLane(lanes, lane =>
            {
                Interlocked.Increment(ref runs[lane]);
                if (expectedCall != call)
                {
                    Interlocked.Increment(ref wrongWork);
                }
            }, onOwnThreads: pinned);
            Assert.All(runs, count => Assert.Equal(1, count));
            Assert.Equal(0, wrongWork);
        }
    }

    /// <summary>
    /// More threads than cores, so helpers are preempted mid-take, and calls whose lane count grows: a helper that took
    /// a lane number of a closed call must not run it in the next, larger one. A stress test, not a proof: against the
    /// board's first version (an increment checked against a lane count read after it) it failed in 1 of 7 runs here (one of three at 20,000 calls, none of four at 60,000).
    /// </summary>
    [Fact]
    public void PreemptedHelpers_NeverRunALaneOfTheNextLargerCallTwice()
    {
        using var threads = new ComputeThreads(3 * Environment.ProcessorCount, "test-preempt");
        for (int call = 0; call < 60000; call++)
        {
            int lanes = call % 2 == 0 ? 2 : 7;
            var runs = new int[lanes];
            threads.ForEachLane(lanes, lane => Interlocked.Increment(ref runs[lane]));
            Assert.All(runs, count => Assert.Equal(1, count));
        }
    }

    /// <summary>A call allocates nothing on the calling thread (the board is reused; issue 10: no per-step allocation beyond messages).</summary>
    [Fact]
    public void ACall_AllocatesNothing()
    {
        using var threads = new ComputeThreads(2, "test-alloc");
        var sink = new int[4];
        Action<int> work = lane => Interlocked.Increment(ref sink[lane]);
        for (int warm = 0; warm < 200; warm++)
        {
            threads.ForEachLane(2, work, onOwnThreads: warm % 2 == 0);
            threads.ForEachLane(4, work);
        }
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int call = 0; call < 1000; call++)
        {
            threads.ForEachLane(2, work, onOwnThreads: call % 2 == 0);
            threads.ForEachLane(4, work);
        }
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }

    [Fact]
    public void AnIdleThread_TakesALane_WhileTheCallerRunsAnother()
    {
        using var threads = new ComputeThreads(1, "test-help");
        // Each lane waits for the other to start: the call can only finish if the compute thread took one lane
        // while the caller ran the other (whichever came first).
        using var bothStarted = new Barrier(2);
        var ranOn = new string?[2];
        var met = new bool[2];
        threads.ForEachLane(2, lane =>
        {
            ranOn[lane] = Thread.CurrentThread.Name;
            met[lane] = bothStarted.SignalAndWait(TimeSpan.FromSeconds(30));
        });
        Assert.True(met[0] && met[1], "the two lanes did not run at the same time");
        Assert.NotEqual(ranOn[0], ranOn[1]);
        Assert.Contains("test-help-1", ranOn);
    }

    [Fact]
    public void AnErrorInALane_ReachesTheCaller_AndTheNextCallWorks()
    {
        using var threads = new ComputeThreads(2, "test-error");
        var error = Assert.Throws<AggregateException>(() => threads.ForEachLane(4, lane =>
        {
            if (lane == 2)
            {
                throw new InvalidOperationException("lane 2 failed");
            }
        }));
        Assert.Equal("lane 2 failed", error.InnerException!.Message);
        int done = 0;
        threads.ForEachLane(4, _ => Interlocked.Increment(ref done));
        Assert.Equal(4, done);
    }

    [Fact]
    public async Task OnOwnThreads_EachIdleOrParkedThreadRunsItsOwnLane_AndTheCallerTheLanesWithNoThread()
    {
        using var threads = new ComputeThreads(2, "test-own");
        for (int call = 0; call < 100; call++)
        {
            var ranOn = new string?[3];
            // Lane 2 has no thread: the caller (this test's thread, not one of them) runs it.
            threads.ForEachLane(3, lane => ranOn[lane] = Thread.CurrentThread.Name, onOwnThreads: true);
            Assert.Equal(new[] { "test-own-1", "test-own-2", Thread.CurrentThread.Name }, ranOn);
        }
        // Long past the spin time both threads have parked: each must be woken for its lane (the caller is neither).
        Thread.Sleep(ComputeThreads.SpinTime * 50);
        var afterParking = new string?[2];
        // On a pool thread, so a lane left to a parked thread nobody woke fails the test instead of hanging it.
        await Task.Run(() => threads.ForEachLane(2, lane => afterParking[lane] = Thread.CurrentThread.Name, onOwnThreads: true)).WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(new[] { "test-own-1", "test-own-2" }, afterParking);
    }

    [Fact]
    public void OnOwnThreads_TheCallerTakesTheLaneOfAThreadBusyWithAnActorsMessage()
    {
        using var threads = new ComputeThreads(2, "test-busy");
        threads.Install(Sys);
        IActorRef blocker = Sys.ActorOf(Props.Create(() => new Blocker()).WithDispatcher(ComputeThreads.DispatcherId(1)));
        using var release = new ManualResetEventSlim();
        blocker.Tell(release);
        // The blocker says it has started only from inside the message that holds thread 2.
        Assert.Equal("holding", ExpectMsg<string>());
        var ranOn = new string?[2];
        threads.ForEachLane(2, lane => ranOn[lane] = Thread.CurrentThread.Name, onOwnThreads: true);
        release.Set();
        Assert.Equal("test-busy-1", ranOn[0]);
        Assert.Equal(Thread.CurrentThread.Name, ranOn[1]);
        // Released, thread 2 takes its own lane again.
        Assert.Equal("released", ExpectMsg<string>());
        threads.ForEachLane(2, lane => ranOn[lane] = Thread.CurrentThread.Name, onOwnThreads: true);
        Assert.Equal(new string?[] { "test-busy-1", "test-busy-2" }, ranOn);
        Shutdown(Sys, verifySystemShutdown: true);
    }

    [Fact]
    public void Placement_GivesEachThreadAWorkerFirst_AndReusesAFreedPlace()
    {
        using var threads = new ComputeThreads(2, "test-place");
        Assert.Equal([0, 1, 0], new[] { threads.PlaceWorker("w1"), threads.PlaceWorker("w2"), threads.PlaceWorker("w3") });
        threads.WorkerLeft("w2");
        threads.WorkerLeft("never placed");
        Assert.Equal(1, threads.PlaceWorker("w4")); // the freed place: threads 0 and 1 carry 2 and 1
        Assert.Equal(1, threads.PlaceWorker("w5")); // the fewest
        Assert.Equal(0, threads.PlaceWorker("w6")); // a tie (2 and 2) goes to the first
        Assert.Equal(1, threads.ThreadOf("w4"));
        Assert.Equal(-1, threads.ThreadOf("w2"));
    }

    [Fact]
    public void ActorsOnEachThread_RunThere_AndAParkedThreadWakesForAMessage()
    {
        using var threads = new ComputeThreads(2, "test-actors");
        threads.Install(Sys);
        IActorRef first = Sys.ActorOf(Props.Create(() => new ThreadName()).WithDispatcher(ComputeThreads.DispatcherId(0)));
        IActorRef second = Sys.ActorOf(Props.Create(() => new ThreadName()).WithDispatcher(ComputeThreads.DispatcherId(1)));
        first.Tell("which");
        Assert.Equal("test-actors-1", ExpectMsg<string>());
        second.Tell("which");
        Assert.Equal("test-actors-2", ExpectMsg<string>());
        // Long past the spin time the threads have parked; a message must still get through.
        Thread.Sleep(ComputeThreads.SpinTime * 50);
        second.Tell("which");
        Assert.Equal("test-actors-2", ExpectMsg<string>());
        // The system stops while its threads still run (as LocalTraining does), so its actors stop cleanly.
        Shutdown(Sys, verifySystemShutdown: true);
    }

    /// <summary>
    /// Split: one θ, a slice per lane. Replicated: a copy of θ and of the optimizer state per thread, each updated
    /// whole, each worker computing on its thread's copy. Auto at 2 workers times both in turns of 4 steps while its
    /// tuner warms up (at least its first half second, longer than this run), so the run switches layout every turn;
    /// the epoch reports say how many steps kept the copies.
    /// </summary>
    [Theory]
    [InlineData(2, "auto", "some")]
    [InlineData(2, "split", "none")]
    [InlineData(5, "auto", "none")]
    [InlineData(3, "replicated", "all")]
    public async Task LocalTraining_WithAnUpdateInSeveralLanes_GivesThePlainTrainersBits(int workers, string update, string stepsWithCopies)
    {
        // 12·512 + 512·256 + 256·4 weights and their biases: enough for the update to be cut into two lanes or
        // more (one per 65,536 parameters, at most one per thread). Five workers on this machine's two cores are
        // more threads than cores: they park at once instead of spinning.
        TrainingConfig config = Fixtures.Config(epochs: 1) with { HiddenLayers = [512, 256] };
        float[] oracle = Fixtures.PlainTrainer(config);
        TrainingSession session = Fixtures.Session(config);
        Assert.True(session.Parameters.Length >= 2 * 65536);
        Config overrides = ConfigurationFactory.ParseString($"dbp.update-layout = {update}");
        var epochs = new EpochRecorder();
        await using (LocalTraining run = LocalTraining.Start(session, workers, epochs, overrides: overrides))
        {
            await run.Completion.WaitAsync(TimeSpan.FromMinutes(2));
        }
        Assert.Equal(session.TotalSteps, session.GlobalStep);
        Fixtures.AssertSameBits(oracle, session.Parameters, $"{workers} workers, {session.Parameters.Length} parameters, update {update}");
        long copies = epochs.Reports.Sum(e => e.StepsWithThetaCopies!.Value);
        Assert.True(session.TotalSteps > LaneTuner.StepsPerTurn, "too few steps to see the layouts alternate");
        switch (stepsWithCopies)
        {
            case "none": Assert.Equal(0, copies); break;
            case "all": Assert.Equal(session.TotalSteps, copies); break;
            default: Assert.InRange(copies, 1, session.TotalSteps - 1); break;
        }
    }

    private sealed class EpochRecorder : ITrainingObserver
    {
        public List<EpochReport> Reports { get; } = [];
        public void StepCompleted(StepReport report) { }
        public void EpochCompleted(EpochReport report) => Reports.Add(report);
    }

    /// <summary>Holds its thread with the event it is sent until that is set, saying when it starts and ends.</summary>
    private sealed class Blocker : ReceiveActor
    {
        public Blocker() => Receive<ManualResetEventSlim>(release =>
        {
            Sender.Tell("holding");
            release.Wait(TimeSpan.FromMinutes(1));
            Sender.Tell("released");
        });
    }

    private sealed class ThreadName : ReceiveActor
    {
        public ThreadName() => Receive<string>(_ => Sender.Tell(Thread.CurrentThread.Name ?? ""));
    }
}
