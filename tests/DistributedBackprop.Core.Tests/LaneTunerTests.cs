using DistributedBackprop.Data;
using DistributedBackprop.Engine;
using DistributedBackprop.Optimizers;

namespace DistributedBackprop.Tests;

/// <summary>The per-shape lane choice: a rule over timings (injected here), and a trainer whose bits ignore it.</summary>
public class LaneTunerTests
{
    /// <summary>Runs the tuner with step times given per lane count; returns the lane counts it asked for.</summary>
    private static List<int> Drive(LaneTuner tuner, Func<int, int, double> secondsOf, int steps)
    {
        var asked = new List<int>();
        for (int step = 0; step < steps; step++)
        {
            int lanes = tuner.Next();
            asked.Add(lanes);
            tuner.Record(secondsOf(lanes, step));
        }
        return asked;
    }

    [Fact]
    public void Alternates_then_keeps_a_clearly_faster_candidate_by_its_median()
    {
        var tuner = new LaneTuner([2, 1], trials: 5);
        // Two lanes are slower, except for outliers that a mean would be fooled by.
        List<int> asked = Drive(tuner, (lanes, step) => lanes == 2 ? (step % 8 == 0 ? 0.001 : 0.1) : 0.08, 40);
        // Warm-up: 3 rounds and 0.5 s of steps, ending after a round (0.001+0.08+0.1+0.08+0.1+0.08 = 0.441 s after
        // 3 rounds, 0.621 s after 4: 8 steps).
        int tuning = 8 + 5 * 2;
        Assert.Equal(Enumerable.Range(0, tuning).Select(i => i % 2 == 0 ? 2 : 1), asked.Take(tuning));
        Assert.Equal(1, tuner.Chosen);
        Assert.All(asked.Skip(tuning), lanes => Assert.Equal(1, lanes));
        Assert.Equal(0.08, tuner.Medians![1]);
    }

    [Fact]
    public void In_turns_of_several_steps_the_first_step_of_each_turn_is_not_timed()
    {
        var tuner = new LaneTuner([0, 1], trials: 4, stepsPerTurn: 2);
        // Candidate 0's first step after candidate 1's turn pays for it (1 s), its next costs 0.08; candidate 1 costs
        // 0.1 throughout. Timed with its first steps, candidate 0's median would be 0.54 and candidate 1 would win.
        List<int> asked = Drive(tuner, (candidate, step) => candidate == 1 ? 0.1 : step % 4 == 0 ? 1.0 : 0.08, 100);
        // Warm-up: 3 cycles of two turns of two steps (12 steps, over 0.5 s), then 4 timed steps each: 8 turns more.
        int tuning = 12 + 4 * 2 * 2;
        Assert.Equal(Enumerable.Range(0, tuning).Select(i => i / 2 % 2), asked.Take(tuning));
        Assert.Equal(0, tuner.Chosen);
        Assert.Equal(0.08, tuner.Medians![0]);
        Assert.Equal(0.1, tuner.Medians![1]);
        Assert.All(asked.Skip(tuning), candidate => Assert.Equal(0, candidate));
    }

    [Fact]
    public void Warmup_steps_are_not_counted_and_a_candidate_within_the_margin_keeps_the_most_lanes()
    {
        var tuner = new LaneTuner([4, 1], trials: 3);
        // The first rounds are slow for four lanes (threads waking, JIT): not held against them. Afterwards one
        // lane is 3 % faster: noise-sized, below the 5 % margin, so four lanes stay.
        Drive(tuner, (lanes, step) => step < LaneTuner.WarmupRounds * 2 && lanes == 4 ? 1.0 : lanes == 4 ? 0.1 : 0.097, 30);
        Assert.Equal(4, tuner.Chosen);
        Assert.Equal(1, new LaneTuner([1]).Next());
        Assert.Equal(1, new LaneTuner([1]).Chosen);
        Assert.Throws<ArgumentException>(() => new LaneTuner([2, 2]));
    }

    [Fact]
    public void A_layout_on_as_many_cores_wins_by_any_margin_one_on_fewer_needs_the_margin()
    {
        // Candidates 0 and 1: two layouts of θ on the same 2 cores; candidate 2: one core. Candidate 1 is 2 % faster
        // than 0 and candidate 2 is 3 % faster than 1: 1 is kept (2 is within the margin against it).
        var tuner = new LaneTuner([0, 1, 2], trials: 3, parallelism: [2, 2, 1]);
        double[] seconds = [0.1, 0.098, 0.098 * 0.97];
        Drive(tuner, (candidate, _) => seconds[candidate], 60);
        Assert.Equal(1, tuner.Chosen);
        // Without the cores given, every candidate needs the margin: the first stays.
        var unaware = new LaneTuner([0, 1, 2], trials: 3);
        Drive(unaware, (candidate, _) => seconds[candidate], 60);
        Assert.Equal(0, unaware.Chosen);
        // Equal medians: the first stays.
        var tied = new LaneTuner([0, 1], trials: 3, parallelism: [2, 2]);
        Drive(tied, (_, _) => 0.1, 60);
        Assert.Equal(0, tied.Chosen);
        Assert.Throws<ArgumentException>(() => new LaneTuner([0, 1], parallelism: [2]));
    }

    [Fact]
    public void A_shorter_retune_interval_follows_a_change_sooner()
    {
        // Candidate 1 is faster until step 100, candidate 0 after: retuned every 64 steps, the tuner has gone back to
        // 0 by step 300, where the default interval (4,096 steps) would not have let it look again.
        var tuner = new LaneTuner([0, 1], trials: 3, parallelism: [2, 2], retuneEvery: 64);
        List<int> asked = Drive(tuner, (candidate, step) => (step < 100) == (candidate == 1) ? 0.09 : 0.1, 300);
        Assert.Equal(1, asked[99]);
        Assert.Equal(0, tuner.Chosen);
        Assert.True(tuner.Rounds >= 2);
        Assert.Throws<ArgumentOutOfRangeException>(() => new LaneTuner([0, 1], retuneEvery: 0));
    }

    [Fact]
    public void The_choice_is_tuned_again_so_a_change_of_conditions_is_followed()
    {
        var tuner = new LaneTuner([2, 1], trials: 4);
        int switchAt = 100;
        // One lane is faster first (the machine busy elsewhere, say), two lanes clearly faster later.
        List<int> asked = Drive(tuner, (lanes, step) => step < switchAt ? (lanes == 2 ? 0.2 : 0.1) : (lanes == 2 ? 0.05 : 0.1), (int)LaneTuner.RetuneEvery + 200);
        Assert.Equal(1, asked[switchAt]);
        Assert.Equal(2, tuner.Chosen);
        Assert.Equal(2, tuner.Rounds);
        Assert.Equal(2, asked[^1]);
    }

    [Fact]
    public void A_trainer_that_switches_lanes_while_tuning_keeps_the_single_lanes_bits()
    {
        var config = new TrainingConfig { HiddenLayers = [16], Epochs = 4, BatchSize = 8, Chunks = 4, Seed = 9, Optimizer = new OptimizerSettings { Kind = OptimizerKind.Adam, LearningRate = 0.01f } };
        Dataset data = TestNetworks.RandomDataset(200, 6, 3, 4);
        float[] Train(int threads, out int lanesInUse, string layout = UpdateLayout.Auto)
        {
            TrainingSession session = TrainingSession.Prepare(config, data, null, 0);
            using var trainer = new Trainer(session, threads, layout);
            trainer.Run(NullObserver.Instance);
            lanesInUse = trainer.LanesInUse;
            return session.Parameters;
        }
        float[] single = Train(1, out _);
        float[] tuned = Train(3, out int lanes);
        Assert.Contains(lanes, new[] { 1, 3 });
        GemmTests.AssertBitwise(single, tuned, "3 threads, tuned");
        // Two lanes with a copy of θ each, one lane with the session's alone: every switch to two lanes brings the
        // copies up to date (GuardedUpdate.SyncCopies), or the second lane would compute on a stale θ.
        GemmTests.AssertBitwise(single, Train(2, out _, UpdateLayout.Replicated), "2 threads, tuned, a copy of θ per lane");
        GemmTests.AssertBitwise(single, Train(3, out _, UpdateLayout.Replicated), "3 threads, tuned, a copy of θ per lane");
    }
}
