using System.Diagnostics;
using System.Text;
using System.Text.Json;
using DistributedBackprop.Engine;
using Prometheus;

namespace DistributedBackprop.Cli.Live;

/// <summary>A cluster member as the server's node sees it.</summary>
internal sealed record MemberView(string Address, IReadOnlyList<string> Roles, string Status, bool Reachable);

/// <summary>The parameter server's counters (<see cref="Actors.ServerStatistics"/>), as last polled.</summary>
internal sealed record ServerCounters(long GlobalStep, int Workers, long StaleDropped, long DuplicatesDropped, long UnregisteredIgnored, long Reassignments, long Unauthorized, long Speculations, bool Failed);

/// <summary>The newest checkpoint on disk: its file, the step it holds, when it was written.</summary>
internal sealed record CheckpointView(string Path, long GlobalStep, DateTimeOffset WrittenAt);

/// <summary>What the cluster looks like right now, for <see cref="LiveStatus.Poll"/>.</summary>
internal sealed record ClusterView(IReadOnlyList<MemberView> Members, ServerCounters? Counters, CheckpointView? Checkpoint);

/// <summary>
/// The state of a `dbp serve` run for the live page, /api/status and /metrics: fed by training progress (it
/// is an <see cref="ITrainingObserver"/>) and by a poll of the cluster (members, the parameter server's
/// counters, the newest checkpoint). Thread-safe: progress arrives on the training's threads, requests on
/// the web server's. The Prometheus metrics follow its conventions (base units, _total for counters).
/// </summary>
internal sealed class LiveStatus : ITrainingObserver
{
    private readonly object _gate = new();
    private readonly List<EpochReport> _epochs = [];
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private readonly DateTimeOffset _started = DateTimeOffset.UtcNow;
    private readonly string _title;
    private readonly long _totalSteps;
    private readonly int _totalEpochs;
    private StepReport? _lastStep;
    private TimeSpan _lastStepAt;
    private ClusterView _cluster = new([], null, null);
    private string _state = "waiting for workers";

    private readonly Gauge _globalStep, _epoch, _members, _registeredWorkers, _trainLoss, _trainAccuracy, _testLoss, _testAccuracy, _workerRate, _workerBusy, _checkpointStep;
    private readonly Counter _staleDropped, _duplicatesDropped, _unauthorized, _reassignments, _speculations;
    private readonly Histogram _stepSeconds;

    public LiveStatus(string title, long totalSteps, int totalEpochs)
    {
        _title = title;
        _totalSteps = totalSteps;
        _totalEpochs = totalEpochs;
        Registry = Metrics.NewCustomRegistry();
        MetricFactory metrics = Metrics.WithCustomRegistry(Registry);
        _globalStep = metrics.CreateGauge("dbp_global_step", "Training steps applied so far.");
        _epoch = metrics.CreateGauge("dbp_epoch", "Epochs completed.");
        _members = metrics.CreateGauge("dbp_cluster_members", "Cluster members by status as this node sees them.", "status");
        _registeredWorkers = metrics.CreateGauge("dbp_workers_registered", "Workers registered with the parameter server.");
        _trainLoss = metrics.CreateGauge("dbp_train_loss", "Mean training loss of the last completed epoch.");
        _trainAccuracy = metrics.CreateGauge("dbp_train_accuracy_ratio", "Training accuracy of the last completed epoch (0–1).");
        _testLoss = metrics.CreateGauge("dbp_test_loss", "Test loss after the last completed epoch.");
        _testAccuracy = metrics.CreateGauge("dbp_test_accuracy_ratio", "Test accuracy after the last completed epoch (0–1).");
        _workerRate = metrics.CreateGauge("dbp_worker_steps_per_second", "Steps per second each worker delivered in the last epoch.", "worker");
        _workerBusy = metrics.CreateGauge("dbp_worker_busy_ratio", "Fraction of the last epoch each worker spent computing.", "worker");
        _checkpointStep = metrics.CreateGauge("dbp_checkpoint_global_step", "The global step of the newest checkpoint on disk.");
        _staleDropped = metrics.CreateCounter("dbp_gradients_stale_dropped_total", "Gradients dropped because their step was over.");
        _duplicatesDropped = metrics.CreateCounter("dbp_gradients_duplicate_dropped_total", "Gradients dropped because another worker's result for the chunks was already in.");
        _unauthorized = metrics.CreateCounter("dbp_messages_unauthorized_total", "Messages the parameter server refused for their sender.");
        _reassignments = metrics.CreateCounter("dbp_chunk_reassignments_total", "Times a dead worker's chunks were dealt to others.");
        _speculations = metrics.CreateCounter("dbp_step_speculations_total", "Times a step's missing chunks were dealt again after its deadline.");
        _stepSeconds = metrics.CreateHistogram("dbp_step_duration_seconds", "Wall time between consecutive applied steps.",
            new HistogramConfiguration { Buckets = Histogram.ExponentialBuckets(0.0005, 2, 16) });
    }

    /// <summary>The registry /metrics serves.</summary>
    public CollectorRegistry Registry { get; }

    public void StepCompleted(StepReport report)
    {
        lock (_gate)
        {
            if (_lastStep is not null && report.Elapsed > _lastStepAt)
            {
                _stepSeconds.Observe((report.Elapsed - _lastStepAt).TotalSeconds);
            }
            _lastStep = report;
            _lastStepAt = report.Elapsed;
            _state = "training";
            _globalStep.Set(report.GlobalStep);
        }
    }

    public void EpochCompleted(EpochReport report)
    {
        lock (_gate)
        {
            _epochs.Add(report);
            _epoch.Set(report.Epoch);
            _trainLoss.Set(report.TrainLoss);
            _trainAccuracy.Set(report.TrainAccuracy);
            if (report.TestLoss is double testLoss) _testLoss.Set(testLoss);
            if (report.TestAccuracy is double testAccuracy) _testAccuracy.Set(testAccuracy);
            foreach (var (worker, rate) in report.WorkerStepsPerSecond ?? new Dictionary<string, double>())
            {
                _workerRate.WithLabels(worker).Set(rate);
            }
            foreach (var (worker, busy) in report.WorkerBusyFraction ?? new Dictionary<string, double>())
            {
                _workerBusy.WithLabels(worker).Set(busy);
            }
        }
    }

    /// <summary>The run ended (succeeded or stopped with <paramref name="message"/>).</summary>
    public void Finished(bool succeeded, string message)
    {
        lock (_gate)
        {
            _state = succeeded ? "finished" : $"stopped: {message}";
        }
    }

    /// <summary>Takes in a fresh look at the cluster.</summary>
    public void Poll(ClusterView view)
    {
        lock (_gate)
        {
            _cluster = view;
            foreach (string status in new[] { "Joining", "WeaklyUp", "Up", "Leaving", "Exiting", "Down", "Removed" })
            {
                _members.WithLabels(status).Set(view.Members.Count(m => m.Status == status));
            }
            if (view.Counters is { } c)
            {
                _registeredWorkers.Set(c.Workers);
                _staleDropped.IncTo(c.StaleDropped);
                _duplicatesDropped.IncTo(c.DuplicatesDropped);
                _unauthorized.IncTo(c.Unauthorized);
                _reassignments.IncTo(c.Reassignments);
                _speculations.IncTo(c.Speculations);
            }
            if (view.Checkpoint is { } checkpoint)
            {
                _checkpointStep.Set(checkpoint.GlobalStep);
            }
        }
    }

    /// <summary>/api/status and each server-sent event: one JSON object.</summary>
    public string Json()
    {
        lock (_gate)
        {
            using var buffer = new MemoryStream();
            using (var json = new Utf8JsonWriter(buffer))
            {
                json.WriteStartObject();
                json.WriteString("title", _title);
                json.WriteString("state", _state);
                json.WriteString("started", _started);
                json.WriteNumber("uptime_seconds", Math.Round(_clock.Elapsed.TotalSeconds, 1));
                json.WriteNumber("global_step", _lastStep?.GlobalStep ?? _cluster.Counters?.GlobalStep ?? 0);
                json.WriteNumber("total_steps", _totalSteps);
                json.WriteNumber("epochs_completed", _epochs.Count == 0 ? 0 : _epochs[^1].Epoch);
                json.WriteNumber("epochs", _totalEpochs);
                if (_lastStep is { } step)
                {
                    json.WriteNumber("last_step_loss", step.Loss);
                }
                json.WriteStartArray("members");
                foreach (MemberView member in _cluster.Members)
                {
                    json.WriteStartObject();
                    json.WriteString("address", member.Address);
                    json.WriteStartArray("roles");
                    foreach (string role in member.Roles) json.WriteStringValue(role);
                    json.WriteEndArray();
                    json.WriteString("status", member.Status);
                    json.WriteBoolean("reachable", member.Reachable);
                    json.WriteEndObject();
                }
                json.WriteEndArray();
                json.WriteStartArray("workers");
                EpochReport? last = _epochs.Count == 0 ? null : _epochs[^1];
                foreach (var (worker, rate) in (last?.WorkerStepsPerSecond ?? new Dictionary<string, double>()).OrderBy(w => w.Key, StringComparer.Ordinal))
                {
                    json.WriteStartObject();
                    json.WriteString("name", worker);
                    json.WriteNumber("steps_per_second", Math.Round(rate, 2));
                    json.WriteNumber("busy_fraction", Math.Round(last!.WorkerBusyFraction?.GetValueOrDefault(worker) ?? 0, 4));
                    json.WriteEndObject();
                }
                json.WriteEndArray();
                // One entry per epoch, as the --metrics file writes it, without the per-round detail of local
                // steps (hundreds of rounds an epoch at a small H, sent again at every poll; the page draws epochs).
                json.WriteStartArray("history");
                foreach (EpochReport e in _epochs)
                {
                    json.WriteRawValue(Output.MetricsWriter.ToJson(e.Rounds is null ? e : e with { Rounds = null }));
                }
                json.WriteEndArray();
                if (_cluster.Checkpoint is { } checkpoint)
                {
                    json.WriteStartObject("checkpoint");
                    json.WriteString("path", checkpoint.Path);
                    json.WriteNumber("global_step", checkpoint.GlobalStep);
                    json.WriteString("written_at", checkpoint.WrittenAt);
                    json.WriteEndObject();
                }
                else
                {
                    json.WriteNull("checkpoint");
                }
                json.WriteStartObject("counters");
                ServerCounters? c = _cluster.Counters;
                json.WriteNumber("workers_registered", c?.Workers ?? 0);
                json.WriteNumber("stale_dropped", c?.StaleDropped ?? 0);
                json.WriteNumber("duplicates_dropped", c?.DuplicatesDropped ?? 0);
                json.WriteNumber("unregistered_ignored", c?.UnregisteredIgnored ?? 0);
                json.WriteNumber("reassignments", c?.Reassignments ?? 0);
                json.WriteNumber("unauthorized", c?.Unauthorized ?? 0);
                json.WriteNumber("speculations", c?.Speculations ?? 0);
                json.WriteEndObject();
                json.WriteEndObject();
            }
            return Encoding.UTF8.GetString(buffer.ToArray());
        }
    }
}

/// <summary>Passes training progress to several observers (the terminal display and the live status).</summary>
internal sealed class ObserverTee(params ITrainingObserver[] observers) : ITrainingObserver
{
    public void StepCompleted(StepReport report)
    {
        foreach (ITrainingObserver observer in observers) observer.StepCompleted(report);
    }

    public void EpochCompleted(EpochReport report)
    {
        foreach (ITrainingObserver observer in observers) observer.EpochCompleted(report);
    }

    public void WorkerJoined(string name, int workers)
    {
        foreach (ITrainingObserver observer in observers) observer.WorkerJoined(name, workers);
    }

    public void WorkerLeft(string name, int workers, bool graceful)
    {
        foreach (ITrainingObserver observer in observers) observer.WorkerLeft(name, workers, graceful);
    }

    public void Persist()
    {
        foreach (ITrainingObserver observer in observers) observer.Persist();
    }
}

/// <summary>`dbp serve`'s log of workers joining and leaving: one line each on standard error, with the time.</summary>
internal sealed class MembershipLog(int minimumWorkers) : ITrainingObserver
{
    public void StepCompleted(StepReport report)
    {
    }

    public void EpochCompleted(EpochReport report)
    {
    }

    public void WorkerJoined(string name, int workers) =>
        Write($"worker {name} joined ({workers} worker{(workers == 1 ? "" : "s")}{(workers < minimumWorkers ? $", training starts at {minimumWorkers}" : "")})");

    public void WorkerLeft(string name, int workers, bool graceful) =>
        Write(graceful
            ? $"worker {name} left (a graceful stop; {workers} worker{(workers == 1 ? "" : "s")} left; its chunks go to the others)"
            : $"worker {name} died ({workers} worker{(workers == 1 ? "" : "s")} left; its chunks go to the others)");

    private static void Write(string line) =>
        Actors.OneLine.ToStandardError(string.Create(System.Globalization.CultureInfo.InvariantCulture, $"dbp serve {DateTime.Now:HH:mm:ss}: {line}"));
}
