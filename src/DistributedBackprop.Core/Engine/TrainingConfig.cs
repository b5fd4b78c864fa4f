using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using DistributedBackprop.Network;
using DistributedBackprop.Optimizers;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Engine;

/// <summary>
/// Everything besides the data that determines the trained model. The invariant: the final parameters
/// are a pure function of (data, this config); the number of workers or threads is deliberately absent.
/// </summary>
public sealed record TrainingConfig
{
    /// <summary>Widths of the hidden layers (may be empty: a single-layer network).</summary>
    public IReadOnlyList<int> HiddenLayers { get; init; } = [128];
    public Activation HiddenActivation { get; init; } = Activation.Relu;
    public Activation OutputActivation { get; init; } = Activation.Softmax;
    public Loss Loss { get; init; } = Loss.CrossEntropy;
    public int Epochs { get; init; } = 30;
    /// <summary>Rows per global batch: the n of J = 1/n Σ.</summary>
    public int BatchSize { get; init; } = 32;
    /// <summary>
    /// C: every global batch is cut into this many chunks, whose gradients are combined along a fixed tree
    /// (<see cref="ChunkTree"/>). At most C workers or threads can share a step.
    /// </summary>
    public int Chunks { get; init; } = 8;
    public ulong Seed { get; init; } = 1;
    public OptimizerSettings Optimizer { get; init; } = new() { Kind = OptimizerKind.Momentum, LearningRate = 0.05f };

    // The validation settings are written into the canonical JSON only when set, so the JSON (and with it
    // every model file and checkpoint) of a run without validation is what it was before they existed.

    /// <summary>
    /// Fraction of the training rows held out for validation (a seeded split of the rows left after the test
    /// split; preprocessing is fitted without them). 0: no validation set.
    /// </summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public double ValidationFraction { get; init; }

    /// <summary>Stop after this many epochs in a row without a better validation score (0: never stop early).</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public int EarlyStopping { get; init; }

    /// <summary>The validation score that picks the best epoch and drives <see cref="EarlyStopping"/>.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public ValidationMetric EarlyStoppingMetric { get; init; }

    /// <summary>
    /// Local steps with replicas (<see cref="LocalStepsSettings"/>); null: synchronous training, one update per
    /// step. Null whenever R = 1 or H = 1 (the command line sees to it), so those runs are today's bit for bit
    /// and their JSON has no trace of it.
    /// </summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public LocalStepsSettings? LocalSteps { get; init; }

    /// <summary>
    /// θ and the optimizer state are all the state there is between two updates of an epoch. Not so with
    /// <c>--outer-overlap</c>, whose next round starts from θ one outer step old and the replicas' own values
    /// (<see cref="RoundStart"/>): its checkpoints are written at epoch ends only.
    /// </summary>
    public bool CheckpointsInsideEpochs() => LocalSteps is not { OuterOverlap: true };

    /// <summary>The most chunks (or replicas) a step is cut into, hence the most workers that can share one.</summary>
    public const int MaxUpdateParts = 1024;

    /// <summary>The parts an update is cut into, dealt to lanes or workers and reduced along their tree: the C chunks, or the R replicas.</summary>
    public int UpdateParts() => LocalSteps?.Replicas ?? Chunks;

    /// <summary>The steps the update starting at <paramref name="stepInEpoch"/> covers: 1, or a round's H (fewer at the epoch's end).</summary>
    public int StepsInUpdate(int stepInEpoch, int stepsPerEpoch) =>
        LocalSteps is { } local ? Math.Min(local.Steps, stepsPerEpoch - stepInEpoch) : 1;

    public Architecture BuildArchitecture(int inputs, int outputs) =>
        Architecture.Create(inputs, HiddenLayers, outputs, HiddenActivation, OutputActivation, Loss);

    /// <summary>
    /// Refuses, before anything is allocated, a network that cannot be trained here: one flat buffer holds at
    /// most <see cref="Array.MaxLength"/> floats, and training holds several model-sized buffers (parameters,
    /// gradient, up to two optimizer states, one gradient per lane) plus a batch's activations and deltas.
    /// The estimate is a lower bound; it is compared with 80 % of the memory this process may use.
    /// </summary>
    public void CheckFits(int inputs, int outputs, long availableBytes)
    {
        long parameters = 0, previous = inputs, units = inputs;
        foreach (long width in HiddenLayers.Select(w => (long)w).Append(outputs))
        {
            parameters += previous * width + width;
            units += width;
            previous = width;
        }
        if (parameters > Array.MaxLength)
        {
            throw new ArgumentException(string.Create(CultureInfo.InvariantCulture,
                $"--layers: the network would have {parameters:N0} parameters; one parameter buffer holds at most {Array.MaxLength:N0}"));
        }
        // The plain trainer's lanes, plus the single lane its tuner times them against; with local steps a lane
        // also holds its replica, its inner gradient and optimizer state, and a partial sum per tree level.
        int lanes = Math.Max(1, Math.Min(UpdateParts(), Environment.ProcessorCount));
        lanes += lanes > 1 ? 1 : 0;
        if (LocalSteps is { } local)
        {
            // Plus θ before each outer step, for its norm (one per lane set: two).
            // With overlap: two round bases, a start per lane and two generations of every replica's value.
            lanes = lanes * (4 + (int)Math.Log2(local.Replicas) + 1 + (local.OuterOverlap ? 1 : 0)) + 2 + (local.OuterOverlap ? 2 + 2 * local.Replicas : 0);
        }
        double modelBytes = 4.0 * parameters * (4 + lanes), batchBytes = 4.0 * 3.0 * BatchSize * units;
        double bytes = modelBytes + batchBytes;
        if (bytes > 0.8 * availableBytes)
        {
            // Blame the larger share: a huge batch on a small network is --batch-size's doing.
            throw new ArgumentException(string.Create(CultureInfo.InvariantCulture,
                $"{(batchBytes > modelBytes ? "--batch-size" : "--layers")}: training this network needs at least {bytes / 1e9:F1} GB ({parameters:N0} parameters, batch {BatchSize}); this process can use {availableBytes / 1e9:F1} GB"));
        }
    }

    /// <summary>The first problem, as "--option: reason", or null.</summary>
    public string? Validate()
    {
        if (HiddenLayers.Any(w => w < 1)) return "--layers: every layer width must be at least 1";
        if (HiddenActivation == Activation.Softmax) return "--activation: softmax is only allowed on the output layer (--output-activation)";
        if (Loss == Loss.CrossEntropy && OutputActivation != Activation.Softmax)
            return $"--loss: cross_entropy needs --output-activation softmax, not {OutputActivation.Name()}";
        if (Epochs < 1) return $"--epochs: must be at least 1, got {Epochs}";
        if (BatchSize < 1) return $"--batch-size: must be at least 1, got {BatchSize}";
        if (Chunks < 1 || Chunks > MaxUpdateParts) return $"--chunks: must be between 1 and {MaxUpdateParts}, got {Chunks}";
        if (!(ValidationFraction >= 0 && ValidationFraction < 1))
            return string.Create(CultureInfo.InvariantCulture, $"--validation-fraction: must be in [0, 1), got {ValidationFraction}");
        if (EarlyStopping < 0) return $"--early-stopping: must be at least 0, got {EarlyStopping}";
        if (EarlyStopping > 0 && ValidationFraction == 0)
            return "--early-stopping: needs a validation set (--validation-fraction F); stopping on the test set would tune on it";
        if (LocalSteps?.Validate(BatchSize) is string localProblem) return localProblem;
        return Optimizer.Validate();
    }

    private static readonly JsonSerializerOptions JsonOptions = new()
    {
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        WriteIndented = false,
    };

    /// <summary>Canonical JSON, stored in checkpoints and sent to cluster workers.</summary>
    public string ToJson() => JsonSerializer.Serialize(this, JsonOptions);

    public static TrainingConfig FromJson(string json) =>
        JsonSerializer.Deserialize<TrainingConfig>(json, JsonOptions) ?? throw new FormatException("empty training configuration");

    public bool SameAs(TrainingConfig other) => ToJson() == other.ToJson();

    /// <summary>The command-line option of each setting in the canonical JSON (the two settings without one keep their JSON name).</summary>
    private static readonly Dictionary<string, string> OptionOf = new(StringComparer.Ordinal)
    {
        ["hidden_layers"] = "--layers", ["hidden_activation"] = "--activation", ["output_activation"] = "--output-activation",
        ["loss"] = "--loss", ["epochs"] = "--epochs", ["batch_size"] = "--batch-size", ["chunks"] = "--chunks", ["seed"] = "--seed",
        ["optimizer.kind"] = "--optimizer", ["optimizer.learning_rate"] = "--lr", ["optimizer.momentum"] = "--momentum",
        ["optimizer.nesterov"] = "--nesterov", ["optimizer.beta1"] = "--beta1", ["optimizer.beta2"] = "--beta2",
        ["optimizer.weight_decay"] = "--weight-decay", ["optimizer.schedule"] = "--schedule", ["optimizer.decay_every"] = "--decay-every",
        ["optimizer.decay_factor"] = "--decay-factor", ["optimizer.min_learning_rate"] = "--min-lr", ["optimizer.warmup_steps"] = "--warmup-steps",
        ["validation_fraction"] = "--validation-fraction", ["early_stopping"] = "--early-stopping", ["early_stopping_metric"] = "--early-stopping-metric",
        ["local_steps.replicas"] = "--replicas", ["local_steps.steps"] = "--local-steps", ["local_steps.outer_optimizer"] = "--outer-optimizer",
        ["local_steps.outer_learning_rate"] = "--outer-lr", ["local_steps.outer_momentum"] = "--outer-momentum",
        ["local_steps.outer_overlap"] = "--outer-overlap",
    };

    /// <summary>
    /// This configuration as the command-line options that give it: option name without its dashes → value as
    /// one types it ("layers" → "256,128", "optimizer" → "adam"). `dbp train --run MODEL` reruns a model's recipe with it.
    /// </summary>
    public SortedDictionary<string, string> AsOptions()
    {
        var flat = new SortedDictionary<string, string>(StringComparer.Ordinal);
        Flatten(JsonNode.Parse(ToJson()), "", flat);
        var options = new SortedDictionary<string, string>(StringComparer.Ordinal);
        foreach (var (key, value) in flat)
        {
            if (OptionOf.TryGetValue(key, out string? option))
            {
                options[option.TrimStart('-')] = value;
            }
        }
        return options;
    }

    /// <summary>
    /// Each setting in which <paramref name="saved"/> (a checkpoint's) differs from this one, named by its
    /// option: "--lr 0.05 in the checkpoint, 0.1 now".
    /// </summary>
    public List<string> DifferencesFrom(TrainingConfig saved)
    {
        var before = new SortedDictionary<string, string>(StringComparer.Ordinal);
        var now = new SortedDictionary<string, string>(StringComparer.Ordinal);
        Flatten(JsonNode.Parse(saved.ToJson()), "", before);
        Flatten(JsonNode.Parse(ToJson()), "", now);
        var differences = new List<string>();
        foreach (string key in before.Keys.Union(now.Keys).Order(StringComparer.Ordinal))
        {
            // A setting left out of the JSON (the validation ones, when unset) has its default value.
            string was = before.GetValueOrDefault(key) ?? OmittedDefaults.GetValueOrDefault(key, "(none)");
            string current = now.GetValueOrDefault(key) ?? OmittedDefaults.GetValueOrDefault(key, "(none)");
            if (was != current)
            {
                differences.Add($"{OptionOf.GetValueOrDefault(key, key)} {was} in the checkpoint, {current} now");
            }
        }
        return differences;
    }

    /// <summary>The values of the settings the canonical JSON omits when they are at their defaults, as typed.</summary>
    private static readonly Dictionary<string, string> OmittedDefaults = new(StringComparer.Ordinal)
    {
        ["validation_fraction"] = "0", ["early_stopping"] = "0", ["early_stopping_metric"] = "loss",
        ["local_steps.replicas"] = "1", ["local_steps.steps"] = "1", ["local_steps.outer_optimizer"] = "nesterov",
        ["local_steps.outer_learning_rate"] = "0.7", ["local_steps.outer_momentum"] = "0.9", ["local_steps.outer_overlap"] = "false",
    };

    private static void Flatten(JsonNode? node, string prefix, SortedDictionary<string, string> into)
    {
        switch (node)
        {
            case JsonObject obj:
                foreach (var (name, child) in obj)
                {
                    Flatten(child, prefix.Length == 0 ? name : $"{prefix}.{name}", into);
                }
                break;
            case JsonArray array:
                into[prefix] = array.Count == 0 ? "none" : string.Join(',', array.Select(item => item?.ToJsonString()));
                break;
            default:
                into[prefix] = node is JsonValue value && value.TryGetValue(out string? text) ? text : node?.ToJsonString() ?? "null";
                break;
        }
    }
}
