using System.Diagnostics;
using System.Globalization;
using System.Text;

namespace DistributedBackprop.Actors;

/// <summary>
/// Where a step's time goes between processes, for diagnosis: with <c>DBP_STEP_TIMELINE=DIR</c> every process of a
/// run (server, workers, local mode) writes one line per event of a step to <c>DIR/PID.tsv</c>: the monotonic clock
/// (<see cref="Stopwatch.GetTimestamp"/>, nanoseconds on Linux, the same clock for every process of one host, so
/// only a run on one machine or in network namespaces of one kernel can be read across processes), the event, the
/// step and who. <c>bench/step-timeline.py DIR</c> puts them side by side; <c>bench/cluster-vs-local.sh</c> with
/// <c>DBP_TIMELINE=1</c> does both for the cluster's rounds. Why it exists: a loopback cluster's CPU profile cannot
/// tell a step that waits on a transfer from one that waits for a core.
/// Off (the variable unset) it costs a static read per event. Lines are buffered and written at exit or per 64 KB,
/// so the file of a process that is killed may lack its last lines (or end inside one). A write that fails (a full
/// disk) turns the timeline off with one line on standard error: a diagnostic never stops a run.
/// </summary>
public static class StepTimeline
{
    // Before the writer: Open registers a handler that takes this lock.
    private static readonly Lock Gate = new();
    private static StreamWriter? _writer = Open(Environment.GetEnvironmentVariable("DBP_STEP_TIMELINE"));

    /// <summary>Records <paramref name="what"/> of step <paramref name="step"/> by <paramref name="who"/> (no tabs or line breaks).</summary>
    public static void Mark(string what, long step, string who)
    {
        if (Volatile.Read(ref _writer) is null)
        {
            return;
        }
        long now = Stopwatch.GetTimestamp();
        lock (Gate)
        {
            if (_writer is not { } writer)
            {
                return;
            }
            try
            {
                writer.Write(now.ToString(CultureInfo.InvariantCulture));
                writer.Write('\t');
                writer.Write(what);
                writer.Write('\t');
                writer.Write(step.ToString(CultureInfo.InvariantCulture));
                writer.Write('\t');
                writer.WriteLine(who);
            }
            catch (Exception e) when (e is IOException or ObjectDisposedException)
            {
                Stop(e);
            }
        }
    }

    /// <summary>As <see cref="Mark"/>, by parameter shard <paramref name="shard"/> ("shard-N", formatted only when on).</summary>
    public static void MarkShard(string what, long step, int shard)
    {
        if (Volatile.Read(ref _writer) is not null)
        {
            Mark(what, step, "shard-" + shard.ToString(CultureInfo.InvariantCulture));
        }
    }

    /// <summary>Under <see cref="Gate"/>: no more lines.</summary>
    private static void Stop(Exception e)
    {
        Console.Error.WriteLine($"dbp: DBP_STEP_TIMELINE: writing the timeline failed ({e.Message}); no more of it is written");
        StreamWriter? writer = _writer;
        Volatile.Write(ref _writer, null);
        try
        {
            writer?.Dispose();
        }
        catch (Exception again) when (again is IOException or ObjectDisposedException)
        {
            // the file is already broken; what it holds is what it keeps
        }
    }

    private static StreamWriter? Open(string? directory)
    {
        if (string.IsNullOrEmpty(directory))
        {
            return null;
        }
        try
        {
            Directory.CreateDirectory(directory);
            var writer = new StreamWriter(Path.Combine(directory, $"{Environment.ProcessId}.tsv"), append: false, new UTF8Encoding(false), 64 << 10);
            writer.WriteLine($"# ticks per second {Stopwatch.Frequency}; {string.Join(' ', Environment.GetCommandLineArgs().Skip(1).Take(1))}");
            AppDomain.CurrentDomain.ProcessExit += (_, _) =>
            {
                lock (Gate)
                {
                    try
                    {
                        _writer?.Flush();
                    }
                    catch (Exception e) when (e is IOException or ObjectDisposedException)
                    {
                        Stop(e);
                    }
                }
            };
            return writer;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            Console.Error.WriteLine($"dbp: DBP_STEP_TIMELINE={directory}: cannot write there ({e.Message}); no timeline is written");
            return null;
        }
    }
}
