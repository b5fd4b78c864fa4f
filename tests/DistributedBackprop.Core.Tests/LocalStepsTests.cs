using DistributedBackprop.Data;
using DistributedBackprop.Engine;
using DistributedBackprop.Network;
using DistributedBackprop.Optimizers;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Tests;

/// <summary>
/// Local steps with replicas: a round against a reference written from the definition (each replica on its
/// share of each batch, the mean change, the outer step), then whole runs whose bits must not depend on the
/// threads computing them or on a resume.
/// </summary>
public class LocalStepsTests
{
    private static readonly Dataset Data = TestNetworks.RandomDataset(190, 7, 3, seed: 5);

    /// <summary>152 training rows in batches of 20: 8 steps per epoch, the last of 12 rows; H = 3 gives rounds of 3, 3 and 2 steps.</summary>
    private static TrainingConfig Config(int replicas = 3, int steps = 3, OptimizerKind inner = OptimizerKind.Momentum, OuterOptimizerKind outer = OuterOptimizerKind.Nesterov, bool overlap = false) => new()
    {
        HiddenLayers = [9],
        Epochs = 3,
        BatchSize = 20,
        Seed = 8,
        Optimizer = new OptimizerSettings { Kind = inner, LearningRate = 0.05f, WeightDecay = 0.01f, Schedule = ScheduleKind.Cosine },
        LocalSteps = new LocalStepsSettings { Replicas = replicas, Steps = steps, OuterOptimizer = outer, OuterLearningRate = 0.6f, OuterMomentum = 0.8f, OuterOverlap = overlap },
    };

    private static TrainingSession Session(TrainingConfig config) => TrainingSession.Prepare(config, Data, null, 0.2);

    /// <summary>
    /// The definition, step by step and allocating freely: every replica copies θ, takes the round's steps with a
    /// new inner optimizer on rows [⌊r·n/R⌋, ⌊(r+1)·n/R⌋) of each batch, Δ̄ is the tree sum of (θ − θ_r)/R, and the
    /// outer optimizer applies Δ̄ as a gradient.
    /// </summary>
    private static double[] ReferenceRound(TrainingSession session, Optimizer outer, float[] theta) => ReferenceRound(session, outer, theta, null, null);

    /// <summary>
    /// With <paramref name="starts"/> (--outer-overlap), replica r starts from starts[r] instead of θ and its value
    /// (start − end)/R goes into <paramref name="values"/>[r].
    /// </summary>
    private static double[] ReferenceRound(TrainingSession session, Optimizer outer, float[] theta, float[][]? starts, float[][]? values)
    {
        TrainingConfig config = session.Config;
        LocalStepsSettings local = config.LocalSteps!;
        int epoch = session.Epoch, first = session.StepInEpoch;
        int steps = Math.Min(local.Steps, session.StepsPerEpoch - first);
        EpochPlan plan = EpochPlan.Create(session.Train.Rows, config.BatchSize, config.Seed, epoch);
        var changes = new float[local.Replicas][];
        var losses = new double[local.Replicas];
        for (int r = 0; r < local.Replicas; r++)
        {
            float[] start = starts?[r] ?? theta;
            float[] replica = (float[])start.Clone();
            var inner = new Optimizer(session.Architecture, config.Optimizer);
            var gradients = new NodeGradientComputer(session.Architecture, session.Train);
            double lossSum = 0;
            int rows = 0;
            for (int j = 0; j < steps; j++)
            {
                int[] batch = plan.BatchRows(first + j).ToArray();
                int lo = (int)((long)r * batch.Length / local.Replicas), hi = (int)((long)(r + 1) * batch.Length / local.Replicas);
                if (lo == hi)
                {
                    continue;
                }
                var gradient = new float[replica.Length];
                BatchResult figures = gradients.Compute(replica, batch.AsSpan(lo, hi - lo), 1, new TreeNode(0, 1), gradient);
                lossSum += figures.LossSum;
                rows += figures.Rows;
                long step = (long)epoch * session.StepsPerEpoch + first + j;
                inner.Apply(replica, gradient, config.Optimizer.LearningRateAt(step, epoch, session.TotalSteps));
            }
            changes[r] = start.Select((t, i) => (t - replica[i]) / local.Replicas).ToArray();
            if (values is not null)
            {
                values[r] = (float[])changes[r].Clone();
            }
            losses[r] = lossSum / rows;
        }
        float[] mean = ChunkTree.Fold<float[]>(local.Replicas, (TreeNode node, out float[] value) => ChunkTree.Leaf(changes, node, out value),
            (left, right) => left.Select((l, i) => l + right[i]).ToArray());
        outer.Apply(theta, mean, local.OuterLearningRate);
        return losses;
    }

    [Theory]
    [InlineData(OptimizerKind.Sgd, OuterOptimizerKind.Sgd, 3)]
    [InlineData(OptimizerKind.Momentum, OuterOptimizerKind.Nesterov, 3)]
    [InlineData(OptimizerKind.Adam, OuterOptimizerKind.Nesterov, 3)]
    // 16 replicas of 20 rows: 1 or 2 rows each, and in the epoch's last batch of 12 some replicas have none.
    [InlineData(OptimizerKind.Momentum, OuterOptimizerKind.Nesterov, 16)]
    public void Rounds_MatchTheDefinition_BitForBit(OptimizerKind inner, OuterOptimizerKind outerKind, int replicas)
    {
        TrainingConfig config = Config(replicas, steps: 3, inner, outerKind);
        TrainingSession session = Session(config);
        float[] theta = (float[])session.Parameters.Clone();
        var outer = new Optimizer(session.Architecture, config.LocalSteps!.OuterSettings());
        using var trainer = new Trainer(session, threads: 2);
        // Two epochs: rounds of 3, 3, 2 steps each, the outer momentum carried across them.
        for (int round = 0; round < 6; round++)
        {
            long before = session.GlobalStep;
            float[] thetaBefore = (float[])theta.Clone();
            double[] losses = ReferenceRound(session, outer, theta);
            BatchResult result = trainer.Step(out _);
            // The round's figures: each replica's own mean inner loss, and the outer step's length.
            RoundReport figures = trainer.LastRound!;
            Assert.Equal(losses, figures.ReplicaLosses);
            double norm = Math.Sqrt(thetaBefore.Select((t, i) => ((double)t - theta[i]) * ((double)t - theta[i])).Sum());
            Assert.Equal(norm, figures.OuterStepNorm, 1e-9);
            Assert.True(norm > 0);
            Assert.Equal(round % 3 == 2 ? 2 : 3, session.GlobalStep - before);
            Assert.Equal(session.GlobalStep == 8 || session.GlobalStep == 16 ? 20 + 12 : 60, result.Rows);
            AssertSameBits(theta, session.Parameters, $"round {round}");
        }
    }

    /// <summary>
    /// --outer-overlap against its definition: round i ≥ 1 of an epoch starts replica r from
    /// θ_{i−1} − R·ℓ_{i−1}^r (θ before the previous outer step, the replica's own previous value), round 0 from θ;
    /// the outer steps are the usual ones. Two epochs of rounds of 3, 3 and 2 steps.
    /// </summary>
    [Theory]
    [InlineData(OptimizerKind.Momentum, OuterOptimizerKind.Nesterov, 3, 2)]
    [InlineData(OptimizerKind.Adam, OuterOptimizerKind.Sgd, 2, 1)]
    [InlineData(OptimizerKind.Sgd, OuterOptimizerKind.Nesterov, 5, 3)]
    public void OverlappedRounds_MatchTheDefinition_BitForBit(OptimizerKind inner, OuterOptimizerKind outerKind, int replicas, int threads)
    {
        TrainingConfig config = Config(replicas, steps: 3, inner, outerKind, overlap: true);
        TrainingSession session = Session(config);
        float[] theta = (float[])session.Parameters.Clone();
        float[] thetaBefore = theta;
        var values = new float[replicas][];
        var outer = new Optimizer(session.Architecture, config.LocalSteps!.OuterSettings());
        using var trainer = new Trainer(session, threads);
        for (int round = 0; round < 6; round++)
        {
            float[][]? starts = session.StepInEpoch == 0 ? null
                : values.Select(value => thetaBefore.Select((t, i) => t - value[i] * replicas).ToArray()).ToArray();
            thetaBefore = (float[])theta.Clone();
            ReferenceRound(session, outer, theta, starts ?? Enumerable.Repeat(thetaBefore, replicas).ToArray(), values);
            trainer.Step(out _);
            AssertSameBits(theta, session.Parameters, $"round {round}");
        }
        // Not the rounds without overlap: the definition changed, so the model does.
        Assert.NotEqual(Train(Config(replicas, 3, inner, outerKind), 1), Train(config, 1));
    }

    [Fact]
    public void RoundBases_AreNeverWrittenAfterTheyAreHandedOut()
    {
        // In one process a worker may still read an older round's base (a duplicate whose value it keeps).
        var bases = new OverlappedRoundBases();
        float[] round0 = bases.Begin(0, [1f, 2f], hasNext: true);
        float[] round1 = bases.BaseOf(1);
        Assert.Equal([1f, 2f], round0);
        Assert.Same(round0, round1); // both θ_0: one array serves both
        Assert.Same(round1, bases.Begin(1, [3f, 4f], hasNext: true));
        float[] round2 = bases.BaseOf(2);
        Assert.Same(round2, bases.Begin(2, [5f, 6f], hasNext: false));
        Assert.Equal([1f, 2f], round0);
        Assert.Equal([1f, 2f], round1);
        Assert.Equal([3f, 4f], round2);
        Assert.NotSame(round0, bases.Begin(0, [7f, 8f], hasNext: true));
        Assert.Equal([1f, 2f], round0);
    }

    [Fact]
    public void Overlap_IsCheckpointedAtEpochEndsOnly_AndResumesThereWithTheUninterruptedBits()
    {
        TrainingConfig config = Config(overlap: true);
        float[] uninterrupted = Train(config, threads: 1);
        string path = Path.Combine(Path.GetTempPath(), $"dbp-local-steps-overlap-{Guid.NewGuid():N}.safetensors");
        try
        {
            // Asked for every 5 steps, written only at the epochs' ends: inside an epoch the round in flight
            // starts from θ one outer step old and the replicas' own values, which a checkpoint does not hold.
            TrainingSession session = Session(config);
            var written = new SortedSet<long>();
            var watcher = new CheckpointWatcher(path, written);
            using (var trainer = new Trainer(session, threads: 2))
            {
                trainer.Run(watcher, new CheckpointPolicy(path, EverySteps: 5));
            }
            watcher.Look();
            Assert.Equal([8L, 16, 24], written);

            TrainingSession first = Session(config);
            using (var trainer = new Trainer(first))
            {
                for (int round = 0; round < 3; round++)
                {
                    trainer.Step(out _);
                }
            }
            first.SaveCheckpoint(path);
            TrainingSession resumed = Session(config);
            resumed.RestoreCheckpoint(path);
            using (var trainer = new Trainer(resumed, threads: 2))
            {
                trainer.Run(NullObserver.Instance);
            }
            AssertSameBits(uninterrupted, resumed.Parameters, "resumed at the end of epoch 1");
            Assert.Contains("--outer-overlap false in the checkpoint, true now",
                Assert.Throws<Models.ModelFileException>(() => Session(config).RestoreCheckpoint(WriteCheckpointWithout(path))).Message);
            TrainingSession inside = Session(config);
            inside.GlobalStep = 3;
            inside.SaveCheckpoint(path);
            Assert.Equal($"{path}: global step 3 is inside an epoch; with --outer-overlap only a checkpoint from an epoch's end can be resumed",
                Assert.Throws<Models.ModelFileException>(() => Session(config).RestoreCheckpoint(path)).Message);
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>A checkpoint of the same run without --outer-overlap, at <paramref name="path"/>.</summary>
    private static string WriteCheckpointWithout(string path)
    {
        Session(Config()).SaveCheckpoint(path);
        return path;
    }

    [Theory]
    [InlineData(2, 2)]
    [InlineData(3, 4)]
    [InlineData(5, 2)]
    [InlineData(5, 3)]
    public void AnyThreadCount_GivesOneThreadsBits(int replicas, int threads)
    {
        float[] one = Train(Config(replicas), threads: 1);
        Assert.Equal(one, Train(Config(replicas), threads));
        if (replicas == 2)
        {
            // The replicas' count is part of the model: two and three differ.
            Assert.NotEqual(one, Train(Config(replicas + 1), 1));
        }
    }

    private static float[] Train(TrainingConfig config, int threads)
    {
        TrainingSession session = Session(config);
        using var trainer = new Trainer(session, threads);
        trainer.Run(NullObserver.Instance);
        Assert.Equal(session.TotalSteps, session.GlobalStep);
        return session.Parameters;
    }

    [Fact]
    public void ResumingAtARoundsEnd_GivesTheUninterruptedBits()
    {
        float[] uninterrupted = Train(Config(), threads: 1);
        string path = Path.Combine(Path.GetTempPath(), $"dbp-local-steps-{Guid.NewGuid():N}.safetensors");
        try
        {
            TrainingSession first = Session(Config());
            using (var trainer = new Trainer(first))
            {
                for (int round = 0; round < 4; round++)
                {
                    trainer.Step(out _);
                }
            }
            Assert.Equal(11, first.GlobalStep); // 3 + 3 + 2, then 3 into epoch 2
            Assert.Equal(4, first.UpdatesDone);
            first.SaveCheckpoint(path);
            TrainingSession resumed = Session(Config());
            resumed.RestoreCheckpoint(path);
            using (var trainer = new Trainer(resumed, threads: 2))
            {
                trainer.Run(NullObserver.Instance);
            }
            AssertSameBits(uninterrupted, resumed.Parameters, "resumed after 4 rounds");
            Assert.Contains("--local-steps 3 in the checkpoint, 4 now",
                Assert.Throws<Models.ModelFileException>(() => Session(Config(steps: 4)).RestoreCheckpoint(path)).Message);
            // A checkpoint inside a round (written by hand or another tool) would shift every later round: refused.
            TrainingSession inside = Session(Config());
            inside.GlobalStep = 10;
            inside.SaveCheckpoint(path);
            Assert.Equal($"{path}: global step 10 is not at the end of a round of 3 local steps",
                Assert.Throws<Models.ModelFileException>(() => Session(Config()).RestoreCheckpoint(path)).Message);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void CheckpointEveryNSteps_IsWrittenAfterTheRoundThatPassesAMultiple_AndAtEachEpochsEnd()
    {
        string path = Path.Combine(Path.GetTempPath(), $"dbp-local-steps-every-{Guid.NewGuid():N}.safetensors");
        try
        {
            TrainingSession session = Session(Config());
            var written = new SortedSet<long>();
            var watcher = new CheckpointWatcher(path, written);
            using (var trainer = new Trainer(session))
            {
                trainer.Run(watcher, new CheckpointPolicy(path, EverySteps: 5));
            }
            watcher.Look();
            // Rounds end at 3, 6, 8 | 11, 14, 16 | 19, 22, 24: past 5 at 6, 10 at 11, 20 at 22 (15 falls in the
            // round ending the epoch at 16, written there once it is scored), plus every epoch's end.
            Assert.Equal([6L, 8, 11, 16, 22, 24], written);
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>Reads the checkpoint's step at every report (a checkpoint is written right after its update is reported).</summary>
    private sealed class CheckpointWatcher(string path, SortedSet<long> written) : ITrainingObserver
    {
        public void Look()
        {
            if (File.Exists(path))
            {
                written.Add(long.Parse(Models.SafeTensors.ReadMetadata(path)["global_step"], System.Globalization.CultureInfo.InvariantCulture));
            }
        }

        public void StepCompleted(StepReport report) => Look();

        public void EpochCompleted(EpochReport report) => Look();
    }

    [Fact]
    public void Settings_AreValidated_AndWrittenOnlyWhenSet()
    {
        Assert.Equal("--replicas: 30 replicas share each batch of 20 rows; at most one replica per row", Config(replicas: 30).Validate());
        Assert.Equal("--local-steps: local steps need between 2 and 1000000 steps per round, got 1 (1: synchronous training)", Config(steps: 1).Validate());
        Assert.Equal("--outer-momentum: must be in [0, 1), got 1", (Config() with { LocalSteps = Config().LocalSteps! with { OuterMomentum = 1f } }).Validate());
        Assert.DoesNotContain("local_steps", new TrainingConfig().ToJson());
        TrainingConfig config = Config(replicas: 4, steps: 16);
        Assert.Contains("\"local_steps\":{\"replicas\":4,\"steps\":16,\"outer_optimizer\":\"nesterov\"", config.ToJson());
        SortedDictionary<string, string> options = config.AsOptions();
        Assert.Equal(("4", "16", "nesterov", "0.6", "0.8"), (options["replicas"], options["local-steps"], options["outer-optimizer"], options["outer-lr"], options["outer-momentum"]));
        string[] expected = ["--local-steps 1 in the checkpoint, 16 now", "--outer-lr 0.7 in the checkpoint, 0.6 now", "--outer-momentum 0.9 in the checkpoint, 0.8 now", "--replicas 1 in the checkpoint, 4 now"];
        Assert.Equal(expected, config.DifferencesFrom(config with { LocalSteps = null }).Order(StringComparer.Ordinal));
        Assert.DoesNotContain("outer_overlap", config.ToJson());
        TrainingConfig overlapped = Config(overlap: true);
        Assert.Contains("\"outer_overlap\":true", overlapped.ToJson());
        Assert.Equal("true", overlapped.AsOptions()["outer-overlap"]);
        Assert.Equal(["--outer-overlap false in the checkpoint, true now"], overlapped.DifferencesFrom(Config()));
        Assert.Equal(4, config.UpdateParts());
        Assert.Equal(8, new TrainingConfig().UpdateParts());
        Assert.Equal((16, 5, 1), (config.StepsInUpdate(0, 40), config.StepsInUpdate(35, 40), new TrainingConfig().StepsInUpdate(0, 40)));
    }

    private static void AssertSameBits(float[] expected, float[] actual, string context)
    {
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.True(BitConverter.SingleToInt32Bits(expected[i]) == BitConverter.SingleToInt32Bits(actual[i]), $"{context}: parameter {i}: expected {expected[i]:R}, got {actual[i]:R}");
        }
    }
}
