using System.CommandLine;
using DistributedBackprop.Data;
using DistributedBackprop.Engine;
using DistributedBackprop.Network;
using DistributedBackprop.Optimizers;

namespace DistributedBackprop.Cli.Commands;

/// <summary>
/// The options that define a training run (data, network, optimizer, schedule, seed), shared by every
/// command that trains, so `dbp train` and the cluster server accept the very same flags.
/// </summary>
internal sealed class TrainingOptionSet
{
    public Option<string?> Data { get; } = new("--data") { Description = "Training data: a CSV file (.gz ok; --header says whether its first row names the columns), an IDX images file, or a directory with the MNIST-style IDX files. Default: the embedded UCI digits.", HelpName = "PATH" };
    public Option<string?> Label { get; } = new("--label") { Description = "CSV label column: a header name or a 0-based index (−1 = last). Default: the last column.", HelpName = "COLUMN" };
    public Option<CsvHeader> Header { get; } = OptionParsing.HeaderOption();
    public Option<string?> TestData { get; } = new("--test-data") { Description = "Test data (same format and classes as the training data).", HelpName = "PATH" };
    public Option<double?> TestFraction { get; } = new("--test-fraction")
    {
        Description = "Hold out this fraction of the data for testing (seeded split). Default 0.2 unless test data is given or bundled (IDX t10k files).",
        HelpName = "F",
        CustomParser = r => OptionParsing.ParseFraction(r, "--test-fraction"),
    };
    public Option<int[]> Layers { get; } = OptionParsing.LayersOption("--layers", "Hidden layer widths, comma-separated; 'none' for no hidden layer.", [128]);
    public Option<Activation> Activation { get; } = OptionParsing.ActivationOption("--activation", "Activation of the hidden layers.", Network.Activation.Relu, allowSoftmax: false);
    public Option<Activation> OutputActivation { get; } = OptionParsing.ActivationOption("--output-activation", "Activation of the output layer.", Network.Activation.Softmax, allowSoftmax: true);
    public Option<Loss> Loss { get; } = OptionParsing.LossOption(Network.Loss.CrossEntropy);
    public Option<int> Epochs { get; } = OptionParsing.PositiveInt("--epochs", "Passes over the training data.", 30);
    public Option<int> BatchSize { get; } = OptionParsing.PositiveInt("--batch-size", "Rows per global batch (the n of J = 1/n Σ), whatever the number of workers.", 32);
    public Option<int> Chunks { get; } = OptionParsing.PositiveInt("--chunks", "Each batch is cut into this many chunks whose gradients add up along a fixed tree; at most this many workers share a step. Part of the model's definition.", 8);
    public Option<float> LearningRate { get; } = OptionParsing.PositiveFloat("--lr", "Learning rate γ.", 0.05f);
    public Option<OptimizerKind> Optimizer { get; } = OptionParsing.OptimizerOption(OptimizerKind.Momentum);
    public Option<float> Momentum { get; } = OptionParsing.FloatInRange("--momentum", "Momentum μ (momentum optimizer).", 0.9f, 0f, 1f, maxExclusive: true);
    public Option<bool> Nesterov { get; } = new("--nesterov") { Description = "Nesterov momentum." };
    public Option<float> Beta1 { get; } = OptionParsing.FloatInRange("--beta1", "Adam β1.", 0.9f, 0f, 1f, maxExclusive: true);
    public Option<float> Beta2 { get; } = OptionParsing.FloatInRange("--beta2", "Adam β2.", 0.999f, 0f, 1f, maxExclusive: true);
    public Option<float> WeightDecay { get; } = OptionParsing.FloatInRange("--weight-decay", "Weight decay λ on weights (not biases): L2 for sgd/momentum, decoupled for adam.", 0f, 0f, float.MaxValue, maxExclusive: false);
    public Option<ScheduleKind> Schedule { get; } = OptionParsing.ScheduleOption();
    public Option<int> DecayEvery { get; } = OptionParsing.PositiveInt("--decay-every", "Step schedule: epochs between decays.", 10);
    public Option<float> DecayFactor { get; } = OptionParsing.FloatInRange("--decay-factor", "Step schedule: factor per decay.", 0.1f, 0f, 1f, maxExclusive: false);
    public Option<float> MinLearningRate { get; } = OptionParsing.FloatInRange("--min-lr", "Cosine schedule: final learning rate.", 0f, 0f, float.MaxValue, maxExclusive: false);
    public Option<int> WarmupSteps { get; } = OptionParsing.IntInRange("--warmup-steps", "Linear learning-rate warm-up over this many steps.", 0, 0);
    public Option<ulong> Seed { get; } = OptionParsing.SeedOption();
    public Option<double> ValidationFraction { get; } = OptionParsing.Fraction("--validation-fraction",
        "Hold out this fraction of the training rows for validation (seeded, apart from the test set; preprocessing is fitted without them). Each epoch is scored on it; --early-stopping and --keep best use it. 0: none.");
    public Option<int> EarlyStopping { get; } = OptionParsing.IntInRange("--early-stopping",
        "Stop after this many epochs in a row without a better validation score (needs --validation-fraction). 0: train every epoch.", 0, 0, helpName: "EPOCHS");
    public Option<ValidationMetric> EarlyStoppingMetric { get; } = OptionParsing.ValidationMetricOption();
    public Option<KeptModel?> Keep { get; } = OptionParsing.KeepOption();
    public Option<int> Replicas { get; } = OptionParsing.IntInRange("--replicas", "Local steps (DiLoCo-style): R model replicas, each training on its own share of every batch for --local-steps steps between exchanges; at most R workers are busy. Part of the model's definition. 1: synchronous training.", 1, 1, helpName: "R");
    public Option<int> LocalSteps { get; } = OptionParsing.IntInRange("--local-steps", "With --replicas R: inner steps H each replica takes before the server averages the replicas' changes and applies --outer-optimizer (one exchange per H steps). 1: synchronous training.", 1, 1, helpName: "H");
    public Option<OuterOptimizerKind> OuterOptimizer { get; } = OptionParsing.OuterOptimizerOption();
    public Option<float> OuterLearningRate { get; } = OptionParsing.PositiveFloat("--outer-lr", "With local steps: the outer learning rate γ_out.", LocalStepsSettings.DefaultOuterLearningRate);
    public Option<float> OuterMomentum { get; } = OptionParsing.FloatInRange("--outer-momentum", "With local steps and --outer-optimizer nesterov: the outer momentum μ_out.", LocalStepsSettings.DefaultOuterMomentum, 0f, 1f, maxExclusive: true);
    public Option<bool> OuterOverlap { get; } = new("--outer-overlap")
    {
        Description = "With local steps: overlap each round's exchange with the next round's inner steps, stale by one round (each replica goes on from its own last round, moved by θ's previous outer step). Part of the model's definition; still the same bytes for any worker count. Checkpoints at epoch ends only.",
    };

    public IEnumerable<Option> All() =>
    [
        Data, Label, Header, TestData, TestFraction, Layers, Activation, OutputActivation, Loss, Epochs, BatchSize, Chunks,
        LearningRate, Optimizer, Momentum, Nesterov, Beta1, Beta2, WeightDecay, Schedule, DecayEvery, DecayFactor,
        MinLearningRate, WarmupSteps, Seed, ValidationFraction, EarlyStopping, EarlyStoppingMetric, Keep,
        Replicas, LocalSteps, OuterOptimizer, OuterLearningRate, OuterMomentum, OuterOverlap,
    ];

    /// <summary>
    /// One line for each training option given on the command line that the others make pointless (a
    /// momentum for Adam, a decay step for the cosine schedule): the user meant something by it.
    /// </summary>
    public IEnumerable<string> Ignored(ParseResult parse)
    {
        OptimizerKind optimizer = parse.GetValue(Optimizer);
        ScheduleKind schedule = parse.GetValue(Schedule);
        foreach (Option option in new Option[] { Momentum, Nesterov })
        {
            if (Given(parse, option) && optimizer != OptimizerKind.Momentum)
            {
                yield return $"{option.Name} has no effect with --optimizer {OptimizerSettings.Name(optimizer)} (it tunes --optimizer momentum)";
            }
        }
        foreach (Option option in new Option[] { Beta1, Beta2 })
        {
            if (Given(parse, option) && optimizer != OptimizerKind.Adam)
            {
                yield return $"{option.Name} has no effect with --optimizer {OptimizerSettings.Name(optimizer)} (it tunes --optimizer adam)";
            }
        }
        foreach (Option option in new Option[] { DecayEvery, DecayFactor })
        {
            if (Given(parse, option) && schedule != ScheduleKind.Step)
            {
                yield return $"{option.Name} has no effect with --schedule {OptimizerSettings.Name(schedule)} (it tunes --schedule step)";
            }
        }
        if (Given(parse, MinLearningRate) && schedule != ScheduleKind.Cosine)
        {
            yield return $"--min-lr has no effect with --schedule {OptimizerSettings.Name(schedule)} (it tunes --schedule cosine)";
        }
        if (Given(parse, EarlyStoppingMetric) && parse.GetValue(ValidationFraction) == 0)
        {
            yield return "--early-stopping-metric has no effect without --validation-fraction F (there is no validation score)";
        }
        bool localSteps = parse.GetValue(Replicas) > 1 && parse.GetValue(LocalSteps) > 1;
        foreach (Option option in new Option[] { OuterOptimizer, OuterLearningRate, OuterMomentum, OuterOverlap })
        {
            if (Given(parse, option) && !localSteps)
            {
                yield return $"{option.Name} has no effect without --replicas R and --local-steps H, both above 1 (training is synchronous)";
            }
        }
        if (localSteps && Given(parse, OuterMomentum) && parse.GetValue(OuterOptimizer) == OuterOptimizerKind.Sgd)
        {
            yield return "--outer-momentum has no effect with --outer-optimizer sgd (it tunes --outer-optimizer nesterov)";
        }
        if (!localSteps && (parse.GetValue(Replicas) > 1 || parse.GetValue(LocalSteps) > 1))
        {
            yield return $"--replicas {parse.GetValue(Replicas)} with --local-steps {parse.GetValue(LocalSteps)}: local steps need both above 1; training is synchronous";
        }
        if (localSteps && Given(parse, Chunks))
        {
            yield return "--chunks has no effect with local steps (each replica's share of a batch is one chunk; the replicas are the parts)";
        }
    }

    /// <summary>
    /// --keep as given, else best when early stopping (the epochs after the best one are the ones that made
    /// patience run out), else last. Best without a validation set is the user's error.
    /// </summary>
    public KeptModel KeptModel(ParseResult parse, TrainingConfig config)
    {
        KeptModel? keep = parse.GetValue(Keep);
        if (keep == Engine.KeptModel.Best && config.ValidationFraction == 0)
        {
            throw new UsageException("--keep best: needs a validation set (--validation-fraction F); the best epoch is chosen on it, never on the test set");
        }
        return keep ?? (config.EarlyStopping > 0 ? Engine.KeptModel.Best : Engine.KeptModel.Last);
    }

    /// <summary>Typed on the command line, not a default.</summary>
    public static bool Given(ParseResult parse, Option option) => parse.GetResult(option) is { Implicit: false };

    /// <summary>Prints each line as a one-line warning of <paramref name="command"/> on stderr.</summary>
    public static void Warn(string command, IEnumerable<string> lines)
    {
        foreach (string line in lines)
        {
            Actors.OneLine.ToStandardError($"dbp {command}: warning: {line}");
        }
    }

    public void AddTo(Command command)
    {
        foreach (Option option in All())
        {
            command.Options.Add(option);
        }
    }

    public TrainingConfig Config(ParseResult parse)
    {
        var config = new TrainingConfig
        {
            HiddenLayers = parse.GetValue(Layers) ?? [],
            HiddenActivation = parse.GetValue(Activation),
            OutputActivation = parse.GetValue(OutputActivation),
            Loss = parse.GetValue(Loss),
            Epochs = parse.GetValue(Epochs),
            BatchSize = parse.GetValue(BatchSize),
            // With local steps the replicas are the parts and --chunks changes nothing: kept at its default so
            // it cannot make two equal models' files differ or a resume refuse.
            Chunks = parse.GetValue(Replicas) > 1 && parse.GetValue(LocalSteps) > 1 ? new TrainingConfig().Chunks : parse.GetValue(Chunks),
            Seed = parse.GetValue(Seed),
            ValidationFraction = parse.GetValue(ValidationFraction),
            EarlyStopping = parse.GetValue(EarlyStopping),
            // Without a validation set the metric does nothing (a warning says so); it must not change the config either.
            EarlyStoppingMetric = parse.GetValue(ValidationFraction) > 0 ? parse.GetValue(EarlyStoppingMetric) : ValidationMetric.Loss,
            // R = 1 or H = 1 is synchronous training: no local-steps settings, so the model is today's bit for bit.
            LocalSteps = parse.GetValue(Replicas) > 1 && parse.GetValue(LocalSteps) > 1
                ? new LocalStepsSettings
                {
                    Replicas = parse.GetValue(Replicas),
                    Steps = parse.GetValue(LocalSteps),
                    OuterOptimizer = parse.GetValue(OuterOptimizer),
                    OuterLearningRate = parse.GetValue(OuterLearningRate),
                    // Plain SGD has no momentum: kept at its default, so it cannot tell two equal runs apart.
                    OuterMomentum = parse.GetValue(OuterOptimizer) == OuterOptimizerKind.Nesterov ? parse.GetValue(OuterMomentum) : LocalStepsSettings.DefaultOuterMomentum,
                    OuterOverlap = parse.GetValue(OuterOverlap),
                }
                : null,
            Optimizer = new OptimizerSettings
            {
                Kind = parse.GetValue(Optimizer),
                LearningRate = parse.GetValue(LearningRate),
                Momentum = parse.GetValue(Momentum),
                Nesterov = parse.GetValue(Nesterov),
                Beta1 = parse.GetValue(Beta1),
                Beta2 = parse.GetValue(Beta2),
                WeightDecay = parse.GetValue(WeightDecay),
                Schedule = parse.GetValue(Schedule),
                DecayEvery = parse.GetValue(DecayEvery),
                DecayFactor = parse.GetValue(DecayFactor),
                MinLearningRate = parse.GetValue(MinLearningRate),
                WarmupSteps = parse.GetValue(WarmupSteps),
            },
        };
        if (config.Validate() is string problem)
        {
            throw new UsageException(problem);
        }
        return config;
    }

    /// <summary>Loads the data the options name and prepares the session (split, preprocessing).</summary>
    public TrainingSession PrepareSession(ParseResult parse, TrainingConfig config, string? dataOverride = null) =>
        PrepareSessionWithSplit(parse, config, dataOverride).Session;

    /// <summary>As <see cref="PrepareSession"/>, also returning the test fraction actually split off (0 when the test set came from elsewhere).</summary>
    public (TrainingSession Session, double SplitFraction) PrepareSessionWithSplit(ParseResult parse, TrainingConfig config, string? dataOverride = null)
    {
        string? dataPath = dataOverride ?? parse.GetValue(Data);
        if (dataPath is not null && string.IsNullOrWhiteSpace(dataPath))
        {
            // An empty path is a mistake (an unset variable in a script), not a request for the embedded digits.
            throw new UsageException($"--data: a path is required, got '{dataPath}'");
        }
        string? label = parse.GetValue(Label);
        CsvHeader header = parse.GetValue(Header);
        LoadedData loaded = DataSources.Load(dataPath, label, header);
        Dataset? test = null;
        string? testPath = parse.GetValue(TestData);
        double? fraction = parse.GetValue(TestFraction);
        if (testPath is not null)
        {
            if (fraction is > 0)
            {
                throw new UsageException("--test-data and --test-fraction exclude each other");
            }
            test = DataSources.LoadWithClasses(testPath, label, loaded.Train.Classes, loaded.Train.Features, header: header);
        }
        else if (fraction is null)
        {
            test = loaded.BundledTest;
        }
        double split = test is null ? fraction ?? 0.2 : 0;
        return (TrainingSession.Prepare(config, loaded.Train, test, split), split);
    }
}
