using DistributedBackprop.Data;
using DistributedBackprop.Engine;
using DistributedBackprop.Models;
using DistributedBackprop.Optimizers;

namespace DistributedBackprop.Tests;

/// <summary>
/// The validation split, the best-epoch record and early stopping: unit tests of the tracker's rule, then
/// whole runs whose stopping epoch and kept parameters must not depend on threads or on a resume.
/// </summary>
public class ValidationTests
{
    private static EvaluationResult Scored(double loss, double accuracy = 0.5) => new(loss, accuracy, 10, new int[2, 2]);

    [Fact]
    public void Tracker_KeepsTheStrictlyBestEpoch_AndStopsWhenPatienceRunsOut()
    {
        var tracker = new ValidationTracker(ValidationMetric.Loss, patience: 2);
        Assert.False(tracker.Record(1, Scored(0.9), [1f]));
        Assert.False(tracker.Record(2, Scored(0.7), [2f]));
        Assert.False(tracker.Record(3, Scored(0.7), [3f])); // a tie is no improvement: the earlier epoch stays
        Assert.Equal((2, 1), (tracker.BestEpoch, tracker.EpochsWithoutImprovement));
        Assert.True(tracker.Record(4, Scored(double.NaN), [4f])); // a NaN loss never improves
        Assert.True(tracker.Stopped);
        Assert.Equal(2f, tracker.BestParameters![0]);
        Assert.Equal("early stopping after epoch 4: best validation loss 0.7000 after epoch 2, then 2 epoch(s) without improvement", tracker.Describe());
        Assert.Throws<InvalidOperationException>(() => tracker.Record(6, Scored(0.1), [6f]));
    }

    [Fact]
    public void Tracker_OnAccuracy_PrefersHigher_AndWithoutPatienceNeverStops()
    {
        var tracker = new ValidationTracker(ValidationMetric.Accuracy, patience: 0);
        for (int epoch = 1; epoch <= 20; epoch++)
        {
            Assert.False(tracker.Record(epoch, Scored(loss: epoch, accuracy: epoch == 5 ? 0.9 : 0.5), [epoch]));
        }
        Assert.Equal(5, tracker.BestEpoch);
        Assert.Equal(5f, tracker.BestParameters![0]);
        Assert.False(tracker.Stopped);
    }

    [Fact]
    public void Tracker_RoundTripsThroughCheckpointState_AndRefusesAMalformedOne()
    {
        var tracker = new ValidationTracker(ValidationMetric.Loss, patience: 3);
        tracker.Record(1, Scored(0.1 + 0.2), [1f, 2f]); // 0.30000000000000004: must come back exactly
        tracker.Record(2, Scored(0.5), [3f, 4f]);
        var (metadata, tensors) = tracker.ToCheckpoint();
        var restored = new ValidationTracker(ValidationMetric.Loss, patience: 3);
        restored.Restore(metadata, tensors.ToDictionary(t => t.Name), 2, "ck");
        Assert.Equal((2, 1, 0.1 + 0.2, false), (restored.EpochsScored, restored.BestEpoch, restored.BestScore, restored.Stopped));
        Assert.Equal([1f, 2f], restored.BestParameters!);
        Assert.False(restored.Record(3, Scored(0.1 + 0.2), [5f, 6f])); // equal to the best: no improvement
        Assert.True(restored.Record(4, Scored(0.4), [7f, 8f]));

        var withoutTensor = new ValidationTracker(ValidationMetric.Loss, 3);
        Assert.Contains("missing or have the wrong size",
            Assert.Throws<ModelFileException>(() => withoutTensor.Restore(metadata, new Dictionary<string, Tensor>(), 2, "ck")).Message);
        var badBest = new Dictionary<string, string>(metadata) { ["validation_best_epoch"] = "9" };
        Assert.Equal("ck: the checkpoint's validation record is missing or malformed",
            Assert.Throws<ModelFileException>(() => withoutTensor.Restore(badBest, tensors.ToDictionary(t => t.Name), 2, "ck")).Message);
    }

    [Fact]
    public void ValidationRows_AreASeededPartOfTheTrainingRows_ApartFromTheTestSet()
    {
        Dataset digits = DataSources.EmbeddedDigits();
        var config = new TrainingConfig { ValidationFraction = 0.25 };
        var (train, validation, test) = TrainingSession.SplitRows(config, digits, null, 0.2);
        Assert.Equal(digits.Rows, train.Rows + validation!.Rows + test!.Rows);
        Assert.Equal((int)Math.Round((digits.Rows - test.Rows) * 0.25, MidpointRounding.AwayFromZero), validation.Rows);
        // Every row lands in exactly one part: rows of a data set whose only feature is the row's index.
        const int n = 500;
        var indexed = new Dataset("indexed", 1, Enumerable.Range(0, n).Select(i => (float)i).ToArray(), Enumerable.Range(0, n).Select(i => i % 3).ToArray(), ["a", "b", "c"], DataKind.Table);
        var parts = TrainingSession.SplitRows(config, indexed, null, 0.2);
        int[] seen = new[] { parts.Train, parts.Validation!, parts.Test! }.SelectMany(p => p.Values).Select(v => (int)v).Order().ToArray();
        Assert.Equal(Enumerable.Range(0, n), seen);
        var (_, validationAgain, _) = TrainingSession.SplitRows(config, digits, null, 0.2);
        Assert.Equal(validation.Labels, validationAgain!.Labels);
        var (_, otherSeed, _) = TrainingSession.SplitRows(config with { Seed = 2 }, digits, null, 0.2);
        Assert.NotEqual(validation.Labels, otherSeed!.Labels);

        // Preprocessing is fitted on the training rows alone, and the test split is the one without validation.
        TrainingSession session = TrainingSession.Prepare(config, digits, null, 0.2);
        Assert.Equal(Preprocessing.Fit(train).Shift, session.Preprocessing.Shift);
        Assert.Equal(TrainingSession.SplitRows(new TrainingConfig(), digits, null, 0.2).Test!.Labels, test.Labels);
        Assert.Equal(validation.Rows, session.Validation!.Rows);
    }

    private static TrainingConfig StoppingConfig => new()
    {
        HiddenLayers = [32],
        Epochs = 60,
        BatchSize = 16,
        Chunks = 6,
        Seed = 3,
        ValidationFraction = 0.3,
        EarlyStopping = 2,
        Optimizer = new OptimizerSettings { Kind = OptimizerKind.Adam, LearningRate = 0.01f },
    };

    // Random labels: the network can only memorise, so the validation loss turns up within a few epochs.
    private static Dataset Noise
    {
        get
        {
            var (x, labels) = TestNetworks.RandomBatch(240, 8, 3, 11);
            return new Dataset("noise", 8, TestNetworks.ToFloat(x), labels, ["a", "b", "c"], DataKind.Table);
        }
    }

    private static (TrainingSession Session, List<EpochReport> Epochs) Train(TrainingConfig config, int threads)
    {
        TrainingSession session = TrainingSession.Prepare(config, Noise, null, 0.2);
        var epochs = new Recorder();
        using var trainer = new Trainer(session, threads);
        trainer.Run(epochs);
        return (session, epochs.Epochs);
    }

    [Fact]
    public void EarlyStopping_PicksTheSameEpochAndBits_ForAnyThreadCount()
    {
        var (reference, epochs) = Train(StoppingConfig, threads: 1);
        Assert.True(reference.StoppedEarly);
        int stoppedAfter = epochs[^1].Epoch;
        Assert.True(stoppedAfter < StoppingConfig.Epochs, $"stopped after {stoppedAfter} epochs");
        Assert.Equal(stoppedAfter * reference.StepsPerEpoch, reference.GlobalStep);
        Assert.True(epochs[^1].StoppedEarly);
        Assert.Equal(stoppedAfter - 2, reference.Tracker!.BestEpoch);
        // The best epoch is the one with the lowest validation loss reported, and the kept model holds its parameters.
        Assert.Equal(epochs.MinBy(e => e.ValidationLoss)!.Epoch, reference.Tracker.BestEpoch);
        ModelFile best = reference.ToModel(KeptModel.Best);
        Assert.Equal(reference.Tracker.BestParameters, best.Parameters);
        Assert.NotEqual(reference.Parameters, best.Parameters);
        Assert.Equal(("best", reference.Tracker.BestEpoch.ToString(System.Globalization.CultureInfo.InvariantCulture)),
            (best.ExtraMetadata["kept"], best.ExtraMetadata["best_epoch"]));
        Assert.Equal("last", reference.ToModel(KeptModel.Last).ExtraMetadata["kept"]);

        foreach (int threads in new[] { 2, 3, 6 })
        {
            var (session, runEpochs) = Train(StoppingConfig, threads);
            Assert.Equal(stoppedAfter, runEpochs[^1].Epoch);
            GemmTests.AssertBitwise(reference.Parameters, session.Parameters, $"last, {threads} threads");
            GemmTests.AssertBitwise(best.Parameters, session.ToModel(KeptModel.Best).Parameters, $"best, {threads} threads");
        }
    }

    [Fact]
    public void ResumingAfterAnyEpoch_StopsAtTheSameEpoch_WithTheSameBits()
    {
        var (reference, epochs) = Train(StoppingConfig, threads: 1);
        int stoppedAfter = epochs[^1].Epoch;
        string path = Path.Combine(Path.GetTempPath(), $"dbp-validation-{Guid.NewGuid():N}.safetensors");
        try
        {
            foreach (int interruptAfter in new[] { 1, stoppedAfter - 1 })
            {
                TrainingSession first = TrainingSession.Prepare(StoppingConfig, Noise, null, 0.2);
                using (var cancel = new CancellationTokenSource())
                using (var trainer = new Trainer(first))
                {
                    var stopper = new Recorder { AfterEpoch = e => { if (e.Epoch == interruptAfter) cancel.Cancel(); } };
                    Assert.Throws<OperationCanceledException>(() => trainer.Run(stopper, new CheckpointPolicy(path), cancel.Token));
                }
                TrainingSession resumed = TrainingSession.Prepare(StoppingConfig, Noise, null, 0.2);
                resumed.RestoreCheckpoint(path);
                Assert.Equal(interruptAfter, resumed.Tracker!.EpochsScored);
                var rest = new Recorder();
                using (var trainer = new Trainer(resumed, threads: 2))
                {
                    trainer.Run(rest);
                }
                Assert.Equal(stoppedAfter, rest.Epochs[^1].Epoch);
                GemmTests.AssertBitwise(reference.ToModel(KeptModel.Best).Parameters, resumed.ToModel(KeptModel.Best).Parameters, $"resumed after epoch {interruptAfter}");
                GemmTests.AssertBitwise(reference.Parameters, resumed.Parameters, $"last, resumed after epoch {interruptAfter}");
            }

            // A run that has stopped stays stopped: its checkpoint resumes as finished.
            reference.SaveCheckpoint(path);
            TrainingSession again = TrainingSession.Prepare(StoppingConfig, Noise, null, 0.2);
            again.RestoreCheckpoint(path);
            Assert.True(again.IsFinished);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void ACheckpointAtAnEpochsEnd_WrittenBeforeItsValidation_IsScoredOnRestore()
    {
        var (reference, _) = Train(StoppingConfig, threads: 1);
        string path = Path.Combine(Path.GetTempPath(), $"dbp-validation-{Guid.NewGuid():N}.safetensors");
        try
        {
            // What a per-step checkpoint falling on an epoch's last step leaves if the process dies before the
            // epoch's own checkpoint: the position is the epoch's end, the validation record one epoch short.
            TrainingSession first = TrainingSession.Prepare(StoppingConfig, Noise, null, 0.2);
            using (var trainer = new Trainer(first))
            {
                for (int i = 0; i < first.StepsPerEpoch; i++)
                {
                    trainer.Step(out _);
                }
            }
            first.SaveCheckpoint(path);
            Assert.Equal(0, first.Tracker!.EpochsScored);

            TrainingSession resumed = TrainingSession.Prepare(StoppingConfig, Noise, null, 0.2);
            resumed.RestoreCheckpoint(path);
            Assert.Equal((1, 1), (resumed.Tracker!.EpochsScored, resumed.Tracker.BestEpoch));
            using (var trainer = new Trainer(resumed))
            {
                trainer.Run(NullObserver.Instance);
            }
            GemmTests.AssertBitwise(reference.ToModel(KeptModel.Best).Parameters, resumed.ToModel(KeptModel.Best).Parameters, "resumed from an unscored epoch end");
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void Settings_AreCheckedAndNamedByTheirOptions_AndAbsentFromTheJsonWhenUnset()
    {
        Assert.Equal("--early-stopping: needs a validation set (--validation-fraction F); stopping on the test set would tune on it",
            (StoppingConfig with { ValidationFraction = 0 }).Validate());
        Assert.Equal("--validation-fraction: must be in [0, 1), got 1", (StoppingConfig with { ValidationFraction = 1 }).Validate());
        Assert.DoesNotContain("validation", new TrainingConfig().ToJson(), StringComparison.Ordinal);
        TrainingConfig accuracy = StoppingConfig with { EarlyStoppingMetric = ValidationMetric.Accuracy };
        Assert.True(TrainingConfig.FromJson(accuracy.ToJson()).SameAs(accuracy));
        SortedDictionary<string, string> options = accuracy.AsOptions();
        Assert.Equal(("0.3", "2", "accuracy"), (options["validation-fraction"], options["early-stopping"], options["early-stopping-metric"]));
        Assert.Contains("--early-stopping 2 in the checkpoint, 3 now", (StoppingConfig with { EarlyStopping = 3 }).DifferencesFrom(StoppingConfig));
        // A checkpoint without validation names the settings' defaults, not "(none)".
        Assert.Equal(["--early-stopping 0 in the checkpoint, 2 now", "--validation-fraction 0 in the checkpoint, 0.3 now"],
            StoppingConfig.DifferencesFrom(StoppingConfig with { ValidationFraction = 0, EarlyStopping = 0 }));
    }

    private sealed class Recorder : ITrainingObserver
    {
        public List<EpochReport> Epochs { get; } = [];
        public Action<EpochReport>? AfterEpoch { get; init; }
        public void StepCompleted(StepReport report) { }
        public void EpochCompleted(EpochReport report)
        {
            Epochs.Add(report);
            AfterEpoch?.Invoke(report);
        }
    }
}
