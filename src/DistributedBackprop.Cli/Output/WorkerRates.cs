using System.Diagnostics;
using System.Globalization;
using Akka.Actor;
using DistributedBackprop.Actors;
using DistributedBackprop.Actors.Cluster;

namespace DistributedBackprop.Cli.Output;

/// <summary>
/// Per-worker steps per second over the last sampling interval: the difference of two samples of each
/// worker's step count over the time between them. A worker seen in one sample only (it just joined, or it
/// left) has no rate yet, so a newcomer never shows an inflated figure and a departed one disappears at the
/// next sample. Thread-safe: samples arrive on a timer while the display reads <see cref="Describe"/>.
/// </summary>
internal sealed class WorkerRates
{
    private readonly Lock _lock = new();
    private (TimeSpan At, IReadOnlyDictionary<string, long> Steps)? _previous;
    private IReadOnlyDictionary<string, double> _rates = new Dictionary<string, double>();

    public void Sample(TimeSpan at, IReadOnlyDictionary<string, long> steps)
    {
        lock (_lock)
        {
            if (_previous is var (then, before) && at > then)
            {
                double seconds = (at - then).TotalSeconds;
                _rates = steps.Where(s => before.ContainsKey(s.Key))
                    .ToDictionary(s => s.Key, s => Math.Max(0, s.Value - before[s.Key]) / seconds, StringComparer.Ordinal);
            }
            _previous = (at, steps);
        }
    }

    /// <summary>The rates of the last interval (worker name → steps/s).</summary>
    public IReadOnlyDictionary<string, double> Current
    {
        get
        {
            lock (_lock)
            {
                return _rates;
            }
        }
    }

    /// <summary>"name:rate/s" per worker in name order, e.g. "worker-1:812/s worker-2:790/s"; empty before two samples.</summary>
    public string Describe() => string.Join(' ', Current.OrderBy(r => r.Key, StringComparer.Ordinal)
        .Select(r => string.Create(CultureInfo.InvariantCulture, $"{r.Key}:{r.Value:F0}/s")));

    /// <summary>
    /// Asks the parameter server of <paramref name="system"/> for its workers' step counts every
    /// <paramref name="interval"/> until disposed; a missed answer (starting, stopping) skips one sample.
    /// </summary>
    public static IAsyncDisposable Poll(ActorSystem system, WorkerRates rates, TimeSpan interval)
    {
        var stop = new CancellationTokenSource();
        var clock = Stopwatch.StartNew();
        Task loop = Task.Run(async () =>
        {
            using var timer = new PeriodicTimer(interval);
            do
            {
                try
                {
                    WorkerStepCounts counts = await system.ActorSelection(ClusterNaming.ParameterServerPath)
                        .Ask<WorkerStepCounts>(GetWorkerStepCounts.Instance, interval, stop.Token).ConfigureAwait(false);
                    rates.Sample(clock.Elapsed, counts.Steps);
                }
                catch (Exception) when (!stop.IsCancellationRequested)
                {
                    // No answer this time (starting, stopping, a timeout): the rates are a display, never a
                    // reason to fail the run; the next tick tries again.
                }
                catch (OperationCanceledException)
                {
                    return;
                }
            }
            while (await timer.WaitForNextTickAsync(stop.Token).ConfigureAwait(false));
        });
        return new Stopper(stop, loop);
    }

    private sealed class Stopper(CancellationTokenSource stop, Task loop) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            await stop.CancelAsync().ConfigureAwait(false);
            try
            {
                await loop.ConfigureAwait(false);
            }
            catch (Exception)
            {
                // WaitForNextTickAsync ends the loop by cancellation; nothing a display's poll did may replace
                // the training's own result.
            }
            stop.Dispose();
        }
    }
}
