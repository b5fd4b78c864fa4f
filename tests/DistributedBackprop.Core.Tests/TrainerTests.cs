using DistributedBackprop.Data;
using DistributedBackprop.Engine;
using DistributedBackprop.Network;
using DistributedBackprop.Optimizers;

namespace DistributedBackprop.Tests;

public class TrainerTests
{
    private static TrainingConfig SmallConfig => new()
    {
        HiddenLayers = [16],
        Epochs = 3,
        BatchSize = 20,
        Chunks = 6,
        Seed = 4,
        Optimizer = new OptimizerSettings { Kind = OptimizerKind.Adam, LearningRate = 0.01f, WeightDecay = 0.01f },
    };

    private static float[] Train(TrainingConfig config, Dataset data, int threads, string layout = UpdateLayout.Auto)
    {
        TrainingSession session = TrainingSession.Prepare(config, data, null, 0.25);
        using var trainer = new Trainer(session, threads, layout);
        trainer.Run(NullObserver.Instance);
        return session.Parameters;
    }

    [Fact]
    public void TheLecturesNetwork_LearnsXor()
    {
        // Sigmoid layers and the quadratic cost, as in the lecture, on the four XOR points.
        float[] values = [0, 0, 0, 1, 1, 0, 1, 1];
        int[] labels = [0, 1, 1, 0];
        var xor = new Dataset("xor", 2, values, labels, ["false", "true"], DataKind.Table);
        var config = new TrainingConfig
        {
            HiddenLayers = [4],
            HiddenActivation = Activation.Sigmoid,
            OutputActivation = Activation.Sigmoid,
            Loss = Loss.MeanSquaredError,
            Epochs = 3000,
            BatchSize = 4,
            Chunks = 1,
            Seed = 3,
            Optimizer = new OptimizerSettings { Kind = OptimizerKind.Sgd, LearningRate = 2f },
        };
        TrainingSession session = TrainingSession.Prepare(config, xor, null, 0);
        using var trainer = new Trainer(session);
        trainer.Run(NullObserver.Instance);
        EvaluationResult result = trainer.Evaluate(session.Train);
        Assert.Equal(1.0, result.Accuracy);
        Assert.True(result.Loss < 0.05, $"XOR loss {result.Loss}");
    }

    [Fact]
    public void DefaultRunOnEmbeddedDigits_ReachesAtLeast95Percent()
    {
        TrainingSession session = TrainingSession.Prepare(new TrainingConfig(), DataSources.EmbeddedDigits(), null, 0.2);
        using var trainer = new Trainer(session);
        trainer.Run(NullObserver.Instance);
        EvaluationResult test = trainer.Evaluate(session.Test!);
        Assert.True(test.Accuracy >= 0.95, $"test accuracy {test.Accuracy:P2} on {test.Rows} rows");
    }

    [Fact]
    public void SameSeed_GivesIdenticalBits_AnyThreadCount()
    {
        var data = TestNetworks.RandomDataset(150, 10, 3, 1);
        float[] reference = Train(SmallConfig, data, threads: 1);
        foreach (int threads in new[] { 1, 2, 3, 5, 6, 9 })
        {
            GemmTests.AssertBitwise(reference, Train(SmallConfig, data, threads), $"{threads} threads");
            // auto replicates θ with two lanes only: each other layout at each count too.
            GemmTests.AssertBitwise(reference, Train(SmallConfig, data, threads, UpdateLayout.Replicated), $"{threads} threads, a copy of θ per lane");
            GemmTests.AssertBitwise(reference, Train(SmallConfig, data, threads, UpdateLayout.Split), $"{threads} threads, one θ in slices");
        }
        float[] otherSeed = Train(SmallConfig with { Seed = 5 }, data, threads: 1);
        Assert.NotEqual(reference, otherSeed);
    }

    [Fact]
    public void ResumingFromACheckpoint_GivesTheBitsOfAnUninterruptedRun()
    {
        var data = TestNetworks.RandomDataset(150, 10, 3, 2);
        foreach (OptimizerKind kind in Enum.GetValues<OptimizerKind>())
        {
            TrainingConfig config = SmallConfig with { Optimizer = SmallConfig.Optimizer with { Kind = kind, Schedule = ScheduleKind.Cosine, WarmupSteps = 3 } };
            float[] uninterrupted = Train(config, data, threads: 1);

            string path = Path.Combine(Path.GetTempPath(), $"dbp-resume-{Guid.NewGuid():N}.safetensors");
            try
            {
                TrainingSession first = TrainingSession.Prepare(config, data, null, 0.25);
                using (var trainer = new Trainer(first))
                {
                    for (int i = 0; i < 7; i++) // stop mid-epoch
                    {
                        trainer.Step(out _);
                    }
                }
                first.SaveCheckpoint(path);

                TrainingSession resumed = TrainingSession.Prepare(config, data, null, 0.25);
                resumed.RestoreCheckpoint(path);
                Assert.Equal(7, resumed.GlobalStep);
                using (var trainer = new Trainer(resumed, threads: 2))
                {
                    trainer.Run(NullObserver.Instance);
                }
                GemmTests.AssertBitwise(uninterrupted, resumed.Parameters, $"{kind} resumed after 7 steps");
            }
            finally
            {
                File.Delete(path);
            }
        }
    }

    /// <summary>
    /// An epoch's report is made durable (<see cref="ITrainingObserver.Persist"/>) before its checkpoint is
    /// written: a process killed in between resumes from the previous checkpoint, never past a metrics line
    /// its file lacks.
    /// </summary>
    [Fact]
    public void AnEpochsReportIsPersisted_BeforeItsCheckpointIsWritten()
    {
        string path = Path.Combine(Path.GetTempPath(), $"dbp-order-{Guid.NewGuid():N}.safetensors");
        try
        {
            TrainingSession session = TrainingSession.Prepare(SmallConfig, TestNetworks.RandomDataset(150, 10, 3, 2), null, 0.25);
            var order = new PersistOrder(path);
            using (var trainer = new Trainer(session))
            {
                trainer.Run(order, new CheckpointPolicy(path));
            }
            Assert.Equal(SmallConfig.Epochs, order.Persisted.Count);
            foreach (var (reported, onDisk) in order.Persisted)
            {
                Assert.True(onDisk < reported, $"when the report of step {reported} was persisted the checkpoint on disk was of step {onDisk}");
            }
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
        public List<(long Reported, long OnDisk)> Persisted { get; } = [];

        public void StepCompleted(StepReport report)
        {
        }

        public void EpochCompleted(EpochReport report) => _lastReported = report.Step;

        public void Persist() => Persisted.Add((_lastReported, File.Exists(checkpoint)
            ? long.Parse(Models.SafeTensors.ReadMetadata(checkpoint)["global_step"], System.Globalization.CultureInfo.InvariantCulture)
            : -1));
    }

    [Fact]
    public void RestoringACheckpointOfAnotherConfiguration_IsRefused()
    {
        var data = TestNetworks.RandomDataset(60, 10, 3, 2);
        string path = Path.Combine(Path.GetTempPath(), $"dbp-ck-{Guid.NewGuid():N}.safetensors");
        try
        {
            TrainingSession.Prepare(SmallConfig, data, null, 0.25).SaveCheckpoint(path);
            var other = TrainingSession.Prepare(SmallConfig with { BatchSize = SmallConfig.BatchSize + 1, Optimizer = SmallConfig.Optimizer with { LearningRate = 0.5f } }, data, null, 0.25);
            var error = Assert.Throws<Models.ModelFileException>(() => other.RestoreCheckpoint(path));
            // Each differing option by name, both values; nothing about the settings that agree.
            Assert.Equal($"{path}: the checkpoint was trained with other options: --batch-size {SmallConfig.BatchSize} in the checkpoint, {SmallConfig.BatchSize + 1} now; "
                + $"--lr {SmallConfig.Optimizer.LearningRate.ToString(System.Globalization.CultureInfo.InvariantCulture)} in the checkpoint, 0.5 now; resume with the checkpoint's values, or train anew", error.Message);
            // More epochs may follow a checkpoint (the schedule does not depend on the run's length here).
            TrainingSession.Prepare(SmallConfig with { Epochs = SmallConfig.Epochs + 3 }, data, null, 0.25).RestoreCheckpoint(path);
            var otherData = TrainingSession.Prepare(SmallConfig, TestNetworks.RandomDataset(60, 10, 3, 3), null, 0.25);
            Assert.Contains("different data", Assert.Throws<Models.ModelFileException>(() => otherData.RestoreCheckpoint(path)).Message);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Theory]
    [InlineData("global_step", "abc", "__metadata__.global_step is 'abc', not a step count (a whole number ≥ 0)")]
    [InlineData("global_step", "1e3", "__metadata__.global_step is '1e3', not a step count (a whole number ≥ 0)")]
    [InlineData("optimizer_steps", "x", "__metadata__.optimizer_steps is 'x', not a step count (a whole number ≥ 0)")]
    [InlineData("optimizer_steps", "-1", "__metadata__.optimizer_steps is '-1', not a step count (a whole number ≥ 0)")]
    [InlineData("optimizer_steps", "5", "__metadata__.optimizer_steps 5 exceeds global_step 0")]
    public void CheckpointStepsThatAreNotCounts_AreRefusedNamingTheKey(string key, string value, string expected)
    {
        var (path, error) = RestoreEditedCheckpoint((_, metadata) => metadata[key] = value);
        Assert.Equal($"{path}: {expected}", error);
    }

    [Theory]
    [InlineData("optimizer.m")]
    [InlineData("layers.0.bias")]
    public void CheckpointWithNonFiniteState_IsRefusedNamingTheTensor(string tensor)
    {
        var (path, error) = RestoreEditedCheckpoint((tensors, _) => tensors[tensor].Data[3] = float.PositiveInfinity);
        Assert.Equal($"{path}: tensor {tensor} holds Infinity at index 3; its values must be finite", error);
    }

    /// <summary>
    /// Saves a fresh run's checkpoint, edits it as another tool might (with a checksum that matches the
    /// edit) and restores it: the error message, and the path it should name.
    /// </summary>
    private static (string Path, string Error) RestoreEditedCheckpoint(Action<Dictionary<string, Models.Tensor>, Dictionary<string, string>> edit)
    {
        var data = TestNetworks.RandomDataset(60, 10, 3, 2);
        string path = Path.Combine(Path.GetTempPath(), $"dbp-ck-{Guid.NewGuid():N}.safetensors");
        try
        {
            TrainingSession.Prepare(SmallConfig, data, null, 0.25).SaveCheckpoint(path);
            var (tensors, metadata) = Models.SafeTensors.Read(path);
            edit(tensors, metadata);
            DataFiles.WriteAtomically(path, s => Models.SafeTensors.Write(s, tensors.Values.ToList(), metadata));
            var error = Assert.Throws<Models.ModelFileException>(() => TrainingSession.Prepare(SmallConfig, data, null, 0.25).RestoreCheckpoint(path));
            return (path, error.Message);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void EpochPlan_IsASeededPermutation_WithAShortLastBatch()
    {
        EpochPlan plan = EpochPlan.Create(10, 4, seed: 1, epoch: 0);
        Assert.Equal(3, plan.Steps);
        Assert.Equal(2, plan.BatchRows(2).Length);
        var all = Enumerable.Range(0, 3).SelectMany(s => plan.BatchRows(s).ToArray()).ToArray();
        Assert.Equal(Enumerable.Range(0, 10), all.Order());
        Assert.NotEqual(all, Enumerable.Range(0, 3).SelectMany(s => EpochPlan.Create(10, 4, 1, 1).BatchRows(s).ToArray()).ToArray());
    }
}
