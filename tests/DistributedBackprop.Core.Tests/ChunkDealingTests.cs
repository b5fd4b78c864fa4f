using DistributedBackprop.Engine;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Tests;

public class ChunkDealingTests
{
    /// <summary>The naive answer: the least finishing time over every split with at least one chunk each.</summary>
    private static double BestFinish(int chunks, double[] pace)
    {
        double best = double.MaxValue;
        void Search(int worker, int left, double finish)
        {
            if (worker == pace.Length - 1)
            {
                best = Math.Min(best, Math.Max(finish, left * pace[worker]));
                return;
            }
            for (int count = 1; count <= left - (pace.Length - 1 - worker); count++)
            {
                Search(worker + 1, left - count, Math.Max(finish, count * pace[worker]));
            }
        }
        Search(0, chunks, 0);
        return best;
    }

    [Fact]
    public void Deal_FinishesAsEarlyAsTheBestSplit_ForRandomPaces()
    {
        var random = new Random(7);
        for (int trial = 0; trial < 300; trial++)
        {
            int workers = random.Next(1, 5), chunks = random.Next(workers, 17);
            double[] pace = Enumerable.Range(0, workers).Select(_ => 0.001 + random.NextDouble() * 0.05).ToArray();
            int[] counts = new int[workers];
            ChunkDealing.Deal(chunks, pace.Select(p => (double?)p).ToArray(), counts);
            Assert.Equal(chunks, counts.Sum());
            Assert.All(counts, c => Assert.True(c >= 1));
            double finish = counts.Select((c, i) => c * pace[i]).Max();
            double even = Enumerable.Range(0, workers).Select(i => (ChunkTree.Share(chunks, workers, i).Hi - ChunkTree.Share(chunks, workers, i).Lo) * pace[i]).Max();
            double best = BestFinish(chunks, pace);
            // The best split, unless it is not clearly better than the even one: then the even one.
            Assert.Equal(best <= ChunkDealing.EvenUnlessFaster * even ? best : even, finish, 12);
        }
    }

    [Fact]
    public void Deal_IsEven_WithoutMeaningfulMeasurements_AndGivesNewcomersTheTypicalPace()
    {
        int[] counts = new int[3];
        ChunkDealing.Deal(8, [null, null, null], counts);
        Assert.Equal([2, 3, 3], counts); // ChunkTree.Share's split
        ChunkDealing.Deal(8, [0.00001, 0.00002, null], counts); // microseconds: noise, not pace
        Assert.Equal([2, 3, 3], counts);
        ChunkDealing.Deal(8, [0.01, 0.01, null], counts); // the newcomer counts at 10 ms too
        Assert.Equal(8, counts.Sum());
        Assert.True(counts.Max() - counts.Min() <= 1, string.Join(",", counts));
        ChunkDealing.Deal(8, [0.01, 0.02, 0.01], counts); // half speed: 2 chunks, the others 3
        Assert.Equal([3, 2, 3], counts);
        int[] two = new int[2];
        ChunkDealing.Deal(8, [0.010, 0.0115], two); // 15 % apart: noise, and an uneven split costs bytes
        Assert.Equal([4, 4], two);
    }

    [Fact]
    public void Pace_IsTheMedianOfTheRecentSteps_PerChunk()
    {
        var pace = new ChunkPace(window: 5);
        Assert.Null(pace.SecondsPerChunk);
        pace.Add(0.04, 4);  // 0.01
        pace.Add(9.0, 3);   // 3: one slow step does not move it
        pace.Add(0.02, 2);  // 0.01
        pace.Add(1.0, 0);   // no chunks: ignored
        Assert.Equal(0.01, pace.SecondsPerChunk!.Value, 12);
        for (int i = 0; i < 5; i++) pace.Add(0.06, 3); // the window forgets the old steps
        Assert.Equal(0.02, pace.SecondsPerChunk!.Value, 12);
    }
}
