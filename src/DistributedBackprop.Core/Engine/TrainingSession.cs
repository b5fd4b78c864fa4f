using System.Globalization;
using DistributedBackprop.Data;
using DistributedBackprop.Models;
using DistributedBackprop.Network;
using DistributedBackprop.Optimizers;
using DistributedBackprop.Randomness;

namespace DistributedBackprop.Engine;

/// <summary>
/// A prepared training run: the config, the preprocessed training and test data, the architecture, and
/// the mutable training state (parameters, optimizer state, global step). The plain trainer and the
/// actor system's parameter server both drive one of these, which is why they produce the same bits.
/// Position: global step g ↦ epoch ⌊g / S⌋, step g mod S, with S steps per epoch. With a validation set, the
/// <see cref="ValidationTracker"/> is part of the state: it keeps the best epoch and may end the run early.
/// </summary>
public sealed class TrainingSession
{
    private TrainingSession(TrainingConfig config, Dataset train, Dataset? validation, Dataset? test, Preprocessing preprocessing, string dataHash)
    {
        Config = config;
        Train = train;
        Validation = validation;
        Test = test;
        Preprocessing = preprocessing;
        DataHash = dataHash;
        Architecture = config.BuildArchitecture(train.Features, train.Classes.Count);
        Parameters = Initialisation.Create(Architecture, config.Seed);
        // With local steps the session's update is the outer one (the replicas' inner optimizers live with them).
        Optimizer = new Optimizer(Architecture, config.LocalSteps?.OuterSettings() ?? config.Optimizer);
        StepsPerEpoch = EpochPlan.StepsPerEpoch(train.Rows, config.BatchSize);
        Tracker = validation is null ? null : new ValidationTracker(config.EarlyStoppingMetric, config.EarlyStopping);
    }

    public TrainingConfig Config { get; }
    public Architecture Architecture { get; }
    /// <summary>Training rows after preprocessing.</summary>
    public Dataset Train { get; }
    /// <summary>Validation rows after preprocessing (carved from the training data), if any.</summary>
    public Dataset? Validation { get; }
    /// <summary>The validation record (best epoch, early stopping); null without a validation set.</summary>
    public ValidationTracker? Tracker { get; }
    /// <summary>Test rows after preprocessing, if any.</summary>
    public Dataset? Test { get; }
    public Preprocessing Preprocessing { get; }
    public IReadOnlyList<string> Classes => Train.Classes;
    /// <summary>Content hash of the raw training data (before preprocessing).</summary>
    public string DataHash { get; }
    public float[] Parameters { get; }
    public Optimizer Optimizer { get; }
    public long GlobalStep { get; set; }
    public int StepsPerEpoch { get; }
    public long TotalSteps => (long)StepsPerEpoch * Config.Epochs;
    public int Epoch => (int)(GlobalStep / StepsPerEpoch);
    public int StepInEpoch => (int)(GlobalStep % StepsPerEpoch);
    /// <summary>Every epoch is trained, or early stopping ended the run.</summary>
    public bool IsFinished => GlobalStep >= TotalSteps || StoppedEarly;
    public bool StoppedEarly => Tracker?.Stopped == true;

    /// <summary>
    /// Prepares a run from raw data: the test set is <paramref name="test"/>, else a seeded split of
    /// <paramref name="testFraction"/> of the data, else none; the validation set is a seeded split of the
    /// config's fraction of what is left (its own random stream, so it does not echo the test split's
    /// order); preprocessing is fitted on the training rows alone.
    /// </summary>
    public static TrainingSession Prepare(TrainingConfig config, Dataset data, Dataset? test, double testFraction)
    {
        if (config.Validate() is string problem)
        {
            throw new ArgumentException(problem);
        }
        if (data.Classes.Count < 2)
        {
            throw new DataException($"{data.Source}: {data.Classes.Count} class(es); classification needs at least two");
        }
        (Dataset train, Dataset? validation, test) = SplitRows(config, data, test, testFraction);
        if (test is not null && test.Features != train.Features)
        {
            throw new DataException($"{test.Source}: {test.Features} features, the training data has {train.Features}");
        }
        config.CheckFits(train.Features, train.Classes.Count, GC.GetGCMemoryInfo().TotalAvailableMemoryBytes);
        Preprocessing preprocessing = Preprocessing.Fit(train);
        Dataset preparedTrain = preprocessing.Apply(train);
        return new TrainingSession(config, preparedTrain, validation is null ? null : preprocessing.Apply(validation),
            test is null ? null : preprocessing.Apply(test), preprocessing, data.ContentHash());
    }

    /// <summary>
    /// Makes, now, what computing gradients in this process reads beside the training rows: the images' byte codes
    /// (<see cref="Dataset.ByteCoded"/>: 1 byte a value, ~0.2 s for Fashion-MNIST), made with the data and not by the
    /// first worker's constructor, which in local mode is an actor's. `train` and `bench` call it; a cluster server
    /// does not, as its workers compute the gradients from their own copy of the rows (or the floats it streams).
    /// </summary>
    public void PrepareLocalGradients() => _ = Train.ByteCoded;

    /// <summary>
    /// A run's rows before preprocessing: the test set (given, or split off), the validation set split off what
    /// is left, and the training rows. A cluster worker reading its own copy of the data rebuilds the server's
    /// training rows with this very function.
    /// </summary>
    public static (Dataset Train, Dataset? Validation, Dataset? Test) SplitRows(TrainingConfig config, Dataset data, Dataset? test, double testFraction)
    {
        Dataset train = data;
        if (test is null && testFraction > 0)
        {
            (train, test) = DataSources.Split(data, testFraction, config.Seed);
        }
        Dataset? validation = null;
        if (config.ValidationFraction > 0)
        {
            (train, validation) = DataSources.Split(train, config.ValidationFraction, config.Seed, StreamPurpose.ValidationSplit, "validation");
        }
        return (train, validation, test);
    }

    /// <summary>
    /// Scores <paramref name="parameters"/> (the session's, or a copy taken at an epoch's end) on the validation
    /// and test sets. Pure: it changes nothing, so an actor may run it off its thread.
    /// </summary>
    public EpochScores Score(Evaluator evaluator, ReadOnlySpan<float> parameters) => new(
        Validation is null ? null : evaluator.Evaluate(parameters, Validation),
        Test is null ? null : evaluator.Evaluate(parameters, Test));

    /// <summary>
    /// Closes epoch <paramref name="epoch"/> (1-based) with its validation result: the tracker keeps the best
    /// parameters and decides whether patience has run out (then <see cref="IsFinished"/>). Called between
    /// epochs, when nothing else touches the session.
    /// </summary>
    public void RecordValidation(int epoch, EvaluationResult? validation, ReadOnlySpan<float> parameters)
    {
        if (Tracker is not null && validation is not null)
        {
            Tracker.Record(epoch, validation, parameters);
        }
    }

    /// <summary>Applies one step's gradient: w ← update(w, g) with the schedule's γ for this step.</summary>
    public float ApplyStep(ReadOnlySpan<float> gradient)
    {
        float learningRate = BeginStep();
        Optimizer.ApplyRange(Parameters, gradient, learningRate, 0, Parameters.Length);
        EndStep();
        return learningRate;
    }

    /// <summary>Starts an update in parts: returns γ; then <see cref="Optimizers.Optimizer.ApplyRange"/> over all parameters, then <see cref="EndStep"/>.</summary>
    public float BeginStep()
    {
        if (IsFinished)
        {
            throw new InvalidOperationException("training is already finished");
        }
        Optimizer.BeginStep();
        return Optimizer.Settings.LearningRateAt(GlobalStep, Epoch, TotalSteps);
    }

    /// <summary>The steps the next update covers (1; with local steps the round's H, or what is left of the epoch).</summary>
    public int StepsInUpdate => Config.StepsInUpdate(StepInEpoch, StepsPerEpoch);

    /// <summary>Updates applied so far: the steps, or with local steps the rounds (⌈S/H⌉ per epoch).</summary>
    public long UpdatesDone => Config.LocalSteps is { Steps: var h }
        ? GlobalStep / StepsPerEpoch * ((StepsPerEpoch + h - 1) / h) + (StepInEpoch + h - 1) / h
        : GlobalStep;

    /// <summary>With <c>--outer-overlap</c> the bases of the epoch's rounds (<see cref="OverlappedRoundBases"/>); else null.</summary>
    public OverlappedRoundBases? CreateRoundBases() =>
        Config.LocalSteps is { OuterOverlap: true } ? new OverlappedRoundBases() : null;

    /// <summary>The next update's number in its epoch (a step's, or a round's: rounds start at multiples of H).</summary>
    public int UpdateInEpoch => StepInEpoch / (Config.LocalSteps?.Steps ?? 1);

    /// <summary>Another update follows the next one in the same epoch.</summary>
    public bool UpdateFollowsInEpoch => StepInEpoch + StepsInUpdate < StepsPerEpoch;

    /// <summary>An update is applied: the position moves past the steps it covered.</summary>
    public void EndStep() => GlobalStep += StepsInUpdate;

    /// <summary>
    /// The model to write: the last parameters, or with <see cref="KeptModel.Best"/> those of the best
    /// validation epoch. A run that validated says which in the metadata: "kept" (best or last; last also
    /// when no epoch had a finite score) and "best_epoch"; `--run MODEL` reads "kept" back as --keep.
    /// </summary>
    public ModelFile ToModel(KeptModel keep = KeptModel.Last)
    {
        Dictionary<string, string> metadata = ModelMetadata();
        float[] parameters = Parameters;
        if (Tracker is { } tracker)
        {
            bool best = keep == KeptModel.Best && tracker.BestEpoch > 0;
            metadata["kept"] = best ? "best" : "last";
            metadata["best_epoch"] = tracker.BestEpoch.ToString(CultureInfo.InvariantCulture);
            if (best)
            {
                parameters = tracker.BestParameters!;
            }
        }
        return new ModelFile(Architecture, (float[])parameters.Clone(), Preprocessing, Classes, metadata);
    }

    private Dictionary<string, string> ModelMetadata() => new()
    {
        ["config"] = Config.ToJson(),
        ["data_hash"] = DataHash,
        ["steps"] = GlobalStep.ToString(CultureInfo.InvariantCulture),
    };

    /// <summary>
    /// Writes a checkpoint: the model file plus the optimizer state tensors and the position
    /// (global step, optimizer steps) in the metadata; the epoch order is a function of (seed, epoch), so
    /// the position is all the random state there is. Atomic.
    /// </summary>
    public void SaveCheckpoint(string path) => SnapshotCheckpoint().Save(path);

    /// <summary>
    /// A copy of the resumable state as it is now (parameters, optimizer state, step): it can be written on
    /// another thread while training goes on, so a parameter server never blocks on the disk.
    /// </summary>
    public CheckpointSnapshot SnapshotCheckpoint()
    {
        var metadata = new Dictionary<string, string>(ModelMetadata())
        {
            ["checkpoint"] = "1",
            ["global_step"] = GlobalStep.ToString(CultureInfo.InvariantCulture),
            ["optimizer_steps"] = Optimizer.Steps.ToString(CultureInfo.InvariantCulture),
        };
        var tensors = Optimizer.StateTensors().Select(s => new Tensor(s.Name, [s.Values.Length], (float[])s.Values.Clone())).ToList();
        if (Tracker is not null)
        {
            var (validationMetadata, validationTensors) = Tracker.ToCheckpoint();
            foreach (var (key, value) in validationMetadata)
            {
                metadata[key] = value;
            }
            tensors.AddRange(validationTensors);
        }
        var model = new ModelFile(Architecture, (float[])Parameters.Clone(), Preprocessing, Classes, metadata);
        return new CheckpointSnapshot(model, GlobalStep, tensors);
    }

    /// <summary>
    /// Restores the state saved by <see cref="SaveCheckpoint"/> into this freshly prepared session. The
    /// checkpoint must come from the same config and data (compared exactly), or resuming would silently
    /// train a different model.
    /// </summary>
    public void RestoreCheckpoint(string path)
    {
        var file = SafeTensors.Read(path);
        var (tensors, metadata) = file;
        if (!metadata.TryGetValue("checkpoint", out _) || !metadata.TryGetValue("global_step", out string? stepText)
            || !metadata.TryGetValue("optimizer_steps", out string? optimizerStepsText))
        {
            throw new ModelFileException($"{path}: not a training checkpoint (a model file has no optimizer state; train anew)");
        }
        long globalStep = ParseStepCount(stepText, "global_step", path);
        long optimizerSteps = ParseStepCount(optimizerStepsText, "optimizer_steps", path);
        if (optimizerSteps > globalStep)
        {
            // At most one update per step; a larger count would also make the Steps setter loop that long.
            throw new ModelFileException($"{path}: __metadata__.optimizer_steps {optimizerSteps} exceeds global_step {globalStep}");
        }
        if (!metadata.TryGetValue("config", out string? configJson))
        {
            throw new ModelFileException($"{path}: the checkpoint has no training configuration");
        }
        TrainingConfig savedConfig = TrainingConfig.FromJson(configJson);
        // More (or fewer) epochs may follow unless the schedule depends on the total length (cosine).
        bool lengthMatters = Config.Optimizer.Schedule == ScheduleKind.Cosine;
        if (!(lengthMatters ? savedConfig : savedConfig with { Epochs = Config.Epochs }).SameAs(Config))
        {
            throw new ModelFileException($"{path}: the checkpoint was trained with other options: {string.Join("; ", Config.DifferencesFrom(lengthMatters ? savedConfig : savedConfig with { Epochs = Config.Epochs }))}; resume with the checkpoint's values, or train anew");
        }
        if (metadata.TryGetValue("data_hash", out string? hash) && hash != DataHash)
        {
            throw new ModelFileException($"{path}: the checkpoint was trained on different data (hash {hash[..12]}…, this data {DataHash[..12]}…)");
        }
        ModelFile model = ModelFile.FromTensors(file, path);
        if (!model.Architecture.Equals(Architecture))
        {
            throw new ModelFileException($"{path}: architecture {model.Architecture.Describe()} differs from {Architecture.Describe()}");
        }
        model.Parameters.CopyTo(Parameters, 0);
        foreach (var (name, values) in Optimizer.StateTensors())
        {
            if (!tensors.TryGetValue(name, out Tensor? saved) || saved.Data.Length != values.Length)
            {
                throw new ModelFileException($"{path}: optimizer state tensor {name} is missing or has the wrong size");
            }
            ModelFile.RequireFinite(saved, path);
            saved.Data.CopyTo(values, 0);
        }
        GlobalStep = globalStep;
        Optimizer.Steps = optimizerSteps;
        if (GlobalStep > TotalSteps)
        {
            throw new ModelFileException($"{path}: global step {GlobalStep} is outside this run's {TotalSteps} steps");
        }
        if (Config.LocalSteps is { } local && StepInEpoch % local.Steps != 0)
        {
            // Rounds start at multiples of H within an epoch; resuming elsewhere would shift every later round.
            throw new ModelFileException($"{path}: global step {GlobalStep} is not at the end of a round of {local.Steps} local steps");
        }
        if (!Config.CheckpointsInsideEpochs() && StepInEpoch != 0)
        {
            // The round in flight starts from θ one outer step old and the replicas' values: not in the file.
            throw new ModelFileException($"{path}: global step {GlobalStep} is inside an epoch; with --outer-overlap only a checkpoint from an epoch's end can be resumed");
        }
        if (Tracker is not null)
        {
            Tracker.Restore(metadata, tensors, Parameters.Length, path);
            CatchUpValidation(path);
        }
    }

    /// <summary>A step count as <see cref="SaveCheckpoint"/> writes it: digits only, no sign or spaces.</summary>
    private static long ParseStepCount(string text, string key, string path) =>
        long.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out long count)
            ? count
            : throw new ModelFileException($"{path}: __metadata__.{key} is '{text}', not a step count (a whole number ≥ 0)");

    /// <summary>
    /// A checkpoint written at an epoch's end before that epoch was scored (a per-step checkpoint that fell on
    /// the boundary, then a crash before the epoch's own) lacks one validation record: it is computed now from
    /// the checkpoint's parameters, exactly as the uninterrupted run computed it, so the run goes on the same.
    /// </summary>
    private void CatchUpValidation(string path)
    {
        int completed = Epoch;
        if (Tracker!.EpochsScored == completed)
        {
            return;
        }
        if (Tracker.EpochsScored != completed - 1 || StepInEpoch != 0)
        {
            throw new ModelFileException($"{path}: the checkpoint's validation record covers {Tracker.EpochsScored} epoch(s), its position {completed} completed epoch(s)");
        }
        RecordValidation(completed, new Evaluator(Architecture).Evaluate(Parameters, Validation!), Parameters);
    }
}

/// <summary>An epoch's held-out scores: validation (chooses the best epoch, may stop the run) and test (reported only).</summary>
public sealed record EpochScores(EvaluationResult? Validation, EvaluationResult? Test);

/// <summary>A checkpoint taken at <see cref="GlobalStep"/>, to be written (atomically) wherever and whenever.</summary>
public sealed class CheckpointSnapshot(ModelFile model, long globalStep, IReadOnlyList<Tensor> optimizerState)
{
    public long GlobalStep { get; } = globalStep;

    public void Save(string path) => model.Save(path, optimizerState);
}
