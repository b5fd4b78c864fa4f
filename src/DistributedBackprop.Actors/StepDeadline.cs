using DistributedBackprop.Engine;

namespace DistributedBackprop.Actors;

/// <summary>
/// How long a step may wait for its chunks before the parameter server deals the missing ones again to
/// other workers: <see cref="Multiple"/> × the median of the last <see cref="Window"/> step times, never less
/// than <see cref="Floor"/>; before any step is timed, <see cref="Untimed"/> (the floor, or longer for updates
/// known to be long: a round of local steps). A worker that stays a cluster member but stops answering (a stuck compute
/// thread, a frame lost in a dead connection) then costs one deadline, not the run. Plain class: the
/// parameter server feeds it step times and asks it for the current deadline.
/// </summary>
public sealed class StepDeadline(TimeSpan floor, double multiple = 4, int window = 20, TimeSpan? untimed = null)
{
    public TimeSpan Untimed { get; } = untimed is { } first && first > floor ? first : floor;

    private readonly RecentSamples _recent = new(window);

    public TimeSpan Floor { get; } = floor;
    public double Multiple { get; } = multiple;
    public int Window => _recent.Window;

    /// <summary>From the HOCON block <c>dbp.step-deadline</c> (floor, multiple).</summary>
    public static StepDeadline From(Akka.Configuration.Config config) =>
        new(config.GetTimeSpan("dbp.step-deadline.floor", TimeSpan.FromSeconds(2)), config.GetDouble("dbp.step-deadline.multiple", 4));

    /// <summary>
    /// This deadline for updates of <paramref name="steps"/> steps each (a round of local steps): until one has
    /// been timed, it waits the floor for every step of it; then the median rules as before.
    /// </summary>
    public StepDeadline ForUpdatesOf(int steps) => steps <= 1 ? this : new(Floor, Multiple, Window, Floor * steps);

    public void StepTook(TimeSpan duration) => _recent.Add(duration.TotalSeconds);

    public TimeSpan Current => _recent.Median is double median
        ? TimeSpan.FromSeconds(Math.Max(Floor.TotalSeconds, Multiple * median))
        : Untimed;
}
