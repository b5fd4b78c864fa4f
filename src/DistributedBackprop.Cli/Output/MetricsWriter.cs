using System.Text;
using System.Text.Json;
using DistributedBackprop.Data;
using DistributedBackprop.Engine;

namespace DistributedBackprop.Cli.Output;

/// <summary>
/// The --metrics file: JSON lines, one object per epoch. The file is rewritten atomically (the lines so far
/// streamed from the previous file, plus the new ones, to a temporary name, fsynced, then renamed), so a
/// reader (or a crash) never sees a half-written line, and memory does not grow with the epochs. The writing
/// happens on a thread of its own: the caller (in actor mode, the coordinator actor) only queues a line and
/// never waits for the disk; lines that queue up while a write is under way go out together in the next one.
/// A write that fails is reported by the next <see cref="Append"/> or by <see cref="Flush"/>.
/// </summary>
internal sealed class MetricsWriter : IDisposable
{
    private readonly string _path;
    private readonly object _gate = new();
    private readonly List<byte[]> _queued = [];
    private readonly Thread _writer;
    private bool _writing, _closing, _hasLines;
    private Exception? _failure;

    /// <param name="resumedEpochs">when a run resumes from a checkpoint, the epochs it had completed: their
    /// lines in an existing file are kept (a restarted server must not lose the history before its crash).</param>
    public MetricsWriter(string path, long resumedEpochs = 0)
    {
        _path = path;
        if (resumedEpochs > 0 && File.Exists(path))
        {
            DataFiles.WriteAtomically(path, stream =>
            {
                using var writer = new StreamWriter(stream, new UTF8Encoding(false), leaveOpen: true) { NewLine = "\n" };
                foreach (string line in File.ReadLines(path))
                {
                    if (EpochOf(line) is long epoch && epoch <= resumedEpochs)
                    {
                        writer.WriteLine(line);
                    }
                }
            });
            _hasLines = true;
        }
        _writer = new Thread(WriteQueued) { IsBackground = true, Name = "dbp-metrics" };
        _writer.Start();
    }

    private static long? EpochOf(string line)
    {
        try
        {
            using var document = JsonDocument.Parse(line);
            return document.RootElement.TryGetProperty("epoch", out JsonElement epoch) && epoch.TryGetInt64(out long value) ? value : null;
        }
        catch (JsonException)
        {
            return null;
        }
    }

    /// <summary>Queues the epoch's line; throws if an earlier write failed (the run stops rather than lose lines).</summary>
    public void Append(EpochReport report)
    {
        byte[] line = Encoding.UTF8.GetBytes(ToJson(report) + "\n");
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_closing, this);
            ThrowIfFailed();
            _queued.Add(line);
            Monitor.PulseAll(_gate);
        }
    }

    /// <summary>Returns once every line queued so far is in the file; throws the error of a write that failed.</summary>
    public void Flush()
    {
        lock (_gate)
        {
            while ((_queued.Count > 0 || _writing) && _failure is null)
            {
                Monitor.Wait(_gate);
            }
            ThrowIfFailed();
        }
    }

    /// <summary>Writes what is queued (errors go unreported: call <see cref="Flush"/> first when they matter) and stops the thread.</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            _closing = true;
            Monitor.PulseAll(_gate);
        }
        _writer.Join();
    }

    private void ThrowIfFailed()
    {
        if (_failure is not null)
        {
            throw new IOException(_failure.Message, _failure);
        }
    }

    private void WriteQueued()
    {
        while (true)
        {
            byte[][] lines;
            lock (_gate)
            {
                while (_queued.Count == 0 && !_closing)
                {
                    Monitor.Wait(_gate);
                }
                if (_queued.Count == 0 || _failure is not null)
                {
                    return;
                }
                lines = [.. _queued];
                _queued.Clear();
                _writing = true;
            }
            Exception? failure = null;
            try
            {
                bool keep = _hasLines && File.Exists(_path);
                DataFiles.WriteAtomically(_path, stream =>
                {
                    if (keep)
                    {
                        using FileStream previous = File.OpenRead(_path);
                        previous.CopyTo(stream);
                    }
                    foreach (byte[] line in lines)
                    {
                        stream.Write(line);
                    }
                });
                _hasLines = true;
            }
            catch (Exception e)
            {
                // Whatever it is, it must reach the training thread (Append, Flush), not end the process here.
                failure = e is IOException ? e : new IOException($"{_path}: cannot write ({e.Message})", e);
            }
            lock (_gate)
            {
                _failure ??= failure;
                _writing = false;
                Monitor.PulseAll(_gate);
            }
        }
    }

    private static void WriteMap(Utf8JsonWriter json, string name, IReadOnlyDictionary<string, double>? map, int digits)
    {
        if (map is null)
        {
            return;
        }
        json.WriteStartObject(name);
        foreach (var (worker, value) in map.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            json.WriteNumber(worker, Math.Round(value, digits));
        }
        json.WriteEndObject();
    }

    /// <summary>
    /// A held-out loss can be NaN or infinite while training goes on (logits that overflow on rows it never
    /// trained on); JSON has no such numbers, so they are written as null, like a missing value.
    /// </summary>
    private static void WriteNumberOrNull(Utf8JsonWriter json, string name, double? value)
    {
        if (value is double number && double.IsFinite(number)) json.WriteNumber(name, number); else json.WriteNull(name);
    }

    public static string ToJson(EpochReport r)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            json.WriteNumber("epoch", r.Epoch);
            json.WriteNumber("step", r.Step);
            json.WriteNumber("train_loss", r.TrainLoss);
            json.WriteNumber("train_accuracy", r.TrainAccuracy);
            // Validation keys appear only in runs that validate, so other runs' lines are unchanged.
            if (r.ValidationLoss is double validationLoss) WriteNumberOrNull(json, "validation_loss", validationLoss);
            if (r.ValidationAccuracy is double validationAccuracy) WriteNumberOrNull(json, "validation_accuracy", validationAccuracy);
            if (r.BestEpoch is int bestEpoch) json.WriteNumber("best_epoch", bestEpoch);
            if (r.StoppedEarly) json.WriteBoolean("stopped_early", true);
            WriteNumberOrNull(json, "test_loss", r.TestLoss);
            WriteNumberOrNull(json, "test_accuracy", r.TestAccuracy);
            json.WriteNumber("samples_per_second", Math.Round(r.SamplesPerSecond, 1));
            json.WriteNumber("epoch_seconds", Math.Round(r.EpochTime.TotalSeconds, 4));
            json.WriteNumber("elapsed_seconds", Math.Round(r.Elapsed.TotalSeconds, 4));
            json.WriteNumber("learning_rate", r.LearningRate);
            json.WriteNumber("workers", r.Workers);
            if (r.WaitingForSlowest is TimeSpan wait) json.WriteNumber("wait_for_slowest_seconds", Math.Round(wait.TotalSeconds, 4));
            if (r.ServerTime is TimeSpan server) json.WriteNumber("server_seconds", Math.Round(server.TotalSeconds, 4));
            if (r.DroppedGradients is long dropped) json.WriteNumber("dropped_gradients", dropped);
            if (r.StepsWithThetaCopies is long copies) json.WriteNumber("steps_with_theta_copies", copies);
            if (r.WorkerStepsPerSecond is { } rates)
            {
                json.WriteStartObject("worker_steps_per_second");
                foreach (var (worker, rate) in rates.OrderBy(kv => kv.Key, StringComparer.Ordinal))
                {
                    json.WriteNumber(worker, Math.Round(rate, 2));
                }
                json.WriteEndObject();
            }
            WriteMap(json, "worker_busy_fraction", r.WorkerBusyFraction, 4);
            WriteMap(json, "worker_step_seconds_median", r.WorkerStepSecondsMedian, 6);
            WriteMap(json, "worker_step_seconds_p90", r.WorkerStepSecondsP90, 6);
            if (r.BulkBytes is long bulk) json.WriteNumber("bulk_bytes", bulk);
            if (r.Rounds is { } rounds)
            {
                // Local steps: one entry per round (an exchange of θ and the replicas' changes).
                json.WriteNumber("rounds_in_epoch", rounds.Count);
                json.WriteStartArray("rounds");
                foreach (StepReport round in rounds)
                {
                    json.WriteStartObject();
                    json.WriteNumber("step", round.GlobalStep);
                    WriteNumberOrNull(json, "train_loss", round.Loss);
                    json.WriteStartArray("replica_losses");
                    foreach (double loss in round.Round!.ReplicaLosses)
                    {
                        if (double.IsFinite(loss)) json.WriteNumberValue(loss); else json.WriteNullValue();
                    }
                    json.WriteEndArray();
                    WriteNumberOrNull(json, "outer_step_norm", round.Round.OuterStepNorm);
                    json.WriteEndObject();
                }
                json.WriteEndArray();
            }
            json.WriteEndObject();
        }
        return Encoding.UTF8.GetString(buffer.ToArray());
    }
}
