using System.Globalization;
using DistributedBackprop.Models;

namespace DistributedBackprop.Engine;

/// <summary>The validation score that picks the best epoch and drives early stopping.</summary>
public enum ValidationMetric
{
    /// <summary>Validation loss J on the held-out rows: lower is better.</summary>
    Loss,
    /// <summary>Validation accuracy: higher is better.</summary>
    Accuracy,
}

/// <summary>Which parameters a finished run writes as its model.</summary>
public enum KeptModel
{
    /// <summary>The parameters after the last epoch trained.</summary>
    Last,
    /// <summary>The parameters after the epoch with the best validation score.</summary>
    Best,
}

/// <summary>
/// The validation record of a run: each epoch's validation score arrives in order, the tracker keeps the best
/// epoch (strictly better only, so ties keep the earlier epoch) and a copy of its parameters, and says stop
/// once <c>patience</c> epochs in a row have not improved on it (Keras's EarlyStopping with min_delta 0).
/// It sees only scores and parameters, never who computed them, so the epoch it stops at and the parameters
/// it keeps are the same for any number of threads or workers. Its state travels in checkpoints.
/// </summary>
public sealed class ValidationTracker
{
    private readonly ValidationMetric _metric;
    private readonly int _patience;

    /// <param name="patience">epochs without improvement before stopping; 0: never stop early.</param>
    public ValidationTracker(ValidationMetric metric, int patience)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(patience);
        _metric = metric;
        _patience = patience;
    }

    public ValidationMetric Metric => _metric;
    /// <summary>Epochs scored so far (epochs are 1-based: the last one scored is this number).</summary>
    public int EpochsScored { get; private set; }
    /// <summary>The best epoch so far (1-based), 0 before any finite score.</summary>
    public int BestEpoch { get; private set; }
    /// <summary>The best epoch's score (loss or accuracy); NaN before any.</summary>
    public double BestScore { get; private set; } = double.NaN;
    /// <summary>A copy of the parameters after <see cref="BestEpoch"/>.</summary>
    public float[]? BestParameters { get; private set; }
    /// <summary>Patience ran out: training stops after <see cref="EpochsScored"/> epochs.</summary>
    public bool Stopped { get; private set; }

    /// <summary>Epochs since the best one (what patience is compared with).</summary>
    public int EpochsWithoutImprovement => EpochsScored - BestEpoch;

    /// <summary>
    /// Records epoch <paramref name="epoch"/>'s validation result for <paramref name="parameters"/> (copied if
    /// best). Returns true when training should stop after this epoch.
    /// </summary>
    public bool Record(int epoch, EvaluationResult validation, ReadOnlySpan<float> parameters)
    {
        if (epoch != EpochsScored + 1)
        {
            throw new InvalidOperationException($"validation of epoch {epoch} recorded after epoch {EpochsScored}");
        }
        EpochsScored = epoch;
        double score = Score(validation);
        if (IsImprovement(score))
        {
            BestEpoch = epoch;
            BestScore = score;
            BestParameters ??= new float[parameters.Length];
            parameters.CopyTo(BestParameters);
        }
        Stopped = _patience > 0 && EpochsWithoutImprovement >= _patience;
        return Stopped;
    }

    public double Score(EvaluationResult validation) => _metric == ValidationMetric.Loss ? validation.Loss : validation.Accuracy;

    /// <summary>Strictly better than the best so far; a NaN score (a diverging loss) never is.</summary>
    private bool IsImprovement(double score) =>
        !double.IsNaN(score) && (BestEpoch == 0 || (_metric == ValidationMetric.Loss ? score < BestScore : score > BestScore));

    /// <summary>One line for the end of a run that validated: the best epoch, and why it stopped if it did.</summary>
    public string Describe()
    {
        string name = MetricName(_metric);
        string best = BestEpoch == 0
            ? $"no epoch had a finite validation {name}"
            : string.Create(CultureInfo.InvariantCulture, $"best validation {name} {BestScore:F4} after epoch {BestEpoch}");
        return Stopped
            ? $"early stopping after epoch {EpochsScored}: {best}, then {EpochsWithoutImprovement} epoch(s) without improvement"
            : best;
    }

    public static string MetricName(ValidationMetric metric) => metric == ValidationMetric.Loss ? "loss" : "accuracy";

    public static bool TryParseMetric(string text, out ValidationMetric metric)
    {
        (bool known, metric) = text switch
        {
            "loss" => (true, ValidationMetric.Loss),
            "accuracy" => (true, ValidationMetric.Accuracy),
            _ => (false, ValidationMetric.Loss),
        };
        return known;
    }

    private const string BestTensor = "validation.best_parameters";

    /// <summary>The tracker's state as checkpoint metadata and (if there is a best epoch) one tensor.</summary>
    public (Dictionary<string, string> Metadata, Tensor[] Tensors) ToCheckpoint()
    {
        var metadata = new Dictionary<string, string>
        {
            ["validation_epochs"] = EpochsScored.ToString(CultureInfo.InvariantCulture),
            ["validation_best_epoch"] = BestEpoch.ToString(CultureInfo.InvariantCulture),
            // "R" round-trips the double exactly, so a resumed run compares with the very same best score.
            ["validation_best_score"] = BestScore.ToString("R", CultureInfo.InvariantCulture),
            ["early_stopped"] = Stopped ? "1" : "0",
        };
        Tensor[] tensors = BestParameters is null ? [] : [new Tensor(BestTensor, [BestParameters.Length], (float[])BestParameters.Clone())];
        return (metadata, tensors);
    }

    /// <summary>Restores the state written by <see cref="ToCheckpoint"/>; <paramref name="place"/> names the file in errors.</summary>
    public void Restore(IReadOnlyDictionary<string, string> metadata, IReadOnlyDictionary<string, Tensor> tensors, int parameterCount, string place)
    {
        if (!metadata.TryGetValue("validation_epochs", out string? epochsText) || !metadata.TryGetValue("validation_best_epoch", out string? bestText)
            || !metadata.TryGetValue("validation_best_score", out string? scoreText) || !metadata.TryGetValue("early_stopped", out string? stoppedText)
            || !int.TryParse(epochsText, NumberStyles.None, CultureInfo.InvariantCulture, out int epochs)
            || !int.TryParse(bestText, NumberStyles.None, CultureInfo.InvariantCulture, out int best)
            || !double.TryParse(scoreText, NumberStyles.Float, CultureInfo.InvariantCulture, out double score)
            || stoppedText is not ("0" or "1") || best > epochs)
        {
            throw new ModelFileException($"{place}: the checkpoint's validation record is missing or malformed");
        }
        float[]? parameters = null;
        if (best > 0)
        {
            if (!tensors.TryGetValue(BestTensor, out Tensor? saved) || saved.Data.Length != parameterCount)
            {
                throw new ModelFileException($"{place}: the checkpoint names best epoch {best} but its parameters ({BestTensor}) are missing or have the wrong size");
            }
            parameters = (float[])saved.Data.Clone();
        }
        EpochsScored = epochs;
        BestEpoch = best;
        BestScore = score;
        BestParameters = parameters;
        Stopped = stoppedText == "1";
    }
}
