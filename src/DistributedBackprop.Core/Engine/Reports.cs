namespace DistributedBackprop.Engine;

/// <summary>
/// Reported after every update (cheap; observers throttle their own output): a step, or with local steps a
/// round (then <see cref="Round"/> holds its figures and <see cref="Rows"/> counts all its inner steps' rows).
/// </summary>
public readonly record struct StepReport(long GlobalStep, int Epoch, int StepInEpoch, int StepsPerEpoch, long TotalSteps, double Loss, int Rows, TimeSpan Elapsed, RoundReport? Round = null);

/// <summary>
/// A round of local steps: each replica's mean inner training loss over the round (in replica order; NaN for a
/// replica that had no rows) and the Euclidean norm of the outer step ‖θ_before − θ_after‖, summed in parameter
/// order, so both are the same bits whoever computed the round.
/// </summary>
public sealed record RoundReport(IReadOnlyList<double> ReplicaLosses, double OuterStepNorm)
{
    /// <summary>The round's figures from the reduced replica results and the applied update.</summary>
    public static RoundReport From(ReadOnlySpan<Network.BatchResult> replicas, double outerStepNorm)
    {
        var losses = new double[replicas.Length];
        for (int r = 0; r < losses.Length; r++)
        {
            losses[r] = replicas[r].Rows == 0 ? double.NaN : replicas[r].LossSum / replicas[r].Rows;
        }
        return new RoundReport(losses, outerStepNorm);
    }
}

/// <summary>Reported at the end of every epoch; one line of the --metrics file.</summary>
public sealed record EpochReport
{
    /// <summary>1-based epoch number.</summary>
    public required int Epoch { get; init; }
    /// <summary>Global steps done so far.</summary>
    public required long Step { get; init; }
    public required double TrainLoss { get; init; }
    public required double TrainAccuracy { get; init; }
    /// <summary>Validation loss and accuracy of the parameters after this epoch, when the run holds out a validation set.</summary>
    public double? ValidationLoss { get; init; }
    public double? ValidationAccuracy { get; init; }
    /// <summary>The best validation epoch so far (1-based; 0 while none had a finite score), when validating.</summary>
    public int? BestEpoch { get; init; }
    /// <summary>Early stopping ends the run after this epoch.</summary>
    public bool StoppedEarly { get; init; }
    public double? TestLoss { get; init; }
    public double? TestAccuracy { get; init; }
    public required double SamplesPerSecond { get; init; }
    public required TimeSpan EpochTime { get; init; }
    public required TimeSpan Elapsed { get; init; }
    public required float LearningRate { get; init; }
    /// <summary>Gradient producers that took part (threads, or worker actors).</summary>
    public int Workers { get; init; } = 1;
    /// <summary>Time the step's combiner spent waiting for the slowest producer, summed over the epoch.</summary>
    public TimeSpan? WaitingForSlowest { get; init; }
    /// <summary>Time in reduce + optimizer update + broadcast, summed over the epoch.</summary>
    public TimeSpan? ServerTime { get; init; }
    /// <summary>Steps of the epoch whose update kept a copy of θ per worker (actor modes; <see cref="UpdateLayout"/>).</summary>
    public long? StepsWithThetaCopies { get; init; }
    /// <summary>Gradients dropped as stale or duplicate during the epoch.</summary>
    public long? DroppedGradients { get; init; }
    /// <summary>Per-worker steps/s (worker name → rate), when workers are actors.</summary>
    public IReadOnlyDictionary<string, double>? WorkerStepsPerSecond { get; init; }
    /// <summary>Fraction of the epoch each worker spent computing gradients, when workers are actors.</summary>
    public IReadOnlyDictionary<string, double>? WorkerBusyFraction { get; init; }

    /// <summary>Per worker: median and 90th percentile of its compute seconds per step this epoch (actor modes).</summary>
    public IReadOnlyDictionary<string, double>? WorkerStepSecondsMedian { get; init; }
    public IReadOnlyDictionary<string, double>? WorkerStepSecondsP90 { get; init; }

    /// <summary>With local steps: the epoch's rounds (each update's report, <see cref="StepReport.Round"/> set).</summary>
    public IReadOnlyList<StepReport>? Rounds { get; init; }

    /// <summary>Cluster mode: bytes through the server's bulk channel during the epoch, both directions.</summary>
    public long? BulkBytes { get; init; }
}

/// <summary>Receives progress from a trainer.</summary>
public interface ITrainingObserver
{
    void StepCompleted(StepReport report);
    void EpochCompleted(EpochReport report);

    /// <summary>A worker registered with the parameter server; <paramref name="workers"/> are registered now (actor modes).</summary>
    void WorkerJoined(string name, int workers)
    {
    }

    /// <summary>A registered worker is gone: it left on purpose (<paramref name="graceful"/>: SIGTERM, Ctrl-C) or died.</summary>
    void WorkerLeft(string name, int workers, bool graceful)
    {
    }

    /// <summary>
    /// Returns once what the observer keeps on disk (the metrics file) holds every epoch reported so far. Called
    /// before an epoch's checkpoint is written: a run resumed from that checkpoint keeps the metrics lines of the
    /// epochs it covers, so the checkpoint must never be on disk before the line of its last epoch.
    /// </summary>
    void Persist()
    {
    }
}

/// <summary>An observer that ignores everything.</summary>
public sealed class NullObserver : ITrainingObserver
{
    public static readonly NullObserver Instance = new();
    public void StepCompleted(StepReport report) { }
    public void EpochCompleted(EpochReport report) { }
}
