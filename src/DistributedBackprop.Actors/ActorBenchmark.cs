using System.Diagnostics;
using DistributedBackprop.Engine;

namespace DistributedBackprop.Actors;

/// <summary>Throughput of the actor path plus where a step's time goes.</summary>
/// <param name="ThetaCopiesFraction">the timed epochs' steps whose update kept a copy of θ per worker (<see cref="UpdateLayout"/>; auto times both layouts); NaN when no epoch ended while timed.</param>
public sealed record ActorThroughput(ThroughputResult Throughput, double ServerTimeFraction, double WaitForSlowestFraction, IReadOnlyDictionary<string, double> WorkerStepsPerSecond, IReadOnlyDictionary<string, double> WorkerBusyFraction, double ThetaCopiesFraction);

/// <summary>
/// Measures local-mode training (coordinator, parameter server, N workers) the way
/// <see cref="Benchmarks.MeasureSteps"/> measures the plain trainer: a warm-up, then timed windows over
/// the steps the parameter server applies.
/// </summary>
public static class ActorBenchmark
{
    public static ActorThroughput Measure(TrainingSession session, int workers, TimeSpan warmup, int windows, TimeSpan window)
    {
        var counter = new CountingObserver();
        LocalTraining run = LocalTraining.Start(session, workers, counter);
        try
        {
            Thread.Sleep(warmup);
            counter.StartTiming();
            long allocatedBefore = GC.GetTotalAllocatedBytes(precise: true);
            long firstStep = counter.Steps;
            var rates = new List<double>();
            var clock = Stopwatch.StartNew();
            for (int w = 0; w < windows; w++)
            {
                // From one update's completion to the first after the window: a round of local steps may take
                // as long as a window, and counting whole rounds in a fixed window would give 0, 1 or 2 of them.
                var (startRows, startTime) = NextUpdate(counter, clock, run);
                Thread.Sleep(window);
                var (endRows, endTime) = NextUpdate(counter, clock, run);
                rates.Add((endRows - startRows) / (endTime - startTime).TotalSeconds);
            }
            long steps = counter.Steps - firstStep;
            long allocated = GC.GetTotalAllocatedBytes(precise: true) - allocatedBefore;
            if (run.Completion.IsFaulted)
            {
                run.Completion.GetAwaiter().GetResult();
            }
            double[] sorted = rates.Order().ToArray();
            double median = sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
            var (server, wait, perWorker, busy, copies) = counter.Breakdown();
            return new ActorThroughput(new ThroughputResult(median, sorted[0], sorted[^1], rates, steps, steps == 0 ? 0 : (double)allocated / steps), server, wait, perWorker, busy, copies);
        }
        finally
        {
            run.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
    }

    /// <summary>Waits (in 1 ms naps) until the next update is reported; its rows so far and the time.</summary>
    private static (long Rows, TimeSpan At) NextUpdate(CountingObserver counter, Stopwatch clock, LocalTraining run)
    {
        long steps = counter.Steps;
        while (counter.Steps == steps)
        {
            if (run.Completion.IsCompleted)
            {
                run.Completion.GetAwaiter().GetResult();
                throw new InvalidOperationException("the benchmark's training run ended before it was measured");
            }
            Thread.Sleep(1);
        }
        return (counter.Rows, clock.Elapsed);
    }

    private sealed class CountingObserver : ITrainingObserver
    {
        private readonly object _gate = new();
        private readonly List<(EpochReport Report, long Steps)> _timed = [];
        private long _steps, _rows, _stepsBeforeEpoch;
        private volatile bool _timing;

        /// <summary>Updates applied (with local steps, one per round).</summary>
        public long Steps => Interlocked.Read(ref _steps);

        /// <summary>Rows trained on (every inner step's rows, with local steps).</summary>
        public long Rows => Interlocked.Read(ref _rows);

        public void StartTiming() => _timing = true;

        public void StepCompleted(StepReport report)
        {
            Interlocked.Add(ref _rows, report.Rows);
            Interlocked.Increment(ref _steps);
        }

        public void EpochCompleted(EpochReport report)
        {
            lock (_gate)
            {
                if (_timing)
                {
                    _timed.Add((report, report.Step - _stepsBeforeEpoch));
                }
                _stepsBeforeEpoch = report.Step;
            }
        }

        public (double Server, double Wait, IReadOnlyDictionary<string, double> PerWorker, IReadOnlyDictionary<string, double> Busy, double ThetaCopies) Breakdown()
        {
            lock (_gate)
            {
                double total = _timed.Sum(r => r.Report.EpochTime.TotalSeconds);
                if (total == 0)
                {
                    return (0, 0, new Dictionary<string, double>(), new Dictionary<string, double>(), double.NaN);
                }
                static Dictionary<string, double> Mean(IEnumerable<IReadOnlyDictionary<string, double>?> maps) =>
                    maps.SelectMany(m => m ?? new Dictionary<string, double>()).GroupBy(kv => kv.Key).ToDictionary(g => g.Key, g => g.Average(kv => kv.Value));
                long steps = _timed.Sum(r => r.Steps);
                return (_timed.Sum(r => r.Report.ServerTime?.TotalSeconds ?? 0) / total, _timed.Sum(r => r.Report.WaitingForSlowest?.TotalSeconds ?? 0) / total,
                    Mean(_timed.Select(r => r.Report.WorkerStepsPerSecond)), Mean(_timed.Select(r => r.Report.WorkerBusyFraction)),
                    steps == 0 ? double.NaN : (double)_timed.Sum(r => r.Report.StepsWithThetaCopies ?? 0) / steps);
            }
        }
    }
}
