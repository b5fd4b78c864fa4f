using System.Diagnostics;
using DistributedBackprop.Engine;
using DistributedBackprop.Network;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Tests;

/// <summary>
/// Who computes which chunks of a step, without actors: the scheduler's assignments are checked against the
/// coverage they must produce, and "delivering" an assignment is adding its canonical nodes to the reducer.
/// </summary>
public class StepSchedulerTests
{
    private sealed class Harness
    {
        public Harness(int chunks, params string[] names)
        {
            Chunks = chunks;
            Coverage = new TreeReducer(chunks, 1);
            Scheduler = new StepScheduler<ScheduledWorker>(chunks, Coverage, dealByPace: false);
            foreach (string name in names)
            {
                Scheduler.Add(new ScheduledWorker(name));
            }
        }

        /// <summary><paramref name="workers"/> workers named w0, w1, ….</summary>
        public static Harness OfWorkers(int chunks, int workers) => new(chunks, Enumerable.Range(0, workers).Select(i => $"w{i}").ToArray());

        public int Chunks { get; }
        public TreeReducer Coverage { get; }
        public StepScheduler<ScheduledWorker> Scheduler { get; }
        public List<ChunkAssignment<ScheduledWorker>> Sent { get; } = [];

        public ScheduledWorker this[string name] => Scheduler.Workers.Single(w => w.Name == name);

        public void Start(TimeSpan probeInterval)
        {
            Coverage.Reset();
            Sent.Clear();
            Scheduler.StartStep(Stopwatch.GetTimestamp(), probeInterval, Sent);
        }

        /// <summary>The worker computes one assignment; false when any of it had arrived already (a duplicate).</summary>
        public bool Deliver(ChunkAssignment<ScheduledWorker> work)
        {
            Scheduler.HeardFrom(work.Worker);
            bool accepted = true;
            foreach (TreeNode node in ChunkTree.Decompose(work.Lo, work.Hi, Chunks))
            {
                if (Coverage.TryAdd(node, [1f], new BatchResult(0, 0, 1)))
                {
                    Scheduler.Delivered(work.Worker, ChunkTree.CoveredChunks(node, Chunks), 0.001);
                }
                else
                {
                    accepted = false;
                }
            }
            return accepted;
        }

        /// <summary>Every assignment sent so far is computed (the ones already covered are duplicates).</summary>
        public void DeliverAll()
        {
            foreach (var work in Sent.ToList())
            {
                Deliver(work);
            }
        }

        public List<ChunkAssignment<ScheduledWorker>> For(string name) => Sent.Where(a => a.Worker.Name == name).ToList();
    }

    private static void AssertContiguousCover(int chunks, IEnumerable<ChunkAssignment<ScheduledWorker>> assignments)
    {
        var runs = assignments.Select(a => (a.Lo, a.Hi)).OrderBy(r => r.Lo).ToList();
        Assert.Equal(0, runs[0].Lo);
        for (int i = 1; i < runs.Count; i++)
        {
            Assert.Equal(runs[i - 1].Hi, runs[i].Lo);
        }
        Assert.Equal(chunks, runs[^1].Hi);
    }

    [Theory]
    [InlineData(8, 1)]
    [InlineData(8, 3)]
    [InlineData(5, 8)]
    public void StartStep_DealsEveryChunkOnce_InContiguousRuns_ToAtMostOneWorkerPerChunk(int chunks, int workers)
    {
        var h = Harness.OfWorkers(chunks, workers);
        h.Start(TimeSpan.FromSeconds(1));
        Assert.Equal(Math.Min(chunks, workers), h.Sent.Count);
        AssertContiguousCover(chunks, h.Sent);
        Assert.All(h.Sent, a => Assert.True(a.Hi > a.Lo));
        foreach (var work in h.Sent.ToList())
        {
            Assert.True(h.Deliver(work));
        }
        Assert.True(h.Coverage.IsComplete);
    }

    [Fact]
    public void AWorkerThatLeaves_HasOnlyItsMissingChunksDealtToTheOthers()
    {
        var h = new Harness(9, "a", "b", "c");
        h.Start(TimeSpan.FromSeconds(1));
        ChunkAssignment<ScheduledWorker> bWork = h.For("b").Single();
        // b delivered the first chunk of its run before dying.
        h.Deliver(bWork with { Hi = bWork.Lo + 1 });
        h.Sent.Clear();
        Assert.Equal(Departure.Reassigned, h.Scheduler.Remove(h["b"], inStep: true, h.Sent));
        Assert.Equal(2, h.Scheduler.Workers.Count);
        AssertContiguousCover(bWork.Hi - bWork.Lo - 1, h.Sent.Select(a => a with { Lo = a.Lo - bWork.Lo - 1, Hi = a.Hi - bWork.Lo - 1 }));
        Assert.Equal(["a", "c"], h.Sent.Select(a => a.Worker.Name).Order());
    }

    [Fact]
    public void WhenNobodyIsLeft_TheMissingChunksWaitForTheNextWorker()
    {
        var h = new Harness(4, "only");
        h.Start(TimeSpan.FromSeconds(1));
        h.Sent.Clear();
        Assert.Equal(Departure.Orphaned, h.Scheduler.Remove(h["only"], inStep: true, h.Sent));
        Assert.Empty(h.Sent);
        Assert.True(h.Scheduler.HasOrphans);
        var newcomer = new ScheduledWorker("new");
        h.Scheduler.Add(newcomer);
        h.Scheduler.AdoptOrphans(newcomer, h.Sent);
        Assert.False(h.Scheduler.HasOrphans);
        Assert.Equal([(0, 4)], h.Sent.Select(a => (a.Lo, a.Hi)));
        Assert.True(h.Deliver(h.Sent[0]));
        Assert.True(h.Coverage.IsComplete);
    }

    [Fact]
    public void ALeaverWhoseWorkHadArrived_ChangesNothing()
    {
        var h = new Harness(4, "a", "b");
        h.Start(TimeSpan.FromSeconds(1));
        h.Deliver(h.For("b").Single());
        h.Sent.Clear();
        Assert.Equal(Departure.NothingMissing, h.Scheduler.Remove(h["b"], inStep: true, h.Sent));
        Assert.Equal(Departure.NothingMissing, h.Scheduler.Remove(h["a"], inStep: false, h.Sent));
        Assert.Empty(h.Sent);
    }

    [Fact]
    public void AfterTheDeadline_TheLaggardsChunksGoToThoseWhoDelivered_AndItsLateAnswerIsADuplicate()
    {
        var h = new Harness(8, "fast", "slow", "idle");
        h.Start(TimeSpan.Zero);
        h.Deliver(h.For("fast").Single());
        // "idle" delivered too; "slow" did not.
        h.Deliver(h.For("idle").Single());
        ChunkAssignment<ScheduledWorker> slowWork = h.For("slow").Single();
        h.Sent.Clear();

        DealtAround<ScheduledWorker>? dealt = h.Scheduler.DealAround(null, null, Stopwatch.GetTimestamp(), h.Sent);

        Assert.NotNull(dealt);
        Assert.Equal(["slow"], dealt.Laggards.Select(w => w.Name));
        Assert.Equal(["fast", "idle"], dealt.Helpers.Select(w => w.Name));
        Assert.True(h["slow"].Suspect);
        AssertContiguousCover(slowWork.Hi - slowWork.Lo, h.Sent.Select(a => a with { Lo = a.Lo - slowWork.Lo, Hi = a.Hi - slowWork.Lo }));
        foreach (var work in h.Sent.ToList())
        {
            Assert.True(h.Deliver(work));
        }
        Assert.True(h.Coverage.IsComplete);
        // The late answer is a duplicate: the first result for a chunk wins.
        Assert.False(h.Deliver(slowWork));
        Assert.False(h["slow"].Suspect); // any answer lifts the suspicion
    }

    [Fact]
    public void ASuspect_GetsNoShareOfTheNextStep_OnlyAProbeOncePerInterval()
    {
        var h = new Harness(8, "fast", "slow");
        h.Start(TimeSpan.Zero);
        h.Deliver(h.For("fast").Single());
        h.Scheduler.DealAround(null, null, Stopwatch.GetTimestamp(), h.Sent);
        Assert.True(h["slow"].Suspect);

        h.Start(TimeSpan.Zero);
        Assert.Equal([(0, 8)], h.For("fast").Select(a => (a.Lo, a.Hi)));
        Assert.Equal([(0, 8)], h.For("slow").Select(a => (a.Lo, a.Hi))); // the probe: a copy of the smallest run
        h.Start(TimeSpan.FromHours(1));
        Assert.Empty(h.For("slow")); // probed already within this interval
        Assert.True(h.Deliver(h.For("fast").Single()));
        Assert.True(h.Coverage.IsComplete);
    }

    [Fact]
    public void AOneWorkerRun_GetsItsLostWorkAgain()
    {
        var h = new Harness(4, "only");
        h.Start(TimeSpan.FromSeconds(1));
        h.Sent.Clear();
        DealtAround<ScheduledWorker>? dealt = h.Scheduler.DealAround(null, null, Stopwatch.GetTimestamp(), h.Sent);
        Assert.NotNull(dealt);
        Assert.Equal([(0, 4)], h.Sent.Select(a => (a.Lo, a.Hi)));
        Assert.Equal("only", h.Sent[0].Worker.Name);
    }

    [Fact]
    public void AnUndeliverableRun_IsDealtAroundAlone()
    {
        var h = new Harness(6, "a", "b", "c");
        h.Start(TimeSpan.FromSeconds(1));
        ChunkAssignment<ScheduledWorker> bWork = h.For("b").Single();
        h.Sent.Clear();
        DealtAround<ScheduledWorker>? dealt = h.Scheduler.DealAround(h["b"], (bWork.Lo, bWork.Hi), Stopwatch.GetTimestamp(), h.Sent);
        Assert.NotNull(dealt);
        Assert.Equal(["b"], dealt.Laggards.Select(w => w.Name));
        // Nobody delivered yet: the helpers are the others. Only b's run moves; a's and c's stay with them.
        Assert.Equal(["a", "c"], dealt.Helpers.Select(w => w.Name));
        Assert.All(h.Sent, a => Assert.True(a.Lo >= bWork.Lo && a.Hi <= bWork.Hi));
        Assert.False(h["a"].Suspect);
        Assert.False(h["c"].Suspect);
    }

    /// <summary>
    /// A step nobody answers (workers that stay members but whose work never arrives) is dealt around at every
    /// deadline. Each deadline must deal each missing chunk once: collecting the laggards' runs one by one, including
    /// the copies earlier deadlines dealt them, doubled the frames each time (a server, 20 deadlines in, queued millions
    /// and ran out of memory).
    /// </summary>
    [Theory]
    [InlineData(8, 1)]
    [InlineData(8, 2)]
    [InlineData(8, 3)]
    [InlineData(5, 8)]
    public void AStepNobodyAnswers_IsDealtAroundOnceAChunk_AtEveryDeadline(int chunks, int workers)
    {
        var h = Harness.OfWorkers(chunks, workers);
        h.Start(TimeSpan.FromHours(1));
        for (int deadline = 0; deadline < 30; deadline++)
        {
            h.Sent.Clear();
            Assert.NotNull(h.Scheduler.DealAround(null, null, Stopwatch.GetTimestamp(), h.Sent));
            Assert.InRange(h.Sent.Count, 1, chunks);
            AssertContiguousCover(chunks, h.Sent);
        }
        // Once answers come, the step completes.
        h.DeliverAll();
        Assert.True(h.Coverage.IsComplete);
    }

    [Fact]
    public void AWorkerThatLeavesAfterDeadlines_LeavesEachOfItsMissingChunksOnce()
    {
        var h = new Harness(8, "a", "b");
        h.Start(TimeSpan.FromHours(1));
        for (int deadline = 0; deadline < 5; deadline++)
        {
            h.Scheduler.DealAround(null, null, Stopwatch.GetTimestamp(), h.Sent);
        }
        h.Sent.Clear();
        Assert.Equal(Departure.Reassigned, h.Scheduler.Remove(h["a"], inStep: true, h.Sent));
        // a was dealt its half again at every deadline (six copies by now): b gets it once.
        Assert.Equal([("b", 0, 4)], h.Sent.Select(w => (w.Worker.Name, w.Lo, w.Hi)));
    }

    [Fact]
    public void NothingMissing_DealsNothingAndSuspectsNobody()
    {
        var h = new Harness(4, "a", "b");
        h.Start(TimeSpan.FromSeconds(1));
        h.DeliverAll();
        h.Sent.Clear();
        Assert.Null(h.Scheduler.DealAround(null, null, Stopwatch.GetTimestamp(), h.Sent));
        Assert.Empty(h.Sent);
        Assert.DoesNotContain(h.Scheduler.Workers, w => w.Suspect);
    }

    [Fact]
    public void EndStep_RecordsEachDeliverersPacePerChunk()
    {
        var h = new Harness(8, "a", "b");
        h.Start(TimeSpan.FromSeconds(1));
        h.DeliverAll();
        h.Scheduler.EndStep();
        // Harness.Deliver reports 1 ms per canonical node; a's run [0, 4) is one node of 4 chunks.
        Assert.Equal(0.001 / 4, h["a"].Pace.SecondsPerChunk!.Value, 12);
        Assert.Equal(0, h["a"].ComputeThisStep);
    }
}
