using DistributedBackprop.Engine;

namespace DistributedBackprop.Cli.Output;

/// <summary>
/// Cluster mode: gives each epoch's report the bytes that went through the server's bulk channel during the
/// epoch (both directions), before any observer sees it, so the metrics file and the live page agree.
/// </summary>
internal sealed class BulkBytesObserver(ITrainingObserver inner) : ITrainingObserver
{
    private long _before;

    /// <summary>The channel's byte count so far (sent + received); set once the channel exists.</summary>
    public Func<long>? Count { get; set; }

    public void StepCompleted(StepReport report) => inner.StepCompleted(report);

    public void EpochCompleted(EpochReport report)
    {
        if (Count is { } count)
        {
            long bytes = count();
            report = report with { BulkBytes = bytes - _before };
            _before = bytes;
        }
        inner.EpochCompleted(report);
    }

    public void WorkerJoined(string name, int workers) => inner.WorkerJoined(name, workers);

    public void WorkerLeft(string name, int workers, bool graceful) => inner.WorkerLeft(name, workers, graceful);

    public void Persist() => inner.Persist();
}
